"""Run a stage over its shards, locally or on Ray, resuming what a previous run finished.

``run_stage(stage, settings)``:

1. computes the stage's settings key, plans the shards (bad options fail here, before anything is
   written), and opens (or creates) its results directory;
2. keeps the finished shards whose files still match the manifest; a shard that fails its checksum
   is reported (``CorruptShardWarning``) and recomputed;
3. claims each remaining shard before computing it (``ResultStore.claim``), so that two runs with the
   same settings split the shards and each waits for the other's instead of repeating them;
4. computes its shards, one model per process: in this process (``backend="local"``) or in Ray actors
   (``backend="ray"``: one model per actor, one GPU per actor when the cluster has GPUs), writing each
   shard from this process as soon as it is done, so a run killed at any moment loses at most the
   shards in flight;
5. returns a ``StageSummary`` (facts done, skipped with reasons, time per fact) whose ``line()`` the
   ``kn`` command prints.

Ray is optional (``pip install ray``): imported only when ``backend="ray"``.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

from . import store as results  # the store module; ``store`` names a ResultStore below
from .registry import Job, RunSettings, Stage, StageContext, stage_registry

# Seconds to wait after computing each shard, before writing it: lets tests kill a run mid-way.
SHARD_DELAY_ENV = "KN_TEST_SHARD_DELAY"


class RayNotInstalled(ImportError):
    """``backend="ray"`` without the ray package."""


@dataclass
class StageSummary:
    """What a stage run did: counts, skip reasons, timing, where the results are."""

    stage: str
    model: str
    key: str
    directory: Path
    shards: int = 0
    shards_computed: int = 0
    shards_reused: int = 0
    shards_corrupt: int = 0  # finished shards that failed their checksum (recomputed)
    facts: int = 0
    facts_computed: int = 0
    facts_skipped: Counter = field(default_factory=Counter)  # reason -> facts
    prompts_skipped: Counter = field(default_factory=Counter)  # reason -> prompts
    seconds: float = 0.0  # wall time of the whole run
    compute_seconds: float = 0.0  # summed time of the shards computed

    @property
    def seconds_per_fact(self) -> float | None:
        return self.compute_seconds / self.facts_computed if self.facts_computed else None

    def line(self) -> str:
        def reasons(counter: Counter) -> str:
            return ", ".join(f"{n} {why}" for why, n in counter.most_common())

        skipped = f"skipped {sum(self.facts_skipped.values())} facts"
        if self.facts_skipped:
            skipped += f" ({reasons(self.facts_skipped)})"
        if self.prompts_skipped:
            skipped += f" and {sum(self.prompts_skipped.values())} prompts ({reasons(self.prompts_skipped)})"
        per_fact = f"{self.seconds_per_fact:.2f} s/fact" if self.seconds_per_fact is not None else "nothing computed"
        corrupt = f", {self.shards_corrupt} corrupt recomputed" if self.shards_corrupt else ""
        return (
            f"{self.stage} {self.model}: {self.facts} facts in {self.shards} shards "
            f"({self.shards_computed} computed, {self.shards_reused} reused{corrupt}); {skipped}; "
            f"{per_fact}; {self.seconds:.1f} s total -> {self.directory}"
        )


def reason_category(reason: str) -> str:
    """'multi-token object: ...' -> 'multi-token object'; "'text': [Y] precedes [X], a ..." -> '[Y] precedes [X]'."""
    reason = re.sub(r"""^(?:'[^']*'|"[^"]*"): """, "", str(reason))  # repr() quotes a template either way
    return re.split(r"[:,]", reason, maxsplit=1)[0].strip()


