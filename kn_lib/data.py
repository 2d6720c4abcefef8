"""The paper's dataset: PARAREL templates x the paper's T-REx facts (Dai et al. 2022, section 4.2).

Facts come from the paper's ``query_pairs.json`` (27,738 (head, tail) pairs for 34 relations), prompts
from the PARAREL templates of those relations (the relations with at least 4 templates), relation
labels and types (1-1, N-1, N-M) from LAMA's ``relations.jsonl``. Together: 27,738 facts and 253,448
prompts, the paper's counts.

Files are read from a mirror when ``KN_DATA_MIRROR`` points at one, otherwise downloaded once from the
pinned upstream commits into the user's cache. Either way their sha256 must match ``sources.SHA256``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.request
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from . import sources

MIN_TEMPLATES = 4  # the paper keeps relations with at least 4 PARAREL templates
QUERY_PAIRS = "knowledge-neurons/BingDistantTREx/query_pairs.json"
RELATIONS = "knowledge-neurons/LAMA/relations.jsonl"


class DataError(ValueError):
    """Bad or missing input data; the message names the file (and line) at fault."""


def _default_cache() -> Path:
    if os.environ.get("KN_CACHE_DIR"):
        return Path(os.environ["KN_CACHE_DIR"])
    import platformdirs

    return Path(platformdirs.user_cache_dir("kn-lib"))


@dataclass(frozen=True)
class DataSource:
    """Where the upstream files come from: a local mirror, or the pinned URLs cached on disk."""

    mirror: Path | None = field(
        default_factory=lambda: Path(os.environ["KN_DATA_MIRROR"]) if os.environ.get("KN_DATA_MIRROR") else None
    )
    cache_dir: Path = field(default_factory=_default_cache)
    verify: bool = True  # check sha256 against sources.SHA256

    def path(self, relpath: str) -> Path:
        """Local path of an upstream file, downloading it first when there is no mirror."""
        if relpath not in sources.SHA256:
            raise DataError(f"{relpath}: not a known upstream file (see kn_lib/sources.py)")
        if self.mirror is not None:
            local = Path(self.mirror) / relpath
            if not local.is_file():
                raise DataError(f"{local}: missing from the data mirror (KN_DATA_MIRROR={self.mirror})")
        else:
            local = self.cache_dir / "data" / relpath
            if not local.is_file():
                _download(url_of(relpath), local)
        if self.verify:
            _check_sha256(local, sources.SHA256[relpath])
        return local


def url_of(relpath: str) -> str:
    """The pinned raw URL of a mirrored path."""
    for prefix, url in sources.UPSTREAM.items():
        if relpath.startswith(prefix):
            return url + relpath[len(prefix) :]
    raise DataError(f"{relpath}: no upstream URL known")


def _download(url: str, dest: Path) -> None:
    """Download atomically (temporary file, then rename) so an interrupted download leaves nothing."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
        os.replace(tmp, dest)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise DataError(f"{dest.name}: download from {url} failed ({err}); set KN_DATA_MIRROR to a local mirror") from err


@lru_cache(maxsize=None)
def _sha256_of(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(path: Path, expected: str) -> None:
    stat = path.stat()
    actual = _sha256_of(path, stat.st_size, stat.st_mtime_ns)  # memoised: each file is hashed once per process
    if actual != expected:
        raise DataError(f"{path}: sha256 mismatch (expected {expected[:12]}..., got {actual[:12]}...)")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One JSON object per non-empty line; a malformed line is reported with its number."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: malformed JSON line ({err.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object")
            rows.append(row)
    return rows


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: malformed JSON ({err.msg})") from None


@dataclass(frozen=True)
class Relation:
    """A T-REx relation with its LAMA label and type and its PARAREL templates."""

    id: str
    label: str
    type: str  # "1-1", "N-1" or "N-M"
    templates: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise TypeError(f"Relation id: expected a relation id such as 'P36', got {self.id!r}")
        if isinstance(self.templates, str) or not all(isinstance(t, str) for t in self.templates):
            raise TypeError(f"Relation {self.id}: templates must be a sequence of str such as ('[X] was born in [Y] .',), "
                            f"got {self.templates!r}")
        object.__setattr__(self, "templates", tuple(self.templates))
        for template in self.templates:
            for slot in ("[X]", "[Y]"):
                if template.count(slot) != 1:
                    raise ValueError(f"Relation {self.id}: template {template!r} must contain {slot} exactly once "
                                     "([X]: the subject, [Y]: the object to predict)")


