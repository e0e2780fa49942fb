"""The driver: the process running ``accbench run``.

It plans the *groups* (model x device x suite x prompt length) that still have work, runs
each with one group body (:mod:`accbench.engine.group`: the model loaded once, AR and every
method decoding each sample in lockstep), appends the rows as they arrive, fills in the
exact-match-vs-AR fields and records failures in ``failed.jsonl``:

* ``local`` (default): every group in a fresh worker process, one group at a time; a worker
  that dies is restarted on the unfinished work without the (method, sample) it had in
  flight (:mod:`accbench.engine.worker`).
* ``ray``: every group a Ray task (a streaming generator) that supervises the same worker
  process on its node; a lost task is run again (``--retries``, default 1) on what is left.
* ``inline``: the group body in this process; an exception stops the sweep (debugging).
"""

from __future__ import annotations

import os
import time
from typing import Any

from accbench.engine import measure
from accbench.engine.config import BASELINE, SweepConfig, ordered_methods, resolved_options, validate
from accbench.engine.group import Group, Work, failure, group_messages
from accbench.engine.pairing import DESIGN, LOAD, error_text
from accbench.engine.results import ResultsDir, row_key
from accbench.engine.worker import PASS_ENV, plugin_roots, supervise
from accbench.errors import AccbenchError, NeedsTraining
from accbench.reports.stats import first_divergence

_FIRST = ("model", "device", "dtype", "suite", "prompt_length", "sample_id", "method", "prompt_tokens",
          "n_new", "finish_reason", "ttft_s", "total_s", "tpot_s", "tokens_per_s", "forward_passes", "tau",
          "quality", "exact_match_ar", "first_divergence", "lossless", "peak_mem_mb")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class NullProgress:
    """The interface the driver reports through (the CLI passes a rich implementation)."""

    def message(self, text: str) -> None: ...
    def start(self, total_rows: int, done_rows: int) -> None: ...
    def cell(self, model: str, suite: str, n_rows: int) -> None: ...
    def row_done(self, row: dict[str, Any]) -> None: ...
    def cells(self, queued: int, running: dict[str, str], done: int, failed: int) -> None: ...
    def stop(self) -> None: ...


