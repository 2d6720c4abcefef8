"""Print each notebook's execution time at the end of the build (``make book`` shows it).

myst-nb records, per page, how the notebook was executed (``method``: ``cache`` when jupyter-cache
(re)ran it, or reused its stored run), when, for how long (``runtime``, seconds) and whether it
succeeded. The table is printed in the build log, and written to ``_build/execution_times.csv`` so
that a CI log or a reviewer can read the times of the last build.
"""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from pathlib import Path


def _report(app, exception) -> None:
    if exception is not None:
        return
    try:
        from myst_nb.sphinx_ import NbMetadataCollector
    except ImportError:  # pragma: no cover
        return
    rows = []
    for docname in sorted(app.env.found_docs):
        data = NbMetadataCollector.get_doc_data(app.env).get(docname, {}).get("exec_data")
        if not data:
            continue
        mtime = data.get("mtime")
        rows.append({
            "notebook": docname,
            "method": data.get("method", ""),
            "runtime_s": round(float(data.get("runtime") or 0.0), 1),
            "executed_at": datetime.fromtimestamp(mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if mtime else "",
            "succeeded": bool(data.get("succeeded")),
        })
    if not rows:
        return
    out = Path(app.outdir).parent / "execution_times.csv"
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    width = max(len(r["notebook"]) for r in rows)
    lines = [f"{'notebook':<{width}}  {'runtime':>8}  executed at (cache: time of the stored run)", "-" * (width + 56)]
    for r in rows:
        ok = "" if r["succeeded"] else "  FAILED"
        lines.append(f"{r['notebook']:<{width}}  {r['runtime_s']:>7.1f}s  {r['executed_at']}{ok}")
    total = sum(r["runtime_s"] for r in rows)
    lines.append(f"{'total':<{width}}  {total:>7.1f}s  ({out})")
    print("\nNotebook execution times\n" + "\n".join(lines) + "\n")


def setup(app):
    app.connect("build-finished", _report)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
