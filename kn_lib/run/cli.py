"""The ``kn`` command: run stages of the reproduction, resumably, and show what data and results exist.

    kn run --preset smoke --model smollm2-135m            # attribute, then refine, for a preset
    kn attribute --model tiny-random-llama --relations P19,P36 --facts-per-relation 4
    kn refine    --model tiny-random-llama --relations P19,P36 --facts-per-relation 4
    kn info                                               # data counts, presets, stages, results

One subcommand per registered stage (``kn_lib.run.registry.register_stage``), all with the same
options; a stage's own ``Option``s are added to its subcommand. Rerunning a command resumes it:
finished shards are kept. ``kn info --verify`` also checks every shard's checksum.

Every fault ends in one line on stderr (``kn: error: ...``) and an exit status:

* 2, usage: bad arguments, unknown model, relation or preset, an unwritable ``--out``, a stage run
  before its inputs, ``--backend ray`` without ray. Arguments are checked before anything is written.
* 1, runtime: disk full, permission denied, a damaged manifest or corrupt shard of an input stage,
  bad data files; ``kn info --verify`` that found damage. Finished shards are kept; rerun to resume.
* 130: interrupted (Ctrl-C), 143: terminated (SIGTERM, e.g. ``docker stop``, a batch system's time
  limit); finished shards are kept; rerun to resume.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Sequence

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended
RESUME = "finished shards are kept; rerun the same command to resume"


def _int_at_least(low: int, expected: str):
    """An argparse type: an integer >= ``low``, else "expected <expected>, got ..."."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_seed = _int_at_least(0, "an integer >= 0")


def _int_from_to(low: int, high: int, what: str = ""):
    """An argparse type: an integer in [low, high], else "expected an integer from low to high, got ..."."""
    at_least = _int_at_least(low, f"an integer from {low} to {high}{what}")

    def parse(text: str) -> int:
        value = at_least(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high}{what}, got {value}")
        return value

    return parse


def _cpus() -> int:
    return os.cpu_count() or 1


def _out_dir(text: str) -> Path:
    """``--out``: a directory name; an empty one (which would write into the current folder) is refused."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a directory, got {text!r}")
    return Path(text)


CONCURRENCY = """\
Two runs on one machine: torch starts one thread per CPU core in each run, so two runs oversubscribe
the cores (each about twice as slow). Give each run its share with --threads (on 2 cores: --threads 1
each). Runs with the same settings and --out share the shards: each computes different ones. The thread
count changes scores in about the 5th digit; every shard records its device, dtype, threads and library
versions, and `kn info --verify` notes a store whose shards differ in them.

