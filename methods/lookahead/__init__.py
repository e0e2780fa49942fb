"""Lookahead decoding (Fu et al. 2024, arXiv 2402.02057): Jacobi iterations over a window of
future positions produce n-grams; n-grams starting with the last committed token are verified
in the same forward pass. No draft model, no training; lossless under greedy decoding.

One forward per step carries, after the committed prefix in the KV cache (block layout):

* index 0: the current token (the last committed one, not yet cached), depth 0;
* the lookahead branch, ``N-1`` levels x ``W`` columns, level ``l`` column ``i`` at index
  ``1 + l*W + i`` and depth ``l + i + 1``. It sees the current token, level-0 columns ``0..i``
  and the tokens of its own column at levels ``1..l``: a causal chain of consecutive
  positions, so its output is the model's next-token guess after that chain;
* up to ``G`` candidate n-grams of ``N-1`` tokens, candidate ``c`` token ``j`` at index
  ``1 + (N-1)*W + c*(N-1) + j``, depth ``j + 1``, each a causal chain from the current token.

All of it goes through :func:`accbench.methods.core.tree.block_forward` (the project's one 4D-mask
path). After the forward the outputs at the last level become the new last level (the other
levels shift up), every column read down the levels plus its new output is an N-gram that goes
into the pool (keyed by its first token, at most ``G`` per key, deduplicated, most recent
first), the longest candidate whose tokens each equal the target's prediction at the previous
position is accepted with the bonus token, and only that branch's KV entries are kept.
"""

from __future__ import annotations

import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Any

import torch

from accbench.methods import register
from accbench.methods.core.base import Clock, DecoderBase, GenerationRecord, block_extra, sample_from_logits
from accbench.methods.core.tree import accept_greedy, block_forward, commit, compact_cache, make_cache

#: used when neither options nor a tuned default give W, N, G
BUILTIN_DEFAULT = {"W": 4, "N": 4, "G": 4}
#: the grid ``accbench tune-lookahead`` measures unless ``-o grid=...`` is given
DEFAULT_GRID = [(3, 3, 3), (5, 3, 5), (3, 4, 3), (5, 4, 5), (7, 4, 7), (5, 5, 5), (7, 5, 7)]
TUNED_FILE = "tuned.json"


# --------------------------------------------------------------------------------------
# block layout (depends on W, N, G only: built once per decoder)
# --------------------------------------------------------------------------------------


