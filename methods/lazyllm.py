"""LazyLLM (Fu et al. 2024, arXiv 2407.14057): dynamic token pruning for long prompts.

The prompt is run through the decoder layers by our own layer-by-layer forward (the model's
own submodules: norms, q/k/v projections, q/k norms, rotary, o_proj, MLP; attention through
transformers' SDPA function, the fused kernel). At each *prune layer* ``l`` of the schedule:

* importance of prompt token ``i`` = the attention probability from the last token to ``i``
  at layer ``l``, averaged over all query heads (so over the query heads of each GQA group),
  computed from ``q_last`` and the layer's keys directly: one softmax over one row, never
  the full attention map. On sliding-window layers the row ignores the window (inside it the
  probabilities of every token outside the window would be 0 and say nothing);
* the top ``keep[l]`` fraction of the *whole prompt* (cumulative: ``keep`` decreases along the
  schedule) goes on to layer ``l + 1``; the last token is never pruned; every other token
  stops being computed: its hidden state leaving layer ``l`` goes to the **Aux Cache**.

Kept tokens keep their original positions (RoPE) and the KV cache of every layer stores, next
to each entry, the position it belongs to; attention masks are built from those positions
(causal, and the window on sliding layers), so the cache stays consistent whatever order
entries were added in.

Decoding: at each step the new token runs through every layer attending to every KV entry
that exists at that layer. At each prune layer the selection is redone with the new token's
query; a selected prompt token that was pruned at this layer (whose KV is missing from layer
``l + 1`` on) is **revived**: its Aux Cache state resumes at layer ``l + 1``, computed in the
same batch as the new token, and it may be pruned again at the next prune layer. A token is
therefore computed at most once per layer, and the worst case costs no more than the
baseline. Generated tokens are never pruned.

With every keep ratio at 1.0 nothing is pruned and the forward reproduces the model's own
(the test suite checks tokens equal AR's). Not lossless otherwise.

Schedule options (``-o lazyllm.KEY=VALUE``): ``prune_layers`` ("8,15,23") with ``keep``
("0.7,0.5,0.35", or one value for every layer); or ``prune_rate`` r with ``stages`` s:
prune layers at depths L*k/(s+1) (k = 1..s) keeping (1 - r)^k of the prompt after stage k.
``min_prompt``: prompts shorter than this are not pruned.

Record extra: ``computed_frac`` (prompt token-layers computed in the prefill / all), the
per-layer fractions ``computed_per_layer``, ``revivals`` (Aux Cache revivals over the
decode), ``revived_token_layers`` (layer computations they cost), ``computed_frac_total``
(prefill + revivals), the resolved ``schedule``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from accbench.methods import register
from accbench.methods.core import (
    Clock,
    DecoderBase,
    GenerationRecord,
    OptionError,
    option,
    sample_from_logits,
)
from accbench.methods.core.quirks import final_softcap, softcap, text_config
from transformers.integrations.sdpa_attention import sdpa_attention_forward

SUPPORTED = ("llama", "gemma3_text")
DEFAULT_PRUNE_RATE = 0.3  # see bench/benchmarks/lazyllm_ttft.py and the README for why
DEFAULT_STAGES = 3


# --------------------------------------------------------------------------------------
# schedule
# --------------------------------------------------------------------------------------


def _num_list(v: Any, kind) -> list:
    if v is None:
        return []
    if isinstance(v, (int, float)):
        return [kind(v)]
    if isinstance(v, str):
        return [kind(x) for x in v.replace(";", ",").split(",") if x.strip()]
    return [kind(x) for x in v]


def resolve_schedule(n_layers: int, prune_layers=None, keep=None, prune_rate=None,
                     stages: int = DEFAULT_STAGES) -> list[tuple[int, float]]:
    """``[(layer, keep fraction of the whole prompt), ...]`` sorted by layer.

    Explicit ``prune_layers`` + ``keep`` win; else ``prune_rate`` expands into ``stages``
    evenly spaced prune layers, keeping ``(1 - prune_rate) ** k`` after stage k; else the
    default rate. Raises ValueError on an impossible schedule."""
    layers = _num_list(prune_layers, int)
    keeps = _num_list(keep, float)
    if layers or keeps:
        if not layers or not keeps:
            raise ValueError("give both prune_layers and keep (or prune_rate alone)")
        if len(keeps) == 1:
            keeps = keeps * len(layers)
        if len(keeps) != len(layers):
            raise ValueError(f"prune_layers has {len(layers)} entries but keep has {len(keeps)}")
    else:
        rate = DEFAULT_PRUNE_RATE if prune_rate is None else float(prune_rate)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"prune_rate must be in [0, 1), got {rate}")
        s = int(stages)
        if s < 1:
            raise ValueError(f"stages must be at least 1, got {s}")
        stage_keep: dict[int, float] = {}  # on shallow models stages may share a layer: the last wins
        for k in range(1, s + 1):
            stage_keep[min(int(n_layers * k / (s + 1) + 0.5), max(n_layers - 2, 0))] = (1.0 - rate) ** k
        layers, keeps = list(stage_keep), list(stage_keep.values())
    sched = sorted(zip(layers, keeps))
    for i, (layer, k) in enumerate(sched):
        if not 0 <= layer < n_layers - 1:
            raise ValueError(f"prune layer {layer} out of range: the model has {n_layers} layers "
                             f"(valid: 0..{n_layers - 2})")
        if not 0.0 < k <= 1.0:
            raise ValueError(f"keep ratios must be in (0, 1], got {k}")
        if i and layer == sched[i - 1][0]:
            raise ValueError(f"prune layer {layer} given twice")
        if i and k > sched[i - 1][1]:
            raise ValueError("keep ratios must not increase with depth (pruning is progressive)")
    return sched


def computed_fraction_bound(n_layers: int, schedule: list[tuple[int, float]]) -> float:
    """Fraction of prompt token-layers a prefill computes under ``schedule`` (ignoring rounding)."""
    frac, total = 1.0, 0.0
    marks = dict(schedule)
    for layer in range(n_layers):
        total += frac
        if layer in marks:
            frac = marks[layer]
    return total / n_layers


# --------------------------------------------------------------------------------------
# KV cache with positions
# --------------------------------------------------------------------------------------


class PositionedKV:
    """Per-layer preallocated K/V buffers ``[1, kv_heads, capacity, head_dim]`` plus the
    position of every entry. Entries are appended; order is arbitrary (masks use positions)."""

    def __init__(self, n_layers: int, kv_heads: int, head_dims: list[int], capacity: int,
                 dtype: torch.dtype, device: torch.device):
        self.k = [torch.empty(1, kv_heads, capacity, d, dtype=dtype, device=device) for d in head_dims]
        self.v = [torch.empty(1, kv_heads, capacity, d, dtype=dtype, device=device) for d in head_dims]
        self.pos = [torch.empty(capacity, dtype=torch.long, device=device) for _ in head_dims]
        self.n = [0] * n_layers
        self.sorted = [True] * n_layers  # entries in increasing position order
        self.last = [-1] * n_layers  # largest position appended (host)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
               first_pos: int, last_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        n0 = self.n[layer]
        n1 = n0 + k.shape[2]
        self.k[layer][:, :, n0:n1].copy_(k)
        self.v[layer][:, :, n0:n1].copy_(v)
        self.pos[layer][n0:n1].copy_(pos)
        if first_pos <= self.last[layer]:
            self.sorted[layer] = False
        self.last[layer] = max(self.last[layer], last_pos)
        self.n[layer] = n1
        return self.k[layer][:, :, :n1], self.v[layer][:, :, :n1]

    def positions(self, layer: int) -> torch.Tensor:
        return self.pos[layer][: self.n[layer]]


@dataclass
class LazyState:
    """Everything a generation carries between steps (exposed for tests)."""

    n_prompt: int
    kv: PositionedKV
    aux: torch.Tensor  # [n_prompt, hidden]: Aux Cache, hidden state of each pruned token where it was pruned
    depth: torch.Tensor  # [n_prompt] long: layers whose KV exists for the token (n_layers = complete)
    computed: list[int]  # prompt tokens computed at each layer during the prefill
    arange: torch.Tensor  # [capacity] positions 0..capacity-1 (views of it feed single-token steps)
    scores: dict[int, torch.Tensor] = field(default_factory=dict)  # prefill importance per prune layer
    revivals: int = 0
    revived_token_layers: int = 0


# --------------------------------------------------------------------------------------
# the decoder
# --------------------------------------------------------------------------------------


@register
class LazyLLMDecoder(DecoderBase):
    name = "lazyllm"
    lossless = False
    description = ("LazyLLM: prune unimportant prompt tokens layer by layer (last-token attention), "
                   "revive them from the Aux Cache when needed; speeds up TTFT on long prompts.")

    @dataclass
    class Options:
        prune_layers: str | int | list | None = option(None, "layers after which prompt tokens are pruned, e.g. 8,15,23")
        keep: str | float | list | None = option(None, "fraction of the prompt kept after each prune layer (one value or one per layer)")
        prune_rate: float | None = option(None, f"without prune_layers: prune this fraction per stage (default {DEFAULT_PRUNE_RATE})",
                                          ge=0.0)
        stages: int = option(DEFAULT_STAGES, "without prune_layers: evenly spaced prune stages", ge=1)
        min_prompt: int = option(0, "prompts shorter than this are not pruned", ge=0)

        def __post_init__(self):
            try:  # everything but the layer range, which needs the model
                resolve_schedule(1 << 20, self.prune_layers, self.keep, self.prune_rate, self.stages)
            except ValueError as e:
                raise OptionError(f"lazyllm: {e}") from None

    def __init__(self, model, tokenizer, **kw):
        super().__init__(model, tokenizer, **kw)
        cfg = text_config(model)
        if cfg.model_type not in SUPPORTED:
            raise ValueError(f"lazyllm supports {', '.join(SUPPORTED)} models (Llama and Gemma 3 "
                             f"architectures); this one is {cfg.model_type!r}")
        self.cfg = cfg
        self.backbone = model.model
        self.layers = list(self.backbone.layers)
        self.n_layers = len(self.layers)
        self.schedule = resolve_schedule(self.n_layers, self.opts["prune_layers"], self.opts["keep"],
                                         self.opts["prune_rate"], self.opts["stages"])
        # layers with keep 1.0 prune nothing: skip them
        self.prune_at = {layer: k for layer, k in self.schedule if k < 1.0}
        self.min_prompt = int(self.opts["min_prompt"] or 0)
        types = getattr(cfg, "layer_types", None) or ["full_attention"] * self.n_layers
        self.layer_types = list(types)
        self.window = int(cfg.sliding_window) if "sliding_attention" in self.layer_types else None
        self.gemma = cfg.model_type.startswith("gemma")
        attn0 = self.layers[0].self_attn
        self.head_dim = attn0.head_dim
        self.kv_heads = cfg.num_key_value_heads
        self.heads = cfg.num_attention_heads
        self.rope_fn = sys.modules[type(attn0).__module__].apply_rotary_pos_emb
        self.softcap = getattr(cfg, "attn_logit_softcapping", None)
        self.final_cap = final_softcap(model)
        self.lm_head = model.get_output_embeddings()

    # ---------------------------------------------------------------- helpers

    def _rope_tables(self, capacity: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        pos = torch.arange(capacity, device=self.device)[None]
        x = torch.empty(1, dtype=self.model.dtype, device=self.device)
        out = {}
        for lt in set(self.layer_types):
            if self.gemma:
                out[lt] = self.backbone.rotary_emb(x, pos, lt)
            else:
                out[lt] = self.backbone.rotary_emb(x, position_ids=pos)
        return out

    def _logits(self, h_last: torch.Tensor) -> torch.Tensor:
        return softcap(self.lm_head(self.backbone.norm(h_last)), self.final_cap)

    def _importance(self, q_row: torch.Tensor, keys: torch.Tensor, scaling: float) -> torch.Tensor:
        """Attention probabilities of one query ``q_row`` [1, heads, 1, d] over ``keys``
        [1, kv_heads, n, d], averaged over every query head: [n] float32."""
        g = self.heads // self.kv_heads
        q = q_row[0, :, 0].reshape(self.kv_heads, g, -1).float()
        s = torch.matmul(q, keys[0].float().transpose(1, 2)) * scaling  # [kv, g, n]
        s = softcap(s, self.softcap)
        return torch.softmax(s, dim=-1).mean(dim=(0, 1))

    def _layer(self, li: int, h: torch.Tensor, pos: torch.Tensor, first_pos: int, last_pos: int,
               cos: torch.Tensor, sin: torch.Tensor, mask, kv: PositionedKV, kstart: int = 0):
        """One decoder layer for the tokens in ``h`` [1, n, H] at positions ``pos``; their K/V
        are appended to layer ``li`` of ``kv`` before attention, which reads entries
        ``kstart:`` of the layer. Returns (h, q)."""
        layer = self.layers[li]
        attn = layer.self_attn
        n = h.shape[1]
        residual = h
        x = layer.input_layernorm(h)
        shape = (1, n, -1, self.head_dim)
        q = attn.q_proj(x).view(shape).transpose(1, 2)
        k = attn.k_proj(x).view(shape).transpose(1, 2)
        v = attn.v_proj(x).view(shape).transpose(1, 2)
        if self.gemma:
            q = attn.q_norm(q)
            k = attn.k_norm(k)
        q, k = self.rope_fn(q, k, cos, sin)
        keys, values = kv.append(li, k, v, pos, first_pos, last_pos)
        if kstart:
            keys, values = keys[:, :, kstart:], values[:, :, kstart:]
        o, _ = sdpa_attention_forward(attn, q, keys, values, mask, dropout=0.0, scaling=attn.scaling)
        o = attn.o_proj(o.reshape(1, n, -1).contiguous())
        if self.gemma:
            h = residual + layer.post_attention_layernorm(o)
            h = h + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(h)))
        else:
            h = residual + o
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return h, q

    # ---------------------------------------------------------------- prefill

    def prefill(self, ids: torch.Tensor, capacity: int) -> tuple[LazyState, torch.Tensor, dict]:
        """Run the prompt ``ids`` [1, T] with pruning. Returns (state, last logits [1, V], rope)."""
        device = self.device
        n = ids.shape[1]
        rope = self._rope_tables(capacity)
        kv = PositionedKV(self.n_layers, self.kv_heads, [self.head_dim] * self.n_layers, capacity,
                          self.model.dtype, device)
        h = self.backbone.embed_tokens(ids)
        state = LazyState(n_prompt=n, kv=kv, aux=torch.empty(0, device=device),
                          depth=torch.full((n,), self.n_layers, dtype=torch.long, device=device), computed=[],
                          arange=torch.arange(capacity, device=device))
        prune = self.prune_at if n >= max(self.min_prompt, 2) else {}
        if prune:
            state.aux = torch.empty(n, h.shape[-1], dtype=h.dtype, device=device)
        idx = state.arange[:n]  # positions of the tokens still computed
        contiguous = True
        first, last = 0, n - 1
        masks: dict[str, Any] = {}  # per segment (same token set): mask per layer type
        for li in range(self.n_layers):
            lt = self.layer_types[li]
            cos_t, sin_t = rope[lt]
            if contiguous:
                cos, sin = cos_t[:, :n], sin_t[:, :n]
            else:
                cos, sin = cos_t[:, idx], sin_t[:, idx]
            if lt not in masks:
                masks[lt] = self._prefill_mask(lt, idx, first, last)
            h, q = self._layer(li, h, idx, first, last, cos, sin, masks[lt], kv)
            state.computed.append(h.shape[1])
            keep = prune.get(li)
            if keep is None:
                continue
            n_keep = max(1, math.ceil(keep * n))
            if n_keep >= h.shape[1]:
                continue
            scores = self._importance(q[:, :, -1:], kv.k[li][:, :, : kv.n[li]], self.layers[li].self_attn.scaling)
            state.scores[li] = scores
            s = scores.clone()
            s[-1] = float("inf")  # the last token is never pruned
            top = torch.topk(s, n_keep, sorted=False).indices.sort().values
            dropped = torch.ones(h.shape[1], dtype=torch.bool, device=device)
            dropped[top] = False
            gone = idx[dropped]
            state.aux.index_copy_(0, gone, h[0, dropped])
            state.depth[gone] = li + 1
            h = h[:, top]
            idx = idx[top]
            contiguous = False
            first = int(idx[0])
            masks = {}
        logits = self._logits(h[:, -1:])[:, -1]
        return state, logits, rope

    def _prefill_mask(self, lt: str, idx: torch.Tensor, first: int, last: int):
        """Keys = queries = the same position-sorted token set, so ``is_causal`` (mask None) is
        exact on full layers; sliding layers need the window when the span reaches it."""
        if lt != "sliding_attention" or self.window is None or last - first + 1 < self.window:
            return None
        p = idx.to(torch.int32)
        d = p[:, None] - p[None, :]
        return ((d >= 0) & (d < self.window))[None, None]

    # ---------------------------------------------------------------- decode

    def step(self, state: LazyState, token: torch.Tensor, position: int, rope: dict) -> torch.Tensor:
        """One generation step for ``token`` ([1, 1]) at ``position``: redo the selection at
        every prune layer, revive selected pruned tokens from the Aux Cache. Returns logits [1, V]."""
        kv, n_prompt, device = state.kv, state.n_prompt, self.device
        h = self.backbone.embed_tokens(token)
        bpos_list = [position]  # positions in the batch (the new token last)
        bpos = state.arange[position : position + 1]
        single = True
        prune = self.prune_at if state.aux.numel() else {}
        for li in range(self.n_layers):
            lt = self.layer_types[li]
            cos_t, sin_t = rope[lt]
            if single:
                cos, sin = cos_t[:, position : position + 1], sin_t[:, position : position + 1]
            else:
                cos, sin = cos_t[:, bpos], sin_t[:, bpos]
            mask, kstart = self._decode_mask(li, lt, kv, bpos_list, bpos, single)
            h, q = self._layer(li, h, bpos, bpos_list[0], position, cos, sin, mask, kv, kstart)
            if not single:
                state.revived_token_layers += len(bpos_list) - 1
            keep = prune.get(li)
            if keep is None:
                continue
            n_keep = max(1, math.ceil(keep * n_prompt))
            n_li = kv.n[li]
            kpos = kv.positions(li)
            scores = self._importance(q[:, :, -1:], kv.k[li][:, :, :n_li], self.layers[li].self_attn.scaling)
            scores = scores.masked_fill(kpos >= n_prompt, float("-inf"))
            n_cand = min(n_keep, n_li - (position + 1 - n_prompt))  # prompt entries at this layer
            sel = kpos[torch.topk(scores, n_cand, sorted=False).indices]
            chosen = torch.zeros(n_prompt, dtype=torch.bool, device=device)
            chosen[sel] = True
            revive = torch.nonzero(chosen & (state.depth == li + 1)).flatten()
            # tokens in flight (revived at an earlier layer) that are not selected here stop again
            old = bpos_list[:-1]
            stay = chosen[bpos[:-1]].tolist() if old else []
            rev = revive.tolist()
            if not rev and all(stay):
                continue
            keep_rows = [i for i, s in enumerate(stay) if s] + [len(bpos_list) - 1]
            if len(keep_rows) < len(bpos_list):
                drop_rows = [i for i, s in enumerate(stay) if not s]
                dp = bpos[drop_rows]
                state.aux.index_copy_(0, dp, h[0, drop_rows])
                state.depth[dp] = li + 1
            hk = h[:, keep_rows]
            pk = [bpos_list[i] for i in keep_rows]
            if rev:
                state.revivals += len(rev)
                state.depth[revive] = self.n_layers
                h = torch.cat([state.aux[revive][None], hk], dim=1)
                pk = rev + pk
            else:
                h = hk
            order = sorted(range(len(pk)), key=pk.__getitem__)
            if order != list(range(len(pk))):
                h = h[:, order]
                pk = [pk[i] for i in order]
            bpos_list = pk
            single = len(pk) == 1
            bpos = torch.tensor(pk, device=device)
        return self._logits(h[:, -1:])[:, -1]

    def _decode_mask(self, li: int, lt: str, kv: PositionedKV, bpos_list: list[int], pos_t, single: bool):
        """(mask, kstart) for the batch over the entries of layer ``li`` once the batch is
        appended: None when one query sees everything; on a sliding layer whose cache holds
        every earlier position in order, the window is a suffix (``kstart``), as in a
        sliding-window cache; otherwise a boolean mask from the entries' positions."""
        sliding = lt == "sliding_attention" and self.window is not None
        p = bpos_list[0]
        if single:
            if not sliding or p + 1 <= self.window:
                return None, 0  # one query attends to everything cached
            if kv.sorted[li] and kv.n[li] == p:  # positions 0..p-1 all present, in order
                return None, p + 1 - self.window
            keys = torch.cat([kv.positions(li), pos_t])
            return (keys > p - self.window)[None, None, None], 0
        keys = torch.cat([kv.positions(li), pos_t])
        d = pos_t[:, None] - keys[None, :]
        m = d >= 0
        if sliding:
            m &= d < self.window
        return m[None, None], 0

    # ---------------------------------------------------------------- decode

    @torch.inference_mode()
    def decode(self, prompt_ids, max_new_tokens: int, stop=None):
        stopper = self._stop_checker(stop)
        sampling, gen = self.sampling, self._generator
        ids = self._prompt_tensor(prompt_ids)
        n_prompt = ids.shape[1]
        clock = Clock(self.device, paired=self.paired)

        clock.start()
        state, logits, rope = self.prefill(ids, n_prompt + max_new_tokens)
        nxt = sample_from_logits(logits, sampling, gen)
        tokens = [int(nxt)]
        ttft = clock.elapsed()
        times = [ttft]
        hit = stopper.first_stop(tokens)
        while hit is None and len(tokens) < max_new_tokens:
            clock.pause()
            yield len(tokens)
            clock.resume()
            logits = self.step(state, nxt.view(1, 1), n_prompt + len(tokens) - 1, rope)
            nxt = sample_from_logits(logits, sampling, gen)
            tokens.append(int(nxt))
            times.append(clock.now())
            hit = stopper.first_stop(tokens, len(tokens) - 1)
        total = clock.elapsed()

        n = len(tokens)
        L = self.n_layers
        prefill_tl = sum(state.computed)
        return GenerationRecord(
            tokens=tokens, ttft_s=ttft, total_s=total, forward_passes=n, tokens_per_step=[1] * n,
            step_times_s=times, lossless=False, finish_reason=hit[1] if hit else "length",
            extra={
                "computed_frac": prefill_tl / (L * n_prompt),
                "computed_per_layer": [round(c / n_prompt, 4) for c in state.computed],
                "revivals": state.revivals,
                "revived_token_layers": state.revived_token_layers,
                "computed_frac_total": (prefill_tl + state.revived_token_layers) / (L * n_prompt),
                "schedule": [[layer, round(k, 4)] for layer, k in self.schedule],
            },
        )