Exit status: 0 done, 1 runtime fault (disk full, damaged files), 2 bad arguments, 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM); finished shards are kept: rerun the same command to resume."""


def _facts(text: str) -> int | None:
    return None if text == "all" else _positive_int(text)


def _common(parser: argparse.ArgumentParser, with_preset_default: bool = True) -> None:
    from ..attribution import MAX_STEPS
    from ..models import DEFAULT_MODEL
    from .results import default_root
    from .registry import DEFAULT_PRESET, PRESETS

    g = parser.add_argument_group("what to run")
    g.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default {DEFAULT_MODEL}); see `kn info`")
    g.add_argument("--preset", default=DEFAULT_PRESET if with_preset_default else None, choices=list(PRESETS),
                   help=f"fact sample and stage chain (default {DEFAULT_PRESET}); the options below override it")
    g.add_argument("--relations", help="comma-separated relation ids, e.g. P19,P36 (default: the preset's)")
    g.add_argument("--facts-per-relation", type=_facts, help="facts sampled per relation, or 'all' (default: the preset's)")
    g.add_argument("--seed", type=_seed, help="seed of the fact sample (default: the preset's, 0)")
    g.add_argument("--steps", type=_int_from_to(1, MAX_STEPS), help=f"integrated-gradients steps m, 1 to {MAX_STEPS} (default 20, the paper's)")
    g.add_argument("--method", choices=["ig", "activation"], help="attribution: ig (default) or the activation baseline")
    g.add_argument("--threshold", type=float, help="coarse threshold t (default 0.2 for ig, 0.5 for activation: the official script's)")
    g.add_argument("--share-rule", choices=["official", "paper"],
                   help="refinement: official (count >= max(p n, 3), p tried at most 6 times; default) or paper (count > p n)")
    g.add_argument("--chunk-size", type=_positive_int, help="facts per attribution shard (default 8)")
    g.add_argument("--known", choices=["any", "most", "none"],
                   help="sample only facts the model knows, from its screen (`kn screen --preset paper`): some prompt "
                        "answered top-1 (any) or most of them (most); none: uniform (default: the preset's)")
    h = parser.add_argument_group("where and how")
    h.add_argument("--out", type=_out_dir, default=None, help=f"results root (default {default_root()}, or $KN_RESULTS_DIR)")
    h.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default auto: cuda when available")
    h.add_argument("--backend", choices=["local", "ray"], default="local", help="ray: shards as tasks on Ray actors")
    h.add_argument("--ray-address", help="address of a running Ray cluster (default: start a local one)")
    h.add_argument("--workers", type=_positive_int, help="Ray actors (default: one per GPU, else one per CPU)")
    h.add_argument("--threads", type=_int_from_to(1, _cpus(), " (this machine's CPUs)"),
                   help=f"torch CPU threads of a local run, 1 to {_cpus()} (default: torch's, one per core; with several "
                        "runs on this machine give each its share: see `kn --help`)")
    h.add_argument("--no-progress", action="store_true", help="no progress bar")


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in one line (``kn: error: ...``) instead of usage and error."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"kn: error: {' '.join(message.split())} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from .registry import stage_registry

    parser = _Parser(prog="kn", description="Knowledge neurons (Dai et al. 2022): run the reproduction's stages.",
                     epilog=CONCURRENCY, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, stage in stage_registry().items():
        p = sub.add_parser(name, help=stage.help, description=stage.help)
        _common(p)
        for option in stage.options:
            p.add_argument(f"--{option.name.replace('_', '-')}", dest=f"param_{option.name}", type=option.type,
                           default=option.default, help=option.help, choices=option.choices)
        p.set_defaults(command_stages=[name])
    p = sub.add_parser("run", help="run a preset's whole chain of stages (e.g. attribute, then refine)")
    _common(p)
    p.set_defaults(command_stages=None)
    p = sub.add_parser("info", help="data counts, presets, stages, models and results present")
    p.add_argument("--out", type=_out_dir, default=None, help="results root to list")
    p.add_argument("--verify", action="store_true", help="check every shard's checksum (exit status 1 when any fails)")
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread where Ctrl-C raises ``KeyboardInterrupt``: the same clean-up runs
    (claims released, temporary files removed) and finished shards are kept."""


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    with warnings.catch_warnings():
        warnings.showwarning = _warning_line
        try:
            if args.command == "info":
                text, damaged = _info(args.out, args.verify)
                print(text)
                return EXIT_RUNTIME if damaged and args.verify else 0
            return _run(args)
        except Terminated:
            return _fail(f"terminated (SIGTERM); {RESUME}", EXIT_TERMINATED, prefix="kn: ")
        except KeyboardInterrupt:
            return _fail(f"interrupted; {RESUME}", EXIT_INTERRUPTED, prefix="kn: ")
        except _user_errors() as err:
            return _fail(str(err), EXIT_USAGE)
        except _runtime_errors() as err:
            return _fail(str(err), EXIT_RUNTIME)
        except OSError as err:  # disk full, permission denied, ...
            where = f": {err.filename}" if getattr(err, "filename", None) else ""
            resume = f"; {RESUME}" if args.command != "info" else ""
            return _fail(f"{err.strerror or err}{where}{resume}", EXIT_RUNTIME)
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)


def _fail(message: str, status: int, prefix: str = "kn: error: ") -> int:
    print(prefix + " ".join(message.split()), file=sys.stderr)  # one line, whatever the exception held
    return status


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    print("kn: warning: " + " ".join(str(message).split()), file=sys.stderr)


def _user_errors() -> tuple[type[BaseException], ...]:
    from ..models import UnknownModel
    from .registry import KnUsageError, MissingInputs
    from .results import ResultsNotFound
    from .backends import RayNotInstalled

    return (KnUsageError, UnknownModel, MissingInputs, RayNotInstalled, ResultsNotFound)


def _runtime_errors() -> tuple[type[BaseException], ...]:
    from ..data import DataError
    from .store import CorruptShard, DamagedManifest

    return (DataError, CorruptShard, DamagedManifest)


