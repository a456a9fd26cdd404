"""Genotypes: the discrete architecture a search ends with, as plain data, and its formats: JSON, the space's own
text, files, run directories and published names.

Formats, each written and parsed without eval, round-tripping exactly:
  JSON (canonical)  {"space": "darts", "normal": [[["sep_conv_3x3", 0], ["skip_connect", 1]], ...], ...}
  the space's text  DARTS: Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=range(2, 6), reduce=..., ...)
                    NAS-Bench-201: |nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|none~1|...
A genotype's "space" names its space (nas.space.spaces.get_space), which says which cells it holds, checks them and
writes and reads its text (nas/space/darts.py, nas/space/nb201.py). A DARTS-space genotype may leave its reduction
cell to GDAS-FRC's fixed one: JSON "reduce": "gdas_frc" without reduce_concat.
"""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.errors import UserError
from nas.run.files import GENOTYPE
from nas.space.ops import check_op_name, is_parameter_free
from nas.space.spaces import get_space, list_spaces

Edge = tuple[str, int]          # (op name, global id of the input node)
Node = tuple[Edge, ...]         # the edges kept into one intermediate node
FIXED_REDUCE = "gdas_frc"       # the JSON value of "reduce" for the fixed reduction cell


class GenotypeError(UserError):
    """A genotype (file, string or structure) that is not valid."""


@dataclass(frozen=True)
class Genotype:
    """A discrete cell architecture per cell type. NAS-Bench-201 genotypes have only ``normal``."""

    space: str
    normal: tuple[Node, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Node, ...] = ()
    reduce_concat: tuple[int, ...] = ()
    reduce_fixed: bool = False  # GDAS-FRC: the reduction cell is the fixed one, not a searched cell

    def cells(self) -> dict[str, tuple[tuple[Node, ...], tuple[int, ...]]]:
        """The searched cells, as the space says: normal, and reduce in the DARTS space unless it is the fixed one."""
        return get_space(self.space).searched_cells(self)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"space": self.space}
        for name, (nodes, concat) in self.cells().items():
            d[name] = [[[op, src] for op, src in node] for node in nodes]
            d[f"{name}_concat"] = list(concat)
        if self.reduce_fixed:
            d["reduce"] = FIXED_REDUCE
        return d

    def to_json(self) -> str:
        """Canonical JSON: one node per line."""
        lines = [f'  "space": {json.dumps(self.space)}']
        for name, (nodes, concat) in self.cells().items():
            rows = ",\n".join(f"    {json.dumps([[op, src] for op, src in node])}" for node in nodes)
            lines.append(f'  "{name}": [\n{rows}\n  ]')
            lines.append(f'  "{name}_concat": {json.dumps(list(concat))}')
        if self.reduce_fixed:
            lines.append(f'  "reduce": {json.dumps(FIXED_REDUCE)}')
        return "{\n" + ",\n".join(lines) + "\n}\n"

    def to_text(self) -> str:
        """The space's own text: DARTS ``Genotype(...)`` text, the NB201 string."""
        return get_space(self.space).to_text(self)

    def __str__(self) -> str:
        return self.to_text()


def check_genotype(g: Genotype) -> Genotype:
    """Raise GenotypeError unless g is a well-formed genotype of its space; return g."""
    if g.space not in list_spaces():
        raise GenotypeError(f"unknown genotype space {g.space!r}; valid: {', '.join(list_spaces())}")
    get_space(g.space).check_genotype(g)
    return g


def check_op(op: str, valid: list[str], where: str) -> None:
    """GenotypeError for an op not in ``valid``, suggesting the nearest."""
    try:
        check_op_name(op, valid, where)
    except UserError as e:
        raise GenotypeError(str(e)) from None


