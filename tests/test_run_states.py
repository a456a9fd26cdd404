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
