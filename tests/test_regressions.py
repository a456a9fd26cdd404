"""Bugs once found in the code, each held by a test that failed before its fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nas.cli import TOOLS, main
from nas.config import SearchConfig, StudyConfig
from nas.study.jobs import exit_reason

ROOT = Path(__file__).resolve().parents[1]
TINY = ["search.epochs=2", "data.synthetic.train=64", "data.image_size=8", "data.batch_size=16", "model.C=4",
        "model.layers=3", "run.tensorboard=false"]


def test_mutable_defaults_are_not_shared_between_configs() -> None:
    a, b = StudyConfig(), StudyConfig()
    assert a.per_method is not b.per_method and a.random is not b.random and a.data is not b.data
    a.per_method["mine"] = {"mixer": "gdas"}
    assert StudyConfig().per_method == {}
    assert SearchConfig().search is not SearchConfig().search


def test_a_piece_that_exits_0_without_its_result_is_a_failure_not_a_crash() -> None:
    assert exit_reason(0) == "exited 0 without writing its result file"
    assert exit_reason(-9) == "killed by signal SIGKILL"
    assert exit_reason(-200) == "killed by signal 200"  # no such signal: said, not raised


def test_random_search_logs_no_genotype_of_its_untrained_alpha(tmp_path: Path) -> None:
    run = tmp_path / "r"
    rc = main(["search", "--config", "configs/quickstart.yaml", *TINY, "search.mixer=random", "search.derive=sample",
               "search.samples=3", f"run.dir={run}", "--quiet"])
    assert rc == 0
    assert not (run / "genotypes.jsonl").exists() and not (run / "alpha.jsonl").exists()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and not any("param_free_mass" in m for m in metrics)
    assert "  genotype " not in (run / "log.txt").read_text()
    assert (run / "genotype.json").exists()  # the sampled cells' best is still the result


def test_resume_tells_the_kind_from_the_checkpoint_not_the_config_text(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "s"
    assert main(["search", "--config", "configs/quickstart.yaml", *TINY, "search.epochs=1", f"run.dir={run}",
                 "--quiet"]) == 0
    # a config.yaml that happens to hold the other loop's section name does not fool it
    (run / "config.yaml").write_text((run / "config.yaml").read_text() + "# train: not a section\n")
    assert main(["evaluate", "--resume", str(run)]) == 2
    assert f"{str(run)!r} is a search run; resume it with python -m nas search --resume {run}" \
        in capsys.readouterr().err


def test_the_door_lists_every_tool_and_exits_0_on_help() -> None:
    out = subprocess.run([sys.executable, "-m", "nas", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0
    for tool in ("search", "evaluate", "compare", "genotype", "plot", "bench201", "config"):
        assert f"  {tool} " in out.stdout and tool in TOOLS
    out = subprocess.run([sys.executable, "-m", "nas", "serch"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and "unknown tool 'serch'; valid: search, evaluate" in out.stderr


def test_every_tool_help_exits_0_and_its_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, (tool, _) in TOOLS.items():
        with pytest.raises(SystemExit) as e:
            tool(["--help"])
        assert e.value.code == 0, name
    text = capsys.readouterr().out
    assert "example: python -m nas genotype runs/quickstart --to text" in text
    run = tmp_path / "q"
    assert main(["search", "--config", "configs/quickstart.yaml", *TINY, "search.epochs=1", f"run.dir={run}",
                 "--quiet"]) == 0
    assert main(["genotype", str(run), "--to", "text"]) == 0
    assert capsys.readouterr().out.startswith("Genotype(normal=[")



def test_a_batch_larger_than_its_split_is_said(tmp_path: Path) -> None:
    run = tmp_path / "b"
    assert main(["search", "--config", "configs/quickstart.yaml", *TINY, "search.epochs=1", "data.synthetic.train=40",
                 "data.batch_size=32", f"run.dir={run}", "--quiet"]) == 0
    log = (run / "log.txt").read_text()
    assert "data.batch_size=32 is more than the 20 images of the weight half: each epoch runs 1 step of 20" in log
    assert " 1 step of 2 x 32 images per epoch" in log


def image_folder(root: Path, classes: int = 3) -> Path:
    from PIL import Image

    for split, n in (("train", 12), ("test", 3)):
        for c in range(classes):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (10, 10), (40 * c + i, 90, 200 - 30 * c)).save(root / split / f"c{c}" / f"{i}.png")
    return root


def test_a_recipe_switches_data_set_and_mixer_from_the_command_line(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    folder = image_folder(tmp_path / "img")
    small = ["search.epochs=1", "data.image_size=8", "data.batch_size=8", "model.C=4", "model.layers=3",
             "run.tensorboard=false", "--quiet"]
    assert main(["search", "--config", "configs/quickstart.yaml", "data.name=imagefolder", f"data.root={folder}",
                 *small, f"run.dir={tmp_path / 'a'}"]) == 0
    assert "note: the recipe's data.synthetic applies only to data.name=synthetic; dropped, since " \
           "data.name=imagefolder" in capsys.readouterr().err
    assert main(["search", "--config", "configs/quickstart.yaml", "search.mixer=darts", "data.synthetic.train=64",
                 *small, f"run.dir={tmp_path / 'b'}"]) == 0
    assert "note: the recipe's search.tau_max applies only to search.mixer=gdas or snas" in capsys.readouterr().err
    # given on the command line, a key that would do nothing is refused, even at its default value
    assert main(["search", "--config", "configs/quickstart.yaml", "search.mixer=darts", "search.tau_max=10",
                 f"run.dir={tmp_path / 'c'}"]) == 2
    assert "search.tau_max applies only to search.mixer=gdas or snas; this run has search.mixer=darts: drop " \
           "search.tau_max" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_the_image_folder_evaluation_recipe_trains_either_space(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "img")
    for genotype, layers in (("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_1x1~1|+|skip_connect~0|nor_conv_3x3~1|"
                              "avg_pool_3x3~2|", 1), ("DARTS_V2", 3)):
        run = tmp_path / f"e{layers}"
        assert main(["evaluate", "--config", "configs/eval/imagefolder.yaml", "--genotype", genotype,
                     f"data.root={folder}", "data.image_size=8", "data.batch_size=8", "train.epochs=1", "model.C=4",
                     f"model.layers={layers}", "run.tensorboard=false", f"run.dir={run}", "--quiet"]) == 0
        assert json.loads((run / "results.json").read_text())["epochs"] == 1


def test_drawings_number_intermediate_nodes_as_genotypes_do() -> None:
    from nas.space.genotype import published_genotype
    from nas.space.plot import cell_dot

    dot = cell_dot(published_genotype("DARTS_V2"))
    assert all(f'label="{k}"' in dot for k in "2345") and 'label="0"' not in dot and 'label="1"' not in dot