def check_writable(root: Path) -> None:
    """Fail early, in one line, when results cannot be written under ``root``."""
    from .registry import KnUsageError

    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = results._temp_in(root, "write-test")
        probe.unlink()
    except OSError as err:
        raise KnUsageError(f"{root}: output directory is not writable ({err.strerror or err})") from None


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_stage(
    stage: str | Stage,
    settings: RunSettings,
    root: Path | str | None = None,
    *,
    backend: str = "local",
    ray_address: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    adapter=None,
) -> StageSummary:
    """Compute every unfinished shard of ``stage`` for ``settings``; see the module docstring.

    ``adapter``: an already loaded model to use (local backend), which must be ``settings.model``."""
    import warnings

    from tqdm.auto import tqdm

    spec = stage_registry()[stage] if isinstance(stage, str) else stage
    root = Path(root) if root is not None else results.default_root()
    check_writable(root)
    if settings.root is None:  # a known-facts sample reads its screen where the run writes
        settings = replace(settings, root=str(root))
    started = time.perf_counter()
    key_settings = spec.key_settings(settings)
    key = results.cache_key(key_settings)
    store = results.ResultStore(root, settings.model, spec.name, key)
    ctx = StageContext(spec.name, settings, root)
    jobs = spec.plan(ctx)  # before anything is written: bad options and missing inputs fail here
    aside = store.create(key_settings)
    if aside is not None:
        recovered = _recover_shards(store, spec, jobs)
        warnings.warn(f"{store.manifest_path}: damaged manifest moved to {aside.name}; {recovered} of {len(jobs)} shards "
                      "recovered from their files, the rest will be computed", results.DamagedManifestWarning, stacklevel=2)
    summary = StageSummary(spec.name, settings.model, key, store.dir, shards=len(jobs), facts=sum(len(j.facts) for j in jobs))

    entries = store.entries()
    todo: list[Job] = []
    for job in jobs:
        entry = entries.get(job.shard)
        if entry is None or not spec.covers(entry, job):
            todo.append(job)
            continue
        check = store.check(job.shard, entry)
        if check.ok:
            summary.shards_reused += 1
        else:
            results.warn_corrupt(store, job.shard, check.reason)
            summary.shards_corrupt += 1
            todo.append(job)

    if backend == "local" and spec.needs_model and todo and adapter is None:
        from ..model_registry import load_adapter

        adapter = load_adapter(settings.model, resolve_device(settings.device))  # before the bar: its ETA is compute only
    delay = float(os.environ.get(SHARD_DELAY_ENV, 0) or 0)
    bar = tqdm(total=summary.facts, initial=summary.facts - sum(len(j.facts) for j in todo), unit="fact",
               desc=f"{spec.name} {settings.model}", disable=not progress, smoothing=0.1, dynamic_ncols=True)
    owner = f"{results._HOST}:{os.getpid()}:{uuid.uuid4().hex}"  # this run, as its claims name it
    claimed: set[str] = set()
    try:
        mine = _claimed(store, spec, todo, owner, claimed, summary, bar.update)
        if backend == "local":
            outputs = _run_local(spec, ctx, mine, adapter, bar.update)
        elif backend == "ray":
            outputs = _run_ray(spec, ctx, mine, ray_address, workers, bar.update, len(todo))
        else:
            raise ValueError(f"unknown backend {backend!r} (use local or ray)")
        for job, tables, seconds, meta in outputs:
            if delay:
                time.sleep(delay)
            store.write_shard(job.shard, tables, {"relation": job.relation, "fact_ids": job.fact_ids, "seconds": round(seconds, 3),
                                                  "backend": backend, **meta})
            store.release(job.shard, owner)
            claimed.discard(job.shard)
            summary.shards_computed += 1
            summary.facts_computed += len(job.facts)
            summary.compute_seconds += seconds
    finally:
        for shard in claimed:  # interrupted or failed: let the next run take these at once
            store.release(shard, owner)
        bar.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _count_skips(summary, spec, store, jobs)
    summary.seconds = time.perf_counter() - started
    return summary


def _recover_shards(store: results.ResultStore, spec: Stage, jobs: list[Job]) -> int:
    """After a damaged manifest: list again the shards whose files hold exactly the job's facts (every
    table with a ``fact_id`` column, together naming each fact: true of ``attribute``, whose prompts and
    skips cover every fact; other stages' shards are recomputed). Returns how many were recovered."""
    import pandas as pd

    recovered = 0
    for job in jobs:
        paths = {table: store.shard_path(job.shard, table) for table in spec.tables}
        if not all(path.is_file() for path in paths.values()):
            continue
        try:
            ids = set().union(*(set(pd.read_parquet(path, columns=["fact_id"])["fact_id"]) for path in paths.values()))
        except Exception:  # noqa: BLE001  (unreadable, no fact_id column: recompute)
            continue
        if ids == set(job.fact_ids):
            recovered += store.adopt(job.shard, paths, {"relation": job.relation, "fact_ids": job.fact_ids})
    return recovered


def _claimed(store: results.ResultStore, spec: Stage, jobs: list[Job], owner: str, claimed: set[str],
             summary: StageSummary, on_fact, poll: float = 0.5) -> Iterator[Job]:
    """The jobs this run computes, each claimed first. A job another live run has claimed is put back
    and tried again after the others (waiting ``poll`` seconds once every job left is someone else's);
    when that run finishes it, it counts as reused, and when it dies, its claim is taken over."""
    waiting = deque(jobs)
    tried = 0
    while waiting:
        job = waiting.popleft()
        state = store.claim(job.shard, owner, lambda entry, job=job: spec.covers(entry, job))
        if state == "mine":
            claimed.add(job.shard)
            tried = 0
            yield job
        elif state == "done":  # finished by another run meanwhile
            summary.shards_reused += 1
            on_fact(len(job.facts))
            tried = 0
        else:
            waiting.append(job)
            tried += 1
            if tried >= len(waiting):
                time.sleep(poll)
                tried = 0


