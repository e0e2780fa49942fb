"""Training MTP heads: ``accbench train mtp --model NAME``.

Data: the never-evaluated splits (``TrainRequest.documents()``: MBPP 601-974, CNN/DM 500-999,
plus user text), cut into ``seq_len`` windows, 5% held out for per-head accuracy.

Targets (``--targets``): ``self`` (default, self-distillation): head i at position t learns
the backbone's own teacher-forced argmax at position t+i-1, i.e. the token the backbone would
put at t+i, which is what verification accepts; ``ground-truth``: the text's token t+i.

Backbone frozen by default: the trunk runs without gradients once per batch, and the heads are
trained one after another (forward, shared norm + unembedding, cross-entropy, backward), so at
most one vocabulary-sized logit tensor is alive at a time (the paper's memory trick).
``-o unfreeze=true`` fine-tunes the backbone jointly (heads get 4x the backbone's learning
rate; head 1's loss is included; self-distilled targets then come from a frozen copy of the
original model): the artifact then holds a full model directory to run with ``--model DIR``.

Options (``-o KEY=VALUE``): ``n`` (total heads, default 4), ``branch_layer`` (default: the final
pre-norm state; negative counts from the end), ``init`` (copy | identity | random),
``unfreeze``, ``ckpt_every`` (steps), ``eval_chunks`` (held-out windows scored at the end),
``warmup`` (fraction of steps), ``max_minutes`` (stop early, keeping what is trained).

Checkpoints every ``ckpt_every`` steps and on Ctrl-C (heads, optimizer, step) next to the artifact; rerunning
the same command resumes from the last one (``--restart`` ignores it). The finished artifact is
committed atomically and made the default for the model.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from accbench.training.artifacts import artifact_dir, commit_dir, config_hash, set_default
from accbench.errors import AccbenchError
from accbench.training.train_data import split_held_out, token_chunks

# Sized for a 2-core CPU: on smollm2-135m 9.0 min in all (trunk pass over 1000 windows of 128
# tokens: 3:04). 80 windows / 80 steps, the first defaults, gave head-2 top-1 0.11: far too little.
DEFAULTS = {"steps": 500, "batch_size": 8, "seq_len": 128, "lr": 1e-3, "windows": 1000}


def _bool(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


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


def _save_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    from safetensors.torch import save_file

    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        meta["state"][str(pid)] = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
                meta["state"][str(pid)][k] = "tensor"
            else:
                meta["state"][str(pid)][k] = v
    save_file(tensors, str(path), metadata={"meta": json.dumps(meta)})


def _load_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["meta"])
    tensors = load_file(str(path))
    state = {}
    for pid, st in meta["state"].items():
        state[int(pid)] = {k: (tensors[f"{pid}.{k}"] if v == "tensor" else v) for k, v in st.items()}
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


@torch.no_grad()
def evaluate_heads(model, heads, chunks: list[list[int]], *, targets: str, pad_id: int, batch: int = 4,
                   teacher=None) -> dict:
    """Per-head top-1 accuracy on ``chunks`` (head 1 = the backbone itself, always 1.0 against
    self-distilled targets). Also the chance that heads 2..k are *all* right (what a k-draft
    chain needs) from positions where every target is defined."""
    from accbench.methods.mtp import BranchCapture, head_logits

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
    from accbench.methods.mtp import head_logits

    if w_sub is None:
        return head_logits(model, [x])
    lg = F.linear(model.model.norm(x), w_sub)
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(lg / cap) * cap if cap else lg


def train_mtp(req, console) -> Path:
    from accbench.methods.mtp import BranchCapture, MTPHeads
    from accbench.models import load_model
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from safetensors.torch import load_file, save_file

    o = dict(req.options)
    known = {"n", "branch_layer", "init", "unfreeze", "ckpt_every", "eval_chunks", "warmup", "max_minutes",
             "windows", "loss_vocab"}
    unknown = set(o) - known
    if unknown:
        raise AccbenchError(f"train mtp: unknown option(s) {sorted(unknown)}; valid: {sorted(known)}")
    n = int(o.get("n", 4))
    if n < 2:
        raise AccbenchError("train mtp: n must be at least 2 (head 1 is the model itself)")
    unfreeze = _bool(o.get("unfreeze", False))
    init = str(o.get("init", "copy"))
    steps = int(req.steps or DEFAULTS["steps"])
    batch = int(req.batch_size or DEFAULTS["batch_size"])
    seq_len = int(req.seq_len or DEFAULTS["seq_len"])
    lr = float(req.lr or (DEFAULTS["lr"] if not unfreeze else 2e-4))
    warmup = float(o.get("warmup", 0.1))
    ckpt_every = int(o.get("ckpt_every", max(10, steps // 10)))
    eval_chunks = int(o.get("eval_chunks", 24))
    max_minutes = float(o.get("max_minutes", 0) or 0)
    windows = int(o.get("windows", DEFAULTS["windows"]))
    loss_vocab = str(o.get("loss_vocab", "seen"))
    if loss_vocab not in ("seen", "full"):
        raise AccbenchError("train mtp: loss_vocab is 'seen' (tokens occurring as targets) or 'full'")
    if unfreeze:
        loss_vocab = "full"
    if steps < 1 or batch < 1 or seq_len < 8 or windows < 1:
        raise AccbenchError("train mtp: --steps, --batch-size and windows must be >= 1, --seq-len >= 8")

    console.print(f"[bold]MTP[/bold]: loading {req.model}")
    loaded = load_model(req.model, req.dtype, req.device)
    model, tok = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    heads = MTPHeads(model, n - 1, o.get("branch_layer"))
    if unfreeze and heads.branch_layer != len(model.model.layers):
        raise AccbenchError("train mtp: unfreeze needs the default branch point (the final hidden state)")

    config = {"model": loaded.name, "n": n, "branch_layer": heads.branch_layer, "init": init, "unfreeze": unfreeze,
              "targets": req.targets, "steps": steps, "batch_size": batch, "seq_len": seq_len, "lr": lr,
              "warmup": warmup, "windows": None if unfreeze else windows, "loss_vocab": loss_vocab,
              "sources": sorted(req.sources), "text_files": list(req.text_files), "seed": req.seed,
              "dtype": str(next(model.parameters()).dtype)}
    final = artifact_dir(loaded.name, "mtp", config)
    ckpt = final.parent / f"{final.name}.ckpt"
    # the trunk's states depend on less than the heads do: reuse them across step / lr changes
    feat_key = {k: config[k] for k in ("model", "branch_layer", "targets", "seq_len", "windows", "sources",
                                       "text_files", "seed", "dtype")}
    fpath = final.parent / f"features-{config_hash(feat_key)}.safetensors"
    if req.restart and ckpt.exists():
        shutil.rmtree(ckpt)

    docs = req.documents()
    chunks = token_chunks(tok, docs, seq_len)
    train, held = split_held_out(chunks, seed=req.seed)
    held = held[:eval_chunks]
    rng = random.Random(req.seed)
    rng.shuffle(train)
    if not unfreeze:
        train = train[:windows]
    console.print(f"{len(docs)} documents -> {len(train)} training / {len(held)} held-out windows of <= {seq_len} "
                  f"tokens; {n - 1} extra heads ({heads.layer_class}) branching after layer {heads.branch_layer}; "
                  f"targets: {req.targets}; backbone {'trainable' if unfreeze else 'frozen'}")

    teacher = None
    if unfreeze:
        if req.targets == "self":
            import copy

            teacher = copy.deepcopy(model).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        model.train()
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
    heads.init_from_backbone(model, init, seed=req.seed)
    heads.train()
    groups = [{"params": list(heads.parameters()), "lr": lr}]
    if unfreeze:
        groups.append({"params": [p for p in model.parameters() if p.requires_grad], "lr": lr / 4})
    for g_ in groups:
        g_["initial_lr"] = g_["lr"]
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    n_warm = max(1, int(steps * warmup))

    def lr_at(s: int) -> float:
        if s < n_warm:
            return (s + 1) / n_warm
        return 0.5 * (1 + math.cos(math.pi * (s - n_warm) / max(1, steps - n_warm)))

    start, history = 0, []
    if ckpt.exists() and (ckpt / "state.json").exists():
        st = json.loads((ckpt / "state.json").read_text())
        if st.get("config_hash") == config_hash(config) and (ckpt / "heads.safetensors").exists():
            heads.load_state_dict(load_file(str(ckpt / "heads.safetensors")), strict=False)
            if unfreeze:
                model.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=False)
            _load_optimizer(opt, ckpt / "optim.safetensors")
            start, history = int(st["step"]), st.get("history", [])
            console.print(f"resuming from step {start}/{steps} ({ckpt})")

    def save_ckpt(step: int) -> None:
        tmp = ckpt.parent / f".{ckpt.name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()
                   if not k.startswith("rotary.")}, str(tmp / "heads.safetensors"))
        if unfreeze:
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
                       if k != "lm_head.weight" or not model.config.tie_word_embeddings},
                      str(tmp / "model.safetensors"))
        _save_optimizer(opt, tmp / "optim.safetensors")
        (tmp / "state.json").write_text(json.dumps({"step": step, "config_hash": config_hash(config),
                                                    "config": config, "history": history}, default=str))
        if ckpt.exists():
            shutil.rmtree(ckpt)
        os.replace(tmp, ckpt)

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=console)
    t0 = time.perf_counter()
    cap = BranchCapture(model, heads.branch_layer)
    try:
        # ---- phase 1 (frozen backbone): the trunk's states and targets, computed once -----------
        feats = None
        if not unfreeze:
            if fpath.exists():
                feats = load_file(str(fpath))
                console.print(f"trunk features from the checkpoint ({feats['ids'].shape[0]} windows)")
            else:
                ids_all, valid_all = _pad(train, pad_id, "cpu")
                hs, ts = [], []
                with progress, torch.no_grad():
                    task = progress.add_task("trunk states + targets", total=len(train), info="")
                    for s in range(0, len(train), batch):
                        ids = ids_all[s : s + batch].to(device)
                        lg = model(input_ids=ids).logits
                        ts.append(lg.argmax(-1).cpu())
                        hs.append(cap.h.detach().cpu())
                        del lg
                        progress.update(task, advance=ids.shape[0])
                        if not console.is_terminal:
                            console.print(f"trunk states: {s + ids.shape[0]}/{len(train)} windows, "
                                          f"{time.perf_counter() - t0:.0f}s")
                feats = {"ids": ids_all, "valid": valid_all, "h": torch.cat(hs), "teacher": torch.cat(ts)}
                fpath.parent.mkdir(parents=True, exist_ok=True)
                tmpf = fpath.with_name(f".{fpath.name}.tmp")
                save_file({k: v.contiguous() for k, v in feats.items()}, str(tmpf))
                os.replace(tmpf, fpath)
        w_sub, remap = None, None
        if loss_vocab == "seen" and feats is not None:
            seen = feats["teacher"][feats["valid"]] if req.targets == "self" else feats["ids"][feats["valid"]]
            sub = torch.unique(torch.cat([seen, feats["teacher"][feats["valid"]]]))
            w_sub = model.get_output_embeddings().weight[sub.to(device)].detach()
            remap = torch.full((model.get_output_embeddings().weight.shape[0],), -100, dtype=torch.long)
            remap[sub] = torch.arange(len(sub))
            remap = remap.to(device)
            console.print(f"loss over the {len(sub)} tokens that occur as targets (loss_vocab=seen)")

        # ---- phase 2: the heads --------------------------------------------------------------
        order = _batches(len(train), batch, steps, req.seed)
        n_extra = n - 1
        stopped_early = False
        with progress:
            task = progress.add_task("training MTP heads", total=steps, completed=start, info="")
            try:
                for step in range(start, steps):
                    f = lr_at(step)
                    for g_ in opt.param_groups:
                        g_["lr"] = g_["initial_lr"] * f
                    idx = order[step]
                    if feats is not None:
                        ids, valid = feats["ids"][idx].to(device), feats["valid"][idx].to(device)
                        h = feats["h"][idx].to(device)
                        tself = feats["teacher"][idx].to(device) if req.targets == "self" else None
                    else:
                        ids, valid = _pad([train[i] for i in idx], pad_id, device)
                        tself = None
                        if req.targets == "self":
                            with torch.no_grad():
                                tself = teacher(input_ids=ids).logits.argmax(-1)
                        model.model(input_ids=ids)
                        h_graph = cap.h
                        h = h_graph.detach().requires_grad_(True)
                    T = ids.shape[1]
                    pos = torch.arange(T, device=device)
                    losses, accs = [], []
                    if unfreeze:  # head 1: the model's own next-token loss
                        tg = _targets(ids, valid, tself, 0)
                        lg = _logits(model, h, None)
                        F.cross_entropy(lg.flatten(0, 1).float(), tg.flatten(), ignore_index=-100).backward()
                        del lg
                    for j in range(n_extra):
                        d = j + 1
                        out = heads(h, pos, only=j)[0][:, : T - d]
                        lg = _logits(model, out, w_sub)
                        tg = _targets(ids, valid, tself, d)
                        if remap is not None:
                            tg = torch.where(tg >= 0, remap[tg.clamp_min(0)], tg)
                        loss = F.cross_entropy(lg.flatten(0, 1).float(), tg.flatten(), ignore_index=-100)
                        loss.backward()
                        with torch.no_grad():
                            ok = tg != -100
                            accs.append(float(((lg.argmax(-1) == tg) & ok).sum()) / max(1, int(ok.sum())))
                        losses.append(float(loss.detach()))
                        del lg, out
                    if unfreeze:
                        h_graph.backward(h.grad)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    torch.nn.utils.clip_grad_norm_(heads.parameters(), 1.0)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    history.append({"step": step + 1, "loss": losses, "acc": accs})
                    info = "loss " + " ".join(f"{x:.2f}" for x in losses) + " | acc " + " ".join(f"{a:.2f}" for a in accs)
                    progress.update(task, advance=1, info=info)
                    if not console.is_terminal and ((step + 1) % ckpt_every == 0 or step + 1 == steps):
                        console.print(f"step {step + 1}/{steps} {time.perf_counter() - t0:.0f}s {info}")
                    if (step + 1) % ckpt_every == 0 and step + 1 < steps:
                        save_ckpt(step + 1)
                    if max_minutes and (time.perf_counter() - t0) > 60 * max_minutes and step + 1 < steps:
                        save_ckpt(step + 1)
                        stopped_early = True
                        console.print(f"[yellow]stopping after {max_minutes} min at step {step + 1}/{steps}; the "
                                      "checkpoint is kept (rerun to continue); committing the heads trained so far[/yellow]")
                        break
            except KeyboardInterrupt:  # Ctrl-C: keep every finished step, then stop as asked
                done = history[-1]["step"] if history else start
                if done > start:
                    save_ckpt(done)
                console.print(f"[yellow]interrupted at step {done}/{steps}; checkpoint kept ({ckpt}): rerun the "
                              "same command to resume[/yellow]")
                raise
    finally:
        cap.remove()
    train_s = time.perf_counter() - t0
    done_steps = history[-1]["step"] if history else start

    model.eval()
    heads.eval()
    console.print(f"scoring {len(held)} held-out windows")
    ev = evaluate_heads(model, heads, held, targets=req.targets, pad_id=pad_id, teacher=teacher)
    for p in model.parameters():
        p.requires_grad_(False)

    tmp = final.parent / f".tmp-{final.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    info = {"model": loaded.name, "config": config, "steps_done": done_steps, "stopped_early": stopped_early,
            "train_s_this_run": round(train_s, 1), "held_out": ev, "final_loss": history[-1]["loss"] if history else None}
    if unfreeze:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
    vocab = None
    if feats is not None:  # the draft vocabulary: every token that occurred as a target
        vocab = torch.unique(torch.cat([feats["teacher"][feats["valid"]], feats["ids"][feats["valid"]]]))
    heads.save(tmp, draft_vocab=vocab, **info)
    commit_dir(tmp, final)
    if not stopped_early:
        if ckpt.exists():
            shutil.rmtree(ckpt)
        if fpath.exists():
            fpath.unlink()
    if not unfreeze:
        set_default(loaded.name, "mtp", final, steps=done_steps, targets=req.targets)
    accs = ", ".join(f"head {i + 1}: {a:.3f}" for i, a in enumerate(ev["head_acc"]))
    chain = ", ".join(f"{a:.3f}" for a in ev["chain_acc"])
    console.print(f"[green]MTP heads[/green] for {loaded.name}: {done_steps} steps, {train_s / 60:.1f} min this run")
    console.print(f"held-out top-1 vs {req.targets} targets: {accs}; heads 2..k all right: {chain}")
    if unfreeze:
        console.print(f"fine-tuned model + heads: run with --model {final}")
    else:
        console.print(f"saved to {final} (the default for {loaded.name})")
    return final
