"""Lookahead decoding as a drafter on the one speculative loop (``core.speculative``).

Each step proposes the whole block of :mod:`.layout`: the Jacobi window (every level) and the
pool's candidate n-grams for the current token. The loop verifies the candidate tree and
keeps the accepted chain's KV entries; :meth:`LookaheadDrafter.observe` then makes the
target's guesses at the last level the new last level (the other levels shift up) and puts
every column read down the levels plus its new guess into the pool.

Under sampling the candidates are deterministic (``Proposal.q`` None): the loop's speculative
sampling tries the candidates sharing a prefix in order (accept x with probability p(x),
else zero p at x and renormalise), so the output is distributed exactly as AR sampling's.
The window's next level is the argmax at the last-level rows either way.
"""

from __future__ import annotations

import json
import os
import platform
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from accbench.methods import register
from accbench.methods.core import Drafter, Proposal, SpeculativeDecoder, option
from accbench.methods.lookahead.layout import (
    NgramPool,
    advance_window,
    candidate_tree,
    layout_block_size,
    lookahead_layout,
)

#: used when neither options nor a tuned default give W, N, G
BUILTIN_DEFAULT = {"W": 4, "N": 4, "G": 4}
#: the tuned W, N, G of one model, keyed by :func:`device_key`, in ``artifacts.folder("lookahead")``
TUNED_FILE = "tuned.json"


def device_key(device: torch.device | str, dtype: torch.dtype) -> str:
    """The device (GPU name, or CPU model and core count) and dtype tuned values belong to."""
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


class LookaheadDrafter(Drafter):
    """The Jacobi window and n-gram pool of one generation."""

    def __init__(self, dec: "LookaheadDecoder"):
        self.dec = dec
        # G candidate n-grams (a tree over their shared prefixes) verified beside the W x (N-1) window
        self.shape = {"kind": "tree", "nodes": dec.G * (dec.N - 1), "depth": dec.N - 1, "heads": None,
                      "window": dec.W * (dec.N - 1)}
        self.proposed = False  # whether the last step verified a block (not a plain step)

    def start(self, prompt, first, info) -> None:
        """Every window level starts as prompt tokens drawn at random (seeded by ``seed`` and
        the prompt length, so runs repeat exactly); the pool starts with the prompt's n-grams."""
        d = self.dec
        W, N, L = d.W, d.N, d.N - 1
        rng = random.Random(d.options.seed * 1_000_003 + len(prompt))
        self.window = [[prompt[rng.randrange(len(prompt))] for _ in range(W)] for _ in range(L)]
        self.pool = NgramPool(d.G)
        ctx = prompt + [first]
        if d.options.prompt_pool:
            self.pool.add_sequence(ctx, N)
        self.n_prompt = len(prompt)
        self.ctx = ctx if d.options.output_pool else None
        self.ctx_done = max(0, len(ctx) - N + 1)  # n-grams of ctx starting before this are pooled
        self.iters = 0  # Jacobi iterations so far

    def propose(self, tokens, budget):
        """The window and the pool's candidates for the current token, the candidates cut to
        ``budget`` tokens; None (a plain step) when no draft token fits the budget."""
        self.proposed = budget > 0
        if not self.proposed:
            return None
        d = self.dec
        if self.ctx is not None:  # the output committed since the last step joins the pool
            self.ctx += tokens[len(self.ctx) - self.n_prompt:]
            self.pool.add_sequence(self.ctx, d.N, self.ctx_done)
            self.ctx_done = max(self.ctx_done, len(self.ctx) - d.N + 1)
        cands = self.pool.get(tokens[-1])
        block = [t for level in self.window for t in level]
        for c in cands:
            block += c
        g, depth = len(cands), min(d.N - 1, budget)
        nodes, rows, node_rows, parents = d.trees[g][depth]
        n = len(block) + 1
        return Proposal(block, d.depths[:n], d.visible[:n, :n], parents, depth=depth if g else 0,
                        nodes=nodes, rows=rows, node_rows=node_rows)

    def observe(self, info) -> None:
        """The new last level: the target's argmax at the last-level rows (logits rows 1..W)."""
        if not self.proposed:
            return
        W = self.dec.W
        new_level = info.pred[1:1 + W] if info.pred is not None else info.logits[1:1 + W].argmax(-1).tolist()
        # n-grams only once every level above the first holds model outputs (never the random start)
        advance_window(self.window, new_level, self.pool, collect=self.iters >= self.dec.N - 2)
        self.iters += 1

    def finish(self):
        d = self.dec
        return {"W": d.W, "N": d.N, "G": d.G, "params": d.params_source, "block_size": layout_block_size(d.W, d.N, d.G)}


