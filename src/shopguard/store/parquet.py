"""A store's events and labels as Parquet partitioned by day: the layout the Spark engine reads.

``DIR/events/day=YYYY-MM-DD/*.parquet`` holds the events (every column of ``events.schema.COLUMNS``,
``attrs`` as JSON text), sorted by ``ts, event_id`` within a day; ``DIR/labels/day=YYYY-MM-DD/*.parquet``
holds the labels partitioned by the day of ``labeled_at``. Partitioning by day lets an engine read only
the days a backfill or a scoring run needs (a ``since`` / ``until`` prunes whole folders).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from shopguard.errors import DataError
from shopguard.events.schema import COLUMN_NAMES
from shopguard.store import EventStore

EVENTS_DIR = "events"
LABELS_DIR = "labels"
LABEL_COLUMNS: tuple[str, ...] = ("entity_kind", "entity_id", "label", "scenario", "labeled_at", "source")


def _sql_path(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def export_parquet(store: EventStore, out: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Write the store's events and labels under ``out`` (see the module doc); returns the counts written.

    ``out`` must not hold an earlier export unless ``overwrite`` (then ``events/`` and ``labels/`` are
    replaced; nothing else in ``out`` is touched).
    """
    root = Path(out)
    ev_dir, lab_dir = root / EVENTS_DIR, root / LABELS_DIR
    if not overwrite and (ev_dir.exists() or lab_dir.exists()):
        raise DataError(f"{root} already holds an export (pass overwrite / --overwrite to replace it)",
                        field="parquet", value=str(root))
    for d in (ev_dir, lab_dir):
        if d.exists():
            shutil.rmtree(d)
    root.mkdir(parents=True, exist_ok=True)
    cols = ", ".join("CAST(attrs AS VARCHAR) AS attrs" if c == "attrs" else c for c in COLUMN_NAMES)
    n_events = store.query("SELECT count(*) AS n FROM events")["n"][0]
    n_labels = store.query("SELECT count(*) AS n FROM labels")["n"][0]
    if n_events:
        store.execute(
            f"COPY (SELECT {cols}, CAST(ts AS DATE) AS day FROM events ORDER BY ts, event_id) "
            f"TO {_sql_path(ev_dir)} (FORMAT parquet, PARTITION_BY (day))")
    if n_labels:
        store.execute(
            f"COPY (SELECT {', '.join(LABEL_COLUMNS)}, CAST(labeled_at AS DATE) AS day FROM labels "
            f"ORDER BY labeled_at, entity_kind, entity_id) TO {_sql_path(lab_dir)} (FORMAT parquet, PARTITION_BY (day))")
    days = store.query("SELECT count(DISTINCT CAST(ts AS DATE)) AS n FROM events")["n"][0]
    return {"events": int(n_events), "labels": int(n_labels), "days": int(days), "path": str(root)}
