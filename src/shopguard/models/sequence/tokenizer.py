"""Events -> field tokens for the behaviour foundation model.

Each event becomes one row of ``len(FIELDS)`` integer tokens (type, category, hashed merchant and
item, log-amount bucket, time since the user's previous event on a log scale, hour, weekday, novelty
flags of device / IP / geo / payment instrument relative to the user's *own earlier* events, status)
plus one continuous value, ``log1p(seconds since previous event)``, used for time-aware positions.

Every field shares the same reserved ids so masking, padding and unknowns work the same everywhere:
``PAD=0, MASK=1, BOS=2`` (start of a user's history), ``NONE=3`` (field missing on this event),
``UNK=4`` (a value not seen in training); real values start at ``OFFSET=5``.

The vectorised ``EventTokenizer.transform`` (training, batch scoring) and the one-record
``EventTokenizer.encode_one`` with a ``UserState`` (online scoring) give identical tokens: a test checks.
"""

from __future__ import annotations

import json
import math
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from shopguard.errors import DataError, ModelError
from shopguard.events.schema import EVENT_TYPES, to_utc_naive
from shopguard.models.sequence.config import TokenizerConfig

PAD, MASK, BOS, NONE, UNK = 0, 1, 2, 3, 4
OFFSET = 5

FIELDS: tuple[str, ...] = (
    "type", "category", "merchant", "item", "amount", "dt", "hour", "weekday",
    "device_new", "ip_new", "geo_new", "instrument_new", "status",
)
# Novelty flags: raw column -> token field.
NOVELTY: dict[str, str] = {
    "device_id": "device_new", "ip": "ip_new", "geo": "geo_new", "payment_instrument": "instrument_new",
}
# Time since the user's previous event, bucket edges in seconds (log-like scale).
DT_EDGES: tuple[float, ...] = (
    1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400,
    4 * 86400, 7 * 86400, 14 * 86400, 30 * 86400, 90 * 86400,
)
NEEDED_COLUMNS: tuple[str, ...] = (
    "event_id", "ts", "type", "user_id", "category", "merchant_id", "item_id", "amount", "status",
    *NOVELTY,
)
TOKENIZER_FILE = "tokenizer.json"


def _hash_bucket(value: str, buckets: int) -> int:
    # crc32 is stable across processes and versions (Python's hash() is salted per process).
    return OFFSET + zlib.crc32(value.encode()) % buckets


@dataclass
class TokenizedEvents:
    """Tokens of a set of events, sorted by (user, ts, event_id); ``user_start[i]`` is the row where
    event i's user begins, so a window never crosses users."""

    event_ids: np.ndarray  # (n,) object
    user_keys: np.ndarray  # (n,) object
    ts: np.ndarray  # (n,) datetime64[us]
    tokens: np.ndarray  # (n, F) int64
    dt_log: np.ndarray  # (n,) float32
    user_start: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.event_ids)


@dataclass
class UserState:
    """What online scoring remembers about one user: last event time and values seen before."""

    last_ts: datetime | None = None
    seen: dict[str, set[str]] = field(default_factory=lambda: {c: set() for c in NOVELTY})


