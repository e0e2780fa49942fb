"""Stopping: one rule for every method (EOS or the first stop string), and ``commit``, which
appends a step's tokens exactly up to where a token-by-token decoder would have stopped."""

from __future__ import annotations

from typing import Sequence


class StopChecker:
    """Decides where a generated token sequence ends: at EOS or at the first stop string.

    The rule is a function of the token sequence only, applied position by position, so a
    method that commits several tokens at once cuts exactly where AR would have stopped.
    The stopping token itself is kept (``generate`` keeps EOS too); the text returned by
    :meth:`text` ends before the stop string.
    """

    def __init__(self, tokenizer, stop: Sequence[str] | None = None, eos_token_ids: Sequence[int] | None = None):
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        if eos_token_ids is None:
            eos_token_ids = eos_ids_of(tokenizer)
        self.eos = frozenset(int(i) for i in eos_token_ids)
        # A stop string of c characters is covered by at most c + 2 trailing tokens
        # (every token decodes to at least one character, or to part of one).
        self._window = (max(len(s) for s in self.stop) + 2) if self.stop else 0

    def first_stop(self, tokens: Sequence[int], start: int = 0) -> tuple[int, str] | None:
        """Index *i* >= start of the first token that ends the sequence, and why, or None.

        ``tokens[: i + 1]`` is what a token-by-token decoder would have produced.
        """
        eos, window, stop = self.eos, self._window, self.stop
        for i in range(start, len(tokens)):
            if tokens[i] in eos:
                return i, "eos"
            if window:
                tail = self.tokenizer.decode(tokens[max(0, i + 1 - window) : i + 1])
                for s in stop:
                    if s in tail:
                        return i, "stop"
        return None

    def text(self, tokens: Sequence[int]) -> str:
        """The output text: special tokens dropped, cut before the first stop string."""
        text = self.tokenizer.decode(list(tokens), skip_special_tokens=True)
        cut = len(text)
        for s in self.stop:
            j = text.find(s)
            if j != -1:
                cut = min(cut, j)
        return text[:cut]


def eos_ids_of(tokenizer, model=None) -> list[int]:
    """EOS ids from the generation config (if a model is given) and the tokenizer."""
    ids: set[int] = set()
    if model is not None:
        gc = getattr(model, "generation_config", None)
        e = getattr(gc, "eos_token_id", None) if gc is not None else None
        if e is not None:
            ids.update([e] if isinstance(e, int) else list(e))
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


def commit(out: list[int], new: Sequence[int], stopper: StopChecker, max_new_tokens: int) -> tuple[int, tuple | None]:
    """Append ``new`` tokens to ``out`` up to the budget, cut at the first stop exactly where a
    token-by-token decoder would have stopped. Returns (tokens committed, stop hit or None)."""
    start = len(out)
    out.extend(list(new)[: max_new_tokens - start])
    hit = stopper.first_stop(out, start)
    if hit is not None:
        del out[hit[0] + 1:]
    return len(out) - start, hit
