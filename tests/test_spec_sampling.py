"""Speculative sampling (temperature > 0) keeps AR sampling's distribution.

* the acceptance rule alone (``speculative_accept``): exact emitted-token distribution for
  known p, q (analytic), and a seeded Monte-Carlo check of the implementation, chains and
  sibling sets, stochastic and one-hot drafts;
* the loop, for pld, lookahead, mtp (heads=random) and sps: the first three generated tokens'
  frequencies over seeded samples against their exact probabilities under AR sampling
  (chi-square on pooled bins), and a control in the same test: with acceptance replaced by
  "always accept" the same check fails, so it can fail.

The model: tiny-random-llama made peaked on a letter cycle (lm_head rows of the next letter
set to the current letter's embedding, the layers' output projections damped so the current
token dominates the residual stream), so drafts copied from the cycle-repeating prompt are
often right and get accepted (the test asserts they do), but not always (else "always
accept" would change nothing).
"""

from __future__ import annotations

import copy

import pytest
import torch
from accbench.methods import SamplingConfig, get
from accbench.methods.core import speculative
from accbench.methods.core.sampling import probs_from_logits, sample_from_logits
from accbench.methods.core.speculative import _residual, speculative_accept
from scipy.stats import chisquare

TEMP = 1.0
N_SAMPLES = 1000
N_CONTROL = 400


# ------------------------------------------------------------------------------------------
# the rule alone
# ------------------------------------------------------------------------------------------


