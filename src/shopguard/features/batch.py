"""Batch feature engine: runs ``FeatureDef``s over the store with DuckDB window functions.

One SQL query per entity computes that entity's window and history aggregates with
``RANGE BETWEEN INTERVAL w PRECEDING AND INTERVAL 1 MICROSECOND PRECEDING`` frames: the store keeps
microsecond timestamps, so the frame ends just before the current ``ts`` and events at the same ``ts``
(ties) never count. Merchant risk with label delay is a range join against the (rare) positive events
whose label was known before the event. The all-history smoothed fraud rate needs no join: a labelled
event counts from ``max(ts, labeled_at)`` on, so one running sum over the events and their label times
gives it. An ``"attr:<key>"`` entity is partitioned by ``json_extract_string(attrs, '$."<key>"')``.
Everything is then joined on ``event_id`` in Polars.

``feature_set(store)`` adds generated definitions for the keys the log carries (``generated_definitions``):
per key a smoothed fraud rate, event counts, the user's share and accounts per key.

Raw sums and counts come out of SQL and are finished by the same formulas as the online engine
(``finish_stats``), so both engines agree to rounding.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import polars as pl

from shopguard.errors import DataError
from shopguard.events.schema import EVENT_TYPES, to_utc_naive
from shopguard.features.definitions import (
    ATTR_ENTITY_PREFIX,
    KEY_COLUMNS,
    LABEL_LIKE_KEYS,
    AttrFeature,
    FeatureDef,
    FeatureSet,
    as_feature_set,
)
from shopguard.store import EventStore

#: A standard deviation this small (relative to the mean) is treated as zero: z-scores are missing.
STD_EPS = 1e-9


class FeatureColumns(NamedTuple):
    """Which columns of a feature frame are features, and which of them are categorical."""

    features: list[str]
    numeric: list[str]
    categorical: list[str]


def feature_columns(frame: pl.DataFrame) -> FeatureColumns:
    """Split a feature frame's columns: keys (``event_id, ts, type, user_id``) out, categoricals flagged."""
    feats = [c for c in frame.columns if c not in KEY_COLUMNS]
    cats = [c for c in feats if frame.schema[c] in (pl.Categorical, pl.Utf8) or isinstance(frame.schema[c], pl.Enum)]
    return FeatureColumns(feats, [c for c in feats if c not in cats], cats)


# -- shared numeric finishing (same formulas as the online engine) --------------------------------------
def std_from_sums(n: float, s: float, s2: float) -> float | None:
    """Population std from count, sum and sum of squares; ``None`` below two values."""
    if n < 2:
        return None
    var = (s2 - s * s / n) / n
    return var**0.5 if var > 0 else 0.0


def finish_stats(aggregate: str, n: float, s: float, s2: float, current: float | None) -> float | None:
    """Turn (count, sum, sum of squares) of earlier values into one feature value."""
    if aggregate == "sum":
        return s
    if n == 0:
        return None
    mean = s / n
    if aggregate == "mean":
        return mean
    if aggregate == "std":
        return std_from_sums(n, s, s2)
    if current is None:
        return None
    if aggregate == "deviation":
        return current - mean
    if aggregate == "ratio_to_mean":
        return current / mean if mean != 0 else None
    if aggregate == "zscore":
        std = std_from_sums(n, s, s2)
        if std is None or std <= STD_EPS * max(1.0, abs(mean)):
            return None
        return (current - mean) / std
    raise ValueError(aggregate)


def _finish_expr(aggregate: str, n: pl.Expr, s: pl.Expr, s2: pl.Expr, cur: pl.Expr) -> pl.Expr:
    """The vectorised twin of ``finish_stats``."""
    if aggregate == "sum":
        return s
    mean = pl.when(n > 0).then(s / n)
    if aggregate == "mean":
        return mean
    var = (s2 - s * s / n) / n
    std = pl.when(n >= 2).then(pl.when(var > 0).then(var.sqrt()).otherwise(0.0))
    if aggregate == "std":
        return std
    if aggregate == "deviation":
        return cur - mean
    if aggregate == "ratio_to_mean":
        return pl.when(mean != 0).then(cur / mean)
    if aggregate == "zscore":
        ok = std > STD_EPS * pl.max_horizontal(pl.lit(1.0), mean.abs())
        return pl.when(ok).then((cur - mean) / std)
    raise ValueError(aggregate)


# -- SQL building blocks ---------------------------------------------------------------------------------
def _lit(v: Any) -> str:
    return "'" + str(v).replace("'", "''") + "'"


def _filter_sql(d: FeatureDef) -> str | None:
    parts = []
    if d.types is not None:
        parts.append(f"type IN ({', '.join(_lit(t) for t in d.types)})")
    for col, allowed in d.where:
        parts.append(f"{col} IN ({', '.join(_lit(v) for v in allowed)})")
    return " AND ".join(parts) if parts else None


def _agg(fn: str, d: FeatureDef, frame: str) -> str:
    cond = _filter_sql(d)
    return f"{fn}{f' FILTER (WHERE {cond})' if cond else ''} OVER {frame}"


def _frame(partition: str, window_us: int | None, delay_us: int = 0) -> str:
    end = f"INTERVAL '{delay_us + 1} microseconds' PRECEDING"
    start = "UNBOUNDED PRECEDING" if window_us is None else f"INTERVAL '{window_us + delay_us} microseconds' PRECEDING"
    return f"(PARTITION BY {partition} ORDER BY ts RANGE BETWEEN {start} AND {end})"


