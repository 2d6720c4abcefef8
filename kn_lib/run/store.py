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
* A shard being computed is *claimed* (``.claims/<shard>.json`` with the pid, host and start time of
  the run), so a second run with the same settings computes other shards and waits for this one
  instead of repeating it; a claim whose process is dead (same host) or that is older than
  ``KN_CLAIM_STALE_SECONDS`` (another host; default a day) is taken over.
* A manifest entry is never replaced by one covering fewer facts (a small sample racing a large one).
* A damaged ``manifest.json`` (truncated, not JSON) raises ``DamagedManifest`` naming the file; a run
  with the same settings moves it aside (``manifest.json.damaged-<time>``), starts a new one and lists
  again the shards whose files on disk hold exactly their facts (``adopt``; the runner checks them).
* Files follow the umask (the temporary files they start as are private).

``kn_lib.run.results.load`` reads a table back over all finished shards, for the book.
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
from typing import Any, Callable, Iterable, Iterator, Mapping

import pandas as pd

MANIFEST = "manifest.json"
FORMAT = 1  # bump when the layout changes


class CorruptShard(RuntimeError):
    """A shard file is missing or does not match the checksum its manifest recorded."""


class ResultsNotFound(LookupError):
    """No (unambiguous) results for what was asked."""


class CorruptShardWarning(UserWarning):
    """A finished shard failed its checksum and will be recomputed."""


class DamagedManifest(RuntimeError):
    """``manifest.json`` cannot be read (truncated, not JSON, not a manifest)."""


class DamagedManifestWarning(UserWarning):
    """A run moved a damaged manifest aside and started a new one."""


def default_root() -> Path:
    """``$KN_RESULTS_DIR``, else ``data/results`` of the checkout kn_lib runs from, else ``./data/results``.

    Anchored at the checkout (not the working directory) so that the ``kn`` command and the book's
    notebooks (which run in ``book/``) read and write the same place.
    """
    if os.environ.get("KN_RESULTS_DIR"):
        return Path(os.environ["KN_RESULTS_DIR"])
    checkout = Path(__file__).resolve().parents[2]
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
    from .. import __version__

    out: dict[str, Any] = {"kn_lib_version": __version__, "git_commit": None, "git_dirty": None}
    checkout = Path(__file__).resolve().parents[2]
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


def _umask() -> int:
    """The process umask, read without changing it where Linux says it (``os.umask`` sets it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _commit(tmp: Path, dest: Path) -> None:
    """fsync, then rename into place: readers see the old file or the whole new one, never a part.
    The file gets the mode a plain ``open`` would give it (``mkstemp`` makes it private)."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
        os.fchmod(f.fileno(), 0o666 & ~_umask())
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
        return self.manifest_path.is_file()

    def manifest(self) -> dict[str, Any]:
        if not self.exists():
            raise ResultsNotFound(f"{self.dir}: no results (no {MANIFEST})")
        try:
            found = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DamagedManifest(f"{self.manifest_path}: damaged manifest ({err}); {self._fix}") from None
        if not (isinstance(found, dict) and isinstance(found.get("shards"), dict) and "settings" in found):
            raise DamagedManifest(f"{self.manifest_path}: damaged manifest (not a results manifest); {self._fix}")
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
                if _stale(_read_claim(claim) or {}):
                    claim.unlink(missing_ok=True)
            if self.exists():
                try:
                    found = self.manifest().get("settings")
                except DamagedManifest:
                    aside = self.manifest_path.with_name(f"{MANIFEST}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
                    os.replace(self.manifest_path, aside)
                else:
                    if json.loads(json.dumps(settings, default=str)) != found:
                        raise RuntimeError(f"{self.dir}: manifest settings differ from this run's (hash collision?)")
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
        """Claim a shard before computing it: ``"mine"`` (compute it, then ``release``), ``"done"`` (an
        intact entry that ``covered`` accepts exists: nothing to do) or ``"theirs"`` (a live run
        computes it: wait). A claim of a dead process is taken over."""
        path = self._claim_path(shard)
        with self._locked():
            entry = self.entries().get(shard)
            if entry is not None and covered is not None and covered(entry) and self.check(shard, entry).ok:
                return "done"
            held = _read_claim(path)
            if held is not None and held.get("owner") != owner and not _stale(held):
                return "theirs"
            record = {"owner": owner, "pid": os.getpid(), "host": _HOST, "started": time.time()}
            write_atomic(path, json.dumps(record).encode())
        return "mine"

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


CLAIMS = ".claims"  # claims of shards being computed (hidden: not a table)
CLAIM_STALE_ENV = "KN_CLAIM_STALE_SECONDS"  # a claim from another host older than this is taken over


def _read_claim(path: Path) -> dict[str, Any] | None:
    try:
        held = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: stale
    return held if isinstance(held, dict) else {}


def _stale(claim: Mapping[str, Any]) -> bool:
    """A claim nobody will finish: its process is dead (this host), or it is older than the limit (another host)."""
    if not {"pid", "host", "started"} <= claim.keys():
        return True
    if claim["host"] == _HOST:
        return not _alive(int(claim["pid"]))
    return time.time() - float(claim["started"]) > float(os.environ.get(CLAIM_STALE_ENV) or 24 * 3600)


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


