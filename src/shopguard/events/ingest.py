"""Ingestion of any log: a mapped CSV, Parquet or JSONL file (or JSONL records) into the event store.

The source is read in chunks (bounded memory whatever its size); each chunk is turned into events by the
mapping, validated vectorised with exactly the rules of ``schema`` (``TYPE_RULES``, ``RANGES``, the time
bounds, the pydantic field lengths, numeric parsing), pseudonymised, given a deterministic id, and
appended. Every problem becomes a line of the rejects file (``row, event, field, value, reason``); every
valid event is kept. Event ids come from a mapped id column or from a hash of the event's content, and
labels are keyed on ``(entity_kind, entity_id, scenario)``, so re-running an ingestion adds nothing.

Row numbers in rejects: the 1-based data row for CSV (the header is not counted, so in a file without
line breaks inside quotes the line is ``row + 1``), the 1-based row for Parquet, the line for JSONL.
"""

from __future__ import annotations

import csv
import hashlib
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from shopguard.errors import ConfigError, NotFound, ShopguardError, ValidationFailed
from shopguard.events.mapping import EventSpec, LabelSpec, SourceMapping, TimeSpec
from shopguard.events.privacy import Pseudonymiser
from shopguard.events.schema import (
    COLUMN_BY_NAME,
    COLUMN_NAMES,
    EVENT_TYPES,
    RANGES,
    TS_MAX,
    TS_MIN,
    TYPE_RULES,
    Event,
    derive_event_id,
    parse_event,
)
from shopguard.store import EventStore
from shopguard.store.erasure import ErasedUsers

ROW = "__row"  # the source row number travels with each chunk under this name
REJECT_COLUMNS = ("row", "event", "field", "value", "reason")
FIRST_PROBLEMS = 20
_REJECT_SCHEMA = {"row": pl.Int64, "event": pl.Utf8, "field": pl.Utf8, "value": pl.Utf8, "reason": pl.Utf8}
_EPOCH = datetime(1970, 1, 1)
_UNIT_US = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6, "D": 86_400e6}
_NUMERIC_TEXT = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$"
_AUTO_FORMATS_TZ = ("%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M%#z")
_AUTO_FORMATS = ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%d", "%Y/%m/%d %H:%M:%S%.f", "%Y/%m/%d %H:%M",
                 "%Y/%m/%d")
_TS_MIN_US = int((TS_MIN - _EPOCH).total_seconds() * 1e6)
_TS_MAX_US = int((TS_MAX - _EPOCH).total_seconds() * 1e6)
CSV_BLOCK_BYTES = 1 << 22  # CSV text parsed per Arrow block; chunks are whole blocks
_SEP = "\x1f"  # between fields of the hashed content
_NULL = "\x00"  # a null field in the hashed content (distinct from the empty string)


def _max_lengths() -> dict[str, int]:
    """Field length limits, read from the pydantic Event so both paths apply the same ones."""
    out = {}
    for name, info in Event.model_fields.items():
        for meta in info.metadata:
            if getattr(meta, "max_length", None) is not None:
                out[name] = int(meta.max_length)
    return out


MAX_LENGTHS = _max_lengths()


def _falses(n: int) -> pl.Series:
    return pl.repeat(False, n, dtype=pl.Boolean, eager=True)


def _nulls(n: int, dtype: Any, name: str = "") -> pl.Series:
    return pl.repeat(None, n, dtype=dtype, eager=True).alias(name)


def _const(value: Any, n: int, name: str = "") -> pl.Series:
    return pl.repeat(value, n, dtype=pl.Utf8, eager=True).alias(name)