def _json_path(key: str) -> str:
    return _lit('$."' + key + '"')


def _entity_sql(entity: str) -> str:
    """The SQL of an entity: its column, or the text of an ``"attr:<key>"`` in ``attrs``."""
    if entity.startswith(ATTR_ENTITY_PREFIX):
        return f"json_extract_string(attrs, {_json_path(entity[len(ATTR_ENTITY_PREFIX):])})"
    return entity


def _attr_sql(a: AttrFeature) -> str:
    raw = f"json_extract_string(attrs, {_json_path(a.key)})"
    if a.kind == "numeric":
        return (f"CASE {raw} WHEN 'true' THEN 1.0 WHEN 'false' THEN 0.0 "
                f"ELSE CASE WHEN isfinite(TRY_CAST({raw} AS DOUBLE)) THEN TRY_CAST({raw} AS DOUBLE) END END")
    if a.kind == "timestamp":
        return f"date_diff('microsecond', timezone('UTC', TRY_CAST({raw} AS TIMESTAMPTZ)), ts) / 1e6"
    return raw


def _current_sql(d: FeatureDef) -> str:
    x = d.field
    match d.aggregate:
        case "value":
            return f"CAST({x} AS DOUBLE)"
        case "category":
            return f"CAST({x} AS VARCHAR)"
        case "hour":
            return "CAST(hour(ts) AS DOUBLE)"
        case "weekday":
            return "CAST(isodow(ts) - 1 AS DOUBLE)"
        case "length":
            return f"CAST(length({x}) AS DOUBLE)"
        case "seconds_between":
            return f"date_diff('microsecond', {x}, {d.other}) / 1e6"
        case "field_ratio":
            return f"CASE WHEN {d.other} <> 0 THEN CAST({x} AS DOUBLE) / {d.other} END"
    raise ValueError(d.aggregate)


# -- attrs discovery -------------------------------------------------------------------------------------
_NUMERIC_JSON = {"BIGINT", "UBIGINT", "DOUBLE", "BOOLEAN", "INTEGER", "UINTEGER"}


def discover_attrs(store: EventStore, *, max_keys: int = 50, until: datetime | None = None) -> tuple[AttrFeature, ...]:
    """Find the keys a team's log brings in ``attrs`` and how to use each as a feature.

    Numbers and booleans → numeric; text that always parses as a timestamp → seconds before the
    event; other text → categorical; objects and arrays are skipped, as are label-like keys
    (``LABEL_LIKE_KEYS``). Keys are sorted, so the same data always gives the same feature set.
    """
    where, params = _attrs_where(until)
    by_key = _attr_types(store, until)
    out: list[AttrFeature] = []
    taken: set[str] = set(KEY_COLUMNS)
    for key in sorted(by_key):
        types = by_key[key]
        if LABEL_LIKE_KEYS.search(key) or types & {"OBJECT", "ARRAY"}:
            continue
        if types <= _NUMERIC_JSON:
            kind = "numeric"
        elif types == {"VARCHAR"}:
            kind = _text_kind(store, key, where, params)
        else:
            kind = "categorical"
        feat = AttrFeature(key, kind)
        if feat.name in taken:
            continue
        taken.add(feat.name)
        out.append(feat)
        if len(out) >= max_keys:
            break
    return tuple(out)


def _attrs_where(until: datetime | None) -> tuple[str, list[Any]]:
    return "attrs IS NOT NULL" + (" AND ts < ?" if until is not None else ""), [until] if until is not None else []


def _attr_types(store: EventStore, until: datetime | None) -> dict[str, set[str]]:
    """The JSON types each attrs key takes (``NULL`` left out), keys sorted."""
    where, params = _attrs_where(until)
    kinds = store.query(
        f"SELECT k, json_type(attrs, '$.\"' || k || '\"') AS t, count(*) AS n "
        f"FROM (SELECT attrs, unnest(json_keys(attrs)) AS k FROM events WHERE {where}) "
        "WHERE strpos(k, '\"') = 0 GROUP BY 1, 2 ORDER BY 1, 2",
        params,
    )
    by_key: dict[str, set[str]] = {}
    for k, t, _n in kinds.iter_rows():
        if t is not None and t != "NULL":
            by_key.setdefault(k, set()).add(t)
    return by_key


def _text_kind(store: EventStore, key: str, where: str, params: list[Any]) -> str:
    """Text values that all parse as numbers are numeric, as timestamps are timestamps; else categorical."""
    raw = f"json_extract_string(attrs, {_json_path(key)})"
    row = store.query(
        f"SELECT count(*) AS n, count(TRY_CAST(v AS DOUBLE)) AS num, count(TRY_CAST(v AS TIMESTAMPTZ)) AS tsn "
        f"FROM (SELECT {raw} AS v FROM events WHERE {where} AND {raw} IS NOT NULL ORDER BY ts, event_id LIMIT 2000)",
        params,
    ).row(0)
    n, num, tsn = row
    if n and num == n:
        return "numeric"
    if n and tsn == n:
        return "timestamp"
    return "categorical"