def op_counts(g: Genotype) -> dict[str, Any]:
    """What a genotype is made of: edges, parameter-free edges (none, skip_connect, pooling: ops that learn
    nothing at stride 1), skip-connects, and the count of every op, over all its cells."""
    counts = Counter(op for nodes, _ in g.cells().values() for node in nodes for op, _ in node)
    free = sum(n for op, n in counts.items() if is_parameter_free(op))
    return {"edges": sum(counts.values()), "parameter_free": free, "skip_connect": counts["skip_connect"],
            "ops": dict(sorted(counts.items()))}


# ---------------------------------------------------------------------------------------------- formats

def from_dict(d: Any) -> Genotype:
    if not isinstance(d, dict):
        raise GenotypeError(f"a genotype JSON must be an object, not {type(d).__name__}")
    space = d.get("space")
    if space not in list_spaces():
        raise GenotypeError(f"genotype JSON has space {space!r}; valid: {', '.join(list_spaces())}")
    types = get_space(space).cell_types
    fixed = "reduce" in types and isinstance(d.get("reduce"), str)
    if fixed and d["reduce"] != FIXED_REDUCE:
        raise GenotypeError(f"genotype JSON has reduce {d['reduce']!r}; valid: a list of nodes, or "
                            f"{FIXED_REDUCE!r} (GDAS-FRC's fixed reduction cell)")
    allowed = {"space"} | {t for t in types} | {f"{t}_concat" for t in types}
    if fixed:
        allowed.discard("reduce_concat")
    extra = sorted(set(d) - allowed)
    if extra:
        raise GenotypeError(f"genotype JSON has unknown key {extra[0]!r}; valid: {', '.join(sorted(allowed))}")
    parts: dict[str, Any] = {"reduce_fixed": True} if fixed else {}
    for name in sorted(allowed - {"space"} - ({"reduce"} if fixed else set())):
        if name not in d:
            raise GenotypeError(f"genotype JSON lacks {name!r}")
        parts[name] = parse_concat(d[name], name) if name.endswith("concat") else _nodes(d[name], name)
    return check_genotype(Genotype(space, **parts))


def _nodes(value: Any, name: str) -> tuple[Node, ...]:
    if not isinstance(value, list):
        raise GenotypeError(f"{name!r} must be a list of nodes, each a list of [op, input] pairs")
    return tuple(tuple(parse_edge(e, name) for e in _as_list(node, name)) for node in value)


def _as_list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise GenotypeError(f"{name!r}: a node must be a list of [op, input] pairs, got {value!r}")
    return value


def parse_edge(e: Any, name: str) -> Edge:
    """An (op, input) pair of the cell ``name``, checked."""
    ok = (isinstance(e, (list, tuple)) and len(e) == 2 and isinstance(e[0], str)
          and isinstance(e[1], int) and not isinstance(e[1], bool))
    if not ok:
        raise GenotypeError(f"{name!r}: an edge must be [op name, input node], got {e!r}")
    return (e[0], e[1])


def parse_concat(value: Any, name: str) -> tuple[int, ...]:
    """A cell's concat (the nodes its output joins), checked."""
    if not isinstance(value, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in value):
        raise GenotypeError(f"{name!r} must be a list of node numbers, got {value!r}")
    return tuple(value)


def text_formats() -> str:
    """The spaces' texts, as messages list them: "DARTS Genotype(...) text or an NB201 string (|op~0|+...)"."""
    return " or ".join(get_space(name).text_format for name in list_spaces())


def parse_genotype(text: str) -> Genotype:
    """Parse JSON or any space's text, told apart by their first characters."""
    s = text.strip()
    if s.startswith("{"):
        try:
            return from_dict(json.loads(s))
        except json.JSONDecodeError as e:
            raise GenotypeError(f"genotype JSON is malformed: {e.msg} at line {e.lineno}, column {e.colno}") from None
    for name in list_spaces():
        if get_space(name).reads(s):
            return get_space(name).parse_text(s)
    short = s if len(s) <= 60 else s[:57] + "..."
    raise GenotypeError(f"cannot read genotype {short!r}; expected JSON ({{...}}), {text_formats()}")


