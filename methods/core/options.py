"""Typed, validated method options.

A method declares its options as a dataclass whose fields are made with :func:`option`::

    @dataclass
    class Options:
        num_draft: int = option(10, "tokens drafted per step", ge=1)

:func:`parse_options` turns ``-o METHOD.KEY=VALUE`` strings (or Python values) into an
instance, checking types, ranges and choices, so bad input fails before any model loads."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any

from accbench.methods.core.errors import AccbenchError


class OptionError(AccbenchError):
    """A bad ``-o`` value, an unknown key or an unknown method prefix (exit 2)."""


def option(default: Any, help: str, *, ge: float | None = None, le: float | None = None,
           choices: tuple | None = None) -> Any:
    return dataclasses.field(default=default, metadata={"help": help, "ge": ge, "le": le, "choices": choices})


@dataclasses.dataclass
class NoOptions:
    pass


def _kinds(tp) -> tuple[list[type], bool]:
    """The concrete types a field accepts and whether None is allowed."""
    if isinstance(tp, str):
        tp = eval(tp, {"typing": typing, "Any": Any})  # noqa: S307 - our own annotations only
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return [a for a in args if a is not type(None)], type(None) in args


def _coerce(value: Any, kinds: list[type]) -> Any:
    if not isinstance(value, str):
        for k in kinds:
            if k is float and isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if k is Any or (isinstance(value, k) and not (k is int and isinstance(value, bool))):
                return value
        raise ValueError
    s = value.strip()
    for k in kinds:
        try:
            if k is bool:
                if s.lower() in ("1", "true", "yes", "on"):
                    return True
                if s.lower() in ("0", "false", "no", "off"):
                    return False
                continue
            if k is int:
                return int(s)
            if k is float:
                return float(s)
            if k is str or k is Any:
                return s
            if k is list:
                v = json.loads(s)
                if isinstance(v, list):
                    return v
        except (ValueError, json.JSONDecodeError):
            continue
    raise ValueError


def _type_name(kinds: list[type], nullable: bool) -> str:
    names = [getattr(k, "__name__", str(k)) for k in kinds]
    return " | ".join(names + (["none"] if nullable else []))


def describe(cls) -> list[dict[str, Any]]:
    """Each option: name, type, default, help, range/choices (for ``accbench list``)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kinds, nullable = _kinds(hints[f.name])
        md = f.metadata
        rng = []
        if md.get("ge") is not None:
            rng.append(f">= {md['ge']}")
        if md.get("le") is not None:
            rng.append(f"<= {md['le']}")
        if md.get("choices"):
            rng.append("one of " + ", ".join(map(str, md["choices"])))
        out.append({"name": f.name, "type": _type_name(kinds, nullable), "default": f.default,
                    "help": md.get("help", ""), "range": "; ".join(rng)})
    return out


def parse_options(method: str, cls, raw: dict[str, Any]):
    """An instance of ``cls`` from ``raw`` (strings from the command line, or values)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    valid = ", ".join(fields) or "none"
    values = {}
    for key, value in raw.items():
        if key not in fields:
            raise OptionError(f"{method} has no option {key!r}; valid: {valid}")
        kinds, nullable = _kinds(hints[key])
        md = fields[key].metadata
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null") and nullable):
            if not nullable:
                raise OptionError(f"{method}.{key} cannot be none ({_type_name(kinds, nullable)})")
            values[key] = None
            continue
        try:
            v = _coerce(value, kinds)
        except ValueError:
            raise OptionError(f"{method}.{key}={value!r}: expected {_type_name(kinds, nullable)}") from None
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if md.get("ge") is not None and v < md["ge"]:
                raise OptionError(f"{method}.{key}={value!r}: must be >= {md['ge']}")
            if md.get("le") is not None and v > md["le"]:
                raise OptionError(f"{method}.{key}={value!r}: must be <= {md['le']}")
        if md.get("choices") and v not in md["choices"]:
            raise OptionError(f"{method}.{key}={value!r}: choose one of {', '.join(map(str, md['choices']))}")
        values[key] = v
    return cls(**values)