def feature_set(store: EventStore | None = None, definitions: Sequence[FeatureDef] | FeatureSet | None = None,
                *, until: datetime | None = None, rings: bool | None = None,
                generated: bool | None = None) -> FeatureSet:
    """The feature set to train with: the definitions, the generated key features and the attrs keys.

    ``generated`` adds ``generated_definitions(store, until=until)``: risk, counts, user share and
    accounts per key for every entity key the log carries (columns and attrs), and low-cardinality ids
    as categoricals. ``None`` adds them to the default definitions (``definitions=None``) unless
    ``SHOPGUARD_GENERATED_FEATURES`` is ``0`` / ``false``; a list of definitions passed in is kept as it is.
    ``rings=False`` leaves out the ring (account-graph) features, whose batch pass is a Python replay of
    the whole store. ``None`` keeps them unless ``SHOPGUARD_RING_FEATURES`` is ``0`` / ``false``, or the
    store's events (before ``until``) carry nothing that links accounts (no device, IP, address, card or
    item, e.g. a card-payment log): there every ring feature would be a constant. A ``FeatureSet``
    passed in is returned as it is (a model's pinned set).
    """
    if isinstance(definitions, FeatureSet):
        return definitions
    if generated is None:
        generated = definitions is None and _env_on("SHOPGUARD_GENERATED_FEATURES")
    fs = as_feature_set(definitions)
    attrs = discover_attrs(store, until=until) if store is not None else ()
    defs = fs.definitions
    if generated and store is not None:
        defs = defs + generated_definitions(store, until=until, taken=[*defs, *attrs])
    out = FeatureSet(defs, attrs)
    if rings is None and out.graph_definitions:
        rings = _env_on("SHOPGUARD_RING_FEATURES")
        if rings and store is not None:
            rings = _has_links(store, until)
    return out if rings is not False else out.without_graph()


def _env_on(name: str) -> bool:
    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "no", "off")


# -- generated features for the keys a log carries -------------------------------------------------------
#: Event columns that can key generated features: the word used in feature names and in reason texts.
KEY_COLUMN_WORDS: dict[str, tuple[str, str]] = {
    "user_id": ("user", "this account"),
    "merchant_id": ("merchant", "this merchant"),
    "item_id": ("item", "this item"),
    "category": ("category", "this category"),
    "device_id": ("device", "this device"),
    "ip": ("ip", "this IP"),
    "payment_instrument": ("card", "this card"),
}
#: Keys whose distinct accounts are counted (accounts per device, per IP, per card); attrs keys too.
ACCOUNT_KEYS: tuple[str, ...] = ("device_id", "ip", "payment_instrument")
#: Id columns that also become native categoricals when they have few distinct values.
CATEGORICAL_ID_COLUMNS: dict[str, tuple[str, str]] = {"merchant_id": ("merchant", "at merchant {value}"),
                                                      "item_id": ("item", "item {value}")}
#: Guards against column explosion and useless keys.
MAX_GENERATED_KEYS = 12
ATTR_KEY_DISTINCT = (2, 50_000)
MAX_CATEGORICAL_DISTINCT = 1_000
#: Weight of the prior in the smoothed fraud rate, in events.
RISK_SMOOTHING = 10.0
_WINDOW_WORDS = {"10m": "10 min", "1h": "1 h", "1d": "24 h"}
_DAY = timedelta(days=1)


@dataclass(frozen=True)
class EntityKey:
    """A key the log carries: an event column or ``"attr:<key>"``, its coverage and distinct values."""

    entity: str
    events: int
    distinct: int

    @property
    def attr_key(self) -> str | None:
        return self.entity[len(ATTR_ENTITY_PREFIX):] if self.entity.startswith(ATTR_ENTITY_PREFIX) else None

    @property
    def slug(self) -> str:
        key = self.attr_key
        return AttrFeature(key, "categorical").name if key is not None else KEY_COLUMN_WORDS[self.entity][0]

    @property
    def words(self) -> str:
        key = self.attr_key
        if key is None:
            return KEY_COLUMN_WORDS[self.entity][1]
        return "this " + key.replace("{", "{{").replace("}", "}}")


def entity_keys(store: EventStore, *, until: datetime | None = None,
                max_keys: int = MAX_GENERATED_KEYS) -> tuple[list[EntityKey], dict[str, Any]]:
    """The keys to generate features for, most covered first (at most ``max_keys``), and the log's stats.

    Columns of ``KEY_COLUMN_WORDS`` with at least two distinct values before ``until``; attrs keys whose
    values are text (not timestamps, not decimal numbers) or integers, with 2..50,000 distinct values and
    a name that does not look like a label (``LABEL_LIKE_KEYS``). Ties in coverage go by name, so the same
    data always gives the same keys.
    """
    cond, params = ("ts < ?", [until]) if until is not None else ("1 = 1", [])
    cols = list(KEY_COLUMN_WORDS)
    stats = store.query(
        "SELECT count(*) AS n, min(ts) AS t0, max(ts) AS t1, "
        + ", ".join(f"count({c}) AS n_{i}, count(DISTINCT {c}) AS d_{i}" for i, c in enumerate(cols))
        + f" FROM events WHERE {cond}", params).row(0, named=True)
    keys = [EntityKey(c, stats[f"n_{i}"], stats[f"d_{i}"]) for i, c in enumerate(cols) if stats[f"d_{i}"] >= 2]
    candidates = _attr_key_candidates(store, until)
    if candidates:
        exprs = [_entity_sql(ATTR_ENTITY_PREFIX + k) for k in candidates]
        row = store.query(
            "SELECT " + ", ".join(f"count({e}) AS n_{i}, count(DISTINCT {e}) AS d_{i}" for i, e in enumerate(exprs))
            + f" FROM events WHERE {cond} AND attrs IS NOT NULL", params).row(0, named=True)
        lo, hi = ATTR_KEY_DISTINCT
        keys += [EntityKey(ATTR_ENTITY_PREFIX + k, row[f"n_{i}"], row[f"d_{i}"]) for i, k in enumerate(candidates)
                 if lo <= row[f"d_{i}"] <= hi]
    keys.sort(key=lambda k: (-k.events, k.entity))
    return keys[:max_keys], {"events": stats["n"], "first": stats["t0"], "last": stats["t1"],
                             "columns": {k.entity: k for k in (EntityKey(c, stats[f"n_{i}"], stats[f"d_{i}"])
                                                               for i, c in enumerate(cols))}}


