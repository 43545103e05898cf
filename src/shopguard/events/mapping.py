"""Source mapping files: how a CSV, Parquet or JSONL log's columns become behaviour events and labels.

A mapping is a small YAML file checked by pydantic models with unknown keys rejected, so a typo is an
error naming the key path (``label.positve: extra inputs are not permitted``) instead of a silently
ignored setting. ``SourceMapping.resolved_events()`` turns the short single-event form and the
``events:`` list form into one list of fully specified ``EventSpec``.

>>> m = SourceMapping.model_validate({"path": "tx.csv", "event_type": "pay",
...     "columns": {"user_id": "CUSTOMER_ID", "amount": "TX_AMOUNT", "ts": "TX_DATETIME"},
...     "constants": {"status": "success"}})
>>> [(e.name, e.event_type) for e in m.resolved_events()], m.source_format()
([('pay', 'pay')], 'csv')
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shopguard.errors import ConfigError, NotFound
from shopguard.events.schema import COLUMN_NAMES, EVENT_TYPES

Scalar = str | int | float | bool
# Event fields a mapping may fill from a source column or a constant. ``type`` comes from
# ``event_type``/``type_column``, ``event_id`` from ``event_id``, ``attrs`` from ``attrs``.
MAPPABLE_FIELDS: tuple[str, ...] = tuple(n for n in COLUMN_NAMES if n not in ("event_id", "type", "attrs"))
FORMATS = ("csv", "parquet", "jsonl")
_EXTENSIONS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet",
               ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_duration(text: str) -> timedelta:
    """``"7d"``, ``"12h"``, ``"30m"``, ``"90s"``, ``"2w"`` as a timedelta.

    >>> parse_duration("7d")
    datetime.timedelta(days=7)
    """
    m = _DURATION.match(str(text))
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 7d, 12h, 30m, 90s, 2w)")
    return timedelta(**{_DURATION_UNITS[m.group(2)]: float(m.group(1))})


class TimeSpec(_Strict):
    """How a time column is read.

    ``format: auto`` accepts ISO 8601 text (with or without offset, ``Z``, fractions), dates, and
    numbers as epoch seconds; a strftime pattern (``"%d/%m/%Y %H:%M"``) reads exactly that. Integer
    clocks use ``unit`` (s, ms, us, ns, D) counted from ``origin`` (default the Unix epoch). Text
    without an offset is read in ``timezone`` and converted to UTC.
    """

    format: str = "auto"
    unit: Literal["s", "ms", "us", "ns", "D"] | None = None
    origin: datetime | None = None
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {v!r} (use an IANA name such as UTC or Europe/Berlin)") from exc
        return v

    @field_validator("format")
    @classmethod
    def _format(cls, v: str) -> str:
        if v != "auto" and "%" not in v:
            raise ValueError(f"format must be 'auto' or a strftime pattern such as '%Y-%m-%d %H:%M:%S', got {v!r}")
        return v

    @model_validator(mode="after")
    def _unit_or_format(self) -> TimeSpec:
        if self.unit is not None and self.format != "auto":
            raise ValueError("give either unit (integer clock) or format (text), not both")
        if self.origin is not None and self.unit is None:
            raise ValueError("origin needs a unit (s, ms, us, ns or D)")
        return self


class EventIdSpec(_Strict):
    """Where event ids come from: a source column (plus a prefix so sources never collide)."""

    column: str
    prefix: str = ""


class LabelSpec(_Strict):
    """Which column labels the data, which values mean fraud, and on what entity the label lands.

    Values are compared as numbers when the column is numeric, else as trimmed text. Rows whose value
    is null or in ``unknown`` get no label. ``scenario`` (a constant) or ``scenario_column`` (mapped
    through ``scenarios``) names the scenario of positive labels; negatives carry scenario ``''``. The
    scenario column is read only for the label: it never becomes an event field or an attribute.
    """

    column: str
    positive: list[Scalar] = Field(default_factory=lambda: [1])
    negative: list[Scalar] = Field(default_factory=lambda: [0])
    unknown: list[Scalar] = Field(default_factory=list)
    entity: Literal["event", "user", "order", "merchant"] = "event"
    event: str | None = Field(None, description="Name of the event (in `events:`) an event label lands on.")
    scenario: str | None = None
    scenario_column: str | None = None
    scenarios: dict[str, str] = Field(default_factory=dict)
    delay: str | None = Field(None, description="Label known this long after the event, e.g. 7d.")
    labeled_at: str | None = Field(None, description="Column holding when the label became known.")
    labeled_at_time: TimeSpec | None = None
    source: str | None = None
    unlabeled: Literal["auto", "negative", "ignore"] = Field(
        "auto", description="What events without a label row are, for the whole store: auto (unlabelled when "
        "explicit negatives exist, else legitimate), negative (legitimate) or ignore (unlabelled).")

    @field_validator("scenarios", mode="before")
    @classmethod
    def _scenario_keys(cls, v: Any) -> Any:
        # YAML reads `1: compromised_card` with an int key; compare as text.
        return {str(k): val for k, val in v.items()} if isinstance(v, dict) else v

    @field_validator("delay")
    @classmethod
    def _delay(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> LabelSpec:
        if not self.positive:
            raise ValueError("positive: list at least one value that means fraud")
        overlap = {str(v) for v in self.positive} & {str(v) for v in self.negative + self.unknown}
        if overlap:
            raise ValueError(f"values {sorted(overlap)} are listed both as positive and as negative/unknown")
        if self.scenario is not None and self.scenario_column is not None:
            raise ValueError("give scenario (a constant) or scenario_column, not both")
        if self.scenarios and self.scenario_column is None:
            raise ValueError("scenarios maps values of scenario_column; set scenario_column")
        if self.delay is not None and self.labeled_at is not None:
            raise ValueError("give delay or labeled_at (a column), not both")
        if self.labeled_at_time is not None and self.labeled_at is None:
            raise ValueError("labeled_at_time reads the labeled_at column; set labeled_at")
        return self

    @property
    def delay_td(self) -> timedelta:
        return parse_duration(self.delay) if self.delay else timedelta(0)

    def source_columns(self) -> list[str]:
        return [c for c in (self.column, self.scenario_column, self.labeled_at) if c]


def _check_fields(v: dict[str, Any], what: str) -> dict[str, Any]:
    for key in v:
        if key in ("type", "event_id", "attrs"):
            hint = {"type": "event_type or type_column", "event_id": "event_id: {column: ...}", "attrs": "attrs"}[key]
            raise ValueError(f"{key!r} is set with {hint}, not in {what}")
        if key not in MAPPABLE_FIELDS:
            raise ValueError(f"unknown event field {key!r} (fields: {', '.join(MAPPABLE_FIELDS)})")
    return v


class _EventFields(_Strict):
    """Keys shared by the top level (defaults) and each entry of ``events:``."""

    event_type: str | None = None
    type_column: str | None = None
    types: dict[str, str] = Field(default_factory=dict, description="Source type value -> event type.")
    columns: dict[str, str] = Field(default_factory=dict, description="Event field -> source column.")
    constants: dict[str, Scalar] = Field(default_factory=dict, description="Event field -> fixed value.")
    values: dict[str, dict[str, Scalar]] = Field(
        default_factory=dict, description="Event field -> {source value: value}, e.g. status: {S: success}."
    )
    attrs: list[str] | Literal["*"] | dict[str, str] | None = Field(
        None, description="Source columns kept in attrs: a list, '*' for every column no event of the mapping "
        "uses (label columns never), or {attr: column}."
    )
    time: TimeSpec | None = None

    @field_validator("event_type")
    @classmethod
    def _known_type(cls, v: str | None) -> str | None:
        if v is not None and v not in EVENT_TYPES:
            raise ValueError(f"unknown event type {v!r} (allowed: {', '.join(EVENT_TYPES)})")
        return v

    @field_validator("types")
    @classmethod
    def _known_types(cls, v: dict[str, str]) -> dict[str, str]:
        for key, t in v.items():
            if t not in EVENT_TYPES:
                raise ValueError(f"{key!r} maps to unknown event type {t!r} (allowed: {', '.join(EVENT_TYPES)})")
        return {str(k): t for k, t in v.items()}

    @field_validator("columns")
    @classmethod
    def _columns(cls, v: dict[str, str]) -> dict[str, str]:
        return _check_fields(v, "columns")

    @field_validator("constants")
    @classmethod
    def _constants(cls, v: dict[str, Scalar]) -> dict[str, Scalar]:
        return _check_fields(v, "constants")

    @field_validator("values", mode="before")
    @classmethod
    def _values(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        _check_fields(v, "values")
        # YAML reads `1: success` with an int key; source values are compared as text.
        return {f: ({str(k): t for k, t in m.items()} if isinstance(m, dict) else m) for f, m in v.items()}


class EventSpec(_EventFields):
    """One event made from each source row. ``name`` tells events of one row apart (default: its type)."""

    name: str | None = None

    def attr_columns(self, available: list[str] | None, excluded: set[str]) -> dict[str, str]:
        """Attribute name -> source column; ``'*'`` means every column not mapped and not a label."""
        if self.attrs is None:
            return {}
        if isinstance(self.attrs, dict):
            return dict(self.attrs)
        if self.attrs == "*":
            if available is None:
                return {}
            used = set(self.columns.values()) | excluded | ({self.type_column} if self.type_column else set())
            return {c: c for c in available if c not in used and not c.startswith("_")}
        return {c: c for c in self.attrs}

    def source_columns(self) -> list[str]:
        cols = list(self.columns.values())
        if self.type_column:
            cols.append(self.type_column)
        if isinstance(self.attrs, dict):
            cols.extend(self.attrs.values())
        elif isinstance(self.attrs, list):
            cols.extend(self.attrs)
        return cols


class CsvOptions(_Strict):
    delimiter: str = ","
    quote_char: str = '"'
    encoding: str = "utf8"

    @field_validator("delimiter", "quote_char")
    @classmethod
    def _one_char(cls, v: str) -> str:
        if len(v) != 1:
            raise ValueError(f"must be a single character, got {v!r}")
        return v


class SourceMapping(_EventFields):
    """A whole mapping file. Paths are relative to the YAML file's folder unless absolute."""

    name: str | None = Field(None, description="Source name, used for the rejects file and label source.")
    path: Path
    format: Literal["auto", "csv", "parquet", "jsonl"] = "auto"
    csv: CsvOptions = Field(default_factory=CsvOptions)
    events: list[EventSpec] | None = None
    label: LabelSpec | None = None
    event_id: EventIdSpec | None = None
    dedupe: Literal["content", "row"] = Field(
        "content",
        description="content: an event's id is a hash of its fields, so identical rows are one event; "
        "row: the source name and row number are hashed too, so identical rows stay separate events.",
    )
    base_dir: Path = Field(Path("."), exclude=True)

    @field_validator("event_id", mode="before")
    @classmethod
    def _id_shorthand(cls, v: Any) -> Any:
        return {"column": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _consistent(self) -> SourceMapping:
        events = self.resolved_events()
        names = [e.name for e in events]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"events: names must differ, {dup} repeat (set name: on each)")
        for i, e in enumerate(events):
            where = f"events.{i}." if self.events else ""
            if (e.event_type is None) == (e.type_column is None):
                raise ValueError(f"{where}event_type: give exactly one of event_type or type_column")
            if "ts" not in e.columns and "ts" not in e.constants:
                raise ValueError(f"{where}columns.ts: map the column holding each event's time")
            if self.label is not None:
                label_cols = set(self.label.source_columns())
                leaked = label_cols & set(e.columns.values()) | (
                    label_cols & set(e.attr_columns([], set()).values())
                )
                if leaked:
                    raise ValueError(
                        f"{where}columns/attrs: label column(s) {sorted(leaked)} cannot also be event fields or "
                        "attributes (that would leak the label into features)"
                    )
        if self.label is not None and self.label.entity == "event" and len(events) > 1:
            if self.label.event is None:
                raise ValueError(f"label.event: name the event the label lands on (one of {names})")
        if self.label is not None and self.label.event is not None and self.label.event not in names:
            raise ValueError(f"label.event: {self.label.event!r} is not an event of this mapping (events: {names})")
        return self

    def resolved_events(self) -> list[EventSpec]:
        """The events each row yields; entries of ``events:`` inherit top-level keys they do not set."""
        top = {
            "event_type": self.event_type, "type_column": self.type_column, "types": self.types,
            "columns": self.columns, "constants": self.constants, "values": self.values, "attrs": self.attrs,
            "time": self.time,
        }
        if not self.events:
            name = self.event_type or "event"
            return [EventSpec(name=name, **top)]
        out = []
        for i, e in enumerate(self.events):
            own = e.model_dump(exclude_unset=True)
            merged: dict[str, Any] = {k: v for k, v in top.items()}
            if "event_type" in own or "type_column" in own:
                merged["event_type"] = own.get("event_type")
                merged["type_column"] = own.get("type_column")
            merged["types"] = {**top["types"], **own.get("types", {})}
            merged["columns"] = {**top["columns"], **own.get("columns", {})}
            merged["constants"] = {**top["constants"], **own.get("constants", {})}
            merged["values"] = {**top["values"], **own.get("values", {})}
            if "attrs" in own:
                merged["attrs"] = e.attrs
            if "time" in own:
                merged["time"] = e.time
            merged["name"] = own.get("name") or merged["event_type"] or f"event{i}"
            out.append(EventSpec(**merged))
        return out

    def resolved_path(self) -> Path:
        return (self.path if self.path.is_absolute() else (self.base_dir / self.path)).resolve()

    def source_format(self) -> str:
        if self.format != "auto":
            return self.format
        suffix = self.path.suffix.lower()
        if suffix in (".gz", ".zst", ".bz2"):
            suffix = Path(self.path.stem).suffix.lower()
        fmt = _EXTENSIONS.get(suffix)
        if fmt is None:
            raise ConfigError(
                f"format: cannot tell the format of {self.path.name!r} from its extension; set format to one of "
                f"{', '.join(FORMATS)}", field="format", value=str(self.path),
            )
        return fmt

    def source_name(self) -> str:
        return self.name or self.path.stem

    def required_columns(self) -> dict[str, str]:
        """Source column -> the mapping key that needs it (for "column not found" errors)."""
        need: dict[str, str] = {}
        for i, e in enumerate(self.resolved_events()):
            where = f"events.{i}." if self.events else ""
            for field_name, col in e.columns.items():
                need.setdefault(col, f"{where}columns.{field_name}")
            if e.type_column:
                need.setdefault(e.type_column, f"{where}type_column")
            if isinstance(e.attrs, dict):
                for k, col in e.attrs.items():
                    need.setdefault(col, f"{where}attrs.{k}")
            elif isinstance(e.attrs, list):
                for col in e.attrs:
                    need.setdefault(col, f"{where}attrs")
        if self.event_id is not None:
            need.setdefault(self.event_id.column, "event_id.column")
        if self.label is not None:
            need.setdefault(self.label.column, "label.column")
            if self.label.scenario_column:
                need.setdefault(self.label.scenario_column, "label.scenario_column")
            if self.label.labeled_at:
                need.setdefault(self.label.labeled_at, "label.labeled_at")
        return need

    def label_columns(self) -> set[str]:
        return set(self.label.source_columns()) if self.label else set()


def mapping_from_dict(data: Any, *, base_dir: Path | str = ".", origin: str = "mapping") -> SourceMapping:
    """Validate a mapping given as a dict; errors name the key path, e.g. ``label.delay``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: a mapping must be a YAML object with keys such as path, columns", field="mapping")
    try:
        return SourceMapping.model_validate({**data, "base_dir": Path(base_dir)})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        # Errors raised for the whole model carry their own key path in the message ("label.event: ...").
        if not loc and ": " in msg:
            loc, _, msg = msg.partition(": ")
        value = err.get("input") if loc else None
        shown = f" (got {value!r})" if loc and not isinstance(value, dict) and value is not None else ""
        raise ConfigError(f"{origin}: {loc or 'mapping'}: {msg}{shown}"[:600], field=loc or "mapping",
                          value=value if shown else None) from None


def load_mapping(path: str | Path) -> SourceMapping:
    """Read and validate a mapping YAML file; its ``path`` is taken relative to the file's folder."""
    p = Path(path)
    if not p.exists():
        raise NotFound(f"mapping file not found: {p}", field="source", value=str(p))
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}", field="source", value=str(p)) from None
    return mapping_from_dict(data, base_dir=p.resolve().parent, origin=str(p))
