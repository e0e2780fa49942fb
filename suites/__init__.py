"""Suite registry. Built-in suites live in this package (``mbpp``, ``cnndm``,
``summarization``, ``prompts``, ``specbench``, ``longbench``); third-party suites register through the
``accbench.suites`` entry-point group (``name = "pkg.module:SuiteClass"``) or by calling
:func:`register` at import time.

The CLI uses :func:`available`, :func:`get`, :func:`build` and :func:`readiness`.
"""

from __future__ import annotations

import importlib
import inspect
import os
from importlib.metadata import entry_points
from typing import Any

from accbench.errors import AccbenchError
from accbench.suites.base import Sample, Suite  # noqa: F401  (re-exported: the suite protocol is public API)

_REGISTRY: dict[str, type] = {}
_BROKEN: dict[str, str] = {}  # entry points that failed to load: name -> reason
# Built-in modules, imported lazily so `accbench list` stays fast.
_BUILTIN_MODULES = ["mbpp", "humaneval", "summarization", "prompts", "specbench", "longbench"]
_loaded = False


def register(cls: type) -> type:
    """Class decorator: ``@register`` on a Suite subclass with a ``name`` attribute."""
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
    for ep in entry_points(group="accbench.suites"):
        if ep.name in _REGISTRY:
            continue
        try:
            cls = ep.load()
        except Exception as e:  # a broken plugin must not break `accbench list`
            _BROKEN[ep.name] = f"{type(e).__name__}: {e}".splitlines()[0]
            continue
        if not getattr(cls, "name", ""):
            cls.name = ep.name
        _REGISTRY[ep.name] = cls


def available() -> dict[str, type]:
    """Every registered suite, name -> class (built-ins and entry points)."""
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> type:
    """The suite class called ``name``; AccbenchError if there is none."""
    suites = available()
    if name in suites:
        return suites[name]
    if name in _BROKEN:
        raise AccbenchError(f"suite {name!r} failed to load: {_BROKEN[name]}")
    raise AccbenchError(f"unknown suite {name!r}; available: {', '.join(suites)}")


def _params(cls: type) -> tuple[dict[str, inspect.Parameter], bool]:
    try:
        params = dict(inspect.signature(cls).parameters)
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return params, takes_any


def takes_data_file(name: str) -> bool:
    """Whether suite ``name`` reads ``--data FILE`` (``summarization``, ``prompts``); the
    others (``mbpp``, ``cnndm``) find their fixed file via ``--data-dir``."""
    params, takes_any = _params(get(name))
    return takes_any or "data_file" in params


def build(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    data_file: str | os.PathLike[str] | None = None,
    **options: Any,
) -> Suite:
    """A ready suite instance from CLI options: ``--data-dir`` -> ``data_dir``, ``--data
    FILE`` -> ``data_file``; ``options`` are suite-specific keyword arguments (e.g.
    ``split="validation"``, ``task_ids="11-20"`` for mbpp; ``split="train"`` for cnndm).

    ``data_file`` goes only to suites that take one (see :func:`takes_data_file`), so one
    ``--data`` can serve a sweep over ``mbpp,prompts``. Data is loaded here: a missing or
    malformed file fails before any model is loaded."""
    cls = get(name)
    params, takes_any = _params(cls)
    kwargs: dict[str, Any] = {}
    if data_file is not None and (takes_any or "data_file" in params):
        kwargs["data_file"] = data_file
    if data_dir is not None and (takes_any or "data_dir" in params):
        kwargs["data_dir"] = data_dir
    if not takes_any:
        unknown = [k for k in options if k not in params or k in ("data_dir", "data_file")]
        if unknown:
            allowed = [k for k in params if k not in ("data_dir", "data_file")]
            raise AccbenchError(
                f"suite {name!r} has no option {unknown[0]!r}"
                + (f"; its options: {', '.join(allowed)}" if allowed else "")
            )
    kwargs.update(options)
    return cls(**kwargs)


def readiness(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    data_file: str | os.PathLike[str] | None = None,
) -> str:
    """One short line for ``accbench list``: ``"ready (PATH)"``, ``"needs data: ..."``,
    ``"needs network (hub)"`` or ``"needs --data FILE"``. Never loads data or touches the
    network."""
    cls = get(name)
    if data_file is not None and takes_data_file(name):
        from accbench.suites.data import resolve_data_file

        try:
            return f"ready ({resolve_data_file(data_file, data_dir)})"
        except AccbenchError as e:
            return f"needs data: {e.message}"
    fn = getattr(cls, "readiness", None)
    if fn is None:
        return "ready"
    try:
        return str(fn(data_dir))
    except Exception as e:
        return f"not ready: {type(e).__name__}: {e}".splitlines()[0]