def read_genotype(path: str | Path) -> Genotype:
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise GenotypeError(f"cannot read genotype file {str(p)!r}: {getattr(e, 'strerror', None) or e}") from None
    try:
        return parse_genotype(text)
    except GenotypeError as e:
        raise GenotypeError(f"{p}: {e}") from None


# ---------------------------------------------------------------------------------------------- published

# Published CIFAR-10 cells of the DARTS (NASNet-like) space, as data: (DARTS Genotype text, source).
PUBLISHED: dict[str, tuple[str, str]] = {
    "DARTS_V1": (
        "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1), "
        "('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], "
        "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
        "('max_pool_3x3', 0), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], "
        "reduce_concat=[2, 3, 4, 5])",
        "Liu et al., DARTS (first order), ICLR 2019; github.com/quark0/darts cnn/genotypes.py"),
    "DARTS_V2": (
        "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
        "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
        "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
        "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], "
        "reduce_concat=[2, 3, 4, 5])",
        "Liu et al., DARTS (second order), ICLR 2019; github.com/quark0/darts cnn/genotypes.py"),
    "GDAS_V1": (
        "Genotype(normal=[('skip_connect', 0), ('skip_connect', 1), ('skip_connect', 0), ('sep_conv_5x5', 2), "
        "('sep_conv_3x3', 3), ('skip_connect', 0), ('sep_conv_5x5', 4), ('sep_conv_3x3', 3)], "
        "normal_concat=[2, 3, 4, 5], reduce=[('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('sep_conv_5x5', 2), "
        "('sep_conv_5x5', 1), ('dil_conv_5x5', 2), ('sep_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_5x5', 1)], "
        "reduce_concat=[2, 3, 4, 5])",
        "Dong & Yang, GDAS, CVPR 2019; github.com/D-X-Y/AutoDL-Projects lib/nas_infer_model/DXYs/genotypes.py"),
    "GDAS_F1": (
        "Genotype(normal=[('skip_connect', 0), ('skip_connect', 1), ('skip_connect', 0), ('sep_conv_3x3', 2), "
        "('skip_connect', 0), ('sep_conv_3x3', 2), ('skip_connect', 0), ('sep_conv_3x3', 2)], "
        "normal_concat=[2, 3, 4, 5], reduce=None, reduce_concat=[2, 3, 4, 5])",
        "Dong & Yang, GDAS with a fixed reduction cell (GDAS-FRC), CVPR 2019; github.com/D-X-Y/AutoDL-Projects "
        "lib/nas_infer_model/DXYs/genotypes.py"),
    "PC_DARTS": (
        "Genotype(normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0), ('dil_conv_3x3', 1), "
        "('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), ('dil_conv_3x3', 1)], "
        "normal_concat=range(2, 6), reduce=[('sep_conv_5x5', 1), ('max_pool_3x3', 0), ('sep_conv_5x5', 1), "
        "('sep_conv_5x5', 2), ('sep_conv_3x3', 0), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2)], "
        "reduce_concat=range(2, 6))",
        "Xu et al., PC-DARTS, ICLR 2020; github.com/yuhuixu1993/PC-DARTS genotypes.py (PC_DARTS_cifar)"),
    "PDARTS": (
        "Genotype(normal=[('skip_connect', 0), ('dil_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), "
        "('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_3x3', 0), ('dil_conv_5x5', 4)], "
        "normal_concat=range(2, 6), reduce=[('avg_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_3x3', 0), "
        "('dil_conv_5x5', 2), ('max_pool_3x3', 0), ('dil_conv_3x3', 1), ('dil_conv_3x3', 1), ('dil_conv_5x5', 3)], "
        "reduce_concat=range(2, 6))",
        "Chen et al., P-DARTS, ICCV 2019; github.com/chenxin061/pdarts genotypes.py"),
    "DrNAS": (
        "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2), "
        "('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2), ('dil_conv_5x5', 3)], "
        "normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), ('sep_conv_5x5', 1), ('dil_conv_5x5', 2), "
        "('sep_conv_5x5', 1), ('sep_conv_5x5', 1), ('dil_conv_5x5', 3), ('skip_connect', 4), ('sep_conv_5x5', 1)], "
        "reduce_concat=range(2, 6))",
        "Chen et al., DrNAS, ICLR 2021; github.com/xiangning-chen/DrNAS DARTS-space/genotypes.py (DrNAS_cifar10)"),
    "NASNet": (
        "Genotype(normal=[('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('sep_conv_5x5', 0), ('sep_conv_3x3', 0), "
        "('avg_pool_3x3', 1), ('skip_connect', 0), ('avg_pool_3x3', 0), ('avg_pool_3x3', 0), ('sep_conv_3x3', 1), "
        "('skip_connect', 1)], normal_concat=[2, 3, 4, 5, 6], reduce=[('sep_conv_5x5', 1), ('sep_conv_7x7', 0), "
        "('max_pool_3x3', 1), ('sep_conv_7x7', 0), ('avg_pool_3x3', 1), ('sep_conv_5x5', 0), ('skip_connect', 3), "
        "('avg_pool_3x3', 2), ('sep_conv_3x3', 2), ('max_pool_3x3', 1)], reduce_concat=[4, 5, 6])",
        "Zoph et al., NASNet-A, CVPR 2018, as transcribed in github.com/quark0/darts cnn/genotypes.py"),
    "AmoebaNet": (
        "Genotype(normal=[('avg_pool_3x3', 0), ('max_pool_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_5x5', 2), "
        "('sep_conv_3x3', 0), ('avg_pool_3x3', 3), ('sep_conv_3x3', 1), ('skip_connect', 1), ('skip_connect', 0), "
        "('avg_pool_3x3', 1)], normal_concat=[4, 5, 6], reduce=[('avg_pool_3x3', 0), ('sep_conv_3x3', 1), "
        "('max_pool_3x3', 0), ('sep_conv_7x7', 2), ('sep_conv_7x7', 0), ('avg_pool_3x3', 1), ('max_pool_3x3', 0), "
        "('max_pool_3x3', 1), ('conv_7x1_1x7', 0), ('sep_conv_3x3', 5)], reduce_concat=[3, 4, 6])",
        "Real et al., AmoebaNet-A, AAAI 2019, as transcribed in github.com/quark0/darts cnn/genotypes.py"),
}


