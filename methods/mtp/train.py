"""Training MTP heads: ``accbench train mtp --model NAME``.

Data: the job's documents (never-evaluated splits and user text), cut into ``seq_len``
windows, 5% held out for per-head accuracy.

Targets (``--targets``): ``self`` (default, self-distillation): head i at position t learns
the backbone's own teacher-forced argmax at position t+i-1, i.e. the token the backbone would
put at t+i, which is what verification accepts; ``ground-truth``: the text's token t+i.

Backbone frozen by default: the trunk runs once over the training windows (its states and
argmax are cached next to the artifact), and the heads are trained one after another
(forward, shared norm + unembedding, cross-entropy, backward), so at most one
vocabulary-sized logit tensor is alive at a time (the paper's memory trick).
``-o unfreeze=true`` fine-tunes the job's model in place, jointly with the heads (heads get 4x
the backbone's learning rate; head 1's loss is included; self-distilled targets then come from
a frozen copy of the original model): the artifact then holds a full model directory to run
with ``--model DIR``.

Options (``-o KEY=VALUE``): ``n`` (total heads, default 4), ``branch_layer`` (default: the final
pre-norm state; negative counts from the end), ``init`` (copy | identity | random),
``unfreeze``, ``ckpt_every`` (steps), ``eval_chunks`` (held-out windows scored at the end),
``warmup`` (fraction of steps), ``max_minutes`` (stop early, keeping what is trained),
``windows`` (training windows with a frozen backbone), ``loss_vocab`` (seen | full).

Checkpoints every ``ckpt_every`` steps and on Ctrl-C (heads, optimizer, step) in
``<artifact>.work/`` (``accbench.methods.training``); rerunning the same command resumes from
the last one (``--restart`` ignores it). The finished artifact is committed atomically and
made the default for the model.
"""

from __future__ import annotations

import copy
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from accbench.methods.core.errors import AccbenchError
from accbench.methods.core.jobs import TrainJob
from accbench.methods.core.quirks import final_softcap, softcap
from accbench.methods.mtp import BranchCapture, MTPHeads, head_logits
from accbench.methods.training import (
    Checkpoint,
    ProgressLog,
    Trained,
    config_hash,
    documents_hash,
    save_atomic,
    split_held_out,
    token_chunks,
    train_steps,
    work_dir,
)

# Sized for a 2-core CPU: on smollm2-135m 9.0 min in all (trunk pass over 1000 windows of 128
# tokens: 3:04). 80 windows / 80 steps, the first defaults, gave head-2 top-1 0.11: far too little.
DEFAULTS = {"steps": 500, "batch_size": 8, "seq_len": 128, "lr": 1e-3, "windows": 1000}
OPTIONS = ("n", "branch_layer", "init", "unfreeze", "ckpt_every", "eval_chunks", "warmup", "max_minutes", "windows",
           "loss_vocab")


@dataclass
class Settings:
    n: int  # heads in all (head 1 is the model itself)
    branch_layer: int | None
    init: str
    unfreeze: bool
    steps: int
    batch: int
    seq_len: int
    lr: float
    warmup: float
    ckpt_every: int
    eval_chunks: int
    max_minutes: float
    windows: int
    loss_vocab: str


