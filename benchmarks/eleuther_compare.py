"""EleutherAI ``knowledge-neurons`` 0.0.2 against kn_lib's attribution: same model, same prompts, one run.

    .venv/bin/python benchmarks/eleuther_compare.py [--prompts 5] [--steps 20] [--eleuther-batch-size 10] [--no-variants]

The EleutherAI library (https://github.com/EleutherAI/knowledge-neurons, PyPI ``knowledge-neurons==0.0.2``)
runs in its own virtual environment, ``benchmarks/.venv-eleuther``, which this script creates on first use
(``python -m venv`` + ``pip install torch==<ours> transformers==<ours> knowledge-neurons==0.0.2``, about two
minutes; it is not tracked by git). Using our torch and transformers versions there means both sides run
the very same GPT-2 code; the library works with transformers 5 unchanged.

The model is a randomly initialised GPT-2-small-shaped model (12 layers, hidden 768, 12 heads, n_inner 3072,
vocabulary 50257 as GPT-2's, seed 0), saved once to a temporary directory that both environments load; the
tokenizer is a word-level ``tokenizers`` model over the prompts' words (offline). Weights do not change the
time; the vocabulary size does (the output projection), which is why it is GPT-2's.

Per prompt (interleaved, so that both sides see the same load of a shared machine), m steps, all layers:

* ``eleuther``: ``KnowledgeNeurons.get_scores(prompt, " " + answer, batch_size, steps)`` in a subprocess in
  the other environment, timed inside it after loading the model (and a one-step warm-up);
* ``ours-fast`` / ``ours-reference``: ``integrated_gradients`` with the defaults (paper rule, neurons as
  kn_lib defines them), fast and reference method;
* ``ours-fast-matched``: the same computation as EleutherAI's, with kn_lib's public API, for the agreement
  check (see the differences below);
* unless ``--no-variants``: ``ours-fast-pregelu-right`` / ``-left``, EleutherAI's neurons with our two rules,
  to show what the rule alone changes.

Differences found in EleutherAI's source (``knowledge_neurons/knowledge_neurons.py``):

* neurons: for GPT-2 the library scales the *output of* ``mlp.c_fc``, i.e. the FFN activation *before*
  GELU; kn_lib scales the *input of* ``mlp.c_proj``, after GELU (the paper's f(x K^T); for BERT both use the
  post-GELU ``intermediate`` output). Matched here by pointing a kn_lib adapter at ``mlp.act`` instead of
  ``mlp.c_proj`` (the activation module's input is the pre-GELU value), without changing kn_lib;
* Riemann rule: ``torch.linspace(0, 1, m)``, i.e. alpha = k/(m-1), k = 0..m-1 (both ends), weight 1/m.
  That is neither the paper's k/m, k = 1..m ("right") nor the official scripts' k = 0..m-1 ("left"); it is
  exactly (m-1)/m * IG_right(m-1 steps) + 1/m * IG_left(1 step), which is how ``ours-fast-matched`` gets it;
* same target and baseline: softmax probability of the answer token at the last position, zero baseline.

Agreement (each implementation against ``eleuther``, per prompt): overlap of the top-10 neurons by score,
Jaccard index of the coarse sets (score > 0.2 x max, ``kn_lib.refine.coarse_neurons``), and the max
absolute score difference relative to EleutherAI's max |score|. Writes
``benchmarks/results/eleuther_compare.csv`` (one row per prompt x implementation) and prints a summary.
Seconds are wall-clock, ``cpu_seconds`` the process's CPU time over the same span (all threads; less
sensitive to other jobs on a shared machine). Timings vary between runs; compare ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-eleuther"
OUT = HERE / "results"
ELEUTHER_PACKAGE = "knowledge-neurons==0.0.2"

# PARAREL-like (template, subject, object); answers are one token of the word-level vocabulary
PROMPTS = (
    ("[X] is the capital of [Y] .", "Paris", "France"),
    ("The native language of [X] is [Y] .", "Dante", "Italian"),
    ("[X] is located in [Y] .", "Berlin", "Germany"),
    ("[X] was born in [Y] .", "Mozart", "Salzburg"),
    ("The official language of [X] is [Y] .", "Spain", "Spanish"),
)
SPECIAL = ("<|endoftext|>", "[UNK]")


# -- the model and tokenizer both environments load ------------------------------------------------------
def load_tokenizer(directory: Path):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"), unk_token="[UNK]", eos_token="<|endoftext|>")


def build_model(directory: Path, seed: int = 0) -> None:
    """Word-level tokenizer over the prompts' words; GPT-2-small-shaped model, random init, saved to ``directory``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel

    words = list(SPECIAL)
    for template, subject, obj in PROMPTS:
        for w in template.replace("[X]", subject).replace("[Y]", obj).split():
            if w not in words:
                words.append(w)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.save(str(directory / "tokenizer.json"))
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=12, n_embd=768, n_head=12, n_inner=3072, vocab_size=50257, n_positions=1024,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    GPT2LMHeadModel(config).save_pretrained(directory / "model")


