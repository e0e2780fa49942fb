"""`accbench train medusa1|medusa2`: train Medusa heads (and, for Medusa-2, a LoRA delta of
the backbone) on the job's documents (never-evaluated splits and user text).

Data. Documents are split by document into training and held-out sets (4% held out,
deterministic). The backbone runs once over the chosen chunks; its final hidden states
(float16), its own argmax at every position and the token ids are cached
(``artifacts.folder("medusa-data")/<hash>/``, in parts, so an interrupted pass resumes).
Medusa-1 then trains its heads on the cached states only: the frozen backbone never runs
again. Medusa-2 reuses the same cache as its teacher.

Targets. ``self`` (default, self-distillation, teacher-forced): head k at position t learns
the backbone's own prediction for token t+k+1 (its argmax at t+k). ``ground-truth``: the
text's token t+k+1.

Recipes.
- medusa1: backbone frozen; loss sum_k 0.8^k CE_k; AdamW lr 1e-3, cosine, 10% warmup.
- medusa2: stage 1 trains the heads alone (the medusa1 recipe; when a medusa1 artifact with
  the same heads and data exists it is reused as stage 1); stage 2 trains LoRA adapters on
  every attention/MLP projection together with the heads (heads at 4x the backbone lr), loss
  KL(original || new) on the base logits (ground-truth targets: the LM loss) + 0.2 sum_k 0.8^k
  CE_k. The LoRA delta is saved (backbone_delta.safetensors) and merged at load time.

Checkpoints (heads, LoRA, optimizer, step) go to ``<artifact>.work/`` every ``ckpt_every``
steps and on Ctrl-C (``accbench.methods.training``); rerunning the same command resumes
there (``--restart`` discards it). The final artifact (heads.safetensors, config.json with
per-head held-out accuracies and the rank statistics the tree tuner uses) is committed
atomically and made the default.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch
from accbench.methods.core.errors import AccbenchError
from accbench.methods.core.jobs import TrainJob
from accbench.methods.core.quirks import logits_from_hidden
from accbench.methods.medusa import (
    CONFIG_FILE,
    DELTA_FILE,
    HEADS_FILE,
    MedusaHeads,
    add_lora,
    lm_head_sub,
    lora_delta,
    merge_delta,
)
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
from rich.table import Table

# Defaults sized for the packaged 135M-270M models on a 2-core CPU (medusa1 on smollm2-135m,
# idle machine: 13.4 min = 3:40 backbone pass over 160k tokens + 9:34 of head steps); a GPU
# run scales them with --steps / --batch-size / -o data_tokens.
# 40k tokens overfit (train top-1 0.37 vs held-out 0.22 for head 1), hence 160k.
DEFAULTS: dict[str, dict[str, Any]] = {
    "medusa1": {"steps": 2000, "batch_size": 512, "lr": 1e-3, "seq_len": 256},
    "medusa2": {"steps": 60, "batch_size": 2, "lr": 2.5e-4, "seq_len": 256},
}
OPTION_DEFAULTS: dict[str, Any] = {
    "num_heads": 4,
    "num_layers": 1,
    "own_proj": False,  # True: a vocab projection per head (initialised from lm_head)
    "head_vocab": 8192,  # heads score the N tokens the backbone predicts most often (0 = all)
    "data_tokens": 160000,  # training tokens run through the backbone once and cached
    "held_tokens": 4096,
    "ckpt_every": 50,
    "warmup_frac": 0.1,
    "stop_after": 0,  # testing aid: stop (as if interrupted) after this many steps of this run
    # medusa2
    "stage1_steps": 400,  # heads alone (skipped when a matching medusa1 artifact exists)
    "reuse_medusa1": True,
    "lora_rank": 16,
    "lora_alpha": 32,
    "stage2_seq_len": 128,
    "head_lr_mult": 4.0,
    "head_loss_weight": 0.2,
}
LAMBDA = 0.8
TOPK_STATS = 10
HELD_FRAC = 0.04


# --------------------------------------------------------------------------------------
# data: documents -> chunks -> cached backbone states
# --------------------------------------------------------------------------------------


def split_documents(docs: list[str], seed: int, frac: float = HELD_FRAC) -> tuple[list[str], list[str]]:
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_held = max(1, int(round(len(docs) * frac)))
    held = [docs[i] for i in sorted(order[:n_held])]
    train = [docs[i] for i in sorted(order[n_held:])]
    return train, held


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


class FeatureCache:
    """Cached backbone outputs for a list of chunks, flattened: ``hidden [N, H]`` (fp16),
    ``tokens [N]``, ``argmax [N]`` (the backbone's prediction at each position) and
    ``end [N]`` (index one past the last position of the chunk each position belongs to)."""

    def __init__(self, hidden, tokens, argmax, lengths):
        self.hidden, self.tokens, self.argmax = hidden, tokens, argmax
        self.lengths = lengths
        ends = torch.cumsum(torch.tensor(lengths, dtype=torch.long), 0)
        self.starts = ends - torch.tensor(lengths, dtype=torch.long)
        self.end = torch.repeat_interleave(ends, torch.tensor(lengths, dtype=torch.long))

    def __len__(self) -> int:
        return self.tokens.numel()

    def targets(self, num_heads: int, kind: str) -> torch.Tensor:
        """``[N, K + 1]``: column k is the target of head k at each position (k = 0: the base
        lm_head), -1 where it falls outside the chunk."""
        n = len(self)
        out = torch.full((n, num_heads + 1), -1, dtype=torch.long)
        idx = torch.arange(n)
        for k in range(num_heads + 1):
            if kind == "self":
                j = idx + k
                src = self.argmax
            else:
                j = idx + k + 1
                src = self.tokens
            ok = j < self.end
            out[ok, k] = src[j[ok]].long()
        return out


@torch.inference_mode()
def _encode_part(model, chunks: list[list[int]], device) -> dict[str, torch.Tensor]:
    lens = [len(c) for c in chunks]
    t = max(lens)
    ids = torch.zeros(len(chunks), t, dtype=torch.long)
    for i, c in enumerate(chunks):
        ids[i, : len(c)] = torch.tensor(c)
    # right padding: causal attention means real positions never see the padding
    hid = model.model(input_ids=ids.to(device)).last_hidden_state
    am = torch.cat([logits_from_hidden(model, hid[i : i + 1]).argmax(-1)[0] for i in range(len(chunks))]).view(len(chunks), t)
    hs, ts, ams = [], [], []
    for i, n in enumerate(lens):
        hs.append(hid[i, :n].to(torch.float16).cpu())
        ts.append(ids[i, :n].to(torch.int32))
        ams.append(am[i, :n].to(torch.int32).cpu())
    return {"hidden": torch.cat(hs), "tokens": torch.cat(ts), "argmax": torch.cat(ams),
            "lengths": torch.tensor(lens, dtype=torch.int64)}


def build_features(job: TrainJob, opts: dict, seq_len: int) -> tuple[FeatureCache, FeatureCache, Path]:
    """Run the backbone once over the training and held-out chunks (resumable, in parts)."""
    from safetensors.torch import load_file

    train_docs, held_docs = split_documents(job.documents, job.seed)
    key = {"model": job.model_name, "seq_len": seq_len, "documents": documents_hash(job.documents),
           "seed": job.seed, "data_tokens": int(opts["data_tokens"]), "held_tokens": int(opts["held_tokens"]),
           "dtype": str(job.dtype), "held_frac": HELD_FRAC, "format": 2}
    root = job.artifacts.folder("medusa-data") / config_hash(key)
    root.mkdir(parents=True, exist_ok=True)
    (root / "key.json").write_text(json.dumps(key, indent=2))
    out = []
    for split, docs, budget in (("train", train_docs, int(opts["data_tokens"])),
                                ("held", held_docs, int(opts["held_tokens"]))):
        chunks = _take(token_chunks(job.tokenizer, docs, seq_len), budget, job.seed + (split == "held"))
        if not chunks:
            raise AccbenchError(f"no {split} text long enough for training")
        chunks.sort(key=len)
        per_part = max(1, 2048 // seq_len)
        parts = [chunks[i : i + per_part] for i in range(0, len(chunks), per_part)]
        _encode_missing(job, root, split, parts)
        loaded = [load_file(str(root / f"{split}-{i:05d}.safetensors")) for i in range(len(parts))]
        out.append(FeatureCache(torch.cat([p["hidden"] for p in loaded]), torch.cat([p["tokens"] for p in loaded]),
                                torch.cat([p["argmax"] for p in loaded]),
                                [int(x) for p in loaded for x in p["lengths"]]))
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
# losses and evaluation
# --------------------------------------------------------------------------------------


def _sub_lookup(vocab_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    lut = torch.full((vocab_size + 1,), -100, dtype=torch.long)  # index -1 -> -100 (ignored)
    lut[vocab_ids] = torch.arange(vocab_ids.numel())
    return lut


def head_losses(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, list[float], list[int]]:
    """``logits [M, K, Vs]``, ``targets [M, K]`` (subset indices, -100 ignored) -> weighted loss
    sum_k 0.8^k CE_k, per-head top-1 correct counts, per-head valid counts."""
    k_heads = logits.shape[1]
    loss = logits.new_zeros(())
    correct, valid = [], []
    for k in range(k_heads):
        t = targets[:, k]
        ok = t != -100
        n = int(ok.sum())
        valid.append(n)
        if n == 0:
            correct.append(0.0)
            continue
        lk = logits[:, k]
        loss = loss + (LAMBDA ** (k + 1)) * torch.nn.functional.cross_entropy(lk.float(), t, ignore_index=-100)
        correct.append(float((lk.argmax(-1)[ok] == t[ok]).sum()))
    return loss, correct, valid


@torch.no_grad()
def evaluate_heads(heads, hidden: torch.Tensor, targets_sub: torch.Tensor, lm_w, lm_b, *, batch: int = 512) -> dict:
    """Held-out statistics: per-head rank distribution of the target (ranks < 10), top-1/top-5
    accuracy, and joint prefix counts of the rank tuples (heads 1..d) used to build trees."""
    k_heads = targets_sub.shape[1]
    full = (targets_sub != -2).all(1)  # positions where all heads have a target inside the chunk
    rank_hist = torch.zeros(k_heads, TOPK_STATS, dtype=torch.long)
    counts: dict[str, int] = {}
    n_pos = 0
    for s in range(0, hidden.shape[0], batch):
        m = full[s : s + batch]
        if not bool(m.any()):
            continue
        h = hidden[s : s + batch][m.to(hidden.device)].to(device=lm_w.device, dtype=lm_w.dtype)
        t = targets_sub[s : s + batch][m].to(lm_w.device)
        lg = heads.logits(h, lm_w, lm_b).float()  # [M, K, Vs]
        tl = lg.gather(-1, t.clamp_min(0)[..., None])[..., 0]
        rank = (lg > tl[..., None]).sum(-1)  # [M, K]
        rank[t < 0] = 10**6  # target outside the heads' vocabulary: never drafted
        rank = rank.cpu()
        n_pos += rank.shape[0]
        for k in range(k_heads):
            r = rank[:, k]
            rank_hist[k] += torch.bincount(r[r < TOPK_STATS], minlength=TOPK_STATS)[:TOPK_STATS]
        for row in rank.tolist():
            key = []
            for r in row:
                if r >= TOPK_STATS:
                    break
                key.append(str(r))
                kk = ",".join(key)
                counts[kk] = counts.get(kk, 0) + 1
    n = max(1, n_pos)
    topk_acc = (rank_hist.float() / n).tolist()
    return {"positions": n_pos, "topk_acc": topk_acc,
            "top1": [a[0] for a in topk_acc], "top5": [sum(a[:5]) for a in topk_acc], "prefix_counts": counts}


def eval_targets(held: FeatureCache, num_heads: int, kind: str, lut: torch.Tensor) -> torch.Tensor:
    """Held-out head targets as subset indices: -2 outside the chunk, -1 outside the vocab."""
    t = held.targets(num_heads, kind)[:, 1:]
    sub = lut[t.clamp_min(0)]
    sub[sub == -100] = -1
    sub[t < 0] = -2
    return sub


def accuracy_table(title: str, stats: dict) -> Table:
    tab = Table(title=title, title_justify="left")
    tab.add_column("head")
    tab.add_column("predicts")
    tab.add_column("top-1", justify="right")
    tab.add_column("top-5", justify="right")
    for k, (a1, a5) in enumerate(zip(stats["top1"], stats["top5"])):
        tab.add_row(str(k + 1), f"t+{k + 2}", f"{a1:.3f}", f"{a5:.3f}")
    return tab




def _head_metrics(loss: torch.Tensor, correct: list[float], valid: list[int]) -> dict[str, Any]:
    return {"loss": float(loss.detach()), "top1": [c / v if v else None for c, v in zip(correct, valid)]}


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------


def _settings(method: str, job: TrainJob) -> tuple[dict[str, Any], int, int, float, int]:
    """The options and (steps, batch size, lr, sequence length), the variant's defaults filled in."""
    if method not in DEFAULTS:
        raise AccbenchError(f"unknown Medusa variant {method!r}")
    unknown = set(job.options) - set(OPTION_DEFAULTS)
    if unknown:
        raise AccbenchError(f"train {method}: unknown option(s) {sorted(unknown)}; valid: {', '.join(OPTION_DEFAULTS)}")
    d = DEFAULTS[method]
    steps = int(job.steps if job.steps is not None else d["steps"])
    batch = int(job.batch_size if job.batch_size is not None else d["batch_size"])
    lr = float(job.lr if job.lr is not None else d["lr"])
    seq_len = int(job.seq_len if job.seq_len is not None else d["seq_len"])
    if steps < 1 or batch < 1 or lr <= 0 or seq_len < 16:
        raise AccbenchError("train: --steps and --batch-size must be >= 1, --lr > 0, --seq-len >= 16")
    return {**OPTION_DEFAULTS, **job.options}, steps, batch, lr, seq_len


def _head_vocab(train_fc: FeatureCache, num_heads: int, kind: str, n_vocab: int, vocab_size: int, log):
    """The heads' vocabulary (the ``n_vocab`` most frequent training targets, 0 = all), the
    lookup from token id to its index there, and the targets: ``[N, K+1]`` token ids (column
    0: the base lm_head's) and ``[N, K]`` vocabulary indices (-100: ignored)."""
    tgt_all = train_fc.targets(num_heads, kind)
    vocab_ids = torch.arange(vocab_size)
    if 0 < n_vocab < vocab_size:
        freq = torch.bincount(tgt_all[tgt_all >= 0], minlength=vocab_size)
        vocab_ids = torch.argsort(freq, descending=True, stable=True)[:n_vocab].sort().values
        covered = float(freq[vocab_ids].sum()) / max(1, int(freq.sum()))
        log(f"heads score {n_vocab} of {vocab_size} tokens ({covered:.1%} of training targets)")
    lut = _sub_lookup(vocab_ids, vocab_size)
    tgt_sub = lut[tgt_all[:, 1:].clamp_min(-1)]  # -1 -> lut[-1] = -100
    tgt_sub[tgt_all[:, 1:] < 0] = -100
    return vocab_ids, lut, tgt_all, tgt_sub


class _Training:
    """One run of ``accbench train medusa1|medusa2``: the cached data, the heads, the
    resumable stages and the artifact."""

    def __init__(self, method: str, job: TrainJob):
        self.method, self.job, self.t0 = method, job, time.perf_counter()
        self.opts, self.steps, self.batch, self.lr, seq_len = _settings(method, job)
        o, self.num_heads = self.opts, int(self.opts["num_heads"])
        self.lm_weight = job.model.get_output_embeddings().weight
        vocab_size, hidden_size = self.lm_weight.shape
        self.train_fc, self.held_fc, data_root = build_features(job, o, seq_len)
        job.log(f"training text: {len(self.train_fc)} tokens cached ({len(self.train_fc.lengths)} chunks), "
                f"held-out: {len(self.held_fc)} tokens (cache: {data_root})")
        self.vocab_ids, self.lut, self.tgt_all, self.tgt_sub = _head_vocab(
            self.train_fc, self.num_heads, job.targets, int(o["head_vocab"]), vocab_size, job.log)
        self.config = {"method": method, "model": job.model_name, "steps": self.steps, "batch_size": self.batch,
                       "lr": self.lr, "seq_len": seq_len, "targets": job.targets, "seed": job.seed,
                       "data": data_root.name, "dtype": str(job.dtype), "num_heads": self.num_heads,
                       "num_layers": int(o["num_layers"]), "own_proj": bool(o["own_proj"]),
                       "head_vocab": int(o["head_vocab"])}
        if method == "medusa2":
            self.config.update({k: o[k] for k in ("stage1_steps", "lora_rank", "lora_alpha", "stage2_seq_len",
                                                  "head_lr_mult", "head_loss_weight")})
        self.final = job.artifacts.dir_for(method, self.config)
        if job.restart:
            shutil.rmtree(work_dir(self.final), ignore_errors=True)
        self.heads = MedusaHeads(hidden_size, vocab_size, self.num_heads, int(o["num_layers"]), bool(o["own_proj"]),
                                 self.vocab_ids)
        self.heads.init_proj_from(self.lm_weight.detach().float().cpu())
        self.heads.to(device=job.device, dtype=torch.float32)
        lm_w, lm_b = lm_head_sub(job.model, self.heads.vocab_ids)
        self.lm_w, self.lm_b = lm_w.float(), (lm_b.float() if lm_b is not None else None)
        self.heads_params = [p for p in self.heads.parameters() if p.requires_grad]
        self.resumed_from: dict[str, int] = {}
        self.steps_run: dict[str, int] = {}
        self.losses: dict[str, list[float]] = {}
        self.stage1_from: str | None = None

    def stage(self, name: str, total: int, groups: list[dict], step: Callable[[int], dict],
              extra: tuple[Callable, Callable] | None = None) -> None:
        """A resumable stage; ``extra``: (weights, restore) of what trains besides the heads."""
        heads = self.heads

        def weights() -> dict[str, torch.Tensor]:
            out = {f"heads.{k}": v for k, v in heads.state_dict().items()}
            out.update({f"extra.{k}": v for k, v in (extra[0]() if extra else {}).items()})
            return out

        def restore(t: dict[str, torch.Tensor]) -> None:
            heads.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("heads.")})
            if extra:
                extra[1]({k[6:]: v for k, v in t.items() if k.startswith("extra.")})

        run = train_steps(name, total, torch.optim.AdamW(groups, weight_decay=0.0), step,
                          Checkpoint(self.final, name, weights, restore), warmup=float(self.opts["warmup_frac"]),
                          log=self.job.log, console=self.job.console, ckpt_every=max(1, int(self.opts["ckpt_every"])),
                          stop_after=int(self.opts["stop_after"]))
        self.resumed_from[name], self.steps_run[name] = run.start, run.steps_run
        self.losses[name] = [h["loss"] for h in run.history]

    def heads_step(self, tokens: int) -> Callable[[int], dict]:
        """Medusa-1's step: the heads' loss on ``tokens`` random cached positions."""
        n, job = len(self.train_fc), self.job

        def step(i: int) -> dict:
            g = torch.Generator().manual_seed(job.seed * 1_000_003 + i)
            idx = torch.randint(0, n, (tokens,), generator=g)
            h = self.train_fc.hidden[idx].to(device=job.device, dtype=torch.float32)
            loss, correct, valid = head_losses(self.heads.logits(h, self.lm_w, self.lm_b), self.tgt_sub[idx].to(job.device))
            loss.backward()
            return _head_metrics(loss, correct, valid)
        return step

    def medusa1(self) -> None:
        self.stage("heads", self.steps, [{"params": self.heads_params, "lr": self.lr}], self.heads_step(self.batch))

    def medusa2(self) -> dict[str, torch.Tensor]:
        """Stage 1 (the heads alone, or medusa1's), stage 2 (LoRA and heads); the LoRA delta.
        The model is left as it was: the delta is merged at load time."""
        o, model = self.opts, self.job.model
        reused = _reuse_medusa1(self.job, self.heads, self.config) if o["reuse_medusa1"] else None
        if reused is None and int(o["stage1_steps"]) > 0:
            self.stage("stage1-heads", int(o["stage1_steps"]), [{"params": self.heads_params, "lr": 1e-3}],
                       self.heads_step(256))
        self.stage1_from = str(reused) if reused else "trained"
        model.requires_grad_(False)
        loras = add_lora(model, int(o["lora_rank"]), float(o["lora_alpha"]))
        lora_params = [p for m in loras.values() for p in (m.lora_a, m.lora_b)]
        for p in lora_params:
            p.requires_grad_(True)
        model.train()
        try:
            self.stage("stage2-joint", self.steps,
                       [{"params": lora_params, "lr": self.lr},
                        {"params": self.heads_params, "lr": self.lr * float(o["head_lr_mult"])}],
                       self.joint_step(), (lambda: lora_delta(loras), lambda t: _load_lora(loras, t)))
            return lora_delta(loras)
        finally:
            model.eval()
            _unwrap_lora(model, loras)

    def joint_step(self) -> Callable[[int], dict]:
        """Medusa-2's stage-2 step: windows of the cached chunks through the LoRA backbone; its
        distance to the original (KL, or the LM loss on the text) plus the heads' weighted loss."""
        job, fc, model = self.job, self.train_fc, self.job.model
        seq2, hw = int(self.opts["stage2_seq_len"]), float(self.opts["head_loss_weight"])
        lengths, full_w, F = torch.tensor(fc.lengths), self.lm_weight.detach(), torch.nn.functional

        def step(i: int) -> dict:
            g = torch.Generator().manual_seed(job.seed * 1_000_003 + 7919 + i)
            rows = []
            for c in torch.randint(0, len(lengths), (self.batch,), generator=g).tolist():
                ln = int(lengths[c])
                w = min(seq2, ln)
                rows.append((int(fc.starts[c]) + int(torch.randint(0, ln - w + 1, (1,), generator=g)), w))
            w = min(r[1] for r in rows)
            pos = torch.stack([torch.arange(s, s + w) for s, _ in rows])  # [B, w]
            hs = model.model(input_ids=fc.tokens[pos].long().to(job.device), use_cache=False).last_hidden_state
            logits = hs @ full_w.t()
            if job.targets == "self":
                with torch.no_grad():
                    teacher = fc.hidden[pos].to(device=job.device, dtype=torch.float32) @ full_w.float().t()
                    p_t = torch.log_softmax(teacher, -1)
                lm_loss = F.kl_div(torch.log_softmax(logits.float(), -1), p_t, log_target=True,
                                   reduction="batchmean") / w
            else:
                lm_loss = F.cross_entropy(logits.float().flatten(0, 1), self.tgt_all[pos, 0].to(job.device).flatten(),
                                          ignore_index=-1)
            hl = self.heads.logits(hs.float().flatten(0, 1), self.lm_w, self.lm_b)
            hloss, correct, valid = head_losses(hl, self.tgt_sub[pos.flatten()].to(job.device))
            loss = lm_loss + hw * hloss
            loss.backward()
            return _head_metrics(loss, correct, valid)
        return step

    def finish(self, delta: dict[str, torch.Tensor] | None) -> Path:
        """Held-out accuracies, then the artifact, committed and made the default."""
        from safetensors.torch import save_file

        job, final = self.job, self.final
        self.heads.eval()
        hidden = self.held_fc.hidden if delta is None else _medusa2_hidden(job, self.held_fc, delta)
        stats = evaluate_heads(self.heads, hidden, eval_targets(self.held_fc, self.num_heads, job.targets, self.lut),
                               self.lm_w, self.lm_b)
        train_s = time.perf_counter() - self.t0
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.heads.state_dict().items()}, str(tmp / HEADS_FILE))
        if delta is not None:
            save_file(delta, str(tmp / DELTA_FILE))
        cfg_out = {"method": self.method, "model": job.model_name, "heads": self.heads.config(), "train": self.config,
                   "stats": stats, "train_s": train_s, "data_tokens": len(self.train_fc),
                   "held_tokens": len(self.held_fc), "resumed_from": self.resumed_from, "steps_run": self.steps_run,
                   "stage1_from": self.stage1_from, "losses": self.losses,
                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg_out, indent=1))
        job.artifacts.commit(tmp, final)
        job.artifacts.set_default(self.method, final, config_hash=config_hash(self.config))
        shutil.rmtree(work_dir(final), ignore_errors=True)
        title = (f"{self.method} heads on {job.model_name}: held-out accuracy ({stats['positions']} positions, "
                 f"targets={job.targets})")
        job.log(f"{title}: top-1 by head " + " ".join(f"{a:.3f}" for a in stats["top1"]))
        if job.console is not None:
            job.console.print(accuracy_table(title, stats))
        job.log(f"saved {final} (default for {job.model_name}); {train_s / 60:.1f} min")
        return final


