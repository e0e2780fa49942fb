"""The one speculative decoding loop. A method supplies a :class:`Drafter`; the loop owns
prefill, timing, the verification forward (or a plain one-token step when nothing is
drafted), acceptance, KV compaction, commit at stop strings and budget, and every counter:

* ``drafted[d]`` counts the steps whose proposal reached depth ``d + 1`` (chain length or
  tree depth), ``accepted[d]`` those that committed a draft at depth ``d + 1``;
* ``reached[d]``: of the steps counted in ``drafted[d]``, those whose drafts 1..d were all
  accepted (so ``accepted[d] / reached[d]`` is the conditional acceptance rate);
* a draft cut by a stop string, EOS or the budget is not accepted (the stopping token is);
* ``step_times_s``: when each step committed (read after the token ids, so no extra sync);
* ``extra["blocks"]``: verification block size (root included) -> steps.

Phases of a step: propose -> verification forward -> evaluate -> update the cache (keep the
accepted path) -> commit -> observe.

Evaluate, by ``extra["acceptance_rule"]``:

* ``"greedy"`` (temperature 0): the longest path whose every token equals the target's argmax
  at its parent; bonus = the argmax at the path's end. Output = greedy AR, token for token.
* ``"speculative_sampling"`` (temperature > 0, the drafter has no ``accept`` of its own):
  Leviathan et al. 2023 / Chen et al. 2023, generalised to trees as in SpecInfer (multi-step
  speculative sampling) -- see :func:`speculative_accept`. The target's ``p`` is
  :func:`~accbench.methods.core.sampling.probs_from_logits` of the verification logits, the
  very transform AR sampling draws from; the drafter's ``q`` is :attr:`Proposal.q` (None: a
  deterministic drafter, q one-hot). The output is distributed exactly as AR sampling's
  (``extra["lossless_in_distribution"]`` True), though the tokens of a seed differ from AR's.
* the drafter's own rule (``Drafter.accept``, e.g. Medusa's typical acceptance), named by
  ``Drafter.acceptance_rule``; not lossless in distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generator, Sequence

import torch
from accbench.methods.core.protocol import DecoderBase
from accbench.methods.core.quirks import logits_from_hidden
from accbench.methods.core.record import Clock, GenerationRecord
from accbench.methods.core.sampling import probs_from_logits, sample_from_logits
from accbench.methods.core.stopping import commit
from accbench.methods.core.tree import accept_greedy, block_forward, compact_cache, make_cache


@dataclass
class Proposal:
    """A verification block after the root (the last committed token, not yet in the cache).

    ``depths`` / ``visible`` cover root + block. The verification tree is ``parents`` over the
    block rows ``nodes`` (root 0 first; None: every row in order). ``rows`` restricts the
    logits computed to those block rows (None: all); ``node_rows`` then says where each tree
    node's logits are among them."""

    tokens: list[int] | torch.Tensor  # the block after the root
    depths: torch.Tensor
    visible: torch.Tensor
    parents: Sequence[int]
    depth: int  # deepest draft position of the tree (0: no draft, the window alone)
    nodes: Sequence[int] | None = None
    rows: torch.Tensor | None = None
    node_rows: list[int] | None = None
    #: The draft distributions, read only under sampling (speculative sampling): a float
    #: tensor ``[n_nodes - 1, V]`` on the model's device, row ``i - 1`` for tree node ``i``
    #: (tree nodes = the block rows, or ``nodes`` when given; root excluded). Row ``i - 1`` is
    #: the distribution the drafter drew node ``i``'s token from, given the tokens of the
    #: node's ancestors, after the same transform as the target's
    #: (``probs_from_logits(draft_logits, sampling)``: temperature, top-p), over the target's
    #: whole vocabulary ``V`` (zeros outside a reduced draft vocabulary). Siblings must be
    #: independent draws from their rows (SpecInfer's condition; equal rows are fine).
    #: ``None``: a deterministic drafter (PLD, Lookahead, a greedy head): q is one-hot on each
    #: proposed token, which is also right for any fixed set of sibling tokens. Under greedy
    #: decoding drafters should propose deterministically and leave this None.
    q: torch.Tensor | None = None


