"""Embedded DuckDB event store: events, labels and decisions, with idempotent appends.

Appends are idempotent on ``event_id`` (events and decisions) and on ``(entity_kind, entity_id,
scenario)`` (labels): re-ingesting a file adds nothing. Each append is one transaction, so a crash
never leaves half a batch.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from shopguard.errors import DataError, ShopguardError
from shopguard.events.schema import COLUMN_NAMES, COLUMNS, to_utc_naive
from shopguard.store.migrations import MIGRATIONS

LABEL_COLUMNS = ("entity_kind", "entity_id", "label", "scenario", "labeled_at", "source")
ENTITY_KINDS = ("event", "order", "user", "merchant", "device", "ip", "payment_instrument", "item", "review")


def _arrow_schema() -> pa.Schema:
    kinds = {"str": pa.string(), "float": pa.float64(), "int": pa.int32(), "ts": pa.timestamp("us"),
             "json": pa.string()}
    return pa.schema([(c.name, kinds[c.kind]) for c in COLUMNS])


EVENT_ARROW_SCHEMA = _arrow_schema()
# Rows the decision service writes with each event (append_decided).
_SERVICE_SCHEMAS = {
    "decisions": pa.schema([("event_id", pa.string()), ("decided_at", pa.timestamp("us")), ("score", pa.float64()),
                            ("probability", pa.float64()), ("risk_level", pa.string()), ("action", pa.string()),
                            ("reasons", pa.string()), ("rule_hits", pa.string()), ("model_version", pa.string()),
                            ("latency_ms", pa.float64())]),
    "cases": pa.schema([("case_id", pa.string()), ("event_id", pa.string()), ("user_id", pa.string()),
                        ("opened_at", pa.timestamp("us")), ("status", pa.string()), ("risk_level", pa.string()),
                        ("action", pa.string()), ("score", pa.float64()), ("scenario", pa.string()),
                        ("reasons", pa.string()), ("rule_hits", pa.string())]),
}

DECISION_ARROW_SCHEMA = _SERVICE_SCHEMAS["decisions"]
CASE_ARROW_SCHEMA = _SERVICE_SCHEMAS["cases"]


class EventStore:
    """A DuckDB file holding a shop's events, labels and decisions.

    >>> store = EventStore(":memory:")
    >>> store.count_events()
    0
    """

    def __init__(self, path: str | Path = ":memory:", *, read_only: bool = False) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            _check_store_file(Path(self.path))
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.con = duckdb.connect(self.path, read_only=read_only)
        except duckdb.IOException as exc:
            raise ShopguardError(f"cannot open store {self.path}: {exc}", field="db", value=self.path) from exc
        except duckdb.Error as exc:
            raise DataError(f"db: cannot open store {self.path}: {exc}", field="db", value=self.path) from exc
        self._lock = threading.RLock()
        if not read_only:
            if self.path != ":memory:":
                restrict_store_files(Path(self.path))
            self.migrate()

    # -- lifecycle -------------------------------------------------------------------------------------
    def migrate(self) -> int:
        """Apply pending migrations; returns the schema version now in force."""
        with self._lock:
            self.con.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR, "
                "applied_at TIMESTAMP DEFAULT current_timestamp)"
            )
            done = {r[0] for r in self.con.execute("SELECT version FROM schema_migrations").fetchall()}
            for version, name, statements in MIGRATIONS:
                if version in done:
                    continue
                self.con.execute("BEGIN TRANSACTION")
                try:
                    for sql in statements:
                        self.con.execute(sql)
                    self.con.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [version, name])
                    self.con.execute("COMMIT")
                except Exception:
                    self.con.execute("ROLLBACK")
                    raise
            return self.schema_version()

    def schema_version(self) -> int:
        row = _first(self.con.execute("SELECT max(version) FROM schema_migrations"))
        return int(row[0]) if row and row[0] is not None else 0

    def close(self) -> None:
        with self._lock:
            self.con.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------------------
    def append_events(self, events: pl.DataFrame | pa.Table | Sequence[dict[str, Any]]) -> int:
        """Insert events not already present (by ``event_id``); returns how many were new."""
        table = _events_to_arrow(events)
        if table.num_rows == 0:
            return 0
        cols = ", ".join(COLUMN_NAMES)
        # DISTINCT ON drops duplicates inside the batch; ON CONFLICT those already stored.
        return self._insert_new(
            "events", table,
            f"INSERT INTO events ({cols}) SELECT DISTINCT ON (event_id) {cols} FROM _incoming ON CONFLICT DO NOTHING",
        )

    def append_labels(self, labels: pl.DataFrame | Sequence[dict[str, Any]], *, replace: bool = False) -> int:
        """Insert labels; an existing (entity_kind, entity_id, scenario) is kept unless ``replace``."""
        if isinstance(labels, pl.DataFrame):
            df = labels
        else:
            rows = [dict(r) for r in labels]
            for r in rows:  # records may mix datetimes and ISO strings
                if r.get("labeled_at") is not None:
                    r["labeled_at"] = to_utc_naive(r["labeled_at"], "labeled_at")
            df = pl.DataFrame(rows, infer_schema_length=None)
        if df.height == 0:
            return 0
        missing = {"entity_kind", "entity_id", "label", "labeled_at"} - set(df.columns)
        if missing:
            raise DataError(f"labels need columns {sorted(missing)}", field=sorted(missing)[0])
        if "scenario" not in df.columns:
            df = df.with_columns(pl.lit("").alias("scenario"))
        if "source" not in df.columns:
            df = df.with_columns(pl.lit("ingest").alias("source"))
        df = df.select(
            pl.col("entity_kind").cast(pl.Utf8),
            pl.col("entity_id").cast(pl.Utf8),
            pl.col("label").cast(pl.Int32),
            pl.col("scenario").cast(pl.Utf8).fill_null(""),
            _as_datetime(df, "labeled_at"),
            pl.col("source").cast(pl.Utf8).fill_null("ingest"),
        )
        conflict = (
            "ON CONFLICT DO UPDATE SET label = excluded.label, labeled_at = excluded.labeled_at, "
            "source = excluded.source" if replace else "ON CONFLICT DO NOTHING"
        )
        added = self._insert_new(
            "labels", df.to_arrow(),
            f"INSERT INTO labels SELECT DISTINCT ON (entity_kind, entity_id, scenario) * FROM _incoming {conflict}",
        )
        return added if not replace else df.height

    def append_decisions(self, decisions: pl.DataFrame | Sequence[dict[str, Any]]) -> int:
        """Insert decisions not already present (by ``event_id``)."""
        df = decisions if isinstance(decisions, pl.DataFrame) else pl.DataFrame(list(decisions), infer_schema_length=None)
        if df.height == 0:
            return 0
        cols = [c for c in ("event_id", "decided_at", "score", "probability", "risk_level", "action", "reasons",
                            "rule_hits", "model_version", "latency_ms") if c in df.columns]
        names = ", ".join(cols)
        return self._insert_new(
            "decisions", df.select(cols).to_arrow(),
            f"INSERT INTO decisions ({names}) SELECT DISTINCT ON (event_id) {names} FROM _incoming ON CONFLICT DO NOTHING",
        )

    def _insert_new(self, table_name: str, incoming: pa.Table, sql: str) -> int:
        """Run ``sql`` (reading the registered ``_incoming``) in one transaction; returns rows added."""
        with self._lock:
            self.con.register("_incoming", incoming)
            try:
                self.con.execute("BEGIN TRANSACTION")
                before = self._count(table_name)
                self.con.execute(sql)
                added = self._count(table_name) - before
                self.con.execute("COMMIT")
            except Exception:
                self.con.execute("ROLLBACK")
                raise
            finally:
                self.con.unregister("_incoming")
        return added

    def append_decided(
        self,
        events: pl.DataFrame | pa.Table | Sequence[dict[str, Any]],
        decisions: Sequence[dict[str, Any]],
        cases: Sequence[dict[str, Any]] = (),
    ) -> int:
        """Store events with their decisions (and any review cases) in ONE transaction (service path).

        All or nothing, so after a crash an event is never stored without the decision the caller was
        answered with. Idempotent like the other appends; returns how many events were new.
        """
        table = _events_to_arrow(events)
        if table.num_rows == 0:
            return 0
        dec_cols = ("event_id", "decided_at", "score", "probability", "risk_level", "action", "reasons",
                    "rule_hits", "model_version", "latency_ms")
        case_cols = ("case_id", "event_id", "user_id", "opened_at", "status", "risk_level", "action", "score",
                     "scenario", "reasons", "rule_hits")
        cols = ", ".join(COLUMN_NAMES)
        with self._lock:
            self.con.register("_incoming", table)
            try:
                self.con.execute("BEGIN TRANSACTION")
                before = self._count("events")
                self.con.execute(
                    f"INSERT INTO events ({cols}) SELECT DISTINCT ON (event_id) {cols} FROM _incoming "
                    "ON CONFLICT DO NOTHING"
                )
                added = self._count("events") - before
                # Arrow tables, not executemany: DuckDB inserts row-by-row parameters very slowly.
                for name, rows, names in (("decisions", decisions, dec_cols), ("cases", cases, case_cols)):
                    if not rows:
                        continue
                    tbl = pa.Table.from_pylist([{c: r.get(c) for c in names} for r in rows],
                                               schema=_SERVICE_SCHEMAS[name])
                    self.con.register("_rows", tbl)
                    try:
                        self.con.execute(
                            f"INSERT INTO {name} ({', '.join(names)}) SELECT {', '.join(names)} FROM _rows "
                            "ON CONFLICT DO NOTHING"
                        )
                    finally:
                        self.con.unregister("_rows")
                self.con.execute("COMMIT")
            except Exception:
                self.con.execute("ROLLBACK")
                raise
            finally:
                self.con.unregister("_incoming")
        return added

    def append_decided_tables(self, events: pa.Table, decisions: pa.Table, cases: pa.Table | None = None) -> None:
        """``append_decided`` for Arrow tables already in the store's schemas (``EVENT_ARROW_SCHEMA``,
        ``DECISION_ARROW_SCHEMA``, ``CASE_ARROW_SCHEMA``): the decision service's journal apply.

        One transaction, all or nothing, idempotent. Rows are normally all new (the service stores each
        event once), so plain INSERTs go first: DuckDB's ``ON CONFLICT DO NOTHING`` costs about three
        times a plain insert. If any row already exists (a journal segment applied again after a crash,
        a repeated id) the transaction is rolled back and redone with the conflict-skipping inserts.
        """
        if events.num_rows == 0:
            return
        tables = [("events", events), ("decisions", decisions)]
        if cases is not None and cases.num_rows:
            tables.append(("cases", cases))
        with self._lock:
            for skip_existing in (False, True):
                names = []
                try:
                    self.con.execute("BEGIN TRANSACTION")
                    for name, tbl in tables:
                        if tbl.num_rows == 0:
                            continue
                        view = f"_incoming_{name}"
                        self.con.register(view, tbl)
                        names.append(view)
                        cols = ", ".join(tbl.column_names)
                        if skip_existing:
                            key = "DISTINCT ON (event_id) " if name == "events" else ""
                            sql = f"INSERT INTO {name} ({cols}) SELECT {key}{cols} FROM {view} ON CONFLICT DO NOTHING"
                        else:
                            sql = f"INSERT INTO {name} ({cols}) SELECT {cols} FROM {view}"
                        self.con.execute(sql)
                    self.con.execute("COMMIT")
                    return
                except duckdb.ConstraintException:
                    self.con.execute("ROLLBACK")
                    if skip_existing:
                        raise
                except Exception:
                    self.con.execute("ROLLBACK")
                    raise
                finally:
                    for view in names:
                        self.con.unregister(view)

    # -- reading ---------------------------------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
        """Run read-only SQL against the store and return a Polars frame."""
        with self._lock:
            rel = self.con.sql(sql, params=list(params) if params else None)
            table = rel.to_arrow_table() if rel is not None else pa.table({})
        out = pl.from_arrow(table)
        assert isinstance(out, pl.DataFrame)
        return out

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        with self._lock:
            self.con.execute(sql, params or [])

    def events(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        types: Iterable[str] | None = None,
        user_ids: Iterable[str] | None = None,
        columns: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> pl.DataFrame:
        """Events in time order, optionally filtered; ``until`` is exclusive."""
        where, params = [], []  # type: ignore[var-annotated]
        if since is not None:
            where.append("ts >= ?")
            params.append(since)
        if until is not None:
            where.append("ts < ?")
            params.append(until)
        if types is not None:
            types = list(types)
            where.append(f"type IN ({', '.join('?' * len(types))})")
            params.extend(types)
        if user_ids is not None:
            ids = list(user_ids)
            where.append(f"user_id IN ({', '.join('?' * len(ids))})")
            params.extend(ids)
        cols = ", ".join(columns) if columns else ", ".join(COLUMN_NAMES)
        sql = f"SELECT {cols} FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts, event_id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self.query(sql, params)

    def labels(self, *, known_before: datetime | None = None, entity_kind: str | None = None) -> pl.DataFrame:
        """Labels, optionally only those known (``labeled_at``) before a moment."""
        where, params = [], []  # type: ignore[var-annotated]
        if known_before is not None:
            where.append("labeled_at < ?")
            params.append(known_before)
        if entity_kind is not None:
            where.append("entity_kind = ?")
            params.append(entity_kind)
        sql = "SELECT * FROM labels" + (" WHERE " + " AND ".join(where) if where else "")
        return self.query(sql + " ORDER BY labeled_at, entity_kind, entity_id", params)

    def setting(self, key: str) -> str | None:
        """A store-wide setting written by ingest (e.g. ``unlabeled`` from a mapping), or ``None``."""
        if "settings" not in self.query("SELECT table_name FROM information_schema.tables")["table_name"].to_list():
            return None  # a read-only store from before migration 3
        df = self.query("SELECT value FROM settings WHERE key = ?", [key])
        return str(df["value"][0]) if df.height else None

    def set_setting(self, key: str, value: str) -> None:
        with self._lock:
            self.con.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", [key, value])

    def decision(self, event_id: str) -> dict[str, Any] | None:
        df = self.query("SELECT * FROM decisions WHERE event_id = ?", [event_id])
        return df.row(0, named=True) if df.height else None

    def count_events(self) -> int:
        return self._count("events")

    def _count(self, table: str) -> int:
        row = _first(self.con.execute(f"SELECT count(*) FROM {table}"))
        return int(row[0]) if row else 0

    def time_range(self) -> tuple[datetime | None, datetime | None]:
        row = _first(self.con.execute("SELECT min(ts), max(ts) FROM events"))
        return (row[0], row[1]) if row else (None, None)

    def stats(self) -> dict[str, Any]:
        """Counts per event type and per labelled scenario, and the time span covered."""
        with self._lock:
            by_type = dict(self.con.execute("SELECT type, count(*) FROM events GROUP BY 1 ORDER BY 2 DESC").fetchall())
            by_scenario = [
                {"entity_kind": k, "scenario": s or "(none)", "positive": int(p), "negative": int(n)}
                for k, s, p, n in self.con.execute(
                    "SELECT entity_kind, scenario, count(*) FILTER (label = 1), count(*) FILTER (label = 0) "
                    "FROM labels GROUP BY 1, 2 ORDER BY 1, 2"
                ).fetchall()
            ]
            first, last = self.time_range()
            users = self.con.execute("SELECT count(DISTINCT user_id) FROM events").fetchall()[0][0]
        return {
            "db": self.path,
            "schema_version": self.schema_version(),
            "events": sum(by_type.values()),
            "users": int(users),
            "first_event": first.isoformat() if first else None,
            "last_event": last.isoformat() if last else None,
            "events_by_type": by_type,
            "labels": self._count("labels"),
            "labels_by_scenario": by_scenario,
            "decisions": self._count("decisions"),
        }


def _events_to_arrow(events: pl.DataFrame | pa.Table | Sequence[dict[str, Any]]) -> pa.Table:
    """Conform any frame or list of records to the store's column order and types."""
    if isinstance(events, pa.Table):
        df = pl.from_arrow(events)
    elif isinstance(events, pl.DataFrame):
        df = events
    else:
        rows = list(events)
        if not rows:
            return EVENT_ARROW_SCHEMA.empty_table()
        df = pl.DataFrame(rows, infer_schema_length=None)
    assert isinstance(df, pl.DataFrame)
    exprs = []
    for c in COLUMNS:
        dtype = {"str": pl.Utf8, "float": pl.Float64, "int": pl.Int32, "ts": pl.Datetime("us"), "json": pl.Utf8}[c.kind]
        if c.name not in df.columns:
            exprs.append(pl.lit(None, dtype=dtype).alias(c.name))
            continue
        col = pl.col(c.name)
        src = df.schema[c.name]
        if c.kind == "json" and src != pl.Utf8:
            col = col.map_elements(_json_dumps, return_dtype=pl.Utf8)
        elif c.kind == "ts":
            exprs.append(_as_datetime(df, c.name).alias(c.name))
            continue
        exprs.append(col.cast(dtype).alias(c.name))
    out = df.select(exprs)
    if out["event_id"].null_count():
        raise DataError("every event needs an event_id before it is stored", field="event_id")
    return out.to_arrow().cast(EVENT_ARROW_SCHEMA)


