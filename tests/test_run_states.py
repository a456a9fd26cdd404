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


SEARCH = ["search.epochs=1", "data.synthetic.train=64", "data.image_size=8", "data.batch_size=16", "model.space=nb201",
          "model.C=4", "model.layers=1", "run.tensorboard=false", "--quiet"]


def test_a_search_refused_by_its_split_leaves_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """data.subset=1 leaves the alpha half empty: refused before the run directory exists, so that the same command,
    corrected, starts."""
    from nas.cli import search_main

    run_dir = tmp_path / "run"
    assert search_main([*SEARCH, "data.subset=1", f"run.dir={run_dir}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 1 training images with data.train_portion=0.5 leave an empty half") and \
        err.count("\n") == 1, err
    assert not run_dir.exists()
    assert search_main([*SEARCH, "data.subset=32", f"run.dir={run_dir}"]) == 0


def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_nothing(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-finite loss or an error (out of memory) in the first epoch of a new run removes what it wrote: no
    config.yaml and meta.json that the same command would refuse and --resume could not continue."""
    import torch

    from nas.cli import search_main
    from nas.searching import bilevel

    run_dir = tmp_path / "nan"
    assert search_main([*SEARCH, "search.lr=1e25", "search.lr_min=0", "search.grad_clip=0",
                        f"run.dir={run_dir}"]) == 3
    err = capsys.readouterr().err
    assert "the loss is not finite" in err and "there is no checkpoint yet, and the run leaves nothing behind" in err
    assert not run_dir.exists()

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    run_dir = tmp_path / "oom"
    run_dir.mkdir()  # a folder of the user's: it stays, emptied of what the run wrote
    (run_dir / "notes.txt").write_text("mine")
    monkeypatch.setattr(bilevel, "bilevel_step", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        search_main([*SEARCH, f"run.dir={run_dir}"])
    assert [p.name for p in run_dir.iterdir()] == ["notes.txt"]


def test_the_same_command_starts_again_a_run_stopped_before_its_first_checkpoint(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run killed before its first checkpoint (run_state "started") is started again by the same command; a finished
    or an interrupted one is refused, saying what continues it."""
    import json

    run_dir = tmp_path / "run"
    train = [*TRAIN, "run.checkpoint_every=2", f"run.dir={run_dir}"]
    assert evaluate_main(train) == 0
    capsys.readouterr()
    assert evaluate_main(train) == 2
    assert f"run.dir={str(run_dir)!r} already holds a run: a finished train run (results.json); choose another " \
           "run.dir, or set run.overwrite=true to replace it" in capsys.readouterr().err
    (run_dir / "results.json").unlink()  # as a kill before the end: a checkpoint and no result
    assert evaluate_main(train) == 2
    assert f"an interrupted train run; resume it with python -m nas evaluate --resume {run_dir}" \
        in capsys.readouterr().err
    (run_dir / "checkpoint.pt").unlink()  # as a kill before the first checkpoint
    assert run_state(run_dir, "train") == "started"
    assert evaluate_main(train) == 0
    assert run_state(run_dir, "train") == "done"
    sessions = json.loads((run_dir / "meta.json").read_text())["sessions"]
    assert len(sessions) == 1 and not sessions[0]["resumed"]  # started over: the files it left were replaced
