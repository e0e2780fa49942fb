"""The ``accbench`` command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
from accbench.errors import AccbenchError
from rich.console import Console
from rich.table import Table


def _console(stderr: bool = False) -> Console:
    """The terminal's console (stderr with ``--json``, so stdout carries only the JSON); 200
    columns when output goes to a file or a CI log, so wide tables and progress lines keep
    their cells instead of being squeezed to 80 columns."""
    c = Console(stderr=stderr)
    return c if c.is_terminal else Console(width=200, stderr=stderr)


def _split(values: tuple[str, ...] | str | None) -> list[str]:
    """``--x a,b --x c`` -> [a, b, c]."""
    if values is None:
        return []
    if isinstance(values, str):
        values = (values,)
    out: list[str] = []
    for v in values:
        out.extend(p.strip() for p in v.split(",") if p.strip())
    return out


def _int_list(value: str | None, flag: str) -> list[int] | None:
    if not value:
        return None
    try:
        return [int(v) for v in _split(value)]
    except ValueError:
        raise AccbenchError(f"{flag} takes comma-separated integers, got {value!r}") from None


def _json_object(value: str | None, flag: str) -> dict:
    if not value:
        return {}
    try:
        obj = json.loads(value)
    except json.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict) or not all(isinstance(v, (int, float)) for v in obj.values()):
        raise AccbenchError(f"{flag} takes a JSON object of numbers, e.g. '{{\"H100\": 1}}', got {value!r}")
    return obj


def parse_method_options(pairs: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """``-o medusa1.tree=small -o lookahead.W=5`` -> {"medusa1": {"tree": "small"}, ...}: the
    values as written; each method's ``Options`` parses and checks them (``parse_options``)."""
    out: dict[str, dict[str, str]] = {}
    for p in pairs:
        lhs = p.split("=", 1)[0]
        if "=" not in p or "." not in lhs or not all(lhs.split(".", 1)):
            raise AccbenchError(f"--option expects METHOD.KEY=VALUE, got {p!r}")
        method, key = lhs.split(".", 1)
        out.setdefault(method, {})[key.strip()] = p.split("=", 1)[1]
    return out


def _option_lines(method: str, cls) -> list[str]:
    """One method's options, one line each: name, type, default, range, help."""
    from accbench.engine.config import options_of
    from accbench.methods.core.options import describe

    lines = []
    for o in describe(options_of(cls)):
        rng = f", {o['range']}" if o["range"] else ""
        lines.append(f"  -o {method}.{o['name']}=<{o['type']}>  (default {o['default']!r}{rng})  {o['help']}")
    return lines or [f"  {method} has no options"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="accbench")
def main() -> None:
    """accbench: how much does each LLM inference-acceleration method speed up generation on
    your model and hardware, and what does it cost in quality?

    \b
    Typical use:
      accbench list
      accbench run --methods ar --model smollm2-135m --suite mbpp,cnndm --limit 5
    """


@main.command()
@click.option("--methods", "-m", multiple=True, default=("ar",), show_default=True,
              help="Comma-separated methods or aliases (see `accbench list`; medusa = medusa1). AR, the "
                   "baseline every speedup is measured against, is added and run first unless --no-baseline.")
@click.option("--no-baseline", is_flag=True,
              help="Do not add AR when it is not in --methods (no speedup or exact-match-vs-AR columns).")
@click.option("--model", "models", multiple=True, default=("smollm2-135m",), show_default=True,
              help="Registry name, Hugging Face id or local directory; repeat or comma-separate for several.")
@click.option("--suite", "suites", multiple=True, default=("mbpp",), show_default=True,
              help="Comma-separated suites: mbpp, cnndm, summarization (with --data), prompts (with --data).")
@click.option("--limit", type=int, default=None, help="Samples per suite (default: the whole split).")
@click.option("--max-new-tokens", type=int, default=None, help="Generation budget (default: the suite's own).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for sampling and bootstrap.")
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32 on CPU, bfloat16 on CUDA).")
@click.option("--device", default=None, help="cpu | cuda | cuda:N (default: cpu).")
@click.option("--repeats", type=int, default=1, show_default=True,
              help="Timed generations per sample; the median is recorded, all are kept.")
@click.option("--warmup", type=int, default=1, show_default=True,
              help="Unrecorded warmup generations per method and model.")
@click.option("--prompt-format", type=click.Choice(["auto", "raw", "chat"]), default="auto", show_default=True,
              help="chat wraps each prompt in the model's chat template (raw when it has none); auto uses "
                   "the suite's choice: raw for mbpp (lm-eval's few-shot format), chat for the others.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Folder with the data sets (else $ACCBENCH_DATA_DIR, else the Hugging Face hub).")
@click.option("--data", "data_file", type=click.Path(dir_okay=False), default=None,
              help="Data file for the summarization, prompts and specbench suites.")
