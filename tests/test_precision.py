"""Mixed precision and memory format: bf16 autocast and channels-last give the same GDAS semantics (one op per
edge, every alpha entry reached) and runs that finish; fp16 asks for CUDA; torch.compile is for evaluate only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nas.cli import evaluate_main, search_main
from nas.searching.bilevel import alpha_step, weight_step
from nas.searching.mixing import create_mixer
from nas.searching.supernet import build_supernet

TINY = ["search.epochs=1", "data.synthetic.train=64", "data.image_size=8", "data.batch_size=16", "model.C=4",
        "model.layers=3", "run.tensorboard=false"]


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_channels_last_gives_the_same_step(space: str) -> None:
    """The memory-free straight-through handles channels-last tensors: same loss and alpha gradient."""
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))
    results = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        model = build_supernet(space, C=4, layers=3 if space == "darts" else 1, num_classes=5,
                               mixer=create_mixer("gdas")).to(memory_format=fmt)
        opt = torch.optim.Adam(model.arch_parameters(), lr=1e-3)
        torch.manual_seed(1)
        loss, _ = alpha_step(model, x.contiguous(memory_format=fmt), y, opt)
        results.append((loss, {t: a.grad.clone() for t, a in model.alpha.items()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.allclose(loss_a, loss_b, rtol=1e-5)
    for t in grads_a:
        assert torch.allclose(grads_a[t], grads_b[t], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_bf16_autocast_steps_reach_every_alpha_entry(space: str) -> None:
    torch.manual_seed(0)
    model = build_supernet(space, C=4, layers=3 if space == "darts" else 1, num_classes=5, mixer=create_mixer("gdas"))
    weights = model.weight_parameters()
    w_opt = torch.optim.SGD(weights, lr=0.01)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=1e-3)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))
    amp = torch.autocast("cpu", dtype=torch.bfloat16)
    w_loss, _ = weight_step(model, x, y, w_opt, weights, 5.0, amp)
    a_loss, _ = alpha_step(model, x, y, a_opt, amp)
    assert torch.isfinite(w_loss) and torch.isfinite(a_loss)
    for a in model.arch_parameters():
        assert a.grad is not None and a.grad.dtype == torch.float32 and torch.count_nonzero(a.grad) == a.numel()


def test_search_and_evaluate_run_with_bf16_and_channels_last(tmp_path: Path) -> None:
    assert search_main([*TINY, "run.amp=bf16", "run.channels_last=true", f"run.dir={tmp_path / 's'}", "--quiet"]) == 0
    assert (tmp_path / "s" / "genotype.json").exists()
    rc = evaluate_main(["--config", "configs/eval/quick.yaml", "--genotype", str(tmp_path / "s"), "train.epochs=1",
                        "data.synthetic.train=64", "data.synthetic.test=16", "data.image_size=8",
                        "data.batch_size=16", "model.C=4", "model.layers=3", "run.amp=bf16",
                        "run.channels_last=true", "run.tensorboard=false", f"run.dir={tmp_path / 'e'}", "--quiet"])
    assert rc == 0
    results = json.loads((tmp_path / "e" / "results.json").read_text())
    assert 0 <= results["final_test_acc"] <= 100


def test_fp16_needs_cuda_and_compile_is_for_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert search_main([*TINY, "run.amp=fp16", f"run.dir={tmp_path / 'a'}"]) == 2
    assert "run.amp=fp16 needs a CUDA device" in capsys.readouterr().err
    assert search_main([*TINY, "run.compile=true", f"run.dir={tmp_path / 'b'}"]) == 2
    assert "run.compile applies only to evaluate.py" in capsys.readouterr().err


def test_compiled_evaluation_compiles_one_training_and_one_test_graph(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """run.compile=true trains and tests through torch.compile; the drop-path probability changes every epoch
    without a recompilation (it lives in a tensor), so three epochs need two graphs. The graphs are what dynamo
    captures, whatever backend then compiles them: the test runs them eagerly, since inductor's code generation
    alone takes minutes on a CPU."""
    from torch._dynamo.utils import counters

    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compile_(model, **{**kw, "backend": "eager"}))

    torch._dynamo.reset()
    counters.clear()
    rc = evaluate_main(["--config", "configs/eval/quick.yaml", "--genotype", "DARTS_V2", "train.epochs=3",
                        "data.synthetic.train=32", "data.synthetic.test=16", "data.image_size=8", "data.batch_size=16",
                        "model.C=4", "model.layers=3", "run.compile=true", "run.tensorboard=false",
                        f"run.dir={tmp_path / 'run'}", "--quiet"])
    assert rc == 0
    assert counters["stats"]["unique_graphs"] == 2
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["drop_path"] for m in metrics] == [0.0, 0.1 / 3, 0.2 / 3]
    torch._dynamo.reset()