@dataclass
class Verified:
    """What the loop tells the drafter after a step (one instance, updated in place)."""

    prefill: bool = True
    accepted: int = 0  # drafts accepted by verification (before a stop or the budget cut them)
    committed: int = 1  # tokens committed by this step, bonus included
    prefix: int = 0  # cached positions before the block
    path: list[int] | None = None  # accepted tree nodes, root first
    keep: list[int] | None = None  # their block rows
    pred: list[int] | None = None  # greedy: argmax at every computed logits row
    logits: torch.Tensor | None = None  # the computed logits rows
    hidden: torch.Tensor | None = None  # final hidden states of the block rows (needs_hidden)
    #: the target's KV cache, owned by the loop (set before ``start``). At ``propose`` it holds
    #: every committed position but the last token's. A drafter may append entries to some of
    #: its layers while proposing (a self-draft running the target's first layers reuses the
    #: prefix that way) but must crop them back to that length before ``propose`` returns.
    cache: Any = None


class Drafter:
    """Base drafter: proposes nothing (the loop then decodes one token per step)."""

    #: the loop passes final hidden states (prefill: the last position; steps: every block row)
    needs_hidden: bool = False
    #: what one step verifies, for the record: {"kind": "chain" | "tree" | "dynamic", "nodes":
    #: draft tokens per step (at most), "depth": draft depth, "heads": draft heads or None}
    shape: dict[str, Any] | None = None

    def prepare(self) -> None:
        """Before the prefill forward (untimed set-up such as forward hooks)."""

    def start(self, prompt: list[int], first: int, info: Verified) -> None:
        """After the prefill (timed as drafting)."""

    def propose(self, tokens: list[int], budget: int) -> Proposal | None:
        """A block for the next step; at most ``budget`` draft tokens deep."""
        return None

    #: optional acceptance rule ``accept(logits, tokens) -> (path, bonus)`` used when sampling
    #: (instead of speculative sampling; the output is then not lossless in distribution)
    accept = None
    #: the name of that rule, for ``GenerationRecord.extra["acceptance_rule"]``
    acceptance_rule: str | None = None

    def observe(self, info: Verified) -> None:
        """After every step's commit (timed as drafting)."""

    def finish(self) -> dict[str, Any]:
        """Extra record fields; always called (clean-up goes here)."""
        return {}