@click.option("--option", "-o", "options", multiple=True, metavar="METHOD.KEY=VALUE",
              help="Method option, checked against the method's typed options before any model loads, "
                   "e.g. -o pld.num_draft=5 (see --help-options or `accbench list`).")
@click.option("--help-options", is_flag=True, help="Print the options of the --methods and exit.")
@click.option("--prompt-lengths", default=None, metavar="N,N,...",
              help="Sweep axis: cut (middle truncation) or pack (other samples' text in front) every prompt "
                   "to each of these token counts, e.g. 512,1024,2048,4096.")
@click.option("--truncate", type=click.Choice(["none", "middle"]), default="none", show_default=True,
              help="A prompt longer than the model's context minus the generation budget: none stops with an "
                   "error naming it before any model loads; middle keeps its first and last halves (LongBench's "
                   "truncation), recorded in the row's prompt_truncated_from.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Results folder (default: results/<first model>-<suites>). Rerunning resumes.")
@click.option("--overwrite", is_flag=True, help="Discard an existing results folder with other settings.")
@click.option("--train-missing", is_flag=True,
              help="Train a method's missing artifacts (e.g. Medusa heads) with its defaults instead of stopping.")
@click.option("--executor", type=click.Choice(["local", "ray", "inline"]),
              default=lambda: os.environ.get("ACCBENCH_EXECUTOR", "local"), show_default="local",
              help="local: each group (model x suite x prompt length, AR and every method decoding each "
                   "sample in lockstep) in its own worker process, a crash fails that (method, sample) only; "
                   "ray: each group a Ray task; inline: everything in this process (debugging). Default from "
                   "$ACCBENCH_EXECUTOR when set.")
@click.option("--address", default=None, metavar="auto|HOST:PORT|local",
              help="Ray cluster to use with --executor ray (default: $RAY_ADDRESS, else a new local instance).")
@click.option("--ray-resources", default=None, metavar="JSON",
              help='Custom Ray resources each group asks for, e.g. \'{"H100": 1}\'.')
@click.option("--ray-cpus", type=float, default=None,
              help="CPUs per Ray group (default 1; CPU groups use that many threads).")
@click.option("--retries", type=int, default=None,
              help="Re-runs of a (method, sample) whose worker process died (default 0), and on ray of a "
                   "group whose task was lost, on what it left (default 1).")
@click.option("--device-label", default=None,
              help="The rows' device name (default: the torch device; on ray plus the custom resources), "
                   "so runs on different hardware can share one results folder.")
@click.option("--device-map", default=None, metavar="auto",
              help="auto: shard a model too large for one GPU over the GPUs of the group's node (accelerate).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the summary as JSON on stdout (progress and tables go to stderr), for scripts.")
def run(methods, no_baseline, models, suites, limit, max_new_tokens, seed, temperature, top_p, dtype, device, repeats,
        warmup, prompt_format, data_dir, data_file, options, help_options, prompt_lengths, truncate, out, overwrite,
        train_missing, executor, address, ray_resources, ray_cpus, retries, device_label, device_map,
        as_json) -> None:
    """Run a sweep: methods x models x suites. Writes config.json, samples.jsonl and
    summary.csv into --out and prints a table per suite. Interrupt it at any time: rerunning
    the same command skips finished samples."""
    from accbench.engine.config import SweepConfig
    from accbench.engine.driver import run_sweep
    from accbench.engine.results import ResultsDir
    from accbench.progress import RichProgress
    from accbench.reports.summary import summarize
    from accbench.reports.tables import summary_tables

    console = _console(stderr=as_json)
    if help_options:
        _print_method_options(_split(methods))
        return
    model_list, suite_list = _split(models), _split(suites)
    out_path = Path(out) if out else Path("results") / f"{model_list[0].replace('/', '_')}-{'-'.join(suite_list)}"
    cfg = SweepConfig(
        methods=_split(methods), models=model_list, suites=suite_list, out=out_path, limit=limit,
        max_new_tokens=max_new_tokens, seed=seed, dtype=dtype, device=device, repeats=repeats, warmup=warmup,
        temperature=temperature, top_p=top_p, prompt_format=prompt_format, data_dir=data_dir,
        data_file=data_file, method_options=parse_method_options(options),
        prompt_lengths=_int_list(prompt_lengths, "--prompt-lengths"), truncate=truncate, train_missing=train_missing,
        executor=executor, address=address, ray_resources=_json_object(ray_resources, "--ray-resources"),
        ray_cpus=ray_cpus, retries=retries, device_label=device_label, device_map=device_map,
        baseline=not no_baseline,
    )
    try:
        results = run_sweep(cfg, RichProgress(console), overwrite=overwrite)
    except KeyboardInterrupt:
        n = len(ResultsDir(out_path).load_rows(repair=False)) if (out_path / "samples.jsonl").exists() else 0
        console.print(f"[yellow]Interrupted.[/yellow] {n} rows are saved in {out_path}; "
                      "rerun the same command to resume.")
        sys.exit(130)
    frame = results.frame if results.frame is not None else summarize(results.load_rows(repair=False))
    for t in summary_tables(frame):
        console.print(t)
    console.print(f"[dim]rows: {results.samples_path}  summary: {results.summary_path}[/dim]")
    cfg_json = results.config()
    failed = cfg_json.get("failed_cells") or []
    if as_json:
        click.echo(json.dumps({"results": str(results.path), "status": cfg_json.get("status"),
                               "failed_cells": failed, "summary": frame_records(frame)}, default=str))
    if failed:
        n = len(cfg_json.get("failed_samples") or [])
        console.print(f"[red]{n} sample(s) failed[/red] in {len(failed)} cell(s): {', '.join(failed)}; errors in "
                      f"{results.path / 'failed.jsonl'}. Rerun the same command to retry them.")
        sys.exit(1)