@dataclass
class IngestReport:
    """What one ingestion did; ``to_dict()`` is what ``shopguard ingest --json`` prints."""

    source: str
    rows_read: int = 0
    events_valid: int = 0
    events_added: int = 0
    duplicates_skipped: int = 0  # valid events not added: already_stored + duplicates_in_input
    already_stored: int = 0  # event ids the store held before this run
    duplicates_in_input: int = 0  # repeats of an event id within this input
    rows_rejected: int = 0
    erased: int = 0  # valid events of erased users (tombstones, see store.erasure): left out, not rejects
    problems: int = 0
    labels_positive: int = 0
    labels_negative: int = 0
    labels_added: int = 0
    rejects_path: str | None = None
    seconds: float = 0.0
    pseudonymised: bool = False
    key_id: str | None = None
    rejects_by_field: dict[str, int] = field(default_factory=dict)
    first_problems: list[dict[str, Any]] = field(default_factory=list)  # up to FIRST_PROBLEMS, in order

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------
# rejects
# ---------------------------------------------------------------------------------------------------
class RejectsWriter:
    """Writes problems to a CSV (or, for a ``.jsonl`` path, JSON lines) file, opened on the first one.

    A run that finds no problem removes a rejects file left at the same path by an earlier run, so the
    file always describes the latest run. With no path, problems are only counted (and the first few
    kept for the report).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.first: list[dict[str, Any]] = []
        self.count = 0
        self.rows_rejected = 0
        self.by_field: dict[str, int] = {}
        self._fh: IO[str] | None = None
        self._csv: Any = None

    def write(self, problems: pl.DataFrame) -> None:
        if problems.height == 0:
            return
        problems = problems.sort("row", maintain_order=True)
        if len(self.first) < FIRST_PROBLEMS:
            self.first.extend(problems.head(FIRST_PROBLEMS - len(self.first)).to_dicts())
        self._count(problems)
        if self.path is None:
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "w", encoding="utf-8", newline="")
            if self.path.suffix.lower() != ".jsonl":
                self._csv = csv.writer(self._fh, lineterminator="\n")
                self._csv.writerow(REJECT_COLUMNS)
        for rec in problems.iter_rows(named=True):
            if self._csv is not None:
                self._csv.writerow([rec[c] if rec[c] is not None else "" for c in REJECT_COLUMNS])
            else:
                self._fh.write(orjson.dumps(rec).decode() + "\n")

    def _count(self, problems: pl.DataFrame) -> None:
        self.count += problems.height
        # Each write holds whole rows (one chunk), so counting distinct rows per write is exact and the
        # writer keeps no per-row state however many rows are rejected.
        self.rows_rejected += problems.filter(pl.col("field") != "label")["row"].n_unique()
        for f, n in problems.group_by("field").len().iter_rows():
            self.by_field[f] = self.by_field.get(f, 0) + n

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        elif self.path is not None and self.path.exists() and self.count == 0:
            self.path.unlink()


def default_rejects_path(store: EventStore, source_name: str) -> Path:
    """``<folder of the store>/<source>.rejects.csv`` (the working folder for an in-memory store)."""
    base = Path.cwd() if store.path == ":memory:" else Path(store.path).resolve().parent
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", source_name) or "source"
    return base / f"{safe}.rejects.csv"


def _problems(rows: pl.Series, event: str, fld: str, values: pl.Series | None, reason: str | pl.Series) -> pl.DataFrame:
    n = rows.len()
    value = _text(values).str.slice(0, 200) if values is not None else _nulls(n, pl.Utf8)
    reason_s = reason if isinstance(reason, pl.Series) else _const(reason, n)
    return pl.DataFrame({
        "row": rows.cast(pl.Int64), "event": _const(event, n),
        "field": _const(fld, n), "value": value.alias("value"), "reason": reason_s.alias("reason"),
    })


def _empty_problems() -> pl.DataFrame:
    return pl.DataFrame(schema=_REJECT_SCHEMA)


# ---------------------------------------------------------------------------------------------------
# reading sources in chunks
# ---------------------------------------------------------------------------------------------------
def source_columns(mapping: SourceMapping) -> list[str] | None:
    """Column names of the source file (None for JSONL, whose keys are only known row by row)."""
    path = mapping.resolved_path()
    fmt = mapping.source_format()
    if fmt == "parquet":
        return list(pq.ParquetFile(path).schema_arrow.names)
    if fmt == "csv":
        # utf-8-sig drops a byte-order mark, as Arrow's reader does, so the names agree.
        enc = "utf-8-sig" if mapping.csv.encoding.replace("-", "").lower() == "utf8" else mapping.csv.encoding
        with open(path, encoding=enc, newline="") as fh:
            header = next(csv.reader(fh, delimiter=mapping.csv.delimiter, quotechar=mapping.csv.quote_char), None)
        if not header:
            raise ValidationFailed(f"{path}: the CSV file is empty (no header row)", field="path", value=str(path))
        return header
    return None


def count_rows_hint(mapping: SourceMapping) -> int | None:
    """Rows the source holds (exact for Parquet; line count for CSV and JSONL) to size a progress bar."""
    path = mapping.resolved_path()
    try:
        fmt = mapping.source_format()
        if fmt == "parquet":
            return int(pq.ParquetFile(path).metadata.num_rows)
        lines = 0
        with open(path, "rb") as fh:
            while block := fh.read(1 << 24):
                lines += block.count(b"\n")
    except (ShopguardError, pa.ArrowException, OSError):
        return None  # ingest_source reports the problem properly
    return max(lines - (1 if fmt == "csv" else 0), 0)


def _check_columns(mapping: SourceMapping, available: list[str] | None) -> None:
    if available is None:
        return
    have = set(available)
    for col, key in mapping.required_columns().items():
        if col not in have:
            shown = ", ".join(available[:40]) + (" ..." if len(available) > 40 else "")
            raise ConfigError(
                f"{key}: column {col!r} is not in {mapping.resolved_path().name} (columns: {shown})",
                field=key, value=col,
            )


def _iter_parquet(path: Path, columns: list[str] | None, chunk_rows: int) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    pf = pq.ParquetFile(path)
    start = 1
    for batch in pf.iter_batches(batch_size=chunk_rows, columns=columns):
        df = pl.from_arrow(batch)
        assert isinstance(df, pl.DataFrame)
        n = df.height
        yield df.with_columns(pl.int_range(start, start + n, dtype=pl.Int64).alias(ROW)), _empty_problems()
        start += n


def _iter_csv(mapping: SourceMapping, columns: list[str] | None, names: list[str],
              chunk_rows: int) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    opts = mapping.csv
    bad: list[tuple[int, int, int, str]] = []

    def on_invalid(row: Any) -> str:
        # Streaming, single-threaded reading gives each malformed row its record number (header = 1).
        bad.append((int(row.number) - 1 if row.number is not None else -1, row.expected_columns,
                    row.actual_columns, str(row.text)))
        return "skip"

    wanted = columns if columns is not None else names
    reader = pacsv.open_csv(
        mapping.resolved_path(),
        read_options=pacsv.ReadOptions(use_threads=False, block_size=CSV_BLOCK_BYTES, encoding=opts.encoding),
        parse_options=pacsv.ParseOptions(delimiter=opts.delimiter, quote_char=opts.quote_char,
                                         newlines_in_values=True, invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names}, include_columns=wanted, strings_can_be_null=False,
        ),
    )
    next_row = 1
    bad_rows: set[int] = set()
    pending: list[pa.RecordBatch] = []
    pending_rows = 0

    def flush() -> tuple[pl.DataFrame, pl.DataFrame]:
        nonlocal next_row, pending, pending_rows
        new_bad = bad[:]
        bad.clear()
        bad_rows.update(b[0] for b in new_bad)
        table = pa.Table.from_batches(pending) if pending else None
        n = pending_rows
        # Good rows fill, in order, the record numbers not taken by malformed rows.
        numbers = []
        r = next_row
        while len(numbers) < n:
            if r not in bad_rows:
                numbers.append(r)
            r += 1
        if n == 0:
            r = max([next_row] + [b[0] + 1 for b in new_bad])
        next_row = r
        df = pl.from_arrow(table) if table is not None else pl.DataFrame()
        assert isinstance(df, pl.DataFrame)
        if n:
            df = df.with_columns(pl.Series(ROW, numbers, dtype=pl.Int64))
        probs = pl.DataFrame(
            {"row": [b[0] for b in new_bad], "event": [""] * len(new_bad), "field": ["row"] * len(new_bad),
             "value": [b[3][:200] for b in new_bad],
             "reason": [f"malformed CSV row: expected {b[1]} fields, got {b[2]}" for b in new_bad]},
            schema=_REJECT_SCHEMA,
        )
        pending, pending_rows = [], 0
        return df, probs

    for batch in reader:
        pending.append(batch)
        pending_rows += batch.num_rows
        if pending_rows >= chunk_rows:
            yield flush()
    if pending or bad:
        yield flush()


def _json_text(v: Any) -> str | None:
    """Every JSONL value as text, so a column's type never depends on which rows a chunk holds."""
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    if isinstance(v, int | float):
        return repr(v)
    return orjson.dumps(v).decode()