def train_medusa(method: str, job: TrainJob) -> Path:
    """Train ``method``'s (medusa1 | medusa2) artifact for ``job.model``; its path."""
    run = _Training(method, job)
    if method == "medusa1":
        run.medusa1()
        return run.finish(None)
    return run.finish(run.medusa2())


def _load_lora(loras, tensors: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, m in loras.items():
            m.lora_a.copy_(tensors[f"{name}.lora_a"])
            m.lora_b.copy_(tensors[f"{name}.lora_b"])


def _unwrap_lora(root, loras) -> None:
    mods = dict(root.named_modules())
    for name, m in loras.items():
        parent_name, _, child = name.rpartition(".")
        setattr(mods[parent_name] if parent_name else root, child, m.base)


@torch.inference_mode()
def _medusa2_hidden(job: TrainJob, held: FeatureCache, delta) -> torch.Tensor:
    """Medusa-2's heads read its own backbone's states: recompute them with the delta merged."""
    m = copy.deepcopy(job.model)
    merge_delta(m, delta)
    out = []
    for s, ln in zip(held.starts.tolist(), held.lengths):
        ids = held.tokens[s : s + ln].long()[None].to(job.device)
        out.append(m.model(input_ids=ids).last_hidden_state[0].to(torch.float16).cpu())
    return torch.cat(out)


def _reuse_medusa1(job: TrainJob, heads: MedusaHeads, config: dict) -> Path | None:
    """Stage 1 of Medusa-2 is the Medusa-1 recipe: reuse a medusa1 artifact with the same
    heads, data and targets when there is one."""
    from safetensors.torch import load_file

    p = job.artifacts.default("medusa1")
    if p is None:
        return None
    tr = json.loads((p / CONFIG_FILE).read_text()).get("train", {})
    same = all(tr.get(k) == config.get(k) for k in ("num_heads", "num_layers", "own_proj", "head_vocab", "targets",
                                                     "data", "seq_len", "dtype"))
    if not same:
        return None
    t = load_file(str(p / HEADS_FILE))
    if not torch.equal(t["vocab_ids"], heads.vocab_ids.cpu()):
        return None
    heads.load_state_dict(t)
    job.log(f"stage 1 (heads alone): reusing the medusa1 heads in {p}")
    return p
