"""Event-level targets from the labels table.

An event is positive when it has a positive ``event`` label, or its ``order_id`` has a positive
``order`` label (a chargeback on an order marks its order, payment and shipment events). Every other
event is a negative. ``known_before`` keeps only labels whose ``labeled_at`` is before that moment, so
training never uses labels that were not yet known at the end of the training window.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import polars as pl

from shopguard.store import EventStore


def event_targets(
    store: EventStore,
    event_ids: Iterable[str] | None = None,
    *,
    known_before: datetime | None = None,
) -> pl.DataFrame:
    """``event_id, label, scenario`` for the given events (all events, in time order, when ``None``).

    ``label`` is 1 or 0 (Int32); ``scenario`` is the scenario of the earliest known positive label
    (the event's own label first), null for negatives. Given ``event_ids`` keep their order; ids not in
    the store come back as negatives.
    """
    lab_cond = "label = 1" + (" AND labeled_at < ?" if known_before is not None else "")
    lab_params = [known_before] if known_before is not None else []
    sql = f"""
        WITH el AS (SELECT entity_id, arg_min(scenario, labeled_at) AS scenario, min(labeled_at) AS k
                    FROM labels WHERE entity_kind = 'event' AND {lab_cond} GROUP BY 1),
             ol AS (SELECT entity_id, arg_min(scenario, labeled_at) AS scenario, min(labeled_at) AS k
                    FROM labels WHERE entity_kind = 'order' AND {lab_cond} GROUP BY 1)
        SELECT e.event_id,
               CAST(el.k IS NOT NULL OR ol.k IS NOT NULL AS INTEGER) AS label,
               coalesce(nullif(el.scenario, ''), nullif(ol.scenario, '')) AS scenario
        FROM events e LEFT JOIN el ON el.entity_id = e.event_id LEFT JOIN ol ON ol.entity_id = e.order_id
    """
    if event_ids is None:
        df = store.query(sql + " ORDER BY e.ts, e.event_id", lab_params + lab_params)
    else:
        ids = pl.DataFrame({"event_id": pl.Series(list(event_ids), dtype=pl.Utf8)})
        if ids.height == 0:
            return pl.DataFrame(schema={"event_id": pl.Utf8, "label": pl.Int32, "scenario": pl.Utf8})
        # Join in Polars: passing a long id list as SQL parameters would be slow.
        all_targets = store.query(sql, lab_params + lab_params)
        df = ids.join(all_targets, on="event_id", how="left", maintain_order="left")
    return df.select(
        pl.col("event_id").cast(pl.Utf8),
        pl.col("label").fill_null(0).cast(pl.Int32),
        pl.col("scenario").cast(pl.Utf8),
    )
