"""The behaviour event schema (version ``SCHEMA_VERSION``).

Every event, whatever its source, is one flat record: common fields (who, when, where, on what) plus
the fields its type uses. The per-type rules live in one table, ``TYPE_RULES``, so that the pydantic
model (one event from the API or a JSONL line) and the vectorised checks of batch ingestion apply the
same rules and report the same field names.

>>> e = parse_event({"type": "pay", "ts": "2024-05-01T10:00:00Z", "user_id": "u1",
...                  "amount": 12.5, "status": "failure", "payment_instrument": "card_9"})
>>> e.type, e.amount, e.ts.isoformat()
('pay', 12.5, '2024-05-01T10:00:00')
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shopguard.errors import ValidationFailed

SCHEMA_VERSION = 1


class EventType(StrEnum):
    """Kinds of behaviour event a shop emits."""

    SIGNUP = "signup"
    LOGIN = "login"
    LOGOUT = "logout"
    VIEW = "view"
    SEARCH = "search"
    ADD_TO_CART = "add_to_cart"
    REMOVE_FROM_CART = "remove_from_cart"
    ORDER = "order"
    CANCEL = "cancel"
    PAY = "pay"
    REFUND = "refund"
    RETURN = "return"
    REVIEW = "review"
    CHAT = "chat"
    COUPON_USE = "coupon_use"
    ADDRESS_CHANGE = "address_change"
    PASSWORD_CHANGE = "password_change"
    SHIPMENT = "shipment"
    PRICE_CHANGE = "price_change"


EVENT_TYPES: tuple[str, ...] = tuple(t.value for t in EventType)


@dataclass(frozen=True)
class Column:
    """One column of the flat event record: its storage type and what it means."""

    name: str
    sql_type: str
    kind: str  # "str" | "float" | "int" | "ts" | "json"
    doc: str
    personal: bool = False  # pseudonymised at ingestion when a key is configured


COLUMNS: tuple[Column, ...] = (
    Column("event_id", "VARCHAR", "str", "Unique id; re-sending the same id never double counts."),
    Column("ts", "TIMESTAMP", "ts", "When it happened, UTC."),
    Column("type", "VARCHAR", "str", "One of EventType."),
    Column("user_id", "VARCHAR", "str", "Account acting (or acted on)."),
    Column("session_id", "VARCHAR", "str", "Browsing session."),
    Column("device_id", "VARCHAR", "str", "Device fingerprint.", personal=True),
    Column("ip", "VARCHAR", "str", "Client IP address.", personal=True),
    Column("geo", "VARCHAR", "str", "Coarse location (country or city code)."),
    Column("merchant_id", "VARCHAR", "str", "Merchant, seller or terminal."),
    Column("item_id", "VARCHAR", "str", "Item (SKU)."),
    Column("category", "VARCHAR", "str", "Item category."),
    Column("order_id", "VARCHAR", "str", "Order the event belongs to."),
    Column("amount", "DOUBLE", "float", "Money amount (order value, payment, refund, coupon discount)."),
    Column("currency", "VARCHAR", "str", "ISO 4217 code."),
    Column("status", "VARCHAR", "str", "Outcome: success/failure for login and pay, shipment status."),
    Column("payment_instrument", "VARCHAR", "str", "Card or wallet token used to pay.", personal=True),
    Column("quantity", "INTEGER", "int", "Units ordered or carted."),
    Column("reason", "VARCHAR", "str", "Why: refund/return/cancel reason."),
    Column("rating", "INTEGER", "int", "Review rating 1..5."),
    Column("text", "VARCHAR", "str", "Review text, chat message or search query."),
    Column("language", "VARCHAR", "str", "Language of text (e.g. en, zh)."),
    Column("coupon_code", "VARCHAR", "str", "Coupon used."),
    Column("address", "VARCHAR", "str", "Shipping address (or its id).", personal=True),
    Column("email", "VARCHAR", "str", "Account e-mail at signup.", personal=True),
    Column("phone", "VARCHAR", "str", "Account phone at signup.", personal=True),
    Column("channel", "VARCHAR", "str", "Signup or login channel (web, app, ...)."),
    Column("carrier", "VARCHAR", "str", "Shipment carrier."),
    Column("promised_ts", "TIMESTAMP", "ts", "Promised delivery time."),
    Column("actual_ts", "TIMESTAMP", "ts", "Actual delivery time."),
    Column("old_price", "DOUBLE", "float", "Price before a price change."),
    Column("new_price", "DOUBLE", "float", "Price after a price change."),
    Column("attrs", "JSON", "json", "Anything else the source brings (kept, and usable as features)."),
)
COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
COLUMN_BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
PERSONAL_FIELDS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.personal)

LOGIN_STATUSES = ("success", "failure")
PAY_STATUSES = ("success", "failure")
SHIPMENT_STATUSES = ("created", "shipped", "in_transit", "delivered", "delayed", "lost", "returned")


@dataclass(frozen=True)
class TypeRule:
    """What one event type needs: required fields and allowed status values."""

    required: tuple[str, ...] = ()
    statuses: tuple[str, ...] | None = None  # None: status not checked


_USER = ("user_id",)
TYPE_RULES: dict[str, TypeRule] = {
    "signup": TypeRule(_USER),
    "login": TypeRule(_USER + ("status",), LOGIN_STATUSES),
    "logout": TypeRule(_USER),
    "view": TypeRule(_USER),
    "search": TypeRule(_USER),
    "add_to_cart": TypeRule(_USER + ("item_id",)),
    "remove_from_cart": TypeRule(_USER + ("item_id",)),
    "order": TypeRule(_USER + ("amount",)),
    "cancel": TypeRule(_USER),
    "pay": TypeRule(_USER + ("amount", "status"), PAY_STATUSES),
    "refund": TypeRule(_USER),
    "return": TypeRule(_USER),
    "review": TypeRule(_USER + ("rating",)),
    "chat": TypeRule(_USER + ("text",)),
    "coupon_use": TypeRule(_USER + ("coupon_code",)),
    "address_change": TypeRule(_USER),
    "password_change": TypeRule(_USER),
    "shipment": TypeRule(("order_id", "status"), SHIPMENT_STATUSES),
    "price_change": TypeRule(("merchant_id", "item_id", "new_price")),
}

# Numeric ranges that hold for every type: (field, low, high), inclusive; None = open.
RANGES: tuple[tuple[str, float | None, float | None], ...] = (
    ("amount", 0.0, 1e9),
    ("quantity", 1, 100_000),
    ("rating", 1, 5),
    ("old_price", 0.0, 1e9),
    ("new_price", 0.0, 1e9),
)
# Earliest and latest timestamps accepted: catches unit mistakes (ms read as s) and typos.
TS_MIN = datetime(1990, 1, 1)
TS_MAX = datetime(2100, 1, 1)
MAX_TEXT_CHARS = 20_000


def to_utc_naive(value: Any, field_name: str = "ts") -> datetime:
    """Parse an ISO 8601 string, epoch seconds or datetime into naive UTC (how the store keeps time)."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, bool):
        raise ValueError("expected a timestamp, got a boolean")
    elif isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("expected a timestamp, got a non-finite number")
        try:
            dt = datetime.fromtimestamp(float(value), tz=UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise ValueError(f"epoch seconds out of range: {value!r}") from exc
    elif isinstance(value, str):
        s = value.strip()
        if s.endswith("Z"):
            s = s[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(s)
        except ValueError as exc:
            raise ValueError(f"not an ISO 8601 timestamp: {value!r}") from exc
    else:
        raise ValueError(f"expected a timestamp, got {type(value).__name__}")
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    if not (TS_MIN <= dt < TS_MAX):
        raise ValueError(f"timestamp outside {TS_MIN.year}..{TS_MAX.year}: {value!r}")
    return dt


def derive_event_id(record: dict[str, Any]) -> str:
    """A deterministic id from an event's content, so re-ingesting the same row never duplicates it."""
    parts = [str(record.get(name)) for name in COLUMN_NAMES if name not in ("event_id", "attrs")]
    parts.append(str(record.get("attrs")))
    return "h" + hashlib.blake2b("|".join(parts).encode(), digest_size=12).hexdigest()


class Event(BaseModel):
    """One behaviour event. Fields not used by its type stay ``None``; ``attrs`` keeps the rest."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, use_enum_values=True)

    schema_version: int = Field(SCHEMA_VERSION, exclude=True)
    event_id: str | None = Field(None, max_length=128)
    ts: datetime
    type: EventType
    user_id: str | None = Field(None, max_length=128)
    session_id: str | None = Field(None, max_length=128)
    device_id: str | None = Field(None, max_length=256)
    ip: str | None = Field(None, max_length=64)
    geo: str | None = Field(None, max_length=64)
    merchant_id: str | None = Field(None, max_length=128)
    item_id: str | None = Field(None, max_length=128)
    category: str | None = Field(None, max_length=128)
    order_id: str | None = Field(None, max_length=128)
    amount: float | None = None
    currency: str | None = Field(None, max_length=8)
    status: str | None = Field(None, max_length=32)
    payment_instrument: str | None = Field(None, max_length=256)
    quantity: int | None = None
    reason: str | None = Field(None, max_length=512)
    rating: int | None = None
    text: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    language: str | None = Field(None, max_length=16)
    coupon_code: str | None = Field(None, max_length=128)
    address: str | None = Field(None, max_length=512)
    email: str | None = Field(None, max_length=256)
    phone: str | None = Field(None, max_length=64)
    channel: str | None = Field(None, max_length=64)
    carrier: str | None = Field(None, max_length=64)
    promised_ts: datetime | None = None
    actual_ts: datetime | None = None
    old_price: float | None = None
    new_price: float | None = None
    attrs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("ts", "promised_ts", "actual_ts", mode="before")
    @classmethod
    def _parse_time(cls, v: Any) -> Any:
        return None if v is None else to_utc_naive(v)

    @field_validator("amount", "old_price", "new_price")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @field_validator(
        "user_id", "session_id", "device_id", "ip", "merchant_id", "item_id", "order_id",
        "payment_instrument", "coupon_code", mode="before",
    )
    @classmethod
    def _ids_as_text(cls, v: Any) -> Any:
        # Sources often carry numeric ids; keep them as text, never as floats.
        if isinstance(v, bool):
            raise ValueError("expected an identifier, got a boolean")
        if isinstance(v, int):
            return str(v)
        if isinstance(v, str) and not v.strip():
            return None
        return v

    @model_validator(mode="after")
    def _type_rules(self) -> Event:
        for problem in check_record(self.__dict__):
            raise ValueError(f"{problem.field}: {problem.reason}")
        if self.event_id is None:
            self.event_id = derive_event_id(self.__dict__)
        return self

    def to_record(self) -> dict[str, Any]:
        """The flat record the store keeps (all columns, in order)."""
        d = self.model_dump()
        return {name: d.get(name) for name in COLUMN_NAMES}


@dataclass
class Problem:
    field: str
    reason: str
    value: Any = field(default=None)


def check_record(rec: dict[str, Any]) -> list[Problem]:
    """Apply TYPE_RULES and RANGES to one record; the batch ingester applies the same rules vectorised."""
    problems: list[Problem] = []
    etype = rec.get("type")
    etype = etype.value if isinstance(etype, EventType) else etype
    rule = TYPE_RULES.get(str(etype))
    if rule is None:
        return [Problem("type", f"unknown event type (allowed: {', '.join(EVENT_TYPES)})", etype)]
    for name in rule.required:
        if rec.get(name) in (None, ""):
            problems.append(Problem(name, f"required for '{etype}' events", None))
    status = rec.get("status")
    if rule.statuses is not None and status not in (None, "") and status not in rule.statuses:
        problems.append(Problem("status", f"must be one of {', '.join(rule.statuses)} for '{etype}'", status))
    for name, lo, hi in RANGES:
        v = rec.get(name)
        if v is None:
            continue
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            problems.append(Problem(name, f"must be between {lo} and {hi}", v))
    return problems


def parse_event(data: dict[str, Any]) -> Event:
    """Validate one event; on failure raise ``ValidationFailed`` naming the field, value and rule."""
    if not isinstance(data, dict):
        raise ValidationFailed(f"event must be a JSON object, got {type(data).__name__}", field="event")
    try:
        return Event.model_validate(data)
    except ValidationError as exc:
        raise validation_failed_from(exc, data) from None


def validation_failed_from(exc: ValidationError, data: Any = None) -> ValidationFailed:
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
    msg = str(err.get("msg", "invalid"))
    # Type rules are raised from the model validator as "field: reason"; surface that field.
    if not loc and ": " in msg:
        head, _, tail = msg.removeprefix("Value error, ").partition(": ")
        if head in COLUMN_BY_NAME:
            value = data.get(head) if isinstance(data, dict) else None
            return ValidationFailed(f"{head}: {tail} (got {value!r})", field=head, value=value)
    value = err.get("input")
    msg = msg.removeprefix("Value error, ")
    return ValidationFailed(f"{loc or 'event'}: {msg} (got {value!r})"[:500], field=loc or "event", value=value)
