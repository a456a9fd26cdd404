"""Watching a run: cell drawings (dot or matplotlib), TensorBoard events, progress lines, --quiet, log.txt and the
run metadata."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from nas.cli import evaluate_main, plot_main, search_main
from nas.space.genotype import parse_genotype, published_genotype
from nas.space.plot import alpha_figure, cell_dot, draw_cells, figure_to_array
from nas.space.spaces import get_space

TINY = ["search.epochs=2", "data.synthetic.train=64", "data.image_size=8", "data.batch_size=16", "model.C=4",
        "model.layers=3"]
NB201 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_1x1~2|"


def test_dot_source_has_every_edge() -> None:
    g = published_genotype("GDAS_V1")
    dot = cell_dot(g, "reduce")
    assert dot.startswith('digraph "reduce"')
    for node in g.reduce:
        for op, _ in node:
            assert f'label="{op}"' in dot
    assert dot.count("->") == 8 + 4  # 8 op edges, 4 concat edges into c_{k}
    nb = cell_dot(parse_genotype(NB201))
    assert "none" not in nb and nb.count("->") == 5  # a none edge is no edge


@pytest.mark.parametrize("genotype", ["DARTS_V2", "NASNet", NB201])
def test_matplotlib_drawings_always_work(genotype: str, tmp_path: Path) -> None:
    g = published_genotype(genotype) if "|" not in genotype else parse_genotype(genotype)
    paths = draw_cells(g, tmp_path, engine="matplotlib")
    assert [p.name for p in paths] == [f"{c}.{f}" for c in g.cells() for f in ("png", "svg")]
    for p in paths:
        if p.suffix == ".png":
            with Image.open(p) as im:
                assert im.size[0] > 200 and im.size[1] > 100
        else:
            assert p.read_text().lstrip().startswith("<?xml")


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot is not installed")
def test_dot_drawings(tmp_path: Path) -> None:
    paths = draw_cells(published_genotype("DARTS_V2"), tmp_path, engine="dot")
    assert all(p.stat().st_size > 0 for p in paths)


def test_dot_engine_without_dot_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="apt-get install graphviz"):
        draw_cells(published_genotype("DARTS_V2"), tmp_path, engine="dot")
    assert draw_cells(published_genotype("DARTS_V2"), tmp_path, engine="auto")  # falls back to matplotlib


def test_plot_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert plot_main(["PC_DARTS", "--out", str(tmp_path / "cells"), "--engine", "matplotlib"]) == 0
    assert sorted(p.name for p in (tmp_path / "cells").iterdir()) == ["normal.png", "normal.svg", "reduce.png",
                                                                     "reduce.svg"]
    assert plot_main(["PC_DART"]) == 2
    assert "did you mean 'PC_DARTS'" in capsys.readouterr().err


def test_alpha_heatmap_shows_softmax_weights() -> None:
    fig = alpha_figure(torch.zeros(6, 5), get_space("nb201"), "uniform")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts.count("0.20") == 30  # softmax of equal logits over 5 ops
    assert figure_to_array(fig).shape[2] == 3


def events(run_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return {"tags": acc.Tags(), "acc": acc}


def test_search_writes_tensorboard_cells_metadata_and_log(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    assert search_main([*TINY, f"run.dir={run_dir}", "--quiet"]) == 0
    assert capsys.readouterr().out == ""  # --quiet prints nothing ...
    log = (run_dir / "log.txt").read_text()
    assert "epoch 2/2" in log and "done: genotype written" in log  # ... and log.txt keeps it all
    ev = events(run_dir)
    scalars = set(ev["tags"]["scalars"])
    assert {"search/train/loss", "search/train/acc", "search/valid/loss", "search/valid/acc", "search/tau",
            "search/lr", "search/time_s", "search/images_per_s"} <= scalars
    assert [e.step for e in ev["acc"].Scalars("search/tau")] == [1, 2]
    assert {"alpha/normal", "alpha/reduce", "cells/normal", "cells/reduce"} <= set(ev["tags"]["images"])
    assert {"alpha_logits/normal", "alpha_softmax/reduce"} <= set(ev["tags"]["histograms"])
    assert "genotype/text_summary" in ev["tags"]["tensors"]
    assert sorted(p.name for p in (run_dir / "cells").iterdir()) == ["normal.png", "normal.svg", "reduce.png",
                                                                     "reduce.svg"]
    meta = json.loads((run_dir / "meta.json").read_text())
    session = meta["sessions"][0]
    assert session["resumed"] is False and session["device"]["type"] == "cpu"
    assert {"python", "torch", "torchvision", "numpy"} <= set(session["versions"])
    assert "commit" in session["git"] and isinstance(session["command"], list)
    assert session["cpu"]["cores"] >= 1 and isinstance(session["cpu"]["model"], str)
    assert meta["data"] == {"name": "synthetic", "weight_images": 32, "alpha_images": 32, "classes": 10,
                            "image_shape": [3, 8, 8]}  # what a report states as the budget
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(m["peak_mib"] > 50 for m in metrics)  # the process's high-water mark: Python and torch at least


def test_plain_progress_lines_without_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert search_main([*TINY, "search.epochs=1", "data.synthetic.train=128", "run.log_every=2",
                        "run.tensorboard=false", f"run.dir={tmp_path / 'run'}"]) == 0
    out = capsys.readouterr().out
    assert "epoch 1 step 2/4  loss" in out and "epoch 1 step 4/4" in out and "tau 10.00" in out
    assert "epoch 1 step 1/4" not in out


def test_a_piped_run_shows_progress_and_time_to_go_long_before_its_first_epoch_ends(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """By default (run.log_every=0) a run without a terminal prints a line after its first 5 steps, with the
    epoch's time to go, then one every Progress.NOTE_S seconds."""
    from nas.run.runlog import Progress

    monkeypatch.setattr(Progress, "NOTE_S", 0.0)  # every step after the first line
    assert search_main([*TINY, "search.epochs=1", "data.synthetic.train=256", "data.batch_size=16",
                        "run.tensorboard=false", f"run.dir={tmp_path / 'run'}"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"epoch 1 step 5/8  loss .* about \d+s to the epoch's end", out)
    assert "epoch 1 step 4/8" not in out and "epoch 1 step 7/8" in out and "epoch 1 step 8/8" not in out


def test_evaluate_writes_tensorboard(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    rc = evaluate_main(["--config", "configs/eval/quick.yaml", "--genotype", "DARTS_V2", "train.epochs=2",
                        "data.synthetic.train=64", "data.synthetic.test=16", "data.image_size=8",
                        "data.batch_size=16", "model.C=4", "model.layers=3", f"run.dir={run_dir}", "--quiet"])
    assert rc == 0
    ev = events(run_dir)
    assert {"train/train/loss", "train/test/acc", "train/lr", "train/drop_path"} <= set(ev["tags"]["scalars"])
    assert {"cells/normal", "cells/reduce"} <= set(ev["tags"]["images"])