def _bool(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


def _settings(job: TrainJob) -> Settings:
    o = dict(job.options)
    unknown = set(o) - set(OPTIONS)
    if unknown:
        raise AccbenchError(f"train mtp: unknown option(s) {sorted(unknown)}; valid: {sorted(OPTIONS)}")
    unfreeze = _bool(o.get("unfreeze", False))
    steps = int(job.steps or DEFAULTS["steps"])
    s = Settings(n=int(o.get("n", 4)), branch_layer=o.get("branch_layer"), init=str(o.get("init", "copy")),
                 unfreeze=unfreeze, steps=steps, batch=int(job.batch_size or DEFAULTS["batch_size"]),
                 seq_len=int(job.seq_len or DEFAULTS["seq_len"]),
                 lr=float(job.lr or (DEFAULTS["lr"] if not unfreeze else 2e-4)), warmup=float(o.get("warmup", 0.1)),
                 ckpt_every=int(o.get("ckpt_every", max(10, steps // 10))), eval_chunks=int(o.get("eval_chunks", 24)),
                 max_minutes=float(o.get("max_minutes", 0) or 0), windows=int(o.get("windows", DEFAULTS["windows"])),
                 loss_vocab=str(o.get("loss_vocab", "seen")))
    if s.n < 2:
        raise AccbenchError("train mtp: n must be at least 2 (head 1 is the model itself)")
    if s.loss_vocab not in ("seen", "full"):
        raise AccbenchError("train mtp: loss_vocab is 'seen' (tokens occurring as targets) or 'full'")
    if unfreeze:
        s.loss_vocab = "full"
    if s.steps < 1 or s.batch < 1 or s.seq_len < 8 or s.windows < 1:
        raise AccbenchError("train mtp: --steps, --batch-size and windows must be >= 1, --seq-len >= 8")
    return s


def _batches(n_items: int, batch: int, steps: int, seed: int) -> list[list[int]]:
    """Deterministic batch order (epochs reshuffled), identical across resumes."""
    rng = random.Random(seed)
    out, order = [], []
    while len(out) < steps:
        if len(order) < batch:
            perm = list(range(n_items))
            rng.shuffle(perm)
            order += perm
        out.append(order[:batch])
        order = order[batch:]
    return out


def _pad(chunks: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(c) for c in chunks)
    ids = torch.full((len(chunks), T), pad_id, dtype=torch.long)
    valid = torch.zeros(len(chunks), T, dtype=torch.bool)
    for i, c in enumerate(chunks):
        ids[i, : len(c)] = torch.tensor(c)
        valid[i, : len(c)] = True
    return ids.to(device), valid.to(device)


def _targets(ids: torch.Tensor, valid: torch.Tensor, teacher: torch.Tensor | None, d: int) -> torch.Tensor:
    """Targets for a head at offset ``d`` (head i = d + 1) over positions 0..T-1-d, -100 where
    undefined. Self: teacher argmax at t+d; ground truth: token t+d+1."""
    if teacher is not None:
        tgt = teacher[:, d:].clone()
        ok = valid[:, d:]
    else:
        tgt = torch.full_like(ids[:, d:], -100)
        tgt[:, :-1] = ids[:, d + 1:]
        ok = torch.zeros_like(valid[:, d:])
        ok[:, :-1] = valid[:, d + 1:]
    return tgt.masked_fill(~ok, -100)


@torch.no_grad()
def evaluate_heads(model, heads, chunks: list[list[int]], *, targets: str, pad_id: int, batch: int = 4,
                   teacher=None) -> dict:
    """Per-head top-1 accuracy on ``chunks`` (head 1 = the backbone itself, always 1.0 against
    self-distilled targets). Also the chance that heads 2..k are *all* right (what a k-draft
    chain needs) from positions where every target is defined."""
    device = next(model.parameters()).device
    n_extra = heads.n_extra
    right = [0] * (n_extra + 1)
    count = [0] * (n_extra + 1)
    chain = [0] * n_extra
    chain_n = 0
    with BranchCapture(model, heads.branch_layer) as cap:
        for s in range(0, len(chunks), batch):
            ids, valid = _pad(chunks[s : s + batch], pad_id, device)
            logits = model(input_ids=ids).logits
            h = cap.h
            teach = teacher(input_ids=ids).logits.argmax(-1) if teacher is not None else logits.argmax(-1)
            tself = teach if targets == "self" else None
            T = ids.shape[1]
            tg0 = _targets(ids, valid, tself, 0)
            ok0 = tg0 != -100
            right[0] += int(((logits.argmax(-1) == tg0) & ok0).sum())
            count[0] += int(ok0.sum())
            pos = torch.arange(T, device=device)
            outs = heads(h, pos)
            L = T - n_extra  # positions where every head has a defined target
            all_ok = torch.ones(ids.shape[0], max(L, 0), dtype=torch.bool, device=device)
            run = torch.ones_like(all_ok)
            for j, o in enumerate(outs):
                d = j + 1
                pred = head_logits(model, [o[:, : T - d]]).argmax(-1)
                tg = _targets(ids, valid, tself, d)
                ok = tg != -100
                hitm = (pred == tg) & ok
                right[d] += int(hitm.sum())
                count[d] += int(ok.sum())
                if L > 0:
                    all_ok &= ok[:, :L]
                    run = run & hitm[:, :L]
                    chain[j] += int((run & all_ok).sum())
            if L > 0:
                chain_n += int(all_ok.sum())
    acc = [r / c if c else float("nan") for r, c in zip(right, count)]
    return {"head_acc": acc, "chain_acc": [c / chain_n if chain_n else float("nan") for c in chain],
            "positions": count[0]}


def _logits(model, x: torch.Tensor, w_sub: torch.Tensor | None) -> torch.Tensor:
    """Shared final norm + unembedding, over the whole vocabulary or a subset of its rows."""
    if w_sub is None:
        return head_logits(model, [x])
    return softcap(F.linear(model.model.norm(x), w_sub), final_softcap(model))


class _Training:
    """One run of ``accbench train mtp``: windows, heads, the trunk's cached states, the
    step and the artifact."""

    def __init__(self, job: TrainJob):
        self.job, self.t0 = job, time.perf_counter()
        self.s = s = _settings(job)
        model = job.model
        self.pad_id = job.tokenizer.pad_token_id if job.tokenizer.pad_token_id is not None else 0
        self.heads = MTPHeads(model, s.n - 1, s.branch_layer)
        if s.unfreeze and self.heads.branch_layer != len(model.model.layers):
            raise AccbenchError("train mtp: unfreeze needs the default branch point (the final hidden state)")
        self.config = {"model": job.model_name, "n": s.n, "branch_layer": self.heads.branch_layer, "init": s.init,
                       "unfreeze": s.unfreeze, "targets": job.targets, "steps": s.steps, "batch_size": s.batch,
                       "seq_len": s.seq_len, "lr": s.lr, "warmup": s.warmup,
                       "windows": None if s.unfreeze else s.windows, "loss_vocab": s.loss_vocab,
                       "documents": documents_hash(job.documents), "seed": job.seed,
                       "dtype": str(next(model.parameters()).dtype)}
        self.final = job.artifacts.dir_for("mtp", self.config)
        # the trunk's states depend on less than the heads do: reuse them across step / lr changes
        feat_key = {k: self.config[k] for k in ("model", "branch_layer", "targets", "seq_len", "windows",
                                                "documents", "seed", "dtype")}
        self.fpath = self.final.parent / f"features-{config_hash(feat_key)}.safetensors"
        if job.restart:
            shutil.rmtree(work_dir(self.final), ignore_errors=True)
        chunks = token_chunks(job.tokenizer, job.documents, s.seq_len)
        self.train, held = split_held_out(chunks, seed=job.seed)
        self.held = held[: s.eval_chunks]
        random.Random(job.seed).shuffle(self.train)
        if not s.unfreeze:
            self.train = self.train[: s.windows]
        job.log(f"{len(job.documents)} documents -> {len(self.train)} training / {len(self.held)} held-out windows "
                f"of <= {s.seq_len} tokens; {s.n - 1} extra heads ({self.heads.layer_class}) branching after layer "
                f"{self.heads.branch_layer}; targets: {job.targets}; backbone "
                f"{'trainable' if s.unfreeze else 'frozen'}")
        self.teacher = self._prepare(model)
        self.feats: dict[str, torch.Tensor] | None = None
        self.w_sub: torch.Tensor | None = None
        self.remap: torch.Tensor | None = None

    def _prepare(self, model):
        """Gradients where they are trained; with ``unfreeze`` and self-distillation, the frozen
        copy of the original model that gives the targets."""
        teacher = None
        if self.s.unfreeze and self.job.targets == "self":
            teacher = copy.deepcopy(model).eval().requires_grad_(False)
        model.requires_grad_(self.s.unfreeze)
        if self.s.unfreeze:
            model.train()
        self.heads.init_from_backbone(model, self.s.init, seed=self.job.seed)
        self.heads.train()
        return teacher

    def optimizer(self) -> torch.optim.Optimizer:
        groups = [{"params": list(self.heads.parameters()), "lr": self.s.lr}]
        if self.s.unfreeze:
            groups.append({"params": [p for p in self.job.model.parameters() if p.requires_grad], "lr": self.s.lr / 4})
        return torch.optim.AdamW(groups, weight_decay=0.0)

    def checkpoint(self) -> Checkpoint:
        model, unfreeze = self.job.model, self.s.unfreeze

        def weights() -> dict[str, torch.Tensor]:
            out = {f"heads.{k}": v for k, v in self.heads.state_dict().items() if not k.startswith("rotary.")}
            if unfreeze:  # tied embeddings are stored once
                out.update({f"model.{k}": v for k, v in model.state_dict().items()
                            if k != "lm_head.weight" or not model.config.tie_word_embeddings})
            return out

        def restore(t: dict[str, torch.Tensor]) -> None:
            self.heads.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("heads.")}, strict=False)
            if unfreeze:
                model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")}, strict=False)
        return Checkpoint(self.final, "heads", weights, restore)

    @torch.no_grad()
    def trunk_features(self, cap: BranchCapture) -> None:
        """Frozen backbone: its branch-point states and argmax over the training windows,
        computed once (and kept next to the artifact until it is finished)."""
        from safetensors.torch import load_file

        job, train, batch = self.job, self.train, self.s.batch
        if self.fpath.exists():
            self.feats = load_file(str(self.fpath))
            job.log(f"trunk features from the checkpoint ({self.feats['ids'].shape[0]} windows)")
        else:
            ids_all, valid_all = _pad(train, self.pad_id, "cpu")
            hs, ts = [], []
            with ProgressLog("trunk states + targets", len(train), job.log, job.console) as progress:
                for s in range(0, len(train), batch):
                    ids = ids_all[s : s + batch].to(job.device)
                    ts.append(job.model(input_ids=ids).logits.argmax(-1).cpu())
                    hs.append(cap.h.detach().cpu())
                    progress.update(s + ids.shape[0])
            self.feats = {"ids": ids_all, "valid": valid_all, "h": torch.cat(hs), "teacher": torch.cat(ts)}
            save_atomic(self.feats, self.fpath)
        if self.s.loss_vocab == "seen":
            f = self.feats
            seen = f["teacher"][f["valid"]] if job.targets == "self" else f["ids"][f["valid"]]
            sub = torch.unique(torch.cat([seen, f["teacher"][f["valid"]]]))
            weight = job.model.get_output_embeddings().weight
            self.w_sub = weight[sub.to(job.device)].detach()
            self.remap = torch.full((weight.shape[0],), -100, dtype=torch.long)
            self.remap[sub] = torch.arange(len(sub))
            self.remap = self.remap.to(job.device)
            job.log(f"loss over the {len(sub)} tokens that occur as targets (loss_vocab=seen)")

    def step_fn(self, cap: BranchCapture) -> Callable[[int], dict[str, Any]]:
        """One step: every extra head's loss on one batch of windows, backward head by head."""
        job, model, s = self.job, self.job.model, self.s
        order = _batches(len(self.train), s.batch, s.steps, job.seed)

        def step(i: int) -> dict[str, Any]:
            ids, valid, h, h_graph, tself = self._batch(order[i], cap)
            T = ids.shape[1]
            pos = torch.arange(T, device=job.device)
            losses, accs = [], []
            if s.unfreeze:  # head 1: the model's own next-token loss
                tg = _targets(ids, valid, tself, 0)
                F.cross_entropy(_logits(model, h, None).flatten(0, 1).float(), tg.flatten(), ignore_index=-100).backward()
            for j in range(s.n - 1):
                lg = _logits(model, self.heads(h, pos, only=j)[0][:, : T - j - 1], self.w_sub)
                tg = _targets(ids, valid, tself, j + 1)
                if self.remap is not None:
                    tg = torch.where(tg >= 0, self.remap[tg.clamp_min(0)], tg)
                loss = F.cross_entropy(lg.flatten(0, 1).float(), tg.flatten(), ignore_index=-100)
                loss.backward()
                with torch.no_grad():
                    ok = tg != -100
                    accs.append(float(((lg.argmax(-1) == tg) & ok).sum()) / max(1, int(ok.sum())))
                losses.append(float(loss.detach()))
                del lg
            if s.unfreeze:
                h_graph.backward(h.grad)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            torch.nn.utils.clip_grad_norm_(self.heads.parameters(), 1.0)
            return {"loss": sum(losses), "head_loss": losses, "acc": accs}
        return step

    def _batch(self, idx: list[int], cap: BranchCapture):
        """(ids, valid, trunk states h, the graph h came from or None, self-distilled targets)."""
        job, f = self.job, self.feats
        if f is not None:
            tself = f["teacher"][idx].to(job.device) if job.targets == "self" else None
            return f["ids"][idx].to(job.device), f["valid"][idx].to(job.device), f["h"][idx].to(job.device), None, tself
        ids, valid = _pad([self.train[i] for i in idx], self.pad_id, job.device)
        tself = None
        if job.targets == "self":
            with torch.no_grad():
                tself = self.teacher(input_ids=ids).logits.argmax(-1)
        job.model.model(input_ids=ids)
        h_graph = cap.h
        return ids, valid, h_graph.detach().requires_grad_(True), h_graph, tself

    def finish(self, run: Trained) -> Path:
        """Held-out accuracies, then the artifact (committed; the default unless fine-tuned)."""
        job, model, final, f = self.job, self.job.model, self.final, self.feats
        done = run.history[-1]["step"] if run.history else run.start
        self.heads.eval()
        job.log(f"scoring {len(self.held)} held-out windows")
        ev = evaluate_heads(model, self.heads, self.held, targets=job.targets, pad_id=self.pad_id, teacher=self.teacher)
        tmp = final.parent / f".tmp-{final.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        info = {"model": job.model_name, "config": self.config, "steps_done": done,
                "stopped_early": run.stopped_early, "train_s_this_run": round(time.perf_counter() - self.t0, 1),
                "held_out": ev, "final_loss": run.history[-1]["head_loss"] if run.history else None}
        if self.s.unfreeze:
            model.save_pretrained(str(tmp))
            job.tokenizer.save_pretrained(str(tmp))
        # the draft vocabulary: every token that occurred as a target
        vocab = None if f is None else torch.unique(torch.cat([f["teacher"][f["valid"]], f["ids"][f["valid"]]]))
        self.heads.save(tmp, draft_vocab=vocab, **info)
        job.artifacts.commit(tmp, final)
        if not run.stopped_early:
            shutil.rmtree(work_dir(final), ignore_errors=True)
            self.fpath.unlink(missing_ok=True)
        if not self.s.unfreeze:
            job.artifacts.set_default("mtp", final, steps=done, targets=job.targets)
        accs = ", ".join(f"head {i + 1}: {a:.3f}" for i, a in enumerate(ev["head_acc"]))
        job.log(f"MTP heads for {job.model_name}: {done} steps, {info['train_s_this_run'] / 60:.1f} min this run")
        job.log(f"held-out top-1 vs {job.targets} targets: {accs}; heads 2..k all right: "
                + ", ".join(f"{a:.3f}" for a in ev["chain_acc"]))
        job.log(f"fine-tuned model + heads: run with --model {final}" if self.s.unfreeze
                else f"saved to {final} (the default for {job.model_name})")
        return final


def train_mtp(job: TrainJob) -> Path:
    """Train MTP heads (``-o unfreeze=true``: and the backbone) for ``job.model``; the artifact."""
    t = _Training(job)
    cap = BranchCapture(job.model, t.heads.branch_layer)
    try:
        if not t.s.unfreeze:
            t.trunk_features(cap)
        deadline = t.t0 + 60 * t.s.max_minutes if t.s.max_minutes else 0.0
        run = train_steps("MTP heads", t.s.steps, t.optimizer(), t.step_fn(cap), t.checkpoint(), warmup=t.s.warmup,
                          log=job.log, console=job.console, ckpt_every=t.s.ckpt_every, deadline=deadline)
    finally:
        cap.remove()
        job.model.eval().requires_grad_(False)
    if run.stopped_early:
        job.log("committing the heads trained so far")
    return t.finish(run)
