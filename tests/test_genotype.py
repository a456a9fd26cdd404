"""Genotypes: derivation rules on hand-built alpha, the three formats round-tripping exactly, bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from nas.space.darts import DARTS_OPS, from_darts_text, to_darts_text
from nas.space.derivation import derive, random_genotype
from nas.space.genotype import (
    Genotype,
    GenotypeError,
    from_dict,
    load_genotype,
    parse_genotype,
    published_genotype,
    read_genotype,
    write_genotype,
)
from nas.space.nb201 import NB201_OPS, from_nb201_string, to_nb201_string
from nas.space.spaces import get_space, search_space

D = {op: k for k, op in enumerate(DARTS_OPS)}
N = {op: k for k, op in enumerate(NB201_OPS)}


def darts_alpha() -> torch.Tensor:
    """Logits whose derived genotype is known by hand (edge e: see the space's edge order)."""
    a = torch.zeros(14, 8)
    a[0, D["sep_conv_3x3"]] = 3.0          # node 2: 0 -> 2
    a[1, D["skip_connect"]] = 2.0          #         1 -> 2
    a[2, D["none"]] = 10.0                 # node 3: 0 -> 3 is dominated by none, which never counts
    a[2, D["dil_conv_3x3"]] = 1.0
    a[3, D["sep_conv_5x5"]] = 2.0          #         1 -> 3
    a[4, D["max_pool_3x3"]] = 4.0          #         2 -> 3 strongest
    a[5, D["sep_conv_3x3"]] = 5.0          # node 4: 0 -> 4 holds the two best ops
    a[5, D["sep_conv_5x5"]] = 4.9
    a[6, D["avg_pool_3x3"]] = 1.0          #         1 -> 4: softmax 0.28, below both ops of 0 -> 4
    a[12, D["skip_connect"]] = 0.5         # node 5: 3 -> 5
    a[13, D["dil_conv_5x5"]] = 1.0         #         4 -> 5
    return a


def test_space_edges_are_ordered_by_destination_then_source() -> None:
    darts = get_space("darts")
    assert darts.edges[:5] == ((0, 2), (1, 2), (0, 3), (1, 3), (2, 3)) and darts.num_edges == 14
    assert get_space("nb201").edges == ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))


def test_darts_rule_keeps_two_distinct_strongest_inputs_ignoring_none() -> None:
    a = darts_alpha()
    g = derive(get_space("darts"), {"normal": a, "reduce": a}, rule="darts")
    assert g.normal == (
        (("sep_conv_3x3", 0), ("skip_connect", 1)),
        (("max_pool_3x3", 2), ("sep_conv_5x5", 1)),
        (("sep_conv_3x3", 0), ("avg_pool_3x3", 1)),
        (("dil_conv_5x5", 4), ("skip_connect", 3)),
    )
    assert g.reduce == g.normal and g.normal_concat == (2, 3, 4, 5) and g.reduce_concat == (2, 3, 4, 5)


def test_gdas_rule_keeps_the_top_two_op_input_pairs() -> None:
    a = darts_alpha()
    g = derive(get_space("darts"), {"normal": a, "reduce": torch.zeros(14, 8)}, rule="gdas")
    assert g.normal[2] == (("sep_conv_3x3", 0), ("sep_conv_5x5", 0))  # the same input twice is allowed
    assert g.normal[1] == (("max_pool_3x3", 2), ("sep_conv_5x5", 1))
    assert all(op != "none" for node in g.reduce for op, _ in node)


def test_nb201_rule_is_the_argmax_of_every_edge_none_included() -> None:
    a = torch.zeros(6, 5)
    for e, op in enumerate(["nor_conv_3x3", "none", "skip_connect", "avg_pool_3x3", "nor_conv_1x1", "none"]):
        a[e, N[op]] = 1.0
    g = derive(get_space("nb201"), {"normal": a})
    assert to_nb201_string(g) == "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_1x1~1|none~2|"


