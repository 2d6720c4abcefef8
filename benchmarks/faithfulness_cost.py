"""What each attribution method of the faithfulness benchmark costs, as ratios to the paper's IG, in one run.

    .venv/bin/python benchmarks/faithfulness_cost.py [--model smollm2-135m] [--facts 3] [--threads 2] [--repeats 3]

The methods of ``kn_lib.experiments.attribution_methods`` (``experiments.faithfulness``), each on one prompt
at a time (the benchmark's unit), all FFN layers, fp32:

* ``ig-m20``: integrated gradients, right Riemann sum, m = 20 (``integrated_gradients_many``, fast path);
* ``ig-left-m20``: the left Riemann sum, m = 20, computed directly (``IGConfig(steps=20, rule="left")``), not
  derived from the right sum as ``attribution_methods.ig_scores`` does (there it costs ig-m20 plus one
  one-step gradient);
* ``ig-converged``: Gauss-Legendre, 32 nodes (``IGConfig(steps=32, rule="gauss-legendre")``);
* ``grad-x-act``: gradient x activation (IG with one right-sum step);
* ``activation``: the raw activations (one forward pass);
* ``logprob-increase``: Yu & Ananiadou's score (``LogprobIncrease.scores``), with its per-layer
  [vocab, n_neurons] matrices already built; building them (once per model) is its own row,
  ``logprob-increase-setup``, timed once;
* ``exact-ablation-1000``: the ground truth, ``exact_ablation.single_neuron_effects`` on 1,000 candidate
  neurons drawn uniformly (seeded per prompt; all neurons when the model has fewer), and the derived row
  ``exact-ablation-per-neuron`` (its seconds and FLOPs divided by the number of candidates).

Prompts: the first ``--facts`` facts of relation P36 with a usable prompt, each fact's first prompt the model answers top-1
(``FactPrompts``, ``answered_correctly``); a fact with none falls back to its first usable prompt (said in
``note``); a fact with no usable prompt is skipped and the next one taken. Per prompt, each method first runs once under
``torch.utils.flop_counter.FlopCounterMode`` (untimed: the counter's per-operator overhead stays out of the
timings; it also warms every method up), then ``--repeats`` timed runs, interleaved in rotating order (no
method always runs first or right after the same one), so a change of the machine's load touches all of them.

FlopCounterMode counts matrix products (and convolutions) only. logprob-increase's main work is elementwise:
for each layer it forms the [vocab, n_neurons] logits (z + a_i M[:, i]) / r_i and their log-sum-exp, about
4 operations per entry (multiply-add, divide, exp, sum), none of them counted; the column ``elementwise_ops``
gives that analytic count, vocab x n_neurons x n_layers x 4, for logprob-increase (0 for every other row).

Writes ``benchmarks/results/faithfulness_cost.csv`` (rows of other models already there are kept; this
model's are replaced), one row per (model, fact, method), after every fact.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from kn_lib import data
from kn_lib.attribution import IGConfig, integrated_gradients_many
from kn_lib.experiments.attribution_methods import LogprobIncrease, grad_x_activation
from kn_lib.experiments.evaluation import FactPrompts, SkipLog, answered_correctly, seeded_rng
from kn_lib.experiments.exact_ablation import single_neuron_effects
from kn_lib.experiments.faithfulness import FaithfulnessConfig
from kn_lib.model_registry import MODEL_BUILDERS, load_adapter
from kn_lib.models import load_model

OUT = Path(__file__).parent / "results"
RELATION = "P36"
FLOP_NOTE = "FlopCounterMode: matrix products only (elementwise ops not counted; see elementwise_ops)"
ELEMENTWISE_PER_ENTRY = 4  # logprob-increase: multiply-add, divide, exp and sum per [vocab, neuron] entry
COLUMNS = ["model", "fact_id", "template_id", "prompt_tokens", "method", "repeats", "seconds_median", "seconds_min",
           "seconds_max", "gflop", "elementwise_ops", "seconds_vs_ig_m20", "gflop_vs_ig_m20", "n_candidates", "threads",
           "cpus", "load_1min_start", "load_1min_before", "load_1min_after", "shared_machine", "note", "gflop_counts",
           "device", "commit", "date_utc"]


def load_1min() -> float:
    return os.getloadavg()[0]


def count_flops(fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def load(name: str):
    """``kn_lib.models.load_model``; the registry's tiny test models (not known to it) through the registry."""
    return load_adapter(name) if name in MODEL_BUILDERS else load_model(name)


