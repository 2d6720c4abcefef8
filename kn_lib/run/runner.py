"""Run a stage over its shards, locally or on Ray, resuming what a previous run finished.

``run_stage(stage, settings)``:

1. computes the stage's settings key, plans the shards (bad options fail here, before anything is
   written), and opens (or creates) its results directory;
2. keeps the finished shards whose files still match the manifest; a shard that fails its checksum
   is reported (``CorruptShardWarning``) and recomputed;
3. claims each remaining shard before computing it (``ResultStore.claim``), so that two runs with the
   same settings split the shards and each waits for the other's instead of repeating them; a thread
   renews the run's claims (heartbeat), and a run that waits says for which shard and whose claim, once;
4. computes its shards, one model per process: in this process (``backend="local"``) or in Ray actors
   (``backend="ray"``: one model per actor, one GPU per actor when the cluster has GPUs), writing each
   shard from this process as soon as it is done, so a run killed at any moment loses at most the
   shards in flight. Each shard records how it was computed (``runtime_provenance``). A local run that
   meets a finished shard holding some of a job's facts (a smaller sample's, per-fact stages only:
   ``registry.holds_facts``) computes only the missing facts, when that shard was computed the same way;
5. returns a ``StageSummary`` (facts done, skipped with reasons, time per fact) whose ``line()`` the
   ``kn`` command prints.

The backends that compute the shards (this process, Ray actors) and what each shard records of how it
was computed are ``kn_lib.run.backends``'s. Ray is optional (``pip install ray``): imported only when
``backend="ray"``.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import uuid
import warnings
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

from . import store as results  # the store module; ``store`` names a ResultStore below
from .backends import _run_local, _run_ray, resolve_device, runtime_provenance
from .registry import Job, RunSettings, Stage, StageContext, holds_facts, stage_registry
from .result_store import ResultStore, warn_corrupt

# Seconds to wait after computing each shard, before writing it: lets tests kill a run mid-way.
SHARD_DELAY_ENV = "KN_TEST_SHARD_DELAY"


class ClaimWaitWarning(UserWarning):
    """A run waits for shards that other runs have claimed (which, whose, and until when)."""


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
    store = ResultStore(root, settings.model, spec.name, key)
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
            warn_corrupt(store, job.shard, check.reason)
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
    partial: dict[str, tuple[Job, dict]] = {}  # shard -> (the whole job, the finished facts' tables)
    try:
        with _heartbeat(store, claimed, owner):
            mine = _claimed(store, spec, todo, owner, claimed, summary, bar.update)
            if backend == "local":
                if spec.covers is holds_facts:  # per-fact shards: compute only the facts a finished shard lacks
                    here = runtime_provenance(resolve_device(settings.device), adapter if spec.needs_model else None)
                    mine = _missing_facts(store, spec, mine, here, partial, bar.update)
                outputs = _run_local(spec, ctx, mine, adapter, bar.update)
            elif backend == "ray":
                outputs = _run_ray(spec, ctx, mine, ray_address, workers, bar.update, len(todo))
            else:
                raise ValueError(f"unknown backend {backend!r} (use local or ray)")
            for job, tables, seconds, meta in outputs:
                if delay:
                    time.sleep(delay)
                computed = len(job.facts)
                if job.shard in partial:
                    job, kept = partial.pop(job.shard)
                    tables = _merge_facts(job, kept, tables)
                    meta = {**meta, "facts_reused": len(job.facts) - computed}
                store.write_shard(job.shard, tables, {"relation": job.relation, "fact_ids": job.fact_ids, "seconds": round(seconds, 3),
                                                      "backend": backend, **meta})
                store.release(job.shard, owner)
                claimed.discard(job.shard)
                summary.shards_computed += 1
                summary.facts_computed += computed
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


def _recover_shards(store: ResultStore, spec: Stage, jobs: list[Job]) -> int:
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


@contextlib.contextmanager
def _heartbeat(store: ResultStore, claimed: set[str], owner: str) -> Iterator[None]:
    """Renew this run's claims every ``store.claim_heartbeat()`` seconds, in a thread, while the body runs:
    a claim that stops being renewed (the run was killed, its host is gone) is taken over by others."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(results.claim_heartbeat()):
            try:
                if claimed:
                    store.renew(list(claimed), owner)
            except Exception:  # noqa: BLE001  (a missed beat ages the claim; the next one renews it)
                pass

    thread = threading.Thread(target=beat, name=f"kn-claims-{store.key}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def _claimed(store: ResultStore, spec: Stage, jobs: list[Job], owner: str, claimed: set[str],
             summary: StageSummary, on_fact, poll: float = 0.5) -> Iterator[Job]:
    """The jobs this run computes, each claimed first. A job another live run has claimed is put back
    and tried again after the others (waiting ``poll`` seconds once every job left is someone else's,
    saying once which shards wait and who holds them: ``ClaimWaitWarning``); when that run finishes it,
    it counts as reused, and when its claim goes stale (dead, or not renewed), it is taken over."""
    waiting = deque(jobs)
    tried = 0
    told: set[tuple[str, str]] = set()  # (shard, holder) already reported
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
                _tell_waiting(store, waiting, told)
                time.sleep(poll)
                tried = 0


