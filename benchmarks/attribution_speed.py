"""Reference, packed and fast integrated gradients on the real offline model, in one run on one machine.

    .venv/bin/python benchmarks/attribution_speed.py [--facts 2] [--threads 2] [--reference-prompts 0] [--model smollm2-135m]

The three exact paths (``IGConfig.method``) on the same facts, every prompt of each fact in one call of
``integrated_gradients_many`` (the path the ``kn`` command takes), paper settings (m = 20, right
Riemann sum, all layers, fp32), plus the ``fast`` path with bfloat16 products:

* ``reference``: one forward + backward of the whole prompt per layer and batch of steps;
* ``packed``: the previous fast path (fixed passes of 200 (layer, step) rows that start at the pass's
  lowest scaled layer, key/value cache of the prefix);
* ``fast``: the default, rows join one growing batch at their own scaled layer (no recomputation).

The paths run interleaved (fact by fact, in rotating order) so that a change of the machine's load
touches all of them. Writes ``benchmarks/results/attribution_speed.csv`` (one row per fact x path:
seconds, s/prompt, s per 9-prompt fact, GFLOP, GFLOPS achieved, peak RSS during the run, largest
difference from the reference, the load average before and after) and ``benchmarks/results/machine.csv``
(the measured fp32 matrix-product throughput at the start and at the end, with the load).

FLOPs are counted (``torch.utils.flop_counter``) in separate, untimed runs, so the counter's per-operator
overhead does not inflate the timed ones; the reference's count is extrapolated exactly from m = 1 and
m = 2 (it is affine in m). ``--reference-prompts N`` times the reference on the first N prompts of each
fact only (its per-prompt time is then what is compared); 0 means all.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from kn_lib import data
from kn_lib.attribution import IGConfig, integrated_gradients_many
from kn_lib.models import describe, load_model
from kn_lib.pipeline import encode_fact

OUT = Path(__file__).parent / "results"
SAMPLE = ("P36/17", "P37/4", "P1412/9", "P103/4", "P36/24")  # facts SmolLM2 answers for some prompt; fixed
# batch_rows fixed here (the committed run used 200 for every path; the library's default for ``fast`` is now
# 50, as fast and far smaller in memory: benchmarks/batch_rows.py)
PATHS = {
    "reference": IGConfig(method="reference", batch_rows=200),
    "packed": IGConfig(method="packed", batch_rows=200),
    "fast": IGConfig(method="fast", batch_rows=200),
    "fast-bf16": IGConfig(method="fast", precision="bfloat16", batch_rows=200),
}


def matmul_gflops(rows: int, inner: int = 576, out: int = 1536, repeats: int = 30) -> float:
    """fp32 throughput of x[rows, inner] @ W[inner, out], the shape of one FFN projection."""
    x, w = torch.randn(rows, inner), torch.randn(out, inner)
    for _ in range(3):
        torch.nn.functional.linear(x, w)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.nn.functional.linear(x, w)
    return repeats * 2 * rows * inner * out / (time.perf_counter() - start) / 1e9


def cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_1min() -> float:
    return os.getloadavg()[0]


class PeakRSS:
    """The largest resident set size (MB) of this process while the block runs, sampled every 20 ms."""

    def __enter__(self):
        self.peak, self._stop = self._rss(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    def _poll(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")


def count_flops(fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def path_flops(adapter, prompts, name: str, config: IGConfig) -> float:
    if name == "reference":  # affine in m: F(m) = F(1) + (m - 1) (F(2) - F(1))
        f1, f2 = (count_flops(lambda m=m: integrated_gradients_many(adapter, prompts, config=IGConfig(method="reference", steps=m)))
                  for m in (1, 2))
        return f1 + (config.steps - 1) * (f2 - f1)
    return count_flops(lambda: integrated_gradients_many(adapter, prompts, config=config))


def machine_rows(when: str) -> list[dict]:
    return [{"when": when, "rows": r, "gflops_fp32": matmul_gflops(r), "threads": torch.get_num_threads(),
             "cpus": os.cpu_count(), "load_1min": load_1min()} for r in (20, 200, 600, 2000)]


def write(rows: list[dict], machine: pd.DataFrame, names: list[str], args, commit: str) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    ref = frame[frame.path == "reference"].groupby("fact_id")["seconds_per_prompt"].mean()
    frame["speedup_vs_reference"] = frame["fact_id"].map(ref) / frame["seconds_per_prompt"]
    ref_cpu = frame[frame.path == "reference"].groupby("fact_id")["cpu_seconds_per_prompt"].mean()
    frame["cpu_speedup_vs_reference"] = frame["fact_id"].map(ref_cpu) / frame["cpu_seconds_per_prompt"]
    frame["gflops_peak_fp32"] = machine["gflops_fp32"].max()
    frame["threads"], frame["cpus"] = torch.get_num_threads(), os.cpu_count()
    frame["shared_machine"] = frame[["load_1min_before", "load_1min_after"]].max(axis=1) > args.threads + 0.5
    frame["device"], frame["commit"] = "cpu", commit
    frame["date_utc"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    frame.to_csv(args.out / "attribution_speed.csv", index=False)
    machine.to_csv(args.out / "machine.csv", index=False)
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--facts", type=int, default=2, help="facts from the fixed sample")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (set explicitly)")
    parser.add_argument("--reference-prompts", type=int, default=0, help="reference on the first N prompts of each fact (0: all)")
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset of " + ",".join(PATHS))
    parser.add_argument("--count-flops", default="reference,packed,fast", help="paths whose FLOPs are counted (untimed runs)")
    parser.add_argument("--steps", type=int, default=20, help="m (20: the paper; fewer only for a smoke test)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.paths.split(",")
    for name in PATHS:
        PATHS[name] = dataclasses.replace(PATHS[name], steps=args.steps)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()

    machine = machine_rows("start")
    adapter = load_model(args.model)
    rows = []
    for k, fact_id in enumerate(SAMPLE[: args.facts]):
        relation, index = fact_id.split("/")
        fact = data.load_facts([relation])[int(index)]
        usable, _ = encode_fact(adapter, fact, data.load_relations([relation])[relation].templates)
        prompts = [p for _, p in usable]
        scores = {}
        order = names[k % len(names):] + names[: k % len(names)]  # rotate, so no path always runs first
        for name in order:
            todo = prompts[: args.reference_prompts or None] if name == "reference" else prompts
            before = load_1min()
            with PeakRSS() as rss:
                cpu, start = cpu_seconds(), time.perf_counter()
                scores[name] = integrated_gradients_many(adapter, todo, config=PATHS[name])
                seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
            rows.append({"model": args.model, "fact_id": fact_id, "path": name, "method": PATHS[name].method,
                         "precision": PATHS[name].precision, "prompts": len(todo), "prompts_in_fact": len(prompts),
                         "tokens_mean": sum(len(p.input_ids) for p in todo) / len(todo), "seconds": seconds,
                         "seconds_per_prompt": seconds / len(todo), "seconds_9_prompts": 9 * seconds / len(todo),
                         "cpu_seconds": cpu, "cpu_seconds_per_prompt": cpu / len(todo),
                         "peak_rss_mb": rss.peak, "load_1min_before": before, "load_1min_after": load_1min()})
            print(f"{fact_id} {name:10s} {len(todo)} prompts {seconds:8.2f} s  {9 * seconds / len(todo):7.2f} s/9 prompts  "
                  f"RSS {rss.peak:6.0f} MB  load {before:.1f}", flush=True)
        # untimed: FLOPs of each path on the same prompts (bf16 does the same operations as fast)
        flops = {}
        for name in order:
            todo = prompts[: args.reference_prompts or None] if name == "reference" else prompts
            if name == "fast-bf16" and "fast" in flops:
                flops[name] = flops["fast"]
            elif name != "fast-bf16" and name in args.count_flops.split(","):
                flops[name] = path_flops(adapter, todo, name, PATHS[name])
        for row in rows[-len(order):]:
            name, n = row["path"], row["prompts"]
            ref = scores.get("reference")
            mine = scores[name]
            if ref is not None:
                diffs = [float((a - b).abs().max() / b.abs().max()) for a, b in zip(mine, ref)]
                row["max_rel_diff_vs_reference"] = max(diffs)
            fl = flops.get(name)
            if fl is not None:
                row["gflop"] = fl / 1e9
                row["gflop_per_prompt"] = fl / 1e9 / n
                row["gflops_achieved"] = fl / 1e9 / row["seconds"]

        frame = write(rows, pd.DataFrame(machine), names, args, commit)  # after every fact: a partial run keeps its rows

    machine += machine_rows("end")
    frame = write(rows, pd.DataFrame(machine), names, args, commit)
    machine = pd.DataFrame(machine)
    print(f"\nmodel: {describe(args.model)}; threads {torch.get_num_threads()}; machine fp32 peak {machine['gflops_fp32'].max():.0f} GFLOPS")
    summary = frame.groupby("path")[["seconds_per_prompt", "seconds_9_prompts", "gflop_per_prompt", "gflops_achieved",
                                      "speedup_vs_reference", "peak_rss_mb", "load_1min_before"]].mean()
    print(summary.round(2).to_string())
    print("paper: 13.3 s per fact (9 prompts) on a V100 for BERT-base")


if __name__ == "__main__":
    sys.exit(main())
