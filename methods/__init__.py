"""Method registry. Built-in methods live one per file in this package; third-party methods
register through the ``accbench.methods`` entry-point group (``name = "pkg.module:Class"``)
or by calling :func:`register` at import time."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from accbench.methods.core import (  # noqa: F401  (re-exported: the protocol is the public API)
    Clock,
    Decoder,
    DecoderBase,
    GenerationRecord,
    SamplingConfig,
    StopChecker,
)

_REGISTRY: dict[str, type] = {}
#: other names for a registered method, alias -> canonical name. Classes may also declare
#: ``aliases = ("x",)``; rows and records always carry the canonical name.
ALIASES: dict[str, str] = {"medusa": "medusa1"}
# Built-in modules, imported lazily so `accbench list` stays fast.
_BUILTIN_MODULES = ["ar", "pld", "mtp", "lazyllm", "medusa", "lookahead", "sps", "eagle"]
_loaded = False


def register(cls: type) -> type:
    """Class decorator: ``@register`` on a Decoder subclass with a ``name`` attribute."""
    name = getattr(cls, "name", "")
    if not name:
        raise ValueError(f"{cls!r} has no 'name'")
    _REGISTRY[name] = cls
    return cls


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _BUILTIN_MODULES:
        importlib.import_module(f"{__name__}.{mod}")
    for ep in entry_points(group="accbench.methods"):
        if ep.name in _REGISTRY:
            continue
        cls = ep.load()
        if not getattr(cls, "name", ""):
            cls.name = ep.name
        _REGISTRY[ep.name] = cls


def available() -> dict[str, type]:
    """Every registered method, name -> class."""
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def aliases() -> dict[str, str]:
    """Every alias, alias -> canonical name (``ALIASES`` plus each class's ``aliases``)."""
    _load_all()
    out = {a: name for name, cls in _REGISTRY.items() for a in getattr(cls, "aliases", ()) or ()}
    out.update({a: c for a, c in ALIASES.items() if c in _REGISTRY})
    return {a: c for a, c in sorted(out.items()) if a not in _REGISTRY}  # a real name wins


def resolve(name: str) -> str:
    """The canonical method name for ``name`` (itself when it is no alias)."""
    return aliases().get(name, name)


def get(name: str) -> type:
    methods = available()
    name = resolve(name)
    if name not in methods:
        raise KeyError(name)
    return methods[name]
