"""Feature definitions: named, documented, pure descriptions of what to compute, not how.

A ``FeatureDef`` is data (entity, aggregate, window, event filter, field, doc, reason template). The
batch engine (``features.batch``, DuckDB SQL) and the online engine (``features.online``, per-entity
state) both interpret the same definitions, and a parity test proves they give the same numbers; a
distributed engine can interpret them the same way later.

Point-in-time semantics shared by every engine:

- a window aggregate at event time ``t`` sees the events of the same entity with
  ``t - delay - window <= ts < t - delay`` (``delay`` is 0 except for label-delayed features), so events
  at the same ``ts`` as the current one never count (ties are not "before");
- ``window=None`` means all history before ``t``;
- label-based features use only labels with ``labeled_at < t``;
- an entity is an event column (``ENTITY_COLUMNS``) or a key of the event's ``attrs``, spelled
  ``"attr:<key>"`` (e.g. ``"attr:app"``); an event without the entity gets missing features;
- graph (ring) features see the account-link graph of the events strictly before ``t`` (ties excluded)
  and the user labels known before ``t`` (``features.graph.RingFeatures``).

>>> d = FeatureDef("card_failed_payments_10m", aggregate="count", entity="payment_instrument",
...                window="10m", types=("pay",), where=(("status", ("failure",)),),
...                doc="Failed payments on this card in the last 10 minutes.",
...                describe="{value:.0f} failed payments in 10 min on this card")
>>> d.window_us, d.describe_value(7.0)
(600000000, '7 failed payments in 10 min on this card')
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from shopguard.errors import ConfigError
from shopguard.events.schema import COLUMN_BY_NAME, EVENT_TYPES

#: Columns that identify the row in a feature frame; every other column is a feature.
KEY_COLUMNS: tuple[str, ...] = ("event_id", "ts", "type", "user_id")

#: Entities features can be keyed by (columns of the event record).
ENTITIES: tuple[str, ...] = ("user_id", "device_id", "ip", "payment_instrument", "merchant_id", "item_id")
#: Every event column a feature can be keyed by: the entities plus the item category.
ENTITY_COLUMNS: tuple[str, ...] = (*ENTITIES, "category")
#: An entity spelled ``"attr:<key>"`` is the value of that key in the event's ``attrs`` (as text).
ATTR_ENTITY_PREFIX = "attr:"
#: attrs keys that look like labels are never features nor entities (they would leak the answer).
LABEL_LIKE_KEYS = re.compile(r"(?i)(fraud|label|scenario|target|chargeback|is_bad|ground_truth)")
#: Ways to count the denominator of ``smoothed_label_rate``: the entity's earlier events whose label
#: (positive or negative) was known before t (a store with explicit negatives), or all its earlier events.
LABEL_DENOMINATORS: tuple[str, ...] = ("labelled", "events")

#: Aggregates over the entity's earlier events in a window.
WINDOW_AGGREGATES: tuple[str, ...] = (
    "count",          # events matching the filter
    "sum",            # sum of `field` (0 when none)
    "mean",           # mean of `field` (missing when none)
    "std",            # population standard deviation of `field` (missing when fewer than 2)
    "distinct",       # distinct non-missing values of `field`
    "zscore",         # (current `field` - mean) / std of earlier values
    "ratio_to_mean",  # current `field` / mean of earlier values
    "deviation",      # current `field` - mean of earlier values
    "user_share",     # earlier events of (entity, this user) / earlier events of the entity (missing when none)
)
#: Aggregates over the entity's history that are not plain windows.
HISTORY_AGGREGATES: tuple[str, ...] = (
    "since_last",   # seconds since the entity's last matching event
    "since_first",  # seconds since the entity's first matching event
    "is_new",       # 1 if the current `field` value was not seen with this entity in the window, else 0
    "label_rate",   # share of matching events in [t-delay-window, t-delay) with a positive label known before t
    # (positives known before t + smoothing * prior) / (denominator + smoothing), over all earlier events
    "smoothed_label_rate",
)
#: Features of the current event itself (no history).
CURRENT_AGGREGATES: tuple[str, ...] = (
    "value",            # the numeric `field` as it is
    "category",         # the text `field` as a categorical
    "hour",             # hour of day of `ts` (0-23)
    "weekday",          # day of week of `ts` (0 = Monday)
    "length",           # characters in the text `field`
    "seconds_between",  # `other` - `field`, both timestamps, in seconds
    "field_ratio",      # `field` / `other`, both numbers
)
#: Features of the account-link graph (``features.graph``): the user's ring as of the events before ``t``.
GRAPH_AGGREGATES: tuple[str, ...] = (
    "ring_size",                # accounts in the user's ring (connected component), the user included
    "linked_accounts",          # accounts directly linked to the user (through `field` only, when given)
    "ring_distinct",            # distinct `field` values (devices, cards, addresses) used by the ring's members
    "ring_known_fraud",         # other ring members with a fraud label known before t
    "ring_known_fraud_share",   # ... as a share of the other ring members (missing when alone)
    "linked_known_fraud_share",  # share of the directly linked accounts with a fraud label known before t
    "linked_mean",              # mean over the linked accounts of their matching events so far
    "linked_max",               # max over the linked accounts of their matching events so far
)
#: Event columns that link accounts (``features.graph.LINK_FIELDS``), usable as a graph feature's ``field``.
GRAPH_LINK_FIELDS: tuple[str, ...] = ("device_id", "ip", "address", "payment_instrument", "item_id")
#: Features derived from other features of the same set.
DERIVED_AGGREGATES: tuple[str, ...] = ("ratio",)  # inputs[0] / inputs[1], missing when the divisor is 0
AGGREGATES = WINDOW_AGGREGATES + HISTORY_AGGREGATES + CURRENT_AGGREGATES + GRAPH_AGGREGATES + DERIVED_AGGREGATES

_UNITS_US = {"s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}
_DURATION = re.compile(r"^(\d+)([smhd])$")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_NUMERIC_FIELDS = tuple(c.name for c in COLUMN_BY_NAME.values() if c.kind in ("float", "int"))
_TS_FIELDS = tuple(c.name for c in COLUMN_BY_NAME.values() if c.kind == "ts")


def parse_duration(text: str | None, field_name: str = "window") -> int | None:
    """``"10m"``, ``"1h"``, ``"30d"`` → microseconds; ``None`` stays ``None`` (all history)."""
    if text is None:
        return None
    m = _DURATION.match(str(text).strip())
    if not m or int(m.group(1)) <= 0:
        raise ConfigError(f"{field_name}: expected a positive duration like 10m, 1h, 7d (got {text!r})",
                          field=field_name, value=text)
    return int(m.group(1)) * _UNITS_US[m.group(2)]


@dataclass(frozen=True)
class FeatureDef:
    """One named feature: what to aggregate, over which entity's events, in which window.

    ``where`` is a tuple of ``(column, allowed values)`` pairs that all must hold, e.g.
    ``(("status", ("failure",)),)``; ``types`` limits the event types counted. The filter selects the
    *earlier* events that are aggregated; every event gets the feature value.
    """

    name: str
    aggregate: str
    entity: str | None = None
    window: str | None = None
    types: tuple[str, ...] | None = None
    where: tuple[tuple[str, tuple[str, ...]], ...] = ()
    field: str | None = None
    other: str | None = None
    delay: str | None = None
    inputs: tuple[str, ...] = ()
    doc: str = ""
    describe: str = "{name} = {value:.3g}"
    #: ``smoothed_label_rate`` only: the rate it shrinks towards, the weight of that prior (in events)
    #: and what the denominator counts (``LABEL_DENOMINATORS``). Fixed when the set is built, so every
    #: engine computes the same number.
    prior: float | None = None
    smoothing: float | None = None
    denominator: str | None = None

    def __post_init__(self) -> None:
        # Lists from JSON become tuples, so definitions stay hashable and compare equal after a round trip.
        object.__setattr__(self, "types", tuple(self.types) if self.types is not None else None)
        object.__setattr__(self, "where", tuple((str(k), tuple(v)) for k, v in self.where))
        object.__setattr__(self, "inputs", tuple(self.inputs))
        self.validate()

    # -- derived properties ---------------------------------------------------------------------------
    @property
    def window_us(self) -> int | None:
        return parse_duration(self.window, "window")

    @property
    def delay_us(self) -> int:
        return parse_duration(self.delay, "delay") or 0

    @property
    def categorical(self) -> bool:
        return self.aggregate == "category"

    @property
    def attr_key(self) -> str | None:
        """The attrs key of an ``"attr:<key>"`` entity, else ``None``."""
        if self.entity is not None and self.entity.startswith(ATTR_ENTITY_PREFIX):
            return self.entity[len(ATTR_ENTITY_PREFIX):]
        return None

    @property
    def kind(self) -> str:
        """``window``, ``history``, ``current``, ``graph`` or ``derived``: which part of an engine runs it."""
        if self.aggregate in WINDOW_AGGREGATES:
            return "window"
        if self.aggregate in HISTORY_AGGREGATES:
            return "history"
        if self.aggregate in CURRENT_AGGREGATES:
            return "current"
        if self.aggregate in GRAPH_AGGREGATES:
            return "graph"
        return "derived"

    @property
    def filter_key(self) -> tuple[Any, ...]:
        return (self.types, self.where)

    def matches(self, record: dict[str, Any]) -> bool:
        """Does an event pass this definition's filter (types and where)?"""
        if self.types is not None and record.get("type") not in self.types:
            return False
        return all(record.get(col) in allowed for col, allowed in self.where)

    def describe_value(self, value: Any) -> str:
        """The reason text for a value, in the domain's words."""
        if value is None:
            if self.entity is not None and self.entity != "user_id":
                # A window over a key the event does not carry (no IP, no device): say that, in words.
                key = self.entity.removeprefix("attr:").removesuffix("_id").replace("_", " ")
                return f"no {key} on this event ({self.name})"
            return f"{self.name} is missing"
        try:
            return self.describe.format(value=value, name=self.name)
        except (ValueError, TypeError, KeyError, IndexError):
            return f"{self.name} = {value}"

    # -- validation ------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``ConfigError`` naming the feature and the field when the definition cannot run."""

        def bad(field_name: str, problem: str, value: Any) -> ConfigError:
            return ConfigError(f"feature {self.name!r}: {field_name} {problem} (got {value!r})",
                               field=f"{self.name}.{field_name}", value=value)

        if not _NAME.match(self.name or ""):
            raise bad("name", "must be snake_case letters, digits and _", self.name)
        if self.aggregate not in AGGREGATES:
            raise bad("aggregate", f"must be one of {', '.join(AGGREGATES)}", self.aggregate)
        parse_duration(self.window, f"{self.name}.window")
        parse_duration(self.delay, f"{self.name}.delay")
        self._validate_smoothing(bad)
        kind = self.kind
        if kind == "graph":
            self._validate_graph(bad)
            return
        if kind in ("window", "history"):
            key = self.attr_key
            if key is None and self.entity not in ENTITY_COLUMNS:
                raise bad("entity", f"must be one of {', '.join(ENTITY_COLUMNS)} or {ATTR_ENTITY_PREFIX}<attrs key>",
                          self.entity)
            if key is not None and (not key or not key.isprintable() or '"' in key or "\\" in key):
                raise bad("entity", "must name an attrs key without quotes, backslashes or control characters",
                          self.entity)
            if key is not None and LABEL_LIKE_KEYS.search(key):
                raise bad("entity", "names a label-like attrs key (it would leak the answer)", self.entity)
        elif self.entity is not None:
            raise bad("entity", f"must be empty for a {kind} feature", self.entity)
        for t in self.types or ():
            if t not in EVENT_TYPES:
                raise bad("types", f"has an unknown event type (allowed: {', '.join(EVENT_TYPES)})", t)
        for col, _allowed in self.where:
            if col not in COLUMN_BY_NAME or COLUMN_BY_NAME[col].kind == "json":
                raise bad("where", "names an unknown column", col)
        if self.aggregate == "user_share":
            if self.entity == "user_id":
                raise bad("entity", "must not be user_id for user_share (the share is the user's)", self.entity)
            if self.field is not None:
                raise bad("field", "must be empty for user_share (it counts the event's user_id)", self.field)
        needs_field = self.aggregate not in ("count", "since_last", "since_first", "label_rate", "hour",
                                             "weekday", "ratio", "smoothed_label_rate", "user_share")
        if needs_field and self.field is None:
            raise bad("field", f"is required for aggregate {self.aggregate!r}", None)
        if self.field is not None and self.field not in COLUMN_BY_NAME:
            raise bad("field", "names an unknown column", self.field)
        numeric_aggs = ("sum", "mean", "std", "zscore", "ratio_to_mean", "deviation", "value", "field_ratio")
        if self.aggregate in numeric_aggs and self.field not in _NUMERIC_FIELDS:
            raise bad("field", f"must be numeric ({', '.join(_NUMERIC_FIELDS)})", self.field)
        if self.aggregate in ("seconds_between", "field_ratio"):
            allowed = _TS_FIELDS if self.aggregate == "seconds_between" else _NUMERIC_FIELDS
            if self.field not in allowed or self.other not in allowed:
                raise bad("other", f"and field must both be in {', '.join(allowed)}", (self.field, self.other))
        if self.delay is not None and self.aggregate not in ("count", "label_rate"):
            raise bad("delay", "is only supported for count and label_rate", self.delay)
        if self.aggregate == "label_rate" and (self.window is None or self.delay is None):
            raise bad("window", "and delay are both required for label_rate", (self.window, self.delay))
        if self.aggregate == "ratio" and len(self.inputs) != 2:
            raise bad("inputs", "must name exactly two features (numerator, divisor)", self.inputs)

    def _validate_smoothing(self, bad: Any) -> None:
        """``prior``, ``smoothing`` and ``denominator`` belong to ``smoothed_label_rate`` and it needs all three."""
        params = {"prior": self.prior, "smoothing": self.smoothing, "denominator": self.denominator}
        if self.aggregate != "smoothed_label_rate":
            for name, value in params.items():
                if value is not None:
                    raise bad(name, "is only used by smoothed_label_rate", value)
            return
        for name, value in params.items():
            if value is None:
                raise bad(name, "is required for smoothed_label_rate", None)
        if isinstance(self.prior, bool) or not isinstance(self.prior, int | float) or not 0 <= self.prior <= 1:
            raise bad("prior", "must be a number in [0, 1]", self.prior)
        if (isinstance(self.smoothing, bool) or not isinstance(self.smoothing, int | float)
                or not 0 < self.smoothing < float("inf")):
            raise bad("smoothing", "must be a positive number", self.smoothing)
        if self.denominator not in LABEL_DENOMINATORS:
            raise bad("denominator", f"must be one of {', '.join(LABEL_DENOMINATORS)}", self.denominator)
        if self.window is not None or self.delay is not None:
            raise bad("window", "and delay must be empty for smoothed_label_rate (it reads all history)",
                      (self.window, self.delay))
        if self.field is not None:
            raise bad("field", "must be empty for smoothed_label_rate", self.field)

    def _validate_graph(self, bad: Any) -> None:
        """Graph features are the user's: no window or delay (the link rules are the set's ``graph``)."""
        if self.entity != "user_id":
            raise bad("entity", "must be user_id for a graph feature", self.entity)
        if self.window is not None or self.delay is not None:
            raise bad("window", "and delay must be empty for a graph feature (link windows live in the "
                      "feature set's graph config)", (self.window, self.delay))
        if self.inputs or self.other is not None:
            raise bad("inputs", "and other must be empty for a graph feature", (self.inputs, self.other))
        if self.aggregate in ("linked_accounts", "ring_distinct"):
            if self.aggregate == "ring_distinct" and self.field is None:
                raise bad("field", "is required for aggregate 'ring_distinct'", None)
            if self.field is not None and self.field not in GRAPH_LINK_FIELDS:
                raise bad("field", f"must be a linking column ({', '.join(GRAPH_LINK_FIELDS)})", self.field)
        elif self.field is not None:
            raise bad("field", f"must be empty for aggregate {self.aggregate!r}", self.field)
        if (self.types is not None or self.where) and self.aggregate not in ("linked_mean", "linked_max"):
            raise bad("types", f"and where are only used by linked_mean / linked_max, not {self.aggregate!r}",
                      (self.types, self.where))
        for t in self.types or ():
            if t not in EVENT_TYPES:
                raise bad("types", f"has an unknown event type (allowed: {', '.join(EVENT_TYPES)})", t)
        for col, _allowed in self.where:
            if col not in COLUMN_BY_NAME or COLUMN_BY_NAME[col].kind == "json":
                raise bad("where", "names an unknown column", col)

    # -- serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["types"] = list(self.types) if self.types is not None else None
        d["where"] = [[k, list(v)] for k, v in self.where]
        d["inputs"] = list(self.inputs)
        for k in ("prior", "smoothing", "denominator"):
            if d[k] is None:
                del d[k]  # absent unless used: the versions of sets without them stay as they were
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureDef:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"feature definition has unknown keys {sorted(unknown)}", field=sorted(unknown)[0])
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"feature definition is incomplete: {exc}", field="feature", value=data) from exc