def _iter_jsonl_lines(lines: Iterable[str | bytes], chunk_rows: int) -> Iterator[tuple[list[tuple[int, dict]], pl.DataFrame]]:
    """(line number, object) pairs in chunks, with the lines that are not JSON objects as problems."""
    good: list[tuple[int, dict]] = []
    bad: list[dict[str, Any]] = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            text = line if isinstance(line, str) else line[:400].decode(errors="replace")
            bad.append({"row": i, "event": "", "field": "row", "value": text.strip()[:200],
                        "reason": f"not valid JSON: {exc}"})
            continue
        if not isinstance(obj, dict):
            bad.append({"row": i, "event": "", "field": "row", "value": str(obj)[:200],
                        "reason": f"expected a JSON object, got {type(obj).__name__}"})
            continue
        good.append((i, obj))
        if len(good) >= chunk_rows:
            yield good, pl.DataFrame(bad, schema=_REJECT_SCHEMA)
            good, bad = [], []
    if good or bad:
        yield good, pl.DataFrame(bad, schema=_REJECT_SCHEMA)


def _iter_jsonl(path: Path, chunk_rows: int) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    with open(path, "rb") as fh:
        for good, bad in _iter_jsonl_lines(fh, chunk_rows):
            keys: dict[str, None] = {}
            for _, obj in good:
                keys.update(dict.fromkeys(obj))
            data = {k: [_json_text(obj.get(k)) for _, obj in good] for k in keys}
            data[ROW] = [i for i, _ in good]  # type: ignore[misc]
            schema = {k: pl.Utf8 for k in keys} | {ROW: pl.Int64}
            yield pl.DataFrame(data, schema=schema), bad


def _chunks(mapping: SourceMapping, chunk_rows: int) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    path = mapping.resolved_path()
    fmt = mapping.source_format()
    names = source_columns(mapping)
    _check_columns(mapping, names)
    needs_all = any(e.attrs == "*" for e in mapping.resolved_events())
    columns = None if needs_all else sorted(set(mapping.required_columns()))
    if fmt == "parquet":
        return _iter_parquet(path, columns, chunk_rows)
    if fmt == "csv":
        assert names is not None
        return _iter_csv(mapping, columns, names, chunk_rows)
    return _iter_jsonl(path, chunk_rows)


# ---------------------------------------------------------------------------------------------------
# vectorised parsing and validation
# ---------------------------------------------------------------------------------------------------
def _text(s: pl.Series) -> pl.Series:
    """Any column as trimmed text; integral floats print as integers (ids read as floats stay ids)."""
    if s.dtype == pl.Utf8:
        return s.str.strip_chars(WHITESPACE)
    if s.dtype == pl.Boolean:
        return s.cast(pl.Utf8)
    if s.dtype.is_float():
        integral = s.is_finite() & (s == s.floor()) & (s.abs() < 2**62)
        as_int = s.cast(pl.Int64, strict=False).cast(pl.Utf8)
        return pl.select(pl.when(integral).then(as_int).otherwise(s.cast(pl.Utf8))).to_series().alias(s.name)
    if s.dtype == pl.Null:
        return s.cast(pl.Utf8)
    try:
        return s.cast(pl.Utf8)
    except pl.exceptions.PolarsError:
        return pl.Series(s.name, [None if v is None else str(v) for v in s.to_list()], dtype=pl.Utf8)


# Every character Python's str.strip() removes (Polars' default set misses e.g. \x1c..\x1f).
WHITESPACE = "".join(chr(c) for c in range(0x3001) if chr(c).isspace())


def _blank_to_null(s: pl.Series) -> pl.Series:
    return pl.select(pl.when(s == "").then(None).otherwise(s)).to_series().alias(s.name)


def _localise(s: pl.Series, tz: str) -> pl.Series:
    """Naive times read in ``tz`` as naive UTC; aware ones converted."""
    dtype = s.dtype
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
        return s.dt.convert_time_zone("UTC").dt.replace_time_zone(None).dt.cast_time_unit("us")
    s = s.cast(pl.Datetime("us"))
    if tz == "UTC":
        return s
    return (s.dt.replace_time_zone(tz, ambiguous="earliest", non_existent="null")
            .dt.convert_time_zone("UTC").dt.replace_time_zone(None))


def _from_clock(values: pl.Series, unit: str, origin: datetime | None, tz: str) -> pl.Series:
    """Numbers counted in ``unit`` from ``origin`` as naive UTC; absurd values land just outside the bounds."""
    origin_s = pl.Series([origin or _EPOCH], dtype=pl.Datetime("us"))
    origin_us = int(_localise(origin_s, tz if origin is not None else "UTC").cast(pl.Int64)[0])
    f = (values.cast(pl.Float64) * _UNIT_US[unit] + origin_us).fill_nan(None)
    f = f.clip(_TS_MIN_US - 10**6, _TS_MAX_US + 10**6)
    if values.dtype.is_integer() and unit in ("s", "ms", "us"):
        # Integers stay exact in integer arithmetic (float64 loses microseconds past 2**53).
        exact = values.cast(pl.Int64, strict=False) * int(_UNIT_US[unit]) + origin_us
        in_range = (f > _TS_MIN_US - 10**6) & (f < _TS_MAX_US + 10**6)
        f = pl.select(pl.when(in_range).then(exact).otherwise(f.cast(pl.Int64))).to_series()
    return f.cast(pl.Int64, strict=False).cast(pl.Datetime("us"))


def _py_time(text: str, tz: str) -> datetime | None:
    s = text.strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        return None
    if dt.tzinfo is None:
        if tz == "UTC":
            return dt
        from zoneinfo import ZoneInfo

        dt = dt.replace(tzinfo=ZoneInfo(tz))
    return dt.astimezone(UTC).replace(tzinfo=None)


