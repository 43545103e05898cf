"""Property tests of the event schema: parse_event, check_record, to_utc_naive, derive_event_id."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shopguard.errors import ValidationFailed
from shopguard.events.schema import (
    COLUMN_NAMES,
    EVENT_TYPES,
    RANGES,
    TS_MAX,
    TS_MIN,
    TYPE_RULES,
    Event,
    check_record,
    derive_event_id,
    parse_event,
    to_utc_naive,
)

naive_times = st.datetimes(min_value=TS_MIN, max_value=TS_MAX - timedelta(days=2))
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30))
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                                              max_size=3), max_leaves=6)

# Values that satisfy each field a type may require.
GOOD = {"user_id": "u1", "status": None, "item_id": "i1", "amount": 10.0, "rating": 4, "text": "hello",
        "coupon_code": "SAVE10", "order_id": "o1", "merchant_id": "m1", "new_price": 5.0}


def valid_record(etype: str) -> dict:
    rule = TYPE_RULES[etype]
    rec: dict = {"type": etype, "ts": "2024-05-01T10:00:00Z"}
    for name in rule.required:
        rec[name] = rule.statuses[0] if name == "status" and rule.statuses else GOOD[name]
    return rec


# -- to_utc_naive ----------------------------------------------------------------------------------------
@given(naive_times, offsets)
def test_iso_text_with_any_offset_is_the_same_utc_instant(dt: datetime, tz: timezone) -> None:
    local = dt.replace(tzinfo=UTC).astimezone(tz)
    assert to_utc_naive(local.isoformat()) == dt
    assert to_utc_naive(local) == dt


@given(naive_times)
def test_z_suffix_and_naive_text_mean_utc(dt: datetime) -> None:
    text = dt.isoformat()
    assert to_utc_naive(text) == dt
    assert to_utc_naive(text + "Z") == dt


@given(naive_times)
def test_epoch_seconds_round_trip(dt: datetime) -> None:
    epoch = (dt - datetime(1970, 1, 1)).total_seconds()
    assert abs(to_utc_naive(epoch) - dt) < timedelta(milliseconds=1)


@given(st.one_of(st.datetimes(max_value=TS_MIN - timedelta(seconds=1)), st.datetimes(min_value=TS_MAX)))
def test_times_outside_the_bounds_are_refused(dt: datetime) -> None:
    with pytest.raises(ValueError, match="outside"):
        to_utc_naive(dt)


@given(st.one_of(st.text(max_size=40), st.floats(), st.booleans(), st.none(), st.lists(st.integers(), max_size=2)))
def test_to_utc_naive_only_ever_raises_value_error(value: object) -> None:
    try:
        out = to_utc_naive(value)
    except ValueError:
        return
    assert isinstance(out, datetime) and out.tzinfo is None and TS_MIN <= out < TS_MAX


# -- parse_event -----------------------------------------------------------------------------------------
@settings(max_examples=150)
@given(st.dictionaries(st.sampled_from(COLUMN_NAMES + ("bogus",)), json_values, max_size=8))
def test_parse_event_never_crashes_and_names_the_field(data: dict) -> None:
    try:
        event = parse_event(data)
    except ValidationFailed as exc:
        assert exc.field and exc.status_code == 422
        assert exc.field.split(".")[0] in COLUMN_NAMES + ("bogus", "event")
        return
    assert event.type in EVENT_TYPES and event.event_id


@pytest.mark.parametrize("etype", EVENT_TYPES)
def test_each_type_accepts_its_required_fields(etype: str) -> None:
    event = parse_event(valid_record(etype))
    assert event.type == etype and check_record(event.__dict__) == []


@pytest.mark.parametrize(("etype", "missing"), [(t, f) for t, r in TYPE_RULES.items() for f in r.required])
def test_each_required_field_is_named_when_missing(etype: str, missing: str) -> None:
    rec = valid_record(etype)
    rec.pop(missing)
    with pytest.raises(ValidationFailed) as err:
        parse_event(rec)
    assert err.value.field == missing
    assert f"required for '{etype}' events" in err.value.message


@given(st.sampled_from(RANGES), st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_ranges_hold_for_every_type(rng: tuple, value: float) -> None:
    name, lo, hi = rng
    rec = valid_record("order") | {name: value if name in ("amount", "old_price", "new_price") else int(value)
                                   if math.isfinite(value) and abs(value) < 2**31 else 0}
    problems = check_record(rec)
    inside = (lo is None or rec[name] >= lo) and (hi is None or rec[name] <= hi)
    assert (not any(p.field == name for p in problems)) == inside


@given(st.text(max_size=20).filter(lambda s: s.strip() not in ("success", "failure")))
def test_status_outside_the_allowed_values_is_refused(status: str) -> None:
    problems = check_record(valid_record("pay") | {"status": status})
    # An empty status is "required", any other value "must be one of": either way the field is named.
    assert [p.field for p in problems] == ["status"]


@given(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
def test_non_finite_amounts_are_refused(value: float) -> None:
    with pytest.raises(ValidationFailed) as err:
        parse_event(valid_record("pay") | {"amount": value})
    assert err.value.field == "amount"


def test_unknown_keys_are_refused_not_dropped() -> None:
    with pytest.raises(ValidationFailed) as err:
        parse_event(valid_record("view") | {"colour": "red"})
    assert err.value.field == "colour"


# -- event ids -------------------------------------------------------------------------------------------
@given(st.sampled_from(EVENT_TYPES), st.text(min_size=1, max_size=20).filter(lambda s: s.strip()))
def test_derived_ids_are_deterministic_and_content_sensitive(etype: str, user: str) -> None:
    a = parse_event(valid_record(etype) | {"user_id": user})
    b = parse_event(valid_record(etype) | {"user_id": user})
    assert a.event_id == b.event_id == derive_event_id(a.__dict__)
    c = parse_event(valid_record(etype) | {"user_id": user, "ts": "2024-05-01T10:00:01Z"})
    assert c.event_id != a.event_id


def test_given_event_id_is_kept() -> None:
    assert parse_event(valid_record("login") | {"event_id": "e-1"}).event_id == "e-1"


def test_to_record_has_every_column_in_order() -> None:
    rec = Event.model_validate(valid_record("pay")).to_record()
    assert tuple(rec) == COLUMN_NAMES