class Driver:
    """Owns the results folder: appends rows, pairs them with AR, records failures."""

    def __init__(self, cfg: SweepConfig, progress: NullProgress, results: ResultsDir, rows: list[dict]):
        self.cfg, self.progress, self.results = cfg, progress, results
        self.done = {row_key(r) for r in rows}
        #: output texts by row key: the answers a later turn of a conversation is built on
        self.texts = {row_key(r): r.get("output_text") for r in rows}
        self.ar_tokens = {row_key({**r, "method": BASELINE}): r["new_token_ids"]
                          for r in rows if r["method"] == BASELINE}
        self.failed: list[dict[str, Any]] = []
        self.failed_pairs: set[tuple] = set()
        self.running: dict[str, str] = {}
        self.n_done = 0

    def handle(self, group: Group, kind: str, data: Any) -> None:
        if kind == "start":
            where = f"{data.get('host')}:{data.get('device')}"
            self.running[group.label] = where + (f" ({data['device_name']})" if data.get("device_name") else "")
        elif kind == "msg":
            self.progress.message(f"{group.label}: {data}")
        elif kind == "row":
            self.add_row(data)
        elif kind == "failed":
            self.fail(group, data)

    def add_row(self, row: dict[str, Any]) -> None:
        k = row_key(row)
        if k in self.done:  # a retried group re-measuring a sample a lost attempt already sent
            return
        pair = row_key({**row, "method": BASELINE})
        if row["method"] == BASELINE:
            self.ar_tokens[pair] = row["new_token_ids"]
            row["exact_match_ar"], row["first_divergence"] = None, None
        elif pair in self.ar_tokens:
            div = first_divergence(self.ar_tokens[pair], row["new_token_ids"])
            row["exact_match_ar"], row["first_divergence"] = div is None, div
        else:
            row["exact_match_ar"], row["first_divergence"] = None, None
        row["executor"] = self.cfg.executor
        self.results.append({**{f: row[f] for f in _FIRST if f in row}, **{f: v for f, v in row.items() if f not in _FIRST}})
        self.done.add(k)
        self.texts[k] = row.get("output_text")
        self.progress.row_done(row)

    def fail(self, group: Group, rec: dict[str, Any]) -> None:
        rec = {**group.as_dict(), **rec, "executor": self.cfg.executor, "time": _now()}
        sids = [rec["sample_id"]] if rec["sample_id"] is not None else rec.get("sample_ids", [])
        self.failed_pairs.update(group.key(s, rec["method"]) for s in sids)
        self.failed.append(rec)
        self.results.append_failure(rec)
        what = f"sample {rec['sample_id']}" if rec["sample_id"] is not None else f"{len(sids)} sample(s)"
        self.progress.message(f"{group.label}/{rec['method']} failed on {what} ({rec['phase']}): {rec['error']}")

    def remaining(self, group: Group, work: Work) -> Work:
        """What of ``work`` has neither a row nor a failure yet."""
        finished = self.done | self.failed_pairs
        return Work(work.methods, [(sid, [m for m in ms if group.key(sid, m) not in finished]) for sid, ms in work.todo])

    def status(self, queued: int) -> None:
        self.progress.cells(queued, dict(self.running), self.n_done, len({(f["model"], f["suite"], f["method"])
                                                                           for f in self.failed}))

    def finish(self) -> None:
        cells = sorted({"/".join(str(x) for x in (f["model"], f["suite"], f["prompt_length"], f["method"])
                                 if x is not None) for f in self.failed})
        samples = [{**{k: f[k] for k in ("model", "device", "suite", "prompt_length", "method")}, "sample_id": s}
                   for f in self.failed for s in ([f["sample_id"]] if f["sample_id"] is not None else f["sample_ids"])]
        self.results.set_status("incomplete" if self.failed else "complete", finished=_now(),
                                failed_cells=cells, failed_samples=samples)


def device_key(cfg: SweepConfig) -> tuple[str, str]:
    """(the torch device a worker uses, the rows' device key)."""
    if cfg.executor == "ray":
        # The driver may have no GPU; a ray CUDA group sees its one assigned GPU as cuda:0.
        dev = (cfg.device or "cpu").strip().lower()
        if dev.startswith("cuda"):
            dev = "cuda:0"
        elif dev != "cpu":
            raise AccbenchError(f"--device {cfg.device!r} with --executor ray: use cpu or cuda "
                                "(ray assigns each CUDA group its own GPU)")
        labels = sorted(k for k in cfg.ray_resources if k not in ("CPU", "GPU"))
        return dev, cfg.device_label or dev + ("[" + ",".join(labels) + "]" if labels else "")
    from accbench.models import resolve_device

    dev = str(resolve_device(cfg.device))
    return dev, cfg.device_label or dev


def plan_groups(cfg: SweepConfig, suite_samples: dict[str, list], device: str, done: set) -> list[tuple[Group, Work]]:
    """Every group with (sample, method) pairs left, in model, suite, prompt length order."""
    methods = ordered_methods(cfg.methods)
    out = []
    for model in cfg.models:
        for suite in cfg.suites:
            for plen in cfg.prompt_lengths or [None]:
                g = Group(model, device, suite, plen)
                work = Work(methods, [(s.id, [m for m in methods if g.key(s.id, m) not in done])
                                      for s in suite_samples[suite]])
                if work:
                    out.append((g, Work(work.pending_methods(), work.todo)))
    return out


