"""The trained network out of the framework: evaluate.py writes model.pt, nas.load_model reads it with
weights_only, every export format round-trips with equal outputs and runs without this package, predict classifies
images written here, and the errors (no trained weights, a missing extra, bad images) are one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nas.cli import evaluate_main, export_main, predict_main
from nas.errors import UserError
from nas.model import FORMAT, load_model, read_images

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["--config", "configs/eval/imagefolder.yaml", "train.epochs=1", "data.image_size=8", "data.batch_size=8",
         "model.C=4", "model.layers=1", "run.tensorboard=false"]
NB201 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_1x1~2|"


def write_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), n: int = 6) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                a = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
                a[..., c] = 255  # the class is the dominant colour
                Image.fromarray(a).save(root / split / name / f"{i}.png")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("model")
    write_folder(base / "images")
    run = base / "run"
    assert evaluate_main([*TRAIN, "--genotype", NB201, f"data.root={base / 'images'}", "model.space=nb201",
                          f"run.dir={run}"]) == 0
    return run


def test_the_model_file_loads_with_weights_only(trained: Path) -> None:
    blob = torch.load(trained / "model.pt", weights_only=True)
    assert blob["format"] == FORMAT and blob["classes"] == ["cat", "dog"] and blob["image_size"] == 8
    model = load_model(trained)
    assert model.classes == ["cat", "dog"] and model.genotype.space == "nb201"
    x = model.example(3)
    assert model(x).shape == (3, 2) and not model.classifier.training
    again = load_model(trained / "model.pt")
    assert torch.equal(again(x), model(x))


@pytest.mark.parametrize("fmt", ["torchscript", "exported", "onnx"])
def test_every_export_format_round_trips(trained: Path, tmp_path: Path, fmt: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    out = tmp_path / f"net.{fmt}"
    assert export_main([str(trained), "--format", fmt, "--out", str(out)]) == 0
    assert "outputs equal the network's" in capsys.readouterr().out
    assert out.is_file() and (tmp_path / f"net.{fmt}.json").is_file()
    model = load_model(trained)
    x = model.example(5)  # another batch size than the export's
    if fmt == "torchscript":
        got = torch.jit.load(str(out))(x)
    elif fmt == "exported":
        got = torch.export.load(str(out)).module()(x)
    else:
        import onnxruntime

        got = torch.from_numpy(onnxruntime.InferenceSession(str(out)).run(None, {"images": x.numpy()})[0])
    assert torch.allclose(got, model(x), atol=1e-5)


def test_a_torchscript_file_runs_without_this_package(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "net.ts"
    assert export_main([str(trained), "--format", "torchscript", "--out", str(out)]) == 0
    code = ("import sys, torch; sys.modules['nas'] = None; m = torch.jit.load(sys.argv[1]); "
            "print(tuple(m(torch.rand(4, 3, 8, 8)).shape))")
    done = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(4, 2)"


def test_predict_classifies_files_and_folders(trained: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    write_folder(tmp_path / "new", n=2)
    single = tmp_path / "one.jpg"
    Image.fromarray(np.full((30, 20, 3), 128, dtype=np.uint8)).save(single)
    assert predict_main([str(trained), str(tmp_path / "new"), str(single)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 9  # 8 images in the folder, 1 file
    for line in lines:
        path, name, prob = line.split("\t")
        assert Path(path).is_file() and name in ("cat", "dog") and 50.0 <= float(prob.rstrip("%")) <= 100.0
    model = load_model(trained)
    x = read_images([single], 8, 3)
    assert x.shape == (1, 3, 8, 8) and 0 <= float(x.min()) and float(x.max()) <= 1
    (_, name, prob), = model.predict([single])
    assert name == model.classes[int(model(x).argmax())]


def test_errors(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                capsys: pytest.CaptureFixture[str]) -> None:
    search_run = tmp_path / "search"
    search_run.mkdir()
    (search_run / "genotype.json").write_text("{}")
    (search_run / "config.yaml").write_text("seed: 0\nsearch:\n  epochs: 0\n")
    assert export_main([str(search_run), "--format", "torchscript"]) == 2
    assert f"{str(search_run)!r} is a search run: it has a genotype, not trained weights" in capsys.readouterr().err
    (search_run / "config.yaml").write_text("seed: 0\ntrain:\n  epochs: 3\n")  # a training still running
    assert predict_main([str(search_run), str(tmp_path)]) == 2
    assert "has no trained weights (model.pt): its training has not finished" in capsys.readouterr().err
    assert predict_main([str(trained), str(tmp_path / "missing.png")]) == 2
    assert "image" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    good = tmp_path / "good.png"
    Image.fromarray(np.full((8, 8, 3), 90, dtype=np.uint8)).save(good)
    assert predict_main([str(trained), str(bad), str(good)]) == 2  # the good one is classified all the same
    out, err = capsys.readouterr()
    assert out.startswith(f"{good}\t") and out.count("\n") == 1
    assert err.splitlines() == [f"cannot read image {bad}: " + err.splitlines()[0].split(": ", 1)[1],
                                "error: 1 of 2 images could not be read (listed above); the others are classified"]
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr("importlib.util.find_spec",
                        lambda name, *a: None if name.startswith("onnx") else real_find_spec(name, *a))
    before = set(trained.iterdir())
    assert export_main([str(trained), "--format", "onnx"]) == 2
    assert 'needs onnx, onnxscript, onnxruntime: pip install -e ".[onnx]"' in capsys.readouterr().err
    assert set(trained.iterdir()) == before  # nothing written
    with pytest.raises(UserError, match="is not a model file"):
        torch.save({"something": 1}, tmp_path / "other.pt")
        load_model(tmp_path / "other.pt")