def _attr_key_candidates(store: EventStore, until: datetime | None) -> list[str]:
    """attrs keys that can be entities: text or integer values, not label-like, not timestamps or decimals."""
    where, params = _attrs_where(until)
    out = []
    for key, types in _attr_types(store, until).items():
        if LABEL_LIKE_KEYS.search(key) or "\\" in key or not key.isprintable():
            continue
        if types <= {"BIGINT", "UBIGINT"}:
            out.append(key)
        elif types <= {"VARCHAR", "BIGINT", "UBIGINT"}:  # text, or text mixed with integers
            raw = f"json_extract_string(attrs, {_json_path(key)})"
            n, num, tsn, ints = store.query(
                f"SELECT count(*), count(TRY_CAST(v AS DOUBLE)), count(TRY_CAST(v AS TIMESTAMPTZ)), "
                f"count(*) FILTER (WHERE regexp_full_match(v, '\\s*[-+]?[0-9]+\\s*')) "
                f"FROM (SELECT {raw} AS v FROM events WHERE {where} AND {raw} IS NOT NULL "
                "ORDER BY ts, event_id LIMIT 2000)", params).row(0)
            if n and (tsn == n or (num == n and ints < n)):
                continue  # timestamps and measurements are not keys
            out.append(key)
    return out


def label_prior(store: EventStore, *, until: datetime | None = None) -> tuple[float, str, int]:
    """The overall fraud rate known before ``until``, the denominator it uses, and the positives behind it.

    A store holds *explicit negatives* when its labelled negative events (a label 0 and no label 1 on the
    event or its order) are at least as many as its positive ones: the rate is then positives / labelled
    events (``"labelled"``). Otherwise the labels are positives only, and the rate is positives / all
    events (``"events"``). A stray analyst's label 0 on a positives-only log does not flip the mode.
    """
    ev_cond, ev_params = ("ts < ?", [until]) if until is not None else ("1 = 1", [])
    lab_cond, lab_params = ("labeled_at < ?", [until]) if until is not None else ("1 = 1", [])
    row = store.query(
        f"""WITH ev AS (SELECT event_id, order_id FROM events WHERE {ev_cond}),
        el AS (SELECT entity_id, max(CASE WHEN label = 1 THEN 1 ELSE 0 END) AS pos FROM labels
               WHERE entity_kind = 'event' AND {lab_cond} GROUP BY 1),
        ol AS (SELECT entity_id, max(CASE WHEN label = 1 THEN 1 ELSE 0 END) AS pos FROM labels
               WHERE entity_kind = 'order' AND {lab_cond} GROUP BY 1)
        SELECT count(*) AS n,
               count(*) FILTER (WHERE el.entity_id IS NOT NULL OR ol.entity_id IS NOT NULL) AS labelled,
               count(*) FILTER (WHERE el.pos = 1 OR ol.pos = 1) AS positives
        FROM ev LEFT JOIN el ON el.entity_id = ev.event_id LEFT JOIN ol ON ol.entity_id = ev.order_id""",
        ev_params + lab_params + lab_params).row(0, named=True)
    n, labelled, positives = row["n"], row["labelled"], row["positives"]
    if labelled - positives >= max(1, positives):
        return (float(f"{positives / labelled:.6g}") if labelled else 0.0), "labelled", positives
    return (float(f"{positives / n:.6g}") if n else 0.0), "events", positives


