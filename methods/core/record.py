"""What a generation returns, and the clock every decoder times itself with."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class GenerationRecord:
    """What one ``generate`` call returns. Token counts always come from ``tokens``."""

    tokens: list[int]  # new token ids, cut at the first stop string / EOS (the stopping token kept)
    ttft_s: float  # prompt ids in -> first new token id exists
    total_s: float  # prompt ids in -> last token out (E2E)
    forward_passes: int  # target-model forward passes, prefill included
    tokens_per_step: list[int]  # tokens committed by each decoding step (prefill's first token = step 0)
    drafted: list[int] = field(default_factory=list)  # drafted[k]: steps whose proposal reached depth k+1
    accepted: list[int] = field(default_factory=list)  # accepted[k]: of those, steps that committed draft k+1
    #: reached[k]: steps whose draft reached depth k+1 with drafts 1..k all accepted (the
    #: denominator of the conditional acceptance rate accepted[k] / reached[k])
    reached: list[int] = field(default_factory=list)
    #: seconds from the start to each step's commit (index 0: the first token, = ttft_s); the
    #: gaps are the inter-token latencies (a chunk bundles several tokens under speculation)
    step_times_s: list[float] = field(default_factory=list)
    #: what a drafting method verifies per step: {"kind": chain|tree|dynamic, "nodes", "depth", "heads"}
    draft_shape: dict[str, Any] | None = None
    lossless: bool = True  # the method promises AR-identical greedy output
    finish_reason: str = "length"  # "eos" | "stop" | "length"
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific figures (draft_s, verify_s, ...)

    @property
    def n_new(self) -> int:
        return len(self.tokens)

    @property
    def tau(self) -> float:
        """Tokens committed per target forward pass (the decode-phase mean accepted length).

        The prefill forward produces the first token; every later forward commits
        ``tokens_per_step[i]`` tokens. AR gives exactly 1.0.
        """
        steps = self.tokens_per_step[1:]
        if not steps:
            return 1.0
        return sum(steps) / len(steps)


class Clock:
    """perf_counter timing that synchronizes CUDA before every reading (and only then).

    A decoder's ``decode`` generator yields after every target forward; the time between a
    yield and the next resume belongs to whoever ran meanwhile (another decoder stepping in
    lockstep), so :meth:`pause` / :meth:`resume` move the origin forward by that gap and
    ``elapsed()`` counts this decoder's own time only."""

    def __init__(self, device: torch.device | str, paired: bool = False):
        dev = torch.device(device)
        self._sync = torch.cuda.synchronize if dev.type == "cuda" else None
        self._sync_on_pause = self._sync if paired else None  # alone, nothing runs in the gap
        self.t0 = 0.0
        self._paused_at = 0.0

    def start(self) -> None:
        if self._sync:
            self._sync()
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        if self._sync:
            self._sync()
        return time.perf_counter() - self.t0

    def now(self) -> float:
        """Seconds since :meth:`start` without a device sync: for step timestamps taken right
        after reading token ids, which has synchronized already."""
        return time.perf_counter() - self.t0

    def pause(self) -> None:
        """Stop counting (before a yield). On CUDA, queued work is finished first so that it
        is charged to this decoder, not to the one that runs next."""
        if self._sync_on_pause:
            self._sync_on_pause()
        self._paused_at = time.perf_counter()

    def resume(self) -> None:
        self.t0 += time.perf_counter() - self._paused_at


def run_to_end(steps):
    """Drive a ``decode`` generator alone; return its GenerationRecord."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