def run_sweep(cfg: SweepConfig, progress: NullProgress | None = None, overwrite: bool = False) -> ResultsDir:
    """Run (or resume) a sweep into ``cfg.out``; returns its results folder."""
    import torch
    from accbench import methods as method_registry
    from accbench import suites as suite_registry
    from accbench.models import resolve_dtype

    progress = progress or NullProgress()
    notes = validate(cfg)
    worker_device, dev_key = device_key(cfg)
    preflight(cfg)
    suites = {s: suite_registry.build(s, data_dir=cfg.data_dir, data_file=cfg.data_file) for s in cfg.suites}
    suite_samples = {s: list(suite.samples(limit=cfg.limit)) for s, suite in suites.items()}
    check_prompts(cfg, suites, suite_samples)
    if notes:  # every check passed: the first line of output says what the command was taken to mean
        progress.message("; ".join(notes))
    dtype = str(resolve_dtype(cfg.dtype, torch.device(worker_device.split(":")[0]))).replace("torch.", "")
    results = ResultsDir(cfg.out)
    config = {
        "command": "run", "methods": ordered_methods(cfg.methods), "models": cfg.models, "suites": cfg.suites,
        "limit": cfg.limit, "warmup": cfg.warmup, "data_dir": cfg.data_dir, "device": dev_key, "dtype": dtype,
        "executor": cfg.executor, "pairing": DESIGN, "options": resolved_options(cfg), "started": _now(),
        "notes": notes,
        "environment": measure.environment(torch.device("cpu" if cfg.executor == "ray" else worker_device)),
    }
    if cfg.executor == "ray":
        config.update(ray_address=cfg.address, ray_resources=cfg.ray_resources, ray_cpus=cfg.ray_cpus)
    sandbox = sandbox_layers(suites)
    if sandbox is not None:
        config["sandbox"] = sandbox
    results.prepare(config, cfg.settings(), overwrite=overwrite)
    if sandbox is not None:
        progress.message(sandbox_text(sandbox))
    driver = Driver(cfg, progress, results, results.load_rows())
    groups = plan_groups(cfg, suite_samples, dev_key, driver.done)
    total = sum(len(v) for v in suite_samples.values()) * len(ordered_methods(cfg.methods)) * len(cfg.models) \
        * len(cfg.prompt_lengths or [None])
    progress.start(total, total - sum(w.n_pairs() for _, w in groups))
    registry = method_registry.available()
    plugins = sorted({registry[m].__module__ for m in cfg.methods} - {"__main__"})
    base = {"cfg": cfg.as_dict(), "device": worker_device, "plugins": plugins, "plugin_roots": plugin_roots(plugins),
            "env": {k: os.environ[k] for k in PASS_ENV if os.environ.get(k)}}
    try:
        if cfg.executor == "inline":
            _run_inline(groups, driver, base)
        elif cfg.executor == "local":
            _run_local(groups, driver, base, retries=cfg.retries or 0)
        else:
            _run_ray(groups, driver, base, cfg)
        driver.finish()
        from accbench.reports.summary import summarize

        results.frame = summarize(results.load_rows(repair=False))
        results.write_summary_csv(results.frame)  # still under the lock
    finally:
        results.close()
        progress.stop()
    return results


def preflight(cfg: SweepConfig) -> None:
    """What can be known before work starts, checked before anything is written and before any
    model loads: each model can be loaded here (package installed, hub model cached or the hub
    reachable -- probed once per run, in about 3 s -- and a token for a gated one), and each
    method's ``preflight(model_name, options, artifacts)`` for each model (its artifacts, read
    from the artifact store without loading the model). The first problem raises one line."""
    from accbench import methods as method_registry
    from accbench.models.loading import load_problem, memo_probe
    from accbench.training.artifacts import ModelArtifacts

    probe = memo_probe(3.0)
    for model in cfg.models:
        why = load_problem(model, probe)
        if why:
            raise AccbenchError(why)
    raw = getattr(cfg, "_raw_options", None) or {m: {k: str(v) for k, v in kv.items()}
                                                  for m, kv in cfg.method_options.items()}
    for m in ordered_methods(cfg.methods):
        check = getattr(method_registry.get(m), "preflight", None)
        if check is None:
            continue
        for model in cfg.models:
            try:
                check(model, dict(raw.get(m, {})), ModelArtifacts(model))
            except NeedsTraining:
                if not cfg.train_missing:  # --train-missing: the group trains them
                    raise