def speculative_decode(model, drafter: Drafter, ids: torch.Tensor, max_new_tokens: int, stopper, sampling,
                       generator, *, lossless: bool, paired: bool = False) -> Generator[int, None, GenerationRecord]:
    """Decode ``ids`` ([1, T]) with ``drafter``'s proposals verified by ``model``; a generator
    that yields the committed-token count after every forward and returns the record."""
    device, greedy = ids.device, sampling.greedy
    n_prompt = ids.shape[1]
    cache = make_cache(model)
    clock = Clock(device, paired=paired)
    info = Verified(cache=cache)
    if greedy:
        rule = "greedy"
    elif drafter.accept is not None:
        rule = drafter.acceptance_rule or f"{type(drafter).__name__}.accept"
    else:
        rule = "speculative_sampling"
    drafted: list[int] = []
    accepted: list[int] = []
    reached: list[int] = []
    blocks: dict[int, int] = {}
    step_pos = torch.arange(n_prompt + max_new_tokens, device=device)
    draft_s = 0.0
    drafter.prepare()
    try:
        clock.start()
        if drafter.needs_hidden:  # prefill
            info.hidden = model.model(input_ids=ids, past_key_values=cache, use_cache=True).last_hidden_state[0, -1]
            logits = logits_from_hidden(model, info.hidden)
        else:
            logits = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[0, -1]
        tokens = [int(sample_from_logits(logits, sampling, generator))]
        ttft = clock.elapsed()
        steps, forwards, times = [1], 1, [ttft]
        hit = stopper.first_stop(tokens)
        t = clock.elapsed()
        drafter.start(ids[0].tolist(), tokens[0], info)
        draft_s += clock.elapsed() - t
        info.prefill = False
        clock.pause()
        yield 1
        clock.resume()
        while hit is None and len(tokens) < max_new_tokens:
            t = clock.elapsed()
            p = drafter.propose(tokens, max_new_tokens - len(tokens) - 1)  # propose
            draft_s += clock.elapsed() - t
            prefix = n_prompt + len(tokens) - 1  # cached: all but the last committed token
            if p is None:  # nothing to verify: a plain one-token step, as AR does it
                pos = step_pos[prefix: prefix + 1]
                root = torch.tensor([[tokens[-1]]], device=device)
                if drafter.needs_hidden:
                    info.hidden = model.model(input_ids=root, past_key_values=cache, use_cache=True,
                                              cache_position=pos).last_hidden_state[0]
                    logits = logits_from_hidden(model, info.hidden)
                else:
                    logits = model(input_ids=root, past_key_values=cache, use_cache=True,
                                   cache_position=pos).logits[0]
                tree_tokens, parents, nodes, node_rows, depth, n = [tokens[-1]], [-1], None, None, 0, 1
            else:  # the verification forward over root + block
                if isinstance(p.tokens, torch.Tensor):
                    block = torch.cat([torch.tensor([tokens[-1]], device=device), p.tokens])[None]
                    tree_tokens = block[0].tolist()
                else:
                    tree_tokens = [tokens[-1]] + list(p.tokens)
                    block = torch.tensor([tree_tokens], device=device)
                logits, info.hidden = block_forward(model, cache, block, p.depths, p.visible,
                                                    want_hidden=drafter.needs_hidden, logits_rows=p.rows)
                parents, nodes, node_rows, depth, n = p.parents, p.nodes, p.node_rows, p.depth, block.shape[1]
                if nodes is not None:
                    tree_tokens = [tree_tokens[i] for i in nodes]
            forwards += 1
            blocks[n] = blocks.get(n, 0) + 1
            # evaluate: the accepted tree path plus its bonus token
            info.pred = None
            if greedy:
                info.pred = logits.argmax(dim=-1).tolist()
                tree_pred = info.pred if node_rows is None else [info.pred[i] for i in node_rows]
                path = accept_greedy(tree_tokens, parents, tree_pred) if len(tree_tokens) > 1 else [0]
                bonus = tree_pred[path[-1]]
            else:
                tree_logits = logits if node_rows is None else logits[node_rows]
                if drafter.accept is not None:  # the method's own rule (Medusa's typical acceptance)
                    path, bonus = drafter.accept(tree_logits, tree_tokens)
                else:
                    path, bonus = speculative_accept(tree_tokens, parents, probs_from_logits(tree_logits, sampling),
                                                     None if p is None else p.q, generator)
            a = len(path) - 1
            keep = path if nodes is None else [nodes[i] for i in path]
            compact_cache(cache, prefix, keep)  # update the cache: only the accepted path stays
            n_c, hit = commit(tokens, [tree_tokens[i] for i in path[1:]] + [bonus], stopper, max_new_tokens)
            steps.append(n_c)
            times.append(clock.now())  # the token ids were read: no sync needed
            if depth > len(drafted):
                drafted += [0] * (depth - len(drafted))
                accepted += [0] * (depth - len(accepted))
                reached += [0] * (depth - len(reached))
            counted = min(a, n_c)  # drafts cut by a stop or the budget are not accepted
            for d in range(depth):
                drafted[d] += 1
                accepted[d] += d < counted
                reached[d] += d <= counted
            info.accepted, info.committed, info.prefix, info.path, info.keep, info.logits = a, n_c, prefix, path, keep, logits
            t = clock.elapsed()
            drafter.observe(info)
            draft_s += clock.elapsed() - t
            clock.pause()
            yield len(tokens)
            clock.resume()
        total = clock.elapsed()
    finally:
        extra = drafter.finish()
    return GenerationRecord(
        tokens=tokens, ttft_s=ttft, total_s=total, forward_passes=forwards, tokens_per_step=steps,
        drafted=drafted, accepted=accepted, reached=reached, step_times_s=times, draft_shape=drafter.shape,
        lossless=lossless, finish_reason=hit[1] if hit else "length",
        extra={"draft_s": draft_s, "verify_s": total - ttft - draft_s, **block_extra(blocks),
               "acceptance_rule": rule, "lossless_in_distribution": rule in ("greedy", "speculative_sampling"),
               **extra},
    )