class EventTokenizer:
    """Fits vocabularies / buckets on training events; turns events into field tokens.

    >>> import polars as pl
    >>> from datetime import datetime
    >>> ev = pl.DataFrame({"event_id": ["a", "b"], "ts": [datetime(2024, 1, 1, 10), datetime(2024, 1, 1, 11)],
    ...                    "type": ["login", "pay"], "user_id": ["u", "u"], "amount": [None, 9.5],
    ...                    "status": ["success", "failure"]})
    >>> tok = EventTokenizer(TokenizerConfig(min_count=1)).fit(ev)
    >>> out = tok.transform(ev)
    >>> out.tokens.shape, int(out.tokens[1, FIELDS.index("dt")] - OFFSET)  # one hour after the login
    ((2, 13), 10)
    """

    def __init__(self, config: TokenizerConfig | None = None) -> None:
        self.config = config or TokenizerConfig()
        self.categories_: dict[str, int] | None = None
        self.statuses_: dict[str, int] | None = None
        self.amount_edges_: list[float] | None = None

    # -- fitting -------------------------------------------------------------------------------------
    def fit(self, events: pl.DataFrame) -> EventTokenizer:
        """Learn category / status vocabularies and amount buckets from training events."""
        events = _conform(events)
        cfg = self.config
        self.categories_ = _vocab(events["category"], cfg.max_categories, cfg.min_count)
        self.statuses_ = _vocab(events["status"], 64, cfg.min_count)
        amounts = events["amount"].drop_nulls().to_numpy().astype(np.float64)
        amounts = np.log1p(np.clip(amounts, 0, None))
        if amounts.size:
            qs = np.quantile(amounts, np.linspace(0, 1, cfg.amount_buckets + 1)[1:-1])
            self.amount_edges_ = [float(x) for x in np.unique(qs)]
        else:
            self.amount_edges_ = []
        return self

    @property
    def vocab_sizes(self) -> dict[str, int]:
        """Embedding table size per field (reserved ids included)."""
        self._check()
        assert self.categories_ is not None and self.statuses_ is not None and self.amount_edges_ is not None
        cfg = self.config
        return {
            "type": OFFSET + len(EVENT_TYPES),
            "category": OFFSET + len(self.categories_),
            "merchant": OFFSET + cfg.merchant_buckets,
            "item": OFFSET + cfg.item_buckets,
            "amount": OFFSET + len(self.amount_edges_) + 1,
            "dt": OFFSET + len(DT_EDGES) + 1,
            "hour": OFFSET + 24,
            "weekday": OFFSET + 7,
            "device_new": OFFSET + 2,
            "ip_new": OFFSET + 2,
            "geo_new": OFFSET + 2,
            "instrument_new": OFFSET + 2,
            "status": OFFSET + len(self.statuses_),
        }

    def _check(self) -> None:
        if self.categories_ is None:
            raise ModelError("EventTokenizer is not fitted: call fit() first")

    # -- batch transform -----------------------------------------------------------------------------
    def transform(self, events: pl.DataFrame) -> TokenizedEvents:
        """Tokenize events (any order); the result is sorted by (user, ts, event_id)."""
        self._check()
        assert self.categories_ is not None and self.statuses_ is not None and self.amount_edges_ is not None
        df = _conform(events)
        df = df.with_columns(
            pl.coalesce(pl.col("user_id"), pl.lit("evt:") + pl.col("event_id")).alias("_user"),
        ).sort(["_user", "ts", "event_id"])
        n = df.height
        cfg = self.config
        dt_s = (
            (pl.col("ts") - pl.col("ts").shift(1).over("_user")).dt.total_microseconds() / 1e6
        ).alias("_dt")
        novelty = [
            pl.when(pl.col(raw).is_null()).then(None)
            .otherwise((pl.int_range(pl.len()).over(["_user", raw]) == 0).cast(pl.Int64))
            .alias(f"_{tok}")
            for raw, tok in NOVELTY.items()
        ]
        df = df.with_columns(dt_s, *novelty, pl.int_range(pl.len()).over("_user").alias("_pos"))
        cols: dict[str, np.ndarray] = {}
        type_ids = {t: OFFSET + i for i, t in enumerate(EVENT_TYPES)}
        cols["type"] = _map(df["type"], lambda v: type_ids.get(v, UNK))
        cats, stats = self.categories_, self.statuses_
        cols["category"] = _map(df["category"], lambda v: cats.get(v, UNK))
        cols["merchant"] = _map(df["merchant_id"], lambda v: _hash_bucket(v, cfg.merchant_buckets))
        cols["item"] = _map(df["item_id"], lambda v: _hash_bucket(v, cfg.item_buckets))
        cols["status"] = _map(df["status"], lambda v: stats.get(v, UNK))
        amt = df["amount"].to_numpy().astype(np.float64)
        amt_tok = OFFSET + np.searchsorted(np.asarray(self.amount_edges_), np.log1p(np.clip(np.nan_to_num(amt, nan=0.0), 0, None)), side="right")
        cols["amount"] = np.where(np.isnan(amt), NONE, amt_tok)
        dt = df["_dt"].to_numpy().astype(np.float64)
        first = np.isnan(dt)
        dt0 = np.clip(np.nan_to_num(dt, nan=0.0), 0, None)
        cols["dt"] = np.where(first, NONE, OFFSET + np.searchsorted(np.asarray(DT_EDGES), dt0, side="right"))
        cols["hour"] = OFFSET + df["ts"].dt.hour().to_numpy().astype(np.int64)
        cols["weekday"] = OFFSET + df["ts"].dt.weekday().to_numpy().astype(np.int64) - 1
        for tok in NOVELTY.values():
            v = df[f"_{tok}"].to_numpy()
            v = np.asarray(v, dtype=np.float64)
            cols[tok] = np.where(np.isnan(v), NONE, OFFSET + np.nan_to_num(v, nan=0.0)).astype(np.int64)
        tokens = np.stack([np.asarray(cols[f], dtype=np.int64) for f in FIELDS], axis=1)
        pos = df["_pos"].to_numpy().astype(np.int64)
        return TokenizedEvents(
            event_ids=df["event_id"].to_numpy().astype(object),
            user_keys=df["_user"].to_numpy().astype(object),
            ts=df["ts"].to_numpy(),
            tokens=tokens.reshape(n, len(FIELDS)),
            dt_log=np.log1p(dt0).astype(np.float32),
            user_start=np.arange(n, dtype=np.int64) - pos,
        )

    # -- one record (online) -------------------------------------------------------------------------
    def encode_one(self, record: dict[str, Any], state: UserState) -> tuple[np.ndarray, float]:
        """Tokens of one event given its user's state (the state is not changed: call ``state_update``)."""
        self._check()
        assert self.categories_ is not None and self.statuses_ is not None and self.amount_edges_ is not None
        cfg = self.config
        ts = _record_ts(record)
        out: dict[str, int] = {}
        etype = record.get("type")
        out["type"] = OFFSET + EVENT_TYPES.index(etype) if etype in EVENT_TYPES else (NONE if etype is None else UNK)
        out["category"] = _one(record.get("category"), lambda v: self.categories_.get(v, UNK))  # type: ignore[union-attr]
        out["merchant"] = _one(record.get("merchant_id"), lambda v: _hash_bucket(v, cfg.merchant_buckets))
        out["item"] = _one(record.get("item_id"), lambda v: _hash_bucket(v, cfg.item_buckets))
        out["status"] = _one(record.get("status"), lambda v: self.statuses_.get(v, UNK))  # type: ignore[union-attr]
        amount = record.get("amount")
        if amount is None or (isinstance(amount, float) and math.isnan(amount)):
            out["amount"] = NONE
        else:
            out["amount"] = OFFSET + int(np.searchsorted(np.asarray(self.amount_edges_), math.log1p(max(float(amount), 0.0)), side="right"))
        if state.last_ts is None:
            out["dt"], dt0 = NONE, 0.0
        else:
            dt0 = max((ts - state.last_ts).total_seconds(), 0.0)
            out["dt"] = OFFSET + int(np.searchsorted(np.asarray(DT_EDGES), dt0, side="right"))
        out["hour"] = OFFSET + ts.hour
        out["weekday"] = OFFSET + ts.weekday()
        for raw, tok in NOVELTY.items():
            v = record.get(raw)
            out[tok] = NONE if v is None else OFFSET + int(str(v) not in state.seen[raw])
        return np.array([out[f] for f in FIELDS], dtype=np.int64), float(np.float32(math.log1p(dt0)))

    @staticmethod
    def state_update(record: dict[str, Any], state: UserState) -> None:
        """Learn one event into its user's state (after it was scored)."""
        state.last_ts = _record_ts(record)
        for raw in NOVELTY:
            v = record.get(raw)
            if v is not None:
                state.seen[raw].add(str(v))

    # -- persistence ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        self._check()
        return {"config": self.config.model_dump(), "fields": list(FIELDS), "categories": self.categories_,
                "statuses": self.statuses_, "amount_edges": self.amount_edges_, "dt_edges": list(DT_EDGES)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EventTokenizer:
        if list(d.get("fields", [])) != list(FIELDS):
            raise ModelError(f"tokenizer fields {d.get('fields')} do not match this version {list(FIELDS)}",
                             field="tokenizer")
        tok = cls(TokenizerConfig(**d["config"]))
        tok.categories_ = {str(k): int(v) for k, v in d["categories"].items()}
        tok.statuses_ = {str(k): int(v) for k, v in d["statuses"].items()}
        tok.amount_edges_ = [float(x) for x in d["amount_edges"]]
        return tok

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / TOKENIZER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> EventTokenizer:
        path = Path(folder) / TOKENIZER_FILE
        if not path.exists():
            raise ModelError(f"no tokenizer at {path}", field="model", value=str(folder))
        return cls.from_dict(json.loads(path.read_text()))


def _conform(events: pl.DataFrame) -> pl.DataFrame:
    """The columns the tokenizer reads, with the right types; missing optional columns become null."""
    if not isinstance(events, pl.DataFrame):
        raise DataError(f"events must be a Polars DataFrame, got {type(events).__name__}", field="events")
    for required in ("event_id", "ts", "type"):
        if required not in events.columns:
            raise DataError(f"events need column {required!r}", field=required)
    if events["event_id"].null_count():
        raise DataError("events have a null event_id", field="event_id")
    if events["ts"].null_count():
        raise DataError("events have a null ts", field="ts")
    if not isinstance(events.schema["ts"], pl.Datetime):
        raise DataError(f"ts must be a datetime column, got {events.schema['ts']}", field="ts")
    exprs = []
    for c in NEEDED_COLUMNS:
        if c == "ts":
            exprs.append(pl.col("ts").dt.replace_time_zone(None).dt.cast_time_unit("us"))
        elif c == "amount":
            exprs.append((pl.col(c).cast(pl.Float64) if c in events.columns else pl.lit(None, pl.Float64)).alias(c))
        else:
            exprs.append((pl.col(c).cast(pl.Utf8) if c in events.columns else pl.lit(None, pl.Utf8)).alias(c))
    return events.select(exprs)


def _vocab(values: pl.Series, max_size: int, min_count: int) -> dict[str, int]:
    counts = Counter(v for v in values.drop_nulls().to_list())
    keep = [v for v, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count][:max_size]
    return {v: OFFSET + i for i, v in enumerate(keep)}


def _map(series: pl.Series, fn: Any) -> np.ndarray:
    """Map a string column through ``fn`` per distinct value; nulls become NONE."""
    uniques = series.drop_nulls().unique().to_list()
    mapping = {v: int(fn(v)) for v in uniques}
    if not mapping:
        return np.full(series.len(), NONE, dtype=np.int64)
    return series.replace_strict(mapping, default=NONE, return_dtype=pl.Int64).fill_null(NONE).to_numpy()


def _record_ts(record: dict[str, Any]) -> datetime:
    """The record's ``ts`` as naive UTC (datetimes as they are; ISO strings and epoch seconds parsed)."""
    ts = record.get("ts")
    if isinstance(ts, datetime) and ts.tzinfo is None:
        return ts
    try:
        return to_utc_naive(ts)
    except ValueError as exc:
        raise DataError(f"ts: {exc}", field="ts", value=ts) from None


def _one(value: Any, fn: Any) -> int:
    return NONE if value is None else int(fn(str(value)))
