"""lm-evaluation-harness integration: an lm-eval model called ``accbench`` that generates
with any accbench decoder, and offline task files (``accbench_mbpp``, ``accbench_cnndm``).

Three ways to run it (lm-eval 0.4.x has no plugin entry point for models, so the model must
be registered in the process before lm-eval looks it up):

* ``accbench eval --tasks accbench_mbpp --model smollm2-135m --method pld --limit 10``
  (a thin wrapper around ``lm_eval.simple_evaluate``, prints lm-eval's table and the speed);
* ``python -m accbench.lmeval --model accbench --model_args model=smollm2-135m,method=pld
  --tasks accbench_mbpp --limit 10``: lm-eval's own command line, with the model registered
  and ``--include_path`` pointing at accbench's task files;
* lm-eval's ``lm_eval`` command with a task *file*: ``lm_eval --model accbench --model_args ...
  --tasks $(python -m accbench.lmeval --tasks-dir)/accbench_mbpp.yaml``: loading the YAML
  imports its ``utils.py``, which registers the model.

In Python: ``import accbench.lmeval`` registers the model; then
``lm_eval.simple_evaluate(model="accbench", model_args="model=smollm2-135m,method=pld",
tasks=["accbench_mbpp"], task_manager=accbench.lmeval.task_manager())``.

Model arguments (``--model_args``): ``model`` (accbench model name, default smollm2-135m),
``method`` (default ar), ``dtype``, ``device`` (lm-eval's ``--device`` on its command line;
a CUDA device without CUDA falls back to the CPU), ``prompt_format`` (auto|raw|chat; auto, the
default: an accbench_<suite> task in its suite's format as `accbench run` uses it, e.g. chat for
accbench_cnndm and raw few-shot for accbench_mbpp, and any other lm-eval task raw), ``seed``,
``max_gen_toks`` (default 256, lm-eval's), ``max_length`` (context for loglikelihood),
``stats_path`` (a JSONL file receiving one line of speed figures per generation) and any
other ``key=value``: an option of the method (e.g. ``max_ngram=3``).

``generate_until`` runs the decoder (greedy unless the task asks for sampling) with a
:class:`~accbench.methods.StopChecker` on the request's ``until`` strings, so every method
stops exactly where AR would; ``loglikelihood`` and ``loglikelihood_rolling`` use the base
model (one sequence at a time). Speed figures (tokens/s, tau, TTFT per request) are collected
for every generation and summarized in the results' ``config["accbench"]``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from accbench.errors import AccbenchError

MODEL_NAME = "accbench"
TASKS_DIR = Path(__file__).resolve().parent.parent / "suites" / "lm_eval_tasks"


def tasks_dir() -> Path:
    """The folder with accbench's lm-eval task files (package data of accbench.suites)."""
    import accbench.suites

    return Path(accbench.suites.__file__).resolve().parent / "lm_eval_tasks"


def _lm_base():
    try:
        from lm_eval.api.model import LM
    except ImportError:
        raise AccbenchError("lm-eval is not installed: pip install 'accbench[lmeval]'") from None
    return LM


def _parse_scalar(v: Any) -> Any:
    if not isinstance(v, str):
        return v
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


