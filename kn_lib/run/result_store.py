"""``ResultStore``: the shards of one (model, stage, settings key) results directory, read, written,
checked and claimed under the directory's lock (the layout and its rules: ``kn_lib.run.store``).

Apart from ``store`` so that the store's building blocks (keys, atomic files, claim records, manifest
checks) stay the run's bottom layer, importing nothing of ``kn_lib.run``; ``stores`` lists a stage's
directories and ``warn_corrupt`` says a finished shard is recomputed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import pandas as pd

from .store import (
    _HOST, CLAIMS, FORMAT, MANIFEST, CorruptShard, CorruptShardWarning, DamagedManifest, ResultsNotFound, _is_cache_key, _now,
    _read_claim, cache_key, claim_is_stale, concat, manifest_problem, provenance, remove_stale_temps, safe_name, sha256_file,
    write_atomic, write_parquet_atomic,
)


@dataclass(frozen=True)
class ShardCheck:
    ok: bool
    reason: str = ""  # why not: "not finished", "checksum mismatch: coarse/P19/chunk-00000.parquet", ...


class ResultStore:
    """The shards of one (model, stage, key) directory and their manifest.

    The manifest is updated under an exclusive lock on the directory, read-modify-write, and shards
    are claimed while they are computed, so that two runs with the same settings share the work.
    """

    def __init__(self, root: Path | str, model: str, stage: str, key: str) -> None:
        self.root, self.model, self.stage, self.key = Path(root), model, stage, key
        self.dir = self.root / safe_name(model) / stage / key

    # manifest ----------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.dir / MANIFEST

    def exists(self) -> bool:
        """Whether ``manifest.json`` is there (a directory of that name too: ``manifest`` reports it)."""
        return self.manifest_path.exists() or self.manifest_path.is_symlink()

    def manifest(self) -> dict[str, Any]:
        """The manifest, checked for the shape every reader relies on (``DamagedManifest`` when not)."""
        if not self.exists():
            raise ResultsNotFound(f"{self.dir}: no results (no {MANIFEST})")
        if self.manifest_path.is_dir():
            raise DamagedManifest(f"{self.manifest_path}: damaged manifest (a directory, not a file); {self._fix}")
        try:
            found = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DamagedManifest(f"{self.manifest_path}: damaged manifest ({err}); {self._fix}") from None
        problem = manifest_problem(found)
        if problem is None and _is_cache_key(self.key) and cache_key(found["settings"]) != self.key:
            problem = f"its settings hash to {cache_key(found['settings'])}, not to the directory's key: edited?"
        if problem is not None:
            raise DamagedManifest(f"{self.manifest_path}: damaged manifest ({problem}); {self._fix}")
        return found

    @property
    def _fix(self) -> str:
        return (f"rerun `kn {self.stage}` with the same options to move it aside (shards are recovered from their files "
                "where they can be, the rest recomputed)")

    def create(self, settings: Mapping[str, Any], description: Mapping[str, Any] | None = None) -> Path | None:
        """Create the directory and manifest, or check that an existing one holds these settings.
        A damaged manifest is moved aside (``manifest.json.damaged-<time>``, returned) and a new one
        started, which ``adopt`` can refill from the shard files on disk."""
        self.dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.dir)
        aside = None
        with self._locked():
            for claim in (self.dir / CLAIMS).glob("*.json"):  # left by killed runs
                if claim_is_stale(_read_claim(claim) or {}):
                    claim.unlink(missing_ok=True)
            if self.exists():
                try:
                    found = self.manifest().get("settings")
                except DamagedManifest:
                    aside = self.manifest_path.with_name(f"{MANIFEST}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
                    os.replace(self.manifest_path, aside)
                else:
                    if json.loads(json.dumps(settings, default=str)) != found:
                        raise DamagedManifest(f"{self.manifest_path}: its settings differ from this run's though both hash to "
                                              f"{self.key}; move {self.dir} aside and rerun")
                    return None
            manifest = {
                "format": FORMAT, "model": self.model, "stage": self.stage, "key": self.key,
                "settings": settings, **(description or {}),
                "created": _now(), "created_by": provenance(), "shards": {},
            }
            self._write_manifest(manifest)
        return aside

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

    def verify(self) -> dict[str, str]:
        """Every finished shard checked against its checksums: shard -> why it failed (empty: all intact)."""
        return {shard: check.reason for shard, entry in sorted(self.entries().items())
                if not (check := self.check(shard, entry)).ok}

    def write_shard(self, shard: str, tables: Mapping[str, pd.DataFrame], meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write a shard's tables, then record them in the manifest (the commit point).

        Under the directory lock, so that a run finishing the same shard at the same moment waits; an
        intact entry covering more facts than this one (a larger sample's) is kept, and returned."""
        with self._locked():
            manifest = self.manifest()
            old = manifest["shards"].get(shard)
            new_facts = set((meta or {}).get("fact_ids", ()))
            if old is not None and set(old.get("fact_ids", ())) > new_facts and self.check(shard, old).ok:
                return old
            info = {}
            for table, frame in tables.items():
                path = self.shard_path(shard, table)
                info[table] = {"path": path.relative_to(self.dir).as_posix(), "sha256": write_parquet_atomic(path, frame),
                               "rows": len(frame)}
            entry = {"tables": info, **(meta or {}), "finished": _now(), "git_commit": provenance()["git_commit"]}
            manifest["shards"][shard] = entry
            self._write_manifest(manifest)
        return entry

    def adopt(self, shard: str, paths: Mapping[str, Path], meta: Mapping[str, Any]) -> bool:
        """Record a shard whose table files are on disk but not in the manifest (after a damaged one was
        moved aside), with the checksums of the files as they are; the caller checked their content.
        False when the shard is listed already."""
        import pyarrow.parquet as pq

        with self._locked():
            manifest = self.manifest()
            if shard in manifest["shards"]:
                return False
            info = {table: {"path": path.relative_to(self.dir).as_posix(), "sha256": sha256_file(path),
                            "rows": pq.ParquetFile(path).metadata.num_rows} for table, path in paths.items()}
            manifest["shards"][shard] = {"tables": info, **meta, "finished": _now(), "git_commit": None, "recovered": _now()}
            self._write_manifest(manifest)
        return True

    # claims --------------------------------------------------------------------------------------
    def _claim_path(self, shard: str) -> Path:
        return self.dir / CLAIMS / f"{shard.replace('/', '__')}.json"

    def claim(self, shard: str, owner: str, covered: Callable[[Mapping[str, Any]], bool] | None = None) -> str:
        """Claim a shard before computing it: ``"mine"`` (compute it, ``renew`` the claim meanwhile, then
        ``release``), ``"done"`` (an intact entry that ``covered`` accepts exists: nothing to do) or
        ``"theirs"`` (a live run computes it: wait; ``holder`` says who). A stale claim (``claim_is_stale``)
        is taken over."""
        path = self._claim_path(shard)
        with self._locked():
            entry = self.entries().get(shard)
            if entry is not None and covered is not None and covered(entry) and self.check(shard, entry).ok:
                return "done"
            held = _read_claim(path)
            if held is not None and held.get("owner") != owner and not claim_is_stale(held):
                return "theirs"
            now = time.time()
            record = {"owner": owner, "pid": os.getpid(), "host": _HOST, "started": now, "renewed": now}
            write_atomic(path, json.dumps(record).encode())
        return "mine"

    def renew(self, shards: Iterable[str], owner: str) -> int:
        """Heartbeat: mark this run's claims of ``shards`` as renewed now; returns how many it still held."""
        renewed = 0
        with self._locked():
            for shard in shards:
                path = self._claim_path(shard)
                held = _read_claim(path)
                if held is not None and held.get("owner") == owner:
                    write_atomic(path, json.dumps({**held, "renewed": time.time()}).encode())
                    renewed += 1
        return renewed

    def holder(self, shard: str) -> dict[str, Any] | None:
        """The claim on a shard (owner, pid, host, started, renewed), None when unclaimed."""
        return _read_claim(self._claim_path(shard))

    def release(self, shard: str, owner: str) -> None:
        """Drop this run's claim of a shard (another run's claim is left alone)."""
        path = self._claim_path(shard)
        with self._locked():
            held = _read_claim(path)
            if held is not None and held.get("owner") == owner:
                path.unlink(missing_ok=True)

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
                    raise CorruptShard(f"{self.dir}: shard {name}: {check.reason}; rerun `kn {self.stage}` with the same "
                                       "options to recompute it")
            frames.append(pd.read_parquet(self.dir / entries[name]["tables"][table]["path"]))
        return concat(frames)

    def tables(self) -> list[str]:
        return sorted({t for e in self.entries().values() for t in e["tables"]})


def stores(root: Path | str, model: str, stage: str) -> list[ResultStore]:
    """Every settings key present for (model, stage), newest first."""
    base = Path(root) / safe_name(model) / stage
    found = [ResultStore(root, model, stage, d.name) for d in base.iterdir()] if base.is_dir() else []
    found = [s for s in found if s.exists()]  # a manifest.json that is a directory too: ``manifest`` reports it
    return sorted(found, key=lambda s: s.manifest_path.lstat().st_mtime, reverse=True)


def warn_corrupt(store: ResultStore, shard: str, reason: str) -> None:
    warnings.warn(f"{store.dir}: shard {shard}: {reason}; recomputing it", CorruptShardWarning, stacklevel=3)