def _print_method_options(names: list[str]) -> None:
    from accbench import methods as method_registry

    known = method_registry.available()
    names = [method_registry.resolve(m) for m in names]
    for m in names:
        if m not in known:
            raise AccbenchError(f"unknown method {m!r}; valid: {', '.join(known)}")
    for m in names:
        click.echo(f"{m}: {known[m].description}")
        for line in _option_lines(m, known[m]):
            click.echo(line)


def frame_records(frame) -> list[dict]:
    """A summary frame as JSON-ready records (NaN -> null)."""
    import math

    def clean(v):
        if isinstance(v, float) and math.isnan(v):
            return None
        return v.item() if hasattr(v, "item") else v

    return [{k: clean(v) for k, v in rec.items()} for rec in frame.to_dict(orient="records")]


@main.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print methods (with options), models and suites as JSON.")
def list_cmd(as_json) -> None:
    """Methods, models and suites, with their readiness."""
    from accbench import methods as method_registry
    from accbench import suites as suite_registry
    from accbench.models import MODELS, readiness

    if as_json:
        from accbench.engine.config import options_of
        from accbench.methods.core.options import describe

        click.echo(json.dumps({
            "methods": [{"name": n, "lossless": bool(c.lossless), "description": c.description,
                         "aliases": [a for a, t in method_registry.aliases().items() if t == n],
                         "options": describe(options_of(c))} for n, c in method_registry.available().items()],
            "models": [{"name": n, "source": s.source, "status": readiness(n), "description": s.description}
                       for n, s in MODELS.items()],
            "suites": [{"name": n, "status": suite_registry.readiness(n), "description": c.description}
                       for n, c in suite_registry.available().items()],
        }, default=str))
        return
    console = _console()
    t = Table(title="methods", title_justify="left")
    for c in ("name", "aliases", "lossless", "description"):
        t.add_column(c)
    alias_of = method_registry.aliases()
    for name, cls in method_registry.available().items():
        status = getattr(cls, "readiness", None)
        t.add_row(name, ", ".join(a for a, c in alias_of.items() if c == name), "yes" if cls.lossless else "no",
                  cls.description + (f" ({status()})" if status else ""))
    console.print(t)
    _options_table(console, method_registry.available())

    t = Table(title="models", title_justify="left")
    for c in ("name", "source", "status", "description"):
        t.add_column(c)
    for name, spec in MODELS.items():
        t.add_row(name, spec.source, readiness(name), spec.description)
    console.print(t)

    t = Table(title="suites", title_justify="left")
    for c in ("name", "status", "description"):
        t.add_column(c)
    for name, cls in suite_registry.available().items():
        t.add_row(name, suite_registry.readiness(name), cls.description)
    console.print(t)


def _options_table(console: Console, known: dict[str, type]) -> None:
    """Every method's options (``-o METHOD.KEY=VALUE``): type, default, range, help."""
    from accbench.engine.config import options_of
    from accbench.methods.core.options import describe

    t = Table(title="method options (-o METHOD.KEY=VALUE)", title_justify="left")
    for c in ("method", "option", "type", "default", "range", "help"):
        t.add_column(c)
    for name, cls in known.items():
        for o in describe(options_of(cls)):
            t.add_row(name, o["name"], o["type"], repr(o["default"]), o["range"] or "-", o["help"])
    console.print(t)


# Commands that live in their own modules (reports, gates, executors...): (module, attribute).
# Third-party packages add commands through the ``accbench.commands`` entry-point group.
COMMAND_MODULES = [
    ("accbench.reports.report", "commands"),
    ("accbench.training.commands", "commands"),
    ("accbench.lmeval", "commands"),
]


def _load_commands() -> None:
    import importlib
    from importlib.metadata import entry_points

    for mod_name, attr in COMMAND_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name == mod_name:
                continue
            raise
        for cmd in getattr(mod, attr):
            main.add_command(cmd)
    for ep in entry_points(group="accbench.commands"):
        main.add_command(ep.load(), name=ep.name)


_load_commands()


if __name__ == "__main__":  # pragma: no cover
    main()
