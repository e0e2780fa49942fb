"""What a sweep is asked to do (:class:`SweepConfig`) and the checks made before any worker
starts or any model loads: names, numbers and every method option."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from accbench.engine.prompts import TRUNCATE
from accbench.errors import AccbenchError
from accbench.methods.core.options import NoOptions, OptionError, describe, parse_options

BASELINE = "ar"
EXECUTORS = ("local", "ray", "inline")


@dataclass
class SweepConfig:
    methods: list[str]
    models: list[str]
    suites: list[str]
    out: Path
    limit: int | None = None
    max_new_tokens: int | None = None  # None: each suite's own budget
    seed: int = 0
    dtype: str | None = None  # None: float32 on CPU, bfloat16 on CUDA
    device: str | None = None  # None: cpu
    repeats: int = 1
    warmup: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    prompt_format: str = "auto"  # "auto" (the suite's preference) | "raw" | "chat"
    data_dir: str | None = None
    data_file: str | None = None
    #: ``-o METHOD.KEY=VALUE`` as given (strings or values); :func:`validate` replaces them by
    #: the parsed, typed values
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    prompt_lengths: list[int] | None = None  # sweep axis: cut/pack every prompt to these token counts
    truncate: str = "none"  # a prompt too long for the context minus the budget: "none" (an error) | "middle"
    train_missing: bool = False  # train a method's missing artifacts instead of stopping
    #: add AR as the baseline when a method to compare with it is asked for (``--no-baseline``: False)
    baseline: bool = True
    # How the groups (model x device x suite x prompt length) run; none of these is a setting
    # (they do not change what a row means). See accbench.engine.driver.
    executor: str = "local"  # "local" (a worker process per group) | "ray" | "inline" (this process)
    address: str | None = None  # ray: "auto", "local" or HOST:PORT (None: an initialized ray, else auto)
    ray_resources: dict[str, float] = field(default_factory=dict)  # extra resources per group, e.g. {"H100": 1}
    ray_cpus: float | None = None  # CPUs per group on ray (default 1)
    retries: int | None = None  # re-runs of what a dead worker took down (default: 0 local, 1 ray)
    device_label: str | None = None  # the rows' `device` (default: the torch device, e.g. cuda:0)
    device_map: str | None = None  # "auto": shard a model too large for one GPU over the node's GPUs

    def settings(self) -> dict[str, Any]:
        """What changes the meaning of a row: resuming with other values is refused."""
        return {
            "max_new_tokens": self.max_new_tokens, "seed": self.seed, "dtype": self.dtype,
            "repeats": self.repeats, "temperature": self.temperature, "top_p": self.top_p,
            "prompt_format": self.prompt_format, "data_file": self.data_file,
            "method_options": self.method_options,
            # only when set: folders from before --truncate existed resume unchanged
            **({"truncate": self.truncate} if self.truncate != "none" else {}),
        }

    def as_dict(self) -> dict[str, Any]:
        """JSON-able fields (what a worker rebuilds the config from)."""
        d = asdict(self)
        d["out"] = str(self.out)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SweepConfig":
        return cls(**{**d, "out": Path(d["out"])})


def ordered_methods(methods: list[str]) -> list[str]:
    """AR first, so every method's row can be compared with AR's tokens at once."""
    ms = list(dict.fromkeys(methods))
    return ([BASELINE] if BASELINE in ms else []) + [m for m in ms if m != BASELINE]


def normalize_methods(cfg: SweepConfig) -> list[str]:
    """Aliases -> canonical names (in --methods and -o), and AR added as the baseline when a
    speedup is to be shown (unless ``cfg.baseline`` is False). Returns notes saying what changed
    (for the first line of output). Idempotent."""
    from accbench import methods as method_registry

    aliases = method_registry.aliases()
    notes = []
    seen = [m for m in cfg.methods if m in aliases]
    for a in dict.fromkeys(seen):
        notes.append(f"{a} means {aliases[a]}")
    opts: dict[str, dict[str, Any]] = {}
    for m, kv in cfg.method_options.items():
        c = aliases.get(m, m)
        if c != m and m not in seen:
            notes.append(f"{m} means {c}")
            seen.append(m)
        opts.setdefault(c, {}).update(kv)
    cfg.method_options = opts
    cfg.methods = list(dict.fromkeys(aliases.get(m, m) for m in cfg.methods))
    if cfg.baseline and cfg.methods and BASELINE not in cfg.methods:
        cfg.methods = [BASELINE] + cfg.methods
        notes.append(f"{BASELINE} added as the baseline for the speedup (--no-baseline skips it)")
    return notes


def validate(cfg: SweepConfig) -> list[str]:
    """Fail early, before any worker starts or any model loads, on names that do not exist,
    bad numbers and bad method options (which are replaced by their parsed values). Aliases are
    replaced by canonical names and AR is added as the baseline (:func:`normalize_methods`);
    returns the notes saying so."""
    from accbench import methods as method_registry
    from accbench import suites as suite_registry
    from accbench.models import resolve_spec

    known = method_registry.available()
    aliases = method_registry.aliases()
    for m in cfg.methods:
        if m not in known and m not in aliases:
            raise AccbenchError(f"unknown method {m!r}; valid: {', '.join(known)}"
                                + (f" (aliases: {', '.join(f'{a}={c}' for a, c in aliases.items())})"
                                   if aliases else ""))
    for m in cfg.method_options:
        if m not in known and m not in aliases:
            raise OptionError(f"-o {m}.…: {m!r} is not a method; valid: {', '.join(known)}")
    notes = normalize_methods(cfg)
    known_suites = suite_registry.available()
    for s in cfg.suites:
        if s not in known_suites:
            raise AccbenchError(f"unknown suite {s!r}; valid: {', '.join(known_suites)}")
    for name in cfg.models:
        resolve_spec(name)
    if cfg.limit is not None and cfg.limit <= 0:
        raise AccbenchError(f"--limit must be a positive number of samples, got {cfg.limit}")
    if cfg.max_new_tokens is not None and cfg.max_new_tokens <= 0:
        raise AccbenchError(f"--max-new-tokens must be positive, got {cfg.max_new_tokens}")
    if cfg.repeats < 1:
        raise AccbenchError(f"--repeats must be at least 1, got {cfg.repeats}")
    if not cfg.temperature >= 0:
        raise AccbenchError(f"--temperature cannot be negative, got {cfg.temperature}")
    if not 0 < cfg.top_p <= 1:
        raise AccbenchError(f"--top-p must be in (0, 1], got {cfg.top_p}")
    if cfg.truncate not in TRUNCATE:
        raise AccbenchError(f"--truncate must be {' or '.join(TRUNCATE)}, got {cfg.truncate!r}")
    if cfg.warmup < 0:
        raise AccbenchError(f"--warmup cannot be negative, got {cfg.warmup}")
    for n in cfg.prompt_lengths or []:
        if n < 8:
            raise AccbenchError(f"--prompt-lengths must be at least 8 tokens each, got {n}")
    if cfg.prompt_format not in ("auto", "raw", "chat"):
        raise AccbenchError(f"--prompt-format must be auto, raw or chat, got {cfg.prompt_format!r}")
    if cfg.executor not in EXECUTORS:
        raise AccbenchError(f"unknown executor {cfg.executor!r}; valid: {', '.join(EXECUTORS)}")
    if cfg.retries is not None and cfg.retries < 0:
        raise AccbenchError(f"--retries cannot be negative, got {cfg.retries}")
    #: the -o values as given (what a method's ``preflight`` sees)
    cfg_raw = {m: {k: v if isinstance(v, str) else str(v) for k, v in kv.items()}
               for m, kv in cfg.method_options.items()}
    cfg.method_options = parse_method_options(cfg.method_options, cfg.methods, known)
    cfg.__dict__["_raw_options"] = cfg_raw
    return notes


def _option_keys(method: str, cls) -> str:
    return f"{method} options: " + (", ".join(f"{o['name']} ({o['type']})" for o in describe(options_of(cls))) or "none")


def parse_method_options(raw: dict[str, dict[str, Any]], methods: list[str], known: dict[str, type]) -> dict:
    """Every ``-o`` option parsed with its method's ``Options``: {method: {key: value}} with
    typed, JSON-able values. An unknown method prefix, an unknown key or a bad value raises
    one :class:`OptionError` naming the valid keys."""
    out: dict[str, dict[str, Any]] = {}
    for method, opts in raw.items():
        if method not in known:
            raise OptionError(f"-o {method}.…: {method!r} is not a method; valid: {', '.join(known)}")
        if method not in methods:
            raise OptionError(f"-o {method}.…: {method!r} is not in --methods ({', '.join(methods)})")
        cls = known[method]
        try:
            parsed = parse_options(method, options_of(cls), opts)
        except OptionError as e:
            msg = e.message if "valid:" in e.message else f"{e.message}; {_option_keys(method, cls)}"
            raise OptionError(msg) from None
        except (TypeError, ValueError) as e:  # a method's own cross-field check
            raise OptionError(f"{method}: {e}; {_option_keys(method, cls)}") from None
        out[method] = {k: getattr(parsed, k) for k in opts}
    return out


def options_of(cls) -> type:
    """A method class's options dataclass (a third-party class may declare none)."""
    return getattr(cls, "Options", NoOptions)


def resolved_options(cfg: SweepConfig) -> dict[str, dict[str, Any]]:
    """Every option of every method with its value in this sweep (for config.json)."""
    from accbench import methods as method_registry

    return {m: {**{o["name"]: o["default"] for o in describe(options_of(method_registry.get(m)))},
                **cfg.method_options.get(m, {})} for m in ordered_methods(cfg.methods)}