def sandbox_layers(suites: dict[str, Any]) -> dict[str, Any] | None:
    """The code sandbox's active layers on this machine (once per run), when a suite runs code."""
    if not any(getattr(s, "sandboxed", False) for s in suites.values()):
        return None
    from accbench.suites.sandbox import describe_layers

    return dict(describe_layers())


def sandbox_text(layers: dict[str, Any]) -> str:
    text = f"sandbox ({layers['mode']}): " + ", ".join(layers["active"])
    if layers["missing"]:
        text += "; not available here: " + ", ".join(layers["missing"])
    if not layers["ok"]:
        text += f"; WARNING: a trivial program did not pass ({layers.get('error', '').strip()[-200:]})"
    return text


def check_prompts(cfg: SweepConfig, suites: dict[str, Any], suite_samples: dict[str, list]) -> None:
    """Before the folder is touched or any weights load: every prompt (with each model's
    tokenizer) fits the model's context minus the generation budget, or ``--truncate middle``
    is given; every --prompt-lengths value fits whatever --truncate says."""
    from accbench.engine.prompts import PromptBuilder, prompt_room, tokenizer_and_context

    for model in cfg.models:
        tokenizer, context = tokenizer_and_context(model)
        if tokenizer is None or context is None:
            continue  # known only once loaded: the group checks
        for name, suite in suites.items():
            room, why = prompt_room(model, context, cfg.max_new_tokens or suite.max_new_tokens)
            for plen in cfg.prompt_lengths or [None]:
                if plen is not None and plen > room:
                    raise AccbenchError(f"--prompt-lengths {plen} does not fit suite {name}: at most {room} "
                                        f"prompt tokens fit ({why})")
                PromptBuilder(tokenizer, suite, suite_samples[name], cfg.prompt_format, plen, max_tokens=room,
                              truncate=cfg.truncate, why=why).check_all(suite_samples[name])


def _payload(base: dict[str, Any], group: Group, work: Work, texts: dict | None = None) -> dict[str, Any]:
    """A group's task; ``answers``: the baseline's (first method's) output texts already in the
    results folder, for the group's multi-turn samples to build later turns on."""
    first = ordered_methods(base["cfg"]["methods"])[0]
    answers = {}
    for sid, _ in work.todo:
        if "/t" in sid:  # a conversation's turn (suites.specbench): its earlier turns' answers
            q, _, turn = sid.rpartition("/t")
            for k in range(1, int(turn) if turn.isdigit() else 0):
                sid_k = f"{q}/t{k}"  # AR's answer when the folder has one (a later run may lack AR), else the first method's
                text = (texts or {}).get(group.key(sid_k, BASELINE)) or (texts or {}).get(group.key(sid_k, first))
                if text is not None:
                    answers[sid_k] = text
    return {**base, "group": group.as_dict(), "methods": work.methods, "todo": work.as_payload(), "answers": answers}


def _run_groups(groups, driver: Driver, messages) -> None:
    """Feed every group's messages (``messages(group, work)``) to the driver, one group at a time."""
    for i, (group, work) in enumerate(groups):
        driver.progress.cell(group.model, group.suite + (f" / {group.prompt_length} tok" if group.prompt_length
                                                         else ""), work.n_pairs())
        driver.status(len(groups) - i - 1)
        try:
            for kind, data in messages(group, work):
                driver.handle(group, kind, data)
                if kind == "start":
                    driver.status(len(groups) - i - 1)
        finally:
            driver.running.pop(group.label, None)
        driver.n_done += 1
        driver.status(len(groups) - i - 1)


def _run_inline(groups, driver: Driver, base: dict[str, Any]) -> None:
    _run_groups(groups, driver, lambda g, w: group_messages(_payload(base, g, w, driver.texts), [LOAD, -1, -1], catch=False))