def _run(args: argparse.Namespace) -> int:
    from ..model_registry import check_model
    from .results import default_root
    from .backends import import_ray, resolve_device
    from .runner import check_writable, run_stage
    from .registry import PRESETS, settings_for

    root = args.out if args.out is not None else default_root()
    params = {k[len("param_"):]: v for k, v in vars(args).items() if k.startswith("param_") and v is not None}
    settings = settings_for(
        args.model, args.preset, relations=args.relations, facts_per_relation=args.facts_per_relation, seed=args.seed,
        steps=args.steps, method=args.method, threshold=args.threshold, share_rule=args.share_rule, chunk_size=args.chunk_size, device=args.device, params=params,
        known=args.known, root=root,
    )
    if args.backend == "ray":
        import_ray()
    else:
        resolve_device(args.device)  # --device cuda without CUDA: a usage error, before anything is written
    check_model(args.model)
    check_writable(root)  # after the arguments: a bad one leaves nothing behind
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    stages = args.command_stages or list(PRESETS[args.preset].stages)
    rule = {"any": "some prompt", "most": "most prompts"}
    known = f" (at most) that the model knows ({rule.get(settings.known)} answered top-1)" if settings.known else ""
    print(f"kn {args.command}: model {args.model}, preset {args.preset}, {len(settings.relation_ids())} relations x "
          f"{settings.facts_per_relation or 'all'} facts{known} (seed {settings.seed}), stages {', '.join(stages)}", flush=True)
    for name in stages:
        summary = run_stage(name, settings, root, backend=args.backend, ray_address=args.ray_address, workers=args.workers,
                            progress=not args.no_progress)
        print(summary.line(), flush=True)
    return 0


def info(out: Path | None = None, verify: bool = False) -> str:
    """Data counts, presets, stages, models known offline, and the results present under ``out``; a
    damaged store is marked and the listing goes on; ``verify`` checks every shard's checksum."""
    return _info(out, verify)[0]


def _info(out: Path | None, verify: bool) -> tuple[str, int]:
    """The ``info`` text and the number of damaged stores found."""
    from .. import data
    from ..model_registry import describe_model, known_names
    from .registry import PRESETS, stage_registry
    from .partial import saved_units
    from .result_store import stores
    from .store import DamagedManifest, default_root, provenance_mix

    lines = []
    summary = data.relation_summary()
    lines.append(f"data: {len(summary)} relations, {summary['facts'].sum():,} facts, {summary['prompts'].sum():,} prompts "
                 f"({summary['causal_templates'].sum()} of {summary['templates'].sum()} templates usable by a causal LM)")
    lines.append("presets:")
    for p in PRESETS.values():
        rel = f"{len(p.relations)} relations ({','.join(p.relations)})" if p.relations else "all 34 relations"
        lines.append(f"  {p.name:12s} {rel} x {p.facts_per_relation or 'all'} facts, seed {p.seed}; stages {' -> '.join(p.stages)}: {p.help}")
    lines.append("stages:")
    for s in stage_registry().values():
        lines.append(f"  {s.name:12s} tables {', '.join(s.tables)}; {s.help}")
    lines.append("models (no model hub needed; any Hugging Face id works where a hub or local copy is reachable):")
    for name in known_names():
        lines.append(f"  {name:18s} {describe_model(name)}")
    root = out if out is not None else default_root()
    lines.append(f"results under {root}:")
    found = damaged = 0
    if root.is_dir():
        for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            for stage_dir in sorted(p for p in model_dir.iterdir() if p.is_dir()):
                for store in stores(root, model_dir.name, stage_dir.name):
                    found += 1
                    name = f"{model_dir.name}/{stage_dir.name}/{store.key}"
                    try:
                        m = store.manifest()
                        bad = store.verify() if verify else {}
                    except DamagedManifest as err:
                        lines.append(f"  {name}: DAMAGED: {' '.join(str(err).split())}")
                        damaged += 1
                        continue
                    s = m["settings"]
                    brief = ", ".join(f"{k}={s[k]}" for k in ("method", "seed", "facts_per_relation", "attribute_key") if k in s)
                    checked = ""
                    if verify:
                        checked = f"; {len(m['shards']) - len(bad)} intact" + (f", {len(bad)} DAMAGED" if bad else "")
                    lines.append(f"  {name}: {len(m['shards'])} shards ({brief}{checked})")
                    for shard, units in saved_units(store.dir).items():  # a long shard's progress, kept for the rerun
                        lines.append(f"    {shard}: not finished; {len(units)} saved ({', '.join(units)}): rerun to go on")
                    for shard, reason in list(bad.items())[:5]:
                        lines.append(f"    {shard}: {reason}; rerun `kn {stage_dir.name}` with the same options to recompute it")
                    if len(bad) > 5:
                        lines.append(f"    ... and {len(bad) - 5} more")
                    mix = provenance_mix(m["shards"]) if verify else None
                    if mix:  # a fact to know, not damage: scores differ in about the 5th digit
                        lines.append(f"    note: its shards were not all computed the same way: {mix}")
                    damaged += bool(bad)
    if not found:
        lines.append("  (none)")
    return "\n".join(lines), damaged


if __name__ == "__main__":
    sys.exit(main())
