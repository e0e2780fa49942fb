"""Our ``sps`` vs transformers' assisted generation, same prompts, one run, greedy.

    python -m accbench.benchmarks.sps_vs_transformers --model smollm2-135m --n 10

Two forms, each side by side with its transformers peer:

* **draft model**: ours ``sps`` with ``-o sps.draft=DIR`` vs ``model.generate(assistant_model=
  draft, ...)``, the same draft model object on both sides. ``--draft random`` (the default)
  builds a tiny random Llama over the target's tokenizer (no second packaged model shares
  smollm2's tokenizer here) and saves it to a temporary directory, so ours loads it through
  the ordinary path; its drafts are almost never accepted, so this form measures the cost of
  drafting and verifying gamma tokens per step. ``--draft MODEL`` takes a real draft.
* **self-draft**: ours ``sps.draft=self:N`` (the target's first N layers, sharing its KV
  cache) vs ``generate(assistant_early_exit=N)``.

Both sides draft exactly ``--gamma`` tokens per step: transformers reads
``num_assistant_tokens``, ``num_assistant_tokens_schedule`` and
``assistant_confidence_threshold`` from the *assistant's* ``generation_config`` (for early
exit, the target's), so they are set there for each call (and restored); its confidence
stop (default threshold 0.4) is off unless ``--hf-confidence`` is given, since ours has
none. ``--schedule heuristic`` runs transformers' ``"heuristic"`` (+2 if all accepted, else
-1) reset at every call, as ours is. transformers' defaults are printed. Per prompt AR, both
forms of ours and of transformers run back to back (the order rotates per prompt) with the
same budget and stop rule; printed: whether every output equals AR's tokens, tokens/s, our
tau, and ours / transformers tokens/s (per-prompt median with a bootstrap interval, and the
ratio of totals), plus ours / AR.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager

import click
import torch
from accbench.benchmarks import PROMPT_FORMAT_HELP, bench_prompts
from accbench.methods import StopChecker, get
from accbench.models import load_model
from accbench.reports.stats import bootstrap_median, first_divergence
from rich.console import Console
from rich.table import Table
from transformers import StoppingCriteria, StoppingCriteriaList

HF_KEYS = ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")


def transformers_defaults() -> dict:
    from transformers import GenerationConfig

    d = GenerationConfig._get_default_generation_params()
    return {k: d.get(k) for k in HF_KEYS}


@contextmanager
def assistant_config(model, **values):
    """Set ``values`` on ``model.generation_config`` for one call, then restore it."""
    gc = model.generation_config
    old = {k: getattr(gc, k, None) for k in values}
    for k, v in values.items():
        setattr(gc, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(gc, k, v)


def hf_assisted(model, ids: torch.Tensor, budget: int, eos: list[int], stopper: StopChecker, cfg: dict,
                assistant=None, early_exit: int | None = None):
    """transformers' assisted generation (a draft model, or early exit), greedy."""
    kw = {"assistant_model": assistant} if assistant is not None else {"assistant_early_exit": early_exit}
    drafter = assistant if assistant is not None else model
    if stopper.stop:  # transformers' assistant cannot take stop_strings (it gets no tokenizer)
        kw["stopping_criteria"] = StoppingCriteriaList([_StopRule(stopper, ids.shape[1])])
    t0 = time.perf_counter()
    with assistant_config(drafter, **cfg):
        out = model.generate(ids, max_new_tokens=budget, do_sample=False, eos_token_id=eos, pad_token_id=eos[0],
                             **kw)
    if ids.device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    toks = out[0, ids.shape[1]:].tolist()
    hit = stopper.first_stop(toks)
    return (toks[: hit[0] + 1] if hit else toks), dt