def _run_local(groups, driver: Driver, base: dict[str, Any], retries: int) -> None:
    _run_groups(groups, driver, lambda g, w: supervise(_payload(base, g, w, driver.texts), retries))


# -- ray --------------------------------------------------------------------------------


def _ray_group(payload: dict[str, Any], retries: int):  # pragma: no cover - runs in a ray worker
    """The Ray task: a streaming generator of one group's messages, from a worker process it
    supervises on this node (so a crash there fails one (method, sample), as locally)."""
    yield from supervise(payload, retries)


def _ray_connect(address: str | None):
    try:
        import ray
    except ImportError:
        raise AccbenchError("--executor ray needs ray: pip install 'accbench[ray]' (or pip install 'ray[default]')") \
            from None
    if ray.is_initialized():
        return ray
    try:
        # None: $RAY_ADDRESS, else a cluster started on this machine, else a new local instance;
        # "local": always a new local instance; "auto" / HOST:PORT: that cluster
        ray.init(address=address or None, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise AccbenchError(f"cannot connect to ray at {address!r}: {error_text(e)}") from None
    return ray


def _ray_task(ray, base: dict[str, Any], cfg: SweepConfig):
    cuda = base["device"].startswith("cuda")
    resources = dict(cfg.ray_resources)
    # "GPU" / "CPU" in --ray-resources set num_gpus / num_cpus (e.g. 2 GPUs for --device-map auto)
    gpus = resources.pop("GPU", 1 if cuda else 0)
    cpus = resources.pop("CPU", cfg.ray_cpus if cfg.ray_cpus is not None else 1)
    if gpus and not cuda:
        raise AccbenchError("--ray-resources asks for GPUs but --device is cpu; pass --device cuda")
    opts: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus, "max_retries": 0}
    if resources:
        opts["resources"] = resources
    # max_calls=1: a fresh Ray worker per group (the retry is ours, on what is left)
    return ray.remote(max_calls=1)(_ray_group).options(**opts), None if cuda else max(1, int(cpus))


def _run_ray(groups, driver: Driver, base: dict[str, Any], cfg: SweepConfig) -> None:
    ray = _ray_connect(cfg.address)
    task, threads = _ray_task(ray, base, cfg)
    group_retries = 1 if cfg.retries is None else cfg.retries
    running: dict[Any, tuple[Group, Work, int]] = {}

    def submit(group: Group, work: Work, attempt: int) -> None:
        payload = {**_payload(base, group, work, driver.texts), "threads": threads}
        running[task.remote(payload, cfg.retries or 0)] = (group, work, attempt)
        driver.running[group.label] = "queued on ray"

    for group, work in groups:
        submit(group, work, 1)
    driver.status(0)
    try:
        while running:
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for gen in ready:
                group, work, attempt = running[gen]
                try:
                    kind, data = ray.get(next(gen))
                except StopIteration:
                    kind, data = "end", None
                except Exception as e:  # the task raised, or its worker or node died
                    cause = getattr(e, "cause", None)
                    kind, data = "lost", error_text(cause if isinstance(cause, BaseException) else e)
                if kind not in ("end", "lost"):
                    driver.handle(group, kind, data)
                    continue
                del running[gen]
                driver.running.pop(group.label, None)
                left = driver.remaining(group, work)
                if kind == "lost" and left and attempt <= group_retries:
                    driver.progress.message(f"group {group.label} lost ({data}); retrying")
                    submit(group, left, attempt + 1)
                elif kind == "lost":
                    for m in left.pending_methods():
                        driver.fail(group, {**failure(m, None, LOAD, f"ray task lost: {data}", sample_ids=left.samples_of(m)),
                                            "phase": "ray task", "attempts": attempt})
                driver.n_done += kind == "end"
                driver.status(0)
    except BaseException:
        for gen in running:
            try:
                ray.cancel(gen, force=True)
            except Exception:
                pass
        raise