def generated_definitions(store: EventStore, *, until: datetime | None = None,
                          taken: Sequence[FeatureDef | AttrFeature] = (),
                          max_keys: int = MAX_GENERATED_KEYS) -> tuple[FeatureDef, ...]:
    """Definitions for the keys the store's events (before ``until``) carry, decided from the data.

    For each key of ``entity_keys`` (columns and attrs keys, at most ``max_keys``, most covered first):

    - ``<key>_risk``: the smoothed fraud rate of the key's earlier events (``smoothed_label_rate``, all
      history, prior and denominator from ``label_prior``; left out when no positive label is known);
    - ``<key>_events_<w>``: the key's events in 1 h and 24 h, and 10 min when the log spans under 3 days;
    - ``<key>_user_share_<w>``: the share of the key's events in 24 h (1 h for a log under a day) that
      were by this user (not for ``user_id``);
    - ``<key>_users_<w>``: distinct accounts of the key in the same window (devices, IPs, cards, attrs).

    ``merchant_id`` / ``item_id`` with at most 1,000 distinct values (each seen 10 times on average)
    become categoricals. A definition equal to one in ``taken`` (same computation) or whose name is
    taken is left out. Same data, same definitions.
    """
    keys, stats = entity_keys(store, until=until, max_keys=max_keys)
    names = {x.name for x in taken} | set(KEY_COLUMNS)
    same = {_computation(x) for x in taken if isinstance(x, FeatureDef)}
    out: list[FeatureDef] = []

    def add(d: FeatureDef) -> None:
        if d.name in names or _computation(d) in same:
            return
        names.add(d.name)
        same.add(_computation(d))
        out.append(d)

    for col, (name, describe) in CATEGORICAL_ID_COLUMNS.items():
        k = stats["columns"][col]
        if 2 <= k.distinct <= MAX_CATEGORICAL_DISTINCT and k.distinct * 10 <= k.events:
            add(FeatureDef(name, "category", field=col, describe=describe,
                           doc=f"The event's {col} as a native categorical ({k.distinct} values when the set was "
                               "built)."))
    if not keys:
        return tuple(out)
    span = (stats["last"] - stats["first"]) if stats["first"] is not None else timedelta(0)
    windows = ("10m", "1h", "1d") if span < 3 * _DAY else ("1h", "1d")
    wide = "1d" if span >= _DAY else "1h"
    prior, denominator, positives = label_prior(store, until=until)
    for k in keys:
        slug, words, e = k.slug, k.words, k.entity
        if positives:
            scope = "labelled " if denominator == "labelled" else ""
            add(FeatureDef(
                f"{slug}_risk", "smoothed_label_rate", entity=e, prior=prior, smoothing=RISK_SMOOTHING,
                denominator=denominator,
                describe=f"{{value:.1%}} of {words}'s earlier {scope}events were fraud",
                doc=(f"Fraud rate of {words}'s earlier events: positives whose label was known before the event, "
                     f"plus {RISK_SMOOTHING:g} x the prior {prior:.4g}, over the "
                     + ("earlier events labelled (either way) before the event" if denominator == "labelled"
                        else "earlier events")
                     + f" plus {RISK_SMOOTHING:g}. All history.")))
        for w in windows:
            add(FeatureDef(f"{slug}_events_{w}", "count", entity=e, window=w,
                           describe=f"{{value:.0f}} events with {words} in {_WINDOW_WORDS[w]}",
                           doc=f"Events with {words} in the last {_WINDOW_WORDS[w]}."))
        if e != "user_id":
            add(FeatureDef(f"{slug}_user_share_{wide}", "user_share", entity=e, window=wide,
                           describe=f"{{value:.0%}} of {words}'s events in {_WINDOW_WORDS[wide]} were by this account",
                           doc=f"Events of this account with {words} / all events with {words}, last "
                               f"{_WINDOW_WORDS[wide]}; missing when {words} has none or the event no user."))
        if e in ACCOUNT_KEYS or k.attr_key is not None:
            add(FeatureDef(f"{slug}_users_{wide}", "distinct", entity=e, window=wide, field="user_id",
                           describe=f"{words} seen with {{value:.0f}} accounts in {_WINDOW_WORDS[wide]}",
                           doc=f"Distinct accounts with {words} in the last {_WINDOW_WORDS[wide]}."))
    return tuple(out)


def _computation(d: FeatureDef | AttrFeature) -> str:
    """What a definition computes, without its name and texts (to leave out duplicates)."""
    if isinstance(d, AttrFeature):
        return f"attr:{d.key}:{d.kind}"
    data = d.to_dict()
    for k in ("name", "doc", "describe"):
        data.pop(k)
    return json.dumps(data, sort_keys=True)


def _has_links(store: EventStore, until: datetime | None) -> bool:
    """Does any event (before ``until``) carry a value that can link two accounts?"""
    from shopguard.features.definitions import GRAPH_LINK_FIELDS

    any_link = " OR ".join(f"{c} IS NOT NULL" for c in GRAPH_LINK_FIELDS)
    cond = f"user_id IS NOT NULL AND ({any_link})" + (" AND ts < ?" if until is not None else "")
    rows = store.query(f"SELECT EXISTS (SELECT 1 FROM events WHERE {cond}) AS x", [until] if until is not None else [])
    return bool(rows["x"][0])


