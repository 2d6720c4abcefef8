"""Work saved inside a shard that takes longer than a session.

A shard is the store's unit of resumption: a run killed mid-shard recomputes that shard. Most shards
take minutes; the official erase measures every fact of each erased relation, and one shard of a 270M
model on one CPU core takes hours. ``PartialShard`` keeps such a shard's finished units (the erase:
one erased relation) as Parquet files beside the store's tables, ``<store>/partial/<shard>/<unit>.<table>.parquet``,
written atomically as each unit finishes. They are committed like shards, so the next session's run
(same settings, so the same store directory) starts from them; ``clear`` removes them once the shard is
written. Nothing here is in the shard's key: a unit is reused only by the store that wrote it.
"""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import pandas as pd

from .store import write_atomic

PARTIAL = "partial"


@dataclass(frozen=True)
class PartialShard:
    """The finished units of one unfinished shard of a store."""

    dir: Path

    @classmethod
    def of(cls, store_dir: Path, shard: str) -> "PartialShard":
        return cls(Path(store_dir) / PARTIAL / shard)

    def load(self) -> dict[str, dict[str, pd.DataFrame]]:
        """{unit: {table: frame}} of every unit saved so far (empty when none)."""
        units: dict[str, dict[str, pd.DataFrame]] = {}
        for path in sorted(self.dir.glob("*.parquet")) if self.dir.is_dir() else ():
            unit, table = path.name[: -len(".parquet")].rsplit(".", 1)
            units.setdefault(unit, {})[table] = pd.read_parquet(path)
        return units

    def save(self, unit: str, tables: Mapping[str, pd.DataFrame]) -> None:
        """Write one finished unit's tables, each file atomically, then a ``done`` marker: a unit killed
        while being saved has no marker and ``finished`` leaves it out."""
        if "." in unit or "/" in unit:
            raise ValueError(f"unit names may not hold '.' or '/': {unit!r}")
        for table, frame in [*tables.items(), ("done", pd.DataFrame({"unit": [unit]}))]:
            buffer = io.BytesIO()
            frame.to_parquet(buffer, index=False)
            write_atomic(self.dir / f"{unit}.{table}.parquet", buffer.getvalue())

    def finished(self) -> dict[str, dict[str, pd.DataFrame]]:
        """``load`` without the units whose ``done`` marker is missing (killed while saving), marker removed."""
        return {u: {t: f for t, f in tables.items() if t != "done"} for u, tables in self.load().items() if "done" in tables}

    def clear(self) -> None:
        """Remove the shard's saved units (and the ``partial`` folder once empty)."""
        shutil.rmtree(self.dir, ignore_errors=True)
        parent = self.dir.parent
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()


def saved_units(store_dir: Path) -> dict[str, list[str]]:
    """{shard: its finished units} of every unfinished shard of a store with saved units (``kn info``)."""
    root = Path(store_dir) / PARTIAL
    if not root.is_dir():
        return {}
    shards = {d.name: sorted(PartialShard(d).finished()) for d in sorted(root.iterdir()) if d.is_dir()}
    return {shard: units for shard, units in shards.items() if units}