def parse_times(s: pl.Series, spec: TimeSpec | None) -> tuple[pl.Series, pl.Series]:
    """Parse a time column per ``spec``: (naive UTC datetimes, mask of non-empty values that failed)."""
    spec = spec or TimeSpec()
    name = s.name
    if s.dtype == pl.Utf8:
        s = _blank_to_null(s.str.strip_chars(WHITESPACE))
    present = s.is_not_null()
    dtype = s.dtype
    if isinstance(dtype, pl.Datetime):
        out = _localise(s, spec.timezone)
    elif dtype == pl.Date:
        out = _localise(s.cast(pl.Datetime("us")), spec.timezone)
    elif dtype.is_numeric():
        out = _from_clock(s, spec.unit or "s", spec.origin, spec.timezone)
    elif dtype == pl.Utf8 and spec.unit is not None:
        out = _from_clock(s.cast(pl.Float64, strict=False), spec.unit, spec.origin, spec.timezone)
    elif dtype == pl.Utf8 and spec.format != "auto":
        parsed = s.str.to_datetime(spec.format, strict=False, time_unit="us")
        out = _localise(parsed, spec.timezone)
    elif dtype == pl.Utf8:
        out = _parse_auto(s, spec.timezone)
    else:
        out = _nulls(s.len(), pl.Datetime("us"), name)
    out = out.cast(pl.Datetime("us")).alias(name)
    return out, (present & out.is_null()).alias(name)


def _parse_auto(s: pl.Series, tz: str) -> pl.Series:
    """ISO 8601 text (any offset, ``Z``, fractions), dates, or numbers as epoch seconds."""
    norm = (s.str.replace(r"^(\d{4}-\d{2}-\d{2})[Tt]", "${1} ").str.replace(r"[Zz]$", "+00:00")
            .str.replace(r" ?UTC$", "+00:00"))
    numeric = norm.str.contains(_NUMERIC_TEXT).fill_null(False)
    result = _nulls(s.len(), pl.Datetime("us"), s.name)
    if numeric.any():
        clock = _from_clock(norm.cast(pl.Float64, strict=False), "s", None, "UTC")
        result = pl.select(pl.when(numeric).then(clock).otherwise(result)).to_series()
    todo = norm.is_not_null() & ~numeric
    for fmt in _AUTO_FORMATS_TZ + _AUTO_FORMATS:
        if not (todo & result.is_null()).any():
            break
        parsed = norm.str.to_datetime(fmt, strict=False, time_unit="us", time_zone="UTC" if "%#z" in fmt else None)
        parsed = _localise(parsed, "UTC" if "%#z" in fmt else tz)
        result = result.fill_null(parsed)
    left = todo & result.is_null()
    if left.any():
        # Rare ISO forms Polars does not read (week dates, compact forms): Python's parser, once per value.
        vals = s.filter(left).unique().to_list()
        parsed_py = {v: _py_time(v, tz) for v in vals}
        fallback = s.replace_strict(parsed_py, default=None, return_dtype=pl.Datetime("us"))
        result = result.fill_null(fallback)
    return result.alias(s.name)


@dataclass
class _Built:
    frame: pl.DataFrame  # valid events: COLUMN_NAMES + ROW
    problems: pl.DataFrame


def _source_series(raw: pl.DataFrame, spec: EventSpec, name: str) -> pl.Series | None:
    n = raw.height
    if name in spec.columns:
        col = spec.columns[name]
        if col not in raw.columns:
            return _nulls(n, pl.Utf8, name)
        if name in spec.values:
            table = {k: str(v) for k, v in spec.values[name].items()}
            return _text(raw[col]).replace(table).alias(name)
        return raw[col].alias(name)
    if name in spec.constants:
        v = spec.constants[name]
        return pl.repeat(v, n, eager=True).alias(name)
    return None


def _canonical(s: pl.Series) -> pl.Series:
    """A column as text for content hashing, in a form that does not depend on library versions:
    text as is, integers in decimal, floats by their IEEE-754 bits, times as integer microseconds."""
    dtype = s.dtype
    if dtype == pl.Utf8:
        out = s
    elif dtype.is_float():
        arr = s.cast(pl.Float64).fill_null(0.0).to_numpy().astype(np.float64, copy=False).view(np.uint64)
        out = pl.Series(s.name, arr).cast(pl.Utf8)
        out = pl.select(pl.when(s.is_null()).then(None).otherwise(out)).to_series()
    elif dtype.is_integer() or dtype == pl.Boolean:
        out = s.cast(pl.Utf8)
    elif isinstance(dtype, pl.Datetime):
        out = s.dt.cast_time_unit("us").cast(pl.Int64).cast(pl.Utf8)
    elif dtype == pl.Date:
        out = s.cast(pl.Datetime("us")).cast(pl.Int64).cast(pl.Utf8)
    else:
        out = _text(s)
    return out.fill_null(_NULL)


def _content_ids(frame: pl.DataFrame, attrs_raw: pl.DataFrame, prefix: pl.Series | None) -> pl.Series:
    """``h`` + blake2b-96 of the event's fields and attributes (the ``derive_event_id`` recipe, made
    independent of how a library prints floats and times, so ids are stable across runs and versions)."""
    parts = [_canonical(frame[name]) for name in COLUMN_NAMES if name not in ("event_id", "attrs")]
    for k in sorted(attrs_raw.columns):
        parts.append(_const(k, frame.height))
        parts.append(_canonical(attrs_raw[k]))
    if prefix is not None:
        parts.insert(0, prefix)
    joined = pl.DataFrame([p.alias(f"_{i}") for i, p in enumerate(parts)]).select(
        pl.concat_str(pl.all(), separator=_SEP)
    ).to_series().to_list()
    return pl.Series("event_id", [
        "h" + hashlib.blake2b(t.encode(), digest_size=12).hexdigest() for t in joined
    ], dtype=pl.Utf8)