# -- the engine ------------------------------------------------------------------------------------------
def compute_features(
    store: EventStore,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    types: Iterable[str] | None = None,
    definitions: Sequence[FeatureDef] | FeatureSet | None = None,
    on_step: Callable[[str], None] | None = None,
) -> pl.DataFrame:
    """Point-in-time features: one row per event with ``since <= ts < until`` (and type in ``types``).

    Columns: ``event_id, ts, type, user_id``, then one per feature in ``FeatureSet.columns`` order
    (numeric as Float64, categorical as ``pl.Categorical``). History reaches back before ``since``:
    a test period's features use the training period's events. ``definitions=None`` means the
    default definitions plus attrs discovered in the store; pass a model's pinned ``FeatureSet`` to
    reproduce its columns exactly.
    """
    since, until = _as_time(since, "since"), _as_time(until, "until")
    types = list(types) if types is not None else None
    for t in types or ():
        if t not in EVENT_TYPES:
            raise DataError(f"types: unknown event type {t!r} (allowed: {', '.join(EVENT_TYPES)})",
                            field="types", value=t)
    fs = feature_set(store, definitions, until=until)
    step = on_step or (lambda _msg: None)

    # Rows to output, with current-event and attrs features.
    out_where, out_params = ["1 = 1"], []  # type: ignore[var-annotated]
    if since is not None:
        out_where.append("ts >= ?")
        out_params.append(since)
    if until is not None:
        out_where.append("ts < ?")
        out_params.append(until)
    if types is not None:
        if not types:
            raise DataError("types is empty: name at least one event type", field="types", value=types)
        out_where.append(f"type IN ({', '.join(_lit(t) for t in types)})")
    out_cond = " AND ".join(out_where)

    current = [d for d in fs.definitions if d.kind == "current"]
    cols = [f"{_current_sql(d)} AS {d.name}" for d in current] + [f"{_attr_sql(a)} AS {a.name}" for a in fs.attrs]
    if any(a.kind == "timestamp" for a in fs.attrs):
        store.execute("SET TimeZone = 'UTC'")  # naive attrs timestamps are UTC, like the store's own
    step("current-event features")
    frame = store.query(
        f"SELECT event_id, ts, type, user_id{''.join(', ' + c for c in cols)} FROM events "
        f"WHERE {out_cond} ORDER BY ts, event_id",
        out_params,
    )
    if frame.height == 0:
        return _finish(frame, fs)

    hist_cond = "ts < ?" if until is not None else "1 = 1"
    hist_params = [until] if until is not None else []
    # Output filter applied after the windows ran over the full history.
    tail_where = " AND ".join(w for w in out_where if not w.startswith("ts < ?"))
    tail_params = [since] if since is not None else []

    finishers: list[pl.Expr] = []
    entities = sorted({d.entity for d in fs.definitions if d.kind in ("window", "history")}, key=str)
    for idx, entity in enumerate(entities):
        defs = [d for d in fs.definitions if d.entity == entity]
        ent_cond, ent_params = hist_cond, hist_params
        esql = _entity_sql(entity)
        if since is not None or types is not None:
            # Only the history of entities that occur in the output rows matters: scoring a recent day
            # then reads those entities' history, not the whole store.
            ent_cond = (f"{hist_cond} AND {esql} IN (SELECT {esql} FROM events "
                        f"WHERE {out_cond} AND {esql} IS NOT NULL)")
            ent_params = hist_params + out_params
        # Bounded windows need history back to `since - horizon` only; all-history features read it all.
        bounded = [d for d in defs if _horizon_us(d) is not None]
        groups = [("a", [d for d in defs if _horizon_us(d) is None], ent_cond, ent_params)]
        if since is not None and bounded:
            horizon = max(_horizon_us(d) or 0 for d in bounded)
            groups.append(("b", bounded, f"{ent_cond} AND ts >= ?",
                           ent_params + [since - timedelta(microseconds=horizon)]))
        else:
            groups[0] = ("a", defs, ent_cond, ent_params)
        for tag, group, cond, params in groups:
            if not group:
                continue
            step(f"{entity} windows")
            part, fin = _entity_frame(store, entity, group, cond, params, tail_where, tail_params, until,
                                      f"e{idx}{tag}")
            if part is not None:
                frame = frame.join(part, on="event_id", how="left")
            finishers.extend(fin)
    if finishers:
        frame = frame.with_columns(finishers)
    if fs.graph_definitions:
        # Ring features: a time-ordered replay through the account-link graph (features.graph), the
        # same code the online engine runs, joined like any other entity's columns.
        from shopguard.features.graph import ring_feature_frame

        step("ring features")
        part = ring_feature_frame(store, fs.graph_definitions, since=since, until=until, types=types,
                                  config=fs.graph_config())
        frame = frame.join(part, on="event_id", how="left")
    return _finish(frame, fs)


def _as_time(value: Any, name: str) -> datetime | None:
    """Accept datetimes, ISO strings or epoch seconds for since/until; naive UTC like the store."""
    if value is None:
        return None
    try:
        return to_utc_naive(value, name)
    except ValueError as exc:
        raise DataError(f"{name}: {exc}", field=name, value=value) from None


def _horizon_us(d: FeatureDef) -> int | None:
    """How far back a definition looks (window + delay), or None when it needs all history."""
    if d.aggregate in ("since_last", "since_first") or d.window_us is None:
        return None
    return d.window_us + d.delay_us


