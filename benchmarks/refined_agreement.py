"""Do the options change the refined knowledge neurons? bfloat16 products, and Gauss-Legendre at equal cost.

    .venv/bin/python benchmarks/refined_agreement.py [--relations P36,P37,P103,P1412,P138,P140] [--facts-per-relation 5]
                                                     [--converged-steps 200] [--threads 2] [--append]

(The committed run: the default relations with ``--converged-steps 64 --threads 1``, where P103 has no fact
with 3 usable prompts for a causal model, then ``--relations P176 --append`` to pass 30 facts.)

For each fact (all its usable prompts, all layers, the default ``fast`` path) the attribution runs with:

* ``riemann-20``: the paper's settings (right Riemann sum, m = 20, fp32);
* ``riemann-20-bf16``: the same with bfloat16 matrix products (``IGConfig(precision="bfloat16")``);
* ``gauss-legendre-20``: 20 Gauss-Legendre nodes, the same cost as the paper's sum (fp32);
* ``converged``: Gauss-Legendre with ``--converged-steps`` nodes (fp32), the integral itself to float
  precision (its own convergence is checked on the first fact against half as many nodes, and stored
  as ``converged_check_rel_diff``).

Facts need at least 3 usable prompts (the official rule's minimum count; fewer cannot have knowledge
neurons). The CSV is rewritten after each relation, so an interrupted run keeps the finished ones.

Coarse sets (t = 0.2) and refined sets follow the paper; the share threshold p is searched per relation
on the paper's settings and then applied to every setting, so only the attributions differ. Writes
``benchmarks/results/refined_agreement.csv``: one row per (fact, setting, compared with): whether the
refined sets are identical, their Jaccard overlap, the largest score difference relative to the largest
score, and the seconds each setting took.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from kn_lib import data
from kn_lib.attribution import IGConfig, integrated_gradients_many
from kn_lib.models import load_model
from kn_lib.pipeline import encode_fact
from kn_lib.refine import OFFICIAL_MIN_COUNT, adaptive_share_threshold, coarse_neurons, refine_fact

OUT = Path(__file__).parent / "results"
COMPARISONS = (("riemann-20-bf16", "riemann-20"), ("riemann-20", "converged"), ("gauss-legendre-20", "converged"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--relations", default="P36,P37,P103,P1412,P138,P140")
    parser.add_argument("--facts-per-relation", type=int, default=5)
    parser.add_argument("--converged-steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT / "refined_agreement.csv")
    parser.add_argument("--append", action="store_true", help="keep the rows already in --out, skip their relations")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = {
        "riemann-20": IGConfig(),
        "riemann-20-bf16": IGConfig(precision="bfloat16"),
        "gauss-legendre-20": IGConfig(rule="gauss-legendre"),
        "converged": IGConfig(steps=args.converged_steps, rule="gauss-legendre"),
    }
    adapter = load_model(args.model)
    relations = data.load_relations(args.relations.split(","))
    coarse: dict[str, dict[str, dict[str, list]]] = {}  # setting -> relation -> fact -> coarse sets
    scores: dict[tuple[str, str], list[torch.Tensor]] = {}
    seconds: dict[tuple[str, str], float] = {}
    convergence = None
    rows: list[dict] = []
    frame = pd.DataFrame()
    if args.append and args.out.exists():
        rows = pd.read_csv(args.out).to_dict("records")
        convergence = rows[0]["converged_check_rel_diff"] if rows else None
        relations = {r: rel for r, rel in relations.items() if r not in {row["relation"] for row in rows}}
    for rid, relation in relations.items():
        table, taken = data.load_facts([rid]), 0
        for row in table:
            if taken == args.facts_per_relation:
                break
            usable, _ = encode_fact(adapter, row, relation.templates)
            if len(usable) < OFFICIAL_MIN_COUNT:  # the official rule needs a neuron in >= 3 prompts
                continue
            taken += 1
            prompts = [p for _, p in usable]
            for name, config in settings.items():
                start = time.perf_counter()
                result = integrated_gradients_many(adapter, prompts, config=config)
                seconds[row["fact_id"], name] = time.perf_counter() - start
                scores[row["fact_id"], name] = result
                coarse.setdefault(name, {}).setdefault(rid, {})[row["fact_id"]] = [coarse_neurons(s) for s in result]
            if convergence is None:
                half = integrated_gradients_many(adapter, prompts, config=IGConfig(steps=args.converged_steps // 2, rule="gauss-legendre"))
                convergence = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(half, scores[row["fact_id"], "converged"]))
                print(f"converged integral: {args.converged_steps} vs {args.converged_steps // 2} nodes differ by {convergence:.1e} of the largest score")
            print(f"{row['fact_id']}: {len(prompts)} prompts, " + ", ".join(f"{n} {seconds[row['fact_id'], n]:.1f} s" for n in settings), flush=True)
        # the relation is complete: compare, and write what is done so far (an interrupted run keeps it)
        rows += compare(rid, coarse, scores, seconds, settings, convergence, args)
        frame = pd.DataFrame(rows)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(args.out, index=False)
        for fact_id in coarse.get("riemann-20", {}).get(rid, {}):  # free the relation's score tensors
            for name in settings:
                scores.pop((fact_id, name), None)
    if frame.empty:
        print("no fact with at least 3 usable prompts: nothing compared")
        return
    print(frame.groupby(["setting", "compared_with"])[["same_refined", "jaccard", "max_rel_score_diff"]].mean().round(3).to_string())
    print(f"facts: {frame.fact_id.nunique()}")


def compare(rid, coarse, scores, seconds, settings, convergence, args) -> list[dict]:
    """Rows of one relation: the share threshold p searched on the paper's settings (official rule),
    applied to every setting's coarse sets; refined sets and scores compared pairwise."""
    rows = []
    by_fact = coarse.get("riemann-20", {}).get(rid, {})
    if by_fact:
        p = adaptive_share_threshold(by_fact).p
        for fact_id in by_fact:
            refined = {name: refine_fact(coarse[name][rid][fact_id], p) for name in settings}
            for name, other in COMPARISONS:
                a, b = refined[name], refined[other]
                diff = max(float((x - y).abs().max() / y.abs().max()) for x, y in zip(scores[fact_id, name], scores[fact_id, other]))
                rows.append({"model": args.model, "relation": rid, "fact_id": fact_id, "setting": name, "compared_with": other,
                             "p": p, "same_refined": a == b, "jaccard": len(a & b) / len(a | b) if a | b else 1.0, "n_refined": len(a),
                             "n_refined_other": len(b), "max_rel_score_diff": diff, "seconds": seconds[fact_id, name],
                             "seconds_other": seconds[fact_id, other], "converged_steps": args.converged_steps,
                             "converged_check_rel_diff": convergence, "threads": torch.get_num_threads()})
    return rows


if __name__ == "__main__":
    sys.exit(main())
