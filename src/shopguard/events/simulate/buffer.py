"""Column buffers the simulator writes into, and their conversion to the store's event and label frames.

Generators append whole vectors at once (one chunk per step, never one row at a time) using internal
integer keys for users, orders, devices and so on. ``finalize`` sorts everything by time, assigns
event ids in time order and turns keys into opaque ids through a keyed bijective hash, so nothing in an
id (creation order, block of keys) can tell a fraudster's account from anyone else's.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl

from shopguard.events.schema import COLUMNS
from shopguard.events.simulate.catalog import CARRIER_NAMES, CATEGORY_NAMES
from shopguard.events.simulate.personas import GEO_NAMES

# internal key column -> (store column, id prefix)
KEY_COLUMNS: dict[str, tuple[str, str]] = {
    "user": ("user_id", "u"),
    "session": ("session_id", "s"),
    "device": ("device_id", "d"),
    "merchant": ("merchant_id", "m"),
    "item": ("item_id", "i"),
    "order": ("order_id", "o"),
    "instrument": ("payment_instrument", "pi"),
    "address": ("address", "addr"),
}
INDEX_COLUMNS: dict[str, tuple[str, ...]] = {
    "geo": GEO_NAMES,
    "category": CATEGORY_NAMES,
    "carrier": CARRIER_NAMES,
}
FLOAT_COLUMNS = ("amount", "old_price", "new_price", "promised_t", "actual_t")
INT_COLUMNS = ("quantity", "rating")
STR_COLUMNS = (
    "currency",
    "status",
    "reason",
    "text",
    "language",
    "coupon_code",
    "email",
    "phone",
    "channel",
    "attrs",
)
# Label entity kinds whose ids come from a key column.
LABEL_KEY_KINDS = {"user": "user", "order": "order", "merchant": "merchant"}


def mix32(x: np.ndarray, salt: int) -> np.ndarray:
    """A keyed bijection of 32-bit integers (lowbias32 hash): distinct keys keep distinct codes."""
    v = (x.astype(np.uint64) + np.uint64(salt & 0xFFFFFFFF)) & np.uint64(0xFFFFFFFF)
    v ^= v >> np.uint64(16)
    v = (v * np.uint64(0x7FEB352D)) & np.uint64(0xFFFFFFFF)
    v ^= v >> np.uint64(15)
    v = (v * np.uint64(0x846CA68B)) & np.uint64(0xFFFFFFFF)
    v ^= v >> np.uint64(16)
    return v.astype(np.int64)


def _salt(tag: str, kind: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{tag}:{kind}".encode(), digest_size=4).digest(), "little")


def format_ids(keys: pl.Series, prefix: str, tag: str, kind: str) -> pl.Series:
    """Internal keys (null or -1 = none) as opaque ids like ``u0123456789``."""
    arr = keys.fill_null(-1).to_numpy()
    # Keys are dense (0 .. entities-1), far fewer than events: format each once, then gather.
    n = int(arr.max()) + 1 if arr.size else 0
    code = pl.Series(mix32(np.arange(max(n, 1)), _salt(tag, kind)))
    table = pl.concat([prefix + code.cast(pl.Utf8).str.zfill(10), pl.Series([None], dtype=pl.Utf8)])
    return table.gather(np.where(arr >= 0, arr, table.len() - 1)).alias(keys.name)


class EventBuffer:
    """Appends vectors of events; every row gets an internal ``_key`` that labels refer to."""

    def __init__(self) -> None:
        self._chunks: list[pl.DataFrame] = []
        self.size = 0

    def add(self, etype: str | np.ndarray, t: np.ndarray, **cols: Any) -> np.ndarray:
        """Append ``len(t)`` events of one or many types; returns their internal keys."""
        t = np.asarray(t, dtype=np.float64)
        n = t.size
        keys = np.arange(self.size, self.size + n, dtype=np.int64)
        if n == 0:
            return keys
        data: dict[str, pl.Series] = {
            "_key": pl.Series(keys),
            "t": pl.Series(t),
            "type": pl.Series(
                np.asarray(etype, dtype=object) if not isinstance(etype, str) else [etype] * n, dtype=pl.Utf8
            ),
        }
        for name, value in cols.items():
            if value is None:
                continue
            if name in KEY_COLUMNS or name in INDEX_COLUMNS or name == "ip":
                arr = np.broadcast_to(np.asarray(value, dtype=np.int64), (n,))
                data[name] = pl.Series(np.ascontiguousarray(arr))
            elif name in FLOAT_COLUMNS:
                data[name] = pl.Series(
                    np.ascontiguousarray(np.broadcast_to(np.asarray(value, np.float64), (n,)))
                )
            elif name in INT_COLUMNS:
                data[name] = pl.Series(
                    np.ascontiguousarray(np.broadcast_to(np.asarray(value, np.int64), (n,)))
                )
            elif name in STR_COLUMNS:
                if isinstance(value, str):
                    data[name] = pl.Series([value] * n, dtype=pl.Utf8)
                else:
                    data[name] = pl.Series(list(value), dtype=pl.Utf8)
            else:
                raise ValueError(f"unknown simulator column {name!r}")
            if data[name].len() != n:
                raise ValueError(f"column {name!r} has {data[name].len()} values for {n} events")
        self._chunks.append(pl.DataFrame(data))
        self.size += n
        return keys

    def frame(self) -> pl.DataFrame:
        return pl.concat(self._chunks, how="diagonal_relaxed")


class LabelBuffer:
    """Positive labels by internal key: ``kind`` is event, user, order or merchant."""

    def __init__(self) -> None:
        self._chunks: list[pl.DataFrame] = []

    def add(self, kind: str, keys: np.ndarray, scenario: str, labeled_t: np.ndarray | float) -> None:
        keys = np.asarray(keys, dtype=np.int64)
        if keys.size == 0:
            return
        lt = np.broadcast_to(np.asarray(labeled_t, dtype=np.float64), keys.shape)
        self._chunks.append(
            pl.DataFrame(
                {
                    "kind": [kind] * keys.size,
                    "key": keys,
                    "scenario": [scenario] * keys.size,
                    "labeled_t": np.ascontiguousarray(lt),
                }
            )
        )

    def frame(self) -> pl.DataFrame:
        if not self._chunks:
            return pl.DataFrame(
                schema={"kind": pl.Utf8, "key": pl.Int64, "scenario": pl.Utf8, "labeled_t": pl.Float64}
            )
        return pl.concat(self._chunks)


def _seconds_to_ts(col: str, start_us: int) -> pl.Expr:
    return pl.from_epoch((pl.col(col) * 1e6).round().cast(pl.Int64) + start_us, time_unit="us")


def finalize(
    events: EventBuffer, labels: LabelBuffer, *, start: datetime, horizon_s: float, tag: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Events in the store's columns sorted by time with deterministic ids, and their labels."""
    start_us = int((start - datetime(1970, 1, 1)).total_seconds() * 1_000_000)
    raw = events.frame().filter((pl.col("t") >= 0) & (pl.col("t") < horizon_s))
    raw = raw.with_columns((pl.col("t") * 1e6).round().cast(pl.Int64).alias("_us")).sort(["_us", "_key"])
    n = raw.height
    cols: dict[str, pl.Series | pl.Expr] = {}
    pos = pl.Series(np.arange(n)).cast(pl.Utf8).str.zfill(9)
    cols["event_id"] = ("e" + tag + "-" + pos).alias("event_id")
    for internal, (name, prefix) in KEY_COLUMNS.items():
        if internal in raw.columns:
            cols[name] = format_ids(raw[internal], prefix, tag, internal).alias(name)
    for internal, names in INDEX_COLUMNS.items():
        if internal in raw.columns:
            cols[internal] = (
                raw[internal]
                .replace_strict(list(range(len(names))), list(names), default=None, return_dtype=pl.Utf8)
                .alias(internal)
            )
    if "ip" in raw.columns:
        ip = raw["ip"]
        cols["ip"] = (
            pl.select(
                pl.when(ip >= 0).then(
                    pl.format(
                        "{}.{}.{}.{}", ip // 16777216 % 256, ip // 65536 % 256, ip // 256 % 256, ip % 256
                    )
                )
            )
            .to_series()
            .alias("ip")
        )
    frame = raw.with_columns(**{k: v for k, v in cols.items()})
    exprs: list[pl.Expr] = []
    for c in COLUMNS:
        if c.name == "ts":
            exprs.append(pl.from_epoch(pl.col("_us") + start_us, time_unit="us").alias("ts"))
        elif c.name in ("promised_ts", "actual_ts"):
            src = c.name.replace("_ts", "_t")
            exprs.append(
                _seconds_to_ts(src, start_us).alias(c.name)
                if src in frame.columns
                else pl.lit(None, pl.Datetime("us")).alias(c.name)
            )
        elif c.name in frame.columns:
            dtype = {"str": pl.Utf8, "float": pl.Float64, "int": pl.Int32, "json": pl.Utf8}[c.kind]
            col = pl.col(c.name)
            if c.kind == "float":
                col = pl.when(col.is_nan()).then(None).otherwise(col)
            if c.kind == "int":
                col = pl.when(col > 0).then(col)
            exprs.append(col.cast(dtype).alias(c.name))
        else:
            dtype = {
                "str": pl.Utf8,
                "float": pl.Float64,
                "int": pl.Int32,
                "json": pl.Utf8,
                "ts": pl.Datetime("us"),
            }
            exprs.append(pl.lit(None, dtype[c.kind]).alias(c.name))
    out = frame.select(exprs + [pl.col("_key")])

    lab = labels.frame()
    parts = []
    ev = lab.filter(pl.col("kind") == "event").join(
        out.select("_key", "event_id", "ts"), left_on="key", right_on="_key", how="inner"
    )
    parts.append(
        ev.select(
            pl.lit("event").alias("entity_kind"),
            pl.col("event_id").alias("entity_id"),
            "scenario",
            pl.max_horizontal(_seconds_to_ts("labeled_t", start_us), pl.col("ts")).alias("labeled_at"),
        )
    )
    for kind, internal in LABEL_KEY_KINDS.items():
        sub = lab.filter(pl.col("kind") == kind)
        if sub.height == 0:
            continue
        ids = format_ids(sub["key"], KEY_COLUMNS[internal][1], tag, internal)
        sub = sub.with_columns(ids.alias("entity_id"))
        # Only entities that act in the kept window; first time they appear bounds labeled_at.
        col = KEY_COLUMNS[internal][0]
        seen = out.group_by(col).agg(pl.col("ts").min().alias("_first")).rename({col: "entity_id"})
        sub = sub.join(seen, on="entity_id", how="inner")
        parts.append(
            sub.select(
                pl.lit(kind).alias("entity_kind"),
                "entity_id",
                "scenario",
                pl.max_horizontal(_seconds_to_ts("labeled_t", start_us), pl.col("_first")).alias(
                    "labeled_at"
                ),
            )
        )
    labels_df = (
        pl.concat(parts)
        .group_by("entity_kind", "entity_id", "scenario")
        .agg(pl.col("labeled_at").min())
        .with_columns(pl.lit(1, pl.Int32).alias("label"), pl.lit("simulator").alias("source"))
        .select("entity_kind", "entity_id", "label", "scenario", "labeled_at", "source")
        .sort("labeled_at", "entity_kind", "entity_id", "scenario")
    )
    return out.drop("_key"), labels_df