def _entity_frame(
    store: EventStore, entity: str, defs: list[FeatureDef], hist_cond: str, hist_params: list[Any],
    tail_where: str, tail_params: list[Any], until: datetime | None, tag: str = "a",
) -> tuple[pl.DataFrame | None, list[pl.Expr]]:
    """Window and history aggregates of one entity: raw SQL columns plus the Polars expressions finishing them.

    ``tag`` keeps the raw column names of this call apart from the other calls' (``__<tag>_<n>``).
    """
    selects: dict[str, str] = {}  # raw column name -> SQL; shared between features with equal inputs
    finish: list[pl.Expr] = []
    frames: list[pl.DataFrame] = []
    esql = _entity_sql(entity)

    def raw(sql: str) -> str:
        for name, existing in selects.items():
            if existing == sql:
                return name
        name = f"__{tag}_{len(selects)}"
        selects[name] = sql
        return name

    for d in defs:
        frame = _frame(esql, d.window_us, d.delay_us)
        unbounded = _frame(esql, None)
        if d.aggregate == "count":
            finish.append(pl.col(raw(_agg("count(*)", d, frame))).cast(pl.Float64).alias(d.name))
        elif d.aggregate == "distinct":
            finish.append(pl.col(raw(_agg(f"count(DISTINCT {d.field})", d, frame))).cast(pl.Float64).alias(d.name))
        elif d.aggregate in ("sum", "mean", "std", "zscore", "ratio_to_mean", "deviation"):
            x = f"CAST({d.field} AS DOUBLE)"
            n = pl.col(raw(_agg(f"count({x})", d, frame))).cast(pl.Float64)
            s = pl.col(raw(_agg(f"sum({x})", d, frame))).fill_null(0.0)
            s2 = pl.col(raw(_agg(f"sum({x} * {x})", d, frame))).fill_null(0.0)
            cur = pl.col(raw(x))
            # Features of an entity-less event stay missing; sums of nothing are 0 otherwise.
            expr = _finish_expr(d.aggregate, n, s, s2, cur)
            finish.append(pl.when(n.is_not_null()).then(expr).alias(d.name))
        elif d.aggregate in ("since_last", "since_first"):
            fn = "max(ts)" if d.aggregate == "since_last" else "min(ts)"
            col = raw(f"date_diff('microsecond', {_agg(fn, d, unbounded)}, ts) / 1e6")
            finish.append(pl.col(col).alias(d.name))
        elif d.aggregate == "is_new":
            frames.append(_is_new_frame(store, d, hist_cond, hist_params, tail_where, tail_params))
        elif d.aggregate == "label_rate":
            denom = pl.col(raw(_agg("count(*)", d, frame))).cast(pl.Float64)
            frames.append(_label_hits_frame(store, d, hist_cond, hist_params, tail_where, tail_params, until))
            hits = pl.col(f"__hits_{d.name}").fill_null(0).cast(pl.Float64)
            finish.append(pl.when(denom > 0).then(hits / denom).alias(d.name))
        elif d.aggregate == "user_share":
            den = pl.col(raw(_agg("count(*)", d, frame))).cast(pl.Float64)
            num = pl.col(raw(_agg("count(*)", d, _frame(f"{esql}, user_id", d.window_us)))).cast(pl.Float64)
            has_user = pl.col(raw("user_id IS NOT NULL"))
            finish.append(pl.when(has_user & (den > 0)).then(num / den).alias(d.name))
        elif d.aggregate == "smoothed_label_rate":
            frames.append(_smoothed_frame(store, d, hist_cond, hist_params, tail_where, tail_params, until))
            m, prior = float(d.smoothing), float(d.prior)  # type: ignore[arg-type]
            hits, n = pl.col(f"__sh_{d.name}").cast(pl.Float64), pl.col(f"__sn_{d.name}").cast(pl.Float64)
            finish.append(((hits + m * prior) / (n + m)).alias(d.name))

    part: pl.DataFrame | None = None
    if selects:
        sel = ", ".join(f"{sql} AS {name}" for name, sql in selects.items())
        part = store.query(
            f"SELECT * EXCLUDE (ts, type) FROM (SELECT event_id, ts, type, {sel} FROM events "
            f"WHERE {hist_cond} AND {esql} IS NOT NULL) WHERE {tail_where}",
            hist_params + tail_params,
        )
    for f in frames:
        part = f if part is None else part.join(f, on="event_id", how="full", coalesce=True)
    return part, finish


def _is_new_frame(store: EventStore, d: FeatureDef, hist_cond: str, hist_params: list[Any], tail_where: str,
                  tail_params: list[Any]) -> pl.DataFrame:
    """1 when no earlier matching event of the entity had the current ``field`` value in the window."""
    esql = _entity_sql(d.entity)  # type: ignore[arg-type]
    frame = _frame(f"{esql}, {d.field}", d.window_us)
    return store.query(
        f"SELECT event_id, CAST(n = 0 AS DOUBLE) AS {d.name} FROM (SELECT event_id, ts, type, "
        f"{_agg('count(*)', d, frame)} AS n FROM events "
        f"WHERE {hist_cond} AND {esql} IS NOT NULL AND {d.field} IS NOT NULL) WHERE {tail_where}",
        hist_params + tail_params,
    )


