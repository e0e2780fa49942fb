"""``accbench train`` and ``accbench tune`` (with its aliases ``tune-tree`` and
``tune-lookahead``): the harness side of training and tuning.

The harness loads the model, builds the data (training documents from never-evaluated splits;
held-out prompts encoded as ``accbench run`` encodes them) and the model's artifact store, and
hands them to the method as a :class:`TrainJob` / :class:`TuneJob`: methods never load models,
read suites or choose cache paths. :func:`train_method` also serves ``accbench run
--train-missing`` with a model that is already loaded.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import click
from accbench.errors import AccbenchError

TRAIN_SOURCES = ("mbpp", "cnndm")
# where tuning prompts come from: suite -> its never-evaluated split
TUNE_SPLITS = {"mbpp": {"split": "validation"}, "cnndm": {"split": "train"}}


def method_class(method: str, capability: str):
    """The registered class of ``method``, which must define ``capability`` (train / tune)."""
    from accbench import methods as method_registry

    known = method_registry.available()
    if method not in known:
        raise AccbenchError(f"unknown method {method!r}; valid: {', '.join(known)}")
    cls = known[method]
    if not hasattr(cls, capability):
        able = [n for n, c in known.items() if hasattr(c, capability)]
        raise AccbenchError(f"method {method!r} has nothing to {capability}; methods that do: {', '.join(able) or 'none'}")
    return cls


def key_values(pairs: Sequence[str]) -> dict[str, Any]:
    """``-o KEY=VALUE`` pairs (values parsed as JSON when they can be)."""
    out = {}
    for p in pairs:
        if "=" not in p:
            raise AccbenchError(f"--option expects KEY=VALUE, got {p!r}")
        k, v = p.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _print(console, line: str) -> None:
    if console is not None:
        console.print(line, markup=False, highlight=False)


@contextmanager
def _log_file(path: Path, console) -> Iterator:
    """A ``log(line)`` that prints to ``console`` and appends the line, timestamped, to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        def log(line: str) -> None:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
            f.flush()
            _print(console, line)

        try:
            yield log
        except BaseException as e:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} stopped: {type(e).__name__} {e}\n")
            raise


def _load(model_name: str, dtype, device, console):
    from accbench.models import load_model

    return load_model(model_name, dtype=dtype, device=device, progress=lambda m: _print(console, m))


def train_method(method: str, model_name: str, loaded=None, *, dtype: str | None = None, device: str | None = None,
                 data_dir: str | None = None, console=None, sources: Sequence[str] = TRAIN_SOURCES,
                 text_files: Sequence[str] = (), steps: int | None = None, batch_size: int | None = None,
                 lr: float | None = None, seq_len: int | None = None, targets: str = "self", seed: int = 0,
                 restart: bool = False, options: dict[str, Any] | None = None,
                 datasets: Sequence[str] = ()) -> Path:
    """Train ``method``'s artifact for ``model_name`` and make it the default; its path.

    ``loaded``: the model already loaded (``accbench run --train-missing``), else it is loaded
    here with ``dtype`` / ``device``. Progress lines go to ``console`` (when given) and to
    ``<cache>/artifacts/<model>/<method>/train.log``. Ctrl-C propagates after the method has
    saved its checkpoint. ``datasets``: Hugging Face dataset ids of ShareGPT-style
    conversations added to the training text. On CUDA, what the user left unset takes the GPU
    defaults of :mod:`accbench.training.defaults`."""
    from accbench.methods.core.jobs import TrainJob
    from accbench.training.artifacts import ModelArtifacts
    from accbench.training.train_data import training_documents

    cls = method_class(method, "train")
    from accbench.training.defaults import apply_device_defaults, dataset_documents

    documents = training_documents(sources, text_files, data_dir) if sources or text_files or not datasets else []
    for ds in datasets:  # data first: fails before the model loads
        documents += dataset_documents(ds)
    if loaded is None:
        loaded = _load(model_name, dtype, device, console)
    sized, note = apply_device_defaults(method, str(loaded.device), steps=steps, batch_size=batch_size, lr=lr,
                                        seq_len=seq_len, options=dict(options or {}))
    steps, batch_size, lr, seq_len, options = (sized[k] for k in ("steps", "batch_size", "lr", "seq_len", "options"))
    artifacts = ModelArtifacts(model_name)
    log_path = artifacts.folder(method) / "train.log"
    with _log_file(log_path, console) as log:
        log(f"accbench train {method} --model {model_name}: {len(documents)} documents, "
            f"{loaded.device} {str(loaded.dtype).replace('torch.', '')}")
        if note:
            log(note)
        job = TrainJob(method=method, model_name=model_name, model=loaded.model, tokenizer=loaded.tokenizer,
                       documents=documents, artifacts=artifacts, device=loaded.device, dtype=loaded.dtype,
                       steps=steps, batch_size=batch_size, lr=lr, seq_len=seq_len, seed=seed, restart=restart,
                       targets=targets, options=dict(options or {}), log=log, console=console)
        path = cls.train(job)
    _print(console, f"training log: {log_path}")
    return path