def random_darts(rng: random.Random, nodes: int = 4) -> Genotype:
    ops = [op for op in DARTS_OPS if op != "none"] + ["sep_conv_7x7", "conv_7x1_1x7"]

    def cell() -> tuple:
        return tuple(tuple((rng.choice(ops), rng.randrange(i + 2)) for _ in range(2)) for i in range(nodes))

    concat = tuple(range(2, 2 + nodes)) if rng.random() < 0.7 else (2, 4, 5)
    return Genotype("darts", cell(), concat, cell(), tuple(range(2, 2 + nodes)))


def random_nb201(rng: random.Random) -> Genotype:
    return Genotype("nb201", tuple(tuple((rng.choice(NB201_OPS), j) for j in range(i)) for i in (1, 2, 3)), (3,))


@pytest.mark.parametrize("seed", range(20))
def test_round_trips_are_exact(seed: int) -> None:
    rng = random.Random(seed)
    d, n = random_darts(rng), random_nb201(rng)
    for g in (d, n):
        assert parse_genotype(g.to_json()) == g
        assert from_dict(json.loads(json.dumps(g.to_dict()))) == g
        assert parse_genotype(g.to_text()) == g
        assert parse_genotype(g.to_text()).to_text() == g.to_text()
        assert parse_genotype(g.to_json()).to_json() == g.to_json()
    assert from_darts_text(to_darts_text(d)) == d
    assert from_nb201_string(to_nb201_string(n)) == n


def test_darts_text_accepts_the_published_notation() -> None:
    text = ("DARTS_V2 = Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
            "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
            "('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
            "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
            "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=range(2, 6))")
    g = parse_genotype(text)
    assert g.normal_concat == (2, 3, 4, 5) == g.reduce_concat
    assert g.normal[3] == (("skip_connect", 0), ("dil_conv_3x3", 2))
    assert to_darts_text(g).startswith("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1),")
    assert "normal_concat=range(2, 6)" in to_darts_text(g)


def test_the_fixed_reduction_cell_round_trips_and_reads_the_official_notation() -> None:
    g = published_genotype("GDAS_F1")
    assert g.reduce_fixed and g.reduce == () and g.reduce_concat == () and list(g.cells()) == ["normal"]
    assert json.loads(g.to_json())["reduce"] == "gdas_frc" and "reduce_concat" not in g.to_dict()
    for text in (g.to_json(), g.to_text(), json.dumps(g.to_dict())):
        assert parse_genotype(text) == g
    official = ("GDAS_F1 = Genotype(normal=[('skip_connect', 0), ('skip_connect', 1), ('skip_connect', 0), "
                "('sep_conv_3x3', 2), ('skip_connect', 0), ('sep_conv_3x3', 2), ('skip_connect', 0), "
                "('sep_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=None, reduce_concat=[2, 3, 4, 5])")
    assert parse_genotype(official) == g
    rng = random.Random(0)
    frc = random_genotype(search_space("darts", macro="gdas_frc"), rng, "gdas")
    assert frc.reduce_fixed and parse_genotype(frc.to_json()) == frc


