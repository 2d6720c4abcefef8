"""Where the time of one fact's attribution goes, before (``packed``) and after (``fast``): torch.profiler.

    .venv/bin/python benchmarks/profile_attribution.py [--fact P36/17] [--threads 2] [--model smollm2-135m]

Writes ``benchmarks/results/profile_fact.csv``: one row per (path, category) with the operators' own CPU
time (``self_cpu_time_total``), its share of the wall time, and the FLOPs of that category. Categories:

* ``matrix products``: ``mm``/``addmm``/``bmm`` (the FFN, attention projections and vocabulary head,
  forward and backward);
* ``attention over the cache``: the fused scaled-dot-product attention kernels and their backward;
* ``softmax (vocabulary)``: ``_softmax`` and its backward (p = softmax over the whole vocabulary);
* ``elementwise``: norms, SiLU, products and sums of the residual stream;
* ``copies, indexing, cat``: the batch's bookkeeping (patching rows, gathering the cache, growing);
* ``other operators`` and ``Python, dispatch, autograd engine`` (wall time not spent in any operator).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from torch.profiler import ProfilerActivity, profile

from kn_lib import data
from kn_lib.attribution import IGConfig, integrated_gradients_many
from kn_lib.models import load_model
from kn_lib.pipeline import encode_fact

OUT = Path(__file__).parent / "results"

CATEGORIES = {
    "matrix products": ("aten::mm", "aten::addmm", "aten::bmm", "aten::_weight_int8pack_mm"),
    "attention over the cache": ("scaled_dot_product", "flash_attention", "_efficient_attention", "_scaled_dot_product"),
    "softmax (vocabulary)": ("aten::_softmax", "aten::_softmax_backward_data", "aten::_log_softmax"),
    "elementwise": ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::silu", "aten::rsqrt", "aten::pow", "aten::mean",
                    "aten::tanh", "aten::neg", "aten::sum", "aten::gelu", "aten::native_layer_norm", "aten::silu_backward",
                    "aten::gelu_backward", "aten::native_layer_norm_backward", "aten::fill_", "aten::zero_", "aten::exp",
                    "aten::where", "aten::masked_fill", "aten::cos", "aten::sin", "aten::_to_copy"),
    "copies, indexing, cat": ("aten::copy_", "aten::cat", "aten::index", "aten::index_put", "aten::clone", "aten::gather",
                              "aten::scatter", "aten::index_add", "aten::index_select", "aten::slice_backward", "aten::select_backward",
                              "aten::embedding", "aten::contiguous", "aten::expand", "aten::repeat", "aten::_unsafe_view",
                              "aten::new_zeros", "aten::empty"),
}


def category(name: str) -> str:
    for cat, prefixes in CATEGORIES.items():
        if any(name.startswith(p) or p in name for p in prefixes):
            return cat
    return "other operators"


def load_label() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def profile_path(adapter, prompts, method: str) -> tuple[list[dict], float]:
    config = IGConfig(method=method, batch_rows=200)  # as in the committed profile
    integrated_gradients_many(adapter, prompts[:1], [adapter.n_layers - 1], IGConfig(method=method, steps=2))  # warm-up
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        start = time.perf_counter()
        integrated_gradients_many(adapter, prompts, config=config)
        wall = time.perf_counter() - start
    by_cat: dict[str, dict] = {}
    for event in prof.key_averages():
        if event.self_cpu_time_total <= 0 and not event.flops:
            continue
        if event.key.startswith(("ProfilerStep", "autograd::engine", "[memory]")) or "Backward" in event.key:
            continue  # autograd nodes: their time is their operators', counted there
        row = by_cat.setdefault(category(event.key), {"seconds": 0.0, "gflop": 0.0, "top_ops": []})
        row["seconds"] += event.self_cpu_time_total / 1e6
        row["gflop"] += (event.flops or 0) / 1e9
        row["top_ops"].append((event.self_cpu_time_total, event.key))
    rows = []
    accounted = sum(r["seconds"] for r in by_cat.values())
    for cat, r in by_cat.items():
        top = ", ".join(k for _, k in sorted(r["top_ops"], reverse=True)[:3])
        rows.append({"path": method, "category": cat, "seconds": r["seconds"], "gflop": r["gflop"], "top_operators": top})
    rows.append({"path": method, "category": "Python, dispatch, autograd engine", "seconds": max(0.0, wall - accounted),
                 "gflop": 0.0, "top_operators": "wall time outside any operator"})
    for r in rows:
        r.update(share_of_wall=r["seconds"] / wall, wall_seconds=wall,
                 gflops_achieved=r["gflop"] / r["seconds"] if r["gflop"] and r["seconds"] else float("nan"))
    return rows, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--fact", default="P36/17")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=0, help="only the first N prompts (0: all)")
    parser.add_argument("--out", type=Path, default=OUT / "profile_fact.csv")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    adapter = load_model(args.model)
    relation, index = args.fact.split("/")
    fact = data.load_facts([relation])[int(index)]
    usable, _ = encode_fact(adapter, fact, data.load_relations([relation])[relation].templates)
    prompts = [p for _, p in usable][: args.prompts or None]
    rows = []
    for method in ("packed", "fast"):
        before = load_label()
        result, wall = profile_path(adapter, prompts, method)
        for r in result:
            r.update(model=args.model, fact_id=args.fact, prompts=len(prompts), threads=torch.get_num_threads(),
                     load_before=before, load_after=load_label())
        rows += result
        print(f"{method}: {wall:.1f} s for {len(prompts)} prompts ({before})", flush=True)
    frame = pd.DataFrame(rows)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
    frame["commit"] = commit
    frame = frame.sort_values(["path", "seconds"], ascending=[True, False])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    print(frame.pivot_table(index="category", columns="path", values="seconds", aggfunc="sum").round(2).to_string())


if __name__ == "__main__":
    sys.exit(main())