def lookahead_layout(W: int, N: int, G: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Visibility matrix ``[n, n]`` and depths ``[n]`` of the full block with ``G`` candidates,
    ``n = 1 + (N-1)*W + G*(N-1)``. A step with ``g < G`` candidates uses the leading
    ``1 + (N-1)*W + g*(N-1)`` rows and columns (candidates come last)."""
    L = N - 1
    n = 1 + L * W + G * L
    vis = torch.zeros(n, n, dtype=torch.bool)
    depth = torch.zeros(n, dtype=torch.long)
    vis[:, 0] = True
    for lvl in range(L):
        for i in range(W):
            k = 1 + lvl * W + i
            depth[k] = lvl + i + 1
            vis[k, 1:2 + i] = True  # level 0, columns 0..i
            for m in range(1, lvl + 1):  # own column, levels 1..lvl (itself included)
                vis[k, 1 + m * W + i] = True
    base = 1 + L * W
    for c in range(G):
        for j in range(L):
            k = base + c * L + j
            depth[k] = j + 1
            vis[k, base + c * L: k + 1] = True
    return vis, depth


def layout_block_size(W: int, N: int, G: int) -> int:
    return 1 + (N - 1) * W + G * (N - 1)


class NgramPool:
    """N-gram pool keyed by first token: at most ``cap`` continuations (tuples of N-1 tokens)
    per key, deduplicated, most recent first."""

    def __init__(self, cap: int):
        self.cap = cap
        self.table: dict[int, list[tuple[int, ...]]] = {}

    def add(self, key: int, cont: tuple[int, ...]) -> None:
        if self.cap <= 0:
            return
        lst = self.table.get(key)
        if lst is None:
            self.table[key] = [cont]
            return
        if lst and lst[0] == cont:
            return
        try:
            lst.remove(cont)
        except ValueError:
            if len(lst) >= self.cap:
                lst.pop()
        lst.insert(0, cont)

    def add_sequence(self, seq: list[int], n: int, start: int = 0) -> None:
        """Every n-gram of ``seq`` starting at index >= start (older first, so the latest wins)."""
        for j in range(start, len(seq) - n + 1):
            self.add(seq[j], tuple(seq[j + 1: j + n]))

    def get(self, key: int) -> list[tuple[int, ...]]:
        return self.table.get(key, [])


def advance_window(window: list[list[int]], new_level: list[int], pool: NgramPool, collect: bool) -> None:
    """One Jacobi update of the window (levels oldest first): with ``collect``, each column
    read down the levels plus its new output is an N-gram for the pool (key = its first
    token); then the oldest level is dropped and ``new_level`` becomes the last one."""
    if collect:
        levels = len(window)
        for i, nxt in enumerate(new_level):
            pool.add(window[0][i], tuple(window[lvl][i] for lvl in range(1, levels)) + (nxt,))
    window.pop(0)
    window.append(new_level)


# --------------------------------------------------------------------------------------
# tuned defaults (per model and device)
# --------------------------------------------------------------------------------------


def device_key(device: torch.device | str, dtype: torch.dtype) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        name = f"cpu {name} x{os.cpu_count()}"
    return f"{name} | {str(dtype).replace('torch.', '')}"


def _tuned_path(model_name: str) -> Path:
    from accbench.training.artifacts import method_dir

    return method_dir(model_name, "lookahead") / TUNED_FILE


def load_tuned(model_name: str | None, device, dtype) -> dict[str, int] | None:
    """W, N, G saved by ``accbench tune-lookahead`` for this model and device, or None."""
    if not model_name:
        return None
    try:
        p = _tuned_path(model_name)
        entry = json.loads(p.read_text()).get(device_key(device, dtype)) if p.exists() else None
    except (OSError, ValueError):
        return None
    if not entry:
        return None
    return {k: int(entry[k]) for k in ("W", "N", "G")}


def save_tuned(model_name: str, device, dtype, params: dict[str, int], info: dict[str, Any]) -> Path:
    p = _tuned_path(model_name)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(p.read_text()) if p.exists() else {}
    data[device_key(device, dtype)] = {**params, **info}
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, p)
    return p


# --------------------------------------------------------------------------------------
# the decoder
# --------------------------------------------------------------------------------------


@register
class LookaheadDecoder(DecoderBase):
    """Lookahead decoding.

    Window initialisation: every level of the Jacobi window starts as tokens drawn at random
    (seeded by ``seed`` and the prompt length, so runs repeat exactly) from the prompt, as
    the reference implementation does. Prompt tokens are in-distribution for the text being
    continued, so the first Jacobi iterations start from plausible words rather than ids the
    model never produces; the window's content never affects the output (only verified
    candidates are committed), only how soon useful n-grams appear. N-grams are collected only
    once every level above the first holds model outputs (after N-2 steps), so the pool never
    receives columns made purely of the random initial tokens.

    ``prompt_pool`` seeds the pool with the prompt's n-grams (prompt lookup);
    ``output_pool`` adds the n-grams of the committed output as it grows.
    W, N, G default to the values ``accbench tune-lookahead`` saved for this model and device,
    else to ``BUILTIN_DEFAULT``.
    """

    name = "lookahead"
    lossless = True
    description = "Lookahead decoding: Jacobi-window n-grams + n-gram pool, verified in the same forward."
    options = {"W": None, "N": None, "G": None, "prompt_pool": True, "output_pool": True, "seed": 0}

    def __init__(self, model, tokenizer, **kwargs):
        super().__init__(model, tokenizer, **kwargs)
        given = {k: self.opts[k] for k in ("W", "N", "G") if self.opts[k] is not None}
        tuned = None if len(given) == 3 else load_tuned(self.model_name, self.device, model.dtype)
        base = tuned or BUILTIN_DEFAULT
        self.params_source = "options" if len(given) == 3 else ("tuned" if tuned else "builtin")
        params = {k: int(given.get(k, base[k])) for k in ("W", "N", "G")}
        if params["W"] < 1 or params["N"] < 2 or params["G"] < 0:
            raise ValueError(f"lookahead needs W >= 1, N >= 2, G >= 0, got {params}")
        self.W, self.N, self.G = params["W"], params["N"], params["G"]
        W, L, G = self.W, self.N - 1, self.G
        dev = self.device
        vis, depth = lookahead_layout(W, self.N, G)
        self._visible = vis.to(dev)
        self._depths = depth.to(dev)
        self._base = 1 + L * W  # first candidate index
        last_level = list(range(1 + (L - 1) * W, 1 + L * W))
        # rows whose logits are needed with g candidates: current, last level, candidates
        self._rows = [torch.tensor([0] + last_level + list(range(self._base, self._base + g * L)), device=dev)
                      for g in range(G + 1)]
        # the verification tree (root + g chains) in accept_greedy's numbering
        self._parents = []
        for g in range(G + 1):
            par = [-1]
            for _c in range(g):
                start = len(par)
                par += [0] + list(range(start, start + L - 1))
            self._parents.append(par)

    # -- decoding ----------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, prompt_ids, max_new_tokens: int, stop=None) -> GenerationRecord:
        stopper = self._stop_checker(stop)
        model, sampling, gen = self.model, self.sampling, self._generator
        W, N, G = self.W, self.N, self.G
        L = N - 1
        ids = self._prompt_tensor(prompt_ids)
        n_prompt = ids.shape[1]
        device = self.device
        visible, depths, rows, parents_of, base = self._visible, self._depths, self._rows, self._parents, self._base
        greedy = sampling.greedy
        drafted = [0] * L
        accepted = [0] * L
        draft_s = 0.0
        cache = make_cache(model)
        clock = Clock(device)

        clock.start()
        logits = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
        tokens = [int(sample_from_logits(logits[0, -1], sampling, gen))]
        ttft = clock.elapsed()
        steps = [1]
        forwards = 1
        hit = stopper.first_stop(tokens)

        t_draft = clock.elapsed()
        prompt = ids[0].tolist()
        rng = random.Random(int(self.opts["seed"]) * 1_000_003 + n_prompt)
        window = [[prompt[rng.randrange(n_prompt)] for _ in range(W)] for _ in range(L)]
        pool = NgramPool(G)
        if self.opts["prompt_pool"]:
            pool.add_sequence(prompt + tokens, N)
        ctx = prompt + tokens if self.opts["output_pool"] else None
        ctx_done = max(0, len(ctx) - N + 1) if ctx is not None else 0  # n-grams starting before: pooled
        iters = 0  # Jacobi iterations so far
        blocks: dict[int, int] = {}  # verification block size -> decode steps
        draft_s += clock.elapsed() - t_draft

        while hit is None and len(tokens) < max_new_tokens:
            t_draft = clock.elapsed()
            cur = tokens[-1]
            cands = pool.get(cur)
            g = len(cands)
            block = [cur]
            for level in window:
                block += level
            for c in cands:
                block += c
            n = len(block)
            blocks[n] = blocks.get(n, 0) + 1
            block_t = torch.tensor([block], device=device)
            draft_s += clock.elapsed() - t_draft

            prefix = n_prompt + len(tokens) - 1  # cached: everything but the current token
            logits, _ = block_forward(model, cache, block_t, depths[:n], visible[:n, :n], logits_rows=rows[g])
            forwards += 1
            if greedy:
                pred = logits.argmax(-1).tolist()
            else:
                pred = logits.argmax(-1).tolist()
                picked = sample_from_logits(logits[[0] + list(range(1 + W, 1 + W + g * L))], sampling, gen).tolist()
                pred[0] = picked[0]
                pred[1 + W:] = picked[1:]
            new_level = pred[1:1 + W]
            # verification over the candidate tree (root + g chains)
            tree_tokens = [cur] + block[base:]
            tree_pred = [pred[0]] + pred[1 + W:]
            path = accept_greedy(tree_tokens, parents_of[g], tree_pred)
            a = len(path) - 1
            run = [tree_tokens[k] for k in path[1:]] + [tree_pred[path[-1]]]
            compact_cache(cache, prefix, [0] + [base + k - 1 for k in path[1:]])
            n_c, hit = commit(tokens, run, stopper, max_new_tokens)
            steps.append(n_c)
            if g:
                a = min(a, n_c)  # drafts cut by a stop or the budget are not counted as accepted
                for pos in range(L):
                    drafted[pos] += 1
                    accepted[pos] += pos < a

            t_draft = clock.elapsed()
            advance_window(window, new_level, pool, collect=iters >= L - 1)
            iters += 1
            if ctx is not None:
                ctx += tokens[len(tokens) - n_c:]
                pool.add_sequence(ctx, N, ctx_done)
                ctx_done = max(ctx_done, len(ctx) - N + 1)
            draft_s += clock.elapsed() - t_draft
        total = clock.elapsed()
        return GenerationRecord(
            tokens=tokens, ttft_s=ttft, total_s=total, forward_passes=forwards, tokens_per_step=steps,
            drafted=drafted if any(drafted) else [], accepted=accepted if any(drafted) else [],
            lossless=self.is_lossless, finish_reason=hit[1] if hit else "length",
            extra={"draft_s": draft_s, "verify_s": total - ttft - draft_s, "W": W, "N": N, "G": G,
                   "params": self.params_source, "block_size": layout_block_size(W, N, G),
                   **block_extra(blocks)},
        )

    # -- tuning ------------------------------------------------------------------------

    @classmethod
    def tune(cls, options: dict[str, Any], console) -> dict[str, int]:
        """Measure a small (W, N, G) grid against AR on held-out prompts (MBPP validation
        task_ids 511+, CNN/DM items 500+), save the fastest as this model's default on this
        device. Extras: ``-o prompts=K`` (per suite, default 2), ``-o max_new_tokens=M``
        (default 64), ``-o grid="W,N,G;W,N,G"``, ``-o suites=mbpp,cnndm``."""
        from accbench import suites as suite_registry
        from accbench.errors import AccbenchError
        from accbench.models import load_model
        from accbench.engine.runner import encode_prompt
        from rich.progress import Progress
        from rich.table import Table

        from accbench.methods import get
        from accbench.methods.core.base import StopChecker

        model_name = options["model"]
        if not model_name:
            raise AccbenchError("tune-lookahead needs --model NAME")
        k = int(options.get("prompts", 2))
        budget = int(options.get("max_new_tokens", 64))
        grid = DEFAULT_GRID
        if options.get("grid"):
            try:
                grid = [tuple(int(x) for x in part.split(",")) for part in str(options["grid"]).split(";") if part]
                assert grid and all(len(t) == 3 for t in grid)
            except (ValueError, AssertionError):
                raise AccbenchError('-o grid must look like "3,3,3;5,4,5" (W,N,G triples)') from None
        held_out = {"mbpp": {"split": "validation"}, "cnndm": {"split": "train"}}
        texts = []  # data first: a missing data set fails before the model loads
        for s in str(options.get("suites", "mbpp,cnndm")).split(","):
            suite = suite_registry.build(s, data_dir=options.get("data_dir"), **held_out.get(s, {}))
            texts += [(s, sample.id, sample.prompt, suite.stop) for sample in suite.samples(limit=k)]
        loaded = load_model(model_name, dtype=options.get("dtype"), device=options.get("device"),
                            progress=lambda m: console.print(f"[dim]{m}[/dim]"))
        prompts = [(s, sid, encode_prompt(loaded.tokenizer, text, "raw"), stop) for s, sid, text, stop in texts]
        ar = get("ar")(loaded.model, loaded.tokenizer, model_name=model_name)
        decs = [cls(loaded.model, loaded.tokenizer, model_name=model_name, W=w, N=n, G=g) for w, n, g in grid]
        t_ar, t_la = 0.0, [0.0] * len(grid)
        n_ar, n_la = 0, [0] * len(grid)
        taus: list[list[float]] = [[] for _ in grid]
        same = [True] * len(grid)
        warm = prompts[0][2]
        ar.generate(warm, 8)
        for d in decs:
            d.generate(warm, 8)
        with Progress(console=console, transient=True) as prog:
            task = prog.add_task("tuning lookahead", total=len(prompts) * (len(grid) + 1))
            for pi, (_s, _sid, ids, stop) in enumerate(prompts):
                stopper = StopChecker(loaded.tokenizer, stop, ar.eos_ids)
                ra = ar.generate(ids, budget, stopper)
                t_ar += ra.total_s
                n_ar += ra.n_new
                prog.advance(task)
                order = list(range(len(grid)))
                order = order[pi % len(order):] + order[: pi % len(order)]  # rotate who goes first
                for j in order:
                    r = decs[j].generate(ids, budget, stopper)
                    t_la[j] += r.total_s
                    n_la[j] += r.n_new
                    taus[j].append(r.tau)
                    same[j] &= r.tokens == ra.tokens
                    prog.advance(task)
        ar_tps = n_ar / t_ar
        table = Table(title=f"lookahead grid · {model_name} · {device_key(loaded.device, loaded.dtype)} · "
                            f"{len(prompts)} held-out prompts x {budget} tokens", title_justify="left")
        for c in ("W", "N", "G", "block", "tau", "tok/s", "AR tok/s", "speedup", "= AR"):
            table.add_column(c, justify="right")
        results = []
        for j, (w, n, g) in enumerate(grid):
            tps = n_la[j] / t_la[j]
            tau = sum(taus[j]) / len(taus[j])
            results.append({"W": w, "N": n, "G": g, "tau": tau, "tokens_per_s": tps, "speedup": tps / ar_tps,
                            "identical": same[j]})
        best = max((r for r in results if r["identical"]), key=lambda r: r["speedup"], default=None)
        if best is None:
            raise AccbenchError("lookahead output differed from AR for every grid point; nothing saved")
        for r in results:
            style = "bold green" if r is best else None
            table.add_row(str(r["W"]), str(r["N"]), str(r["G"]), str(layout_block_size(r["W"], r["N"], r["G"])),
                          f"{r['tau']:.2f}", f"{r['tokens_per_s']:.1f}", f"{ar_tps:.1f}", f"{r['speedup']:.2f}x",
                          "yes" if r["identical"] else "[red]NO[/red]", style=style)
        console.print(table)
        params = {k2: best[k2] for k2 in ("W", "N", "G")}
        path = save_tuned(model_name, loaded.device, loaded.dtype, params,
                          {"speedup": best["speedup"], "tau": best["tau"], "grid": results, "prompts": len(prompts),
                           "max_new_tokens": budget, "tuned_at": time.strftime("%Y-%m-%d %H:%M:%S")})
        msg = f"saved W={params['W']} N={params['N']} G={params['G']} ({best['speedup']:.2f}x AR) -> {path}"
        if best["speedup"] < 1.0:
            msg += "  [yellow](no grid point beat AR on this device)[/yellow]"
        console.print(msg)
        return params