def build_logprob(adapter) -> tuple[LogprobIncrease | None, dict]:
    """``LogprobIncrease`` with every layer's matrix built (timed once), and the setup row's numbers; on a model it
    refuses (Gemma's post-FFN norm), None and the reason."""
    before = load_1min()
    start = time.perf_counter()
    try:
        logprob = LogprobIncrease(adapter)
    except NotImplementedError as err:
        return None, {"note": f"logprob-increase not computed: {err}", "load_1min_before": before, "load_1min_after": load_1min()}
    for layer in range(adapter.n_layers):
        logprob.mixed(layer)
    seconds = time.perf_counter() - start
    after = load_1min()
    # untimed: FLOPs of a fresh build, the constructor and one layer's matrix (every layer's has the same shape)
    fresh = {}
    ctor = count_flops(lambda: fresh.setdefault("x", LogprobIncrease(adapter)))
    one_layer = count_flops(lambda: fresh["x"].mixed(0))
    del fresh
    return logprob, {"seconds": [seconds], "flops": ctor + adapter.n_layers * one_layer, "load_1min_before": before,
                     "load_1min_after": after, "note": "built once per model (all layers' W_U diag(g) V_l), timed once"}


def methods_for(adapter, logprob: LogprobIncrease | None, candidates: list, config: FaithfulnessConfig) -> dict:
    """{method: () -> result} for one prompt (bound later); logprob-increase only when it is defined."""
    right = IGConfig(steps=config.steps, rule="right")
    left = IGConfig(steps=config.steps, rule="left")
    converged = IGConfig(steps=config.converged_steps, rule="gauss-legendre")
    out = {
        "ig-m20": lambda p: integrated_gradients_many(adapter, [p], config=right)[0],
        "ig-left-m20": lambda p: integrated_gradients_many(adapter, [p], config=left)[0],
        "ig-converged": lambda p: integrated_gradients_many(adapter, [p], config=converged)[0],
        "grad-x-act": lambda p: grad_x_activation(adapter, p),
        "activation": lambda p: adapter.activations(p).float(),
        "exact-ablation-1000": lambda p: single_neuron_effects(adapter, p, candidates),
    }
    if logprob is not None:
        out["logprob-increase"] = lambda p: logprob.scores(p)
    return out


def pick_prompt(adapter, prompts: FactPrompts, fact_id: str):
    """The fact's first prompt answered top-1, else its first usable prompt (with a note), else None."""
    usable = prompts.of(fact_id)
    if not usable:
        return None, None
    correct = answered_correctly(adapter, usable)
    if correct:
        return correct[0], ""
    return usable[0], f"no prompt answered top-1: first usable prompt (template {usable[0].template_id}) instead"


def time_prompt(prompt, methods: dict, repeats: int, shift: int) -> dict:
    """FLOPs (one untimed counted run each, which also warms up), then ``repeats`` timed runs in rotating order."""
    names = list(methods)
    out = {m: {"seconds": [], "flops": count_flops(lambda m=m: methods[m](prompt.encoded))} for m in names}
    for r in range(repeats):
        k = (shift + r) % len(names)
        for m in names[k:] + names[:k]:
            before = load_1min()
            start = time.perf_counter()
            methods[m](prompt.encoded)
            out[m]["seconds"].append(time.perf_counter() - start)
            out[m].setdefault("load_1min_before", before)
            out[m]["load_1min_after"] = load_1min()
    return out


def row(base: dict, method: str, result: dict, **extra) -> dict:
    seconds = result.get("seconds") or []
    nan = float("nan")
    return {**base, "method": method, "repeats": len(seconds),
            "seconds_median": statistics.median(seconds) if seconds else nan,
            "seconds_min": min(seconds) if seconds else nan, "seconds_max": max(seconds) if seconds else nan,
            "gflop": result["flops"] / 1e9 if "flops" in result else nan,
            "load_1min_before": result.get("load_1min_before", nan), "load_1min_after": result.get("load_1min_after", nan),
            "note": result.get("note", ""), **extra}