# -- EleutherAI side (runs inside benchmarks/.venv-eleuther) ---------------------------------------------
def ensure_venv() -> Path:
    """The EleutherAI environment's python, creating the environment with our torch/transformers if missing."""
    python = VENV / "bin" / "python"
    if python.exists():
        return python
    import torch
    import transformers

    print(f"creating {VENV} (one-off, ~2 min)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pins = [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}", ELEUTHER_PACKAGE]
    subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], check=True)
    return python


def worker(model_dir: Path, job: Path, out: Path) -> None:
    """EleutherAI's attribution of one prompt; writes scores and seconds to ``out`` (torch.save)."""
    import torch
    from knowledge_neurons import KnowledgeNeurons
    from transformers import GPT2LMHeadModel

    spec = json.loads(job.read_text())
    torch.set_num_threads(spec["threads"])
    tokenizer = load_tokenizer(model_dir)
    model = GPT2LMHeadModel.from_pretrained(model_dir / "model").eval()
    kn = KnowledgeNeurons(model, tokenizer, model_type="gpt2", device="cpu")
    ids = tokenizer(spec["prompt"]).input_ids
    assert ids == spec["input_ids"] and tokenizer.encode(spec["ground_truth"]) == [spec["target_id"]], "tokenization differs"
    kn.get_scores_for_layer(spec["prompt"], spec["ground_truth"], layer_idx=kn.n_layers() - 1, batch_size=1, steps=1)  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    scores = kn.get_scores(spec["prompt"], spec["ground_truth"], batch_size=spec["batch_size"], steps=spec["steps"], pbar=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    torch.save({"scores": scores.detach().double(), "seconds": seconds, "cpu_seconds": cpu, "versions": _versions()}, out)


def _versions() -> dict:
    from importlib.metadata import version

    import torch
    import transformers

    out = {"torch": str(torch.__version__), "transformers": transformers.__version__}
    try:
        out["knowledge_neurons"] = version("knowledge-neurons")
    except Exception:
        pass
    return out


def run_eleuther(python: Path, model_dir: Path, spec: dict, tmp: Path):
    job, out = tmp / "job.json", tmp / "eleuther.pt"
    job.write_text(json.dumps(spec))
    proc = subprocess.run([str(python), __file__, "--worker", str(model_dir), str(job), str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"EleutherAI worker failed:\n{proc.stderr[-4000:]}")
    import torch

    return torch.load(out)


# -- our side --------------------------------------------------------------------------------------------
def pre_gelu_adapter(model, tokenizer):
    """A kn_lib adapter whose neurons are EleutherAI's for GPT-2: the input of ``mlp.act``, i.e. c_fc's output."""
    from kn_lib.models import adapter_for

    adapter = adapter_for(model, tokenizer, "random-gpt2-small (pre-GELU neurons)")
    adapter.projections = [block.mlp.act for block in adapter.blocks]  # per-layer activation modules
    return adapter


def eleuther_rule_ig(adapter, prompt, steps: int):
    """EleutherAI's Riemann sum, alpha = k/(m-1) for k = 0..m-1 with weight 1/m, from our two rules."""
    from kn_lib.attribution import IGConfig, integrated_gradients

    right = integrated_gradients(adapter, prompt, config=IGConfig(steps=steps - 1, rule="right")).double()
    at_zero = integrated_gradients(adapter, prompt, config=IGConfig(steps=1, rule="left")).double()
    return (steps - 1) / steps * right + at_zero / steps


def top_k(scores, k: int = 10) -> set[tuple[int, int]]:
    flat = scores.flatten().topk(k).indices
    return {(int(i) // scores.shape[1], int(i) % scores.shape[1]) for i in flat}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help=f"how many of the {len(PROMPTS)} prompts")
    parser.add_argument("--steps", type=int, default=20, help="m, Riemann steps (>= 2)")
    parser.add_argument("--eleuther-batch-size", type=int, default=10, help="get_scores batch_size (library default 10)")
    parser.add_argument("--no-variants", action="store_true", help="skip ours-fast-pregelu-right/-left")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.steps < 2 or args.steps % args.eleuther_batch_size:
        parser.error("--steps must be >= 2 and a multiple of --eleuther-batch-size")

    import pandas as pd
    import torch
    from transformers import GPT2LMHeadModel

    from kn_lib.attribution import IGConfig, integrated_gradients
    from kn_lib.models import adapter_for
    from kn_lib.refine import coarse_neurons

    python = ensure_venv()
    args.out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        build_model(tmp)
        tokenizer = load_tokenizer(tmp)
        model = GPT2LMHeadModel.from_pretrained(tmp / "model").eval()
        ours = adapter_for(model, tokenizer, "random-gpt2-small")
        pre = pre_gelu_adapter(model, tokenizer)
        for adapter in (ours, pre):  # warm-up, as the worker does
            integrated_gradients(adapter, ours.encode(*PROMPTS[0]), layers=[11], config=IGConfig(steps=1))

        for template, subject, obj in PROMPTS[: args.prompts]:
            prompt = ours.encode(template, subject, obj)
            p_answer = ours.answer_probability(prompt)
            spec = {"prompt": prompt.text, "ground_truth": " " + obj, "input_ids": prompt.input_ids.tolist(),
                    "target_id": prompt.target_id, "steps": args.steps, "batch_size": args.eleuther_batch_size, "threads": threads}
            load = os.getloadavg()[0]
            theirs = run_eleuther(python, tmp, spec, tmp)
            results = {"eleuther": (theirs["scores"], (theirs["seconds"], theirs["cpu_seconds"]), "pre-GELU (c_fc output)", "linspace k/(m-1), k=0..m-1", "eleuther")}

            def timed(fn):
                start, cpu = time.perf_counter(), time.process_time()
                scores = fn()
                return scores.double(), (time.perf_counter() - start, time.process_time() - cpu)

            s, t = timed(lambda: integrated_gradients(ours, prompt, config=IGConfig(steps=args.steps)))
            results["ours-fast"] = (s, t, "post-GELU (c_proj input)", "right k/m, k=1..m", "fast")
            s, t = timed(lambda: integrated_gradients(ours, prompt, config=IGConfig(steps=args.steps, method="reference")))
            results["ours-reference"] = (s, t, "post-GELU (c_proj input)", "right k/m, k=1..m", "reference")
            s, t = timed(lambda: eleuther_rule_ig(pre, prompt, args.steps))
            results["ours-fast-matched"] = (s, t, "pre-GELU (c_fc output)", "linspace k/(m-1), k=0..m-1", "fast")
            if not args.no_variants:
                for rule in ("right", "left"):
                    s, t = timed(lambda: integrated_gradients(pre, prompt, config=IGConfig(steps=args.steps, rule=rule)))
                    results[f"ours-fast-pregelu-{rule}"] = (s, t, "pre-GELU (c_fc output)", f"{rule} (kn_lib)", "fast")

            ref_scores, (ref_seconds, ref_cpu) = results["eleuther"][:2]
            ref_top, ref_coarse = top_k(ref_scores), coarse_neurons(ref_scores)
            fast_scores = results["ours-fast"][0]
            for name, (scores, (seconds, cpu), neuron, rule, method) in results.items():
                coarse = coarse_neurons(scores)
                rows.append({
                    "prompt": prompt.text, "target": obj, "tokens": len(prompt.input_ids), "p_answer": p_answer,
                    "implementation": name, "neurons": neuron, "rule": rule, "method": method, "steps": args.steps,
                    "seconds": seconds, "cpu_seconds": cpu, "speedup_vs_eleuther": ref_seconds / seconds,
                    "cpu_speedup_vs_eleuther": ref_cpu / cpu,
                    "top10_overlap": len(top_k(scores) & ref_top) / 10,
                    "coarse_size": len(coarse), "coarse_size_eleuther": len(ref_coarse),
                    "coarse_jaccard": len(coarse & ref_coarse) / max(1, len(coarse | ref_coarse)),
                    "max_rel_diff": float((scores - ref_scores).abs().max() / ref_scores.abs().max()),
                    "max_rel_diff_vs_ours_fast": float((scores - fast_scores).abs().max() / fast_scores.abs().max()),
                    "threads": threads, "load_avg_1min": load,
                    "eleuther_batch_size": args.eleuther_batch_size if name == "eleuther" else None,
                })
                r = rows[-1]
                print(f"{prompt.text!r:36s} {name:24s} {seconds:7.2f} s (cpu {cpu:6.1f} s)  x{r['speedup_vs_eleuther']:5.2f}  top10 {r['top10_overlap']:.1f}  "
                      f"coarse J {r['coarse_jaccard']:.2f} ({r['coarse_size']}/{r['coarse_size_eleuther']})  rel diff {r['max_rel_diff']:.1e}", flush=True)
            pd.DataFrame(rows).to_csv(args.out / "eleuther_compare.csv", index=False)  # after every prompt: partial runs keep results

    frame = pd.DataFrame(rows)
    summary = frame.groupby("implementation", sort=False).agg(
        seconds=("seconds", "mean"), cpu_seconds=("cpu_seconds", "mean"), top10_overlap=("top10_overlap", "mean"), coarse_jaccard=("coarse_jaccard", "mean"),
        max_rel_diff=("max_rel_diff", "max"),
    )
    summary["speedup_vs_eleuther"] = summary.loc["eleuther", "seconds"] / summary["seconds"]
    summary["cpu_speedup_vs_eleuther"] = summary.loc["eleuther", "cpu_seconds"] / summary["cpu_seconds"]
    print(f"\nversions (EleutherAI env): {theirs['versions']}; threads {threads}; {len(frame.prompt.unique())} prompts, "
          f"m = {args.steps}, all 12 layers, EleutherAI batch_size {args.eleuther_batch_size}")
    print(summary.to_string(float_format=lambda v: f"{v:.3g}"))
    print(f"reference vs fast (ours, same settings): max rel diff "
          f"{frame[frame.implementation == 'ours-reference'].max_rel_diff_vs_ours_fast.max():.1e}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        sys.exit(main())
