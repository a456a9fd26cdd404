"""Search spaces as objects: the registry (unknown and repeated names), every registered space through its whole
interface (derivation, random cells, formats, networks, the supernet, costs), and a new space that is one class and
its registration, searched from the command line like the built-in ones."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from nas.cli import search_main
from nas.config import SearchConfig, load_config
from nas.errors import UserError
from nas.run.files import GENOTYPE
from nas.searching.mixing import create_mixer
from nas.searching.supernet import build_supernet
from nas.space import spaces
from nas.space.derivation import derive, genotype_of, masks_of, neighbours, random_genotype
from nas.space.genotype import Genotype, check_genotype, from_dict, parse_genotype, read_genotype
from nas.space.nb201 import NB201Space
from nas.space.network import build_network
from nas.space.spaces import get_space, list_spaces, register_space, search_space


def test_an_unknown_space_is_one_line_naming_the_registered_ones() -> None:
    with pytest.raises(UserError) as info:
        get_space("nasnet")
    assert str(info.value) == "unknown search space 'nasnet'; valid: darts, nb201"
    with pytest.raises(UserError, match=r"^model.space='nb210' is not valid \(did you mean 'nb201'\?\); valid: "
                                        r"darts, nb201$"):
        spaces.check_space_name("nb210")


def test_a_space_name_registered_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="a space named 'darts' is already registered; registered: darts, nb201"):
        register_space(get_space("darts"))
    assert list_spaces() == ["darts", "nb201"]


def test_a_search_network_of_another_space_is_refused() -> None:
    with pytest.raises(UserError, match="model.macro=gdas applies only to model.space=darts; the nb201 space has one "
                                        "search network"):
        search_space("nb201", macro="gdas")
    with pytest.raises(UserError, match="model.macro='frc' is not valid; valid: darts, gdas, gdas_frc"):
        search_space("darts", macro="frc")
    assert search_space("darts", macro="gdas_frc").cell_types == ("normal",)


@pytest.mark.parametrize("name", list_spaces())
def test_every_space_derives_draws_writes_and_reads_its_genotypes(name: str) -> None:
    space = get_space(name)
    torch.manual_seed(0)
    alphas = {t: torch.randn(space.num_edges, space.num_ops) for t in space.cell_types}
    for rule in space.alpha_rules:
        g = check_genotype(derive(space, alphas, rule))
        assert g.space == name and list(g.cells()) == list(space.cell_types)
        if rule == "darts":  # one op per kept edge (gdas's rule may keep two ops of one input, which masks cannot)
            run = genotype_of(space, masks_of(space, g))  # op masks run exactly the genotype's edges
            assert [sorted(n) for n in run.normal + run.reduce] == [sorted(n) for n in g.normal + g.reduce]
    rng = random.Random(0)
    for g in (random_genotype(space, rng) for _ in range(5)):
        assert parse_genotype(g.to_text()) == g and from_dict(json.loads(g.to_json())) == g
        assert str(g) == g.to_text() and space.reads(g.to_text())
        for n in neighbours(space, g):  # one op changed, on one kept edge
            changed = [(a, b) for a, b in zip(edges_of(g), edges_of(n), strict=True) if a != b]
            assert len(changed) == 1 and changed[0][0][1] == changed[0][1][1]


def edges_of(g: Genotype) -> list[tuple[str, int]]:
    return [edge for nodes, _ in g.cells().values() for node in nodes for edge in node]


@pytest.mark.parametrize("name", list_spaces())
def test_every_space_builds_its_networks_and_costs_a_cell_by_its_slots(name: str) -> None:
    space = get_space(name)
    torch.manual_seed(0)
    model = build_supernet(name, C=4, layers=3, num_classes=5, mixer=create_mixer("gdas"))
    x = torch.randn(2, 3, 16, 16)
    assert model(x).shape == (2, 5)
    assert [n for n, _ in model.named_children()] == ["alpha", "stem", "cells", "lastact", "pool", "classifier"]
    g = model.genotype()
    net = build_network(g, C=4, layers=3, num_classes=5)
    assert net(x)[0].shape == (2, 5)
    slots = space.cost_slots(net, g)  # (module, cell type, edge, op) of every searched op of every cell
    modules = dict(net.named_modules())
    held = {(t, space.edges.index((src, node_id)), space.ops.index(op)) for t, (nodes, _) in g.cells().items()
            for node_id, node in zip(space.nodes, nodes, strict=True) for op, src in node}
    assert {(t, e, k) for _, t, e, k in slots} == held and all(m in modules for m, *_ in slots)
    assert len(slots) == len({m for m, *_ in slots})  # each module once
    for op in space.kept_ops:
        for cover in space.cover_genotypes(op):
            assert {o for nodes, _ in cover.cells().values() for node in nodes for o, _ in node} == {op}


@dataclass(frozen=True)
class ChainSpace(NB201Space):
    """NAS-Bench-201's cell with two intermediate nodes, written as its own JSON-like text: a space that is one class
    (here, a small change to one) and its registration."""

    name: ClassVar[str] = "chain"
    num_nodes: ClassVar[int] = 2
    benchmarked: ClassVar[bool] = False
    stacks: ClassVar[bool] = False
    text_format: ClassVar[str] = "a chain string (chain:[...])"

    def to_text(self, g: Genotype) -> str:
        return "chain:" + json.dumps([[[op, src] for op, src in node] for node in g.normal])

    def reads(self, text: str) -> bool:
        return text.startswith("chain:")

    def parse_text(self, text: str) -> Genotype:
        nodes = tuple(tuple((op, src) for op, src in node) for node in json.loads(text[len("chain:"):]))
        return check_genotype(Genotype(self.name, nodes, self.concat))


def test_a_new_space_is_one_class_and_its_registration(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(spaces._SPACES, "chain", ChainSpace())  # register_space, undone after the test
    assert list_spaces() == ["darts", "nb201", "chain"]
    cfg = load_config(SearchConfig, None, ["model.space=chain", "model.layers=1"])
    assert cfg.model.space == "chain" and cfg.model.stem == 1
    overrides = ["data.synthetic.train=64", "data.synthetic.test=16", "data.image_size=8", "data.batch_size=16",
                 "model.space=chain", "model.C=4", "model.layers=1", "search.epochs=1", "run.tensorboard=false"]
    assert search_main([*overrides, f"run.dir={tmp_path / 'run'}", "--quiet"]) == 0
    g = read_genotype(tmp_path / "run" / GENOTYPE)
    assert g.space == "chain" and len(g.normal) == 2 and str(g).startswith("chain:")
    assert parse_genotype(str(g)) == g
    with pytest.raises(UserError, match="search.benchmark applies only to model.space=nb201"):
        load_config(SearchConfig, None, ["model.space=chain", "model.layers=1", "search.benchmark=table"])