class _StopRule(StoppingCriteria):
    """Our stop rule (stop strings) as a transformers stopping criterion on the main model."""

    def __init__(self, stopper: StopChecker, n_prompt: int):
        self.stopper, self.n_prompt = stopper, n_prompt

    def __call__(self, input_ids, scores, **kwargs):
        hit = self.stopper.first_stop(input_ids[0, self.n_prompt:].tolist())
        return torch.full((input_ids.shape[0],), hit is not None, dtype=torch.bool, device=input_ids.device)


def random_draft(target, tokenizer, folder: str, layers: int = 1, hidden: int = 64, seed: int = 0) -> str:
    """A tiny random Llama over the target's vocabulary, saved with its tokenizer in ``folder``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    gc = target.generation_config
    cfg = LlamaConfig(vocab_size=target.get_output_embeddings().weight.shape[0], hidden_size=hidden,
                      intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=8192, tie_word_embeddings=False,
                      bos_token_id=gc.bos_token_id, eos_token_id=gc.eos_token_id, pad_token_id=gc.pad_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@click.command()
@click.option("--model", default="smollm2-135m", show_default=True)
@click.option("--draft", default="random", show_default=True,
              help="Draft model for the draft-model form: 'random' (a tiny random Llama with the target's "
                   "tokenizer) or a registry name / hub id / local directory.")
@click.option("--self-layers", type=int, default=None, help="N of the self-draft form (default: half the layers).")
@click.option("--suites", default="mbpp,cnndm", show_default=True)
@click.option("--n", type=int, default=10, show_default=True, help="Prompts per suite.")
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--gamma", type=int, default=5, show_default=True, help="Draft tokens per step (both sides).")
@click.option("--schedule", type=click.Choice(["constant", "heuristic"]), default="constant", show_default=True)
@click.option("--hf-confidence", type=float, default=0.0, show_default=True,
              help="transformers' assistant_confidence_threshold (0: off, drafting exactly gamma like ours).")
@click.option("--prompt-format", type=click.Choice(["auto", "raw", "chat"]), default="auto", show_default=True,
              help=PROMPT_FORMAT_HELP)
@click.option("--dtype", default=None)
@click.option("--device", default=None)
@click.option("--data-dir", default=None)
def main(model, draft, self_layers, suites, n, max_new_tokens, gamma, schedule, hf_confidence, prompt_format, dtype,
         device, data_dir):
    import transformers

    console = Console(width=220)
    loaded = load_model(model, dtype=dtype, device=device, progress=lambda m: console.print(f"[dim]{m}[/dim]"))
    tm, tok = loaded.model, loaded.tokenizer
    n_layers = tm.config.num_hidden_layers
    self_layers = self_layers or max(1, n_layers // 2)
    tmp = tempfile.TemporaryDirectory(prefix="sps-draft-")
    draft_name = random_draft(tm, tok, tmp.name) if draft == "random" else draft
    ar = get("ar")(tm, tok)
    ours = {"draft": get("sps")(tm, tok, draft=draft_name, gamma=gamma, schedule=schedule),
            "self": get("sps")(tm, tok, draft=f"self:{self_layers}", gamma=gamma, schedule=schedule)}
    assistant = ours["draft"].draft_model  # the very draft ours uses
    hf_cfg = {"num_assistant_tokens": gamma, "num_assistant_tokens_schedule": schedule,
              "assistant_confidence_threshold": hf_confidence}
    eos = ar.eos_ids
    defaults = transformers_defaults()
    console.print(f"transformers {transformers.__version__} defaults: " + ", ".join(f"{k}={v!r}" for k, v in defaults.items())
                  + "; schedule 'heuristic': +2 when every draft was accepted, else -1 (>= 1), kept across calls "
                    "('heuristic_transient': reset per call); here set per call on the assistant's generation_config: "
                  + ", ".join(f"{k}={v!r}" for k, v in hf_cfg.items()))
    console.print(f"draft-model form: {'tiny random Llama (1 layer, hidden 64) with the target tokenizer' if draft == 'random' else draft}"
                  f" · self-draft form: first {self_layers} of {n_layers} layers (ours shares the target's KV cache; "
                  "transformers' early exit keeps its own)")
    table = Table(title=f"SpS: ours vs transformers assisted generation · gamma {gamma} ({schedule}) · {model} · "
                        f"{loaded.device} · {str(loaded.dtype).replace('torch.', '')}", title_justify="left")
    for c in ("suite", "form", "prompts", "ours = AR", "HF = AR", "AR tok/s", "ours tok/s", "HF tok/s", "ours tau",
              "ours/HF (median [95% CI])", "ours/HF totals", "ours/AR totals"):
        table.add_column(c, justify="right")
    forms = ("draft", "self")

    def hf_run(form, tid, budget, stopper):
        if form == "draft":
            return hf_assisted(tm, tid, budget, eos, stopper, hf_cfg, assistant=assistant)
        return hf_assisted(tm, tid, budget, eos, stopper, hf_cfg, early_exit=self_layers)

    for suite_name in suites.split(","):
        samples = bench_prompts(tok, suite_name, n, eos, prompt_format=prompt_format, data_dir=data_dir)
        stopper = samples[0].stopper
        w = samples[0].ids
        wt = torch.tensor([w], device=loaded.device)
        ar.generate(w, 16, stopper)  # warm every path once
        for f in forms:
            ours[f].generate(w, 16, stopper)
            hf_run(f, wt, 16, stopper)
        ok = {(f, s): 0 for f in forms for s in ("ours", "hf")}
        ratios = {f: [] for f in forms}
        taus = {f: [] for f in forms}
        t = {k: 0.0 for k in ("ar", *[f"{s}-{f}" for f in forms for s in ("ours", "hf")])}
        cnt = dict.fromkeys(t, 0)
        for i, s in enumerate(samples):
            tid = torch.tensor([s.ids], device=loaded.device)
            order = list(t)
            order = order[i % len(order):] + order[: i % len(order)]
            runs = {}
            for who in order:
                if who == "ar":
                    r = ar.generate(s.ids, max_new_tokens, stopper)
                    runs[who] = (r.tokens, r.total_s)
                elif who.startswith("ours"):
                    f = who.split("-")[1]
                    r = ours[f].generate(s.ids, max_new_tokens, stopper)
                    runs[who] = (r.tokens, r.total_s)
                    taus[f].append(r.tau)
                else:
                    runs[who] = hf_run(who.split("-")[1], tid, max_new_tokens, stopper)
            for who, (toks, dt) in runs.items():
                t[who] += dt
                cnt[who] += len(toks)
            for f in forms:
                for side in ("ours", "hf"):
                    div = first_divergence(runs["ar"][0], runs[f"{side}-{f}"][0])
                    if div is None:
                        ok[(f, side)] += 1
                    else:
                        console.print(f"[red]{suite_name}/{s.sample_id}: {side} ({f}) differs from AR at token {div}[/red]")
                (to, do), (th, dh) = runs[f"ours-{f}"], runs[f"hf-{f}"]
                ratios[f].append((len(to) / do) / (len(th) / dh))
        tps = {k: cnt[k] / t[k] for k in t}
        for f in forms:
            iv = bootstrap_median(ratios[f])
            table.add_row(suite_name, f if f == "self" else f"draft ({'random' if draft == 'random' else draft})",
                          str(len(samples)), f"{ok[(f, 'ours')]}/{len(samples)}", f"{ok[(f, 'hf')]}/{len(samples)}",
                          f"{tps['ar']:.1f}", f"{tps[f'ours-{f}']:.1f}", f"{tps[f'hf-{f}']:.1f}",
                          f"{sum(taus[f]) / len(taus[f]):.2f}", iv.fmt(3), f"{tps[f'ours-{f}'] / tps[f'hf-{f}']:.3f}",
                          f"{tps[f'ours-{f}'] / tps['ar']:.3f}")
    console.print(table)
    tmp.cleanup()


if __name__ == "__main__":
    main()
