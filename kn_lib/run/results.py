"""Reading a stage's results back, by preset and options as the ``kn`` command takes them (for the book).

``load(model, stage, ...)`` concatenates a table over all finished shards in one call; ``manifest``
returns a results directory's record. The files themselves (layout, checksums, atomic writes, claims)
are ``kn_lib.run.store``'s and ``kn_lib.run.result_store``'s, whose names are re-exported here so that
``results.ResultStore`` and ``results.cache_key`` keep working.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .registry import settings_for, stage_registry
from .result_store import ResultStore, ShardCheck, stores  # noqa: F401  (re-exported)
from .store import (  # noqa: F401  (re-exported)
    MANIFEST, CorruptShard, CorruptShardWarning, DamagedManifest, DamagedManifestWarning, ResultsNotFound, cache_key, concat,
    default_root, safe_name, sha256_file, write_parquet_atomic,
)

# stages whose shards may hold a larger sample than asked: loading by settings keeps the asked facts only
CUT_TO_SAMPLE = ("attribute", "refine")


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
        settings = settings_for(model=model, preset=preset, root=root, **overrides)
        spec = stage_registry()[stage]
        store = ResultStore(root, model, stage, cache_key(spec.key_settings(settings)))
        if not store.exists():
            raise ResultsNotFound(f"no {stage} results for {model} with these settings at {store.dir}; run `kn {stage}` first")
        if spec.uses_sample and stage in CUT_TO_SAMPLE:
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
        spec = stage_registry().get(stage)
        table = spec.tables[0] if spec else store.tables()[0]
    frame = store.read(table, verify=verify)
    # attribute and refine shards may hold a larger sample than asked; an experiment's key fixes its sample,
    # and its rows may be about facts and relations outside it on purpose (erase measures every fact of the
    # erased relation and a sample of every other relation's facts, whichever relations the run analysed)
    if stage in CUT_TO_SAMPLE:
        if fact_ids is not None and "fact_id" in frame.columns:
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
