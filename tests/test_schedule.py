"""GDAS's schedule keys: alpha's learning rate scaled to the run's alpha steps (search.schedule=steps), tau through a
warm-up, and the warm-up's weight steps on uniformly drawn ops with alpha untouched (search.warmup_sampling)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from nas.config import ConfigError, SearchConfig, load_config
from nas.run.checkpoint import load_checkpoint
from nas.searching import bilevel
from nas.searching.bilevel import REFERENCE_ALPHA_STEPS, alpha_lr, run_search
from nas.searching.mixing import tau_at

TINY = ["data.synthetic.train=64", "data.image_size=8", "data.batch_size=16", "model.space=nb201", "model.C=4",
        "model.layers=1", "run.tensorboard=false"]  # 2 steps an epoch


def test_alpha_learning_rate_follows_the_reference_steps() -> None:
    published = load_config(SearchConfig, None, ["search.epochs=10"]).search
    assert alpha_lr(published, 39) == published.arch_lr == 3e-4
    s = load_config(SearchConfig, None, ["search.epochs=10", "search.warmup_epochs=2", "search.schedule=steps"]).search
    assert REFERENCE_ALPHA_STEPS == 97_750
    assert alpha_lr(s, 39) == pytest.approx(3e-4 * 97_750 / (8 * 39))  # the warm-up takes no alpha step
    assert alpha_lr(s, 391 * 250 // 8) == pytest.approx(3e-4, rel=1e-3)  # the reference's own count: unchanged


def test_a_warm_up_trains_uniformly_drawn_ops_and_leaves_alpha_and_tau_alone(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[float | None, str | None, torch.Tensor]] = []
    real = bilevel.bilevel_step

    def noted(model: Any, *args: Any, **kwargs: Any) -> Any:
        mixer = model.weight_mixer
        seen.append((model.mixer.tau, None if mixer is None else mixer.name, model.alpha["normal"].detach().clone()))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(bilevel, "bilevel_step", noted)
    cfg = load_config(SearchConfig, None, [*TINY, "search.epochs=5", "search.warmup_epochs=2",
                                           "search.warmup_sampling=uniform", "search.schedule=steps",
                                           f"run.dir={tmp_path}"])
    run_search(cfg, quiet=True)
    per_epoch = [seen[i] for i in range(0, len(seen), 2)]  # the first step of each epoch
    assert [m for _, m, _ in per_epoch] == ["random", "random", None, None, None]  # uniform ops, then GDAS's own
    taus = [t for t, _, _ in per_epoch]
    assert taus[:3] == [10.0, 10.0, 10.0]  # the schedule starts after the warm-up
    assert taus[2:] == pytest.approx([tau_at(e, 3, 10.0, 0.1) for e in range(3)])
    start = seen[0][2]
    assert all(torch.equal(a, start) for _, _, a in seen[:5])  # no alpha step until the warm-up's last step is done
    assert not torch.equal(seen[5][2], start)  # the first alpha step after it moves alpha
    alpha = [json.loads(line) for line in (tmp_path / "alpha.jsonl").read_text().splitlines()]
    assert alpha[0]["normal"] == alpha[1]["normal"] != alpha[2]["normal"]
    state = load_checkpoint(tmp_path / "checkpoint.pt", "search")
    assert state["a_opt"]["param_groups"][0]["lr"] == pytest.approx(3e-4 * 97_750 / (3 * 2))
    assert "search.schedule=steps" in (tmp_path / "log.txt").read_text()


@pytest.mark.parametrize("overrides,message", [
    (["search.warmup_sampling=uniform"], "search.warmup_sampling=uniform applies only with search.warmup_epochs > 0"),
    (["search.schedule=steps", "search.mixer=random", "search.derive=sample"],
     "search.schedule=steps scales alpha's learning rate, which search.mixer=random never steps"),
    (["search.schedule=weeks"], "search.schedule='weeks'"),
])
def test_bad_schedule_keys_are_refused_in_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(SearchConfig, None, overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_budget_schedule_runs_in_the_darts_space_and_derives_a_valid_genotype(tmp_path: Path) -> None:
    """GDAS with its schedule fitted to the run (alpha's learning rate from the step count, a uniform warm-up,
    dropout on the parameter-free ops) in the DARTS space: alpha moves after the warm-up, and the genotype has two
    inputs a node in both cells."""
    from nas.space.genotype import check_genotype, read_genotype

    cfg = load_config(SearchConfig, "configs/search/gdas-darts-small.yaml", [
        "data.name=synthetic", "data.synthetic.train=64", "data.image_size=8", "data.batch_size=16", "model.C=4",
        "model.layers=3", "search.epochs=3", "search.warmup_epochs=1", "search.warmup_sampling=uniform",
        "search.schedule=steps", "search.param_free_dropout=0.3", "search.derive=gdas", "run.tensorboard=false",
        f"run.dir={tmp_path}"])
    run_search(cfg, quiet=True)
    g = check_genotype(read_genotype(tmp_path / "genotype.json"))
    assert g.space == "darts" and len(g.normal) == 4 and len(g.reduce) == 4
    alpha = [json.loads(line) for line in (tmp_path / "alpha.jsonl").read_text().splitlines()]
    assert alpha[0]["normal"] != alpha[-1]["normal"] and alpha[0]["reduce"] != alpha[-1]["reduce"]
    assert "search.schedule=steps" in (tmp_path / "log.txt").read_text()
