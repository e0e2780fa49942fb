"""MTP self-speculative decoding (greedy: lossless; sampling: speculative sampling with the heads'
distributions as q, lossless in distribution) on the one speculative loop.

After each verified step the heads run on the trunk states of the newly *committed* positions
only (captured at the branch point during the verification forward) and draft t+2..t+n from
the last one; the loop verifies ``[last committed token, drafts...]`` as a chain, accepts the
matching prefix plus the bonus token and keeps only that prefix in the base KV cache. Because
the heads are only ever fed committed positions, their KV caches never need a rollback; a test
checks that after rejections they equal a recomputation from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accbench.methods.core import (
    AccbenchError,
    Drafter,
    NeedsTraining,
    Proposal,
    SpeculativeDecoder,
    option,
)
from accbench.methods.core.quirks import final_softcap, softcap
from accbench.methods.core.sampling import probs_from_logits
from accbench.methods.mtp.heads import HEADS_FILE, META_FILE, BranchCapture, MTPHeads, head_logits


def _check_heads_dir(d: Path, given: str) -> None:
    """``-o mtp.heads=DIR`` names heads: one line naming what is missing otherwise."""
    from accbench.methods.mtp.meta import PARAMS_FILE, is_meta_checkpoint

    if not d.is_dir():
        raise AccbenchError(f"mtp.heads={given}: no such directory")
    if (d / HEADS_FILE).is_file():
        if not (d / META_FILE).is_file():
            raise AccbenchError(f"mtp.heads={given}: {HEADS_FILE} without {META_FILE}")
        return
    if is_meta_checkpoint(d):
        return
    if (d / PARAMS_FILE).is_file():
        raise AccbenchError(f"mtp.heads={given}: {PARAMS_FILE} but no consolidated*.pth / *.safetensors beside it")
    raise AccbenchError(f"mtp.heads={given}: neither {HEADS_FILE} + {META_FILE} (accbench / converted heads) nor "
                        f"{PARAMS_FILE} + consolidated.pth (a Meta MTP checkpoint) in it")


class MTPDrafter(Drafter):
    """Drafts a chain of up to ``num_draft`` tokens, one per extra head, from the trunk state
    of the last committed position; feeds the heads every committed position once."""

    def __init__(self, dec: "MTPDecoder", n_positions: int):
        self.dec, self.heads = dec, dec.heads
        self.shape = {"kind": "chain", "nodes": dec.num_draft, "depth": dec.num_draft, "heads": self.heads.n_extra}
        self.cache = self.heads.make_cache()  # the heads' KV: committed positions only
        self.all_pos = torch.arange(n_positions, device=dec.device)
        self.new_h: torch.Tensor | None = None  # trunk states of the committed positions the heads have not seen
        self.new_pos: torch.Tensor | None = None  # their positions

    def prepare(self) -> None:
        self.capture = BranchCapture(self.dec.model, self.heads.branch_layer)

    def start(self, prompt, first, info) -> None:
        self.new_h, self.new_pos = self.capture.h, self.all_pos[: len(prompt)]

    def propose(self, tokens, budget):
        self.q = None
        draft = self.draft(self.new_h, self.new_pos, min(self.dec.num_draft, budget))
        if not draft:
            return None
        k = len(draft) + 1
        return Proposal(draft, self.dec.depths[:k], self.dec.causal[:k, :k], self.dec.chains[k - 1], depth=k - 1,
                        q=self.q)

    def draft(self, h: torch.Tensor, positions: torch.Tensor, k: int) -> list[int]:
        """Run the heads in use over ``h`` at ``positions`` (extending their caches) and draft
        ``k`` tokens from the last position: the heads' argmax when greedy, else a draw from
        each head's distribution (the target's temperature / top-p), kept in ``self.q``
        ([k, V], zero outside the draft vocabulary) for speculative sampling."""
        dec = self.dec
        self.q = None
        if dec.num_draft == 0:
            return []
        # every head in use sees every committed position (their caches stay complete), even
        # when the budget leaves room for fewer drafts
        outs = self.heads(h, positions, self.cache, heads=dec.num_draft)
        if k == 0:
            return []
        last = [o[:, -1] for o in outs[:k]]
        if dec._w_draft is None:
            logits = head_logits(dec.model, last)  # [k, V]
        else:
            x = dec.model.model.norm(torch.cat(last, dim=0))
            logits = softcap(F.linear(x, dec._w_draft), dec._cap)  # [k, |draft vocab|]
        if dec.sampling.greedy:
            pick = logits.argmax(dim=-1)
        else:
            probs = probs_from_logits(logits, dec.sampling)
            pick = torch.multinomial(probs, 1, generator=dec._generator).squeeze(-1)
            if dec._w_draft is not None:  # onto the target's vocabulary
                full = torch.zeros(k, dec._target_vocab, device=probs.device, dtype=probs.dtype)
                probs = full.index_copy_(1, dec._vocab, probs)
            self.q = probs
        return (pick if dec._w_draft is None else dec._vocab[pick]).tolist()

    def observe(self, info) -> None:
        # the root and the accepted drafts are committed and have trunk states; the bonus has none yet
        n = info.accepted + 1
        self.new_h, self.new_pos = self.capture.h[:, :n], self.all_pos[info.prefix: info.prefix + n]

    def finish(self):
        self.capture.remove()
        return {}


class MTPDecoder(SpeculativeDecoder):
    name = "mtp"
    lossless = True
    description = "Multi-token prediction heads (Gloeckle et al. 2024): self-speculative drafts, verified losslessly."

    @dataclass
    class Options:
        heads: str | None = option(None, "heads: an accbench artifact or converted folder (heads.safetensors + "
                                         "mtp.json), or a Meta MTP checkpoint folder such as facebook/"
                                         "multi-token-prediction's 7B_1T_4 (params.json + consolidated.pth; "
                                         "--model must be its trunk as a Hugging Face model); 'random': untrained "
                                         "heads built from n, branch_layer, seed (default: the model's trained heads)")
        num_draft: int | None = option(None, "drafts per step, at most the extra heads (default: all of them)", ge=0)
        n: int = option(4, "total heads for heads=random", ge=2)
        branch_layer: int | None = option(None, "branch point for heads=random: trunk layers before the heads "
                                                "(default: all; negative counts from the end)")
        seed: int = option(0, "init seed for heads=random")
        # Drafting over fewer unembedding rows is cheaper (the unembedding is a large share of
        # a small model); verification is unchanged, so the output stays lossless.
        draft_vocab: str = option("auto", "auto: draft over the artifact's draft vocabulary (the tokens seen as "
                                          "training targets) when it has one; full: the whole vocabulary",
                                  choices=("auto", "full"))

    def __init__(self, model, tokenizer, **kw):
        super().__init__(model, tokenizer, **kw)
        o = self.options
        if o.heads == "random":
            self.heads_dir = None
            self.heads = MTPHeads(model, o.n - 1, o.branch_layer)
            self.heads.init_from_backbone(model, "random", seed=o.seed)
        else:
            self.heads_dir = self._find_heads()
            if (self.heads_dir / HEADS_FILE).is_file():
                self.heads = MTPHeads.load(model, self.heads_dir)
            else:  # a Meta checkpoint folder: its extra_heads on this (its own) trunk
                from accbench.methods.mtp.meta import load_meta_heads

                self.heads = load_meta_heads(self.heads_dir, model)
        self.heads.eval()
        self.num_draft = self.heads.n_extra if o.num_draft is None else min(o.num_draft, self.heads.n_extra)
        self._vocab = self._w_draft = None
        if o.draft_vocab == "auto" and self.heads.draft_vocab is not None:
            self._vocab = self.heads.draft_vocab.to(self.device)
            self._w_draft = model.get_output_embeddings().weight[self._vocab].detach().contiguous()
            self._target_vocab = model.get_output_embeddings().weight.shape[0]
        self._cap = final_softcap(model)
        k = self.num_draft + 1
        self.causal = torch.ones(k, k, dtype=torch.bool, device=self.device).tril_()
        self.depths = torch.arange(k, device=self.device)
        self.chains = [[-1] + list(range(n)) for n in range(k)]  # chains[n]: root + n drafts

    def _find_heads(self) -> Path:
        """``heads=DIR``, else a model directory holding heads, else the model's trained default."""
        if self.options.heads:
            d = Path(self.options.heads).expanduser()
            _check_heads_dir(d, self.options.heads)
            return d
        if self.model_name:
            d = Path(self.model_name).expanduser()
            if (d / HEADS_FILE).is_file() and (d / META_FILE).is_file():  # a fine-tuned / converted model
                return d
        d = self.artifacts.default("mtp")
        if d is None:
            raise NeedsTraining("mtp", self.model_name or "this model")
        return d

    @classmethod
    def preflight(cls, model_name: str, options: dict[str, str], artifacts) -> None:
        """Before any model loads: ``heads=DIR`` holds heads (an accbench/converted folder or a
        Meta checkpoint folder), else the model directory holds them or the trained default exists."""
        heads = (options or {}).get("heads")
        if heads == "random":
            return
        if heads:
            _check_heads_dir(Path(heads).expanduser(), heads)
            return
        d = Path(model_name).expanduser()
        if (d / HEADS_FILE).is_file() and (d / META_FILE).is_file():
            return
        if artifacts is not None and artifacts.default("mtp") is None:
            raise NeedsTraining("mtp", model_name)

    def drafter(self, n_positions: int) -> MTPDrafter:
        """The drafter of one generation covering ``n_positions`` (prompt + budget)."""
        return MTPDrafter(self, n_positions)

    @property
    def last_head_cache(self):
        """The heads' KV cache after the latest generation (for tests)."""
        return self.last_drafter.cache

    @classmethod
    def train(cls, job) -> Path:
        from accbench.methods.mtp.train import train_mtp

        return train_mtp(job)