@dataclass(frozen=True)
class AttrFeature:
    """A feature taken from a key of the event's ``attrs`` (a field the team's own log brings).

    ``kind``: ``numeric`` (numbers and booleans as they are), ``categorical`` (text, handled natively by
    the learner) or ``timestamp`` (seconds from that moment to the event).
    """

    key: str
    kind: str

    @property
    def name(self) -> str:
        return "attr_" + (re.sub(r"[^a-z0-9]+", "_", self.key.lower()).strip("_") or "key")

    @property
    def categorical(self) -> bool:
        return self.kind == "categorical"

    def describe_value(self, value: Any) -> str:
        if self.kind == "timestamp":
            return f"{self.key} was {value:.0f} s before the event" if value is not None else f"{self.key} missing"
        return f"{self.key} = {value}"


# -- the default feature set ----------------------------------------------------------------------------
_FAIL = (("status", ("failure",)),)
_OK = (("status", ("success",)),)


def _f(name: str, aggregate: str, describe: str, doc: str, **kw: Any) -> FeatureDef:
    return FeatureDef(name=name, aggregate=aggregate, describe=describe, doc=doc, **kw)


DEFAULT_FEATURES: tuple[FeatureDef, ...] = (
    # ---- the current event ----
    _f("amount", "value", "amount {value:.2f}", "Money amount of this event.", field="amount"),
    _f("quantity", "value", "{value:.0f} units", "Units ordered or carted.", field="quantity"),
    _f("rating", "value", "rating {value:.0f}", "Review rating.", field="rating"),
    _f("hour", "hour", "at {value:.0f}h UTC", "Hour of day (UTC)."),
    _f("weekday", "weekday", "on weekday {value:.0f}", "Day of week, 0 = Monday."),
    _f("event_type", "category", "a {value} event", "Event type, as a category.", field="type"),
    _f("category", "category", "item category {value}", "Item category.", field="category"),
    _f("channel", "category", "via {value}", "Signup or login channel.", field="channel"),
    _f("text_length", "length", "{value:.0f} characters of text", "Length of review/chat text.", field="text"),
    _f("price_change_ratio", "field_ratio", "price changed to {value:.2f}x", "New price / old price.",
       field="new_price", other="old_price"),
    _f("delivery_delay_s", "seconds_between", "delivered {value:.0f} s after the promised time",
       "Actual minus promised delivery time, seconds.", field="promised_ts", other="actual_ts"),
    # ---- user: velocity ----
    _f("user_events_10m", "count", "{value:.0f} actions in 10 min by this account",
       "Events by the user in the last 10 minutes.", entity="user_id", window="10m"),
    _f("user_events_1h", "count", "{value:.0f} actions in 1 h by this account",
       "Events by the user in the last hour.", entity="user_id", window="1h"),
    _f("user_failed_logins_10m", "count", "{value:.0f} failed logins in 10 min on this account",
       "Failed logins of the user in the last 10 minutes.", entity="user_id", window="10m",
       types=("login",), where=_FAIL),
    _f("user_failed_logins_1d", "count", "{value:.0f} failed logins in 24 h on this account",
       "Failed logins of the user in the last day.", entity="user_id", window="1d", types=("login",), where=_FAIL),
    _f("user_failed_payments_10m", "count", "{value:.0f} failed payments in 10 min by this account",
       "Failed payments of the user in the last 10 minutes.", entity="user_id", window="10m",
       types=("pay",), where=_FAIL),
    _f("user_failed_payments_1d", "count", "{value:.0f} failed payments in 24 h by this account",
       "Failed payments of the user in the last day.", entity="user_id", window="1d", types=("pay",), where=_FAIL),
    _f("user_orders_1h", "count", "{value:.0f} orders in 1 h by this account",
       "Orders by the user in the last hour.", entity="user_id", window="1h", types=("order",)),
    _f("user_orders_30d", "count", "{value:.0f} orders in 30 days by this account",
       "Orders by the user in the last 30 days.", entity="user_id", window="30d", types=("order",)),
    _f("user_returns_30d", "count", "{value:.0f} returns/refunds in 30 days by this account",
       "Returns and refunds of the user in the last 30 days.", entity="user_id", window="30d",
       types=("return", "refund")),
    _f("user_return_ratio_30d", "ratio", "returns are {value:.0%} of this account's orders in 30 days",
       "Returns and refunds / orders, last 30 days (order-to-return ratio).",
       inputs=("user_returns_30d", "user_orders_30d")),
    _f("user_coupons_7d", "count", "{value:.0f} coupons used in 7 days by this account",
       "Coupon uses of the user in the last 7 days.", entity="user_id", window="7d", types=("coupon_use",)),
    _f("user_reviews_1d", "count", "{value:.0f} reviews in 24 h by this account",
       "Reviews written by the user in the last day.", entity="user_id", window="1d", types=("review",)),
    # ---- user: spending (Fraud Detection Handbook customer features) ----
    _f("user_tx_1d", "count", "{value:.0f} payments in 24 h by this customer",
       "Successful payments of the user in the last day.", entity="user_id", window="1d", types=("pay",), where=_OK),
    _f("user_tx_7d", "count", "{value:.0f} payments in 7 days by this customer",
       "Successful payments of the user in the last 7 days.", entity="user_id", window="7d",
       types=("pay",), where=_OK),
    _f("user_tx_30d", "count", "{value:.0f} payments in 30 days by this customer",
       "Successful payments of the user in the last 30 days.", entity="user_id", window="30d",
       types=("pay",), where=_OK),
    _f("user_amount_mean_1d", "mean", "average payment {value:.2f} in 24 h",
       "Mean successful payment amount of the user, last day.", entity="user_id", window="1d",
       types=("pay",), where=_OK, field="amount"),
    _f("user_amount_mean_7d", "mean", "average payment {value:.2f} in 7 days",
       "Mean successful payment amount of the user, last 7 days.", entity="user_id", window="7d",
       types=("pay",), where=_OK, field="amount"),
    _f("user_amount_mean_30d", "mean", "average payment {value:.2f} in 30 days",
       "Mean successful payment amount of the user, last 30 days.", entity="user_id", window="30d",
       types=("pay",), where=_OK, field="amount"),
    _f("user_amount_sum_1d", "sum", "{value:.2f} paid in 24 h by this customer",
       "Total successful payments of the user, last day.", entity="user_id", window="1d",
       types=("pay",), where=_OK, field="amount"),
    _f("user_amount_zscore_30d", "zscore", "amount {value:+.1f} standard deviations from this customer's usual",
       "Amount relative to the user's own payments in 30 days (z-score).", entity="user_id", window="30d",
       types=("pay",), where=_OK, field="amount"),
    _f("user_amount_ratio_30d", "ratio_to_mean", "amount {value:.1f}x this customer's average",
       "Amount / the user's mean successful payment in 30 days.", entity="user_id", window="30d",
       types=("pay",), where=_OK, field="amount"),
    _f("user_amount_zscore_7d", "zscore", "amount {value:+.1f} standard deviations from this week's payments",
       "Amount relative to the user's own payments in 7 days (z-score).", entity="user_id", window="7d",
       types=("pay",), where=_OK, field="amount"),
    _f("user_amount_ratio_7d", "ratio_to_mean", "amount {value:.1f}x this customer's 7-day average",
       "Amount / the user's mean successful payment in 7 days.", entity="user_id", window="7d",
       types=("pay",), where=_OK, field="amount"),
    _f("user_amount_std_30d", "std", "this customer's payments vary by {value:.2f} over 30 days",
       "Standard deviation of the user's successful payment amounts, last 30 days.", entity="user_id",
       window="30d", types=("pay",), where=_OK, field="amount"),
    _f("user_spend_shift_7d_30d", "ratio", "this customer's week average is {value:.1f}x the month's",
       "Mean payment in 7 days / mean payment in 30 days: a recent jump in spending (a stolen card).",
       inputs=("user_amount_mean_7d", "user_amount_mean_30d")),
    _f("user_new_merchant", "is_new", "first payment of this customer at this merchant in 30 days",
       "1 if the user did not pay this merchant in the last 30 days (customer-terminal pair novelty).",
       entity="user_id", window="30d", types=("pay",), field="merchant_id"),
    _f("user_merchants_30d", "distinct", "{value:.0f} merchants paid by this customer in 30 days",
       "Distinct merchants the user paid, last 30 days.", entity="user_id", window="30d", types=("pay",),
       field="merchant_id"),
    # ---- user: identity and devices ----
    _f("user_devices_1d", "distinct", "{value:.0f} devices on this account in 24 h",
       "Distinct devices the user acted from, last day.", entity="user_id", window="1d", field="device_id"),
    _f("user_ips_1d", "distinct", "{value:.0f} IP addresses on this account in 24 h",
       "Distinct IPs the user acted from, last day.", entity="user_id", window="1d", field="ip"),
    _f("user_instruments_7d", "distinct", "{value:.0f} cards on this account in 7 days",
       "Distinct payment instruments of the user, last 7 days.", entity="user_id", window="7d",
       field="payment_instrument"),
    _f("user_new_device", "is_new", "first time this account uses this device",
       "1 if the user never used this device before.", entity="user_id", field="device_id"),
    _f("user_new_ip", "is_new", "new IP address for this account (30 days)",
       "1 if the user did not use this IP in the last 30 days.", entity="user_id", window="30d", field="ip"),
    _f("user_new_geo", "is_new", "first time this account acts from this location",
       "1 if the user never acted from this geo before.", entity="user_id", field="geo"),
    _f("user_new_instrument", "is_new", "first time this account uses this card",
       "1 if the user never used this payment instrument before.", entity="user_id", field="payment_instrument"),
    _f("user_since_signup_s", "since_first", "account created {value:.0f} s ago",
       "Seconds since the user's signup.", entity="user_id", types=("signup",)),
    _f("user_since_first_event_s", "since_first", "account first seen {value:.0f} s ago",
       "Seconds since the user's first event (account age when signup is not logged).", entity="user_id"),
    _f("user_since_last_event_s", "since_last", "{value:.0f} s since this account's previous action",
       "Seconds since the user's previous event.", entity="user_id"),
    _f("user_since_password_change_s", "since_last", "password changed {value:.0f} s ago",
       "Seconds since the user's last password change.", entity="user_id", types=("password_change",)),
    _f("user_since_address_change_s", "since_last", "address changed {value:.0f} s ago",
       "Seconds since the user's last address change.", entity="user_id", types=("address_change",)),
    # ---- device ----
    _f("device_users_1d", "distinct", "{value:.0f} accounts on this device in 24 h",
       "Distinct users on the device, last day.", entity="device_id", window="1d", field="user_id"),
    _f("device_users_30d", "distinct", "{value:.0f} accounts on this device in 30 days",
       "Distinct users on the device, last 30 days.", entity="device_id", window="30d", field="user_id"),
    _f("device_events_1h", "count", "{value:.0f} actions in 1 h from this device",
       "Events from the device, last hour.", entity="device_id", window="1h"),
    _f("device_failed_logins_1h", "count", "{value:.0f} failed logins in 1 h from this device",
       "Failed logins from the device, last hour.", entity="device_id", window="1h", types=("login",), where=_FAIL),
    _f("device_coupons_7d", "count", "{value:.0f} coupons used from this device in 7 days",
       "Coupon uses from the device, last 7 days.", entity="device_id", window="7d", types=("coupon_use",)),
    _f("device_signups_30d", "count", "{value:.0f} accounts created on this device in 30 days",
       "Signups from the device, last 30 days.", entity="device_id", window="30d", types=("signup",)),
    # ---- IP ----
    _f("ip_users_1h", "distinct", "{value:.0f} accounts from this IP in 1 h",
       "Distinct users from the IP, last hour.", entity="ip", window="1h", field="user_id"),
    _f("ip_users_1d", "distinct", "{value:.0f} accounts from this IP in 24 h",
       "Distinct users from the IP, last day.", entity="ip", window="1d", field="user_id"),
    _f("ip_events_10m", "count", "{value:.0f} actions in 10 min from this IP",
       "Events from the IP, last 10 minutes.", entity="ip", window="10m"),
    _f("ip_failed_logins_10m", "count", "{value:.0f} failed logins in 10 min from this IP",
       "Failed logins from the IP, last 10 minutes.", entity="ip", window="10m", types=("login",), where=_FAIL),
    _f("ip_signups_1d", "count", "{value:.0f} signups in 24 h from this IP",
       "Signups from the IP, last day.", entity="ip", window="1d", types=("signup",)),
    # ---- payment instrument ----
    _f("card_failed_payments_10m", "count", "{value:.0f} failed payments in 10 min on this card",
       "Failed payments on the instrument, last 10 minutes.", entity="payment_instrument", window="10m",
       types=("pay",), where=_FAIL),
    _f("card_payments_1h", "count", "{value:.0f} payment attempts in 1 h on this card",
       "Payment attempts on the instrument, last hour.", entity="payment_instrument", window="1h", types=("pay",)),
    _f("card_users_7d", "distinct", "{value:.0f} accounts used this card in 7 days",
       "Distinct users of the instrument, last 7 days.", entity="payment_instrument", window="7d", field="user_id"),
    _f("card_merchants_1h", "distinct", "{value:.0f} merchants charged on this card in 1 h",
       "Distinct merchants charged on the instrument, last hour.", entity="payment_instrument", window="1h",
       types=("pay",), field="merchant_id"),
    # ---- merchant (terminal) ----
    _f("merchant_tx_1d", "count", "{value:.0f} payments at this merchant in 24 h",
       "Payments at the merchant, last day.", entity="merchant_id", window="1d", types=("pay",)),
    _f("merchant_tx_7d", "count", "{value:.0f} payments at this merchant in 7 days",
       "Payments at the merchant, last 7 days.", entity="merchant_id", window="7d", types=("pay",)),
    _f("merchant_tx_30d", "count", "{value:.0f} payments at this merchant in 30 days",
       "Payments at the merchant, last 30 days.", entity="merchant_id", window="30d", types=("pay",)),
    _f("merchant_amount_mean_7d", "mean", "this merchant's payments averaged {value:.2f} in 7 days",
       "Mean payment amount at the merchant, last 7 days.", entity="merchant_id", window="7d",
       types=("pay",), field="amount"),
    _f("merchant_amount_mean_30d", "mean", "this merchant's payments averaged {value:.2f} in 30 days",
       "Mean payment amount at the merchant, last 30 days.", entity="merchant_id", window="30d",
       types=("pay",), field="amount"),
    _f("merchant_amount_zscore_30d", "zscore", "amount {value:+.1f} standard deviations from this merchant's usual",
       "Amount relative to the merchant's payments in 30 days (z-score).", entity="merchant_id", window="30d",
       types=("pay",), field="amount"),
    _f("merchant_amount_ratio_7d", "ratio_to_mean", "amount {value:.1f}x this merchant's 7-day average",
       "Amount / the merchant's mean payment in 7 days.", entity="merchant_id", window="7d",
       types=("pay",), field="amount"),
    _f("merchant_users_7d", "distinct", "{value:.0f} customers paid this merchant in 7 days",
       "Distinct users paying the merchant, last 7 days.", entity="merchant_id", window="7d", types=("pay",),
       field="user_id"),
    _f("merchant_activity_shift_1d_30d", "ratio", "{value:.2f} of this merchant's 30-day payments came in 24 h",
       "Payments in 1 day / payments in 30 days at the merchant (a sudden burst).",
       inputs=("merchant_tx_1d", "merchant_tx_30d")),
    _f("merchant_refunds_7d", "count", "{value:.0f} refunds at this merchant in 7 days",
       "Refunds and returns at the merchant, last 7 days.", entity="merchant_id", window="7d",
       types=("refund", "return")),
    _f("merchant_price_changes_1d", "count", "{value:.0f} price changes by this merchant in 24 h",
       "Price changes by the merchant, last day.", entity="merchant_id", window="1d", types=("price_change",)),
    *(
        f
        for w in ("1d", "7d", "14d", "30d")
        for f in (
            _f(f"merchant_tx_delayed_{w}", "count", f"{{value:.0f}} payments at this merchant in the {w} window",
               f"Payments at the merchant in the {w} before the 7-day label delay (Handbook terminal count).",
               entity="merchant_id", window=w, delay="7d", types=("pay",)),
            _f(f"merchant_risk_{w}", "label_rate",
               f"{{value:.0%}} of this merchant's payments in the {w} window were fraud",
               f"Share of the merchant's payments in the {w} ending 7 days ago with a fraud label known "
               "before this event (Handbook terminal risk with label delay).",
               entity="merchant_id", window=w, delay="7d", types=("pay",)),
        )
    ),
    # ---- item ----
    _f("item_reviews_1h", "count", "{value:.0f} reviews of this item in 1 h",
       "Reviews of the item, last hour (review burst).", entity="item_id", window="1h", types=("review",)),
    _f("item_reviews_1d", "count", "{value:.0f} reviews of this item in 24 h",
       "Reviews of the item, last day.", entity="item_id", window="1d", types=("review",)),
    _f("item_reviews_30d", "count", "{value:.0f} reviews of this item in 30 days",
       "Reviews of the item, last 30 days.", entity="item_id", window="30d", types=("review",)),
    _f("item_review_burst", "ratio", "{value:.0%} of this item's 30-day reviews came in the last 24 h",
       "Reviews in 1 day / reviews in 30 days.", inputs=("item_reviews_1d", "item_reviews_30d")),
    _f("item_rating_deviation", "deviation", "rating {value:+.1f} from this item's average",
       "Rating minus the item's mean rating so far.", entity="item_id", types=("review",), field="rating"),
    _f("item_orders_1h", "count", "{value:.0f} orders of this item in 1 h",
       "Orders of the item, last hour.", entity="item_id", window="1h", types=("order",)),
)