class _Ctx:
    """What every chunk of one ingestion shares."""

    def __init__(self, mapping: SourceMapping, pseudonymiser: Pseudonymiser | None,
                 available: list[str] | None) -> None:
        self.mapping = mapping
        self.pseudonymiser = pseudonymiser
        self.events = mapping.resolved_events()
        self.multi = len(self.events) > 1
        # "*" attributes leave out label columns (no label leak) and every column any event of the row
        # maps: a signup must not carry its row's later purchase time or amount as an attribute.
        mapped = {c for e in self.events for c in e.columns.values()} | {
            e.type_column for e in self.events if e.type_column}
        self.excluded = mapping.label_columns() | mapped | (
            {mapping.event_id.column} if mapping.event_id else set())
        self.available = available
        self.source = mapping.source_name()


def _build_events(raw: pl.DataFrame, spec: EventSpec, ctx: _Ctx) -> _Built:
    """Map, parse and validate one event kind of a chunk; keep valid events, describe every problem."""
    n = raw.height
    rows = raw[ROW]
    ev = spec.name or "event"
    cols: dict[str, pl.Series] = {}
    failed: dict[str, pl.Series] = {}
    probs: list[pl.DataFrame] = []
    bad = _falses(n)

    def flag(mask: pl.Series, fld: str, values: pl.Series | None, reason: str | pl.Series) -> None:
        nonlocal bad
        mask = mask.fill_null(False)
        if not mask.any():
            return
        probs.append(_problems(rows.filter(mask), ev, fld, values.filter(mask) if values is not None else None,
                               reason.filter(mask) if isinstance(reason, pl.Series) else reason))
        bad = bad | mask

    # type
    if spec.event_type is not None:
        cols["type"] = _const(spec.event_type, n, "type")
    else:
        assert spec.type_column is not None
        src = _blank_to_null(_text(raw[spec.type_column])) if spec.type_column in raw.columns else \
            _nulls(n, pl.Utf8)
        mapped = src.replace(spec.types) if spec.types else src
        cols["type"] = mapped.alias("type")
        flag(src.is_null(), "type", src, f"required (column {spec.type_column!r} is empty)")
        flag(mapped.is_not_null() & ~mapped.is_in(list(EVENT_TYPES)), "type", src,
             f"unknown event type (allowed: {', '.join(EVENT_TYPES)})")

    for name in COLUMN_NAMES:
        if name in ("event_id", "type", "attrs"):
            continue
        kind = COLUMN_BY_NAME[name].kind
        src = _source_series(raw, spec, name)
        if src is None:
            dtype = {"str": pl.Utf8, "float": pl.Float64, "int": pl.Float64, "ts": pl.Datetime("us")}[kind]
            cols[name] = _nulls(n, dtype, name)
            failed[name] = _falses(n)
            continue
        if kind == "str":
            s = _blank_to_null(_text(src))
            fail = _falses(n)
            limit = MAX_LENGTHS.get(name)
            if limit is not None:
                too_long = s.str.len_chars() > limit
                flag(too_long, name, s, f"must have at most {limit} characters")
                fail = fail | too_long.fill_null(False)
            cols[name], failed[name] = s, fail
        elif kind in ("float", "int"):
            if src.dtype == pl.Utf8 or src.dtype == pl.Null:
                text = _blank_to_null(src.cast(pl.Utf8).str.strip_chars(WHITESPACE))
                num = text.cast(pl.Float64, strict=False)
                fail = text.is_not_null() & num.is_null()
                flag(fail, name, text, "not a number")
            elif src.dtype == pl.Boolean or src.dtype.is_numeric():
                text, num = src, src.cast(pl.Float64)
                fail = _falses(n)
            else:
                text, num = _text(src), _nulls(n, pl.Float64)
                fail = src.is_not_null()
                flag(fail, name, text, "not a number")
            nonfinite = num.is_nan() | num.is_infinite()
            flag(nonfinite, name, text, "must be a finite number")
            fail = fail | nonfinite.fill_null(False)
            if kind == "int":
                frac = num.is_finite() & (num != num.floor())
                flag(frac, name, text, "must be an integer")
                fail = fail | frac.fill_null(False)
            num = pl.select(pl.when(fail).then(None).otherwise(num)).to_series().alias(name)
            cols[name], failed[name] = num, fail
        elif kind == "ts":
            t, fail = parse_times(src, spec.time)
            what = spec.time.format if spec.time and spec.time.unit is None else (
                f"unit {spec.time.unit}" if spec.time else "auto")
            flag(fail, name, _text(src), f"not a timestamp (time format: {what})")
            out_of_range = t.is_not_null() & ((t < TS_MIN) | (t >= TS_MAX))
            flag(out_of_range, name, _text(src), f"timestamp outside {TS_MIN.year}..{TS_MAX.year}")
            fail = fail | out_of_range.fill_null(False)
            cols[name] = pl.select(pl.when(fail).then(None).otherwise(t)).to_series().alias(name)
            failed[name] = fail

    flag(cols["ts"].is_null() & ~failed["ts"], "ts", None, "required")

    # TYPE_RULES and RANGES, with the same reasons as schema.check_record.
    types = cols["type"]
    for t in types.drop_nulls().unique().to_list():
        rule = TYPE_RULES.get(t)
        if rule is None:
            continue
        is_t = types == t
        for req in rule.required:
            flag(is_t & cols[req].is_null() & ~failed[req], req, None, f"required for '{t}' events")
        if rule.statuses is not None:
            st = cols["status"]
            flag(is_t & st.is_not_null() & ~st.is_in(list(rule.statuses)), "status", st,
                 f"must be one of {', '.join(rule.statuses)} for '{t}'")
    for name, lo, hi in RANGES:
        v = cols[name]
        out = _falses(n)
        if lo is not None:
            out = out | (v < lo).fill_null(False)
        if hi is not None:
            out = out | (v > hi).fill_null(False)
        flag(out, name, v, f"must be between {lo} and {hi}")

    # attributes: kept as a JSON object, never including label columns
    attr_map = spec.attr_columns(ctx.available if ctx.available is not None else [c for c in raw.columns if c != ROW],
                                 ctx.excluded)
    attrs_raw = pl.DataFrame({k: (raw[c] if c in raw.columns else _nulls(n, pl.Utf8))
                              for k, c in attr_map.items()})
    if attr_map:
        cols["attrs"] = attrs_raw.select(pl.struct(pl.all()).struct.json_encode()).to_series().alias("attrs")
    else:
        cols["attrs"] = _const("{}", n, "attrs")

    # ids from a column
    id_col = ctx.mapping.event_id
    if id_col is not None:
        ids = _blank_to_null(_text(raw[id_col.column])) if id_col.column in raw.columns else \
            _nulls(n, pl.Utf8)
        flag(ids.is_null(), "event_id", None, f"required (event_id.column {id_col.column!r} is empty)")
        suffix = f"-{ev}" if ctx.multi else ""
        full = (id_col.prefix + ids + suffix) if ids.len() else ids
        flag(full.str.len_chars() > MAX_LENGTHS["event_id"], "event_id", full,
             f"must have at most {MAX_LENGTHS['event_id']} characters")
        cols["event_id"] = full.alias("event_id")

    frame = pl.DataFrame([cols[name].alias(name) for name in COLUMN_NAMES if name in cols] + [rows])
    keep = ~bad
    frame = frame.filter(keep)
    attrs_raw = attrs_raw.filter(keep) if attr_map else attrs_raw
    for name in ("quantity", "rating"):
        frame = frame.with_columns(pl.col(name).cast(pl.Int64))
    if ctx.pseudonymiser is not None:
        frame = ctx.pseudonymiser.apply_frame(frame)
    if id_col is None and frame.height:
        prefix = None
        if ctx.mapping.dedupe == "row":
            prefix = ctx.source + _SEP + frame[ROW].cast(pl.Utf8) + _SEP + ev
        frame = frame.with_columns(_content_ids(frame, attrs_raw, prefix))
    elif id_col is None:
        frame = frame.with_columns(pl.Series("event_id", [], dtype=pl.Utf8))
    problems = pl.concat(probs) if probs else _empty_problems()
    return _Built(frame.select(list(COLUMN_NAMES) + [ROW]), problems)