def _tell_waiting(store: ResultStore, waiting: Iterable[Job], told: set[tuple[str, str]]) -> None:
    """One line when the shards this run waits for, or their holders, change: which shards, whose claims."""
    holders = {job.shard: store.holder(job.shard) for job in waiting}
    now = {(shard, str((claim or {}).get("owner"))) for shard, claim in holders.items()}
    if now <= told:
        return
    told |= now
    named = [f"{shard} ({results.describe_claim(claim)})" for shard, claim in holders.items()]
    more = f" and {len(named) - 3} more" if len(named) > 3 else ""
    warnings.warn(f"{store.dir}: waiting for {len(named)} shard{'s' if len(named) > 1 else ''} that another run computes: "
                  f"{', '.join(named[:3])}{more}; a claim not renewed for {results.claim_timeout():.0f} s is taken over "
                  f"(${results.CLAIM_STALE_ENV})", ClaimWaitWarning, stacklevel=2)


def _missing_facts(store: ResultStore, spec: Stage, jobs: Iterable[Job], here: dict[str, Any],
                   partial: dict[str, tuple[Job, dict]], on_fact) -> Iterator[Job]:
    """Each claimed job, or, when an intact finished entry of its shard holds some of its facts (a smaller
    sample's) and was computed exactly as this run computes (``here``: device, dtype, threads, versions),
    a job of the missing facts only; ``partial`` keeps the whole job and the finished facts' tables."""
    import pandas as pd

    for job in jobs:
        entry = store.entries().get(job.shard)
        done = set(entry.get("fact_ids", ())) if entry is not None else set()
        same_way = entry is not None and all(entry.get(k) == v for k, v in here.items())
        if not (done and done < set(job.fact_ids) and same_way and store.check(job.shard, entry).ok
                and set(entry["tables"]) == set(spec.tables)):
            yield job
            continue
        try:
            kept = {name: pd.read_parquet(store.dir / entry["tables"][name]["path"]) for name in spec.tables}
        except Exception:  # noqa: BLE001  (unreadable: compute the whole job)
            yield job
            continue
        if not all("fact_id" in frame.columns for frame in kept.values()):
            yield job
            continue
        partial[job.shard] = (job, {name: frame[frame["fact_id"].isin(job.fact_ids)] for name, frame in kept.items()})
        on_fact(len([f for f in job.fact_ids if f in done]))
        yield replace(job, facts=tuple(f for f in job.facts if f["fact_id"] not in done))


def _merge_facts(job: Job, kept: dict, computed: dict) -> dict:
    """The tables of a whole job from the finished facts' rows and the newly computed ones, in the job's
    fact order (as computing the whole job would give them)."""
    import numpy as np

    order = {fact: i for i, fact in enumerate(job.fact_ids)}
    merged = {}
    for name, frame in computed.items():
        both = results.concat([kept[name].reset_index(drop=True), frame.reset_index(drop=True)])
        if set(both.columns) == set(frame.columns):
            both = both[list(frame.columns)].astype(frame.dtypes.to_dict())
        rank = np.argsort(both["fact_id"].map(order).to_numpy(), kind="stable")
        merged[name] = both.iloc[rank].reset_index(drop=True)
    return merged


def _count_skips(summary: StageSummary, spec: Stage, store: ResultStore, jobs: list[Job]) -> None:
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


def run_chain(stages: list[str], settings: RunSettings, root: Path | str | None = None, **kwargs) -> list[StageSummary]:
    """Run stages in order with the same settings (``kn run``)."""
    return [run_stage(name, settings, root, **kwargs) for name in stages]