def _g(name: str, aggregate: str, describe: str, doc: str, **kw: Any) -> FeatureDef:
    return FeatureDef(name=name, aggregate=aggregate, entity="user_id", describe=describe, doc=doc, **kw)


#: The user's ring in the account-link graph (``features.graph``): who shares devices, IPs, addresses,
#: cards or items with this account, and what is known about them. Link rules: the set's ``graph``.
RING_FEATURE_DEFS: tuple[FeatureDef, ...] = (
    _g("user_ring_size", "ring_size", "account is in a ring of {value:.0f} linked accounts",
       "Accounts in the user's ring (linked through shared devices, IPs within 24 h, addresses, cards or "
       "items acted on within 30 min, transitively), the user included; 1 when not linked."),
    _g("user_linked_accounts", "linked_accounts", "account is linked to {value:.0f} others",
       "Accounts directly linked to the user, through anything they share."),
    _g("user_linked_accounts_shared_device", "linked_accounts",
       "account is linked to {value:.0f} others through shared devices",
       "Accounts that used a device this user used.", field="device_id"),
    _g("user_linked_accounts_shared_ip_24h", "linked_accounts",
       "account used the same IP address as {value:.0f} others within 24 h",
       "Accounts that used an IP address within 24 h of this user using it.", field="ip"),
    _g("user_linked_accounts_shared_address", "linked_accounts",
       "account ships to the same address as {value:.0f} others",
       "Accounts that shipped to an address this user shipped to.", field="address"),
    _g("user_linked_accounts_shared_card", "linked_accounts",
       "account pays with the same card as {value:.0f} others",
       "Accounts that paid with a payment instrument this user paid with.", field="payment_instrument"),
    _g("user_linked_accounts_coitem_30m", "linked_accounts",
       "account reviewed, ordered or used coupons on the same item as {value:.0f} others within 30 min",
       "Accounts that reviewed / ordered / used a coupon on the same item within 30 min of this user.",
       field="item_id"),
    _g("user_ring_devices", "ring_distinct", "this account's ring of accounts uses {value:.0f} devices",
       "Distinct devices used by the accounts of the user's ring.", field="device_id"),
    _f("user_ring_accounts_per_device", "ratio", "{value:.1f} accounts per device in this account's ring",
       "Accounts in the ring / devices they use: many accounts on few devices is an account farm.",
       inputs=("user_ring_size", "user_ring_devices")),
    _g("user_ring_cards", "ring_distinct", "this account's ring of accounts pays with {value:.0f} cards",
       "Distinct payment instruments used by the accounts of the user's ring.", field="payment_instrument"),
    _f("user_ring_accounts_per_card", "ratio", "{value:.1f} accounts per card in this account's ring",
       "Accounts in the ring / cards they pay with.", inputs=("user_ring_size", "user_ring_cards")),
    _g("user_ring_known_fraud", "ring_known_fraud", "{value:.0f} known fraudsters in this account's ring",
       "Other accounts of the user's ring with a fraud label known before this event."),
    _g("user_ring_known_fraud_share", "ring_known_fraud_share",
       "{value:.0%} of the accounts in this account's ring are known fraudsters",
       "Known fraudsters / other accounts of the ring (labels known before this event); missing when alone."),
    _g("user_linked_known_fraud_share", "linked_known_fraud_share",
       "{value:.0%} of the accounts linked to this one are known fraudsters",
       "Known fraudsters among the directly linked accounts (labels known before this event)."),
    _g("user_linked_mean_events", "linked_mean", "linked accounts have {value:.0f} actions each on average",
       "Mean number of events of the directly linked accounts so far (GADBench-style neighbour mean)."),
    _g("user_linked_mean_orders", "linked_mean", "linked accounts placed {value:.1f} orders each on average",
       "Mean number of orders of the directly linked accounts so far.", types=("order",)),
    _g("user_linked_mean_reviews", "linked_mean", "linked accounts wrote {value:.1f} reviews each on average",
       "Mean number of reviews of the directly linked accounts so far.", types=("review",)),
    _g("user_linked_mean_coupons", "linked_mean", "linked accounts used {value:.1f} coupons each on average",
       "Mean number of coupon uses of the directly linked accounts so far.", types=("coupon_use",)),
    _g("user_linked_max_failed_payments", "linked_max", "a linked account has {value:.0f} failed payments",
       "Most failed payments of any directly linked account so far.", types=("pay",), where=_FAIL),
    _g("user_linked_max_refunds", "linked_max", "a linked account has {value:.0f} returns or refunds",
       "Most returns and refunds of any directly linked account so far.", types=("refund", "return")),
)
#: Names of the ring features, for rules and docs.
RING_FEATURE_NAMES: tuple[str, ...] = tuple(d.name for d in RING_FEATURE_DEFS)
DEFAULT_FEATURES = DEFAULT_FEATURES + RING_FEATURE_DEFS


