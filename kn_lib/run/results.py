"""Results on disk: Parquet shards with a manifest, one directory per (model, stage, settings).

Layout::

    <root>/<model>/<stage>/<key>/manifest.json
    <root>/<model>/<stage>/<key>/<table>/<shard>.parquet      e.g. coarse/P19/chunk-00003.parquet

* ``key`` is a short hash of the settings that made the results (``cache_key``), so results computed
  with other settings land in another directory instead of mixing with these.
* ``manifest.json`` records those settings (model and its description, data checksums, attribution
  settings, thresholds, seed, kn_lib version and git commit) and, per finished shard, the sha256 and
  row count of each of its table files. A shard is finished exactly when its manifest entry exists
  and its files still match their checksums.
* Every file is written to a temporary name and renamed into place (``os.replace``), and a shard's
  manifest entry is written after its files: a run killed at any moment leaves finished shards, at most
  unlisted files that the next run overwrites, and temporary files that the next run removes.

``load(model, stage, ...)`` concatenates a table over all finished shards in one call, for the book.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import pandas as pd

MANIFEST = "manifest.json"
FORMAT = 1  # bump when the layout changes


class CorruptShard(RuntimeError):
    """A shard file is missing or does not match the checksum its manifest recorded."""


class ResultsNotFound(LookupError):
    """No (unambiguous) results for what was asked."""


class CorruptShardWarning(UserWarning):
    """A finished shard failed its checksum and will be recomputed."""


def default_root() -> Path:
    """``$KN_RESULTS_DIR``, else ``data/results`` of the checkout kn_lib runs from, else ``./data/results``.

    Anchored at the checkout (not the working directory) so that the ``kn`` command and the book's
    notebooks (which run in ``book/``) read and write the same place.
    """
    if os.environ.get("KN_RESULTS_DIR"):
        return Path(os.environ["KN_RESULTS_DIR"])
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file():
        return checkout / "data" / "results"
    return Path("data") / "results"


def cache_key(settings: Mapping[str, Any], length: int = 12) -> str:
    """Short, stable hash of JSON-able settings (key order does not matter)."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@lru_cache(maxsize=1)
