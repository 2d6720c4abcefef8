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
* A shard being computed is *claimed* (``.claims/<shard>.json`` with the pid, host, start time and
  last renewal of the run), so a second run with the same settings computes other shards and waits for
  this one instead of repeating it. The run renews its claims every ``KN_CLAIM_HEARTBEAT_SECONDS``
  (default 60, ``renew``); a claim whose process is dead (same host) or that has not been renewed for
  ``KN_CLAIM_STALE_SECONDS`` (default 600: a run killed on another host, or in a container that came
  back under another host name) is taken over. Hosts sharing a store need clocks that agree to well
  within that limit.
* A manifest entry is never replaced by one covering fewer facts (a small sample racing a large one).
* A damaged ``manifest.json`` (truncated, not JSON, a directory, or JSON of the wrong shape: a shard
  without ``tables``, ``fact_ids`` that are not a list, settings edited so that they no longer hash to
  the directory's key) raises ``DamagedManifest`` naming the file and what is wrong; a run with the
  same settings moves it aside (``manifest.json.damaged-<time>``), starts a new one and lists again the
  shards whose files on disk hold exactly their facts (``adopt``; the runner checks them).
* Each shard entry records how it was computed (device, dtype, torch threads, versions of torch,
  transformers and kn_lib: the runner's ``meta``); ``provenance_mix`` says when a store's shards differ
  in it (scores change in the 5th digit with the thread count). It is not part of the key.
* A write that fails (disk full) names the file it was writing.
* Files follow the umask (the temporary files they start as are private).

``ResultStore`` (``kn_lib.run.result_store``) reads and writes one such directory under its lock; this
module holds what it stands on (keys, atomic files, claim records, manifest checks) and imports nothing
else of ``kn_lib.run``. ``kn_lib.run.results.load`` reads a table back over all finished shards, for the book.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import tempfile
import time
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

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


def _naming(err: OSError, dest: Path) -> OSError:
    """The error with ``dest`` as its file name when it has none (a failed write, e.g. disk full, names no
    file): the message then says which file could not be written."""
    if err.filename is not None:
        return err
    named = OSError(err.errno, err.strerror or " ".join(str(err).split()), str(dest))
    named.__cause__ = err
    return named


def write_atomic(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_in(dest.parent, dest.name)
    try:
        tmp.write_bytes(data)
        _commit(tmp, dest)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _naming(err, dest) from None
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
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _naming(err, dest) from None
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


CLAIMS = ".claims"  # claims of shards being computed (hidden: not a table)
CLAIM_STALE_ENV = "KN_CLAIM_STALE_SECONDS"  # a claim not renewed for this long is taken over
CLAIM_HEARTBEAT_ENV = "KN_CLAIM_HEARTBEAT_SECONDS"  # how often a run renews its claims
DEFAULT_CLAIM_STALE = 600.0
DEFAULT_CLAIM_HEARTBEAT = 60.0


def _seconds(env: str, default: float) -> float:
    try:
        value = float(os.environ.get(env) or default)
    except ValueError:
        return default
    return value if value > 0 and value == value else default


def claim_timeout() -> float:
    """Seconds after its last renewal at which a claim is taken over (``KN_CLAIM_STALE_SECONDS``)."""
    return _seconds(CLAIM_STALE_ENV, DEFAULT_CLAIM_STALE)


def claim_heartbeat() -> float:
    """Seconds between renewals of a run's claims (``KN_CLAIM_HEARTBEAT_SECONDS``), at most a third of the timeout."""
    return min(_seconds(CLAIM_HEARTBEAT_ENV, DEFAULT_CLAIM_HEARTBEAT), claim_timeout() / 3)


def _read_claim(path: Path) -> dict[str, Any] | None:
    try:
        held = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: stale
    return held if isinstance(held, dict) else {}


def claim_is_stale(claim: Mapping[str, Any]) -> bool:
    """A claim nobody will finish: unreadable, its process is dead (this host), or not renewed for
    ``claim_timeout()`` seconds (any host: a run killed elsewhere, a container restarted under a new name)."""
    try:
        pid, host, renewed = int(claim["pid"]), str(claim["host"]), float(claim.get("renewed", claim["started"]))
    except (KeyError, TypeError, ValueError):
        return True
    if host == _HOST and not _alive(pid):
        return True
    return claim_age(claim) > claim_timeout() or renewed != renewed


def claim_age(claim: Mapping[str, Any]) -> float:
    """Seconds since the claim was last renewed (by this host's clock)."""
    try:
        return time.time() - float(claim.get("renewed", claim["started"]))
    except (KeyError, TypeError, ValueError):
        return float("inf")


def describe_claim(claim: Mapping[str, Any] | None) -> str:
    """Who holds a claim, for a message: "host h, pid 12, renewed 3 s ago"."""
    if not claim:
        return "an unreadable claim"
    age = claim_age(claim)
    when = f"renewed {age:.0f} s ago" if age != float("inf") else "never renewed"
    return f"host {claim.get('host', '?')}, pid {claim.get('pid', '?')}, {when}"


def _is_cache_key(key: str) -> bool:
    """Whether a directory name is a ``cache_key`` (tests use other names, whose settings are not hashed)."""
    return re.fullmatch(r"[0-9a-f]{12}", key) is not None


_SHA256 = re.compile(r"[0-9a-f]{64}")


def manifest_problem(found: Any) -> str | None:
    """What makes parsed JSON unusable as a manifest (None: nothing): the shape every reader relies on."""
    if not isinstance(found, dict):
        return "not a results manifest"
    if not isinstance(found.get("settings"), dict):
        return "no settings mapping"
    if not isinstance(found.get("shards"), dict):
        return "no shards mapping"
    for shard, entry in found["shards"].items():
        problem = _entry_problem(entry)
        if problem is not None:
            return f"shard {shard}: {problem}"
    return None


def _entry_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return "not a mapping"
    tables = entry.get("tables")
    if not isinstance(tables, dict):
        return "no tables"
    for table, info in tables.items():
        if not isinstance(info, dict):
            return f"table {table}: not a mapping"
        path = info.get("path")
        if not isinstance(path, str) or not path or PurePosixPath(path).is_absolute() or ".." in PurePosixPath(path).parts:
            return f"table {table}: path {path!r} is not a relative path inside the directory"
        if not (isinstance(info.get("sha256"), str) and _SHA256.fullmatch(info["sha256"])):
            return f"table {table}: sha256 {info.get('sha256')!r} is not a checksum"
        if "rows" in info and (not isinstance(info["rows"], int) or isinstance(info["rows"], bool) or info["rows"] < 0):
            return f"table {table}: rows {info['rows']!r} is not a count"
    fact_ids = entry.get("fact_ids", [])
    if not isinstance(fact_ids, list) or not all(isinstance(f, str) for f in fact_ids):
        return f"fact_ids {str(fact_ids)[:40]!r} is not a list of fact ids"
    if "relation" in entry and not isinstance(entry["relation"], str):
        return f"relation {entry['relation']!r} is not a relation id"
    return None


PROVENANCE_FIELDS = ("device", "dtype", "threads", "versions")  # how a shard was computed (runner's meta)


def provenance_mix(entries: Mapping[str, Mapping[str, Any]]) -> str | None:
    """How the shards of one store differ in the way they were computed (device, dtype, threads,
    library versions), e.g. "threads 1 (3 shards), 2 (1 shard)"; None when they agree. Shards from
    before provenance was recorded (no ``versions``) count as "not recorded" when others have it."""
    recorded = {s: e for s, e in entries.items() if isinstance(e.get("versions"), dict)}
    if not recorded:
        return None
    parts = []
    for name in PROVENANCE_FIELDS:
        if name == "versions":
            libraries = sorted({lib for e in recorded.values() for lib in e["versions"]})
            values = {lib: [str(e["versions"].get(lib)) for e in recorded.values()] for lib in libraries}
        else:
            values = {name: [str(e.get(name)) for e in recorded.values()]}
        for label, seen in values.items():
            counts = {v: seen.count(v) for v in sorted(set(seen))}
            if len(counts) > 1:
                parts.append(f"{label} " + ", ".join(f"{v} ({n} shard{'s' if n > 1 else ''})" for v, n in counts.items()))
    missing = len(entries) - len(recorded)
    if missing:
        parts.append(f"{missing} shard{'s' if missing > 1 else ''} from before kn_lib recorded this")
    return "; ".join(parts) or None


def concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate shard tables; empty shards (no rows) do not decide the column types."""
    if not frames:
        return pd.DataFrame()
    nonempty = [f for f in frames if len(f)]
    return pd.concat(nonempty or frames[:1], ignore_index=True)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
