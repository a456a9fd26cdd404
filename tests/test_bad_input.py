"""Bad input, category by category (config files, overrides, genotypes, data sets, checkpoints, run directories,
CLI flags): each gives one line ``error: ...`` naming the bad value, exit status 2, no traceback, and leaves what
was already written untouched."""

from __future__ import annotations

import hashlib
import urllib.error
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nas.cli import evaluate_main, search_main

TINY = ["search.epochs=1", "data.synthetic.train=64", "data.image_size=8", "data.batch_size=16", "model.C=4",
        "model.layers=3", "run.tensorboard=false"]
SMALL = ["search.epochs=1", "data.image_size=8", "data.batch_size=16", "model.C=4", "model.layers=3",
         "run.tensorboard=false"]  # for any data set
NB201 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_1x1~2|"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished search run whose files no bad input may change."""
    run_dir = tmp_path_factory.mktemp("runs") / "done"
    assert search_main([*TINY, f"run.dir={run_dir}", "--quiet"]) == 0
    return run_dir


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def image_folder(root: Path, empty_class: bool = False, garbage: bool = False) -> Path:
    for split in ("train", "test"):
        for c in ("a", "b"):
            folder = root / split / c
            folder.mkdir(parents=True)
            if empty_class and split == "train" and c == "b":
                continue
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "0.png")
    if garbage:
        write(root / "train" / "a" / "broken.png", b"not a png")
    return root


# (name, main, argv builder (tmp_path, finished run) -> argv, text the error line must contain)
Case = tuple[str, Callable[[list[str]], int], Callable[[Path, Path], list[str]], str]
CASES: list[Case] = [
    # config files
    ("missing config file", search_main, lambda t, f: ["--config", str(t / "none.yaml")],
     "config file '"),
    ("config not YAML", search_main, lambda t, f: ["--config", str(write(t / "c.yaml", "search: [1,\n"))],
     "is not valid YAML at line"),
    ("config not a mapping", search_main, lambda t, f: ["--config", str(write(t / "c.yaml", "- 1\n"))],
     "must hold a mapping of keys, not a list"),
    ("unknown key in a file", search_main, lambda t, f: ["--config", str(write(t / "c.yaml", "serach:\n  a: 1\n"))],
     "unknown key 'serach' (did you mean 'search'?)"),
    # overrides
    ("override without =", search_main, lambda t, f: ["search.epochs"], "is not of the form key=value"),
    ("wrong type", search_main, lambda t, f: ["data.batch_size=big"], "data.batch_size='big' has the wrong type"),
    ("invalid choice", search_main, lambda t, f: ["model.space=nasbench"], "valid: darts, nb201"),
    ("out of range", search_main, lambda t, f: ["search.tau_min=0"], "search.tau_min=0.0 is out of range"),
    ("unknown op", search_main, lambda t, f: ["model.ops=[sep_conv_3x3, conv_9x9]"], "unknown op 'conv_9x9'"),
    # genotypes
    ("unknown genotype name", evaluate_main, lambda t, f: ["--genotype", "GDAS_V2", "--summary"],
     "unknown genotype name 'GDAS_V2' (did you mean 'GDAS_V1'?)"),
    ("malformed genotype file", evaluate_main,
     lambda t, f: ["--genotype", str(write(t / "g.json", '{"space": "darts",')), "--summary"],
     "genotype JSON is malformed"),
    ("code in a genotype", evaluate_main,
     lambda t, f: ["--genotype", "Genotype(normal=open('/etc/passwd'), normal_concat=[2], reduce=[], "
                                 "reduce_concat=[2])", "--summary"], "normal must be a literal list"),
    ("NB201 string too short", evaluate_main, lambda t, f: ["--genotype", "|nor_conv_3x3~0|", "--summary"],
     "an nb201 cell has 3 nodes, got 1"),
    ("genotype of another space", evaluate_main,
     lambda t, f: ["--config", "configs/eval/darts-cifar10.yaml", "--genotype", NB201, "--summary"],
     "the genotype is of the nb201 space"),
    # data sets
    ("missing Fashion-MNIST", search_main, lambda t, f: ["data.name=fashion-mnist", f"data.root={t}", *SMALL],
     "train-images-idx3-ubyte.gz not found in"),
    ("empty class folder", search_main,
     lambda t, f: ["data.name=imagefolder", f"data.root={image_folder(t / 'img', empty_class=True)}", *SMALL],
     "has no images"),
    ("unreadable image", search_main,
     lambda t, f: ["data.name=imagefolder", f"data.root={image_folder(t / 'img', garbage=True)}", *SMALL],
     "cannot read image"),
    ("missing CIFAR offline", search_main, lambda t, f: ["data.name=cifar10", f"data.root={t / 'cifar'}", *SMALL],
     "could not be downloaded"),
    # checkpoints
    ("damaged checkpoint", search_main,
     lambda t, f: ["--resume", str(copy_run(f, t / "copy", b"\x00garbage"))], "is not a readable checkpoint"),
    ("checkpoint of the other kind", evaluate_main, lambda t, f: ["--resume", str(f)],
     "is a search run; resume it with python -m nas search --resume"),
    # run directories
    ("run directory already used", search_main, lambda t, f: [*TINY, f"run.dir={f}"], "already holds a run"),
    ("run.dir is a file", search_main, lambda t, f: [*TINY, f"run.dir={write(t / 'file', 'x')}"],
     "is a file, not a directory"),
    ("resume a missing directory", search_main, lambda t, f: ["--resume", str(t / "nowhere")],
     "is not a directory"),
    ("resume a directory without a run", search_main, lambda t, f: ["--resume", str(t)],
     "is not a run directory with a checkpoint"),
    ("change the recipe on resume", search_main, lambda t, f: ["--resume", str(f), "search.epochs=9"],
     "'search.epochs' cannot change when resuming"),
    # CLI flags
    ("resume with --config", search_main, lambda t, f: ["--resume", str(f), "--config", "configs/quickstart.yaml"],
     "drop --config"),
    ("bad --seeds", evaluate_main, lambda t, f: ["--genotype", "DARTS_V2", "--seeds", "0,x"],
     "--seeds '0,x' is neither a count"),
    ("resume with --genotype", evaluate_main, lambda t, f: ["--resume", str(f), "--genotype", "DARTS_V2"],
     "drop --config, --genotype"),
]


def copy_run(src: Path, dst: Path, checkpoint: bytes) -> Path:
    dst.mkdir(parents=True)
    (dst / "config.yaml").write_text((src / "config.yaml").read_text())
    (dst / "checkpoint.pt").write_bytes(checkpoint)
    return dst


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, finished: Path, capsys: pytest.CaptureFixture[str],
                   monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)  # never touch the network in tests
    name, main, argv, message = case
    before = digest(finished)
    args = argv(tmp_path, finished)
    if "--resume" not in args and not any(a.startswith("run.dir=") for a in args):
        args.append(f"run.dir={tmp_path / 'new'}")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert digest(finished) == before  # nothing already written changed
    assert not (tmp_path / "new").exists()  # and nothing new is left behind