def held_out_prompts(suites: Sequence[str], per_suite: int, data_dir: str | None) -> tuple[list, list[str]]:
    """``per_suite`` prompts of each suite's never-evaluated split as (text, prompt format
    ``accbench run`` uses for that suite), and the suites' stop strings."""
    from accbench import suites as suite_registry
    from accbench.engine.prompts import suite_format

    texts, stops = [], []
    for name in suites:
        if name not in TUNE_SPLITS:
            raise AccbenchError(f"tune: held-out prompts come from {', '.join(TUNE_SPLITS)}, not {name!r}")
        suite = suite_registry.build(name, data_dir=data_dir, **TUNE_SPLITS[name])
        texts += [(s.prompt, suite_format("auto", suite)) for s in suite.samples(limit=per_suite)]
        stops += [s for s in suite.stop if s not in stops]
    return texts, stops


def tune_method(method: str, model_name: str, *, dtype: str | None = None, device: str | None = None,
                data_dir: str | None = None, suites: Sequence[str] = TRAIN_SOURCES, prompts: int = 2,
                options: dict[str, Any] | None = None, console=None):
    """Fit ``method``'s structure to the model and this device on held-out prompts; what the
    method's ``tune`` returns (the saved artifact)."""
    from accbench.engine.prompts import encode_prompt
    from accbench.methods.core.jobs import TuneJob
    from accbench.methods.core.stopping import StopChecker, eos_ids_of
    from accbench.training.artifacts import ModelArtifacts

    cls = method_class(method, "tune")
    if prompts < 1:
        raise AccbenchError(f"--prompts must be at least 1, got {prompts}")
    texts, stops = held_out_prompts(suites, prompts, data_dir)  # data first
    loaded = _load(model_name, dtype, device, console)
    tok = loaded.tokenizer
    job = TuneJob(method=method, model_name=model_name, model=loaded.model, tokenizer=tok,
                  prompts=[encode_prompt(tok, text, fmt) for text, fmt in texts],
                  stop=StopChecker(tok, stops, eos_ids_of(tok, loaded.model)), artifacts=ModelArtifacts(model_name),
                  device=loaded.device, dtype=loaded.dtype, options=dict(options or {}),
                  log=(lambda line: _print(console, line)) if console is not None else print, console=console)
    return cls.tune(job)


# --------------------------------------------------------------------------------------
# the commands
# --------------------------------------------------------------------------------------


@click.command()
@click.argument("method")
@click.option("--model", default="smollm2-135m", show_default=True)
@click.option("--steps", type=int, default=None, help="Optimizer steps (default: sized for this machine).")
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--seq-len", type=int, default=None, help="Tokens per training sequence.")
@click.option("--data-source", "sources", multiple=True, default=TRAIN_SOURCES, show_default=True,
              help="Never-evaluated splits: mbpp (task_ids 601-974), cnndm (items 500-999).")
