"""How a cell is chosen is a registry (nas/searching/rules.py): names are checked against it, a name is registered
once, a rule registered from outside is accepted by the config and run by a search, and the keys only some rules or
mixers read are refused, with one generic message, where the chosen one would ignore them."""

from __future__ import annotations

from pathlib import Path

import pytest

from nas.config import ConfigError, SearchConfig, load_config
from nas.errors import UserError
from nas.searching import rules
from nas.searching.bilevel import run_search
from nas.searching.rules import Context, check_rule_name, get_rule, register_rule, rule_names
from nas.searching.zerocost import random_cells
from nas.space.genotype import Genotype, read_genotype
from nas.space.spaces import get_space

NB201 = ["model.space=nb201", "model.layers=1"]


def test_the_built_in_rules_declare_what_they_read_and_need() -> None:
    assert rule_names() == ("darts", "gdas", "perturb", "sample", "score")
    assert [r for r in rule_names() if get_rule(r).ranks] == ["sample", "score"]
    assert [r for r in rule_names() if get_rule(r).needs_alpha] == ["darts", "gdas", "perturb"]
    assert [r for r in rule_names() if get_rule(r).scores] == ["score"]
    assert get_rule("score").options == ("samples", "pool", "final") and get_rule("darts").options == ("max_skip",)


def test_an_unknown_rule_is_one_line_naming_the_registered_ones() -> None:
    with pytest.raises(UserError, match=r"^search.derive='scroe' is not valid \(did you mean 'score'\?\); valid: "
                                        r"darts, gdas, perturb, sample, score$"):
        check_rule_name("scroe")
    with pytest.raises(ConfigError) as e:
        load_config(SearchConfig, None, ["search.derive=argmax"])
    assert str(e.value) == "search.derive='argmax' is not valid; valid: darts, gdas, perturb, sample, score"


def test_a_rule_is_registered_once_and_a_ranking_declares_its_final_stage() -> None:
    with pytest.raises(ValueError, match="a rule named 'score' is already registered; registered: darts, gdas"):
        register_rule("score", options=(), ranks=False, needs_alpha=False, scores=False, summary="")(lambda c: [])
    assert get_rule("score").scores  # the first one stays
    with pytest.raises(ValueError, match="rule 'best': ranks=True needs 'final' in its options"):
        register_rule("best", options=("samples",), ranks=True, needs_alpha=False, scores=False, summary="")(
            lambda c: [])
    assert "best" not in rule_names()


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy of the registry for the test to register into, put back afterwards."""
    monkeypatch.setattr(rules, "_RULES", dict(rules._RULES))


def test_a_new_rule_is_one_registration_the_config_accepts_and_a_search_runs(registry: None, tmp_path: Path) -> None:
    seen: list[Context] = []

    @register_rule("first", options=("samples", "final"), ranks=True, needs_alpha=False, scores=False,
                   summary="the first of search.samples random cells")
    def first(ctx: Context) -> list[Genotype]:
        seen.append(ctx)
        return random_cells(ctx.model.space, ctx.cfg.seed, ctx.cfg.search.samples)

    small = [*NB201, "data.synthetic.train=64", "data.image_size=8", "data.batch_size=16", "model.C=4",
             "search.epochs=1", "run.tensorboard=false"]
    cfg = load_config(SearchConfig, None, [*small, "search.mixer=random", "search.derive=first", "search.samples=3",
                                           f"run.dir={tmp_path}"])
    run_dir = run_search(cfg, quiet=True)
    assert len(seen) == 1 and seen[0].cfg is cfg
    assert read_genotype(run_dir / "genotype.json") == random_cells(get_space("nb201"), 0, 3)[0]  # the ranking's best
    # the checks ask the registry: what the new rule reads, needs and does not do
    for overrides, message in [
        (["search.pool=alpha"], "search.pool=alpha applies only to search.derive=score (got search.derive=first)"),
        (["search.max_skip=2"], "search.max_skip=2 applies only to search.derive=darts or gdas (got "
                                "search.derive=first)"),
        (["search.epochs=0"], "search.epochs=0 trains nothing, which only the zero-cost rules can use "
                              "(search.derive=score, search.prior > 0 or search.perturb_by=score); got "
                              "search.derive=first"),
    ]:
        with pytest.raises(ConfigError) as e:
            load_config(SearchConfig, None, [*NB201, "search.derive=first", *overrides])
        assert str(e.value) == message
    with pytest.raises(ConfigError, match="search.mixer=random never steps alpha, so search.derive='darts' would "
                                          "read untrained logits; valid: search.derive=sample, score or first$"):
        load_config(SearchConfig, None, [*NB201, "search.mixer=random"])
    assert load_config(SearchConfig, None, [*NB201, "search.derive=first", "search.final.cells=2",
                                            "search.samples=3"]).search.final.cells == 2


def test_a_rule_that_reads_no_search_key_is_refused(registry: None) -> None:
    register_rule("odd", options=("temperature",), ranks=False, needs_alpha=True, scores=False, summary="")(
        lambda c: c.model.genotype("darts"))
    with pytest.raises(ConfigError, match="^search.derive=odd reads search.temperature, which is not a search key; "
                                          "valid: lr, "):
        load_config(SearchConfig, None, [*NB201, "search.derive=darts"])


@pytest.mark.parametrize("overrides,message", [
    (["search.derive=sample", "search.pool=alpha"],
     "search.pool=alpha applies only to search.derive=score (got search.derive=sample)"),
    (["search.derive=score", "search.max_skip=2"],
     "search.max_skip=2 applies only to search.derive=darts or gdas (got search.derive=score)"),
    (["search.derive=score", "search.perturb_by=score"],
     "search.perturb_by=score applies only to search.derive=perturb (got search.derive=score)"),
    (["search.final.cells=4"], "search.final.cells=4 applies only to search.derive=sample or score (got "
                               "search.derive=darts)"),
    (["search.derive=perturb", "search.final.local_rounds=1"],
     "search.final.local_rounds=1 applies only to search.derive=sample or score (got search.derive=perturb)"),
    (["search.derive=gdas", "search.samples=20"],
     "search.samples=20 applies only to search.derive=sample or score (got search.derive=gdas)"),
    (["search.drnas_kl=0.1"], "search.drnas_kl=0.1 applies only to search.mixer=drnas (got 'gdas')"),
    (["search.mixer=snas", "search.gdas_gradient=sampled_op"],
     "search.gdas_gradient=sampled_op applies only to search.mixer=gdas (got 'snas')"),
])
def test_a_key_only_other_rules_or_mixers_read_is_refused_in_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(SearchConfig, None, [*NB201, *overrides])
    assert str(e.value) == message


@pytest.mark.parametrize("key,value", [("tau_max", "5.0"), ("tau_schedule", "exponential")])
def test_a_recipe_that_gives_a_temperature_to_a_mixer_without_one_is_refused(tmp_path: Path, key: str,
                                                                             value: str) -> None:
    recipe = tmp_path / "darts.yaml"
    recipe.write_text(f"search:\n  mixer: darts\n  {key}: {value}\n")
    with pytest.raises(ConfigError) as e:
        load_config(SearchConfig, recipe)
    assert str(e.value) == f"search.{key}={value} applies only to search.mixer=gdas or snas (got 'darts')"
    recipe.write_text(f"search:\n  mixer: snas\n  {key}: {value}\n")
    assert str(getattr(load_config(SearchConfig, recipe).search, key)) == value