def load_templates(relation_id: str, source: DataSource | None = None) -> tuple[str, ...]:
    """The PARAREL templates of a relation, each checked to hold exactly one [X] and one [Y]."""
    source = source or DataSource()
    relpath = f"pararel/patterns/{relation_id}.jsonl"
    if relpath not in sources.SHA256:
        raise DataError(f"{relation_id}: unknown relation id (no PARAREL pattern file {relpath})")
    path = source.path(relpath)
    templates = []
    for lineno, row in enumerate(read_jsonl(path), start=1):
        pattern = row.get("pattern")
        if not isinstance(pattern, str):
            raise DataError(f"{path}:{lineno}: no 'pattern' field")
        for slot in ("[X]", "[Y]"):
            if pattern.count(slot) != 1:
                raise DataError(f"{path}:{lineno}: template {pattern!r} must contain {slot} exactly once")
        templates.append(pattern)
    return tuple(templates)


@lru_cache(maxsize=4)
def _relations_meta(source: DataSource) -> dict[str, dict[str, Any]]:
    path = source.path(RELATIONS)
    meta = {}
    for lineno, row in enumerate(read_jsonl(path), start=1):
        if not {"relation", "label", "type"} <= row.keys():
            raise DataError(f"{path}:{lineno}: needs 'relation', 'label' and 'type'")
        meta[row["relation"]] = row
    return meta


@lru_cache(maxsize=4)
def _query_pairs(source: DataSource) -> dict[str, list[list[str]]]:
    path = source.path(QUERY_PAIRS)
    pairs = read_json(path)
    if not isinstance(pairs, dict):
        raise DataError(f"{path}: expected an object {{relation: [[head, tail], ...]}}")
    for rel, items in pairs.items():
        for i, pair in enumerate(items):
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
                raise DataError(f"{path}: relation {rel}, pair {i}: expected [head, tail]")
    return pairs


def relation_ids(source: DataSource | None = None) -> list[str]:
    """The paper's 34 relations, in the order of ``query_pairs.json``."""
    return list(_query_pairs(source or DataSource()))


def load_relations(ids: Iterable[str] | None = None, source: DataSource | None = None) -> dict[str, Relation]:
    """Relations with their templates; by default the paper's 34 (PARAREL relations with >= 4 templates)."""
    ids = _relation_id_list(ids, "load_relations")
    source = source or DataSource()
    meta = _relations_meta(source)
    known = relation_ids(source)
    out = {}
    for rid in ids if ids is not None else known:
        if rid not in known:
            raise DataError(f"{rid}: unknown relation id (the paper's relations are {', '.join(known)})")
        if rid not in meta:
            raise DataError(f"{source.path(RELATIONS)}: relation {rid} is missing")
        templates = load_templates(rid, source)
        if len(templates) < MIN_TEMPLATES:
            raise DataError(f"pararel/patterns/{rid}.jsonl: only {len(templates)} templates (< {MIN_TEMPLATES})")
        out[rid] = Relation(rid, meta[rid]["label"], meta[rid]["type"], templates)
    return out


def load_facts(relations: Iterable[str] | None = None, source: DataSource | None = None):
    """The paper's facts as a ``datasets.Dataset``: one row per (subject, relation, object).

    ``fact_id`` is ``"<relation>/<index in query_pairs.json>"``, stable across runs and slices.
    """
    import datasets

    source = source or DataSource()
    rels = load_relations(_relation_id_list(relations, "load_facts"), source)
    pairs = _query_pairs(source)
    cols: dict[str, list] = {k: [] for k in ("fact_id", "relation", "relation_label", "relation_type", "subject", "object")}
    for rid, rel in rels.items():
        for i, (head, tail) in enumerate(pairs[rid]):
            cols["fact_id"].append(f"{rid}/{i}")
            cols["relation"].append(rid)
            cols["relation_label"].append(rel.label)
            cols["relation_type"].append(rel.type)
            cols["subject"].append(head)
            cols["object"].append(tail)
    return datasets.Dataset.from_dict(cols)


def fill(template: str, subject: str) -> str:
    """Fill the head slot; the tail slot [Y] stays for the model to predict."""
    return template.replace("[X]", subject)


def causal_usable(template: str) -> bool:
    """Whether a left-to-right model can be asked this template: [X] must come before [Y]."""
    return template.index("[X]") < template.index("[Y]")