# ---------------------------------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------------------------------
def _matches(s: pl.Series, values: list[Any]) -> pl.Series:
    """Which values of a label column are in ``values``: as numbers when possible, else as text."""
    nums = []
    for v in values:
        if isinstance(v, bool):
            nums.append(float(v))
            continue
        try:
            nums.append(float(v))
        except (TypeError, ValueError):
            pass
    texts = [str(v).strip().lower() for v in values]
    if s.dtype.is_numeric() or s.dtype == pl.Boolean:
        return s.cast(pl.Float64).is_in(nums).fill_null(False)
    t = _text(s).str.to_lowercase()
    hit = t.is_in(texts).fill_null(False)
    if nums:
        hit = hit | t.cast(pl.Float64, strict=False).is_in(nums).fill_null(False)
    return hit


def _build_labels(raw: pl.DataFrame, events: pl.DataFrame, spec: LabelSpec, ctx: _Ctx,
                  time_spec: TimeSpec | None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Label rows for the valid events of a chunk, and problems with label values (events are kept)."""
    ev_rows = events.select(ROW, "event_id", "ts", "user_id", "order_id", "merchant_id")
    cols = [ROW, spec.column] + [c for c in (spec.scenario_column, spec.labeled_at) if c]
    have = [c for c in cols if c in raw.columns]
    lab = raw.select(have).join(ev_rows, on=ROW, how="inner")
    for c in cols:
        if c not in lab.columns:
            lab = lab.with_columns(pl.lit(None, dtype=pl.Utf8).alias(c))
    value = lab[spec.column]
    pos, neg = _matches(value, spec.positive), _matches(value, spec.negative)
    unk = _matches(value, spec.unknown) if spec.unknown else _falses(lab.height)
    present = _blank_to_null(_text(value)).is_not_null()
    unrecognised = present & ~pos & ~neg & ~unk
    probs = []
    ev_name = spec.event or (ctx.events[0].name or "event")
    if unrecognised.any():
        probs.append(_problems(lab[ROW].filter(unrecognised), ev_name, "label", value.filter(unrecognised),
                               f"not a listed label value (positive {spec.positive}, negative {spec.negative}, "
                               f"unknown {spec.unknown}); event kept without a label"))
    if spec.scenario_column:
        sc = _blank_to_null(_text(lab[spec.scenario_column]))
        if spec.scenarios:
            sc = sc.replace(spec.scenarios)
        sc = sc.fill_null("")
    else:
        sc = _const(spec.scenario or "", lab.height)
    scenario = pl.select(pl.when(pos).then(sc).otherwise(pl.lit(""))).to_series()
    if spec.labeled_at:
        known, fail = parse_times(lab[spec.labeled_at], spec.labeled_at_time or time_spec)
        bad_known = (fail | known.is_null()) & (pos | neg)
        if bad_known.any():
            probs.append(_problems(lab[ROW].filter(bad_known), ev_name, "label", _text(lab[spec.labeled_at])
                                   .filter(bad_known), f"labeled_at column {spec.labeled_at!r} is not a timestamp; "
                                   "event kept without a label"))
        labeled_at = known
    else:
        labeled_at = lab["ts"] + spec.delay_td
    entity_col = {"event": "event_id", "user": "user_id", "order": "order_id", "merchant": "merchant_id"}[spec.entity]
    entity = lab[entity_col]
    no_entity = (pos | neg) & entity.is_null()
    if no_entity.any():
        probs.append(_problems(lab[ROW].filter(no_entity), ev_name, "label", None,
                               f"the event has no {entity_col} to put a {spec.entity} label on"))
    out = pl.DataFrame({
        "entity_kind": _const(spec.entity, lab.height),
        "entity_id": entity.cast(pl.Utf8),
        "label": pl.select(pl.when(pos).then(1).otherwise(0)).to_series().cast(pl.Int32),
        "scenario": scenario.cast(pl.Utf8),
        "labeled_at": labeled_at.cast(pl.Datetime("us")),
        "source": _const(spec.source or f"ingest:{ctx.source}", lab.height),
        "_keep": (pos | neg) & entity.is_not_null() & labeled_at.is_not_null(),
    }).filter(pl.col("_keep")).drop("_keep")
    if spec.entity != "event" and out.height:
        # Many rows per user/order/merchant: one positive label per entity and scenario, known from the
        # earliest row that says so; a negative only for entities with no positive row in the chunk.
        keys = ["entity_kind", "entity_id"]
        out = out.sort("labeled_at")
        pos = out.filter(pl.col("label") == 1).group_by(keys + ["scenario"], maintain_order=True).first()
        neg = (out.filter(pl.col("label") == 0).join(pos.select(keys), on=keys, how="anti")
               .group_by(keys, maintain_order=True).first())
        cols_out = ["entity_kind", "entity_id", "label", "scenario", "labeled_at", "source"]
        out = pl.concat([pos.select(cols_out), neg.select(cols_out)])
    return out, (pl.concat(probs) if probs else _empty_problems())


# ---------------------------------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------------------------------
def ingest_source(
    mapping: SourceMapping,
    store: EventStore,
    *,
    rejects_path: str | Path | None = None,
    chunk_rows: int = 200_000,
    pseudonymiser: Pseudonymiser | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> IngestReport:
    """Ingest the file a mapping describes into ``store``; safe to re-run (adds nothing the second time).

    Raises ``NotFound`` / ``ConfigError`` only when nothing can be read (missing file, a mapped column
    the file lacks); bad rows never raise, they go to the rejects file.
    """
    started = time.perf_counter()
    path = mapping.resolved_path()
    if not path.exists():
        raise NotFound(f"path: source file not found: {path}", field="path", value=str(path))
    if chunk_rows < 1:
        raise ValidationFailed("chunk_rows must be at least 1", field="chunk_rows", value=chunk_rows)
    report = IngestReport(source=str(path), pseudonymised=pseudonymiser is not None,
                          key_id=pseudonymiser.key_id if pseudonymiser else None)
    seen = _StoredBefore(store)
    rejects = RejectsWriter(Path(rejects_path) if rejects_path else default_rejects_path(store, mapping.source_name()))
    try:
        try:
            available = source_columns(mapping)
            chunks = _chunks(mapping, chunk_rows)
        except ShopguardError:
            raise
        except (pa.ArrowException, UnicodeDecodeError, OSError, csv.Error) as exc:
            raise _read_error(path, exc) from None
        ctx = _Ctx(mapping, pseudonymiser, available)
        ctx.erased = ErasedUsers.load(store, pseudonymiser=pseudonymiser)
        label_event = None
        if mapping.label is not None:
            label_event = mapping.label.event or ctx.events[0].name
            if mapping.label.unlabeled != "auto":  # the mapping's word on unlabelled events holds store-wide
                store.set_setting("unlabeled", mapping.label.unlabeled)
        for raw, malformed in _handle_read_errors(chunks, path):
            n_read = raw.height + malformed.height
            report.rows_read += n_read
            if raw.height:
                _ingest_chunk(raw, ctx, store, report, rejects, label_event, malformed, seen)
            else:
                rejects.write(malformed)
            if on_progress is not None:
                on_progress(n_read)
    finally:
        rejects.close()
    return _finish(report, rejects, started)


def _read_error(path: Path, exc: Exception) -> ValidationFailed:
    hint = ""
    if isinstance(exc, UnicodeDecodeError) or "UTF8" in str(exc) or "utf-8" in str(exc):
        hint = " (if the file is not UTF-8, set csv: {encoding: latin-1} or its encoding in the mapping)"
    return ValidationFailed(f"path: cannot read {path}: {exc}"[:500] + hint, field="path", value=str(path))


def _handle_read_errors(chunks: Iterator[tuple[pl.DataFrame, pl.DataFrame]],
                        path: Path) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    """Turn a file that cannot be read at all (not CSV, corrupt Parquet, wrong encoding) into one error."""
    while True:
        try:
            item = next(chunks)
        except StopIteration:
            return
        except ShopguardError:
            raise
        except (pa.ArrowException, UnicodeDecodeError, OSError, csv.Error) as exc:
            raise _read_error(path, exc) from None
        yield item


def _ingest_chunk(raw: pl.DataFrame, ctx: _Ctx, store: EventStore, report: IngestReport,
                  rejects: RejectsWriter, label_event: str | None, malformed: pl.DataFrame,
                  seen: _StoredBefore | None = None) -> None:
    frames = []
    problems = [malformed]
    labels = None
    for spec in ctx.events:
        built = _build_events(raw, spec, ctx)
        frames.append(built.frame)
        problems.append(built.problems)
        if ctx.mapping.label is not None and spec.name == label_event:
            labels, label_probs = _build_labels(raw, built.frame, ctx.mapping.label, ctx, spec.time)
            problems.append(label_probs)
    events = pl.concat(frames) if len(frames) > 1 else frames[0]
    rejects.write(pl.concat(problems))
    erased = getattr(ctx, "erased", None)
    if erased is not None and events.height and "user_id" in events.columns:
        gone = erased.mask(events["user_id"])
        if gone.any():
            report.erased += int(gone.sum())
            dropped = events.filter(gone)
            events = events.filter(~gone)
            if labels is not None and labels.height:
                labels = _without_erased(labels, dropped)
    report.events_valid += events.height
    if events.height:
        added = store.append_events(events.drop(ROW))
        report.events_added += added
        if seen is not None and added < events.height:  # some skipped: which were stored before this run
            report.already_stored += seen.count(events["event_id"])
    if labels is not None and labels.height:
        report.labels_positive += int(labels["label"].sum())
        report.labels_negative += int(labels.height - labels["label"].sum())
        report.labels_added += store.append_labels(labels)


def ingest_records(
    records: Iterable[dict[str, Any]],
    store: EventStore,
    *,
    pseudonymiser: Pseudonymiser | None = None,
    rejects_path: str | Path | None = None,
    batch_size: int = 5_000,
    source: str = "records",
    on_progress: Callable[[int], None] | None = None,
) -> IngestReport:
    """Validate event records one by one with ``schema.parse_event`` and append the valid ones.

    The path for JSONL and API input. Ids missing from a record are derived from its content after
    pseudonymisation, so no raw personal value is ever hashed without the key. Problems go to
    ``rejects_path`` when given; the report always counts them and keeps the first few.
    """
    return _ingest_pairs(enumerate(records, 1), store, pseudonymiser=pseudonymiser, rejects_path=rejects_path,
                         batch_size=batch_size, source=source, on_progress=on_progress)


def ingest_jsonl(
    lines: Iterable[str | bytes],
    store: EventStore,
    *,
    pseudonymiser: Pseudonymiser | None = None,
    rejects_path: str | Path | None = None,
    batch_size: int = 5_000,
    source: str = "stdin",
    on_progress: Callable[[int], None] | None = None,
) -> IngestReport:
    """Ingest JSON lines (one event object per line, e.g. from stdin); bad lines go to the rejects file."""
    started = time.perf_counter()
    rejects = RejectsWriter(Path(rejects_path) if rejects_path else default_rejects_path(store, source))
    report = IngestReport(source=source, pseudonymised=pseudonymiser is not None,
                          key_id=pseudonymiser.key_id if pseudonymiser else None)
    seen = _StoredBefore(store)
    erased = ErasedUsers.load(store, pseudonymiser=pseudonymiser)
    try:
        for good, bad in _iter_jsonl_lines(lines, batch_size):
            rejects.write(bad)
            report.rows_read += bad.height
            if on_progress is not None and bad.height:
                on_progress(bad.height)
            _ingest_batch(good, store, pseudonymiser, rejects, report, on_progress, seen, erased)
    finally:
        rejects.close()
    return _finish(report, rejects, started)


def _ingest_pairs(pairs: Iterable[tuple[int, Any]], store: EventStore, *, pseudonymiser: Pseudonymiser | None,
                  rejects_path: str | Path | None, batch_size: int, source: str,
                  on_progress: Callable[[int], None] | None) -> IngestReport:
    started = time.perf_counter()
    rejects = RejectsWriter(Path(rejects_path) if rejects_path else None)
    report = IngestReport(source=source, pseudonymised=pseudonymiser is not None,
                          key_id=pseudonymiser.key_id if pseudonymiser else None)
    seen = _StoredBefore(store)
    erased = ErasedUsers.load(store, pseudonymiser=pseudonymiser)
    try:
        batch: list[tuple[int, Any]] = []
        for pair in pairs:
            batch.append(pair)
            if len(batch) >= batch_size:
                _ingest_batch(batch, store, pseudonymiser, rejects, report, on_progress, seen, erased)
                batch = []
        if batch:
            _ingest_batch(batch, store, pseudonymiser, rejects, report, on_progress, seen, erased)
    finally:
        rejects.close()
    return _finish(report, rejects, started)


def _ingest_batch(batch: list[tuple[int, Any]], store: EventStore, pseudonymiser: Pseudonymiser | None,
                  rejects: RejectsWriter, report: IngestReport, on_progress: Callable[[int], None] | None,
                  seen: _StoredBefore | None = None, erased: ErasedUsers | None = None) -> None:
    good: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    for row, data in batch:
        try:
            event = parse_event(data)
        except ValidationFailed as exc:
            bad.append({"row": row, "event": str(data.get("type", "")) if isinstance(data, dict) else "",
                        "field": exc.field or "event", "value": None if exc.value is None else str(exc.value)[:200],
                        "reason": exc.message})
            continue
        rec = event.to_record()
        if pseudonymiser is not None:
            rec = pseudonymiser.apply_record(rec)
            if not data.get("event_id"):
                rec["event_id"] = derive_event_id(rec)
        if erased is not None and rec.get("user_id") in erased:
            report.erased += 1  # a tombstoned user: left out, neither stored nor a reject
            continue
        good.append(rec)
    rejects.write(pl.DataFrame(bad, schema=_REJECT_SCHEMA))
    report.rows_read += len(batch)
    report.events_valid += len(good)
    if good:
        added = store.append_events(good)
        report.events_added += added
        if seen is not None and added < len(good):  # some skipped: which were stored before this run
            report.already_stored += seen.count(pl.Series("event_id", [r.get("event_id") for r in good],
                                                          dtype=pl.Utf8))
    if on_progress is not None:
        on_progress(len(batch))


def _without_erased(labels: pl.DataFrame, dropped: pl.DataFrame) -> pl.DataFrame:
    """``labels`` less those of erased users' events, orders and the users themselves."""
    kinds, ids = labels["entity_kind"], labels["entity_id"]
    gone = ((kinds == "event") & ids.is_in(dropped["event_id"].drop_nulls().to_list()))
    if "order_id" in dropped.columns:
        gone = gone | ((kinds == "order") & ids.is_in(dropped["order_id"].drop_nulls().to_list()))
    gone = gone | ((kinds == "user") & ids.is_in(dropped["user_id"].drop_nulls().to_list()))
    return labels.filter(~gone.fill_null(False))


class _StoredBefore:
    """Counts the event ids of a batch the store already held when this ingestion started.

    Tells "already stored" apart from a repeat inside the input (which ``append_events`` skips the same
    way): rows this run added carry a later ``ingested_at``, so it may run after the append. Free when the
    store started empty; callers ask only when an append skipped rows.
    """

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.start: Any = None
        if store.count_events():
            self.start = store.query("SELECT current_timestamp::TIMESTAMP AS t")["t"][0]

    def count(self, ids: pl.Series) -> int:
        if self.start is None:
            return 0
        distinct = ids.drop_nulls().unique().to_list()
        if not distinct:
            return 0
        hit = self.store.query("SELECT count(*) AS n FROM events WHERE event_id IN (SELECT unnest(?)) "
                               "AND ingested_at < ?", [distinct, self.start])
        return int(hit["n"][0])


def _finish(report: IngestReport, rejects: RejectsWriter, started: float) -> IngestReport:
    report.duplicates_skipped = report.events_valid - report.events_added
    report.already_stored = min(report.already_stored, report.duplicates_skipped)
    report.duplicates_in_input = report.duplicates_skipped - report.already_stored
    report.problems = rejects.count
    report.rows_rejected = rejects.rows_rejected
    report.rejects_by_field = dict(sorted(rejects.by_field.items(), key=lambda kv: -kv[1]))
    report.rejects_path = str(rejects.path) if rejects.count and rejects.path is not None else None
    report.first_problems = rejects.first
    report.seconds = round(time.perf_counter() - started, 3)
    return report