@pytest.mark.parametrize("text,message", [
    ('{"space": "darts", "normal": [[["skip_connect", 0], ["skip_connect", 1]]], "normal_concat": [2], '
     '"reduce": "fixed"}', "reduce 'fixed'; valid: a list of nodes, or 'gdas_frc'"),
    ('{"space": "darts", "normal": [[["skip_connect", 0], ["skip_connect", 1]]], "normal_concat": [2], '
     '"reduce": "gdas_frc", "reduce_concat": [2]}', "unknown key 'reduce_concat'"),
    ('{"space": "nb201", "normal": [], "normal_concat": [3], "reduce": "gdas_frc"}', "unknown key 'reduce'"),
    ("Genotype(normal=__import__('os').system('touch /tmp/pwned'), normal_concat=[2], reduce=[], "
     "reduce_concat=[2])", "must be a literal list"),
    ("Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=[2], reduce=[('sep_conv_3x3', 0)], "
     "reduce_concat=[2])", "2 (op, input) pairs per node"),
    ("Genotype(normal=[('sep_conv_3x4', 0), ('skip_connect', 1)], normal_concat=[2], "
     "reduce=[('skip_connect', 0), ('skip_connect', 1)], reduce_concat=[2])",
     "unknown op 'sep_conv_3x4' in the normal cell (did you mean 'sep_conv_3x3'?)"),
    ("Genotype(normal=[('skip_connect', 0), ('skip_connect', 2)], normal_concat=[2], "
     "reduce=[('skip_connect', 0), ('skip_connect', 1)], reduce_concat=[2])", "takes input 2"),
    ("Genotype(normal=[('skip_connect', 0), ('skip_connect', 1)], normal_concat=[2])", "lacks reduce"),
    ("Genotype(normal=[('none', 0), ('skip_connect', 1)], normal_concat=[2], "
     "reduce=[('skip_connect', 0), ('skip_connect', 1)], reduce_concat=[2])", "unknown op 'none'"),
    ("Genotype(normal=[('skip_connect', 0), ('skip_connect', 1)], normal_concat=[9], "
     "reduce=[('skip_connect', 0), ('skip_connect', 1)], reduce_concat=[2])", "normal_concat [9]"),
    ("Genotype(normal=[('skip_connect', 0), ('skip_connect', 1)", "not a DARTS Genotype(...) text"),
    ("|nor_conv_3x3~0|+|none~0|skip_connect~1|", "nb201 cell has 3 nodes"),
    ("|nor_conv_3x3~0|+|none~0|skip_connect~0|+|none~0|none~1|none~2|", "one edge from each of nodes 0..1"),
    ("|nor_conv_3x3~0|+|none~0|skip_connect1|+|none~0|none~1|none~2|", "not of the form op~input"),
    ("|nor_conv_3x3~0|+|none~0|skip_conect~1|+|none~0|none~1|none~2|", "did you mean 'skip_connect'"),
    ("nor_conv_3x3~0", "cannot read genotype"),
    ("|sep_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|", "op 'sep_conv_3x3' in an nb201 cell is another "
     "space's op (did you mean 'nor_conv_3x3'?); valid: none, skip_connect, nor_conv_1x1, nor_conv_3x3, "
     "avg_pool_3x3"),
    ("|conv_9x9~0|+|none~0|none~1|+|none~0|none~1|none~2|", "valid: none, skip_connect, nor_conv_1x1, nor_conv_3x3, "
     "avg_pool_3x3"),  # the space's own ops only
    ("Genotype(normal=[('nor_conv_3x3', 0), ('skip_connect', 1)], normal_concat=[2], "
     "reduce=[('skip_connect', 0), ('skip_connect', 1)], reduce_concat=[2])",
     "op 'nor_conv_3x3' in the normal cell is another space's op"),
    ('{"space": "darts", "normal": [[["sep_conv_3x3", 0]]]', "genotype JSON is malformed"),
    ('{"space": "nasnet"}', "space 'nasnet'"),
    ('{"space": "nb201", "normal": [[["nor_conv_3x3", 0]]], "normal_concat": [3], "extra": 1}',
     "unknown key 'extra'"),
    ('{"space": "nb201", "normal": [[["nor_conv_3x3", "0"]]], "normal_concat": [3]}', "an edge must be"),
])
def test_malformed_genotypes_raise_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(GenotypeError) as info:
        parse_genotype(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert not Path("/tmp/pwned").exists()


def test_files_and_run_directories(tmp_path: Path) -> None:
    g = random_darts(random.Random(0))
    write_genotype(g, tmp_path / "genotype.json")
    assert read_genotype(tmp_path / "genotype.json") == g
    assert load_genotype(str(tmp_path)) == g  # a run directory means its genotype.json
    (tmp_path / "g.txt").write_text(g.to_text() + "\n")
    assert load_genotype(str(tmp_path / "g.txt")) == g
    assert load_genotype(g.to_text()) == g
    with pytest.raises(GenotypeError, match="neither a file, a run directory nor a genotype string"):
        load_genotype(str(tmp_path / "missing.json"))
    with pytest.raises(GenotypeError, match="has no genotype.json"):
        load_genotype(str(tmp_path / ".."))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(GenotypeError, match="bad.json: genotype JSON is malformed"):
        read_genotype(tmp_path / "bad.json")
