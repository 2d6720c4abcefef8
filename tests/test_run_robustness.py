"""Nothing silently wrong (issue 26): a manifest of the wrong shape, a claim left by another host, impossible
arguments, how each shard was computed, a larger sample meeting a smaller one's shard, SIGTERM, a full disk.
Each fault ends in one line (and the documented exit status), each recovery leaves intact results."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import MIRROR, run_kn as kn
from kn_lib.attribution import MAX_STEPS, IGConfig
from kn_lib.run import result_store, store as store_module
from kn_lib.run.registry import KnUsageError, settings_for, stage_registry
from kn_lib.run.results import DamagedManifest, ResultStore, cache_key, load
from kn_lib.run.runner import SHARD_DELAY_ENV, run_stage

os.environ.setdefault("KN_DATA_MIRROR", str(MIRROR))
ROOT = Path(__file__).resolve().parents[1]
MODEL = "tiny-random-llama"
OPTIONS = ["--model", MODEL, "--preset", "smoke", "--relations", "P30,P140", "--facts-per-relation", "3", "--steps", "2",
           "--chunk-size", "2", "--device", "cpu", "--no-progress"]  # 2 relations x 2 shards
RESUME = "finished shards are kept; rerun the same command to resume"

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def the_store(root: Path, stage: str = "attribute", facts: int = 3, chunk: int = 2) -> ResultStore:
    settings = settings_for(MODEL, "smoke", relations="P30,P140", facts_per_relation=facts, steps=2, chunk_size=chunk)
    return ResultStore(root, MODEL, stage, cache_key(stage_registry()[stage].key_settings(settings)))


def kn_process(*argv: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    """``kn`` in its own process (python -m kn_lib.run.cli), one torch thread."""
    return subprocess.Popen([sys.executable, "-m", "kn_lib.run.cli", *argv], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, **kwargs)


@pytest.fixture
def finished(tmp_path, capsys):
    root = tmp_path / "out"
    code, _, err = kn(capsys, "attribute", *OPTIONS, "--out", str(root))
    assert code == 0, err
    return root


# -- 2. a manifest that parses but is structurally wrong ----------------------------------------------


def _no_tables(m):
    del m["shards"]["P30/chunk-00001"]["tables"]


def _fact_ids_a_number(m):
    m["shards"]["P140/chunk-00000"]["fact_ids"] = 3


def _settings_edited(m):
    m["settings"]["seed"] = 1


def _a_directory(path: Path):
    path.unlink()
    path.mkdir()
    (path / "stray").write_text("x")


@pytest.mark.parametrize("damage, says", [
    (_no_tables, "shard P30/chunk-00001: no tables"),
    (_fact_ids_a_number, "shard P140/chunk-00000: fact_ids '3' is not a list of fact ids"),
    (_settings_edited, "its settings hash to "),
    (_a_directory, "a directory, not a file"),
])
def test_a_manifest_of_the_wrong_shape_is_reported_then_recovered(finished, capsys, damage, says):
    store = the_store(finished)
    before = {p: p.stat().st_mtime_ns for p in store.dir.rglob("*.parquet")}
    if damage is _a_directory:
        damage(store.manifest_path)
    else:
        manifest = json.loads(store.manifest_path.read_text())
        damage(manifest)
        store.manifest_path.write_text(json.dumps(manifest))

    code, out, err = kn(capsys, "info", "--verify", "--out", str(finished))  # reported, not skipped, no traceback
    assert code == 1 and err == ""
    line = next(line for line in out.splitlines() if store.key in line)
    assert line.startswith(f"  {MODEL}/attribute/{store.key}: DAMAGED: {store.manifest_path}: damaged manifest (") and says in line
    with pytest.raises(DamagedManifest, match=re.escape(says)):
        load(MODEL, "attribute", key=store.key, root=finished)

    code, out, err = kn(capsys, "attribute", *OPTIONS, "--out", str(finished))  # as a truncated one: moved aside, recovered
    assert code == 0 and "(0 computed, 4 reused)" in out
    assert one_line(err).startswith(f"kn: warning: {store.manifest_path}: damaged manifest moved to {store.manifest_path.name}.damaged-")
    assert err.endswith("4 of 4 shards recovered from their files, the rest will be computed\n")
    assert store.verify() == {} and len(store.entries()) == 4
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # not one file rewritten


def test_the_committed_manifests_pass_the_shape_check():
    """Every committed results directory still reads: its manifest has the shape, its settings hash to its key."""
    manifests = list((ROOT / "data" / "results").rglob("manifest.json"))
    assert manifests
    for path in manifests:
        key_dir = path.parent
        store = ResultStore(key_dir.parents[2], key_dir.parents[1].name, key_dir.parent.name, key_dir.name)
        assert isinstance(store.manifest()["shards"], dict), path


# -- 3. a claim left by another host --------------------------------------------------------------------


def test_claims_are_renewed_and_one_not_renewed_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setenv(store_module.CLAIM_STALE_ENV, "1")
    store = ResultStore(tmp_path, MODEL, "attribute", "k")
    store.create({"a": 1})
    assert store.claim("P30/chunk-00000", "run-a") == "mine"
    monkeypatch.setattr(store_module, "_HOST", "another-host")  # seen from another machine: its pid means nothing here
    monkeypatch.setattr(result_store, "_HOST", "another-host")  # (the claims ResultStore writes name it too)
    assert store.claim("P30/chunk-00000", "run-b") == "theirs"
    time.sleep(0.7)
    assert store.renew(["P30/chunk-00000"], "run-a") == 1
    assert store.renew(["P30/chunk-00000"], "run-b") == 0  # not b's
    time.sleep(0.7)
    assert store.claim("P30/chunk-00000", "run-b") == "theirs"  # renewed 0.7 s ago
    time.sleep(1.2)
    assert store.claim("P30/chunk-00000", "run-b") == "mine"  # not renewed for 1.2 s: taken over
    assert store.holder("P30/chunk-00000")["owner"] == "run-b"


def test_a_run_renews_its_claims_while_it_computes(tmp_path, monkeypatch):
    monkeypatch.setenv(store_module.CLAIM_HEARTBEAT_ENV, "0.1")
    monkeypatch.setenv(SHARD_DELAY_ENV, "1.5")  # holds its one shard's claim for 1.5 s
    settings = settings_for(MODEL, "smoke", relations="P30", facts_per_relation=2, steps=2, chunk_size=2, device="cpu")
    store = ResultStore(tmp_path, MODEL, "attribute", cache_key(stage_registry()["attribute"].key_settings(settings)))
    run = threading.Thread(target=run_stage, args=("attribute", settings, tmp_path), kwargs={"progress": False})
    run.start()
    seen = set()
    while run.is_alive():
        claim = store.holder("P30/chunk-00000") if store.dir.is_dir() else None
        if claim:
            seen.add(claim.get("renewed"))
        time.sleep(0.05)
    run.join()
    assert len(seen - {None}) >= 5, seen
    assert len(store.entries()) == 1 and not list((store.dir / ".claims").iterdir())


def test_a_claim_left_by_another_host_is_named_then_taken_over(tmp_path):
    """A container that crashed and came back under another host name left a claim: the run computes the
    other shards, says which shard waits and who holds it, and takes it over once the claim is stale."""
    root = tmp_path / "out"
    store = the_store(root)
    (store.dir / store_module.CLAIMS).mkdir(parents=True)
    record = {"owner": "old-container:7:x", "pid": 7, "host": "old-container", "started": time.time() - 60,
              "renewed": time.time()}
    (store.dir / store_module.CLAIMS / "P30__chunk-00000.json").write_text(json.dumps(record))
    started = time.perf_counter()
    proc = kn_process("attribute", *OPTIONS, "--out", str(root), env={store_module.CLAIM_STALE_ENV: "20"})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "(4 computed, 0 reused)" in out
    assert re.fullmatch(
        rf"kn: warning: {re.escape(str(store.dir))}: waiting for 1 shard that another run computes: P30/chunk-00000 "
        r"\(host old-container, pid 7, renewed \d+ s ago\); a claim not renewed for 20 s is taken over \(\$KN_CLAIM_STALE_SECONDS\)\n",
        err), err
    assert time.perf_counter() - started < 60
    assert store.verify() == {} and not list((store.dir / store_module.CLAIMS).iterdir())


# -- 4. impossible arguments ------------------------------------------------------------------------------


CPUS = os.cpu_count() or 1


@pytest.mark.parametrize("argv, message", [
    pytest.param(["--device", "cuda"], "--device cuda: no CUDA device here", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="this machine has CUDA")),
    (["--threads", "999999999999"], f"argument --threads: expected an integer from 1 to {CPUS} (this machine's CPUs), got 999999999999"),
    (["--threads", "100000"], f"argument --threads: expected an integer from 1 to {CPUS} (this machine's CPUs), got 100000"),
    (["--threads", "0"], f"argument --threads: expected an integer from 1 to {CPUS} (this machine's CPUs), got 0"),
    (["--steps", "100000000"], f"argument --steps: expected an integer from 1 to {MAX_STEPS}, got 100000000"),
    (["--out", ""], "argument --out: expected a directory, got ''"),
    (["--out", "  "], "argument --out: expected a directory, got '"),
])
def test_impossible_arguments_exit_2_in_one_line_before_anything_is_written(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)  # `--out ""` would write here
    threads = torch.get_num_threads()
    code, _, err = kn(capsys, "attribute", *OPTIONS, "--out", str(tmp_path / "out"), *argv)
    assert code == 2
    assert one_line(err).startswith("kn: error: ") and message in err
    assert list(tmp_path.iterdir()) == [] and torch.get_num_threads() == threads


@pytest.mark.parametrize("field, value", [
    ("steps", 2.5), ("steps", math.nan), ("steps", 0), ("steps", MAX_STEPS + 1), ("steps", 10**8), ("steps", "20"), ("steps", True),
    ("batch_rows", math.nan), ("batch_rows", 0.5),
])
def test_igconfig_names_the_bound(field, value):
    with pytest.raises(ValueError, match=rf"{field} must be an integer (from 1 to {MAX_STEPS}|>= 1 or None), got "):
        IGConfig(**{field: value})


def test_igconfig_takes_numpy_integers():
    import numpy as np

    assert IGConfig(steps=np.int64(20)).steps == 20 and IGConfig(steps=MAX_STEPS).steps == MAX_STEPS


@pytest.mark.parametrize("steps", [10**8, 2.5, math.nan])
def test_settings_for_names_the_steps_bound(steps):
    with pytest.raises(KnUsageError, match=f"--steps must be an integer from 1 to {MAX_STEPS}"):
        settings_for(MODEL, "smoke", steps=steps)


def test_knconfig_max_evaluations_nan():
    from kn_lib.pipeline import KNConfig
    from kn_lib.refine import adaptive_share_threshold

    for bad in (math.nan, 2.5, True):
        with pytest.raises(ValueError, match="max_evaluations"):
            KNConfig(max_evaluations=bad)
        with pytest.raises(ValueError, match="max_evaluations"):
            adaptive_share_threshold({"P0/0": [{(0, 0)}] * 3}, max_evaluations=bad)
    with pytest.raises(ValueError, match="min_count"):
        KNConfig(min_count=math.nan)


# -- 5. how each shard was computed -------------------------------------------------------------------


def test_shards_record_how_they_were_computed_and_info_verify_notes_a_mix(finished, capsys):
    import transformers

    from kn_lib import __version__

    store = the_store(finished)
    for entry in store.entries().values():
        assert entry["device"] == "cpu" and entry["dtype"] == "float32" and entry["threads"] == 1
        assert entry["versions"] == {"torch": torch.__version__, "transformers": transformers.__version__, "kn_lib": __version__}
    code, out, err = kn(capsys, "info", "--verify", "--out", str(finished))
    assert code == 0 and "note:" not in out

    entries = json.loads(store.manifest_path.read_text())
    entries["shards"]["P30/chunk-00001"]["threads"] = 2  # as a resume with --threads 2 records it
    entries["shards"]["P140/chunk-00000"]["versions"]["torch"] = "2.0.0"
    store.manifest_path.write_text(json.dumps(entries))
    code, out, err = kn(capsys, "info", "--verify", "--out", str(finished))
    assert code == 0 and err == ""  # a fact to know, not damage
    assert (f"{MODEL}/attribute/{store.key}: 4 shards (method=ig, seed=0; 4 intact)\n    note: its shards were not all computed "
            f"the same way: threads 1 (3 shards), 2 (1 shard); torch 2.0.0 (1 shard), {torch.__version__} (3 shards)") in out


@pytest.mark.skipif(CPUS < 2, reason="needs 2 CPUs")
def test_a_resume_with_other_threads_is_noted(finished, capsys):
    store = the_store(finished)
    (store.dir / "coarse" / "P30" / "chunk-00000.parquet").write_bytes(b"damaged")
    try:
        code, out, err = kn(capsys, "attribute", *OPTIONS, "--threads", "2", "--out", str(finished))
    finally:
        torch.set_num_threads(1)
    assert code == 0 and "1 corrupt recomputed" in out
    code, out, _ = kn(capsys, "info", "--verify", "--out", str(finished))
    assert code == 0 and "note: its shards were not all computed the same way: threads 1 (3 shards), 2 (1 shard)" in out


def test_old_shards_without_provenance_still_load_and_are_counted(finished):
    store = the_store(finished)
    manifest = json.loads(store.manifest_path.read_text())
    for name in ("P30/chunk-00000", "P30/chunk-00001"):
        for key in ("dtype", "threads", "versions"):
            del manifest["shards"][name][key]
    store.manifest_path.write_text(json.dumps(manifest))
    assert len(load(MODEL, "attribute", key=store.key, root=finished))
    assert store_module.provenance_mix(store.entries()) == "2 shards from before kn_lib recorded this"
    assert store_module.provenance_mix({"a": {"device": "cpu"}}) is None  # an old store: nothing to say


# -- 6. concurrency -------------------------------------------------------------------------------------------


def test_kn_help_says_how_to_share_the_cores(capsys):
    code, out, _ = kn(capsys, "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "Two runs on one machine" in text and "Give each run its share with --threads (on 2 cores: --threads 1 each)" in text
    code, out, _ = kn(capsys, "attribute", "--help")
    assert "with several runs on this machine give each its share" in " ".join(out.split())


def test_a_larger_sample_computes_only_the_facts_a_smaller_one_lacks(tmp_path):
    """A 2-facts run finished chunk-00000 (8 facts) with 2 of them; a 5-facts run then computes 3 per
    relation, not 5, and its tables equal those of a 5-facts run from scratch."""
    small = settings_for(MODEL, "smoke", relations="P30,P140", facts_per_relation=2, steps=2, chunk_size=8, device="cpu")
    large = settings_for(MODEL, "smoke", relations="P30,P140", facts_per_relation=5, steps=2, chunk_size=8, device="cpu")
    run_stage("attribute", small, tmp_path / "grown", progress=False)
    grown = run_stage("attribute", large, tmp_path / "grown", progress=False)
    assert (grown.facts_computed, grown.shards_computed) == (6, 2)
    fresh = run_stage("attribute", large, tmp_path / "fresh", progress=False)
    assert fresh.facts_computed == 10
    for table in ("coarse", "prompts", "skipped"):
        args = {"preset": "smoke", "relations": "P30,P140", "facts_per_relation": 5, "steps": 2, "chunk_size": 8}
        got, expected = load(MODEL, "attribute", table, root=tmp_path / "grown", **args), load(MODEL, "attribute", table, root=tmp_path / "fresh", **args)
        pd.testing.assert_frame_equal(got, expected)
    entries = the_store(tmp_path / "grown", facts=5, chunk=8).entries()
    assert {e["facts_reused"] for e in entries.values()} == {2}
    assert all(len(e["fact_ids"]) == 5 for e in entries.values())


def test_facts_computed_another_way_are_not_reused(tmp_path):
    """A finished shard from another torch thread count is recomputed whole: a shard never mixes them."""
    small = settings_for(MODEL, "smoke", relations="P30", facts_per_relation=2, steps=2, chunk_size=8, device="cpu")
    large = settings_for(MODEL, "smoke", relations="P30", facts_per_relation=4, steps=2, chunk_size=8, device="cpu")
    run_stage("attribute", small, tmp_path, progress=False)
    store = ResultStore(tmp_path, MODEL, "attribute", cache_key(stage_registry()["attribute"].key_settings(large)))
    manifest = json.loads(store.manifest_path.read_text())
    manifest["shards"]["P30/chunk-00000"]["threads"] = 7
    store.manifest_path.write_text(json.dumps(manifest))
    assert run_stage("attribute", large, tmp_path, progress=False).facts_computed == 4
    assert "facts_reused" not in store.entries()["P30/chunk-00000"]


# -- 7. small ones: SIGTERM, a full disk -----------------------------------------------------------------


def test_sigterm_is_handled_like_ctrl_c(tmp_path, capsys):
    root = tmp_path / "out"
    store = the_store(root)
    proc = kn_process("attribute", *OPTIONS, "--out", str(root), env={SHARD_DELAY_ENV: "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not (store.manifest_path.is_file() and store.entries()):
        time.sleep(0.1)
    assert store.entries(), "no shard finished in time"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert one_line(err) == f"kn: terminated (SIGTERM); {RESUME}\n"
    finished = len(store.entries())
    assert 1 <= finished < 4 and store.verify() == {}
    assert not list((store.dir / store_module.CLAIMS).iterdir())  # its claims released
    assert not list(store.dir.rglob(".*.tmp"))
    code, out, err = kn(capsys, "attribute", *OPTIONS, "--out", str(root))  # resumes
    assert code == 0 and f"({4 - finished} computed, {finished} reused)" in out


def test_disk_full_names_the_file(tmp_path, capsys, monkeypatch):
    """A write that fails for want of space names no file (pyarrow's and Python's OSError have none): kn adds it."""
    root = tmp_path / "out"
    real, calls = pd.DataFrame.to_parquet, {"n": 0}

    def full(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 6:  # 3 tables per shard: the third shard fails
            raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full)
    code, _, err = kn(capsys, "attribute", *OPTIONS, "--out", str(root))
    assert code == 1
    store = the_store(root)
    assert re.fullmatch(rf"kn: error: Error writing bytes to file. Detail: \[errno 28\] No space left on device: "
                        rf"{re.escape(str(store.dir))}/\w+/P140/chunk-00000.parquet; {RESUME}\n", one_line(err)), err


def test_a_failed_manifest_write_names_the_manifest(tmp_path, monkeypatch):
    store = ResultStore(tmp_path, MODEL, "attribute", "k")
    store.create({"a": 1})

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OSError) as failure:
        store_module.write_atomic(store.manifest_path, b"{}")
    assert failure.value.filename == str(store.manifest_path) and failure.value.errno == errno.ENOSPC
    assert [p.name for p in store.dir.iterdir()] == ["manifest.json"]  # the temporary file is gone
