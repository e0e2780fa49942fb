"""Autoregressive baseline: one token per forward pass over a KV cache.

This is the denominator of every speedup accbench prints, so it is kept as lean as the
model allows: the prompt is prefilled once computing logits for the last position only,
then each step feeds the previous token with a precomputed cache position. The only host
synchronisation per step is reading the new token id, which the stop check needs anyway.
"""

from __future__ import annotations

import torch
from accbench.methods import register
from accbench.methods.core import Clock, DecoderBase, GenerationRecord, sample_from_logits
from transformers import DynamicCache


@register
class ARDecoder(DecoderBase):
    name = "ar"
    lossless = True
    description = "Autoregressive baseline (greedy or sampled), own KV-cache loop."

    @torch.inference_mode()
    def decode(self, prompt_ids, max_new_tokens: int, stop=None):
        stopper = self._stop_checker(stop)
        model, sampling, gen = self.model, self.sampling, self._generator
        ids = self._prompt_tensor(prompt_ids)
        n_prompt = ids.shape[1]
        cache = DynamicCache(config=model.config)
        positions = torch.arange(n_prompt, n_prompt + max_new_tokens, device=self.device)
        clock = Clock(self.device, paired=self.paired)

        clock.start()
        logits = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
        nxt = sample_from_logits(logits[:, -1, :], sampling, gen)  # shape [1]
        tokens = [int(nxt)]
        ttft = clock.elapsed()
        times = [ttft]
        hit = stopper.first_stop(tokens)
        while hit is None and len(tokens) < max_new_tokens:
            clock.pause()
            yield len(tokens)
            clock.resume()
            pos = positions[len(tokens) - 1 : len(tokens)]
            logits = model(input_ids=nxt.view(1, 1), past_key_values=cache, use_cache=True,
                           cache_position=pos).logits
            nxt = sample_from_logits(logits[:, -1, :], sampling, gen)
            tokens.append(int(nxt))
            times.append(clock.now())
            hit = stopper.first_stop(tokens, len(tokens) - 1)
        total = clock.elapsed()

        n = len(tokens)
        return GenerationRecord(
            tokens=tokens,
            ttft_s=ttft,
            total_s=total,
            forward_passes=n,
            tokens_per_step=[1] * n,
            step_times_s=times,
            lossless=self.is_lossless,
            finish_reason=hit[1] if hit else "length",
        )
