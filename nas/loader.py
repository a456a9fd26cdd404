"""The generic config loader: frozen dataclasses read from YAML plus dotted ``key=value`` overrides.

Strict by design: an unknown key (the nearest valid key is suggested), a value of the wrong type or an invalid
value raises ConfigError with one line naming the key, the bad value and what is valid. The schemas themselves
(what a search, a training or a study reads) are in nas/config.py.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from nas.errors import ConfigError

C = TypeVar("C")


def key(default: Any, help: str, *, choices: tuple[Any, ...] = (), low: float | None = None,
         high: float | None = None, low_open: bool = False, high_open: bool = False) -> Any:
    """A config key: its default, one line of help, and the valid values (choices or a range)."""
    meta = {"help": help, "choices": choices, "low": low, "high": high, "low_open": low_open,
            "high_open": high_open}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)  # each instance its own
    return field(default=default, metadata=meta)


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``a.b=value`` items as {dotted key: YAML value}, in order."""
    given: dict[str, Any] = {}
    for item in overrides:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"override {item!r} is not of the form key=value (for example search.epochs=2)")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text  # not YAML: take it as a plain string, type checking decides
        given[name] = value
    return given


def get_dotted(raw: dict[str, Any], dotted: str) -> Any:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def pop_dotted(raw: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    node = raw
    for part in parents:
        node = node[part]
    node.pop(last, None)


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not a text file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys, not a {type(data).__name__}")
    return data


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {key!r}: {'.'.join(parts[: i + 1])!r} is not a section")
        node = child
    node[parts[-1]] = value


def from_dict(cls: type[C], raw: dict[str, Any], prefix: str = "", root: type | None = None,
              base: Any = None) -> C:
    """Build a config dataclass from nested dicts, strictly: unknown keys and bad values raise.

    Keys not in ``raw`` keep their value in ``base`` (default: cls()), so a section inherits the defaults its
    parent declares for it (TrainConfig's data section has batch_size 96, not DataConfig's 64).
    """
    assert dataclasses.is_dataclass(cls)
    root = root or cls
    base = cls() if base is None else base
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints: dict[str, Any] = typing.get_type_hints(cls)
    for name in raw:
        if name not in fields:
            raise ConfigError(_unknown_key_message(cls, root, prefix, str(name)))
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        f, dotted, tp = fields[name], prefix + name, hints[name]
        if _is_section(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted!r} is a section: set its keys (for example "
                                  f"{dotted}.{dataclasses.fields(tp)[0].name}=...), not {value!r}")
            kwargs[name] = from_dict(tp, value, dotted + ".", root, getattr(base, name))
        else:
            kwargs[name] = _check_value(dotted, _coerce(dotted, value, tp), f.metadata)
    cfg = dataclasses.replace(base, **kwargs)
    check = getattr(cfg, "check", None)
    if check is not None:
        check()
    return cfg


def _section_at(cls: type, dotted: str) -> bool:
    """Whether ``dotted`` names a section (a nested config) of ``cls``."""
    tp: Any = cls
    for name in dotted.split("."):
        if not dataclasses.is_dataclass(tp):
            return False
        hints = typing.get_type_hints(tp)
        if name not in hints:
            return False
        tp = hints[name]
    return _is_section(tp)


def _is_section(tp: Any) -> bool:
    """A nested config class (a section such as ``data``), as opposed to a plain key."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _unknown_key_message(cls: type, root: type, prefix: str, name: str) -> str:
    here = [f.name for f in dataclasses.fields(cls)]
    near = difflib.get_close_matches(name, here, n=1, cutoff=0.6)
    if not near:  # maybe the key belongs to another section: search every dotted key
        everything = all_keys(root)
        hit = difflib.get_close_matches(name, [k.split(".")[-1] for k in everything], n=1, cutoff=0.8)
        near = [k for k in everything if hit and k.endswith("." + hit[0])][:1]
        if near:
            return f"unknown key {prefix + name!r} (did you mean {near[0]!r}?)"
    hint = f"did you mean {prefix + near[0]!r}?" if near else "valid: " + ", ".join(prefix + k for k in here)
    return f"unknown key {prefix + name!r} ({hint})"


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is dict:
        return "a mapping of names to keys"
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a non-empty list of {_type_name(args[0]).removeprefix('a ').removeprefix('an ')}s"
        return f"a list of {len(args)} numbers"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Return value as type tp, or raise ConfigError naming the key, the value and the expected type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    bad = ConfigError(f"{key}={value!r} has the wrong type; expected {_type_name(tp)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, str):  # YAML reads 3e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    if origin is dict:  # named sections whose keys the owner checks (per_method.<name>.<key>)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise bad
        out = {}
        for name, section in value.items():
            if section is not None and not isinstance(section, dict):
                raise ConfigError(f"{key}.{name}={section!r} has the wrong type; expected a mapping of keys")
            out[str(name)] = dict(section or {})
        return out
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: any length
            if not isinstance(value, (list, tuple)) or not value:
                raise bad
            return tuple(_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise bad
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args, strict=True)))
    raise AssertionError(f"unsupported config type {tp} for {key}")


def _check_value(key: str, value: Any, meta: typing.Mapping[str, Any]) -> Any:
    choices = meta.get("choices", ())
    if choices and value not in choices:
        names = ["null" if c is None else str(c) for c in choices]
        near = difflib.get_close_matches(str(value), names, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"{key}={value!r} is not valid{hint}; valid: {', '.join(names)}")
    if not choices and value is None:
        return value
    low, high = meta.get("low"), meta.get("high")
    low_open, high_open = meta.get("low_open", False), meta.get("high_open", False)
    for v in value if isinstance(value, tuple) else (value,):
        if v is None or isinstance(v, (str, bool, dict)):
            continue
        too_low = low is not None and (v <= low if low_open else v < low)
        too_high = high is not None and (v >= high if high_open else v > high)
        if too_low or too_high:
            lo = "" if low is None else f"{low} {'<' if low_open else '<='} "
            hi = "" if high is None else f" {'<' if high_open else '<='} {high}"
            raise ConfigError(f"{key}={value!r} is out of range; valid: {lo}{key.split('.')[-1]}{hi}")
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dicts (tuples become lists), ready for yaml.safe_dump."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            out[f.name] = to_dict(v)
        elif isinstance(v, tuple):
            out[f.name] = list(v)
        elif isinstance(v, dict):
            out[f.name] = {k: dict(x) for k, x in v.items()}
        else:
            out[f.name] = v
    return out


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


def all_keys(cls: type) -> list[str]:
    """Every dotted key of a config class, in declaration order."""
    keys: list[str] = []
    hints: dict[str, Any] = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_section(tp):
            keys += [f"{f.name}.{k}" for k in all_keys(tp)]
        else:
            keys.append(f.name)
    return keys


def describe(cls: type) -> list[tuple[str, Any, str]]:
    """(dotted key, default, help) for every key: the source of the key tables in docs/."""
    rows: list[tuple[str, Any, str]] = []
    hints: dict[str, Any] = typing.get_type_hints(cls)
    default = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_section(tp):
            rows += [(f"{f.name}.{k}", d, h) for k, d, h in describe(tp)]
        else:
            value = getattr(default, f.name)
            choices = f.metadata.get("choices", ())
            names = ["null" if c is None else str(c) for c in choices]
            text = f.metadata.get("help", "") + (f" (one of: {', '.join(names)})" if choices else "")
            rows.append((f.name, list(value) if isinstance(value, tuple) else value, text))
    return rows


def replace(cfg: C, **changes: Any) -> C:
    """dataclasses.replace for nested keys: replace(cfg, **{"search.epochs": 2})."""
    for dotted, value in changes.items():
        head, _, rest = dotted.partition(".")
        if rest:
            value = replace(getattr(cfg, head), **{rest: value})
        cfg = dataclasses.replace(cfg, **{head: value})  # type: ignore[type-var]
    return cfg


def key_table(cls: type) -> str:
    """The markdown table of every key of ``cls`` with its default and help (the key tables in docs/)."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for k, d, h in describe(cls):
        shown = yaml.safe_dump(d, default_flow_style=True).strip().removesuffix("...").strip()
        rows.append(f"| `{k}` | `{shown}` | {h} |")
    return "\n".join(rows)


# A rule on keys that mean something only under a condition on another key: (the keys, the key deciding, a function
# giving the values of the deciding key that give them a meaning).
Conditional = tuple[tuple[str, ...], str, Callable[[], tuple[str, ...]]]


def load(cls: type[C], path: str | Path | None, overrides: list[str] | tuple[str, ...] = (),
         conditional: tuple[Conditional, ...] = ()) -> C:
    """Read a YAML file (or start from defaults when path is None), apply ``a.b=value`` overrides, check. The
    recipe's keys whose condition an override switches off are dropped with a note; the same keys given as overrides
    are refused, whatever their value, since they would do nothing."""
    raw: dict[str, Any] = read_yaml(Path(path)) if path is not None else {}
    given = parse_overrides(overrides)
    for dotted in [k for k, v in given.items() if v is None and _section_at(cls, k)]:
        pop_dotted(raw, dotted)  # section=null: the recipe's keys of that section are dropped (its defaults stay)
        del given[dotted]
    notes = _drop_what_an_override_switched_off(cls, raw, given, conditional)
    for dotted, value in given.items():
        set_dotted(raw, dotted, value)
    cfg = from_dict(cls, raw)
    for note in notes:  # only once the config holds: a refused one prints its error alone
        print(note, file=sys.stderr)
    return cfg


def _drop_what_an_override_switched_off(cls: type, raw: dict[str, Any], given: dict[str, Any],
                                        conditional: tuple[Conditional, ...]) -> list[str]:
    """Drop the recipe's keys whose condition an override switched off; returns the notes that say so."""
    sections = {f.name for f in dataclasses.fields(cls)}
    notes = []
    for keys, decider, meaningful in conditional:
        if decider.split(".")[0] not in sections:
            continue
        value = given.get(decider, get_dotted(raw, decider))
        if value is None:
            value = get_dotted(dataclasses.asdict(cls()), decider)
        valid = meaningful()
        if value in valid:
            continue
        need = f"{decider}={' or '.join(valid)}"
        for name in keys:
            for g in given:
                if g == name or g.startswith(name + "."):
                    raise ConfigError(f"{g} applies only to {need}; this run has {decider}={value}: drop {g}")
            if decider in given and get_dotted(raw, name) is not None:
                pop_dotted(raw, name)
                notes.append(f"note: the recipe's {name} applies only to {need}; dropped, since {decider}={value}")
    return notes
