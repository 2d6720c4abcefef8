"""The claims chapter's bootstrap: plain pandas statistics against ``ClusterSums``, in one run on one machine.

    .venv/bin/python benchmarks/bootstrap_speed.py [--n-boot 1000] [--repeats 3]

For each claim statistic of ``kn_lib.book.claims.paper_claims`` that groups by its cluster (Figures 4-5's
paired difference, Table 4, Table 5, Table 6's Delta PPL and rates), on the committed tables of
SmolLM2-135M's uniform sample (10 facts per relation, official definitions where committed), times
``bootstrap_ci`` with the statistic written as a plain ``frame -> float`` function (evaluated on each
resampled frame) and as the ``ClusterSums`` the chapter uses (per-cluster totals weighted by draw counts),
interleaved, and checks that both give the same interval (same draws). Writes
``benchmarks/results/bootstrap_speed.csv``: one row per statistic, seconds of each path (median of
``--repeats``), their ratio, the largest difference between the intervals' ends and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

from kn_lib.book import KNOWN_OFFICIAL, BookSample
from kn_lib.book.claim_tables import official_then_earlier, stored_tables
from kn_lib.book.claims import (
    _ERASE_CONTRAST, _delta_ppl, _paired_relation_diff, bootstrap_ci, group_mean_diff,
)
from kn_lib.experiments.evaluation import perplexity
from kn_lib.experiments.update_summary import delta_ppl

OUT = Path(__file__).parent / "results" / "bootstrap_speed.csv"


def _paired(column, by, a, b):
    def stat(f):
        wide = f.pivot_table(index="relation", columns=by, values=column, aggfunc="mean")
        return float((wide[a] - wide[b]).dropna().mean()) if a in wide and b in wide else np.nan
    return stat


def _erase_contrast(f):
    out = []
    for _, g in f.groupby("erased_relation"):
        change = {}
        for scope in ("erased", "other"):
            sel = g[g["scope"] == scope]
            if sel.empty:
                return np.nan
            before, after = perplexity(sel["p_before"].tolist()), perplexity(sel["p_after"].tolist())
            change[scope] = 100 * (after - before) / before
        out.append(change["erased"] - change["other"])
    return float(np.mean(out))


def _rate(f):
    rates = f.groupby("neuron_set")["success"].mean() * 100
    return float(rates.get("knowledge", np.nan) - rates.get("random", np.nan))


def _dppl(f):  # each drawn copy of a fact keeps its own edits
    sel = f[f["scope"] == "intra"]
    return delta_ppl(sel.assign(edit=sel["fact_id"].astype(str) + "/" + sel["edit"].astype(str)), "logp")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sample = BookSample(model="smollm2-135m", facts_per_relation=10, params=KNOWN_OFFICIAL)
    tables = {name: table for group in stored_tables(official_then_earlier(sample), "uniform", say=lambda s: None).values()
              for name, table in group.items()}
    own = tables["suppress"][tables["suppress"]["scope"] == "own"].assign(change=lambda f: 100 * f["change_ratio"])
    bing = tables["bingrel"][tables["bingrel"]["method"] == "ig"]
    erase = tables["erase"][tables["erase"]["method"] == "ig"] if "method" in tables["erase"] else tables["erase"]
    ppl = tables["ppl_prompts"][tables["ppl_prompts"]["neuron_set"] == "knowledge"]
    cases = [  # (name, frame, cluster, plain, ClusterSums)
        ("Figure 4: suppress KN - baseline", own[own["operation"] == "suppress"], "relation",
         _paired("change", "method", "ig", "activation"), _paired_relation_diff("change", "method", "ig", "activation")),
        ("Table 4: T1 - T3", bing, "relation", _paired("activation", "type", "T1", "T3"),
         _paired_relation_diff("activation", "type", "T1", "T3")),
        ("Table 5: erased - other PPL change", erase, "erased_relation", _erase_contrast, _ERASE_CONTRAST),
        ("Table 6: success KN - random", tables["update"], "fact_id", _rate,
         group_mean_diff("success", "neuron_set", "knowledge", "random", scale=100)),
        ("Table 6: intra Delta PPL", ppl, "fact_id", _dppl, _delta_ppl("intra")),
    ]
    rows = []
    for name, frame, cluster, plain, fast in cases:
        times = {"plain": [], "cluster_sums": []}
        for _ in range(args.repeats):
            for path, stat in (("plain", plain), ("cluster_sums", fast)):  # interleaved: both see the same load
                start = time.perf_counter()
                iv = bootstrap_ci(frame, stat, cluster, n_boot=args.n_boot, seed=0)
                times[path].append(time.perf_counter() - start)
                if path == "plain":
                    ref = iv
        diff = max(abs(iv.low - ref.low), abs(iv.high - ref.high), abs(iv.estimate - ref.estimate))
        scale = max(abs(ref.low), abs(ref.high), 1e-12)
        row = {"statistic": name, "rows": len(frame), "clusters": iv.n_clusters, "n_boot": args.n_boot,
               "plain_s": statistics.median(times["plain"]), "cluster_sums_s": statistics.median(times["cluster_sums"]),
               "largest_relative_difference": diff / scale, "load_1min": os.getloadavg()[0]}
        row["speedup"] = row["plain_s"] / row["cluster_sums_s"]
        rows.append(row)
        print(f"{name:40s} {row['plain_s']:8.3f} s  {row['cluster_sums_s']:7.4f} s  x{row['speedup']:7.1f}  "
              f"rel. diff {row['largest_relative_difference']:.1e}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(OUT, index=False)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