def load_prompts(relations: Iterable[str] | None = None, source: DataSource | None = None):
    """Every (fact, template) prompt as a ``datasets.Dataset`` (253,448 rows for the 34 relations)."""
    import datasets

    source = source or DataSource()
    rels = load_relations(_relation_id_list(relations, "load_prompts"), source)
    pairs = _query_pairs(source)
    cols: dict[str, list] = {k: [] for k in ("fact_id", "relation", "template_id", "template", "prompt", "subject", "object")}
    for rid, rel in rels.items():
        for i, (head, tail) in enumerate(pairs[rid]):
            for t, template in enumerate(rel.templates):
                cols["fact_id"].append(f"{rid}/{i}")
                cols["relation"].append(rid)
                cols["template_id"].append(t)
                cols["template"].append(template)
                cols["prompt"].append(fill(template, head))
                cols["subject"].append(head)
                cols["object"].append(tail)
    return datasets.Dataset.from_dict(cols)


def relation_summary(source: DataSource | None = None):
    """One row per relation: label, type, templates, facts, prompts, and templates a causal LM can use."""
    import pandas as pd

    source = source or DataSource()
    pairs = _query_pairs(source)
    rows = []
    for rid, rel in load_relations(source=source).items():
        n_facts = len(pairs[rid])
        rows.append(
            {"relation": rid, "label": rel.label, "type": rel.type, "templates": len(rel.templates),
             "causal_templates": sum(causal_usable(t) for t in rel.templates), "facts": n_facts,
             "prompts": n_facts * len(rel.templates)}
        )
    return pd.DataFrame(rows)


# -- checking what callers pass --------------------------------------------------------------------

FACT_FIELDS = ("fact_id", "relation", "subject", "object")


def _relation_id_list(ids: Iterable[str] | None, caller: str) -> list[str] | None:
    """``ids`` as a list of relation ids; a str (``"P36"``) or anything but str items is a TypeError."""
    if ids is None:
        return None
    if isinstance(ids, str):
        raise TypeError(f"{caller}: expected a list of relation ids such as [{ids!r}], got the str {ids!r}")
    if isinstance(ids, Relation) or isinstance(ids, dict):
        raise TypeError(f"{caller}: expected a list of relation ids such as ['P19', 'P36'], got a {type(ids).__name__}")
    ids = list(ids)
    wrong = [i for i in ids if not isinstance(i, str)]
    if wrong:
        raise TypeError(f"{caller}: expected relation ids (str such as 'P36'), got {type(wrong[0]).__name__} {wrong[0]!r}")
    return ids


def as_facts(facts: Any) -> list[dict]:
    """Facts as a list of dicts with ``fact_id``, ``relation``, ``subject``, ``object``: from a list of
    dicts, a ``datasets.Dataset`` (``load_facts``) or a pandas DataFrame with those columns."""
    import pandas as pd

    if isinstance(facts, pd.DataFrame):
        facts = facts.to_dict("records")
    if isinstance(facts, (str, bytes)) or (isinstance(facts, dict) and "fact_id" in facts):
        hint = "; wrap a single fact in a list" if isinstance(facts, dict) else ""
        raise TypeError(f"expected facts: a list of dicts with {', '.join(FACT_FIELDS)} (or load_facts' Dataset), "
                        f"got a {type(facts).__name__}{hint}")
    try:
        facts = list(facts)
    except TypeError:
        raise TypeError(f"expected facts: a list of dicts with {', '.join(FACT_FIELDS)}, got a {type(facts).__name__}") from None
    for i, fact in enumerate(facts):
        if not hasattr(fact, "keys"):
            raise TypeError(f"fact {i}: expected a dict with {', '.join(FACT_FIELDS)}, got {type(fact).__name__} {fact!r:.60}")
        missing = [k for k in FACT_FIELDS if k not in fact]
        if missing:
            raise ValueError(f"fact {i}: missing {', '.join(missing)} (a fact needs {', '.join(FACT_FIELDS)})")
    return facts


def as_relations(relations: Any) -> dict[str, Relation]:
    """Relations as ``{id: Relation}`` (what ``load_relations`` returns); a list of ``Relation`` is accepted."""
    if isinstance(relations, Relation):
        relations = [relations]
    if isinstance(relations, (list, tuple)) and all(isinstance(r, Relation) for r in relations):
        relations = {r.id: r for r in relations}
    if not hasattr(relations, "items") or not all(isinstance(r, Relation) for r in relations.values()):
        raise TypeError(f"expected relations: {{id: Relation}} as load_relations returns, got a {type(relations).__name__}"
                        + (f" {relations!r}" if isinstance(relations, str) else ""))
    return dict(relations)