@register
class LookaheadDecoder(SpeculativeDecoder):
    """Lookahead decoding (Fu et al. 2024, arXiv 2402.02057): Jacobi iterations over a window
    of future positions produce n-grams; n-grams starting with the last committed token are
    verified in the same forward pass. No draft model, no training; lossless under greedy.

    The window's content never affects the output (only verified candidates are committed),
    only how soon useful n-grams appear. W, N, G default to the values ``accbench tune
    lookahead`` saved for this model and device, else to ``BUILTIN_DEFAULT``."""

    name = "lookahead"
    lossless = True
    description = "Lookahead decoding: Jacobi-window n-grams + n-gram pool, verified in the same forward."

    @dataclass
    class Options:
        W: int | None = option(None, "window: future positions per Jacobi level (none: tuned, else 4)", ge=1)
        N: int | None = option(None, "n-gram size: N-1 window levels, N-1-token candidates (none: tuned, else 4)",
                               ge=2)
        G: int | None = option(None, "most candidate n-grams verified per step (none: tuned, else 4)", ge=0)
        prompt_pool: bool = option(True, "seed the n-gram pool with the prompt's n-grams (prompt lookup)")
        output_pool: bool = option(True, "add the committed output's n-grams to the pool")
        seed: int = option(0, "seed of the window's initial tokens (drawn from the prompt)")

    def __init__(self, model, tokenizer, **kw):
        super().__init__(model, tokenizer, **kw)
        given = {k: v for k, v in (("W", self.options.W), ("N", self.options.N), ("G", self.options.G))
                 if v is not None}
        tuned = None if len(given) == 3 else self._tuned()
        self.params_source = "options" if len(given) == 3 else ("tuned" if tuned else "builtin")
        params = {**(tuned or BUILTIN_DEFAULT), **given}
        self.W, self.N, self.G = params["W"], params["N"], params["G"]
        vis, depth = lookahead_layout(self.W, self.N, self.G)
        self.visible, self.depths = vis.to(self.device), depth.to(self.device)
        # trees[g][depth]: nodes, logits rows (on the device), node rows, parents
        self.trees = [[None] + [self._tree(g, k) for k in range(1, self.N)] for g in range(self.G + 1)]

    def _tree(self, g: int, depth: int):
        t = candidate_tree(self.W, self.N, g, depth)
        return t.nodes, torch.tensor(t.rows, device=self.device), t.node_rows, t.parents

    def _tuned(self) -> dict[str, int] | None:
        """W, N, G tuned for this model on this device, or None."""
        try:
            path = self.artifacts.folder("lookahead") / TUNED_FILE
            entry = json.loads(path.read_text()).get(device_key(self.device, self.model.dtype))
        except (LookupError, OSError, ValueError):
            return None
        return {k: int(entry[k]) for k in ("W", "N", "G")} if entry else None

    def drafter(self, n_positions: int) -> LookaheadDrafter:
        return LookaheadDrafter(self)

    @classmethod
    def tune(cls, job):
        """The fastest (W, N, G) of a grid on this device: see :mod:`.tune`."""
        from accbench.methods.lookahead.tune import tune

        return tune(job)
