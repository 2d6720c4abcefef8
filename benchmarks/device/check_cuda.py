"""Does the fast integrated-gradients path give the same scores on a GPU as on the CPU?

Run on a machine with CUDA before any large GPU run (``benchmarks/device/run_gpu.sh`` does): the tiny
random models (both families, fast and reference paths) or one real fact of SmolLM2-135M. Prints one
JSON object per comparison and exits 1 when a relative difference exceeds ``--tol`` or a coarse set
(attribution > 0.2 x the prompt's maximum) differs. ``--other cpu`` compares the CPU with itself (a
dry run of this script where there is no GPU).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from kn_lib import pipeline
from kn_lib.attribution import IGConfig, integrated_gradients_many
from kn_lib.model_registry import load_adapter
from kn_lib.refine import coarse_neurons

TINY_PROMPTS = [("[X] was born in [Y] .", "alice", "paris"), ("the capital of [X] is the city of [Y] .", "france", "paris")]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def compare(name: str, a, b, prompts, method: str, tol: float, times: int = 1) -> dict:
    cfg = IGConfig(method=method)
    ref = integrated_gradients_many(a, prompts, config=cfg)
    seconds = []
    for _ in range(times):
        _sync(str(b.device.type))
        t0 = time.perf_counter()
        got = integrated_gradients_many(b, prompts, config=cfg)
        _sync(str(b.device.type))
        seconds.append(time.perf_counter() - t0)
    rel = max(float((r - g.cpu()).abs().max() / r.abs().max().clamp_min(1e-30)) for r, g in zip(ref, got))
    same = all(coarse_neurons(r) == coarse_neurons(g.cpu()) for r, g in zip(ref, got))
    row = {"model": name, "method": method, "prompts": len(prompts), "devices": [str(a.device), str(b.device)],
           "max_rel_diff": rel, "same_coarse_sets": same, "seconds_other": [round(s, 4) for s in seconds], "ok": rel <= tol and same}
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny", help="tiny (both tiny families) or a model name, e.g. smollm2-135m")
    ap.add_argument("--other", default="cuda", help="device compared with the CPU")
    ap.add_argument("--relation", default="P36")
    ap.add_argument("--prompts", type=int, default=3, help="prompts of the real fact compared (CPU time)")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--out")
    args = ap.parse_args()
    rows = []
    if args.model == "tiny":
        for name in ("tiny-random-llama", "tiny-random-bert"):
            a, b = load_adapter(name, "cpu"), load_adapter(name, args.other)
            prompts = [a.encode(*p) for p in TINY_PROMPTS]
            rows += [compare(name, a, b, prompts, m, args.tol) for m in ("fast", "reference")]
    else:
        from kn_lib.run.registry import settings_for

        settings = settings_for(args.model, "paper", relations=[args.relation], facts_per_relation=1)
        fact = settings.sample()[args.relation][0]
        templates = settings.load_relations()[args.relation].templates
        t0 = time.perf_counter()
        a, b = load_adapter(args.model, "cpu"), load_adapter(args.model, args.other)
        print(json.dumps({"load_seconds": round(time.perf_counter() - t0, 1), "fact": fact["fact_id"]}), flush=True)
        prompts = [p for _, p in pipeline.encode_fact(a, fact, templates)[0]]
        rows.append(compare(args.model, a, b, prompts[: args.prompts], "fast", args.tol, times=3))
        row = {"model": args.model, "fact": fact["fact_id"], "prompts": len(prompts)}
        for _ in range(3):  # the whole fact on the other device, warm: seconds per fact
            _sync(args.other)
            t0 = time.perf_counter()
            integrated_gradients_many(b, prompts, config=IGConfig())
            _sync(args.other)
            row.setdefault("seconds_whole_fact", []).append(round(time.perf_counter() - t0, 4))
        print(json.dumps(row), flush=True)
    ok = all(r["ok"] for r in rows)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"ok": ok, "rows": rows, "torch": torch.__version__,
                       "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}, fh, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