def _label_hits_frame(store: EventStore, d: FeatureDef, hist_cond: str, hist_params: list[Any], tail_where: str,
                      tail_params: list[Any], until: datetime | None) -> pl.DataFrame:
    """Per event: matching events of the entity in [t-delay-window, t-delay) with a positive label known before t.

    An event is positive when it, or its order, has a label 1; it is known from the earliest such
    ``labeled_at``. Positives are rare, so the range join stays small.
    """
    lab_cond = "label = 1" + (" AND labeled_at < ?" if until is not None else "")
    lab_params = [until] if until is not None else []
    cond = _filter_sql(d)
    e = _entity_sql(d.entity)  # type: ignore[arg-type]
    lo, hi = d.window_us + d.delay_us, d.delay_us  # type: ignore[operator]
    sql = f"""
        WITH ev AS (SELECT event_id, order_id, ts, type, {e} AS ent, {f'({cond})' if cond else 'TRUE'} AS m
                    FROM events WHERE {hist_cond} AND {e} IS NOT NULL),
        el AS (SELECT entity_id, min(labeled_at) AS k FROM labels WHERE entity_kind = 'event' AND {lab_cond} GROUP BY 1),
        ol AS (SELECT entity_id, min(labeled_at) AS k FROM labels WHERE entity_kind = 'order' AND {lab_cond} GROUP BY 1),
        pos AS (SELECT ev.ent, ev.ts, least(el.k, ol.k) AS known_at FROM ev
                LEFT JOIN el ON el.entity_id = ev.event_id LEFT JOIN ol ON ol.entity_id = ev.order_id
                WHERE ev.m AND (el.k IS NOT NULL OR ol.k IS NOT NULL)),
        tgt AS (SELECT event_id, ent, ts FROM ev WHERE {tail_where})
        SELECT tgt.event_id, count(*) AS __hits_{d.name} FROM tgt JOIN pos
          ON pos.ent = tgt.ent AND pos.ts >= tgt.ts - INTERVAL '{lo} microseconds'
         AND pos.ts < tgt.ts - INTERVAL '{hi} microseconds' AND pos.known_at < tgt.ts
        GROUP BY 1
    """
    return store.query(sql, hist_params + lab_params + lab_params + tail_params)


def _smoothed_frame(store: EventStore, d: FeatureDef, hist_cond: str, hist_params: list[Any], tail_where: str,
                    tail_params: list[Any], until: datetime | None) -> pl.DataFrame:
    """Per event: the entity's earlier positives known before t (``__sh_``) and the denominator (``__sn_``).

    A matching event counts as a hit from ``max(ts, positive labeled_at)`` on, strictly after it, so
    ties and a label known exactly at t never count; in ``labelled`` mode it counts in the denominator
    from ``max(ts, earliest labeled_at of any label)`` on, in ``events`` mode from its ``ts`` on. One
    running sum per entity over the events and those times, no range join.
    """
    lab_cond = "labeled_at < ?" if until is not None else "1 = 1"
    lab_params = [until] if until is not None else []
    cond = _filter_sql(d)
    e = _entity_sql(d.entity)  # type: ignore[arg-type]
    labelled = d.denominator == "labelled"
    lab_rows = ("UNION ALL SELECT NULL, NULL, NULL, ent, greatest(ts, kl), 1, 0, 0 FROM lab WHERE kl IS NOT NULL"
                if labelled else "")
    w = "(PARTITION BY ent ORDER BY vt RANGE BETWEEN UNBOUNDED PRECEDING AND INTERVAL '1 microseconds' PRECEDING)"
    sql = f"""
        WITH ev AS (SELECT event_id, order_id, ts, type, {e} AS ent, {f'({cond})' if cond else 'TRUE'} AS m
                    FROM events WHERE {hist_cond} AND {e} IS NOT NULL),
        el AS (SELECT entity_id, min(labeled_at) FILTER (WHERE label = 1) AS kp, min(labeled_at) AS kl
               FROM labels WHERE entity_kind = 'event' AND {lab_cond} GROUP BY 1),
        ol AS (SELECT entity_id, min(labeled_at) FILTER (WHERE label = 1) AS kp, min(labeled_at) AS kl
               FROM labels WHERE entity_kind = 'order' AND {lab_cond} GROUP BY 1),
        lab AS (SELECT ev.ent, ev.ts, least(el.kp, ol.kp) AS kp, least(el.kl, ol.kl) AS kl FROM ev
                LEFT JOIN el ON el.entity_id = ev.event_id LEFT JOIN ol ON ol.entity_id = ev.order_id
                WHERE ev.m AND (el.entity_id IS NOT NULL OR ol.entity_id IS NOT NULL)),
        s AS (SELECT event_id, ts, type, ent, ts AS vt, {'0' if labelled else 'CAST(m AS INTEGER)'} AS c,
                     0 AS p, 1 AS tgt FROM ev
              UNION ALL SELECT NULL, NULL, NULL, ent, greatest(ts, kp), 0, 1, 0 FROM lab WHERE kp IS NOT NULL
              {lab_rows})
        SELECT event_id, hits AS __sh_{d.name}, n AS __sn_{d.name} FROM (
            SELECT event_id, ts, type, tgt, coalesce(sum(p) OVER {w}, 0) AS hits, coalesce(sum(c) OVER {w}, 0) AS n
            FROM s)
        WHERE tgt = 1 AND {tail_where}
    """
    return store.query(sql, hist_params + lab_params + lab_params + tail_params)


def _finish(frame: pl.DataFrame, fs: FeatureSet) -> pl.DataFrame:
    """Derived features, column order and dtypes: numeric Float64, categorical ``pl.Categorical``."""
    derived = [d for d in fs.definitions if d.kind == "derived"]
    if derived and frame.height:
        frame = frame.with_columns(
            pl.when(pl.col(d.inputs[1]) != 0).then(pl.col(d.inputs[0]) / pl.col(d.inputs[1])).alias(d.name)
            for d in derived
        )
    exprs = [pl.col(k) for k in KEY_COLUMNS]
    for name in fs.columns:
        item = fs.get(name)
        col = pl.col(name) if name in frame.columns else pl.lit(None)
        exprs.append(col.cast(pl.Utf8).cast(pl.Categorical) if item.categorical else col.cast(pl.Float64))
        exprs[-1] = exprs[-1].alias(name)
    return frame.select(exprs)