def published_genotype(name: str) -> Genotype:
    if name not in PUBLISHED:
        near = difflib.get_close_matches(name, list(PUBLISHED), n=1, cutoff=0.5)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise GenotypeError(f"unknown genotype name {name!r}{hint}; published: {', '.join(PUBLISHED)}")
    return parse_genotype(PUBLISHED[name][0])


def load_genotype(source: str) -> Genotype:
    """A genotype from a published name, a file (any format), a run directory (its genotype.json) or a
    genotype string."""
    s = source.strip()
    if s in PUBLISHED:
        return published_genotype(s)
    if s.startswith("{") or any(get_space(name).reads(s) for name in list_spaces()):
        return parse_genotype(s)
    p = Path(source)
    if p.is_dir():
        if not (p / GENOTYPE).is_file():
            raise GenotypeError(f"run directory {source!r} has no genotype.json (has its search finished?)")
        return read_genotype(p / GENOTYPE)
    if p.is_file():
        return read_genotype(p)
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", s):  # looks like a name, not a path
        published_genotype(s)  # raises: unknown name, with the nearest published one
    raise GenotypeError(f"genotype {source!r} is neither a file, a run directory nor a genotype string (JSON, "
                        f"{text_formats()})")


def write_genotype(g: Genotype, path: str | Path) -> None:
    Path(path).write_text(g.to_json())


if __name__ == "__main__":
    from nas.errors import library_module

    raise SystemExit(library_module("nas.space.genotype", "genotype"))
