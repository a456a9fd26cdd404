"""What a run leaves on disk when it fails or is stopped, and how its state and kind are read: a training writes its
model before the result that marks it finished."""

from __future__ import annotations

from pathlib import Path

import pytest

from nas.cli import evaluate_main
from nas.run.files import run_state

TRAIN = ["--config", "configs/eval/quick.yaml", "--genotype", "GDAS_V1", "train.epochs=1", "data.synthetic.train=64",
         "data.synthetic.test=16", "data.image_size=8", "data.batch_size=16", "model.C=4", "model.layers=3",
         "run.tensorboard=false", "--quiet"]


def test_a_training_stopped_while_its_model_is_written_is_not_finished(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """results.json marks a training finished, so model.pt is written before it: a stop between the two leaves a
    run that --resume completes, not a finished one without its model."""
    import nas.model

    def killed(*args: object) -> None:
        raise KeyboardInterrupt  # as a Ctrl-C that lands while the model is written

    run_dir = tmp_path / "run"
    monkeypatch.setattr(nas.model, "save_model", killed)
    assert evaluate_main([*TRAIN, f"run.dir={run_dir}"]) == 130
    monkeypatch.undo()
    assert run_state(run_dir, "train") == "interrupted"
    assert not (run_dir / "results.json").exists() and not (run_dir / "model.pt").exists()
    assert evaluate_main(["--resume", str(run_dir), "--quiet"]) == 0
    assert run_state(run_dir, "train") == "done"
    model = nas.model.load_model(run_dir)
    assert model.classes and model.image_size == 8


def test_a_run_records_its_kind_and_is_told_by_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """meta.json records the kind of run, which run_kind reads before anything in config.yaml; a run written before
    meta.json recorded it is told by its config's sections. --resume asks the run's kind and state: another kind
    names its tool, and a run stopped before its first checkpoint is said to start again."""
    import json

    from nas.cli import search_main
    from nas.run.files import run_kind

    run_dir = tmp_path / "run"
    assert evaluate_main([*TRAIN, f"run.dir={run_dir}"]) == 0
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["kind"] == "train" and run_kind(run_dir) == "train"
    config = (run_dir / "config.yaml").read_text()
    (run_dir / "config.yaml").write_text(config + "search: {}\n")  # a section of the other kind's
    assert run_kind(run_dir) == "train"
    (run_dir / "config.yaml").write_text(config)
    (run_dir / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "kind"}))  # an older run
    assert run_kind(run_dir) == "train"
    capsys.readouterr()
    assert search_main(["--resume", str(run_dir)]) == 2
    assert f"is a train run; resume it with python -m nas evaluate --resume {run_dir}" in capsys.readouterr().err
    for name in ("checkpoint.pt", "results.json", "model.pt"):  # as a run killed before its first checkpoint
        (run_dir / name).unlink()
    assert run_state(run_dir, "train") == "started"
    assert evaluate_main(["--resume", str(run_dir)]) == 2
    assert ("has no checkpoint.pt: the run stopped before its first checkpoint, and the command that started it "
            "starts it again") in capsys.readouterr().err
