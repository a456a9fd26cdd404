"""A stop signal wherever it lands: between epochs, at the end of the last epoch, in the zero-cost scoring of derivation
and in the final stage. Each stops the run with a checkpoint and the command that resumes it, and the resumed search
ends with the genotype of a search never stopped, derived in the state of its last epoch (tau, dropout)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nas.cli import search_main
from nas.run.checkpoint import load_checkpoint

SEARCH = ["search.epochs=2", "data.synthetic.train=128", "data.image_size=8", "data.batch_size=16",
          "model.space=nb201", "model.C=4", "model.layers=1", "run.deterministic=true", "run.tensorboard=false",
          "--quiet"]  # 4 steps an epoch
SCORED = [*SEARCH, "search.derive=score", "search.pool=alpha", "search.samples=4", "search.score_batch=16",
          "search.final.cells=2", "search.final.epochs=1", "search.final.average=1"]  # scores, then 2 finalists


def signal_in(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, sig: int = signal.SIGTERM,
              when: Callable[..., bool] = lambda *a, **k: True) -> None:
    """Send ``sig`` to this process as ``module.name`` is called (when ``when`` says so), then run it."""
    real = getattr(module, name)

    def signalled(*args: Any, **kwargs: Any) -> Any:
        if when(*args, **kwargs):
            os.kill(os.getpid(), sig)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, signalled)


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scored search of SCORED, never stopped."""
    run_dir = tmp_path_factory.mktemp("stops") / "whole"
    assert search_main([*SCORED, f"run.dir={run_dir}"]) == 0
    return run_dir


def stopped_then_resumed(run_dir: Path, whole: Path, said: str, err: str, epoch: int) -> None:
    """The stop said ``said`` and how to resume, left the checkpoint of ``epoch`` epochs and no result; the resumed
    search ends with the never-stopped search's genotype and final stage."""
    assert f"{said}; resume with: python -m nas search --resume {run_dir}" in err, err
    assert "Traceback" not in err
    assert not (run_dir / "genotype.json").exists()
    state = load_checkpoint(run_dir / "checkpoint.pt", "search")
    assert (state["epoch"], state["step"]) == (epoch, 0)
    assert search_main(["--resume", str(run_dir), "--quiet"]) == 0
    assert (run_dir / "genotype.json").read_text() == (whole / "genotype.json").read_text()
    assert (run_dir / "final.json").read_text() == (whole / "final.json").read_text()


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.parametrize("epoch", [1, 2], ids=["between-epochs", "last-epoch"])
def test_a_signal_while_an_epoch_is_recorded_stops_after_it(whole: Path, tmp_path: Path, epoch: int, sig: int,
                                                           code: int, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The signal lands after the epoch's last step agreed, while the epoch's records are written: the epoch's
    checkpoint is written and the run stops there, not a step later, and not never (the last epoch)."""
    from nas.searching import bilevel

    signal_in(monkeypatch, bilevel, "record_epoch", sig, when=lambda cfg, model, meter, e, *a: e + 1 == epoch)
    run_dir = tmp_path / "run"
    assert search_main([*SCORED, f"run.dir={run_dir}"]) == code
    monkeypatch.undo()
    stopped_then_resumed(run_dir, whole, f"stopped after epoch {epoch} with a checkpoint", capsys.readouterr().err,
                         epoch)


@pytest.mark.parametrize("module,name", [("nas.searching.zerocost", "rank_cells"),
                                         ("nas.searching.finalists", "successive_halving")],
                         ids=["zero-cost-scoring", "final-stage"])
def test_a_signal_in_derivation_stops_with_the_last_checkpoint(whole: Path, tmp_path: Path, module: str, name: str,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    signal_in(monkeypatch, importlib.import_module(module), name)
    run_dir = tmp_path / "run"
    assert search_main([*SCORED, f"run.dir={run_dir}"]) == 143
    monkeypatch.undo()
    stopped_then_resumed(run_dir, whole, "stopped; the checkpoint after epoch 2 is kept", capsys.readouterr().err, 2)


def test_a_signal_no_agreement_saw_is_raised_as_the_loop_ends() -> None:
    """A signal that lands after the last agreement of a loop (its last epoch's) is raised as the loop's graceful stop
    ends, where it would otherwise be dropped with the handlers."""
    from nas.run.checkpoint import GracefulStop, Terminated

    with pytest.raises(Terminated), GracefulStop() as stop:
        stop._handle(signal.SIGTERM, None)
    with GracefulStop() as stop:  # agreed on: the loop's own stop raises Stopped; the frame adds nothing
        stop._handle(signal.SIGINT, None)
        stop.signum = stop.received


def test_a_search_resumed_in_derivation_derives_in_its_last_epochs_state(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """SNAS's perturbation selection measures the supernet by its soft samples at tau: a search stopped in
    derivation and resumed derives at the last epoch's tau and dropout, and chooses the same cell."""
    from nas.searching import bilevel, derive

    args = [*SEARCH, "search.epochs=3", "search.mixer=snas", "search.derive=perturb", "search.param_free_dropout=0.3"]
    seen: list[tuple[float, list[float]]] = []
    real = derive.derive_genotype

    def noted(cfg: Any, model: Any, *rest: Any) -> Any:
        drops = [m.drop for m in model.modules() if hasattr(m, "drop")]
        seen.append((model.mixer.tau, drops))
        return real(cfg, model, *rest)

    monkeypatch.setattr(bilevel, "derive_genotype", noted)
    assert search_main([*args, f"run.dir={tmp_path / 'whole'}"]) == 0
    signal_in(monkeypatch, bilevel, "derive_genotype")
    assert search_main([*args, f"run.dir={tmp_path / 'cut'}"]) == 143
    monkeypatch.setattr(bilevel, "derive_genotype", noted)
    assert search_main(["--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    assert seen[0] == seen[1] and seen[0][0] == pytest.approx(0.1)  # tau_min: the last epoch's
    assert (tmp_path / "cut" / "genotype.json").read_text() == (tmp_path / "whole" / "genotype.json").read_text()