def speculative_accept(tokens: Sequence[int], parents: Sequence[int], probs: torch.Tensor,
                       q: torch.Tensor | None, generator: torch.Generator | None) -> tuple[list[int], int]:
    """Speculative sampling over a verification tree; returns ``(path, bonus)`` like greedy
    acceptance (tree nodes from the root 0 down, and the token committed after them).

    ``tokens`` / ``parents``: the tree (root first); ``probs`` ``[n, V]``: the target's
    distribution after each node (``probs_from_logits``); ``q`` ``[n - 1, V]`` or None: see
    :attr:`Proposal.q`. From the root, the children of the current node are tried in order
    (SpecInfer's multi-step speculative sampling): child ``x`` drawn from ``q_x`` is accepted
    with probability ``min(1, p(x) / q_x(x))``, and the walk moves to it; a rejected child
    replaces ``p`` by ``norm(max(0, p - q_x))`` for the next sibling. When every child is
    rejected, the bonus is drawn from the final residual ``p``; at a leaf (the whole path
    accepted), from the leaf's ``p``. For a chain this is the Leviathan/Chen rule; with q
    one-hot (``q`` None) a child ``x`` is accepted with probability ``p(x)`` and a rejection
    zeroes ``p`` at ``x`` and renormalises. Either way the committed tokens are distributed
    exactly as sampling from ``p`` one token at a time. All randomness comes from
    ``generator``: one uniform per tree node, one multinomial draw for the bonus."""
    n = len(tokens)
    children: list[list[int]] = [[] for _ in range(n)]
    for i in range(1, n):
        children[parents[i]].append(i)
    u = torch.rand(n, generator=generator, device=probs.device).tolist() if n > 1 else []
    if q is None and n > 1:  # one transfer: p(x) of every child under its parent
        rows = torch.tensor(list(parents[1:]), device=probs.device)
        cols = torch.tensor(list(tokens[1:]), device=probs.device)
        p_child = probs[rows, cols].tolist()
    path, node = [0], 0
    while children[node]:
        taken = None
        if q is None:
            mass, rejected = 1.0, []  # what is left of p after zeroing the rejected tokens
            for c in children[node]:
                x = tokens[c]
                if x in rejected:  # already zeroed: p(x) = 0
                    continue
                if u[c] * mass < p_child[c - 1]:  # u < p(x) / mass
                    taken = c
                    break
                rejected.append(x)
                mass -= p_child[c - 1]
            if taken is None:
                residual = probs[node].clone()
                residual[rejected] = 0.0
                return path, _draw(residual, probs[node], generator)
        else:
            residual = probs[node]
            for c in children[node]:
                x = tokens[c]
                px, qx = residual[x].item(), q[c - 1, x].item()
                if u[c] * qx < px:  # u < p(x) / q(x): accepted with probability min(1, p(x) / q(x))
                    taken = c
                    break
                residual = _residual(residual, q[c - 1])
            if taken is None:
                return path, _draw(residual, probs[node], generator)
        path.append(taken)
        node = taken
    return path, _draw(probs[node], probs[node], generator)


def _residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``norm(max(0, p - q))``; ``p`` itself when nothing is left (p <= q everywhere means
    p == q, where rejection has probability 0 and only rounding gets here)."""
    r = (p - q).clamp_(min=0.0)
    s = r.sum()
    return r / s if s.item() > 0 else p


def _draw(probs: torch.Tensor, fallback: torch.Tensor, generator) -> int:
    if probs.sum().item() <= 0:  # rounding left no mass: see _residual
        probs = fallback
    return int(torch.multinomial(probs, 1, generator=generator))


def block_extra(blocks: dict[int, int]) -> dict[str, Any]:
    """Verification blocks for ``GenerationRecord.extra``: ``blocks`` (block size -> decode
    steps) and their step-weighted mean ``mean_block``."""
    return {"blocks": blocks, "mean_block": sum(k * c for k, c in blocks.items()) / max(1, sum(blocks.values()))}


class SpeculativeDecoder(DecoderBase):
    """A method that decodes with the one loop: it supplies ``drafter(n_positions)`` (a fresh
    Drafter for one generation over prompt + budget positions) and, when it verifies with
    another model than ``self.model`` (Medusa-2's merged backbone), ``target``."""

    @property
    def target(self):
        return self.model

    def drafter(self, n_positions: int) -> Drafter:
        raise NotImplementedError

    @torch.inference_mode()
    def decode(self, prompt_ids, max_new_tokens: int, stop=None):
        ids = self._prompt_tensor(prompt_ids)
        self.last_drafter = self.drafter(ids.shape[1] + max_new_tokens)
        return (yield from speculative_decode(
            self.target, self.last_drafter, ids, max_new_tokens, self._stop_checker(stop), self.sampling,
            self._generator, lossless=self.is_lossless, paired=self.paired))