def provenance() -> dict[str, Any]:
    """kn_lib version and, when kn_lib runs from a git checkout, its commit and whether kn_lib/ has
    uncommitted changes (recorded, not part of the key: a commit that changes nothing keeps results)."""
    from . import __version__

    out: dict[str, Any] = {"kn_lib_version": __version__, "git_commit": None, "git_dirty": None}
    checkout = Path(__file__).resolve().parents[1]
    if not (checkout / ".git").exists():
        return out
    try:
        git = ["git", "-C", str(checkout)]
        out["git_commit"] = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run([*git, "status", "--porcelain", "--", "kn_lib"], capture_output=True, text=True, timeout=10, check=True)
        out["git_dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def safe_name(name: str) -> str:
    """A model name as one directory name (``org/model`` -> ``org--model``)."""
    return name.replace("/", "--").replace("\\", "--")


# -- atomic files ----------------------------------------------------------------------------------

_HOST = socket.gethostname().replace(".", "_")


def _temp_in(directory: Path, name: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.{_HOST}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def _commit(tmp: Path, dest: Path) -> None:
    """fsync, then rename into place: readers see the old file or the whole new one, never a part."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dest)


def write_atomic(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_in(dest.parent, dest.name)
    try:
        tmp.write_bytes(data)
        _commit(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_parquet_atomic(dest: Path, frame: pd.DataFrame) -> str:
    """Write a table atomically; returns the sha256 of the file written."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_in(dest.parent, dest.name)
    try:
        frame.to_parquet(tmp, index=False)
        digest = sha256_file(tmp)
        _commit(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest


def remove_stale_temps(directory: Path) -> list[Path]:
    """Remove temporary files left by dead processes of this host (a killed run); returns them."""
    removed = []
    for tmp in directory.rglob(".*.tmp"):
        parts = tmp.name.split(".")  # "", name..., host, pid, random, "tmp"
        try:
            host, pid = parts[-4], int(parts[-3])
        except (IndexError, ValueError):
            continue
        if host == _HOST and not _alive(pid):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- the store -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardCheck:
    ok: bool
    reason: str = ""  # why not: "not finished", "checksum mismatch: coarse/P19/chunk-00000.parquet", ...


class ResultStore:
    """The shards of one (model, stage, key) directory and their manifest.

    Only one process (the run's driver) writes a store at a time in normal use; the manifest is
    nevertheless updated under an exclusive lock on the directory, read-modify-write, so that two
    runs with the same settings interleave safely.
    """

    def __init__(self, root: Path | str, model: str, stage: str, key: str) -> None:
        self.root, self.model, self.stage, self.key = Path(root), model, stage, key
        self.dir = self.root / safe_name(model) / stage / key

    # manifest ----------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.dir / MANIFEST

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def manifest(self) -> dict[str, Any]:
        if not self.exists():
            raise ResultsNotFound(f"{self.dir}: no results (no {MANIFEST})")
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def create(self, settings: Mapping[str, Any], description: Mapping[str, Any] | None = None) -> None:
        """Create the directory and manifest, or check that an existing one holds these settings."""
        self.dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.dir)
        with self._locked():
            if self.exists():
                found = self.manifest().get("settings")
                if json.loads(json.dumps(settings, default=str)) != found:
                    raise RuntimeError(f"{self.dir}: manifest settings differ from this run's (hash collision?)")
                return
            manifest = {
                "format": FORMAT, "model": self.model, "stage": self.stage, "key": self.key,
                "settings": settings, **(description or {}),
                "created": _now(), "created_by": provenance(), "shards": {},
            }
            self._write_manifest(manifest)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.dir, os.O_RDONLY)  # lock the directory itself: no lock file to commit or clean
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _write_manifest(self, manifest: Mapping[str, Any]) -> None:
        write_atomic(self.manifest_path, (json.dumps(manifest, indent=1, sort_keys=False, default=str) + "\n").encode())

    # shards ------------------------------------------------------------------------------------
    def shard_path(self, shard: str, table: str) -> Path:
        return self.dir / table / f"{shard}.parquet"

    def entries(self) -> dict[str, dict[str, Any]]:
        return self.manifest()["shards"] if self.exists() else {}

    def check(self, shard: str, entry: Mapping[str, Any] | None = None) -> ShardCheck:
        """Finished and intact? Every table file must exist and match its recorded sha256."""
        entry = entry if entry is not None else self.entries().get(shard)
        if entry is None:
            return ShardCheck(False, "not finished")
        for table, info in entry["tables"].items():
            path = self.dir / info["path"]
            if not path.is_file():
                return ShardCheck(False, f"missing file {info['path']}")
            if sha256_file(path) != info["sha256"]:
                return ShardCheck(False, f"checksum mismatch: {info['path']}")
        return ShardCheck(True)

    def write_shard(self, shard: str, tables: Mapping[str, pd.DataFrame], meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write a shard's tables, then record them in the manifest (the commit point)."""
        info = {}
        for table, frame in tables.items():
            path = self.shard_path(shard, table)
            info[table] = {"path": path.relative_to(self.dir).as_posix(), "sha256": write_parquet_atomic(path, frame), "rows": len(frame)}
        entry = {"tables": info, **(meta or {}), "finished": _now(), "git_commit": provenance()["git_commit"]}
        with self._locked():
            manifest = self.manifest()
            manifest["shards"][shard] = entry
            self._write_manifest(manifest)
        return entry

    def read(self, table: str, shards: Iterable[str] | None = None, verify: bool = True) -> pd.DataFrame:
        """One table over the given (default: all) finished shards, in shard-name order."""
        entries = self.entries()
        names = sorted(entries) if shards is None else list(shards)
        frames = []
        for name in names:
            if name not in entries:
                raise ResultsNotFound(f"{self.dir}: shard {name} is not finished")
            if table not in entries[name]["tables"]:
                raise ResultsNotFound(f"{self.dir}: shard {name} has no table {table!r} (has {sorted(entries[name]['tables'])})")
            if verify:
                check = self.check(name, entries[name])
                if not check.ok:
                    raise CorruptShard(f"{self.dir}: shard {name}: {check.reason}; rerun the stage to recompute it")
            frames.append(pd.read_parquet(self.dir / entries[name]["tables"][table]["path"]))
        return concat(frames)

    def tables(self) -> list[str]:
        return sorted({t for e in self.entries().values() for t in e["tables"]})


def concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate shard tables; empty shards (no rows) do not decide the column types."""
    if not frames:
        return pd.DataFrame()
    nonempty = [f for f in frames if len(f)]
    return pd.concat(nonempty or frames[:1], ignore_index=True)


def stores(root: Path | str, model: str, stage: str) -> list[ResultStore]:
    """Every settings key present for (model, stage), newest first."""
    base = Path(root) / safe_name(model) / stage
    found = [ResultStore(root, model, stage, d.name) for d in base.iterdir() if (d / MANIFEST).is_file()] if base.is_dir() else []
    return sorted(found, key=lambda s: s.manifest_path.stat().st_mtime, reverse=True)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def warn_corrupt(store: ResultStore, shard: str, reason: str) -> None:
    warnings.warn(f"{store.dir}: shard {shard}: {reason}; recomputing it", CorruptShardWarning, stacklevel=3)


# -- reading results for the book ------------------------------------------------------------------


def load(
    model: str,
    stage: str,
    table: str | None = None,
    *,
    preset: str | None = None,
    key: str | None = None,
    root: Path | str | None = None,
    as_dataset: bool = False,
    verify: bool = True,
    **overrides: Any,
):
    """A stage's table for a model, concatenated over its shards: a DataFrame (or ``datasets.Dataset``).

    Which results: ``key`` names a settings directory; or ``preset`` (plus overrides of its settings,
    as the ``kn`` command takes them: ``facts_per_relation=``, ``steps=``, ...) recomputes the key the
    run used and keeps the preset's facts only; with neither, the only key present is used (several
    present: an error listing them). ``table`` defaults to the stage's main table (``refined`` for
    ``refine``, ``coarse`` for ``attribute``). Every file is checked against its manifest checksum.
    """
    root = Path(root) if root is not None else default_root()
    fact_ids = relation_ids = None
    if preset is not None or overrides:
        from .stages import settings_for, stage_registry

        settings = settings_for(model=model, preset=preset, **overrides)
        spec = stage_registry()[stage]
        store = ResultStore(root, model, stage, cache_key(spec.key_settings(settings)))
        if not store.exists():
            raise ResultsNotFound(f"no {stage} results for {model} with these settings at {store.dir}; run `kn {stage}` first")
        fact_ids = set(settings.selected_fact_ids())
        relation_ids = set(settings.relation_ids())
    elif key is not None:
        store = ResultStore(root, model, stage, key)
        if not store.exists():
            raise ResultsNotFound(f"no {stage} results for {model} with key {key} under {root}")
    else:
        found = stores(root, model, stage)
        if not found:
            raise ResultsNotFound(f"no {stage} results for {model} under {root}")
        if len(found) > 1:
            raise ResultsNotFound(
                f"{len(found)} settings keys for {model}/{stage} under {root} ({', '.join(s.key for s in found)}): "
                "pass key= or preset="
            )
        store = found[0]
    if table is None:
        from .stages import stage_registry

        spec = stage_registry().get(stage)
        table = spec.tables[0] if spec else store.tables()[0]
    frame = store.read(table, verify=verify)
    if fact_ids is not None and "fact_id" in frame.columns:  # the attribute stage may hold a larger sample
        frame = frame[frame["fact_id"].isin(fact_ids)].reset_index(drop=True)
    if relation_ids is not None and "relation" in frame.columns:
        frame = frame[frame["relation"].isin(relation_ids)].reset_index(drop=True)
    if as_dataset:
        import datasets

        return datasets.Dataset.from_pandas(frame, preserve_index=False)
    return frame


def manifest(model: str, stage: str, key: str | None = None, root: Path | str | None = None) -> dict[str, Any]:
    """The manifest of a results directory (the only one, or ``key``), e.g. for a chapter's caption."""
    root = Path(root) if root is not None else default_root()
    if key is not None:
        return ResultStore(root, model, stage, key).manifest()
    found = stores(root, model, stage)
    if len(found) != 1:
        raise ResultsNotFound(f"{len(found)} settings keys for {model}/{stage} under {root}: pass key=")
    return found[0].manifest()
