"""The search CLI end to end: a smoke search writes every run-directory file; every recipe runs on real image
files and on CIFAR-10 files placed in data.root; bad input exits 2 with one line and no traceback."""

from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from nas.cli import genotype_main, search_main
from nas.config import SearchConfig, load_config
from nas.space.genotype import from_dict, read_genotype

ROOT = Path(__file__).resolve().parents[1]
TINY = ["search.epochs=2", "data.synthetic.train=128", "data.synthetic.test=16", "data.image_size=8",
        "data.batch_size=16", "model.C=4", "model.layers=3"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_smoke_search_writes_the_run_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = run_cli("search.py", "--config", "configs/quickstart.yaml", *TINY, f"run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    assert "done: genotype written to" in proc.stdout
    cfg = load_config(SearchConfig, run_dir / "config.yaml")  # the resolved config, loadable as is
    assert cfg == load_config(SearchConfig, ROOT / "configs" / "quickstart.yaml", [*TINY, f"run.dir={run_dir}"])
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:
        for key in ("train_loss", "train_acc", "valid_loss", "valid_acc", "tau", "lr", "time_s", "images_per_s"):
            assert isinstance(m[key], float) and np.isfinite(m[key]), key
        assert 0 <= m["train_acc"] <= 100 and m["images_per_s"] > 0
    assert metrics[0]["tau"] == 10.0 and metrics[1]["tau"] == pytest.approx(0.1)
    assert metrics[0]["lr"] == 0.025 and metrics[1]["lr"] < metrics[0]["lr"]
    per_epoch = [json.loads(line) for line in (run_dir / "genotypes.jsonl").read_text().splitlines()]
    assert len(per_epoch) == 2
    final = read_genotype(run_dir / "genotype.json")
    assert final == from_dict(per_epoch[-1]["genotype"])
    alphas = [json.loads(line) for line in (run_dir / "alpha.jsonl").read_text().splitlines()]
    assert [np.array(a["normal"]).shape for a in alphas] == [(14, 8), (14, 8)]
    assert np.array(alphas[0]["reduce"]).shape == (14, 8)
    assert alphas[0]["normal"] != alphas[1]["normal"]  # alpha steps moved alpha


def test_search_is_reproducible_with_the_same_seed(tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert search_main([*TINY, "search.epochs=1", "run.device=cpu", f"run.dir={tmp_path / name}"]) == 0
    a = (tmp_path / "a" / "alpha.jsonl").read_text()
    assert a == (tmp_path / "b" / "alpha.jsonl").read_text()


def make_image_folder(root: Path, classes: int = 3, per_class: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class if split == "train" else 2):
                pixels = (rng.random((10, 12, 3)) * 80 + 60 * c).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("recipe", sorted((ROOT / "configs" / "search").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_recipe_runs_on_an_image_folder(recipe: Path, tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "images")
    layers = 1 if "nb201" in recipe.name else 3
    cfg = load_config(SearchConfig, recipe)
    # DARTS-space selection by perturbation scores 28 edges x 7 ops (over a minute here); tests/test_collapse.py
    # checks it on a supernet of its own, so the recipe runs here with the alpha rule
    cheaper = ["search.derive=darts"] if cfg.search.derive == "perturb" and cfg.model.space == "darts" else []
    if cfg.search.unrolled:  # four passes per alpha step: one step shows it runs (tests/test_unrolled.py checks it)
        cheaper.append("data.subset=12")
    rc = search_main(["--config", str(recipe), "data.name=imagefolder", f"data.root={data}", "data.image_size=8",
                      "data.batch_size=6", "search.epochs=1", "model.C=4", f"model.layers={layers}", *cheaper,
                      f"run.dir={tmp_path / 'run'}"])
    assert rc == 0
    g = read_genotype(tmp_path / "run" / "genotype.json")
    assert g.space == load_config(SearchConfig, recipe).model.space


def write_fake_cifar10(root: Path, per_batch: int = 8) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(x) for x in rng.integers(0, 10, per_batch)]}
        with (folder / name).open("wb") as f:
            pickle.dump(batch, f)
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return root


def test_cifar10_recipe_runs_on_files_placed_in_data_root(tmp_path: Path) -> None:
    root = write_fake_cifar10(tmp_path / "data")
    rc = search_main(["--config", "configs/search/gdas-darts-cifar10.yaml", f"data.root={root}", "data.batch_size=8",
                      "search.epochs=1", "model.C=4", "model.layers=3", f"run.dir={tmp_path / 'run'}"])
    assert rc == 0
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert metrics["steps"] == 2  # 40 images: 20 per half, batches of 8, the partial batch dropped


def test_missing_cifar_is_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import torchvision.datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    run_dir = tmp_path / "run"
    rc = search_main(["data.name=cifar10", f"data.root={tmp_path / 'empty'}", f"run.dir={run_dir}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: CIFAR-10 is not in") and err.count("\n") == 1
    assert "cifar-10-python.tar.gz" in err and "cifar-10-batches-py" in err and "no network" in err


@pytest.mark.parametrize("args,message", [
    (["search.py", "search.epoch=2"], "unknown key 'search.epoch' (did you mean 'search.epochs'?)"),
    (["search.py", "search.epochs=two"], "search.epochs='two' has the wrong type; expected an integer"),
    (["search.py", "model.ops=[sep_conv_3x3, dil_conv_3x4]"], "unknown op 'dil_conv_3x4' in model.ops"),
    (["search.py", "--config", "configs/nope.yaml"], "config file 'configs/nope.yaml' not found"),
    (["search.py", "data.name=fashion-mnist", "data.root=/nonexistent"],
     "Fashion-MNIST file train-images-idx3-ubyte.gz not found in /nonexistent/"),
    (["search.py", "data.name=imagefolder", "data.root=/nonexistent"], "data.root='/nonexistent' is not a folder"),
    (["-m", "nas", "genotype", "|nor_conv_3x3~0|+|bad|"], "NB201 edge 'bad' is not of the form op~input"),
    (["-m", "nas", "genotype", "Genotype(normal=[('sep_conv_3x3', 0)])"], "lacks normal_concat"),
    (["search.py", "--config", "configs/eval/quick.yaml"], "configs/eval/quick.yaml is a training recipe, not a "
                                                            "search one; run it with python -m nas evaluate --config"),
    (["search.py", "--config", "configs/compare/quick.yaml"], "is a comparison study recipe, not a search one"),
    (["search.py", "--config", "configs/quickstart.yaml", "search.mixer=gdsa"],  # no note on dropped tau keys first
     "search.mixer='gdsa' is not valid (did you mean 'gdas'?)"),
])
def test_bad_input_exits_2_with_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    extra = [f"run.dir={tmp_path / 'run'}"] if args[0] == "search.py" else []
    proc = run_cli(*args, *extra)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def digest(folder: Path) -> dict[str, str]:
    """Every file under folder, by relative path, with a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_existing_run_is_never_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    assert search_main([*TINY, "search.epochs=1", f"run.dir={run_dir}"]) == 0
    before = digest(run_dir)
    capsys.readouterr()
    assert search_main([*TINY, "search.epochs=1", "seed=5", f"run.dir={run_dir}"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert digest(run_dir) == before
    assert search_main([*TINY, "search.epochs=1", "seed=5", f"run.dir={run_dir}", "run.overwrite=true"]) == 0
    assert load_config(SearchConfig, run_dir / "config.yaml").seed == 5
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1  # replaced, not appended to


def test_nb201_darts_search_and_genotype_conversion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    rc = search_main([*TINY, "search.epochs=1", "model.space=nb201", "model.layers=1", "search.mixer=darts",
                      f"run.dir={run_dir}"])
    assert rc == 0
    capsys.readouterr()
    assert genotype_main([str(run_dir), "--to", "text"]) == 0
    text = capsys.readouterr().out.strip()
    assert text.startswith("|") and text.count("+") == 2
    assert genotype_main([text]) == 0
    assert json.loads(capsys.readouterr().out)["space"] == "nb201"
    assert torch.get_num_threads() >= 1


def test_help_never_breaks_a_hyphenated_path() -> None:
    import argparse

    from nas.cli import HelpFormatter

    parser = argparse.ArgumentParser(prog="x", formatter_class=lambda prog: HelpFormatter(prog, width=40),
                                     epilog="example: python -m nas latency --config "
                                            "configs/search/zc-train-nb201-small.yaml data.root=DIR")
    parser.add_argument("--a", help="see configs/search/zc-train-nb201-small.yaml for one")
    text = parser.format_help()
    assert text.count("configs/search/zc-train-nb201-small.yaml") == 2
    assert all(len(line) <= 44 for line in text.splitlines() if "configs/" not in line)


@pytest.mark.parametrize(("module", "tool"), [("nas.bench201", "bench201"), ("nas.searching.bilevel", "search")])
def test_a_library_module_run_directly_names_the_command_to_run(module: str, tool: str) -> None:
    r = run_cli("-m", module, "|nor_conv_3x3~0|")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"error: {module} is a library module, not a command; run: python -m nas {tool} --help\n"


def test_the_quick_study_runs_on_an_image_folder_from_the_command_line(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from nas.cli import compare_main

    data = make_image_folder(tmp_path / "images")
    args = ["--config", "configs/compare/quick.yaml", "data.name=imagefolder", f"data.root={data}", "--plan"]
    assert compare_main([*args, f"run.dir={tmp_path / 's'}"]) == 0
    err = capsys.readouterr().err
    assert "note: the recipe's data.synthetic applies only to data.name=synthetic; dropped" in err
    assert yaml.safe_load((tmp_path / "s" / "study.yaml").read_text())["data"]["name"] == "imagefolder"
    assert compare_main(["--config", "configs/compare/quick.yaml", "data.synthetic=null", "--plan",
                         f"run.dir={tmp_path / 't'}"]) == 0  # a section set to null: the recipe's keys dropped
    assert yaml.safe_load((tmp_path / "t" / "study.yaml").read_text())["data"]["synthetic"]["noise"] != 0.3


def test_a_reader_that_goes_away_ends_a_tool_quietly() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "nas", "config", "search"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # as `| head` does once it has read enough
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err and "BrokenPipe" not in err, err
