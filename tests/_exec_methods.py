"""Methods that crash on one chosen sample, for tests/test_executors.py. Worker processes
import this module by name (the engine imports the module of every method in the sweep), so
it must stay importable from tests/ (pytest puts that folder on sys.path; spawned workers
inherit it).

The chosen sample: the one whose prompt contains ``$ACCBENCH_TEST_CRASH`` (workers inherit
the variable; without it nothing crashes). Each method decodes as AR does and crashes after
its second committed token, in the middle of the lockstep with the other methods.
"""

import os
import signal

from accbench.methods import register
from accbench.methods.ar import ARDecoder

CRASH_ENV = "ACCBENCH_TEST_CRASH"


class _CrashingAR(ARDecoder):
    def crash(self) -> None:
        raise NotImplementedError

    def decode(self, prompt_ids, max_new_tokens, stop=None):
        marker = os.environ.get(CRASH_ENV)
        chosen = bool(marker) and marker in self.tokenizer.decode(list(prompt_ids))
        steps = super().decode(prompt_ids, max_new_tokens, stop)
        while True:
            try:
                n = next(steps)
            except StopIteration as done:
                return done.value
            if chosen and n >= 2:
                self.crash()
            yield n


@register
class RaisingDecoder(_CrashingAR):
    name = "test-raise"
    description = "test: raises mid-decode on the chosen sample"

    def crash(self) -> None:
        raise RuntimeError("boom from test-raise")


@register
class ExitingDecoder(_CrashingAR):
    name = "test-exit"
    description = "test: the worker process vanishes (os._exit) mid-decode on the chosen sample"

    def crash(self) -> None:
        os._exit(7)


@register
class KilledDecoder(_CrashingAR):
    name = "test-kill"
    description = "test: the worker process is killed (SIGKILL, as the OOM killer does) on the chosen sample"

    def crash(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)
