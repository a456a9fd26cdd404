"""The trained network out of the framework.

evaluate.py writes ``model.pt`` into its run directory: the trained weights with everything needed to rebuild and
feed the network (its genotype, network settings, class names and the preprocessing the training used), as plain
tensors, numbers and strings, so ``torch.load(path, weights_only=True)`` reads it and no pickled code runs.
``load_model`` rebuilds the network from it; ``predict`` classifies image files; ``export`` writes a file that runs
without this package (TorchScript, torch.export's program or ONNX) and checks its outputs against the network's.

An exported network takes float images in [0, 1], (N, channels, size, size), and returns logits: the normalisation
is inside it. A JSON file beside it names the classes and the input.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.errors import UserError
from nas.run.files import MODEL, is_finished, replacing, run_kind
from nas.space.genotype import Genotype, from_dict

FORMAT = "nas-model/1"
EXPORTS = {"torchscript": ".ts", "exported": ".pt2", "onnx": ".onnx"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


class Classifier(nn.Module):
    """A trained network with its preprocessing: float images in [0, 1] in, logits out (no auxiliary head)."""

    def __init__(self, network: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.network = network
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, _ = self.network((x - self.mean) / self.std)
        return logits


def save_model(path: Path, network: nn.Module, genotype: Genotype, settings: dict[str, Any], classes: list[str],
               mean: list[float], std: list[float], image_size: int) -> None:
    """Write the model file (atomically): weights, genotype, build settings, classes, preprocessing."""
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    blob = {"format": FORMAT, "genotype": json.dumps(genotype.to_dict()), "settings": settings,
            "classes": list(classes), "mean": list(mean), "std": list(std), "image_size": int(image_size),
            "state_dict": state}
    with replacing(path, "wb") as f:
        torch.save(blob, f)


@dataclass
class TrainedModel:
    """A trained network loaded by load_model: ``classifier`` (images in [0, 1] -> logits, evaluation mode)."""

    classifier: Classifier
    genotype: Genotype
    classes: list[str]
    image_size: int
    channels: int
    path: Path

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.classifier(x)

    def example(self, batch: int = 2) -> torch.Tensor:
        """A seeded batch of random images of the input shape."""
        g = torch.Generator().manual_seed(0)
        return torch.rand(batch, self.channels, self.image_size, self.image_size, generator=g)

    def predict(self, images: list[str | Path], unreadable: dict[Path, str] | None = None
                ) -> list[tuple[Path, str, float]]:
        """(file, class name, probability) for each image file, or each image in the folders given. A file that
        cannot be read raises UserError, or, with ``unreadable``, is left out and recorded there with the reason."""
        paths = image_paths(images)
        x = read_images(paths, self.image_size, self.channels, unreadable)
        paths = [p for p in paths if unreadable is None or p not in unreadable]
        if not paths:
            return []
        device = next(self.classifier.parameters()).device
        probs = self(x.to(device)).softmax(-1).cpu()
        p, k = probs.max(-1)
        return [(path, self.classes[int(i)], float(q)) for path, i, q in zip(paths, k, p, strict=True)]


def model_file(source: str | Path) -> Path:
    """The model file of a training run directory (or the file itself)."""
    path = Path(source)
    if path.is_file():
        return path
    if not path.is_dir():
        raise UserError(f"{str(source)!r} is neither a training run directory nor a model file")
    if (path / MODEL).is_file():
        return path / MODEL
    seeds = sorted(p.name for p in path.glob("seed-*") if (p / MODEL).is_file())
    if seeds:
        raise UserError(f"{str(source)!r} holds {len(seeds)} trainings ({', '.join(seeds)}); give one of them, for "
                        f"example {path / seeds[0]}")
    if run_kind(path) == "search":
        raise UserError(f"{str(source)!r} is a search run: it has a genotype, not trained weights; train its "
                        f"genotype with python -m nas evaluate --genotype {source}, then use that run")
    why = ("its training has not finished" if not is_finished(path, "train") else
           "it was trained before evaluate.py wrote model files; train it again")
    raise UserError(f"{str(source)!r} has no trained weights ({MODEL}): {why}")


def load_model(source: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """The trained network of an evaluate.py run directory (or its model.pt), in evaluation mode on ``device``.
    The file is read with weights_only=True: only tensors and plain data, no code."""
    from nas.space.network import build_network

    path = model_file(source)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or foreign file
        raise UserError(f"{str(path)!r} cannot be read as a model file ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise UserError(f"{str(path)!r} is not a model file of this package (format {FORMAT})")
    genotype = from_dict(json.loads(blob["genotype"]))
    s = blob["settings"]
    network = build_network(genotype, C=s["C"], layers=s["layers"], num_classes=s["num_classes"],
                            auxiliary=s["auxiliary"], in_channels=s["in_channels"],
                            stem_multiplier=s["stem_multiplier"])
    network.load_state_dict(blob["state_dict"])
    classifier = Classifier(network, blob["mean"], blob["std"]).to(device).eval()
    return TrainedModel(classifier, genotype, list(blob["classes"]), int(blob["image_size"]), int(s["in_channels"]),
                        path)


# ---------------------------------------------------------------------------------------------- images

def image_paths(items: list[str | Path]) -> list[Path]:
    """Image files, from files and folders (searched recursively, in name order)."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not found:
                raise UserError(f"folder {str(item)!r} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise UserError(f"image {str(item)!r} not found")
    if not out:
        raise UserError("no images given")
    return out


def read_images(paths: list[Path], size: int, channels: int, unreadable: dict[Path, str] | None = None
                ) -> torch.Tensor:
    """(N, channels, size, size) float in [0, 1]: each file decoded, converted to RGB (or grey for one channel) and
    resized bilinearly, as the image-folder reader does for training. A file that cannot be read raises UserError,
    or, with ``unreadable``, is left out and recorded there."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    out = []
    for path in paths:
        try:
            with Image.open(path) as opened:
                im = opened.convert("RGB" if channels == 3 else "L")
                if im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.BILINEAR)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            if unreadable is None:
                raise UserError(f"cannot read image {path}: {e}") from None
            unreadable[path] = str(e)
            continue
        a = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy())
        out.append(a.permute(2, 0, 1) if a.ndim == 3 else a[None])
    if not out:
        return torch.zeros(0, channels, size, size)
    return torch.stack(out).float() / 255


# ---------------------------------------------------------------------------------------------- export

def export(source: str | Path, fmt: str, out: str | Path | None = None, atol: float = 1e-4) -> tuple[Path, float]:
    """Write the trained network of ``source`` as ``fmt`` (torchscript, exported or onnx) to ``out`` (default: beside
    the model file), then load the written file with the runtime of its format alone, run it on a batch and compare
    its outputs with the network's. Returns the file and the largest absolute difference; a difference above
    ``atol`` is refused and the file removed."""
    if fmt not in EXPORTS:
        raise UserError(f"unknown export format {fmt!r}; valid: {', '.join(EXPORTS)}")
    if fmt == "onnx":
        _need_onnx()
    model = load_model(source)
    path = Path(out) if out is not None else model.path.with_suffix(EXPORTS[fmt])
    path.parent.mkdir(parents=True, exist_ok=True)
    net, x = model.classifier, model.example(2)
    with torch.no_grad():
        want = net(x)
    try:
        with warnings.catch_warnings():  # torch.jit's deprecation notices: the format works, and is checked below
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks are fixed at the trained size
            got = _EXPORTERS[fmt](net, x, path)
    except UserError:
        path.unlink(missing_ok=True)
        raise
    diff = float((got - want).abs().max())
    if not diff <= atol:
        path.unlink(missing_ok=True)
        raise UserError(f"the {fmt} file's outputs differ from the network's by {diff:.2e} (> {atol:g}); nothing "
                        "was written")
    sidecar = {"format": fmt, "input": [None, model.channels, model.image_size, model.image_size],
               "input_range": [0.0, 1.0], "output": "logits", "classes": model.classes,
               "genotype": model.genotype.to_dict(), "max_abs_diff": diff}
    path.with_name(path.name + ".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return path, diff


def _torchscript(net: nn.Module, x: torch.Tensor, path: Path) -> torch.Tensor:
    with torch.no_grad():
        traced = torch.jit.trace(net, x)
    traced.save(str(path))
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        return loaded(x.flip(0)).flip(0)  # another batch order: the trace must not have kept the example


def _exported(net: nn.Module, x: torch.Tensor, path: Path) -> torch.Tensor:
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(net, (x,), dynamic_shapes=({0: batch},), strict=False)
    torch.export.save(program, str(path))
    loaded = torch.export.load(str(path)).module()
    with torch.no_grad():
        return loaded(x.flip(0)).flip(0)


def _onnx(net: nn.Module, x: torch.Tensor, path: Path) -> torch.Tensor:
    import onnxruntime

    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(net, (x,), str(path), input_names=["images"], output_names=["logits"],
                      dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(["logits"], {"images": x.flip(0).numpy()})[0]
    return torch.from_numpy(out).flip(0)


_EXPORTERS = {"torchscript": _torchscript, "exported": _exported, "onnx": _onnx}


def _need_onnx() -> None:
    import importlib.util

    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"--format onnx needs {', '.join(missing)}: pip install -e \".[onnx]\" (or pip install onnx "
                        "onnxscript onnxruntime); torchscript and exported need nothing more")


if __name__ == "__main__":
    from nas.errors import library_module

    raise SystemExit(library_module("nas.model", "predict"))