# -- feature sets ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureSet:
    """The definitions plus the attrs-derived features a model was trained with, and their version.

    A model pins its ``FeatureSet`` (``to_dict``) so that scoring computes exactly the same columns.
    """

    definitions: tuple[FeatureDef, ...] = DEFAULT_FEATURES
    attrs: tuple[AttrFeature, ...] = ()
    _by_name: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    #: Link rules of the account graph that differ from ``features.graph.GraphConfig``'s defaults, as
    #: sorted ``(key, JSON value)`` pairs (hashable; part of the version only when set).
    graph: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "definitions", tuple(self.definitions))
        object.__setattr__(self, "attrs", tuple(self.attrs))
        object.__setattr__(self, "graph", _graph_overrides(self.graph))
        by_name: dict[str, Any] = {}
        for item in (*self.definitions, *self.attrs):
            if item.name in by_name or item.name in KEY_COLUMNS:
                raise ConfigError(f"feature name {item.name!r} is used twice", field="name", value=item.name)
            by_name[item.name] = item
        for d in self.definitions:
            for inp in d.inputs:
                target = by_name.get(inp)
                if target is None or not isinstance(target, FeatureDef) or target.kind == "derived":
                    raise ConfigError(f"feature {d.name!r}: input {inp!r} is not a non-derived feature of this set",
                                      field=f"{d.name}.inputs", value=inp)
        object.__setattr__(self, "_by_name", by_name)

    @property
    def columns(self) -> list[str]:
        """Feature column names, in frame order."""
        return [d.name for d in self.definitions] + [a.name for a in self.attrs]

    @property
    def categorical(self) -> list[str]:
        return [n for n in self.columns if self._by_name[n].categorical]

    @property
    def numeric(self) -> list[str]:
        return [n for n in self.columns if not self._by_name[n].categorical]

    @property
    def version(self) -> str:
        """A short hash of the definitions and attrs: equal versions compute equal columns."""
        payload = json.dumps(self.to_dict(include_version=False), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def graph_definitions(self) -> list[FeatureDef]:
        """The graph (ring) features of the set, run by ``features.graph.RingFeatures``."""
        return [d for d in self.definitions if d.kind == "graph"]

    def graph_config(self) -> Any:
        """The set's link rules as a ``features.graph.GraphConfig`` (imported lazily: scipy is heavy)."""
        from shopguard.features.graph import GraphConfig

        try:
            return GraphConfig(**{k: list(v) if isinstance(v, tuple) else v for k, v in self.graph})
        except ValueError as exc:
            raise ConfigError(f"feature set graph config: {exc}", field="graph", value=dict(self.graph)) from None

    def without_graph(self) -> FeatureSet:
        """The same set without ring features (and the ratios built on them): a cheaper batch pass."""
        graph = {d.name for d in self.graph_definitions}
        keep = tuple(d for d in self.definitions if d.name not in graph and not set(d.inputs) & graph)
        return FeatureSet(keep, self.attrs)

    def get(self, name: str) -> FeatureDef | AttrFeature:
        try:
            return self._by_name[name]  # type: ignore[no-any-return]
        except KeyError:
            raise ConfigError(f"unknown feature {name!r}", field="feature", value=name) from None

    def describe(self, name: str, value: Any) -> str:
        """Reason text for one feature value (used by the decision layer's reason codes)."""
        return str(self.get(name).describe_value(value))

    def to_dict(self, include_version: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "definitions": [x.to_dict() for x in self.definitions],
            "attrs": [{"key": a.key, "kind": a.kind} for a in self.attrs],
        }
        if self.graph:
            d["graph"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.graph}
        if include_version:
            d["version"] = self.version
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSet:
        fs = cls(tuple(FeatureDef.from_dict(x) for x in data.get("definitions", [])),
                 tuple(AttrFeature(**a) for a in data.get("attrs", [])), graph=data.get("graph") or ())
        if "version" in data and data["version"] != fs.version:
            raise ConfigError(f"feature set version mismatch: stored {data['version']}, computed {fs.version}",
                              field="version", value=data["version"])
        return fs


def _graph_overrides(graph: Any) -> tuple[tuple[str, Any], ...]:
    """Validate link-rule overrides with ``GraphConfig`` and keep those that differ from its defaults, as
    sorted ``(key, JSON value)`` pairs (timedeltas as ISO 8601 durations), so equal rules hash equally."""
    items = dict(graph.items() if isinstance(graph, dict) else graph)
    if not items:
        return ()
    from shopguard.features.graph import GraphConfig

    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in items.items()}
    try:
        given = GraphConfig(**plain).model_dump(mode="json")
    except ValueError as exc:
        raise ConfigError(f"feature set graph config: {exc}", field="graph", value=plain) from None
    default = GraphConfig().model_dump(mode="json")
    return tuple(sorted((k, tuple(given[k]) if isinstance(given[k], list) else given[k])
                        for k in items if given[k] != default[k]))


def as_feature_set(definitions: FeatureSet | tuple[FeatureDef, ...] | list[FeatureDef] | None) -> FeatureSet:
    """Accept a FeatureSet, a sequence of definitions or ``None`` (the defaults, without attrs)."""
    if definitions is None:
        return FeatureSet(DEFAULT_FEATURES)
    if isinstance(definitions, FeatureSet):
        return definitions
    return FeatureSet(tuple(definitions))
