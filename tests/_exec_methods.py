"""Methods that crash, for tests/test_executors.py. Worker processes import this module by
name (the executor imports the module of every method in the sweep), so it must stay
importable from tests/ (pytest puts that folder on sys.path; spawned workers inherit it)."""

import os

from accbench.methods import register
from accbench.methods.ar import ARDecoder


@register
class RaisingDecoder(ARDecoder):
    name = "test-raise"
    description = "test: raises in generate"

    def generate(self, prompt_ids, max_new_tokens, stop=None):
        raise RuntimeError("boom from test-raise")


@register
class ExitingDecoder(ARDecoder):
    name = "test-exit"
    description = "test: the worker process vanishes (os._exit) in generate"

    def generate(self, prompt_ids, max_new_tokens, stop=None):
        os._exit(7)
