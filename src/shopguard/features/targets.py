"""Event-level targets from the labels table: positive, negative, or unlabelled.

An event is positive when it has a positive ``event`` label, or its ``order_id`` has a positive
``order`` label (a chargeback on an order marks its order, payment and shipment events). When the
store holds no event or order labels at all but labels users, a user's label lands on the user's
events (a log that labels accounts, not payments).

What an event *without* a label row is depends on the log (``UnlabeledRule``):

- ``negative``: legitimate. The usual chargeback feed lists frauds only, so silence means "fine".
- ``ignore``: unlabelled. A log that also lists explicit negatives (``label = 0``: "reviewed, fine")
  says nothing about the rest; those events were never reviewed and may well be fraud. They stay in
  the store and in every feature's history, but are neither training targets nor evaluation rows.
- ``auto`` (the default) picks ``ignore`` when the store holds explicit negative labels of the kind
  that labels events, else ``negative``.

``known_before`` keeps only labels whose ``labeled_at`` is before that moment, so training never uses
labels that were not yet known at the end of the training window (a label not known yet is no label).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import polars as pl

from shopguard.errors import ValidationFailed
from shopguard.store import EventStore

UnlabeledRule = Literal["auto", "negative", "ignore"]
UNLABELED_RULES: tuple[str, ...] = ("auto", "negative", "ignore")

_SCHEMA = {"event_id": pl.Utf8, "label": pl.Int32, "labeled": pl.Boolean, "scenario": pl.Utf8}


@dataclass(frozen=True)
class LabelRule:
    """The rule in force for a store: what unlabelled events are, which entity carries labels, and why."""

    unlabeled: Literal["negative", "ignore"]
    source: Literal["event", "user"]
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"unlabeled": self.unlabeled, "source": self.source, "reason": self.reason}


def label_rule(store: EventStore, unlabeled: str = "auto") -> LabelRule:
    """Resolve ``unlabeled`` (auto / negative / ignore) for this store, with the reason in words."""
    if unlabeled not in UNLABELED_RULES:
        raise ValidationFailed(f"unlabeled must be one of {', '.join(UNLABELED_RULES)}", field="unlabeled",
                               value=unlabeled)
    counts = store.query(
        "SELECT entity_kind, count(*) FILTER (WHERE label = 1) AS pos, count(*) FILTER (WHERE label = 0) AS neg "
        "FROM labels GROUP BY 1"
    )
    by_kind = {r["entity_kind"]: (int(r["pos"]), int(r["neg"])) for r in counts.iter_rows(named=True)}
    event_kinds = [k for k in ("event", "order") if k in by_kind]
    source: Literal["event", "user"] = "event" if event_kinds or "user" not in by_kind else "user"
    kinds = event_kinds if source == "event" else ["user"]
    negatives = sum(by_kind[k][1] for k in kinds)
    where = "/".join(kinds) or "event"
    if unlabeled != "auto":
        return LabelRule(unlabeled, source, f"unlabeled={unlabeled} was asked for")  # type: ignore[arg-type]
    declared = store.setting("unlabeled")
    if declared in ("negative", "ignore"):
        return LabelRule(declared, source, f"the source mapping says unlabeled: {declared}")  # type: ignore[arg-type]
    if negatives:
        return LabelRule("ignore", source, f"the store holds {negatives:,} explicit negative {where} labels "
                                           "(label 0), so events without a label row are unlabelled, not legitimate")
    return LabelRule("negative", source, f"the store holds positive {where} labels only, so events without a "
                                         "label row count as legitimate")


def event_targets(
    store: EventStore,
    event_ids: Iterable[str] | None = None,
    *,
    known_before: datetime | None = None,
    unlabeled: str | LabelRule = "auto",
    with_times: bool = False,
) -> pl.DataFrame:
    """``event_id, label, labeled, scenario`` for the given events (all events, in time order, when ``None``).

    ``label`` is 1 or 0 (Int32; 0 also for unlabelled events); ``labeled`` says whether the label is
    real: always true under the ``negative`` rule, true only for events with a label row (known before
    ``known_before``) under ``ignore``. Callers that train or evaluate keep ``labeled`` rows only.
    ``scenario`` is the scenario of the earliest known positive label (the event's own label first),
    null for negatives. ``with_times`` adds ``ts`` and ``known_at`` (when the label became known; null
    for events without a label row). Given ``event_ids`` keep their order; ids not in the store come back unlabelled
    (negative under the ``negative`` rule).
    """
    rule = unlabeled if isinstance(unlabeled, LabelRule) else label_rule(store, unlabeled)
    known = " AND labeled_at < ?" if known_before is not None else ""
    p = [known_before] if known_before is not None else []

    def agg(kind: str) -> str:
        # Any positive wins; `n` counts label rows of either value, so an explicit negative is "labelled".
        return (f"SELECT entity_id, arg_min(scenario, labeled_at) FILTER (WHERE label = 1) AS scenario, "
                f"max(label) AS label, count(*) AS n, min(labeled_at) FILTER (WHERE label = 1) AS kpos, "
                f"min(labeled_at) AS kany FROM labels WHERE entity_kind = '{kind}' "
                f"AND label IN (0, 1){known} GROUP BY 1")

    if rule.source == "event":
        sql = f"""
            WITH el AS ({agg('event')}), ol AS ({agg('order')})
            SELECT e.event_id, e.ts,
                   CAST(coalesce(el.label, 0) = 1 OR coalesce(ol.label, 0) = 1 AS INTEGER) AS label,
                   (el.n IS NOT NULL OR ol.n IS NOT NULL) AS has_label,
                   coalesce(nullif(el.scenario, ''), nullif(ol.scenario, '')) AS scenario,
                   CASE WHEN coalesce(el.label, 0) = 1 OR coalesce(ol.label, 0) = 1 THEN least(el.kpos, ol.kpos)
                        ELSE least(el.kany, ol.kany) END AS known_at
            FROM events e LEFT JOIN el ON el.entity_id = e.event_id LEFT JOIN ol ON ol.entity_id = e.order_id
        """
        params = p + p
    else:
        sql = f"""
            WITH ul AS ({agg('user')})
            SELECT e.event_id, e.ts, CAST(coalesce(ul.label, 0) = 1 AS INTEGER) AS label,
                   ul.n IS NOT NULL AS has_label, nullif(ul.scenario, '') AS scenario,
                   CASE WHEN ul.label = 1 THEN ul.kpos ELSE ul.kany END AS known_at
            FROM events e LEFT JOIN ul ON ul.entity_id = e.user_id
        """
        params = p
    if event_ids is None:
        df = store.query(f"SELECT * FROM ({sql}) ORDER BY ts, event_id", params)
    else:
        ids = pl.DataFrame({"event_id": pl.Series(list(event_ids), dtype=pl.Utf8)})
        if ids.height == 0:
            schema = {**_SCHEMA, **({"ts": pl.Datetime("us"), "known_at": pl.Datetime("us")} if with_times else {})}
            return pl.DataFrame(schema=schema)
        # Join in Polars: passing a long id list as SQL parameters would be slow.
        all_targets = store.query(f"SELECT * FROM ({sql})", params)
        df = ids.join(all_targets, on="event_id", how="left", maintain_order="left")
    labeled = pl.lit(True) if rule.unlabeled == "negative" else pl.col("has_label").fill_null(False)
    return df.select(
        pl.col("event_id").cast(pl.Utf8),
        pl.col("label").fill_null(0).cast(pl.Int32),
        labeled.cast(pl.Boolean).alias("labeled"),
        pl.col("scenario").cast(pl.Utf8),
        *([pl.col("ts").cast(pl.Datetime("us")), pl.col("known_at").cast(pl.Datetime("us"))] if with_times else []),
    )


def label_counts(targets: pl.DataFrame) -> dict[str, int]:
    """How many events each class holds: ``positive``, ``negative``, ``unlabeled``."""
    lab = targets["labeled"]
    y = targets["label"]
    pos = int((lab & (y == 1)).sum())
    neg = int((lab & (y == 0)).sum())
    return {"positive": pos, "negative": neg, "unlabeled": targets.height - pos - neg}
