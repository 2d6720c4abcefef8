"""Every fault a user can cause or meet (issue 14's table), on a tiny model: one line on stderr, the
documented exit status (2 usage, 1 runtime, 130 interrupted), and the results still intact."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import time
from pathlib import Path

import pytest

from conftest import MIRROR, run_kn as kn
from kn_lib.run import result_store, store as store_module
from kn_lib.run.registry import KnUsageError, settings_for, stage_registry
from kn_lib.run.results import DamagedManifest, ResultStore, cache_key, load

os.environ.setdefault("KN_DATA_MIRROR", str(MIRROR))
MODEL = "tiny-random-llama"
OPTIONS = ["--model", MODEL, "--preset", "smoke", "--relations", "P30,P140", "--facts-per-relation", "3", "--steps", "2",
           "--chunk-size", "2", "--device", "cpu", "--no-progress"]  # 2 relations x 2 shards


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def the_store(root: Path, stage: str = "attribute") -> ResultStore:
    settings = settings_for(MODEL, "smoke", relations="P30,P140", facts_per_relation=3, steps=2, chunk_size=2)
    return ResultStore(root, MODEL, stage, cache_key(stage_registry()[stage].key_settings(settings)))


def intact(store: ResultStore) -> dict:
    """The manifest parses and every shard it lists matches its checksums."""
    json.loads(store.manifest_path.read_text())
    assert store.verify() == {}
    return store.entries()


@pytest.fixture
def finished(tmp_path, capsys):
    """attribute + refine finished under tmp_path/out."""
    root = tmp_path / "out"
    code, _, err = kn(capsys, "run", *OPTIONS, "--out", str(root))
    assert code == 0, err
    return root


# -- truncated manifest.json -----------------------------------------------------------------------


def test_truncated_manifest(finished, capsys):
    store = the_store(finished)
    text = store.manifest_path.read_text()
    store.manifest_path.write_text(text[: len(text) // 2])

    code, out, err = kn(capsys, "info", "--out", str(finished))  # marks it, lists the others
    assert code == 0 and err == ""
    assert f"{MODEL}/attribute/{store.key}: DAMAGED: {store.manifest_path}: damaged manifest" in out
    assert f"{MODEL}/refine/" in out

    with pytest.raises(DamagedManifest, match="rerun `kn attribute` with the same options"):
        load(MODEL, "attribute", key=store.key, root=finished)

    code, _, err = kn(capsys, "refine", *OPTIONS, "--out", str(finished))  # its input: one line, what to do
    assert code == 1
    assert one_line(err).startswith(f"kn: error: {store.manifest_path}: damaged manifest") and "`kn attribute`" in err
    before = {p: p.stat().st_mtime_ns for p in store.dir.rglob("*.parquet")}
    (store.dir / "prompts" / "P140" / "chunk-00001.parquet").unlink()  # one shard incomplete on disk
    code, out, err = kn(capsys, "attribute", *OPTIONS, "--out", str(finished))  # moves it aside, recovers, computes
    assert code == 0 and "(1 computed, 3 reused)" in out
    assert one_line(err) == (f"kn: warning: {store.manifest_path}: damaged manifest moved to {store.manifest_path.name}.damaged-"
                             f"{err.split('.damaged-')[1].split(';')[0]}; 3 of 4 shards recovered from their files, the rest "
                             "will be computed\n")
    assert len(intact(store)) == 4
    assert len(list(store.dir.glob("manifest.json.damaged-*"))) == 1
    unchanged = {p for p, t in before.items() if p.exists() and p.stat().st_mtime_ns == t}
    assert len(unchanged) == 9  # the 3 recovered shards' files were not rewritten
    code, out, err = kn(capsys, "refine", *OPTIONS, "--out", str(finished))
    assert code == 0 and "(0 computed, 2 reused)" in out


# -- disk full, permission denied, interrupted ------------------------------------------------------


def _fail_after(monkeypatch, n_ok: int, error: BaseException, target: str = "write_parquet_atomic"):
    real = getattr(result_store, target)  # as ResultStore (kn_lib.run.result_store) finds it
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n_ok:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(result_store, target, failing)


@pytest.mark.parametrize("error, words", [
    (OSError(errno.ENOSPC, "No space left on device", "coarse/P140/chunk-00000.parquet"), "No space left on device"),
    (PermissionError(errno.EACCES, "Permission denied", "coarse/P140/chunk-00000.parquet"), "Permission denied"),
])
def test_disk_full_or_permission_denied_mid_run(tmp_path, capsys, monkeypatch, error, words):
    root = tmp_path / "out"
    _fail_after(monkeypatch, 6, error)  # 3 tables per shard: the third shard fails
    code, out, err = kn(capsys, "attribute", *OPTIONS, "--out", str(root))
    assert code == 1
    assert one_line(err) == f"kn: error: {words}: coarse/P140/chunk-00000.parquet; finished shards are kept; rerun the same command to resume\n"
    store = the_store(root)
    assert len(intact(store)) == 2
    monkeypatch.undo()
    code, out, err = kn(capsys, "attribute", *OPTIONS, "--out", str(root))
    assert code == 0 and "(2 computed, 2 reused)" in out
    assert len(intact(store)) == 4 and not list((store.dir / ".claims").iterdir())  # no claim left behind


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_unwritable_shard_folder(finished, capsys):
    store = the_store(finished)
    folder = store.dir / "coarse" / "P30"
    shutil.rmtree(store.dir / "coarse" / "P140")
    os.chmod(folder.parent, stat.S_IRUSR | stat.S_IXUSR)
    try:
        code, _, err = kn(capsys, "attribute", *OPTIONS, "--out", str(finished))
    finally:
        os.chmod(folder.parent, 0o755)
    assert code == 1 and "Permission denied" in one_line(err) and "rerun the same command to resume" in err


def test_interrupted(tmp_path, capsys, monkeypatch):
    root = tmp_path / "out"
    _fail_after(monkeypatch, 3, KeyboardInterrupt())
    code, _, err = kn(capsys, "attribute", *OPTIONS, "--out", str(root))
    assert code == 130
    assert one_line(err) == "kn: interrupted; finished shards are kept; rerun the same command to resume\n"
    assert len(intact(the_store(root))) == 1


# -- arguments ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--seed", "-1"], "argument --seed: expected an integer >= 0, got -1"),
    (["--relations", ","], "--relations ',': no relation id"),
    (["--relations", "P19,P0"], "unknown relation P0"),
    (["--model", "no-such-model-xyz"], "no-such-model-xyz: unknown model"),
    (["--facts-per-relation", "0"], "expected a positive integer, got 0"),
])
def test_bad_arguments_exit_2_before_anything_is_written(tmp_path, capsys, argv, message):
    root = tmp_path / "out"
    code, _, err = kn(capsys, "attribute", *OPTIONS, *argv, "--out", str(root))
    assert code == 2
    assert one_line(err).startswith("kn: error: ") and message in err
    assert not root.exists()


def test_settings_for_checks_seed_and_relations():
    with pytest.raises(KnUsageError, match="--seed must be an integer >= 0"):
        settings_for(MODEL, "smoke", seed=-1)
    with pytest.raises(KnUsageError, match="no relation id"):
        settings_for(MODEL, "smoke", relations=",")


# -- corrupt files ----------------------------------------------------------------------------------


def test_info_verify_checks_every_checksum(finished, capsys):
    store = the_store(finished)
    shard = store.dir / "coarse" / "P30" / "chunk-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-10])
    code, out, _ = kn(capsys, "info", "--out", str(finished))  # no checking: lists, exit 0
    assert code == 0 and "DAMAGED" not in out
    code, out, err = kn(capsys, "info", "--verify", "--out", str(finished))
    assert code == 1 and err == ""
    assert f"{MODEL}/attribute/{store.key}: 4 shards (method=ig, seed=0; 3 intact, 1 DAMAGED)" in out
    assert "P30/chunk-00001: checksum mismatch: coarse/P30/chunk-00001.parquet; rerun `kn attribute`" in out
    assert f"{MODEL}/refine/" in out and "2 intact)" in out


def test_refine_with_a_corrupt_attribute_shard_names_kn_attribute(finished, capsys):
    store = the_store(finished)
    shard = store.dir / "coarse" / "P30" / "chunk-00000.parquet"
    shard.write_bytes(b"not parquet")
    code, _, err = kn(capsys, "refine", *OPTIONS, "--facts-per-relation", "2", "--out", str(finished))  # a new refine key
    assert code == 1
    assert "shard P30/chunk-00000: checksum mismatch" in one_line(err)
    assert "rerun `kn attribute` with the same options to recompute it" in err
    code, out, err = kn(capsys, "attribute", *OPTIONS, "--out", str(finished))  # which repairs it
    assert code == 0 and "1 corrupt recomputed" in out and "kn: warning:" in one_line(err)
    assert len(intact(store)) == 4


def test_corrupt_data_file_exits_1(tmp_path, capsys, monkeypatch):
    mirror = tmp_path / "mirror"
    shutil.copytree(MIRROR, mirror, symlinks=True, ignore=shutil.ignore_patterns("*.md"))
    relations = mirror / "knowledge-neurons" / "LAMA" / "relations.jsonl"
    relations.write_text(relations.read_text()[:100])
    monkeypatch.setenv("KN_DATA_MIRROR", str(mirror))
    code, _, err = kn(capsys, "info", "--out", str(tmp_path / "out"))
    assert code == 1 and "sha256 mismatch" in one_line(err) and str(relations) in err


# -- result files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_result_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        store = ResultStore(tmp_path, MODEL, "attribute", "k")
        store.create({"a": 1})
        import pandas as pd

        store.write_shard("P30/chunk-00000", {"coarse": pd.DataFrame({"x": [1]})}, {"fact_ids": ["P30/0"]})
    finally:
        os.umask(old)
    for path in (store.manifest_path, store.dir / "coarse" / "P30" / "chunk-00000.parquet"):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


def test_stale_claim_of_a_dead_process_is_taken_over(tmp_path, capsys):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    store = the_store(tmp_path)
    store.dir.mkdir(parents=True)
    claim = store_module.CLAIMS
    (store.dir / claim).mkdir()
    record = {"owner": "killed-run", "pid": int(dead), "host": store_module._HOST, "started": time.time()}
    (store.dir / claim / "P30__chunk-00000.json").write_text(json.dumps(record))
    code, out, err = kn(capsys, "attribute", *OPTIONS, "--out", str(tmp_path))
    assert code == 0 and "(4 computed, 0 reused)" in out
    assert not list((store.dir / claim).iterdir())