def write(rows: list[dict], args, commit: str, load_start: float) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    ig = frame[frame.method == "ig-m20"].set_index("fact_id")
    for col in ("seconds", "gflop"):
        value = "seconds_median" if col == "seconds" else "gflop"
        per_fact = frame["fact_id"].map(ig[value])
        # the per-model setup row: against the median ig-m20 of this run's prompts
        per_fact = per_fact.where(frame["fact_id"] != "", ig[value].median() if len(ig) else float("nan"))
        frame[f"{col}_vs_ig_m20"] = frame[value] / per_fact
    frame["threads"], frame["cpus"], frame["load_1min_start"] = torch.get_num_threads(), os.cpu_count(), load_start
    # other processes: load before this process did anything, or above its own threads before a run
    frame["shared_machine"] = (load_start > 0.5) | (frame["load_1min_before"] > args.threads + 0.5)
    frame["gflop_counts"], frame["device"], frame["commit"] = FLOP_NOTE, "cpu", commit
    frame["date_utc"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    frame = frame.reindex(columns=COLUMNS)
    path = args.out / "faithfulness_cost.csv"
    if path.exists():  # keep the other models' rows
        old = pd.read_csv(path, dtype={"fact_id": str, "note": str})
        frame = pd.concat([old[old.model != args.model], frame], ignore_index=True).reindex(columns=COLUMNS)
    for col in ("template_id", "prompt_tokens", "n_candidates"):  # integers, empty where they do not apply
        frame[col] = frame[col].astype("Int64")
    frame.to_csv(path, index=False)
    return frame[frame.model == args.model]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--facts", type=int, default=3, help=f"the first N facts of {RELATION} with a usable prompt")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (set explicitly)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each method per prompt (median)")
    parser.add_argument("--candidates", type=int, default=1000, help="neurons of the exact single-neuron ablation")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.facts < 1 or args.repeats < 1 or args.candidates < 1:
        parser.error("--facts, --repeats and --candidates must be >= 1")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    config = FaithfulnessConfig()
    load_start = load_1min()

    adapter = load(args.model)
    n_total = adapter.n_layers * adapter.n_neurons
    exact_name = f"exact-ablation-{args.candidates}"
    logprob, setup = build_logprob(adapter)
    vocab = int(logprob.unembed.shape[0]) if logprob is not None else None
    elementwise = vocab * adapter.n_neurons * adapter.n_layers * ELEMENTWISE_PER_ENTRY if vocab else float("nan")
    print(f"{args.model}: {adapter.n_layers} layers x {adapter.n_neurons} neurons; threads {torch.get_num_threads()}; "
          f"load {load_start:.2f}", flush=True)
    if logprob is None:
        print(f"  {setup['note']}", flush=True)
    else:
        print(f"  logprob-increase-setup {setup['seconds'][0]:8.3f} s  {setup['flops'] / 1e9:10.2f} GFLOP", flush=True)
    rows = [row({"model": args.model, "fact_id": "", "template_id": None, "prompt_tokens": None}, "logprob-increase-setup",
                setup, elementwise_ops=0 if logprob is not None else float("nan"))]

    facts = list(data.load_facts([RELATION]))
    prompts = FactPrompts(adapter, facts, data.load_relations([RELATION]), SkipLog("faithfulness-cost"))
    frame = None
    done = 0
    for k, fact in enumerate(facts):
        if done == args.facts:
            break
        fact_id = fact["fact_id"]
        prompt, note = pick_prompt(adapter, prompts, fact_id)
        if prompt is None:  # e.g. an answer of several tokens: the next fact takes its place
            print(f"{fact_id}: no usable prompt, skipped", flush=True)
            continue
        done += 1
        rng = seeded_rng(config.seed, f"{fact_id}/{prompt.template_id}")
        ids = rng.sample(range(n_total), min(args.candidates, n_total))
        candidates = [(i // adapter.n_neurons, i % adapter.n_neurons) for i in ids]
        methods = methods_for(adapter, logprob, candidates, config)
        methods[exact_name] = methods.pop("exact-ablation-1000")
        results = time_prompt(prompt, methods, args.repeats, shift=k * args.repeats)
        base = {"model": args.model, "fact_id": fact_id, "template_id": prompt.template_id,
                "prompt_tokens": len(prompt.encoded.input_ids)}
        join = lambda *parts: "; ".join(p for p in parts if p)  # noqa: E731
        fewer = f"the model has only {n_total} neurons: all of them" if len(candidates) < args.candidates else ""
        for m in ("ig-m20", "ig-left-m20", "ig-converged", "grad-x-act", "activation", "logprob-increase", exact_name):
            if m == "logprob-increase" and logprob is None:
                rows.append(row(base, m, {"note": setup["note"]}, elementwise_ops=float("nan")))
                rows[-1]["note"] = join(note, setup["note"])
                continue
            extra = {"elementwise_ops": elementwise if m == "logprob-increase" else 0}
            if m == exact_name:
                extra["n_candidates"] = len(candidates)
            rows.append(row(base, m, results[m], **extra))
            rows[-1]["note"] = join(note, fewer if m == exact_name else "")
        per = dict(rows[-1])  # exact ablation per candidate neuron, derived (not timed on its own)
        n = len(candidates)
        for col in ("seconds_median", "seconds_min", "seconds_max", "gflop"):
            per[col] = per[col] / n
        per.update(method="exact-ablation-per-neuron", elementwise_ops=0,
                   note=join(note, f"derived: {exact_name} / {n} candidates"))
        rows.append(per)
        frame = write(rows, args, commit, load_start)  # after every fact: a partial run keeps its rows
        for r in rows[-(len(methods) + 2):]:
            if r["fact_id"] == fact_id:
                print(f"{fact_id} {r['method']:26s} {r['seconds_median']:9.4f} s  {r['gflop']:10.3f} GFLOP  "
                      f"load {r['load_1min_before']:.2f}  {r['note']}", flush=True)

    if frame is None:
        frame = write(rows, args, commit, load_start)
        print("no fact had a usable prompt")
        return
    summary = frame[frame.fact_id != ""].groupby("method", sort=False)[
        ["seconds_median", "gflop", "seconds_vs_ig_m20", "gflop_vs_ig_m20"]].median()
    setup_row = frame[frame.method == "logprob-increase-setup"].set_index("method")[summary.columns]
    print(f"\nmedians over prompts ({args.model}, threads {torch.get_num_threads()}):")
    print(pd.concat([summary, setup_row]).to_string(float_format=lambda x: f"{x:.4g}" if not math.isnan(x) else "nan"))
    print(f"written: {args.out / 'faithfulness_cost.csv'}")


if __name__ == "__main__":
    sys.exit(main())
