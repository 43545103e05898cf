"""Feature definitions are data: validated, serialisable, versioned, and they describe themselves."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shopguard.errors import ConfigError
from shopguard.features.definitions import (
    DEFAULT_FEATURES,
    ENTITIES,
    AttrFeature,
    FeatureDef,
    FeatureSet,
    parse_duration,
)


def test_default_set_is_valid_documented_and_covers_every_entity() -> None:
    fs = FeatureSet(DEFAULT_FEATURES)
    assert len(fs.columns) == len(set(fs.columns)) >= 40
    assert all(d.doc and d.describe for d in DEFAULT_FEATURES)
    assert {d.entity for d in DEFAULT_FEATURES if d.entity} == set(ENTITIES)
    assert {"event_type", "category", "channel"} <= set(fs.categorical)
    assert set(fs.numeric) | set(fs.categorical) == set(fs.columns)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "Bad Name", "aggregate": "count", "entity": "user_id"}, "name"),
        ({"name": "x", "aggregate": "median", "entity": "user_id"}, "aggregate"),
        ({"name": "x", "aggregate": "count", "entity": "shoe_size"}, "entity"),
        ({"name": "x", "aggregate": "count", "entity": "user_id", "window": "10 minutes"}, "window"),
        ({"name": "x", "aggregate": "count", "entity": "user_id", "types": ("teleport",)}, "types"),
        ({"name": "x", "aggregate": "count", "entity": "user_id", "where": (("colour", ("red",)),)}, "where"),
        ({"name": "x", "aggregate": "mean", "entity": "user_id", "window": "1d"}, "field"),
        ({"name": "x", "aggregate": "mean", "entity": "user_id", "window": "1d", "field": "ip"}, "field"),
        ({"name": "x", "aggregate": "mean", "entity": "user_id", "window": "1d", "field": "amount",
          "delay": "7d"}, "delay"),
        ({"name": "x", "aggregate": "label_rate", "entity": "merchant_id", "window": "7d"}, "window"),
        ({"name": "x", "aggregate": "value", "field": "amount", "entity": "user_id"}, "entity"),
        ({"name": "x", "aggregate": "ratio", "inputs": ("a",)}, "inputs"),
    ],
)
def test_bad_definitions_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as exc:
        FeatureDef(**kwargs)
    assert exc.value.field is not None and exc.value.field.endswith(field)
    assert kwargs["name"] in exc.value.message


def test_round_trip_and_version_pins_the_set() -> None:
    fs = FeatureSet(DEFAULT_FEATURES, (AttrFeature("tier", "categorical"),))
    data = json.loads(json.dumps(fs.to_dict()))
    back = FeatureSet.from_dict(data)
    assert back == fs and back.version == fs.version
    changed = FeatureSet(DEFAULT_FEATURES[:-1], fs.attrs)
    assert changed.version != fs.version
    data["version"] = "0" * 16
    with pytest.raises(ConfigError, match="version mismatch"):
        FeatureSet.from_dict(data)


def test_duplicate_names_and_dangling_inputs_are_refused() -> None:
    d = DEFAULT_FEATURES[0]
    with pytest.raises(ConfigError, match="used twice"):
        FeatureSet((d, d))
    with pytest.raises(ConfigError, match="input"):
        FeatureSet((FeatureDef("r", "ratio", inputs=("missing_a", "missing_b")),))


def test_describe_in_domain_words() -> None:
    fs = FeatureSet(DEFAULT_FEATURES)
    assert fs.describe("card_failed_payments_10m", 7.0) == "7 failed payments in 10 min on this card"
    assert fs.describe("merchant_risk_7d", 0.25) == "25% of this merchant's payments in the 7d window were fraud"
    assert "missing" in fs.describe("amount", None)
    assert fs.describe("event_type", "pay") == "a pay event"


def test_filter_matches() -> None:
    d = next(x for x in DEFAULT_FEATURES if x.name == "user_failed_payments_10m")
    assert d.matches({"type": "pay", "status": "failure"})
    assert not d.matches({"type": "pay", "status": "success"})
    assert not d.matches({"type": "login", "status": "failure"})


@given(st.integers(min_value=1, max_value=10_000), st.sampled_from("smhd"))
def test_parse_duration(n: int, unit: str) -> None:
    us = parse_duration(f"{n}{unit}")
    assert us == n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit] * 1_000_000


@given(st.text(max_size=8))
def test_parse_duration_rejects_garbage_clearly(text: str) -> None:
    try:
        us = parse_duration(text)
    except ConfigError as exc:
        assert exc.field == "window"
    else:
        assert us is not None and us > 0


def test_a_missing_key_reads_as_words() -> None:
    d = FeatureDef("ip_events_10m", "count", entity="ip", window="10m")
    assert d.describe_value(None) == "no ip on this event (ip_events_10m)"
    assert FeatureDef("amount", "value", field="amount").describe_value(None) == "amount is missing"
