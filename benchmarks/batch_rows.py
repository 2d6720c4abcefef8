"""Speed and peak memory of the fast attribution path against ``IGConfig.batch_rows``, one fact.

    .venv/bin/python benchmarks/batch_rows.py [--fact P36/17] [--threads 2] [--values 25,50,100,200]

``batch_rows`` bounds how many (prompt, step) units a pass holds; each unit brings one row per scaled
layer, so the batch grows to ``batch_rows x layers`` rows at the top and the memory autograd keeps
grows with it. Each value runs in its own process (so its peak resident memory is its own), the values
interleaved twice in rotating order. Writes ``benchmarks/results/batch_rows.csv``: seconds, s per
9-prompt fact and the process's peak RSS per run, with the load average before it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

OUT = Path(__file__).parent / "results"


def child(fact_id: str, batch_rows: int, threads: int, model: str) -> None:
    import torch

    from kn_lib import data
    from kn_lib.attribution import IGConfig, integrated_gradients_many
    from kn_lib.models import load_model
    from kn_lib.pipeline import encode_fact

    torch.set_num_threads(threads)
    adapter = load_model(model)
    relation, index = fact_id.split("/")
    fact = data.load_facts([relation])[int(index)]
    prompts = [p for _, p in encode_fact(adapter, fact, data.load_relations([relation])[relation].templates)[0]]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    integrated_gradients_many(adapter, prompts, config=IGConfig(batch_rows=batch_rows))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"prompts": len(prompts), "seconds": seconds, "peak_rss_mb": peak, "rss_before_mb": base}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fact", default="P36/17")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--values", default="25,50,100,200")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.child:
        return child(args.fact, args.child, args.threads, args.model)
    values = [int(v) for v in args.values.split(",")]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    rows = []
    for r in range(args.repeats):
        order = values[r % len(values):] + values[: r % len(values)]
        for value in order:
            load = os.getloadavg()[0]
            out = subprocess.run([sys.executable, __file__, "--child", str(value), "--fact", args.fact, "--threads",
                                  str(args.threads), "--model", args.model], capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row.update({"batch_rows": value, "repeat": r, "seconds_9_prompts": 9 * row["seconds"] / row["prompts"],
                        "load_1min_before": load})
            rows.append(row)
            print(f"batch_rows {value:4d}: {row['seconds']:6.2f} s, peak RSS {row['peak_rss_mb']:6.0f} MB, load {load:.1f}", flush=True)
    import pandas as pd

    frame = pd.DataFrame(rows)
    frame["fact_id"], frame["model"], frame["threads"], frame["cpus"] = args.fact, args.model, args.threads, os.cpu_count()
    frame["commit"], frame["date_utc"] = commit, datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "batch_rows.csv", index=False)


if __name__ == "__main__":
    main()
