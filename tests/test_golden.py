"""Golden tokens: every lossless method, on 5 MBPP + 5 CNN/DM prompts of smollm2-135m (greedy
float32, in the formats `accbench run` uses, fixed-seed heads), produces exactly the tokens
recorded in tests/golden/smollm2_lossless.json before the decoding core was unified.

The file also holds each method's counters from then; they are compared where the counting
rules did not change (see ``SAME_COUNTERS``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from accbench import suites as suite_registry
from accbench.methods import get
from accbench.methods.core import StopChecker
from test_medusa import BRANCHY, write_artifact

GOLDEN = json.loads((Path(__file__).parent / "golden" / "smollm2_lossless.json").read_text())
#: methods whose drafted/accepted/tokens_per_step must also match the old figures exactly
SAME_COUNTERS = {"ar", "pld"}


def build(method: str, lm, tmp: Path):
    """The decoders exactly as the golden file was recorded."""
    if method in ("ar", "pld"):
        return get(method)(lm.model, lm.tokenizer)
    if method == "lookahead":
        return get("lookahead")(lm.model, lm.tokenizer, W=3, N=3, G=3)
    if method == "mtp":
        return get("mtp")(lm.model, lm.tokenizer, heads="random", n=4, seed=0)
    if method == "medusa1":
        art = write_artifact(tmp / "m1", lm.model, w_std=0.05, seed=0, head_vocab=4096)
    else:
        art = write_artifact(tmp / "m2", lm.model, w_std=0.05, seed=1, head_vocab=4096, delta_std=0.002)
        cfg = json.loads((art / "config.json").read_text())
        (art / "config.json").write_text(json.dumps({**cfg, "method": "medusa2"}))
    return get(method)(lm.model, lm.tokenizer, heads=str(art), tree=json.dumps(BRANCHY))


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(GOLDEN["methods"]))
def test_tokens_identical_to_golden(method, smollm2, data_dir, tmp_path):
    lm = smollm2
    dec = build(method, lm, tmp_path)
    stops = {s: StopChecker(lm.tokenizer, suite_registry.build(s, data_dir=str(data_dir)).stop, dec.eos_ids)
             for s in ("mbpp", "cnndm")}
    for key, ids in GOLDEN["prompts"].items():
        ref = GOLDEN["methods"][method][key]
        rec = dec.generate(ids, GOLDEN["budget"], stops[key.split("/")[0]])
        assert rec.tokens == ref["tokens"], (method, key)
        assert rec.finish_reason == ref["finish_reason"], (method, key)
        assert rec.tokens == GOLDEN["methods"]["ar"][key]["tokens"], (method, key)  # lossless
        assert sum(rec.tokens_per_step) == rec.n_new and rec.forward_passes == len(rec.tokens_per_step)
        if method in SAME_COUNTERS:
            assert (rec.tokens_per_step, rec.drafted, rec.accepted) == \
                (ref["tokens_per_step"], ref["drafted"], ref["accepted"]), (method, key)
