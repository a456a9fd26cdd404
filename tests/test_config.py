"""Config: YAML + overrides, strict keys and types, clear one-line errors, the resolved config round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nas.config import ConfigError, SearchConfig, StudyConfig, TrainConfig, load_config
from nas.loader import all_keys, describe, dump_yaml, key_table, replace
from nas.study.plan import search_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "configs" / "search").glob("*.yaml"))


def test_required_key_names_exist() -> None:
    keys = all_keys(SearchConfig)
    for key in ("seed", "data.name", "data.root", "search.epochs", "run.dir"):
        assert key in keys


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads(path: Path) -> None:
    cfg = load_config(SearchConfig, path)
    assert cfg.search.epochs >= 1 or cfg.search.derive == "score"  # only a training-free recipe trains nothing


def test_recipes_exist() -> None:
    names = {p.relative_to(ROOT / "configs").as_posix() for p in RECIPES}
    assert {"quickstart.yaml", "search/gdas-darts-cifar10.yaml", "search/darts-darts-cifar10.yaml",
            "search/gdas-nb201-cifar10.yaml", "search/darts-nb201-cifar10.yaml", "search/zc-train-nb201-small.yaml",
            "search/gdas-darts-small.yaml"} <= names


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "compare").glob("*.yaml")), ids=lambda p: p.name)
def test_every_study_loads_and_each_method_makes_a_valid_search(path: Path) -> None:
    cfg = load_config(StudyConfig, path)
    for method in cfg.methods:
        epochs = cfg.per_method.get(method, {}).get("epochs", cfg.search.epochs)  # a method may have its own
        assert search_config(cfg, method, seed=0).search.epochs == epochs, method


def test_overrides_apply_over_the_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("search:\n  epochs: 7\n  arch_lr: 3e-4\ndata:\n  name: cifar10\n")
    cfg = load_config(SearchConfig, f, ["search.epochs=2", "run.dir=/tmp/r1", "search.arch_betas=[0.9, 0.99]",
                                        "seed=3", "model.ops=[skip_connect, sep_conv_3x3]"])
    assert cfg.search.epochs == 2 and cfg.run.dir == "/tmp/r1" and cfg.seed == 3
    assert cfg.search.arch_lr == 3e-4  # YAML reads 3e-4 as a string; a float key takes it
    assert cfg.search.arch_betas == (0.9, 0.99)
    assert cfg.model.ops == ("skip_connect", "sep_conv_3x3")
    assert cfg.data.name == "cifar10"


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(SearchConfig, ROOT / "configs" / "quickstart.yaml",
                      ["search.epochs=3", "model.ops=[skip_connect, sep_conv_3x3]", "model.stem_multiplier=2"])
    f = tmp_path / "config.yaml"
    f.write_text(dump_yaml(cfg))
    assert load_config(SearchConfig, f) == cfg
    assert yaml.safe_load(f.read_text())["search"]["epochs"] == 3


def test_replace_nested() -> None:
    cfg = replace(SearchConfig(), **{"search.epochs": 4, "data.name": "cifar100"})
    assert cfg.search.epochs == 4 and cfg.data.name == "cifar100" and cfg.model == SearchConfig().model


def test_describe_lists_every_key_with_help() -> None:
    rows = describe(SearchConfig)
    assert [k for k, _, _ in rows] == all_keys(SearchConfig)
    assert all(h for _, _, h in rows)


@pytest.mark.parametrize("overrides,message", [
    (["search.epoch=2"], "unknown key 'search.epoch' (did you mean 'search.epochs'?)"),
    (["epochs=2"], "unknown key 'epochs' (did you mean 'search.epochs'?)"),
    (["data.nmae=cifar10"], "unknown key 'data.nmae' (did you mean 'data.name'?)"),
    (["zzz=1"], "unknown key 'zzz' (valid: seed, data, model, search, run)"),
    (["search.epochs=two"], "search.epochs='two' has the wrong type; expected an integer"),
    (["search.epochs=2.5"], "search.epochs=2.5 has the wrong type; expected an integer"),
    (["search.lr=fast"], "search.lr='fast' has the wrong type; expected a number"),
    (["data.augment=1"], "data.augment=1 has the wrong type; expected true or false"),
    (["search.arch_betas=[0.5]"], "expected a list of 2 numbers"),
    (["search.mixer=gdsa"], "search.mixer='gdsa' is not valid (did you mean 'gdas'?); valid: gdas, darts"),
    (["data.name=cifar"], "data.name='cifar' is not valid"),
    (["search.epochs=0"], "search.epochs=0 trains nothing, which only the zero-cost rules can use"),
    (["data.train_portion=1"], "valid: 0.0 < train_portion < 1.0"),
    (["search.tau_min=20"], "search.tau_min=20.0 is above search.tau_max=10.0"),
    (["search.lr_min=1"], "search.lr_min=1.0 is above search.lr=0.025"),
    (["data=3"], "'data' is a section"),
    (["search.epochs"], "override 'search.epochs' is not of the form key=value"),
    (["run.device=tpu"], "run.device='tpu' is not valid; valid: auto, cpu, cuda, cuda:N"),
    (["model.space=nb201", "model.stem_multiplier=3"], "model.stem_multiplier=3 is not valid for model.space=nb201"),
    (["model.layers=2"], "model.layers=2 is too few for model.space=darts"),
    (["model.macro=gdas_frc", "model.C=6"], "model.C=6 does not suit model.macro=gdas_frc"),
    (["model.macro=frc"], "model.macro='frc' is not valid; valid: darts, gdas, gdas_frc"),
    (["model.ops=[sep_conv_3x3, skip_conect]"],
     "unknown op 'skip_conect' in model.ops of the darts space (did you mean 'skip_connect'?)"),
    (["model.ops=[none]"], "model.ops needs at least one op other than none"),
    (["model.ops=[none, none]"], "lists an op twice"),
    (["search.mixer=darts", "search.tau_max=5"], "search.tau_max applies only to search.mixer=gdas or snas"),
    (["model.space=nb201", "search.derive=gdas"], "search.derive=gdas applies only to model.space=darts"),
    (["data.name=cifar10", "data.synthetic.classes=3"],
     "data.synthetic.classes applies only to data.name=synthetic; this run has data.name=cifar10: drop "
     "data.synthetic.classes"),
    (["search.epochs=10", "search.warmup_epochs=10"], "search.warmup_epochs=10 leaves no epoch for alpha"),
    (["search.derive=perturb", "search.max_skip=2"],
     "search.max_skip=2 applies only to search.derive=darts or gdas (got search.derive=perturb)"),
    (["search.param_free_dropout=1"], "search.param_free_dropout=1.0 is out of range; valid: 0.0 <= "
                                      "param_free_dropout < 1.0"),
    (["search.max_skip=-1"], "search.max_skip=-1 is out of range"),
])
def test_bad_overrides_raise_one_line_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(SearchConfig, None, overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text,message", [
    ("search:\n  epochs: [\n", "is not valid YAML at line"),
    ("- 1\n- 2\n", "must hold a mapping of keys, not a list"),
    ("search:\n  epcohs: 3\n", "unknown key 'search.epcohs' (did you mean 'search.epochs'?)"),
])
def test_bad_files_raise_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(SearchConfig, f)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="config file 'nope.yaml' not found"):
        load_config(SearchConfig, "nope.yaml")


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    f = tmp_path / "empty.yaml"
    f.write_text("")
    assert load_config(SearchConfig, f) == SearchConfig()


@pytest.mark.parametrize(("cls", "doc"), [(SearchConfig, "configuration.md"), (TrainConfig, "evaluation.md")])
def test_docs_hold_the_key_tables(cls: type, doc: str) -> None:
    """The key tables of docs/configuration.md and docs/evaluation.md are the output of
    `python -m nas config search|train`; kept from going stale."""
    assert key_table(cls) in (ROOT / "docs" / doc).read_text()
