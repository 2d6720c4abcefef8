"""Reference vs fast integrated gradients on the real offline model, in one run on one machine.

    .venv/bin/python benchmarks/attribution_speed.py [--facts 3] [--reference-prompts 3] [--model smollm2-135m]

Prints and writes ``benchmarks/results/attribution_speed.csv`` (one row per prompt x setting) and
``benchmarks/results/machine.csv`` (the measured fp32 matrix-multiply throughput of this machine):

* seconds per prompt and per fact (m = 20, all layers), reference vs fast, and the speed-up ratio;
* seconds per fact of the path the ``kn`` command takes: all of a fact's prompts in one batch
  (``integrated_gradients_many``), written to ``benchmarks/results/fact_speed.csv``;
* achieved GFLOPS (FLOPs counted by ``torch.utils.flop_counter``) against the measured matmul peak;
* peak resident memory of the process after each setting;
* max attribution difference of each setting from the paper's settings on the fast path;
* for the options (Gauss-Legendre with fewer steps, bfloat16), how often the refined knowledge
  neurons change compared with the paper's settings.

The reference takes ~10x longer, so it runs on the first ``--reference-prompts`` prompts only; the
per-fact time of the reference is projected from its per-prompt time. Timings vary between runs on
a shared machine; the ratios, measured in the same run, are what to compare.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from kn_lib import data
from kn_lib.attribution import IGConfig, integrated_gradients, integrated_gradients_many
from kn_lib.models import describe, load_model
from kn_lib.pipeline import encode_fact, predict
from kn_lib.refine import adaptive_share_threshold, coarse_neurons, refine_fact

OUT = Path(__file__).parent / "results"
SAMPLE = ("P36/17", "P37/4", "P1412/9", "P103/4", "P36/24")  # facts SmolLM2 answers for some prompt; fixed


def matmul_gflops(rows: int, inner: int = 576, out: int = 1536, repeats: int = 30) -> float:
    """fp32 throughput of x[rows, inner] @ W[inner, out], the shape of one FFN projection."""
    x, w = torch.randn(rows, inner), torch.randn(out, inner)
    for _ in range(3):
        torch.nn.functional.linear(x, w)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.nn.functional.linear(x, w)
    return repeats * 2 * rows * inner * out / (time.perf_counter() - start) / 1e9


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_attribution(adapter, prompt, config: IGConfig) -> tuple[torch.Tensor, float, float]:
    """Scores, seconds, and FLOPs (counted on a separate, untimed run would double the cost; the
    counter's overhead is small next to the matrix products, so one counted run is timed)."""
    counter = FlopCounterMode(display=False)
    start = time.perf_counter()
    with counter:
        scores = integrated_gradients(adapter, prompt, config=config)
    return scores, time.perf_counter() - start, counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--facts", type=int, default=3, help="facts from the fixed sample")
    parser.add_argument("--reference-prompts", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    machine = pd.DataFrame(
        [{"rows": r, "gflops_fp32": matmul_gflops(r), "threads": torch.get_num_threads(), "cpus": os.cpu_count()} for r in (20, 200, 600)]
    )
    print(machine.to_string(index=False))
    machine.to_csv(args.out / "machine.csv", index=False)
    peak = machine["gflops_fp32"].max()

    adapter = load_model(args.model)
    settings = {
        "fast": IGConfig(),
        "reference": IGConfig(method="reference"),
        "fast-gauss8": IGConfig(steps=8, rule="gauss-legendre"),
        "fast-bf16": IGConfig(precision="bfloat16"),
    }
    rows, coarse, fact_rows = [], {}, []
    n_ref = 0
    for fact_id in SAMPLE[: args.facts]:
        relation, index = fact_id.split("/")
        fact = data.load_facts([relation])[int(index)]
        usable, _ = encode_fact(adapter, fact, data.load_relations([relation])[relation].templates)
        # the kn command's path: the fact's prompts together, one padded batch
        counter = FlopCounterMode(display=False)
        start = time.perf_counter()
        with counter:
            integrated_gradients_many(adapter, [p for _, p in usable], config=IGConfig())
        seconds = time.perf_counter() - start
        fact_rows.append({"model": args.model, "fact_id": fact_id, "prompts": len(usable), "seconds": seconds,
                          "seconds_per_prompt": seconds / len(usable), "seconds_9_prompts": 9 * seconds / len(usable),
                          "gflop": counter.get_total_flops() / 1e9, "gflops_achieved": counter.get_total_flops() / seconds / 1e9,
                          "gflops_peak_fp32": peak, "threads": torch.get_num_threads()})
        print(f"{fact_id} batched fact ({len(usable)} prompts) {seconds:7.2f} s", flush=True)
        for t, prompt in usable:
            p_answer, top1 = predict(adapter, prompt)
            paper_scores = None
            for name, config in settings.items():
                if name == "reference" and n_ref >= args.reference_prompts:
                    continue
                if name == "fast-bf16" and n_ref >= 1:  # measured below fp32 speed on CPUs without bf16 units
                    continue
                scores, seconds, flops = timed_attribution(adapter, prompt, config)
                if name == "fast":
                    paper_scores = scores
                coarse.setdefault(name, {}).setdefault(relation, {}).setdefault(fact_id, []).append(coarse_neurons(scores))
                rows.append(
                    {"model": args.model, "fact_id": fact_id, "template_id": t, "tokens": len(prompt.input_ids),
                     "setting": name, "method": config.method, "steps": config.steps, "rule": config.rule,
                     "precision": config.precision, "seconds": seconds, "gflop": flops / 1e9,
                     "gflops_achieved": flops / seconds / 1e9, "gflops_peak_fp32": peak,
                     "max_abs_diff_vs_paper": float((scores - paper_scores).abs().max()),
                     "rel_diff_vs_paper": float((scores - paper_scores).abs().max() / paper_scores.abs().max()),
                     "peak_rss_mb": peak_rss_mb(), "p_answer": p_answer, "top1_correct": top1 == prompt.target_id}
                )
                print(f"{fact_id} t{t} {name:12s} {seconds:7.2f} s  {flops / seconds / 1e9:6.1f} GFLOPS  "
                      f"diff {rows[-1]['rel_diff_vs_paper']:.2e}", flush=True)
            n_ref += 1
    frame = pd.DataFrame(rows)
    frame.to_csv(args.out / "attribution_speed.csv", index=False)
    pd.DataFrame(fact_rows).to_csv(args.out / "fact_speed.csv", index=False)

    # refined neurons per fact: does the reference agree, do the options change them? (p searched on this
    # sample, per relation; only facts whose every prompt ran under the setting are compared)
    changes = []
    for name in settings:
        if name == "fast":
            continue
        for relation, by_fact in coarse["fast"].items():
            p = adaptive_share_threshold(by_fact).p
            for fact_id, sets in by_fact.items():
                other = coarse.get(name, {}).get(relation, {}).get(fact_id)
                if other is None or len(other) != len(sets):
                    continue
                a, b = refine_fact(sets, p), refine_fact(other, p)
                changes.append({"setting": name, "fact_id": fact_id, "same_refined": a == b, "jaccard": len(a & b) / max(1, len(a | b))})
    pd.DataFrame(changes).to_csv(args.out / "refined_agreement.csv", index=False)

    per_prompt = frame.groupby("setting")["seconds"].mean()
    prompts_per_fact = frame[frame.setting == "fast"].groupby("fact_id").size().mean()
    print(f"\nmodel: {describe(args.model)}")
    print(f"prompts per fact (usable for a causal LM): {prompts_per_fact:.1f}")
    for name, sec in per_prompt.items():
        print(f"{name:12s} {sec:7.2f} s/prompt  {sec * prompts_per_fact:7.1f} s/fact  speed-up vs reference "
              f"{per_prompt['reference'] / sec:5.1f}x")
    print(f"paper: 13.3 s/fact (9 prompts) on a V100 for BERT-base; here {per_prompt['fast'] * 9:.1f} s for 9 prompts (fast)")
    print(pd.DataFrame(changes).groupby("setting")[["same_refined", "jaccard"]].mean() if changes else "")


if __name__ == "__main__":
    sys.exit(main())
