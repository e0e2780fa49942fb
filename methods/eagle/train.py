"""``accbench train eagle --model NAME``: train the EAGLE draft model (model.py) on the job's
documents (never-evaluated splits and user text), self-distilled from the frozen target.

Data. As Medusa's training: documents are split by document into training and held-out sets
(4% held out, deterministic) and cut into ``seq_len`` windows; the backbone runs once over
the chosen windows and its final hidden states *after* the final norm (``Verified.hidden``:
``model.model(...).last_hidden_state``; float16), its argmax at every position and the token
ids are cached (``artifacts.folder("eagle-data")/<hash>/``, in parts, so an interrupted pass
resumes). Training reads the cache only: the backbone never runs again until the evaluation.

Step. A batch of cached windows (right-padded; causal attention keeps padding invisible to
real positions). Position t's input is ``fc([emb(x_{t+1}); f_t])`` (the target's frozen
embeddings), causal over the window, as ``EagleDraft.forward`` runs at decode time; its output
is the predicted feature ``f^_{t+1}``. Loss (EAGLE, Li et al. 2024):
``SmoothL1(f^_{t+1}, f_{t+1}) + ce_weight * CE(lm_head(f^_{t+1}), y)``, ``ce_weight`` 0.1,
the lm_head the target's own (frozen), ``y`` the backbone's own next token (its argmax at
t+1; ``--targets ground-truth``: the text's x_{t+2}). The cross-entropy scores the ``ce_vocab``
tokens most frequent among the training targets (0: the whole vocabulary; a target outside
is left to the regression term), which keeps a 262k-token vocabulary affordable on a CPU.
``-o noise=A`` adds U(-A, A) to the input features (EAGLE's robustness trick; default off).
AdamW (betas 0.9 / 0.95), linear warmup then cosine, gradient norm clipped.

Evaluation (held-out windows, stored in config.json as ``acceptance``): greedy chain drafting
from ``eval_positions`` random held-out positions: the draft reads the true features of the
prefix (as after a verification), then runs autoregressively on its own predicted features;
depth d is accepted when all of the draft's first d tokens equal the backbone's greedy
continuation of the prefix (the backbone is run for it). ``cumulative[d-1]`` is that rate,
``conditional[d-1]`` the rate given depth d-1 was accepted, ``chain_tau`` = 1 + sum of the
cumulative rates (the mean tokens per step a chain of ``eval_depth`` drafts would give).

Checkpoints (draft weights, optimizer, step) go to ``<artifact>.work/`` every ``ckpt_every``
steps and on Ctrl-C (``accbench.methods.training``); rerunning the same command resumes there
(``--restart`` discards it); ``-o max_minutes=M`` stops the steps M minutes after the start
and commits the draft trained so far (``stopped_early`` in config.json; the checkpoint is
kept, so rerunning the command finishes the schedule). The final artifact (``draft.safetensors`` + ``config.json``) is
committed atomically and made the default, which ``accbench run --methods eagle`` then finds.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accbench.methods.core.errors import AccbenchError
from accbench.methods.core.jobs import TrainJob
from accbench.methods.core.quirks import final_softcap, logits_from_hidden, softcap
from accbench.methods.eagle.model import EagleDraft
from accbench.methods.training import (
    Checkpoint,
    ProgressLog,
    config_hash,
    documents_hash,
    save_atomic,
    token_chunks,
    train_steps,
    work_dir,
)
from transformers import DynamicCache

# Sized for the packaged 135M-270M models on a 2-core CPU (see README / the report of the run):
# batch 4 windows of 256 tokens (~1k predicted features a step).
DEFAULTS: dict[str, Any] = {"steps": 1200, "batch_size": 4, "lr": 1e-3, "seq_len": 256}
OPTION_DEFAULTS: dict[str, Any] = {
    "data_tokens": 160000,  # training tokens run through the backbone once and cached
    "held_tokens": 4096,
    "ce_weight": 0.1,  # EAGLE's w_cls
    "ce_vocab": 8192,  # the CE scores the N most frequent training targets (0 = all)
    "noise": 0.0,  # U(-noise, noise) added to the input features
    "grad_clip": 0.5,
    "weight_decay": 0.0,
    "warmup_frac": 0.05,
    "ckpt_every": 50,
    "stop_after": 0,  # testing aid: stop (as if interrupted) after this many steps of this run
    "max_minutes": 0,  # stop the steps this long after the start (backbone pass included), commit what is trained
    "eval_positions": 128,  # held-out positions the chain acceptance is measured from
    "eval_depth": 6,
}
# options that do not change the trained weights (kept out of the artifact's hash)
_NOT_HASHED = ("ckpt_every", "stop_after", "max_minutes", "eval_positions", "eval_depth")
HELD_FRAC = 0.04
BETAS = (0.9, 0.95)


# --------------------------------------------------------------------------------------
# data: documents -> windows -> cached backbone features
# --------------------------------------------------------------------------------------


def split_documents(docs: list[str], seed: int, frac: float = HELD_FRAC) -> tuple[list[str], list[str]]:
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_held = max(1, int(round(len(docs) * frac)))
    return [docs[i] for i in sorted(order[n_held:])], [docs[i] for i in sorted(order[:n_held])]


def _take(chunks: list[list[int]], budget: int, seed: int) -> list[list[int]]:
    order = list(range(len(chunks)))
    random.Random(seed).shuffle(order)
    out, n = [], 0
    for i in order:
        if n >= budget:
            break
        out.append(chunks[i])
        n += len(chunks[i])
    return out


class Windows:
    """Cached backbone outputs of a list of windows, flattened: ``hidden [N, H]`` (fp16,
    post-norm), ``tokens [N]``, ``argmax [N]``; window i is ``starts[i] : starts[i] + lengths[i]``."""

    def __init__(self, hidden: torch.Tensor, tokens: torch.Tensor, argmax: torch.Tensor, lengths: list[int]):
        self.hidden, self.tokens, self.argmax = hidden, tokens.long(), argmax.long()
        self.lengths = torch.tensor(lengths, dtype=torch.long)
        self.starts = torch.cumsum(self.lengths, 0) - self.lengths

    def __len__(self) -> int:
        return int(self.tokens.numel())

    def targets(self, kind: str) -> torch.Tensor:
        """``[N]``: the token the draft's output at pair t (= position t of the window) should
        predict (x_{t+2}: the backbone's argmax at t+1, or the text's token t+2); -1 where it
        falls outside the window."""
        n = len(self)
        ends = torch.repeat_interleave(self.starts + self.lengths, self.lengths)
        j = torch.arange(n) + (1 if kind == "self" else 2)
        src = self.argmax if kind == "self" else self.tokens
        out = torch.full((n,), -1, dtype=torch.long)
        ok = j < ends
        out[ok] = src[j[ok]]
        return out


@torch.inference_mode()
def _encode_part(model, chunks: list[list[int]], device) -> dict[str, torch.Tensor]:
    lens = [len(c) for c in chunks]
    ids = torch.zeros(len(chunks), max(lens), dtype=torch.long)
    for i, c in enumerate(chunks):
        ids[i, : len(c)] = torch.tensor(c)
    # right padding: causal attention means real positions never see the padding
    hid = model.model(input_ids=ids.to(device)).last_hidden_state
    hs, ts, ams = [], [], []
    for i, n in enumerate(lens):  # one row at a time: a 262k vocabulary's logits are large
        hs.append(hid[i, :n].to(torch.float16).cpu())
        ts.append(ids[i, :n].to(torch.int32))
        ams.append(logits_from_hidden(model, hid[i, :n]).argmax(-1).to(torch.int32).cpu())
    return {"hidden": torch.cat(hs), "tokens": torch.cat(ts), "argmax": torch.cat(ams),
            "lengths": torch.tensor(lens, dtype=torch.int64)}


def build_windows(job: TrainJob, opts: dict, seq_len: int) -> tuple[Windows, Windows, Path]:
    """Run the backbone once over the training and held-out windows (resumable, in parts)."""
    from safetensors.torch import load_file

    train_docs, held_docs = split_documents(job.documents, job.seed)
    key = {"model": job.model_name, "seq_len": seq_len, "documents": documents_hash(job.documents),
           "seed": job.seed, "data_tokens": int(opts["data_tokens"]), "held_tokens": int(opts["held_tokens"]),
           "dtype": str(job.dtype), "held_frac": HELD_FRAC, "feature": "post-norm", "format": 1}
    root = job.artifacts.folder("eagle-data") / config_hash(key)
    root.mkdir(parents=True, exist_ok=True)
    (root / "key.json").write_text(json.dumps(key, indent=2))
    out = []
    for split, docs, budget in (("train", train_docs, int(opts["data_tokens"])),
                                ("held", held_docs, int(opts["held_tokens"]))):
        chunks = _take(token_chunks(job.tokenizer, docs, seq_len), budget, job.seed + (split == "held"))
        if not chunks:
            raise AccbenchError(f"train eagle: no {split} text long enough for training")
        chunks.sort(key=len)
        per_part = max(1, 2048 // seq_len)
        parts = [chunks[i : i + per_part] for i in range(0, len(chunks), per_part)]
        _encode_missing(job, root, split, parts)
        loaded = [load_file(str(root / f"{split}-{i:05d}.safetensors")) for i in range(len(parts))]
        out.append(Windows(torch.cat([p["hidden"] for p in loaded]), torch.cat([p["tokens"] for p in loaded]),
                           torch.cat([p["argmax"] for p in loaded]), [int(x) for p in loaded for x in p["lengths"]]))
    return out[0], out[1], root


def _encode_missing(job: TrainJob, root: Path, split: str, parts: list[list[list[int]]]) -> None:
    todo = [i for i in range(len(parts)) if not (root / f"{split}-{i:05d}.safetensors").exists()]
    if not todo:
        return
    total = sum(len(c) for p in parts for c in p)
    done = total - sum(len(c) for i in todo for c in parts[i])
    t0, n_new = time.perf_counter(), 0
    with ProgressLog(f"backbone pass ({split})", total, job.log, job.console, done=done) as progress:
        for i in todo:
            tensors = _encode_part(job.model, parts[i], job.device)
            save_atomic(tensors, root / f"{split}-{i:05d}.safetensors")
            n_new += tensors["tokens"].numel()
            progress.update(done + n_new, f"{n_new / (time.perf_counter() - t0):.0f} tok/s")


# --------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------


def settings(job: TrainJob) -> tuple[dict[str, Any], int, int, float, int]:
    """The options and (steps, batch size in windows, lr, window length), defaults filled in."""
    unknown = set(job.options) - set(OPTION_DEFAULTS)
    if unknown:
        raise AccbenchError(f"train eagle: unknown option(s) {sorted(unknown)}; valid: {', '.join(OPTION_DEFAULTS)}")
    if job.targets not in ("self", "ground-truth"):
        raise AccbenchError(f"train eagle: --targets must be self or ground-truth, not {job.targets!r}")
    d = DEFAULTS
    steps = int(job.steps if job.steps is not None else d["steps"])
    batch = int(job.batch_size if job.batch_size is not None else d["batch_size"])
    lr = float(job.lr if job.lr is not None else d["lr"])
    seq_len = int(job.seq_len if job.seq_len is not None else d["seq_len"])
    if steps < 1 or batch < 1 or lr <= 0 or seq_len < 16:
        raise AccbenchError("train: --steps and --batch-size must be >= 1, --lr > 0, --seq-len >= 16")
    return {**OPTION_DEFAULTS, **job.options}, steps, batch, lr, seq_len


def _ce_vocab(targets: torch.Tensor, n_vocab: int, vocab_size: int, log) -> tuple[torch.Tensor, torch.Tensor]:
    """The CE's vocabulary (the ``n_vocab`` most frequent training targets, sorted; 0 = all) and
    the lookup token id -> its index there (-100 outside; index -1 too)."""
    ids = torch.arange(vocab_size)
    if 0 < n_vocab < vocab_size:
        freq = torch.bincount(targets[targets >= 0], minlength=vocab_size)
        ids = torch.argsort(freq, descending=True, stable=True)[:n_vocab].sort().values
        covered = float(freq[ids].sum()) / max(1, int(freq.sum()))
        log(f"cross-entropy over {n_vocab} of {vocab_size} tokens ({covered:.1%} of training targets)")
    lut = torch.full((vocab_size + 1,), -100, dtype=torch.long)
    lut[ids] = torch.arange(ids.numel())
    return ids, lut


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------


class _Training:
    def __init__(self, method: str, job: TrainJob):
        self.method, self.job, self.t0 = method, job, time.perf_counter()
        self.opts, self.steps, self.batch, self.lr, self.seq_len = settings(job)
        o, model = self.opts, job.model
        self.train_w, self.held_w, data_root = build_windows(job, o, self.seq_len)
        job.log(f"training text: {len(self.train_w)} tokens cached ({len(self.train_w.lengths)} windows), "
                f"held-out: {len(self.held_w)} tokens (cache: {data_root})")
        lm = model.get_output_embeddings()
        vocab_size = lm.weight.shape[0]
        self.tgt = self.train_w.targets(job.targets)
        self.vocab_ids, self.lut = _ce_vocab(self.tgt, int(o["ce_vocab"]), vocab_size, job.log)
        self.tgt_sub = self.lut[self.tgt]  # -1 -> lut[-1] = -100
        dev = job.device
        self.lm_w = lm.weight.detach()[self.vocab_ids.to(lm.weight.device)].float().to(dev)
        bias = getattr(lm, "bias", None)
        self.lm_b = bias.detach()[self.vocab_ids.to(bias.device)].float().to(dev) if bias is not None else None
        self.cap = final_softcap(model)
        self.config = {"method": method, "model": job.model_name, "steps": self.steps, "batch_size": self.batch,
                       "lr": self.lr, "seq_len": self.seq_len, "targets": job.targets, "seed": job.seed,
                       "data": data_root.name, "dtype": str(job.dtype),
                       **{k: v for k, v in o.items() if k not in _NOT_HASHED}}
        self.final = job.artifacts.dir_for(method, self.config)
        if job.restart:
            shutil.rmtree(work_dir(self.final), ignore_errors=True)
        self.draft = EagleDraft(model)
        self.draft.init_random(seed=job.seed)
        self.draft.float()  # trained in float32 whatever the target's dtype; saved / loaded in its dtype
        self.draft.train()
        self.embed = model.get_input_embeddings()
        self.lm_dtype = lm.weight.dtype

    # -- one step ------------------------------------------------------------------------
    def batch_tensors(self, w: Windows, rows: list[int], tgt_sub: torch.Tensor | None, gen=None):
        """Right-padded pairs of the windows ``rows``: input features ``f_t`` and next tokens
        ``x_{t+1}`` [B, P], target features ``f_{t+1}``, CE targets, the valid mask."""
        lens = [int(w.lengths[r]) - 1 for r in rows]
        p = max(lens)
        idx = torch.zeros(len(rows), p, dtype=torch.long)
        valid = torch.zeros(len(rows), p, dtype=torch.bool)
        for b, (r, n) in enumerate(zip(rows, lens)):
            s = int(w.starts[r])
            idx[b, :n] = torch.arange(s, s + n)
            valid[b, :n] = True
        dev = self.job.device
        feat = w.hidden[idx].float()
        if gen is not None and float(self.opts["noise"]) > 0:
            a = float(self.opts["noise"])
            feat = feat + (torch.rand(feat.shape, generator=gen) * 2 - 1) * a
        nxt = torch.where(valid, w.tokens[idx + 1], 0)
        tfeat = w.hidden[idx + 1].float()
        ce = torch.where(valid, tgt_sub[idx], -100) if tgt_sub is not None else None
        return (feat.to(dev), nxt.to(dev), tfeat.to(dev), None if ce is None else ce.to(dev), valid.to(dev))

    def draft_forward(self, feat: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            emb = self.embed(nxt).float()
        pos = torch.arange(feat.shape[1], device=feat.device)
        return self.draft(emb, feat, pos)

    def sub_logits(self, pred: torch.Tensor) -> torch.Tensor:
        lg = pred @ self.lm_w.t()
        if self.lm_b is not None:
            lg = lg + self.lm_b
        return softcap(lg, self.cap)

    def step(self, i: int) -> dict[str, Any]:
        job, w = self.job, self.train_w
        g = torch.Generator().manual_seed(job.seed * 1_000_003 + i)
        rows = torch.randint(0, len(w.lengths), (self.batch,), generator=g).tolist()
        feat, nxt, tfeat, ce_t, valid = self.batch_tensors(w, rows, self.tgt_sub, g)
        pred = self.draft_forward(feat, nxt)[valid]
        reg = F.smooth_l1_loss(pred, tfeat[valid])
        t = ce_t[valid]
        lg = self.sub_logits(pred)
        ok = t != -100
        ce = F.cross_entropy(lg, t, ignore_index=-100) if bool(ok.any()) else lg.sum() * 0
        loss = reg + float(self.opts["ce_weight"]) * ce
        loss.backward()
        if float(self.opts["grad_clip"]) > 0:
            torch.nn.utils.clip_grad_norm_(self.draft.parameters(), float(self.opts["grad_clip"]))
        top1 = float((lg.argmax(-1)[ok] == t[ok]).float().mean()) if bool(ok.any()) else None
        return {"loss": float(loss.detach()), "reg": float(reg.detach()), "ce": float(ce.detach()), "top1": top1}

    def train(self) -> Any:
        d = self.draft
        opt = torch.optim.AdamW(d.parameters(), lr=self.lr, betas=BETAS, weight_decay=float(self.opts["weight_decay"]))
        names = set(d.weights())

        def restore(t: dict[str, torch.Tensor]) -> None:
            missing = names - set(t)
            if missing:
                raise AccbenchError(f"train eagle: checkpoint lacks {sorted(missing)[:3]}; rerun with --restart")
            d.load_state_dict(t, strict=False)

        mm = float(self.opts["max_minutes"] or 0)
        return train_steps("draft", self.steps, opt, self.step, Checkpoint(self.final, "draft", d.weights, restore),
                           warmup=float(self.opts["warmup_frac"]), log=self.job.log, console=self.job.console,
                           ckpt_every=max(1, int(self.opts["ckpt_every"])), stop_after=int(self.opts["stop_after"]),
                           deadline=self.t0 + 60 * mm if mm > 0 else 0.0)

    # -- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def held_top1(self) -> float | None:
        """Teacher-forced depth-1 accuracy over every held-out pair (full vocabulary)."""
        w, tgt = self.held_w, self.held_w.targets(self.job.targets)
        right = total = 0
        for r in range(len(w.lengths)):
            feat, nxt, _, _, valid = self.batch_tensors(w, [r], None)
            pred = self.draft_forward(feat, nxt)[valid]
            s, n = int(w.starts[r]), int(w.lengths[r]) - 1
            t = tgt[s : s + n].to(pred.device)
            ok = t >= 0
            am = logits_from_hidden(self.job.model, pred.to(self.lm_dtype)).argmax(-1)
            right += int((am[ok] == t[ok]).sum())
            total += int(ok.sum())
        return right / total if total else None

    @torch.no_grad()
    def chain_acceptance(self) -> dict[str, Any]:
        return chain_acceptance(self.job.model, self.draft, self.held_w, int(self.opts["eval_positions"]),
                                int(self.opts["eval_depth"]), self.job.seed)

    def finish(self, run) -> Path:
        job, final, d = self.job, self.final, self.draft
        d.eval()
        top1 = self.held_top1()
        acc = self.chain_acceptance()
        train_s = time.perf_counter() - self.t0
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        p = next(job.model.parameters())
        # saved in the target's dtype (what load_draft casts to anyway)
        saved = EagleDraft(job.model)
        saved.load_state_dict({k: v.to(p.dtype) for k, v in d.weights().items()}, strict=False)
        hist = run.history
        done = hist[-1]["step"] if hist else run.start
        if run.stopped_early:
            job.log(f"committing the draft trained so far ({done}/{self.steps} steps); rerun the same command "
                    "to finish the schedule")
        saved.save(tmp, method=self.method, model=job.model_name, train=self.config, train_s=train_s,
                   data_tokens=len(self.train_w), held_tokens=len(self.held_w), resumed_from=run.start,
                   steps_run=run.steps_run, steps_done=done, stopped_early=run.stopped_early, losses=[h["loss"] for h in hist],
                   reg_losses=[h.get("reg") for h in hist], ce_losses=[h.get("ce") for h in hist],
                   held_top1=top1, acceptance=acc, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        job.artifacts.commit(tmp, final)
        job.artifacts.set_default(self.method, final, config_hash=config_hash(self.config))
        if not run.stopped_early:
            shutil.rmtree(work_dir(final), ignore_errors=True)
        job.log(f"eagle draft on {job.model_name}: held-out teacher-forced top-1 "
                f"{'-' if top1 is None else f'{top1:.3f}'}")
        job.log(f"held-out chain acceptance ({acc['positions']} positions, greedy): cumulative by depth "
                + " ".join(f"{a:.3f}" for a in acc["cumulative"]) + "; conditional "
                + " ".join("-" if a is None else f"{a:.3f}" for a in acc["conditional"])
                + f"; chain tau {acc['chain_tau']:.2f}")
        if job.console is not None:
            job.console.print(acceptance_table(f"eagle draft on {job.model_name}: held-out chain acceptance", acc))
        job.log(f"saved {final} (default for {job.model_name}); {train_s / 60:.1f} min")
        return final


@torch.no_grad()
def chain_acceptance(model, draft: EagleDraft, held: Windows, n_positions: int, depth: int, seed: int) -> dict:
    """Greedy chain drafting from random held-out positions (see the module docstring)."""
    dev = next(model.parameters()).device
    dd = next(draft.parameters()).dtype
    rng = random.Random(seed + 17)
    cands = [r for r in range(len(held.lengths)) if int(held.lengths[r]) >= 2]
    hits = [0] * depth
    n = 0
    embed = model.get_input_embeddings()
    for k in range(n_positions if cands else 0):
        r = cands[k % len(cands)]
        s, ln = int(held.starts[r]), int(held.lengths[r])
        t_last = rng.randrange(1, ln)  # committed x_0..x_T, T = t_last
        toks = held.tokens[s : s + t_last + 1].to(dev)
        # the backbone's greedy continuation g_1..g_depth of x_0..x_T
        cache = DynamicCache()
        out = model(input_ids=toks[None], past_key_values=cache, use_cache=True, logits_to_keep=1)
        greedy = []
        for j in range(depth):
            nxt = int(out.logits[0, -1].argmax())  # the model's own (soft-capped) logits
            greedy.append(nxt)
            if j + 1 < depth:
                out = model(input_ids=torch.tensor([[nxt]], device=dev), past_key_values=out.past_key_values,
                            use_cache=True, logits_to_keep=1)
        # the draft: true features of the prefix, then its own features
        dcache = DynamicCache()
        feats = held.hidden[s : s + t_last].to(device=dev, dtype=dd)[None]
        emb = embed(toks[1:][None]).to(dd)
        f = draft(emb, feats, torch.arange(t_last, device=dev), dcache)[0, -1]
        for j in range(depth):
            tok = int(logits_from_hidden(model, f.to(embed.weight.dtype)).argmax())
            if tok != greedy[j]:
                break
            hits[j] += 1
            if j + 1 < depth:
                e = embed(torch.tensor([[tok]], device=dev)).to(dd)
                f = draft(e, f[None, None], torch.tensor([t_last + j], device=dev), dcache)[0, -1]
        n += 1
    cum = [h / n if n else 0.0 for h in hits]
    cond = [(cum[0] if d == 0 else (cum[d] / cum[d - 1] if cum[d - 1] > 0 else None)) for d in range(depth)]
    return {"positions": n, "depth": depth, "cumulative": cum, "conditional": cond, "chain_tau": 1.0 + sum(cum)}


def acceptance_table(title: str, acc: dict):
    from rich.table import Table

    tab = Table(title=title, title_justify="left")
    tab.add_column("depth")
    tab.add_column("accepted (all of 1..d)", justify="right")
    tab.add_column("given d-1 accepted", justify="right")
    for d, (c, q) in enumerate(zip(acc["cumulative"], acc["conditional"])):
        tab.add_row(str(d + 1), f"{c:.3f}", "-" if q is None else f"{q:.3f}")
    return tab


def train_eagle(name: str, job: TrainJob) -> Path:
    """Train the EAGLE draft for ``job.model``; the committed artifact's path (the default)."""
    run = _Training(name, job)
    return run.finish(run.train())