def _as_datetime(df: pl.DataFrame, name: str) -> pl.Expr:
    """A timestamp column from datetimes or ISO strings (Polars 2 no longer casts text to time)."""
    dtype = df.schema[name]
    if dtype == pl.Utf8:
        return pl.col(name).str.to_datetime(time_unit="us", time_zone="UTC").dt.replace_time_zone(None)
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
        return pl.col(name).dt.convert_time_zone("UTC").dt.replace_time_zone(None).dt.cast_time_unit("us")
    return pl.col(name).cast(pl.Datetime("us"))


def _json_dumps(v: Any) -> str | None:
    import orjson

    if v is None:
        return None
    return orjson.dumps(v, default=str).decode()


def _first(con: duckdb.DuckDBPyConnection) -> tuple[Any, ...] | None:
    """First row of the pending result, consuming the rest (DuckDB 2 refuses new work otherwise)."""
    rows = con.fetchall()
    return rows[0] if rows else None


def _check_store_file(path: Path) -> None:
    """A path that exists must be a DuckDB file: DuckDB itself opens e.g. a Parquet file as an in-memory
    database (writes would vanish) and reports a text file in a long IO error."""
    if path.is_dir():
        raise DataError(f"db: {path} is a folder, not a store file (.duckdb)", field="db", value=str(path))
    if not path.is_file():
        return
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head[8:12] != b"DUCK":
        raise DataError(f"db: {path} is not a shopguard store (not a DuckDB file)", field="db", value=str(path))


def open_store(path: str | Path, *, read_only: bool = False) -> EventStore:
    return EventStore(path, read_only=read_only)


def restrict_store_files(path: Path) -> None:
    """Owner-only permissions (0600) on the store and its write-ahead log: they hold personal data."""
    for p in (path, Path(f"{path}.wal")):
        try:
            if p.exists() and (p.stat().st_mode & 0o077):
                os.chmod(p, 0o600)
        except OSError:  # not ours to change (e.g. a shared read-only mount): leave it
            pass

