"""Comparison studies: a tiny study writes every report file with the right rows; random genotypes follow the
derivation constraints; a study killed with SIGKILL and resumed skips what finished and ends with the same report;
--plan, --report and --jobs; failed runs; and a study's bad inputs."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from nas.cli import compare_main, genotype_main, search_main
from nas.config import StudyConfig, load_config
from nas.space.derivation import random_genotype
from nas.space.genotype import check_genotype, load_genotype
from nas.space.spaces import get_space
from nas.study.jobs import job_settings, study_lock
from nas.study.markdown import markdown
from nas.study.report import compare

ROOT = Path(__file__).resolve().parents[1]
# 2 methods x 1 seed, 3 random cells, 1 epoch each: 2 searches of 16 steps, 5 trainings of 32 steps
TINY = ["methods=[gdas,darts]", "seeds=[0]", "random.samples=3", "data.synthetic.train=256",
        "data.synthetic.test=64", "data.image_size=8", "data.batch_size=8", "model.space=nb201", "model.C=4",
        "model.layers=1", "search.epochs=1", "eval.seeds=[0]", "eval.data.batch_size=8", "eval.data.cutout=0",
        "eval.model.C=4", "eval.model.layers=1", "eval.model.auxiliary_weight=0", "eval.model.drop_path=0",
        "eval.train.epochs=1", "run.deterministic=true", "run.tensorboard=false", "run.checkpoint_every=2",
        "run.log_every=1"]


def compare_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "compare.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def stable(report: dict) -> dict:
    """report.json without what differs between two runs of the same study: times, memory, machine and paths."""
    def strip(x: object) -> object:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items()
                    if not any(w in k for w in ("time", "peak", "seconds", "cpu_s", "wall_s"))
                    and k not in ("machine", "study", "dir")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return strip(report)  # type: ignore[return-value]


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    study_dir = tmp_path_factory.mktemp("study") / "tiny"
    proc = compare_cli("--jobs", "2", *TINY, f"run.dir={study_dir}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return study_dir


def test_tiny_study_writes_every_report_file_with_the_right_rows(study: Path) -> None:
    report = json.loads((study / "report.json").read_text())
    assert [r["method"] for r in report["methods"]] == ["gdas", "darts"]
    assert report["random"]["cells"] == 3 and report["random"]["acc"]["n"] == 3
    assert [c["id"] for c in report["cells"]] == ["gdas-s0", "darts-s0", "random-0", "random-1", "random-2"]
    assert report["unfinished"] == []
    for row in report["methods"]:
        assert row["searches_done"] == 1 and row["acc"]["n"] == 1
        assert 0 <= row["acc"]["mean"] <= 100 and row["params"] > 0 and row["flops"] > 0
        assert row["search_time_s"] > 0 and row["search_peak_mib"] > 0
        assert 0 <= row["supernet_valid_acc"]["mean"] <= 100
    for cell in report["cells"]:  # each accuracy is the training's own final one, never a best epoch
        results = json.loads((study / "train" / f"{cell['id']}-e0" / "results.json").read_text())
        assert cell["acc"] == {"0": results["final_test_acc"]} and "best_test_acc" not in results
        assert cell["genotype"] == str(load_genotype(json.dumps(cell["genotype_json"])))
        assert all((study / d).is_file() for d in cell["drawings"]) and cell["drawings"]
    # every method against each other and against random; with n = 1 nothing is called a win
    assert [(c["a"], c["b"]) for c in report["comparisons"]] == [("gdas", "darts"), ("gdas", "random"),
                                                                 ("darts", "random")]
    assert report["comparisons"][0]["verdict"] == "no_spread"
    assert sorted(report["plots"]) == sorted(f"plots/{n}.png" for n in ("accuracy", "accuracy_cost",
                                                                         "supernet_valid", "alpha_decided", "op_share",
                                                                         "search_cost"))
    assert all((study / p).stat().st_size > 1000 for p in report["plots"])
    md = (study / "report.md").read_text()
    assert "| gdas | " in md and "| darts | " in md and "| random (3 cells) | " in md and "## Not finished" not in md
    assert "search: nb201 supernet, C=4, layers=1, 1 epoch, batch 8, seeds [0]" in md  # the budget
    assert r"\|" in md and "machine:" in md  # NB201 strings are escaped inside the table


def test_every_piece_of_a_study_is_an_ordinary_run_directory(study: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    search = study / "search" / "gdas-s0"
    assert (search / "genotype.json").is_file() and (search / "config.yaml").is_file()
    assert search_main(["--resume", str(search)]) == 0
    assert "has finished its 1 epoch;" in capsys.readouterr().out
    assert genotype_main([str(search), "--to", "text"]) == 0
    assert capsys.readouterr().out.strip() == str(load_genotype(str(search)))
    train_cfg = yaml.safe_load((study / "train" / "random-1-e0" / "config.yaml").read_text())
    assert train_cfg["seed"] == 0 and train_cfg["model"]["C"] == 4 and train_cfg["train"]["epochs"] == 1
    assert load_genotype(str(study / "train" / "random-1-e0")) == load_genotype(str(study / "random" / "random-1"))
    assert compare_main(["--resume", str(study), "--quiet"]) == 0  # nothing left to run: the report is rebuilt


def test_random_genotypes_follow_the_derivation_constraints() -> None:
    rng = random.Random(0)
    darts, nb201 = get_space("darts"), get_space("nb201")
    seen: collections.Counter[str] = collections.Counter()
    for _ in range(300):
        g = check_genotype(random_genotype(darts, rng, "darts"))
        for nodes, _ in g.cells().values():
            for i, node in enumerate(nodes, start=2):
                inputs = [src for _, src in node]
                assert len(node) == 2 and len(set(inputs)) == 2 and all(0 <= s < i for s in inputs)
                assert all(op != "none" for op, _ in node)
                seen.update(op for op, _ in node)
        g = random_genotype(darts, rng, "gdas")  # the GDAS rule: 2 distinct (op, input) pairs, inputs may repeat
        assert all(len(set(node)) == 2 for nodes, _ in g.cells().values() for node in nodes)
    assert set(seen) == set(darts.ops) - {"none"}
    expected = sum(seen.values()) / len(seen)
    assert all(abs(n - expected) < 5 * expected ** 0.5 for n in seen.values())  # uniform over the 7 ops
    nb: collections.Counter[str] = collections.Counter()
    for _ in range(300):
        g = random_genotype(nb201, rng)
        assert [[s for _, s in node] for node in g.normal] == [[0], [0, 1], [0, 1, 2]]
        nb.update(op for node in g.normal for op, _ in node)
    assert set(nb) == set(nb201.ops)  # none included: NAS-Bench-201 keeps the argmax op, whatever it is
    assert random_genotype(darts, random.Random(7)) == random_genotype(darts, random.Random(7))


def test_verdicts_call_a_difference_only_beyond_the_seed_spread() -> None:
    def row(name: str, values: list[float]) -> dict:
        import statistics

        return {"method": name, "acc": {"mean": statistics.fmean(values), "n": len(values),
                                             "std": statistics.stdev(values) if len(values) > 1 else 0.0}}

    assert compare(row("a", [70, 74]), row("b", [71, 73]))["verdict"] == "within_spread"
    wide = compare(row("a", [80, 81]), row("b", [70, 71]))
    assert wide["verdict"] == "higher" and "a is higher by 10.00 points" in wide["text"]
    assert compare(row("a", [70, 71]), row("b", [80, 81]))["verdict"] == "lower"
    assert compare(row("a", [90]), row("b", [10, 11]))["verdict"] == "no_spread"
    assert compare(row("a", [90]), {"method": "b", "acc": {"n": 0}})["verdict"] == "missing"


def test_study_killed_with_sigkill_resumes_and_ends_with_the_same_report(study: Path, tmp_path: Path) -> None:
    killed, log = tmp_path / "killed", tmp_path / "out.txt"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "compare.py", "--jobs", "2", *TINY, f"run.dir={killed}"], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 300
    while not re.search(r"train/random-0-e0 \| .*step 3/32", log.read_text()):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # the study and, through the kernel, the runs it is running
    proc.wait()
    time.sleep(0.5)
    runs = [killed / "search" / f"{m}-s0" for m in ("gdas", "darts")] + sorted((killed / "train").iterdir())
    done = {d: digest(d) for d in runs if (d / "genotype.json").exists() and d.parent.name == "search"
            or (d / "results.json").exists()}
    interrupted = [d for d in runs if d not in done and (d / "checkpoint.pt").exists()]
    assert done, "a search finishes before any training starts"

    # what has not finished, in the report and in the plan
    assert compare_main(["--report", str(killed)]) == 0
    report = json.loads((killed / "report.json").read_text())
    assert len(report["unfinished"]) == 7 - len(done)
    assert "## Not finished" in (killed / "report.md").read_text()
    plan = compare_cli("--resume", str(killed), "--plan")
    lines = plan.stdout.splitlines()
    assert plan.returncode == 0 and len(lines) == 7 - len(done)
    assert all(line.startswith("python -m nas ") for line in lines)
    assert {f"python -m nas {'search' if d.parent.name == 'search' else 'evaluate'} --resume {d}"
            for d in interrupted} <= set(lines)

    resumed = compare_cli("--jobs", "2", "--resume", str(killed))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert all(digest(d) == before for d, before in done.items())  # finished runs are skipped, untouched
    assert not any(f"start {d.parent.name}/{d.name} " in resumed.stdout for d in done)
    for d in interrupted:  # each continues from its checkpoint
        assert re.search(rf"{d.parent.name}/{d.name} \| .* resuming at epoch 1, step [1-9]", resumed.stdout)
    a, b = (json.loads((d / "report.json").read_text()) for d in (killed, study))
    assert stable(a) == stable(b)


def test_ctrl_c_stops_the_study_with_checkpoints_and_a_resume_hint(tmp_path: Path) -> None:
    study_dir, log = tmp_path / "s", tmp_path / "out.txt"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "compare.py", *TINY, "methods=[gdas]", "random.samples=0",
                                 f"run.dir={study_dir}"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while "step 3/16" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    text = log.read_text()
    assert ("stopped the study; its runs checkpointed; continue with: python -m nas compare --resume "
            f"{study_dir}") in text
    assert "stopped search/gdas-s0 with a checkpoint" in text and "Traceback" not in text
    assert (study_dir / "search" / "gdas-s0" / "checkpoint.pt").exists() and (study_dir / "report.md").exists()


def test_jobs_split_the_cpu_and_failed_runs_are_reported(tmp_path: Path) -> None:
    cfg = load_config(StudyConfig, None, ["run.device=cpu"])
    cores = len(os.sched_getaffinity(0))
    threads = max(1, cores // 2)
    assert job_settings(cfg, 2) == [([f"run.threads={threads}"], {"OMP_NUM_THREADS": str(threads)})] * 2
    assert job_settings(cfg, 1) == [([], {})]
    assert job_settings(cfg, 1, nproc=2) == [([f"run.threads={threads}"], {"OMP_NUM_THREADS": str(threads)})]
    # the search diverges (an absurd learning rate): its training cannot run, the random cell's still does
    study_dir = tmp_path / "s"
    args = [*TINY, "methods=[bad]", "per_method.bad.mixer=gdas", "per_method.bad.lr=1e30", "random.samples=1",
            f"run.dir={study_dir}"]
    proc = compare_cli("--jobs", "2", *args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error: 2 of 3 runs did not finish (search/bad-s0: error: the loss is not finite" in proc.stderr
    failures = json.loads((study_dir / "failures.json").read_text())
    assert list(failures) == ["search/bad-s0"]
    report = json.loads((study_dir / "report.json").read_text())
    assert {u["run"]: u["state"].split(":")[0] for u in report["unfinished"]} == {
        "search/bad-s0": "failed", "train/bad-s0-e0": "waits for its cell (search/bad-s0 has no genotype.json)"}
    assert (study_dir / "train" / "random-0-e0" / "results.json").exists()
    threads = yaml.safe_load((study_dir / "train" / "random-0-e0" / "config.yaml").read_text())["run"]["threads"]
    assert threads == max(1, cores // 2)


def test_report_escapes_and_warns_about_cells_dominated_by_parameter_free_edges() -> None:
    empty = {"mean": None, "std": None, "n": 0, "median": None, "min": None, "max": None}
    row = {"method": "gdas", "cells": 1, "acc": empty, "params": None, "flops": None, "search_time_s": None,
           "search_peak_mib": None, "supernet_valid_acc": empty, "edges": 6, "parameter_free": 6,
           "skip_connect": 5}
    cell = {"id": "gdas-s0", "method": "gdas", "seed": 0, "genotype": "|none~0|+|skip_connect~0|none~1|+|x|",
            "ops": {"edges": 6, "parameter_free": 6}, "acc": {}, "params": None, "flops": None,
            "drawings": [], "dominated": True, "normal_param_free": [6, 6]}
    budget = {"data": "synthetic", "classes": 10, "image_shape": [3, 8, 8], "weight_images": None,
              "alpha_images": None, "train_images": None, "test_images": None,
              "supernet": {"space": "nb201", "C": 4, "layers": 1}, "search_epochs": 1, "search_batch": 8,
              "search_seeds": [0], "per_method": {}, "eval": {"C": 4, "layers": 1, "epochs": 1, "batch": 8,
                                                              "seeds": [0]},
              "random_cells": 0, "search_time_s": 0.0, "search_cpu_s": 0.0, "train_time_s": 0.0}
    md = markdown({"study": "s", "scoring": {"by": "training"}, "budget": budget, "machine": {}, "methods": [row],
                   "random": None, "comparisons": [], "cells": [cell], "plots": [],
                   "unfinished": [{"run": "train/gdas-s0-e0", "state": "not started"}]})
    assert r"`\|none~0\|+\|skip_connect~0\|none~1\|+\|x\|`" in md
    assert "**warning: gdas: 1 of 1 cells have a normal cell dominated by parameter-free edges** (gdas-s0 6 of 6)" in md
    assert "Remedies: search.warmup_epochs" in md
    assert "- train/gdas-s0-e0: not started" in md


BAD = [
    (["methods=[gdas,dart]"], "method 'dart' is not a mixer (did you mean 'darts'?); valid: gdas, darts"),
    (["per_method.darts.data.name=cifar10"], "per_method.darts.data: a method may set search.* keys only"),
    (["per_method.darts.ordr=alpha_first"], "unknown key 'per_method.darts.ordr' (did you mean "
                                            "'per_method.darts.order'?)"),
    (["search.mixer=darts"], "search.mixer is set per method in a study"),
    (["search.tau_max=5"], "method 'darts': search.tau_max=5.0 applies only to search.mixer=gdas or snas (got "
                           "'darts')"),
    (["seeds=[1,1]"], "seeds=[1, 1] lists a seed twice"),
    (["methods=[gdas,random]", "per_method.random.mixer=gdas"], "method name 'random' is not valid"),
    (["per_method.a/b.mixer=gdas"], "method name 'a/b' is not valid"),
    (["eval.model.space=darts"], "eval.model.space=darts differs from model.space=nb201"),
    (["eval.model.auxiliary_weight=0.4"], "the eval recipe (eval.*): model.auxiliary_weight and model.drop_path "
                                          "apply only to darts-space networks"),
    (["data.name=fashion-mnist", "data.root=/nonexistent"], "Fashion-MNIST file train-images-idx3-ubyte.gz not "
                                                            "found in /nonexistent"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[b[1][:30] for b in BAD])
def test_bad_study_input_is_one_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        overrides: list[str], message: str) -> None:
    base = [a for a in TINY if not a.startswith("data.synthetic.")] if "data.name" in overrides[0] else TINY
    assert compare_main([*base, *overrides, f"run.dir={tmp_path / 'x'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()


def test_bad_study_directories_and_flags(study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = {k: v for k, v in digest(study).items() if k != ".lock"}
    cases = [
        ([*TINY, f"run.dir={study}"], "already holds a study (study.yaml); continue it with python -m nas compare "
                                      f"--resume {study}"),
        (["--resume", str(tmp_path / "nowhere")], "is not a directory"),
        (["--resume", str(study / "search" / "gdas-s0")], "is not a study directory: it has no study.yaml (it is a "
                                                          "run directory"),
        (["--resume", str(study), "search.epochs=3"], "'search.epochs' cannot change in a study that has started"),
        (["--resume", str(study), "--config", "configs/compare/quick.yaml"], "drop --config"),
        (["--report", str(study), "--plan"], "--report reads the study directory as it is"),
        (["--resume", str(study), "--jobs", "0"], "--jobs 0 is not valid; valid: 1 or more"),
    ]
    running = f"study {str(study)!r} is being run by compare.py (pid {os.getpid()})"
    cases += [(["--resume", str(study)], running),
              ([*TINY, f"run.dir={study}", "run.overwrite=true"], running),  # it would wipe the running study
              (["--report", str(study)], running)]  # it would write failures.json and the report beside it
    with study_lock(study):  # another compare.py is running this study
        for argv, message in cases:
            assert compare_main(argv) == 2, argv
            err = capsys.readouterr().err
            assert err.startswith("error: ") and message in err, (argv, err)
    assert {k: v for k, v in digest(study).items() if k != ".lock"} == before
    assert (study / ".lock").read_text() == ""  # released: no owner named, no stale pid


def test_a_study_directory_is_replaced_only_with_run_overwrite(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    study_dir = tmp_path / "s"
    assert compare_main([*TINY, f"run.dir={study_dir}", "--plan"]) == 0  # creates the study, runs nothing
    first = capsys.readouterr().out.splitlines()
    assert len(first) == 7 and (study_dir / "study.yaml").exists() and not (study_dir / "search").exists()
    (study_dir / "search" / "gdas-s0").mkdir(parents=True)
    assert compare_main([*TINY, "random.seed=5", f"run.dir={study_dir}", "--plan"]) == 2
    assert compare_main([*TINY, "random.seed=5", f"run.dir={study_dir}", "run.overwrite=true", "--plan"]) == 0
    assert not (study_dir / "search").exists()  # the study's own folders went with it
    assert "seed: 5" in (study_dir / "study.yaml").read_text()


def test_nproc_runs_every_search_and_training_data_parallel(tmp_path: Path) -> None:
    study_dir = tmp_path / "s"
    args = [*TINY, "methods=[gdas]", "random.samples=0", "data.synthetic.train=64", "data.synthetic.test=16",
            f"run.dir={study_dir}"]
    plan = compare_cli("--plan", "--nproc", "2", *args)
    assert plan.returncode == 0, plan.stderr
    lines = plan.stdout.strip().splitlines()
    start = "torchrun --standalone --nproc_per_node=2 -m nas "
    assert len(lines) == 2 and all(line.startswith(start) for line in lines)
    proc = compare_cli("--resume", str(study_dir), "--nproc", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "each on 2 processes" in proc.stdout
    for run in (study_dir / "search" / "gdas-s0", next((study_dir / "train").iterdir())):
        assert "data-parallel over 2 processes" in (run / "log.txt").read_text(), run
    assert (study_dir / "report.md").exists()


SIGNAL_AT_START = """
import os, signal, subprocess, sys, time
from pathlib import Path
from nas.study import jobs

class Piece:  # a run that sleeps unless a signal reaches it
    name, kind = "search/sleeper", "search"
    def ready(self): return True
    def status(self): return "not started"
    def command(self, extra=()): return ["-c", "import time; time.sleep(20)"]

class SignalledAtStart(subprocess.Popen):  # the study's signal lands right after the run starts
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        os.kill(os.getpid(), signal.SIGTERM)

class Log:
    def print(self, line): print(line, flush=True)

jobs.launcher = lambda nproc: [sys.executable]
jobs.subprocess.Popen = SignalledAtStart
t0 = time.perf_counter()
stopped = jobs.run_pieces([Piece()], 1, [([], {})], [], Log(), False, {})
print(f"stopped by {stopped} after {time.perf_counter() - t0:.1f}s")
"""


def test_a_signal_that_lands_as_a_run_starts_reaches_the_run(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", SIGNAL_AT_START], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "start search/sleeper (1/1)"
    assert lines[1] == "stopped search/sleeper before its first checkpoint: it starts again"
    assert lines[2].startswith(f"stopped by {int(signal.SIGTERM)} after ") and float(lines[2].split()[-1][:-1]) < 10