@click.option("--text", "text_files", multiple=True, type=click.Path(dir_okay=False),
              help="Extra training text file(s), documents separated by blank lines.")
@click.option("--dataset", "datasets", multiple=True, metavar="HF_ID",
              help="Hugging Face dataset id of ShareGPT-style conversations to train on too (needs network and "
                   "`pip install datasets`), e.g. Aeala/ShareGPT_Vicuna_unfiltered. Checked before the model loads.")
@click.option("--targets", type=click.Choice(["self", "ground-truth"]), default="self", show_default=True,
              help="self: the backbone's own predictions (self-distillation); ground-truth: the text.")
@click.option("--dtype", default=None)
@click.option("--device", default=None,
              help="cpu | cuda | cuda:N. On cuda, --steps, --batch-size, --lr, --seq-len and -o data_tokens left "
                   "unset take GPU defaults (the Medusa paper's recipe: batch 8 x 2048 tokens, lr 1e-3, 2 epochs).")
@click.option("--data-dir", default=None)
@click.option("--restart", is_flag=True, help="Ignore an existing checkpoint and start over.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE", help="Method-specific option.")
def train(method, model, steps, batch_size, lr, seq_len, sources, text_files, datasets, targets, dtype, device, data_dir,
          restart, seed, options) -> None:
    """Train what METHOD needs (Medusa heads, MTP heads) for --model and make it the default.
    Checkpoints as it goes; rerunning the same command resumes an interrupted training.
    Progress lines go to the console and are appended to
    <cache>/artifacts/<model>/<method>/train.log (the cache: $ACCBENCH_CACHE_DIR, else the
    user cache folder)."""
    from accbench.cli import _console

    console = _console()
    try:
        train_method(method, model, dtype=dtype, device=device, data_dir=data_dir, console=console, sources=sources,
                     text_files=text_files, steps=steps, batch_size=batch_size, lr=lr, seq_len=seq_len,
                     targets=targets, seed=seed, restart=restart, options=key_values(options),
                     datasets=datasets)
    except KeyboardInterrupt:
        console.print("[yellow]Interrupted.[/yellow] The last checkpoint is kept; rerun the same command to resume.")
        sys.exit(130)


_TUNE_OPTIONS = [
    click.option("--model", default="smollm2-135m", show_default=True),
    click.option("--dtype", default=None),
    click.option("--device", default=None),
    click.option("--data-dir", default=None),
    click.option("--suite", "suites", default=",".join(TRAIN_SOURCES), show_default=True,
                 help="Held-out prompts for methods that measure on them (lookahead): mbpp (validation task_ids), "
                      "cnndm (items 500+), comma-separated."),
    click.option("--prompts", type=int, default=2, show_default=True, help="Held-out prompts per suite."),
    click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE", help="Method-specific option."),
]


def _tune_options(f):
    for o in reversed(_TUNE_OPTIONS):
        f = o(f)
    return f


def _tune(method, model, dtype, device, data_dir, suites, prompts, options) -> None:
    from accbench.cli import _console

    tune_method(method, model, dtype=dtype, device=device, data_dir=data_dir,
                suites=[s.strip() for s in suites.split(",") if s.strip()], prompts=prompts,
                options=key_values(options), console=_console())


@click.command()
@click.argument("method")
@_tune_options
def tune(method, **kw) -> None:
    """Fit METHOD's structure (Medusa tree, Lookahead W/N/G) to this model and device by
    measuring, and save it as that method's default here."""
    _tune(method, **kw)


@click.command(name="tune-tree")
@click.option("--method", default="medusa1", show_default=True)
@_tune_options
def tune_tree(method, **kw) -> None:
    """Pick the Medusa tree that maximizes expected tokens/s on this device (= tune METHOD)."""
    _tune(method, **kw)


@click.command(name="tune-lookahead")
@_tune_options
def tune_lookahead(**kw) -> None:
    """Pick Lookahead's W, N, G for this model and device by measuring (= tune lookahead)."""
    _tune("lookahead", **kw)


commands = [train, tune, tune_tree, tune_lookahead]
