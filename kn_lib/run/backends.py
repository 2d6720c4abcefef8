"""Where a stage's shards are computed: in this process (``backend="local"``) or on Ray actors
(``backend="ray"``: one model per actor, one GPU per actor when the cluster has GPUs), and what each
shard records of how it was computed (``runtime_provenance``: device, dtype, threads, versions).

Apart from ``runner`` (which plans, claims, reuses and writes the shards) because it is the part that
knows about devices and Ray; the runner gets each computed shard back from here and writes it itself.
Ray is optional (``pip install ray``): imported only when ``backend="ray"``.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterable, Iterator

from .registry import Job, Stage, StageContext


class RayNotInstalled(ImportError):
    """``backend="ray"`` without the ray package."""


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without CUDA is a ``KnUsageError``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        from .registry import KnUsageError

        raise KnUsageError(f"--device cuda: no CUDA device here (torch {torch.__version__}, "
                           f"{'a CPU-only build' if torch.version.cuda is None else 'no GPU visible'}); use --device cpu or auto")
    return device


def runtime_provenance(device: str, adapter=None) -> dict[str, Any]:
    """How a shard is computed, recorded in its manifest entry (not in the key): device, dtype of the
    model's weights, torch CPU threads (scores differ in the 5th digit between 1 and 2 threads) and the
    versions of torch, transformers and kn_lib. dtype and threads are None for a stage without a model."""
    import torch
    import transformers

    from .. import __version__

    dtype = None
    if adapter is not None:
        dtype = str(next(adapter.model.parameters()).dtype).removeprefix("torch.")
    return {"device": device, "dtype": dtype, "threads": torch.get_num_threads() if adapter is not None else None,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "kn_lib": __version__}}


Output = Iterator[tuple[Job, dict, float, dict]]  # (job, tables, seconds, manifest extras)


def _run_local(spec: Stage, ctx: StageContext, jobs: Iterable[Job], adapter, on_fact) -> Output:
    device = resolve_device(ctx.settings.device)
    for job in jobs:
        if spec.needs_model and adapter is None:  # at the first job: none (all reused) loads nothing
            from ..model_registry import load_adapter

            adapter = load_adapter(ctx.settings.model, device)
        t0 = time.perf_counter()
        tables = spec.compute(ctx, job, adapter if spec.needs_model else None, on_fact)
        yield job, tables, time.perf_counter() - t0, runtime_provenance(device if spec.needs_model else "cpu",
                                                                        adapter if spec.needs_model else None)


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
        return tables, time.perf_counter() - t0, {**runtime_provenance(self.device, self.adapter), "worker_pid": os.getpid()}


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