class _AccbenchLMImpl:
    """The lm-eval model (mixed into ``lm_eval.api.model.LM`` by :func:`_make_class`)."""

    def __init__(self, model: str = "smollm2-135m", method: str = "ar", dtype: str | None = None,
                 device: str | None = None, prompt_format: str = "auto", seed: int = 0,
                 max_gen_toks: int = 256, max_length: int | None = None, stats_path: str | None = None,
                 batch_size: Any = None, max_batch_size: Any = None, data_dir: str | None = None,
                 trust_remote_code: Any = None, **method_options: Any) -> None:
        super().__init__()
        from accbench import methods as method_registry
        from accbench.methods import SamplingConfig
        from accbench.models import load_model

        if data_dir:  # where the accbench_* tasks (loaded after the model) read their data
            os.environ["ACCBENCH_DATA_DIR"] = str(data_dir)
        known = method_registry.available()
        if method not in known:
            raise AccbenchError(f"unknown method {method!r}; valid: {', '.join(known)}")
        self.model_name, self.method = str(model), str(method)
        self.method_options = {k: _parse_scalar(v) for k, v in method_options.items()}
        if prompt_format not in ("auto", "raw", "chat"):
            raise AccbenchError(f"prompt_format must be auto, raw or chat, got {prompt_format!r}")
        self.prompt_format = prompt_format
        self.seed = int(seed)
        self.max_gen_toks = int(max_gen_toks)
        self.stats_path = Path(stats_path) if stats_path else None
        if device is not None and str(device).startswith("cuda"):
            import torch

            if not torch.cuda.is_available():  # lm-eval's CLI passes --device (default cuda:0)
                print(f"accbench: {device} requested but CUDA is not available; using cpu", file=sys.stderr)
                device = None
        self.loaded = load_model(self.model_name, dtype=dtype, device=device)
        self.tokenizer = self.loaded.tokenizer
        cfg = self.loaded.model.config
        self.max_length = int(max_length or getattr(cfg, "max_position_embeddings", None) or 2048)
        self._decoders: dict[SamplingConfig, Any] = {}
        self._cls = known[method]
        self.stats: list[dict[str, Any]] = []
        self.decoder(SamplingConfig(seed=self.seed))  # fail now on bad method options

    # -- decoders -----------------------------------------------------------------------
    def decoder(self, sampling):
        dec = self._decoders.get(sampling)
        if dec is None:
            try:
                dec = self._cls(self.loaded.model, self.tokenizer, sampling=sampling, model_name=self.model_name,
                                **self.method_options)
            except (ValueError, TypeError) as e:
                raise AccbenchError(f"method {self.method!r}: {e}") from None
            self._decoders[sampling] = dec
        return dec

    def format_for(self, task_name: str | None) -> str:
        """The prompt format of a request: as given, or (auto) the accbench suite's own format
        for ``accbench_<suite>`` tasks and raw for every other lm-eval task."""
        if self.prompt_format != "auto":
            return self.prompt_format
        name = str(task_name or "")
        if name.startswith("accbench_"):
            from accbench import suites

            cls = suites.available().get(name[len("accbench_"):])
            if cls is not None:
                return getattr(cls, "prompt_format", "chat")
        return "raw"

    def _encode(self, text: str, task_name: str | None = None) -> list[int]:
        from accbench.engine.prompts import encode_prompt

        return encode_prompt(self.tokenizer, text, self.format_for(task_name))

    # -- lm-eval API ----------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from accbench.methods import SamplingConfig, StopChecker
        from tqdm import tqdm

        out = []
        for req in tqdm(requests, disable=disable_tqdm or self.rank != 0, desc=f"accbench {self.method}"):
            context, gen_kwargs = req.args
            kw = dict(gen_kwargs or {})
            until = kw.pop("until", None) or []
            if isinstance(until, str):
                until = [until]
            budget = int(kw.pop("max_gen_toks", self.max_gen_toks))
            temperature = float(kw.pop("temperature", 0.0) or 0.0)
            do_sample = bool(kw.pop("do_sample", temperature > 0))
            top_p = float(kw.pop("top_p", 1.0) or 1.0)
            if not do_sample:
                temperature = 0.0
            sampling = SamplingConfig(temperature=temperature, top_p=top_p, seed=self.seed)
            dec = self.decoder(sampling)
            ids = self._encode(context, getattr(req, "task_name", None))
            stopper = StopChecker(self.tokenizer, until, dec.eos_ids)
            if not sampling.greedy:
                dec.reseed(self.seed + len(self.stats))
            rec = dec.generate(ids, budget, stopper)
            text = stopper.text(rec.tokens)
            out.append(text)
            self._record(rec, len(ids))
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return out

    def _record(self, rec, prompt_tokens: int) -> None:
        n = rec.n_new
        st = {"i": len(self.stats), "prompt_tokens": prompt_tokens, "n_new": n, "ttft_s": rec.ttft_s,
              "total_s": rec.total_s, "tokens_per_s": n / rec.total_s if rec.total_s > 0 else None,
              "tau": rec.tau, "forward_passes": rec.forward_passes, "finish_reason": rec.finish_reason,
              "decode_tokens": sum(rec.tokens_per_step[1:]), "decode_steps": max(len(rec.tokens_per_step) - 1, 0),
              "new_token_ids": rec.tokens}
        self.stats.append(st)
        if self.stats_path is not None:
            self.stats_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.stats_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"model": self.model_name, "method": self.method, **st}) + "\n")

    def speed_summary(self) -> dict[str, Any]:
        """Totals over every generation so far (the same definitions as accbench's tables)."""
        s = self.stats
        tokens = sum(x["n_new"] for x in s)
        secs = sum(x["total_s"] for x in s)
        steps = sum(x["decode_steps"] for x in s)
        return {
            "requests": len(s), "new_tokens": tokens, "generate_s": round(secs, 4),
            "tokens_per_s": tokens / secs if secs > 0 else None,
            "tau": sum(x["decode_tokens"] for x in s) / steps if steps else None,
            "ttft_s_median": sorted(x["ttft_s"] for x in s)[len(s) // 2] if s else None,
            "forward_passes": sum(x["forward_passes"] for x in s),
        }

    def get_model_info(self) -> dict[str, Any]:
        """lm-eval calls this once, after evaluating: the speed figures go into the results'
        ``config["accbench"]`` (and one line to stderr)."""
        sp = self.speed_summary()
        if sp["requests"]:
            print(f"accbench: {self.method} on {self.model_name}: {sp['requests']} generations, "
                  f"{sp['new_tokens']} new tokens, {sp['tokens_per_s']:.1f} tok/s, tau {sp['tau'] or 1.0:.2f}",
                  file=sys.stderr)
        return {"accbench": {"model": self.model_name, "method": self.method, "options": self.method_options,
                             "dtype": str(self.loaded.dtype).replace("torch.", ""),
                             "device": str(self.loaded.device), "speed": self.speed_summary()}}

    # log-likelihoods: the base model, one sequence at a time
    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        enc = self.tokenizer
        whole = enc(context + continuation, add_special_tokens=False).input_ids
        ctx = enc(context, add_special_tokens=False).input_ids
        return ctx, whole[len(ctx):]

    def _prefix_token(self) -> int:
        t = self.tokenizer
        for tid in (t.bos_token_id, t.eos_token_id):
            if tid is not None:
                return int(tid)
        return 0

    def _score(self, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
        """log p(cont | ctx) and whether greedy decoding would produce cont."""
        import torch

        if not cont:
            return 0.0, True
        if not ctx:
            ctx = [self._prefix_token()]
        seq = (ctx + cont)[-(self.max_length + 1):]
        inp = torch.tensor([seq[:-1]], device=self.loaded.device)
        with torch.inference_mode():
            logits = self.loaded.model(input_ids=inp).logits[0, -len(cont):].float()
        logp = torch.log_softmax(logits, dim=-1)
        target = torch.tensor(cont, device=logp.device)
        ll = logp.gather(-1, target[:, None]).sum().item()
        greedy = bool((logp.argmax(-1) == target).all().item())
        return ll, greedy

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        from tqdm import tqdm

        out = []
        for req in tqdm(requests, disable=disable_tqdm or self.rank != 0, desc="loglikelihood"):
            context, continuation = req.args
            if context == "":
                ctx, cont = [], self.tokenizer(continuation, add_special_tokens=False).input_ids
            else:
                ctx, cont = self._encode_pair(context, continuation)
            res = self._score(ctx, cont)
            out.append(res)
            self.cache_hook.add_partial("loglikelihood", (context, continuation), res)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
        from tqdm import tqdm

        out = []
        for req in tqdm(requests, disable=disable_tqdm or self.rank != 0, desc="loglikelihood_rolling"):
            (string,) = req.args
            tokens = self.tokenizer(string, add_special_tokens=False).input_ids
            total = 0.0
            for window in get_rolling_token_windows(tokens, self._prefix_token(), self.max_length, 1):
                ctx, cont = make_disjoint_window(window)
                total += self._score(ctx, cont)[0]
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
        return out


_CLASS = None


def _make_class():
    global _CLASS
    if _CLASS is None:
        LM = _lm_base()
        _CLASS = type("AccbenchLM", (_AccbenchLMImpl, LM), {"__module__": __name__})
    return _CLASS


def register() -> type:
    """Register the ``accbench`` model with lm-eval (idempotent); returns the class."""
    cls = _make_class()
    from lm_eval.api import registry

    if hasattr(registry, "model_registry"):  # lm-eval >= 0.4.10: a Registry object
        reg = registry.model_registry
        current = reg.get(MODEL_NAME, None) if MODEL_NAME in reg else None
        if current is not cls:
            if current is not None:  # a stale class (module reloaded): replace it
                reg._objs.pop(MODEL_NAME, None)
            registry.register_model(MODEL_NAME)(cls)
    else:  # older 0.4.x: a plain dict
        registry.MODEL_REGISTRY[MODEL_NAME] = cls
    return cls


def task_manager(metadata: dict[str, Any] | None = None, include_path: list[str] | None = None):
    """An lm-eval TaskManager that knows accbench's offline tasks."""
    from lm_eval.tasks import TaskManager

    paths = [str(tasks_dir())] + list(include_path or [])
    return TaskManager(include_path=paths, metadata=metadata or {})


if __name__ == "accbench.lmeval":  # imported (not run as a script): register now
    try:
        register()
    except AccbenchError:  # lm-eval not installed: `accbench eval` says so when used
        pass


# ---------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------


def _split(values: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for v in values:
        out.extend(p.strip() for p in v.split(",") if p.strip())
    return out


@click.command(name="eval")
@click.option("--tasks", "tasks", multiple=True, required=True,
              help="lm-eval tasks, comma-separated: accbench_mbpp, accbench_cnndm, or any lm-eval task.")
@click.option("--model", default="smollm2-135m", show_default=True, help="accbench model name, hub id or directory.")
@click.option("--method", default="ar", show_default=True, help="Decoder for generate_until (see `accbench list`).")
@click.option("--limit", type=float, default=None, help="Documents per task (lm-eval's --limit).")
@click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE", help="Method option.")
@click.option("--dtype", default=None)
@click.option("--device", default=None)
@click.option("--data-dir", default=None, help="Data folder for the accbench_* tasks (else $ACCBENCH_DATA_DIR).")
@click.option("--num-fewshot", type=int, default=None)
@click.option("--max-gen-toks", type=int, default=None, help="Generation budget (default: the task's, else 256).")
@click.option("--include-path", multiple=True, help="More lm-eval task folders.")
@click.option("--output", "output", type=click.Path(dir_okay=False), default=None,
              help="Write lm-eval's results (with config.accbench speed figures) to this JSON file.")
@click.option("--stats", "stats_path", type=click.Path(dir_okay=False), default=None,
              help="Append one JSON line of speed figures per generation to this file.")
@click.option("--log-samples", is_flag=True, help="Keep per-document outputs in --output.")
@click.option("--prompt-format", type=click.Choice(["auto", "raw", "chat"]), default="auto", show_default=True,
              help="auto: accbench_* tasks in their suite's format (chat for accbench_cnndm, raw few-shot for "
                   "accbench_mbpp), as `accbench run` uses them; other lm-eval tasks raw.")
def eval_cmd(tasks, model, method, limit, options, dtype, device, data_dir, num_fewshot, max_gen_toks,
             include_path, output, stats_path, log_samples, prompt_format) -> None:
    """Evaluate with lm-evaluation-harness, generating with an accbench decoder: every lm-eval
    generation task (and the offline accbench_mbpp / accbench_cnndm) with speed figures alongside."""
    from rich.console import Console

    register()
    import lm_eval
    from lm_eval.utils import handle_non_serializable, make_table

    model_args: dict[str, Any] = {"model": model, "method": method, "prompt_format": prompt_format}
    for p in options:
        if "=" not in p:
            raise AccbenchError(f"--option expects KEY=VALUE, got {p!r}")
        k, v = p.split("=", 1)
        model_args[k] = _parse_scalar(v)
    for k, v in (("dtype", dtype), ("device", device), ("stats_path", stats_path), ("data_dir", data_dir)):
        if v is not None:
            model_args[k] = v
    if limit is not None and limit >= 1:
        limit = int(limit)
    gen_kwargs = {"max_gen_toks": max_gen_toks} if max_gen_toks else None
    metadata = {"data_dir": data_dir} if data_dir else {}
    task_list = _split(tasks)
    try:
        tm = task_manager(metadata=metadata, include_path=list(include_path))
        results = lm_eval.simple_evaluate(model=MODEL_NAME, model_args=model_args, tasks=task_list, limit=limit,
                                          num_fewshot=num_fewshot, task_manager=tm, gen_kwargs=gen_kwargs,
                                          log_samples=log_samples)
    except (KeyError, ValueError) as e:
        raise AccbenchError(f"lm-eval: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}") from None
    console = Console()
    print(make_table(results))
    speed = results["config"].get("accbench", {}).get("speed", {})
    if speed.get("requests"):
        console.print(f"[bold]{method}[/bold] on {model}: {speed['requests']} generations, "
                      f"{speed['new_tokens']} tokens, {speed['tokens_per_s']:.1f} tok/s, tau {speed['tau'] or 1.0:.2f}")
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(results, indent=2, default=handle_non_serializable) + "\n")
        console.print(f"[dim]results: {output}[/dim]")


commands = [eval_cmd]


# ---------------------------------------------------------------------------------------
# `python -m accbench.lmeval ...`: lm-eval's own command line with accbench registered
# ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """``python -m accbench.lmeval [lm_eval arguments]``: lm-eval's CLI with the ``accbench``
    model registered and ``--include_path`` set to accbench's task files.
    ``python -m accbench.lmeval --tasks-dir`` prints that folder."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--tasks-dir"]:
        print(tasks_dir())
        return
    register()
    if argv and argv[0] in ("-h", "--help"):
        argv = ["run", "--help"]
    sub, rest = (argv[0], argv[1:]) if argv and argv[0] in ("run", "ls", "validate") else ("run", argv)
    if "--include_path" not in rest and not any(a.startswith("--include_path=") for a in rest):
        rest = ["--include_path", str(tasks_dir())] + rest
    argv = [sub] + rest
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval"] + argv
    cli_evaluate()


if __name__ == "__main__":
    from accbench.lmeval import main as _main  # the registered module, not this __main__ copy

    _main()
