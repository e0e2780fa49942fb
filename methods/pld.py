"""Prompt lookup decoding (PLD): draft the tokens that followed the most recent earlier
occurrence of the current suffix n-gram in prompt + output, verify them in one forward.

Lossless under greedy decoding: the one speculative loop (``core.speculative``) keeps a draft
token only while it equals the target's argmax at the previous position, and the bonus token
is the target's own argmax. Under sampling the drafts are deterministic (``Proposal.q`` None:
q one-hot) and the loop's speculative sampling accepts a draft x with probability p(x), so
the output is distributed exactly as AR sampling's. This file is the whole method: an n-gram
index and a drafter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accbench.methods import register
from accbench.methods.core import Drafter, OptionError, Proposal, SpeculativeDecoder, option


class NgramIndex:
    """Latest end position of every n-gram (min_n..max_n) of a growing token list, excluding
    the list's own final position, so the current suffix never matches itself."""

    def __init__(self, min_n: int, max_n: int):
        self.min_n, self.max_n = min_n, max_n
        self.last: dict[tuple[int, ...], int] = {}
        self.indexed_to = 0  # every end position < indexed_to is in the index

    def draft(self, seq: list[int], k: int) -> list[int]:
        end = len(seq) - 1
        for e in range(self.indexed_to, end):  # index grams ending before the final position
            for n in range(self.min_n, self.max_n + 1):
                if e - n + 1 >= 0:
                    self.last[tuple(seq[e - n + 1 : e + 1])] = e
        self.indexed_to = max(self.indexed_to, end)
        for n in range(self.max_n, self.min_n - 1, -1):  # longest match first
            if len(seq) < n:
                continue
            j = self.last.get(tuple(seq[-n:]))
            if j is not None:
                return seq[j + 1 : j + 1 + k]
        return []


class PLDDrafter(Drafter):
    """Drafts a chain: the continuation of the latest earlier match of the current suffix."""

    def __init__(self, dec: "PromptLookupDecoder"):
        self.dec = dec
        self.index = NgramIndex(dec.options.min_ngram, dec.options.max_ngram)
        k = dec.options.num_draft
        self.shape = {"kind": "chain", "nodes": k, "depth": k, "heads": None}  # up to k: as long as the match

    def start(self, prompt, first, info) -> None:
        self.prompt = prompt

    def propose(self, tokens, budget):
        draft = self.index.draft(self.prompt + tokens, min(self.dec.options.num_draft, budget))
        if not draft:
            return None
        k = len(draft) + 1
        return Proposal(draft, self.dec.depths[:k], self.dec.causal[:k, :k], self.dec.chains[k - 1], depth=k - 1)


@register
class PromptLookupDecoder(SpeculativeDecoder):
    name = "pld"
    lossless = True
    description = "Prompt lookup: drafts copied from the prompt/output n-gram match, verified in one forward."

    @dataclass
    class Options:
        num_draft: int = option(10, "most tokens drafted per step", ge=1)
        max_ngram: int = option(3, "longest suffix n-gram looked up", ge=1)
        min_ngram: int = option(1, "shortest suffix n-gram looked up", ge=1)

        def __post_init__(self):
            if self.min_ngram > self.max_ngram:
                raise OptionError(f"pld.min_ngram={self.min_ngram} exceeds pld.max_ngram={self.max_ngram}")

    def __init__(self, model, tokenizer, **kw):
        super().__init__(model, tokenizer, **kw)
        k = self.options.num_draft + 1
        self.causal = torch.ones(k, k, dtype=torch.bool, device=self.device).tril_()
        self.depths = torch.arange(k, device=self.device)
        self.chains = [[-1] + list(range(n)) for n in range(k)]  # chains[n]: root + n drafts

    def drafter(self, n_positions: int) -> PLDDrafter:
        return PLDDrafter(self)