def _dist(v, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(v, generator=g) ** 3
    return x / x.sum()


def _emitted_exact(p, sibs):
    """Exact distribution of the token emitted at a node whose children are tried in order:
    ``sibs`` = [(q_i or None for one-hot, token_i or None to average over x ~ q_i)]."""
    if not sibs:
        return p
    q, x = sibs[0]
    if q is None:  # one-hot at x
        a = p[x]
        rest = p.clone()
        rest[x] = 0
        rest = rest / rest.sum() if rest.sum() > 0 else p
        out = torch.zeros_like(p)
        out[x] += a
        return out + (1 - a) * _emitted_exact(rest, sibs[1:])
    # x ~ q: accept with min(1, p/q), else continue with norm(max(0, p - q))
    acc = torch.minimum(p, q)  # q(x) * min(1, p(x)/q(x))
    return acc + (1 - acc.sum()) * _emitted_exact(_residual(p, q), sibs[1:])


def test_rule_exact_distribution_is_p():
    p, q1, q2 = _dist(12, 1), _dist(12, 2), _dist(12, 3)
    for sibs in ([(q1, None)], [(q1, None), (q2, None)], [(q1, None), (q1, None), (q2, None)],
                 [(None, 3)], [(None, 3), (None, 7)], [(None, 3), (None, 3), (None, 5)]):
        torch.testing.assert_close(_emitted_exact(p, sibs), p, atol=1e-6, rtol=0)
    # the classic chain rule: P(emit z) = q(z) min(1, p(z)/q(z)) + (1 - sum min(p, q)) r(z)
    r = torch.clamp(p - q1, min=0)
    r = r / r.sum()
    direct = torch.minimum(p, q1) + (1 - torch.minimum(p, q1).sum()) * r
    torch.testing.assert_close(direct, p, atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", ["chain_q", "siblings_q", "chain_onehot", "siblings_onehot_dup"])
def test_rule_monte_carlo_first_token(case):
    """``speculative_accept``'s first emitted token (accepted child or bonus) ~ p."""
    V, n = 10, 20000
    p, q1, q2 = _dist(V, 11), _dist(V, 12), _dist(V, 13)
    g = torch.Generator().manual_seed(5)
    counts = torch.zeros(V)
    for _ in range(n):
        if case == "chain_q":  # root -> d1 -> d2, drafts drawn from q
            d1 = int(torch.multinomial(q1, 1, generator=g))
            d2 = int(torch.multinomial(q2, 1, generator=g))
            tokens, parents, q = [0, d1, d2], [-1, 0, 1], torch.stack([q1, q2])
        elif case == "siblings_q":  # three siblings drawn from q1, q2, q1
            xs = [int(torch.multinomial(qq, 1, generator=g)) for qq in (q1, q2, q1)]
            tokens, parents, q = [0] + xs, [-1, 0, 0, 0], torch.stack([q1, q2, q1])
        elif case == "chain_onehot":
            tokens, parents, q = [0, 4, 6], [-1, 0, 1], None
        else:  # siblings 4, 4, 7 (a duplicate) with a grandchild under the first
            tokens, parents, q = [0, 4, 2, 4, 7], [-1, 0, 1, 0, 0], None
        probs = torch.stack([p] * len(tokens))
        path, bonus = speculative_accept(tokens, parents, probs, q, g)
        counts[tokens[path[1]] if len(path) > 1 else bonus] += 1
    assert chisquare(counts.numpy(), (p * n).numpy()).pvalue > 0.001


# ------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------


def peaked_model(tiny):
    """(model, tokenizer, prompt): a peaked copy of ``tiny`` (a LoadedModel) and the prompt."""
    m = copy.deepcopy(tiny.model)
    tok = tiny.tokenizer
    cycle = tok("abcdefgh", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        emb, head = m.model.embed_tokens.weight, m.lm_head.weight
        for i, c in enumerate(cycle):
            # 'd' -> 'e' weaker: after the likely first token 'd' the drafted 'e' has p ~ 0.4,
            # so accepting it always (the control) visibly changes the second token's law
            head[cycle[(i + 1) % len(cycle)]] = emb[c] * (2 if i == 3 else 4)
        m.model.norm.weight.mul_(0.6)
        for name, prm in m.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                prm.mul_(0.1)
    prompt = [tok.bos_token_id] + cycle * 5 + cycle[:3]
    return m, tok, prompt


@pytest.fixture(scope="module")
def peaked(tiny_llama):
    return peaked_model(tiny_llama)


@torch.inference_mode()
def exact_bins(model, prompt, n_samples):
    """Bins over the first three sampled tokens and their exact probabilities under AR
    sampling (``probs_from_logits`` of the full-sequence logits): triples of likely pairs,
    then pairs, then one bin for the rest; each bin's expected count is >= 5."""
    cfg = SamplingConfig(temperature=TEMP)
    V = model.lm_head.weight.shape[0]
    ids = torch.tensor([prompt])
    p1 = probs_from_logits(model(ids).logits[0, -1], cfg)  # [V]
    batch = torch.cat([ids.expand(V, -1), torch.arange(V)[:, None]], dim=1)
    p2 = probs_from_logits(model(batch).logits[:, -1], cfg)  # [V, V]: p(t2 | t1)
    pair = p1[:, None] * p2
    bins, probs = {}, []
    likely = (pair * n_samples >= 25).nonzero().tolist()
    if likely:
        b = torch.tensor([prompt + [a, c] for a, c in likely])
        p3 = probs_from_logits(model(b).logits[:, -1], cfg)
        for (a, c), row in zip(likely, p3):
            tri = pair[a, c] * row
            for t in (tri * n_samples >= 5).nonzero().flatten().tolist():
                bins[(a, c, t)] = len(probs)
                probs.append(float(tri[t]))
            bins[(a, c, None)] = len(probs)  # this pair, any other third token
            probs.append(float(pair[a, c]) - float(tri[tri * n_samples >= 5].sum()))
    likely_set = {tuple(x) for x in likely}
    for a, c in (pair * n_samples >= 5).nonzero().tolist():
        if (a, c) not in likely_set:
            bins[(a, c)] = len(probs)
            probs.append(float(pair[a, c]))
    bins["other"] = len(probs)
    probs.append(max(0.0, 1.0 - sum(probs)))
    return bins, torch.tensor(probs, dtype=torch.float64)


def bin_of(bins, toks):
    a, c, t = toks[:3]
    for key in ((a, c, t), (a, c, None), (a, c)):
        if key in bins:
            return bins[key]
    return bins["other"]


def run_counts(dec, prompt, bins, n):
    counts = torch.zeros(len(bins), dtype=torch.float64)
    accepted = 0
    rules = set()
    dec.eos_ids = []  # EOS is just a token here: every sample has three
    for _ in range(n):
        r = dec.generate(prompt, 3)
        assert len(r.tokens) == 3
        counts[bin_of(bins, r.tokens)] += 1
        accepted += sum(r.accepted)
        rules.add(r.extra.get("acceptance_rule"))
    return counts, accepted, rules


def always_accept(tokens, parents, probs, q, generator):
    """The broken rule of the control: follow the first child to a leaf, bonus from p."""
    path = [0]
    while True:
        kids = [i for i in range(1, len(tokens)) if parents[i] == path[-1]]
        if not kids:
            return path, int(torch.multinomial(probs[path[-1]], 1, generator=generator))
        path.append(kids[0])


METHODS = {
    "pld": {},
    "lookahead": {"W": 3, "N": 3, "G": 3},
    "mtp": {"heads": "random", "n": 3},
    "sps": {"draft": "tiny-random-llama", "gamma": 2},
}


@pytest.mark.parametrize("method", list(METHODS))
def test_speculative_sampling_matches_ar_distribution(peaked, method, monkeypatch):
    model, tok, prompt = peaked
    bins, expected = exact_bins(model, prompt, N_SAMPLES)
    make = get(method)

    dec = make(model, tok, sampling=SamplingConfig(temperature=TEMP, seed=1234), **METHODS[method])
    counts, accepted, rules = run_counts(dec, prompt, bins, N_SAMPLES)
    p_real = chisquare(counts.numpy(), (expected * N_SAMPLES).numpy()).pvalue
    assert rules == {"speculative_sampling"}
    assert accepted >= 20, f"{method}: drafts were accepted only {accepted} times; the check would be vacuous"

    # control: the same check with acceptance replaced by "always accept" must fail
    monkeypatch.setattr(speculative, "speculative_accept", always_accept)
    dec = make(model, tok, sampling=SamplingConfig(temperature=TEMP, seed=99), **METHODS[method])
    ctrl, _, _ = run_counts(dec, prompt, bins, N_CONTROL)
    p_ctrl = chisquare(ctrl.numpy(), (expected * N_CONTROL).numpy()).pvalue
    print(f"{method}: bins {len(bins)}, accepted drafts {accepted}/{N_SAMPLES} samples, chi-square p = {p_real:.4g}; "
          f"always-accept control p = {p_ctrl:.3g}")
    assert p_real > 0.001, f"{method}: speculative sampling differs from AR sampling (p = {p_real:.3g})"
    assert p_ctrl < 0.001, f"{method}: the control did not fail (p = {p_ctrl:.3g}): the check has no power"


def test_ar_sampling_matches_the_exact_bins(peaked):
    """The reference itself: AR sampling's frequencies fit the exact bins."""
    model, tok, prompt = peaked
    bins, expected = exact_bins(model, prompt, N_SAMPLES)
    ar = get("ar")(model, tok, sampling=SamplingConfig(temperature=TEMP, seed=7))
    counts, _, _ = run_counts(ar, prompt, bins, N_SAMPLES)
    assert chisquare(counts.numpy(), (expected * N_SAMPLES).numpy()).pvalue > 0.001


def test_sampling_transform_is_shared():
    """AR's sampler draws from probs_from_logits (the transform the target's p uses)."""
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    cfg = SamplingConfig(temperature=0.7, top_p=0.8, seed=0)
    probs = probs_from_logits(logits, cfg)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(sample_from_logits(logits, cfg, g1), torch.multinomial(probs, 1, generator=g2).squeeze(-1))
