"""MTP: measured speedup over AR next to the bound its tau and verification cost allow.

    python -m accbench.benchmarks.mtp_bound --model smollm2-135m --n 5

On the same real prompts (MBPP and CNN/DM evaluation prompts), AR and MTP run alternately
(one warmup each, then per prompt AR then MTP), so both see the same machine conditions. The
bound is ``tau * cost(1) / cost(k+1)``, with cost(m) the measured median time of an m-token
causal block forward after a cached prefix of the prompts' mean length (``bench/costs.py``):
what MTP would reach if drafting were free. Printed: speedup (ratio of total times and the
median per-prompt ratio), tau, acceptance per draft position, the bound, measured / bound
(goal >= 0.90), the share of time spent drafting, and exact match with AR.
"""

from __future__ import annotations

import argparse
import statistics
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m accbench.benchmarks.mtp_bound", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--suites", default="mbpp,cnndm")
    ap.add_argument("--n", type=int, default=5, help="prompts per suite")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--heads", default=None, help="MTP heads directory (default: the model's trained default)")
    ap.add_argument("--num-draft", type=int, default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--device", default=None)
    a = ap.parse_args(argv)

    import torch
    from accbench import suites as suite_registry
    from accbench.costs import forward_cost
    from accbench.methods import StopChecker, get
    from accbench.models import load_model
    from accbench.runner import encode_prompt

    lm = load_model(a.model, a.dtype, a.device)
    ar = get("ar")(lm.model, lm.tokenizer)
    opts = {"heads": a.heads} if a.heads else {}
    if a.num_draft is not None:
        opts["num_draft"] = a.num_draft
    mtp = get("mtp")(lm.model, lm.tokenizer, model_name=lm.name, **opts)
    k = mtp.num_draft
    prompts = []
    for name in a.suites.split(","):
        suite = suite_registry.build(name)
        for s in suite.samples(limit=a.n):
            prompts.append((name, s.id, encode_prompt(lm.tokenizer, s.prompt, "raw"),
                            StopChecker(lm.tokenizer, suite.stop, ar.eos_ids)))
    ids0 = prompts[0][2]
    ar.generate(ids0, 16, prompts[0][3])
    mtp.generate(ids0, 16, prompts[0][3])

    rows = []
    for suite, sid, ids, stop in prompts:
        ra = ar.generate(ids, a.max_new_tokens, stop)
        rm = mtp.generate(ids, a.max_new_tokens, stop)
        rows.append((suite, sid, len(ids), ra, rm))
        print(f"{suite:6} {sid:>6}  AR {ra.n_new / ra.total_s:6.1f} tok/s  MTP {rm.n_new / rm.total_s:6.1f} tok/s  "
              f"tau {rm.tau:4.2f}  same={rm.tokens == ra.tokens}", flush=True)

    mean_prompt = int(statistics.mean(r[2] for r in rows))
    costs = forward_cost(lm.model, [1, k + 1], prefix_len=mean_prompt)
    ar_t = sum(r[3].total_s for r in rows)
    mt_t = sum(r[4].total_s for r in rows)
    n_ar = sum(r[3].n_new for r in rows)
    n_mt = sum(r[4].n_new for r in rows)
    speed_total = (n_mt / mt_t) / (n_ar / ar_t)
    per_prompt = [(r[4].n_new / r[4].total_s) / (r[3].n_new / r[3].total_s) for r in rows]
    steps = sum(len(r[4].tokens_per_step) - 1 for r in rows)
    tau = sum(sum(r[4].tokens_per_step[1:]) for r in rows) / max(1, steps)
    drafted = [sum(r[4].drafted[i] for r in rows if i < len(r[4].drafted)) for i in range(k)]
    accepted = [sum(r[4].accepted[i] for r in rows if i < len(r[4].accepted)) for i in range(k)]
    draft_s = sum(r[4].extra["draft_s"] for r in rows)
    bound = tau * costs[1] / costs[k + 1]
    with_draft = tau * costs[1] / (costs[k + 1] + draft_s / max(1, steps))
    same = sum(r[4].tokens == r[3].tokens for r in rows)
    print()
    print(f"model {lm.name}, {len(rows)} prompts (mean {mean_prompt} tokens), {k} drafts/step, "
          f"torch threads {torch.get_num_threads()}")
    print(f"cost(1) {costs[1] * 1e3:.2f} ms, cost({k + 1}) {costs[k + 1] * 1e3:.2f} ms "
          f"(ratio {costs[k + 1] / costs[1]:.2f}); drafting {draft_s / max(1, steps) * 1e3:.2f} ms/step, "
          f"{draft_s / mt_t:.1%} of MTP time")
    print("acceptance per draft position: " + ", ".join(
        f"{i + 1}: {accepted[i] / drafted[i]:.3f}" if drafted[i] else f"{i + 1}: -" for i in range(k)))
    print(f"tau {tau:.3f}")
    print(f"speedup (ratio of totals) {speed_total:.3f}x; median per prompt {statistics.median(per_prompt):.3f}x")
    print(f"bound tau*cost(1)/cost({k + 1}) = {bound:.3f}x; with the measured draft cost {with_draft:.3f}x")
    print(f"measured / bound = {speed_total / bound:.3f} (goal >= 0.90); "
          f"measured / bound-with-draft = {speed_total / with_draft:.3f}")
    print(f"exact match with AR: {same}/{len(rows)}")
    return 0 if same == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
