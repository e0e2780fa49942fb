"""`accbench train medusa1|medusa2`: train Medusa heads (and, for Medusa-2, a LoRA delta of
the backbone) on text from never-evaluated splits.

Data. Documents (MBPP 601-974, CNN/DM 500-999, user files) are split by document into
training and held-out sets (4% held out, deterministic). The backbone runs once over the
chosen chunks; its final hidden states (float16), its own argmax at every position and the
token ids are cached (``<cache>/artifacts/<model>/medusa-data/<hash>/``, in parts, so an
interrupted pass resumes). Medusa-1 then trains its heads on the cached states only: the
frozen backbone never runs again. Medusa-2 reuses the same cache as its teacher.

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
steps and on Ctrl-C; rerunning the same command resumes there (``--restart`` discards it).
The final artifact (heads.safetensors, config.json with per-head held-out accuracies and
the rank statistics the tree tuner uses) is written atomically and made the default.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from accbench.training.artifacts import artifact_dir, commit_dir, config_hash, method_dir, set_default
from accbench.errors import AccbenchError
from accbench.training.train_data import token_chunks

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


class TrainingStopped(KeyboardInterrupt):
    """Raised after ``stop_after`` steps (a checkpoint has been written), like Ctrl-C."""


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


def _files_sig(files: list[str]) -> list:
    sig = []
    for f in files:
        st = os.stat(f)
        sig.append([str(Path(f).resolve()), st.st_size, int(st.st_mtime)])
    return sig


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
    from accbench.methods.core.tree import logits_from_hidden

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


def build_features(lm, req, opts: dict, seq_len: int, console: Console) -> tuple[FeatureCache, FeatureCache, Path]:
    """Run the backbone once over the training and held-out chunks (resumable, in parts)."""
    from safetensors.torch import load_file, save_file

    docs = req.documents()
    train_docs, held_docs = split_documents(docs, req.seed)
    key = {"model": lm.name, "seq_len": seq_len, "sources": sorted(req.sources), "files": _files_sig(req.text_files),
           "seed": req.seed, "data_tokens": int(opts["data_tokens"]), "held_tokens": int(opts["held_tokens"]),
           "dtype": str(lm.dtype), "n_docs": len(docs), "held_frac": HELD_FRAC, "format": 1}
    root = method_dir(lm.name, "medusa-data") / config_hash(key)
    root.mkdir(parents=True, exist_ok=True)
    (root / "key.json").write_text(json.dumps(key, indent=2))
    out = []
    for split, sdocs, budget in (("train", train_docs, int(opts["data_tokens"])),
                                 ("held", held_docs, int(opts["held_tokens"]))):
        chunks = _take(token_chunks(lm.tokenizer, sdocs, seq_len), budget, req.seed + (split == "held"))
        if not chunks:
            raise AccbenchError(f"no {split} text long enough for training")
        chunks.sort(key=len)
        per_part = max(1, 2048 // seq_len)
        parts = [chunks[i : i + per_part] for i in range(0, len(chunks), per_part)]
        todo = [i for i in range(len(parts)) if not (root / f"{split}-{i:05d}.safetensors").exists()]
        if todo:
            with _progress(console) as prog:
                done = sum(len(c) for i, p in enumerate(parts) if i not in todo for c in p)
                task = prog.add_task(f"backbone pass ({split})", total=sum(len(c) for c in chunks),
                                     completed=done, info="")
                t0, n_done = time.perf_counter(), 0
                for i in todo:
                    tensors = _encode_part(lm.model, parts[i], lm.device)
                    tmp = root / f".{split}-{i:05d}.tmp"
                    save_file(tensors, str(tmp))
                    os.replace(tmp, root / f"{split}-{i:05d}.safetensors")
                    n_done += tensors["tokens"].numel()
                    prog.update(task, advance=tensors["tokens"].numel(),
                                info=f"{n_done / (time.perf_counter() - t0):.0f} tok/s")
                    prog.refresh()
        loaded = [load_file(str(root / f"{split}-{i:05d}.safetensors")) for i in range(len(parts))]
        out.append(FeatureCache(torch.cat([p["hidden"] for p in loaded]), torch.cat([p["tokens"] for p in loaded]),
                                torch.cat([p["argmax"] for p in loaded]),
                                [int(x) for p in loaded for x in p["lengths"]]))
    return out[0], out[1], root


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
                    auto_refresh=False, transient=False)


# --------------------------------------------------------------------------------------
# optimizer state <-> safetensors
# --------------------------------------------------------------------------------------


def save_optimizer(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    sd = opt.state_dict()
    out = {}
    for i, st in sd["state"].items():
        for k, v in st.items():
            out[f"opt.{i}.{k}"] = (v if isinstance(v, torch.Tensor) else torch.tensor(v)).detach().cpu().contiguous()
    return out


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, v in tensors.items():
        if name.startswith("opt."):
            _, i, k = name.split(".", 2)
            state.setdefault(int(i), {})[k] = v
    sd["state"] = state
    opt.load_state_dict(sd)


def _lr_at(step: int, total: int, base: float, warmup_frac: float) -> float:
    warm = max(1, int(total * warmup_frac))
    if step < warm:
        return base * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


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
        h = hidden[s : s + batch].float()
        t = targets_sub[s : s + batch]
        m = full[s : s + batch]
        if not bool(m.any()):
            continue
        h, t = h[m], t[m]
        lg = heads.logits(h.to(lm_w.dtype), lm_w, lm_b).float()  # [M, K, Vs]
        tt = t.clamp_min(0)
        tl = lg.gather(-1, tt[..., None])[..., 0]
        rank = (lg > tl[..., None]).sum(-1)  # [M, K]
        rank[t < 0] = 10**6  # target outside the heads' vocabulary: never drafted
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


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------


def _opt_int(opts, k):
    return int(opts[k])


def train_medusa(method: str, req, console: Console) -> Path:
    from accbench.methods.medusa import (
        CONFIG_FILE,
        DELTA_FILE,
        HEADS_FILE,
        MedusaHeads,
        add_lora,
        lm_head_sub,
        lora_delta,
    )
    from accbench.models import load_model
    from safetensors.torch import load_file, save_file

    if method not in DEFAULTS:
        raise AccbenchError(f"unknown Medusa variant {method!r}")
    unknown = set(req.options) - set(OPTION_DEFAULTS)
    if unknown:
        raise AccbenchError(f"train {method}: unknown option(s) {sorted(unknown)}; valid: {', '.join(OPTION_DEFAULTS)}")
    opts = {**OPTION_DEFAULTS, **req.options}
    d = DEFAULTS[method]
    steps = int(req.steps if req.steps is not None else d["steps"])
    batch = int(req.batch_size if req.batch_size is not None else d["batch_size"])
    lr = float(req.lr if req.lr is not None else d["lr"])
    seq_len = int(req.seq_len if req.seq_len is not None else d["seq_len"])
    if steps < 1 or batch < 1 or lr <= 0 or seq_len < 16:
        raise AccbenchError("train: --steps and --batch-size must be >= 1, --lr > 0, --seq-len >= 16")
    num_heads = _opt_int(opts, "num_heads")
    t_start = time.perf_counter()

    console.print(f"[bold]{method}[/bold] for {req.model}: loading the model")
    lm = load_model(req.model, dtype=req.dtype, device=req.device)
    model = lm.model
    device = lm.device
    lm_weight = model.get_output_embeddings().weight
    vocab_size, hidden_size = lm_weight.shape

    train_fc, held_fc, data_root = build_features(lm, req, opts, seq_len, console)
    console.print(f"training text: {len(train_fc)} tokens cached ({len(train_fc.lengths)} chunks), "
                  f"held-out: {len(held_fc)} tokens (cache: {data_root})")

    # heads' vocabulary: the most frequent targets on the training text
    tgt_all = train_fc.targets(num_heads, req.targets)  # [N, K+1]
    n_vocab = int(opts["head_vocab"])
    if 0 < n_vocab < vocab_size:
        freq = torch.bincount(tgt_all[tgt_all >= 0], minlength=vocab_size)
        order = torch.argsort(freq, descending=True, stable=True)
        vocab_ids = order[:n_vocab].sort().values
        covered = float(freq[vocab_ids].sum()) / max(1, int(freq.sum()))
        console.print(f"heads score {n_vocab} of {vocab_size} tokens ({covered:.1%} of training targets)")
    else:
        vocab_ids = torch.arange(vocab_size)
    lut = _sub_lookup(vocab_ids, vocab_size)
    tgt_sub = lut[tgt_all[:, 1:].clamp_min(-1)]  # -1 -> lut[-1] = -100
    tgt_sub[tgt_all[:, 1:] < 0] = -100

    heads_cfg_key = {"num_heads": num_heads, "num_layers": _opt_int(opts, "num_layers"),
                     "own_proj": bool(opts["own_proj"]), "head_vocab": n_vocab}
    config = {"method": method, "model": req.model, "steps": steps, "batch_size": batch, "lr": lr,
              "seq_len": seq_len, "targets": req.targets, "seed": req.seed, "data": data_root.name,
              "dtype": str(lm.dtype), **heads_cfg_key}
    if method == "medusa2":
        config.update({k: opts[k] for k in ("stage1_steps", "lora_rank", "lora_alpha", "stage2_seq_len",
                                            "head_lr_mult", "head_loss_weight")})
    final = artifact_dir(req.model, method, config)
    work = final.with_name(final.name + ".work")
    if req.restart and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)

    heads = MedusaHeads(hidden_size, vocab_size, num_heads, _opt_int(opts, "num_layers"), bool(opts["own_proj"]),
                        vocab_ids)
    heads.init_proj_from(lm_weight.detach().float().cpu())
    heads.to(device=device, dtype=torch.float32)
    lm_w, lm_b = lm_head_sub(model, heads.vocab_ids)
    lm_w = lm_w.float()
    lm_b = lm_b.float() if lm_b is not None else None
    hidden_train = train_fc.hidden
    stop_after = _opt_int(opts, "stop_after")
    ckpt_every = max(1, _opt_int(opts, "ckpt_every"))
    info: dict[str, Any] = {"resumed_from": {}, "steps_run": {}}

    def run_stage(stage: str, total: int, params_groups, step_fn, extra_state=None) -> None:
        """Generic resumable loop: ``step_fn(step) -> (loss, correct[K], valid[K], tokens)``."""
        ck = work / f"{stage}.safetensors"
        meta_p = work / f"{stage}.json"
        opt = torch.optim.AdamW(params_groups, weight_decay=0.0)
        start = 0
        if meta_p.exists() and ck.exists():
            meta = json.loads(meta_p.read_text())
            tensors = load_file(str(ck))
            heads.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("heads.")})
            if extra_state is not None:
                extra_state["load"]({k[6:]: v for k, v in tensors.items() if k.startswith("extra.")})
            load_optimizer(opt, tensors)
            start = int(meta["step"])
            console.print(f"resuming {stage} from step {start}/{total} ({ck})")
        info["resumed_from"][stage] = start
        base_lrs = [g["lr"] for g in opt.param_groups]

        def save(step: int) -> None:
            tensors = {f"heads.{k}": v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}
            if extra_state is not None:
                tensors.update({f"extra.{k}": v for k, v in extra_state["save"]().items()})
            tensors.update(save_optimizer(opt))
            tmp = ck.with_suffix(".tmp")
            save_file(tensors, str(tmp))
            os.replace(tmp, ck)
            meta_p.write_text(json.dumps({"step": step, "total": total, "config": config}))

        if start >= total:
            info["steps_run"][stage] = 0
            return
        ema_loss, ema_acc = None, [None] * num_heads
        t0, toks = time.perf_counter(), 0
        step = start
        ran = 0
        with _progress(console) as prog:
            task = prog.add_task(f"{stage}", total=total, completed=start, info="")
            try:
                for step in range(start, total):
                    for g, b in zip(opt.param_groups, base_lrs):
                        g["lr"] = _lr_at(step, total, b, float(opts["warmup_frac"]))
                    loss, correct, valid, ntok = step_fn(step)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    ran += 1
                    toks += ntok
                    lv = float(loss.detach())
                    ema_loss = lv if ema_loss is None else 0.9 * ema_loss + 0.1 * lv
                    for k in range(num_heads):
                        if valid[k]:
                            a = correct[k] / valid[k]
                            ema_acc[k] = a if ema_acc[k] is None else 0.9 * ema_acc[k] + 0.1 * a
                    accs = " ".join(f"{a:.2f}" if a is not None else "-" for a in ema_acc)
                    prog.update(task, completed=step + 1,
                                info=f"loss {ema_loss:.3f}  top-1 {accs}  {toks / (time.perf_counter() - t0):.0f} tok/s")
                    prog.refresh()
                    info.setdefault("losses", {}).setdefault(stage, []).append(lv)
                    if (step + 1) % ckpt_every == 0 or step + 1 == total:
                        save(step + 1)
                    if stop_after and ran >= stop_after and step + 1 < total:
                        raise TrainingStopped()
            except KeyboardInterrupt:
                save(start + ran)
                info["steps_run"][stage] = ran
                raise
        info["steps_run"][stage] = ran

    def heads_step_fn(total_tokens: int):
        n = len(train_fc)

        def fn(step: int):
            g = torch.Generator().manual_seed(req.seed * 1_000_003 + step)
            idx = torch.randint(0, n, (total_tokens,), generator=g)
            h = hidden_train[idx].to(device=device, dtype=torch.float32)
            t = tgt_sub[idx].to(device)
            loss, correct, valid = head_losses(heads.logits(h, lm_w, lm_b), t)
            return loss, correct, valid, total_tokens
        return fn

    heads_params = [p for p in heads.parameters() if p.requires_grad]
    if method == "medusa1":
        run_stage("heads", steps, [{"params": heads_params, "lr": lr}], heads_step_fn(batch))
        delta = None
    else:
        stage1 = _opt_int(opts, "stage1_steps")
        reused = _reuse_medusa1(req.model, heads, config, console) if opts["reuse_medusa1"] else None
        if reused is None and stage1 > 0:
            run_stage("stage1-heads", stage1, [{"params": heads_params, "lr": 1e-3}], heads_step_fn(256))
        info["stage1_from"] = str(reused) if reused else "trained"
        # stage 2: LoRA backbone + heads, jointly
        model.requires_grad_(False)
        loras = add_lora(model, _opt_int(opts, "lora_rank"), float(opts["lora_alpha"]))
        lora_params = [p for m in loras.values() for p in (m.lora_a, m.lora_b)]
        for p in lora_params:
            p.requires_grad_(True)
        model.train()
        seq2 = _opt_int(opts, "stage2_seq_len")
        hw = float(opts["head_loss_weight"])
        lengths = torch.tensor(train_fc.lengths)
        starts = train_fc.starts
        kind = req.targets
        full_w = lm_weight.detach()

        def joint_fn(step: int):
            g = torch.Generator().manual_seed(req.seed * 1_000_003 + 7919 + step)
            ci = torch.randint(0, len(lengths), (batch,), generator=g)
            rows = []
            for c in ci.tolist():
                ln = int(lengths[c])
                w = min(seq2, ln)
                off = int(torch.randint(0, ln - w + 1, (1,), generator=g))
                rows.append((int(starts[c]) + off, w))
            w = min(r[1] for r in rows)
            pos = torch.stack([torch.arange(s, s + w) for s, _ in rows])  # [B, w]
            ids = train_fc.tokens[pos].long().to(device)
            hs = model.model(input_ids=ids, use_cache=False).last_hidden_state  # [B, w, H]
            logits = hs @ full_w.t()
            if kind == "self":
                with torch.no_grad():
                    teacher = train_fc.hidden[pos].to(device=device, dtype=torch.float32) @ full_w.float().t()
                    p_t = torch.log_softmax(teacher, -1)
                lm_loss = torch.nn.functional.kl_div(torch.log_softmax(logits.float(), -1), p_t, log_target=True,
                                                     reduction="batchmean") / w
            else:
                tgt = tgt_all[pos, 0].to(device)
                lm_loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tgt.flatten(),
                                                            ignore_index=-1)
            hl = heads.logits(hs.float().flatten(0, 1), lm_w, lm_b)
            hloss, correct, valid = head_losses(hl, tgt_sub[pos.flatten()].to(device))
            return lm_loss + hw * hloss, correct, valid, batch * w

        extra = {"save": lambda: lora_delta(loras),
                 "load": lambda t: _load_lora(loras, t)}
        run_stage("stage2-joint", steps, [{"params": lora_params, "lr": lr},
                                          {"params": heads_params, "lr": lr * float(opts["head_lr_mult"])}],
                  joint_fn, extra)
        model.eval()
        delta = lora_delta(loras)
        _unwrap_lora(model, loras)  # the merged-at-load delta is the artifact; undo in memory

    # held-out evaluation and the artifact
    heads.eval()
    ev_hidden = held_fc.hidden
    if delta is not None:  # medusa2 heads read its own backbone's states: recompute them
        ev_hidden = _medusa2_hidden(lm, held_fc, delta)
    stats = evaluate_heads(heads, ev_hidden, eval_targets(held_fc, num_heads, req.targets, lut), lm_w, lm_b)
    train_s = time.perf_counter() - t_start
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}, str(tmp / HEADS_FILE))
    if delta is not None:
        save_file(delta, str(tmp / DELTA_FILE))
    cfg_out = {"method": method, "model": req.model, "heads": heads.config(), "train": config,
               "stats": stats, "train_s": train_s, "data_tokens": len(train_fc), "held_tokens": len(held_fc),
               "resumed_from": info["resumed_from"], "steps_run": info["steps_run"],
               "stage1_from": info.get("stage1_from"), "losses": info.get("losses", {}),
               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (tmp / CONFIG_FILE).write_text(json.dumps(cfg_out, indent=1))
    commit_dir(tmp, final)
    set_default(req.model, method, final, config_hash=config_hash(config))
    shutil.rmtree(work, ignore_errors=True)
    console.print(accuracy_table(f"{method} heads on {req.model}: held-out accuracy "
                                 f"({stats['positions']} positions, targets={req.targets})", stats))
    console.print(f"saved {final} (default for {req.model}); {train_s / 60:.1f} min")
    return final


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
def _medusa2_hidden(lm, held: FeatureCache, delta) -> torch.Tensor:
    import copy

    from accbench.methods.medusa import merge_delta

    m = copy.deepcopy(lm.model)
    merge_delta(m, delta)
    out = []
    for s, ln in zip(held.starts.tolist(), held.lengths):
        ids = held.tokens[s : s + ln].long()[None].to(lm.device)
        out.append(m.model(input_ids=ids).last_hidden_state[0].to(torch.float16).cpu())
    return torch.cat(out)


def _reuse_medusa1(model_name: str, heads, config: dict, console: Console) -> Path | None:
    """Stage 1 of Medusa-2 is the Medusa-1 recipe: reuse a medusa1 artifact with the same
    heads, data and targets when there is one."""
    from accbench.training.artifacts import get_default
    from accbench.methods.medusa import CONFIG_FILE, HEADS_FILE
    from safetensors.torch import load_file

    p = get_default(model_name, "medusa1")
    if p is None:
        return None
    cfg = json.loads((p / CONFIG_FILE).read_text())
    tr = cfg.get("train", {})
    same = all(tr.get(k) == config.get(k) for k in ("num_heads", "num_layers", "own_proj", "head_vocab", "targets",
                                                     "data", "seq_len", "dtype"))
    if not same:
        return None
    t = load_file(str(p / HEADS_FILE))
    if not torch.equal(t["vocab_ids"], heads.vocab_ids.cpu()):
        return None
    heads.load_state_dict(t)
    console.print(f"stage 1 (heads alone): reusing the medusa1 heads in {p}")
    return p
