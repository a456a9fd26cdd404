"""Readers for the supported data sets, each returning the whole split as one uint8 tensor.

CIFAR-10/100 (the python pickles, downloaded by torchvision where a network exists), Fashion-MNIST (the
four idx files), an image folder (``train/`` and ``test/`` with one folder per class) and a synthetic
set drawn in-process whose classes differ in visual structure (orientation and pattern).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import pickle
import socket
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas.errors import UserError
from nas.run.files import replacing


class DataError(UserError):
    """A data set that is missing, incomplete or unreadable."""


@dataclass
class ImageSet:
    images: torch.Tensor   # (N, C, H, W) uint8
    labels: torch.Tensor   # (N,) int64
    classes: list[str]
    source: str = ""       # how the images were read, for the run's log (an image folder: decoded or cached)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


# ---------------------------------------------------------------------------------------------- CIFAR

_CIFAR = {
    "cifar10": dict(title="CIFAR-10", folder="cifar-10-batches-py", archive="cifar-10-python.tar.gz",
                    train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
                    meta="batches.meta", label_key="labels", names_key="label_names"),
    "cifar100": dict(title="CIFAR-100", folder="cifar-100-python", archive="cifar-100-python.tar.gz",
                     train=["train"], test=["test"], meta="meta", label_key="fine_labels",
                     names_key="fine_label_names"),
}

# The only globals a CIFAR pickle may name: enough to rebuild numpy arrays, nothing that runs code.
_SAFE_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                 ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                 ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
                 ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path, kind: str = "a CIFAR") -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            obj = _SafeUnpickler(f, encoding="latin1").load()
    except Exception as e:  # a damaged file can fail in many ways inside pickle; all mean "not a batch file"
        raise DataError(f"{path} is not {kind} python batch file ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not {kind} python batch file")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def load_cifar(name: str, root: Path, split: str) -> ImageSet:
    spec: dict[str, Any] = _CIFAR[name]
    folder = root / spec["folder"]
    if not folder.is_dir():
        _download_cifar(name, root)
    files = spec[split]
    images, labels = [], []
    for fname in files:
        path = folder / fname
        if not path.is_file():
            raise DataError(f"{spec['title']} file {path} is missing; put the complete {spec['folder']}/ folder "
                            f"or {spec['archive']} in {root}/")
        batch = _unpickle(path)
        try:
            data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            lab = np.asarray(batch[spec["label_key"]], dtype=np.int64)
        except (KeyError, ValueError) as e:
            raise DataError(f"{path} is not a {spec['title']} batch ({e})") from None
        if len(data) != len(lab):
            raise DataError(f"{path} holds {len(data)} images but {len(lab)} labels")
        images.append(torch.from_numpy(data.copy()))
        labels.append(torch.from_numpy(lab))
    meta_path = folder / spec["meta"]
    num = 10 if name == "cifar10" else 100
    classes = [str(i) for i in range(num)]
    if meta_path.is_file():
        names = _unpickle(meta_path).get(spec["names_key"])
        if isinstance(names, list) and len(names) == num:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return ImageSet(torch.cat(images), torch.cat(labels), classes)


IMAGENET16_TRAIN = [f"train_data_batch_{i}" for i in range(1, 11)]
IMAGENET16_TEST = ["val_data"]


def load_imagenet16(root: Path, split: str, classes: int = 120) -> ImageSet:
    """Down-sampled ImageNet at 16x16 (Chrabaszcz et al. 2017) as NAS-Bench-201 uses it: the python batch files
    train_data_batch_1..10 (training) and val_data (its test split) in ``root``, keeping the first ``classes``
    classes (labels 1..1000 in the files, 0-based here)."""
    images, labels = [], []
    for fname in IMAGENET16_TRAIN if split == "train" else IMAGENET16_TEST:
        path = root / fname
        if not path.is_file():
            raise DataError(f"ImageNet16 file {path} is missing; data.root must hold train_data_batch_1 ... "
                            "train_data_batch_10 and val_data, the 16x16 down-sampled ImageNet (Imagenet16_train.zip "
                            "and Imagenet16_val.zip from image-net.org, which needs a login)")
        batch = _unpickle(path, "an ImageNet16")
        try:
            data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 16, 16)
            lab = np.asarray(batch["labels"], dtype=np.int64)
        except (KeyError, ValueError) as e:
            raise DataError(f"{path} is not an ImageNet16 batch ({e})") from None
        if len(data) != len(lab):
            raise DataError(f"{path} holds {len(data)} images but {len(lab)} labels")
        if len(lab) and (lab.min() < 1 or lab.max() > 1000):
            raise DataError(f"{path} has labels outside 1..1000")
        keep = lab <= classes
        images.append(torch.from_numpy(data[keep].copy()))
        labels.append(torch.from_numpy(lab[keep] - 1))
    return ImageSet(torch.cat(images), torch.cat(labels), [str(i) for i in range(classes)])


def _download_cifar(name: str, root: Path) -> None:
    from torchvision import datasets

    spec: dict[str, Any] = _CIFAR[name]
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60)  # a blocked network fails within a minute instead of hanging
    try:
        root.mkdir(parents=True, exist_ok=True)
        print(f"{spec['title']} not found in {root}/: downloading it there", flush=True)
        cls(str(root), train=True, download=True)
    except Exception as e:  # torchvision raises URLError, RuntimeError or OSError depending on the failure
        reason = str(getattr(e, "reason", None) or e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{spec['title']} is not in {root}/{spec['folder']}/ and could not be downloaded "
                        f"({reason}); put {spec['archive']} or its extracted {spec['folder']}/ folder "
                        f"in {root}/") from None
    finally:
        socket.setdefaulttimeout(old)


# ---------------------------------------------------------------------------------------------- Fashion-MNIST

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


def _read_idx(root: Path, stem: str) -> np.ndarray:
    for path in (root / f"{stem}.gz", root / stem):
        if path.is_file():
            break
    else:
        raise DataError(f"Fashion-MNIST file {stem}.gz not found in {root}/; it needs train-images-idx3-ubyte.gz, "
                        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz "
                        "(Debian: apt-get install dataset-fashion-mnist, then data.root=/usr/share/datasets/"
                        "fashion-mnist)")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise DataError(f"{path} is not an idx file of unsigned bytes")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated inside its header")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(dims):
        raise DataError(f"{path} is truncated: header says {dims}, found {body.size} values")
    return body.reshape(dims)


def load_fashion_mnist(root: Path, split: str) -> ImageSet:
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(root, f"{prefix}-images-idx3-ubyte")
    labels = _read_idx(root, f"{prefix}-labels-idx1-ubyte")
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"Fashion-MNIST {split} images {images.shape} and labels {labels.shape} do not match")
    return ImageSet(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                    FASHION_CLASSES)


# ---------------------------------------------------------------------------------------------- image folder

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff"}


def cache_dir() -> Path:
    """Where decoded image folders are cached: $NAS_CACHE_DIR, or ~/.cache/nas."""
    return Path(os.environ.get("NAS_CACHE_DIR") or Path.home() / ".cache" / "nas").expanduser()


def load_image_folder(root: Path, split: str, size: int, classes: list[str] | None = None,
                      cache: bool = True) -> ImageSet:
    """``root/<split>/<class>/<image>``, every image converted to RGB and resized to size x size.

    Decoding is spread over threads (PIL releases the GIL while it decodes). With ``cache``, the decoded uint8
    tensor is kept in cache_dir() under a key made of the folder, the size and every file's name, size and
    modification time, so the next run reads one file instead of decoding every image; a changed file makes a new
    key. ``ImageSet.source`` says which of the two happened."""
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"image folder {folder}/ not found; data.root must hold train/ and test/, each with one "
                        "folder of images per class")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not found:
        raise DataError(f"{folder}/ has no class folders; put each class's images in {folder}/<class name>/")
    if classes is None:
        classes = found
    else:
        unknown = [c for c in found if c not in classes]
        if unknown:
            raise DataError(f"{folder}/{unknown[0]}/ is a class the training set lacks; train classes: "
                            f"{', '.join(classes)}")
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        here = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
            if (folder / name).is_dir() else []
        if not here and split == "train":
            raise DataError(f"class folder {folder / name}/ has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        paths += here
        labels += [label] * len(here)
    if not paths:
        raise DataError(f"{folder}/ has no images")
    key = _folder_key(folder, size, classes, paths) if cache else ""
    cached = cache_dir() / "imagefolder" / f"{key}.pt"
    if cache and cached.is_file():
        try:
            images = torch.load(cached, weights_only=True)
            if isinstance(images, torch.Tensor) and images.shape == (len(paths), 3, size, size):
                return ImageSet(images, torch.tensor(labels, dtype=torch.int64), classes,
                                source=f"{len(paths)} images read from the cache {cached}")
        except Exception:  # a damaged cache file is decoded again and rewritten
            pass
    t0 = time.perf_counter()
    threads = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) as pool:
        images = torch.stack(list(pool.map(functools.partial(_decode, size=size), paths)))
    source = f"{len(paths)} images decoded in {time.perf_counter() - t0:.1f}s with {threads} threads"
    if cache:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            with replacing(cached, "wb") as f:
                torch.save(images, f)
            source += f", cached in {cached}"
        except OSError as e:  # a read-only home: the run goes on without a cache
            source += f" (not cached: {e.strerror or e})"
    return ImageSet(images, torch.tensor(labels, dtype=torch.int64), classes, source=source)


def _decode(path: Path, size: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            im = opened.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)


def _folder_key(folder: Path, size: int, classes: list[str], paths: list[Path]) -> str:
    """A digest of everything the decoded tensor depends on: the folder, the size, the classes, and each file's
    path, size and modification time."""
    h = hashlib.sha256(f"{folder.resolve()}\n{size}\n{classes}\n".encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"{folder.name}-{size}px-{h.hexdigest()[:20]}"


# ---------------------------------------------------------------------------------------------- synthetic

def make_synthetic(n: int, classes: int, size: int, seed: int, noise: float = 0.15,
                   distractor: float = 0.1) -> ImageSet:
    """Deterministic, learnable images: class c is a grating (c even) or a plaid (c odd) at an orientation
    that depends on c, drawn with random phase, frequency, colours (always contrasting) and pixel noise.
    Classes stay distinct under horizontal flips. A faint grating at a random orientation (``distractor``
    amplitude) and Gaussian pixel noise (``noise`` std, in [0, 1] pixel units) make the task not trivial."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    labels = labels[torch.randperm(n, generator=g)]
    kinds = (classes + 1) // 2
    plaid = labels % 2 == 1
    # Orientations are chosen so that a horizontal flip (theta -> 180 - theta, the training augmentation) never
    # turns one class into another: gratings take [0, 90] degrees and plaids, which repeat every 90, take [0, 45].
    span = torch.where(plaid, math.pi / 4, math.pi / 2)
    theta = (labels // 2).float() * span / max(kinds - 1, 1)  # (N,)
    freq = 1.5 + 1.5 * torch.rand(n, generator=g)  # cycles per image
    phase = 2 * math.pi * torch.rand(n, 2, generator=g)
    coords = torch.linspace(-0.5, 0.5, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")  # (H, W)

    def grating(angle: torch.Tensor, ph: torch.Tensor) -> torch.Tensor:
        u = xx * torch.cos(angle)[:, None, None] + yy * torch.sin(angle)[:, None, None]
        return torch.sin(2 * math.pi * freq[:, None, None] * u + ph[:, None, None])  # (N, H, W)

    a = grating(theta, phase[:, 0])
    b = grating(theta + math.pi / 2, phase[:, 1])
    pattern = torch.where(plaid[:, None, None], a * b, a)  # in [-1, 1]
    dark = 0.35 * torch.rand(n, 3, 1, 1, generator=g)
    light = 0.65 + 0.35 * torch.rand(n, 3, 1, 1, generator=g)
    swap = torch.rand(n, 1, 1, 1, generator=g) < 0.5
    fg, bg = torch.where(swap, dark, light), torch.where(swap, light, dark)
    mix = (pattern[:, None] + 1) / 2  # (N, 1, H, W)
    img = bg + (fg - bg) * mix + noise * torch.randn(n, 3, size, size, generator=g)
    if distractor:
        img = img + distractor * grating(math.pi * torch.rand(n, generator=g), phase[:, 1])[:, None]
    images = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    names = [f"{'plaid' if c % 2 else 'grating'}-{c // 2}" for c in range(classes)]
    return ImageSet(images, labels.to(torch.int64), names)
