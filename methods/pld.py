"""Prompt lookup decoding (PLD): draft the tokens that followed the most recent earlier
occurrence of the current suffix n-gram in prompt + output, verify them in one forward.

Lossless under greedy decoding: a draft token is kept only while it equals the target's
argmax at the previous position, and the bonus token is the target's own argmax.
"""

from __future__ import annotations

import torch

from . import register
from .base import Clock, DecoderBase, GenerationRecord, block_extra, sample_from_logits
from .tree import block_forward, commit, crop_cache, make_cache


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


@register
class PromptLookupDecoder(DecoderBase):
    name = "pld"
    lossless = True
    description = "Prompt lookup: drafts copied from the prompt/output n-gram match, verified in one forward."
    options = {"num_draft": 10, "max_ngram": 3, "min_ngram": 1}

    @torch.inference_mode()
    def generate(self, prompt_ids, max_new_tokens: int, stop=None) -> GenerationRecord:
        stopper = self._stop_checker(stop)
        model, sampling, gen = self.model, self.sampling, self._generator
        k_max = int(self.opts["num_draft"])
        ids = self._prompt_tensor(prompt_ids)
        n_prompt = ids.shape[1]
        device = self.device
        causal = torch.ones(k_max + 1, k_max + 1, dtype=torch.bool, device=device).tril_()
        depths = torch.arange(k_max + 1, device=device)
        step_pos = torch.arange(n_prompt + max_new_tokens, device=device)  # cache positions
        index = NgramIndex(int(self.opts["min_ngram"]), int(self.opts["max_ngram"]))
        drafted = [0] * k_max
        accepted = [0] * k_max
        draft_s = 0.0
        blocks: dict[int, int] = {}  # verification block size -> decode steps
        cache = make_cache(model)
        clock = Clock(device)

        clock.start()
        logits = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
        tokens = [int(sample_from_logits(logits[0, -1], sampling, gen))]
        ttft = clock.elapsed()
        seq = ids[0].tolist() + tokens
        steps = [1]
        forwards = 1
        hit = stopper.first_stop(tokens)
        while hit is None and len(tokens) < max_new_tokens:
            t_draft = clock.elapsed()
            draft = index.draft(seq, min(k_max, max_new_tokens - len(tokens) - 1))
            draft_s += clock.elapsed() - t_draft
            k = len(draft)
            blocks[k + 1] = blocks.get(k + 1, 0) + 1
            prefix = n_prompt + len(tokens) - 1  # cached positions: all but the last committed token
            block = torch.tensor([[tokens[-1]] + draft], device=device)
            if k:
                logits, _ = block_forward(model, cache, block, depths[: k + 1], causal[: k + 1, : k + 1])
            else:  # nothing to verify: a plain one-token step, as AR does it (no 4D mask)
                logits = model(input_ids=block, past_key_values=cache, use_cache=True,
                               cache_position=step_pos[prefix: prefix + 1]).logits[0]
            forwards += 1
            pred = sample_from_logits(logits, sampling, gen).tolist()
            a = 0
            while a < k and draft[a] == pred[a]:
                a += 1
            crop_cache(cache, prefix + 1 + a)
            n_c, hit = commit(tokens, draft[:a] + [pred[a]], stopper, max_new_tokens)
            steps.append(n_c)
            a = min(a, n_c)  # drafts cut by a stop or the budget are not counted as accepted
            for pos in range(k):
                drafted[pos] += 1
                accepted[pos] += pos < a
            seq.extend(tokens[len(tokens) - n_c:])
        total = clock.elapsed()
        last = max((i + 1 for i, d in enumerate(drafted) if d), default=0)
        return GenerationRecord(
            tokens=tokens, ttft_s=ttft, total_s=total, forward_passes=forwards, tokens_per_step=steps,
            drafted=drafted[:last], accepted=accepted[:last], lossless=self.is_lossless,
            finish_reason=hit[1] if hit else "length",
            extra={"draft_s": draft_s, "verify_s": total - ttft - draft_s,
                   **block_extra(blocks)},
        )