def _count_skips(summary: StageSummary, spec: Stage, store: results.ResultStore, jobs: list[Job]) -> None:
    """Skip reasons over the whole sample (computed and reused shards), from the ``skipped`` tables."""
    if "skipped" not in spec.tables or not jobs:
        return
    skipped = store.read("skipped", [j.shard for j in jobs], verify=False)
    if skipped.empty:
        return
    wanted = {f for j in jobs for f in j.fact_ids}
    skipped = skipped[skipped["fact_id"].isin(wanted)]
    for template_id, reason in zip(skipped["template_id"], skipped["reason"]):
        (summary.facts_skipped if _missing(template_id) else summary.prompts_skipped)[reason_category(reason)] += 1


def _missing(value: Any) -> bool:
    import pandas as pd

    return value is None or bool(pd.isna(value))


Output = Iterator[tuple[Job, dict, float, dict]]  # (job, tables, seconds, manifest extras)


def _run_local(spec: Stage, ctx: StageContext, jobs: Iterable[Job], adapter, on_fact) -> Output:
    device = resolve_device(ctx.settings.device)
    for job in jobs:
        if spec.needs_model and adapter is None:  # at the first job: none (all reused) loads nothing
            from ..model_registry import load_adapter

            adapter = load_adapter(ctx.settings.model, device)
        t0 = time.perf_counter()
        tables = spec.compute(ctx, job, adapter if spec.needs_model else None, on_fact)
        yield job, tables, time.perf_counter() - t0, {"device": device if spec.needs_model else "cpu"}


def import_ray():
    try:
        import ray
    except ImportError:
        raise RayNotInstalled("--backend ray needs the ray package: pip install 'ray>=2.9' (or use --backend local)") from None
    return ray


class ShardWorker:
    """A Ray actor: loads the model once, then computes shards of any model-based stage."""

    def __init__(self, model: str, device: str) -> None:
        from ..model_registry import load_adapter

        self.device = device
        self.adapter = load_adapter(model, device)

    def run(self, spec: Stage, ctx: StageContext, job: Job) -> tuple[dict, float, dict]:
        t0 = time.perf_counter()
        tables = spec.compute(ctx, job, self.adapter, None)
        return tables, time.perf_counter() - t0, {"device": self.device, "worker_pid": os.getpid()}


def _run_ray(spec: Stage, ctx: StageContext, jobs: Iterable[Job], address: str | None, workers: int | None, on_fact,
             n_jobs: int) -> Output:
    """Shards as tasks on a pool of actors (one model each); results come back to this process, which
    writes them, so workers need no shared filesystem. A stage without a model runs locally."""
    if not spec.needs_model:
        yield from _run_local(spec, ctx, jobs, None, on_fact)
        return
    if not n_jobs:
        return
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, **({} if address else {"include_dashboard": False}), logging_level="WARNING")
    actors = []
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        device = ctx.settings.device
        use_gpu = device == "cuda" or (device == "auto" and gpus >= 1)
        if use_gpu and gpus < 1:
            from .registry import KnUsageError

            raise KnUsageError("--device cuda: the Ray cluster has no GPU")
        slots = int(gpus) if use_gpu else max(1, int(ray.cluster_resources().get("CPU", 1)))
        n = max(1, min(workers or slots, n_jobs))
        actor_class = ray.remote(num_gpus=1 if use_gpu else 0, num_cpus=1)(ShardWorker)
        actors = [actor_class.remote(ctx.settings.model, "cuda" if use_gpu else "cpu") for _ in range(n)]
        queue, pending = iter(jobs), {}  # jobs are claimed as they are taken
        for actor in actors:
            job = next(queue, None)
            if job is not None:
                pending[actor.run.remote(spec, ctx, job)] = (actor, job)
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            actor, job = pending.pop(ref)
            tables, seconds, meta = ray.get(ref)
            nxt = next(queue, None)
            if nxt is not None:
                pending[actor.run.remote(spec, ctx, nxt)] = (actor, nxt)
            on_fact(len(job.facts))
            yield job, tables, seconds, meta
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_here:
            ray.shutdown()


def run_chain(stages: list[str], settings: RunSettings, root: Path | str | None = None, **kwargs) -> list[StageSummary]:
    """Run stages in order with the same settings (``kn run``)."""
    return [run_stage(name, settings, root, **kwargs) for name in stages]
