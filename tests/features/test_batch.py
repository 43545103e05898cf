"""The batch engine: window edges, ties, flags, attrs, and point-in-time correctness by construction."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import polars as pl
import pytest

from shopguard.errors import DataError
from shopguard.features import FeatureDef, FeatureSet, compute_features, feature_columns, feature_set
from shopguard.features.definitions import DEFAULT_FEATURES, KEY_COLUMNS
from shopguard.store import EventStore

T0 = datetime(2024, 3, 1, 12, 0)
US = timedelta(microseconds=1)


def add(store: EventStore, rows: list[dict[str, Any]]) -> None:
    for i, r in enumerate(rows):
        r.setdefault("event_id", f"x{i:03d}")
        r.setdefault("user_id", "u1")
        r.setdefault("type", "login")
    store.append_events(rows)


def values(store: EventStore, defs: list[FeatureDef], **kw: Any) -> dict[str, dict[str, Any]]:
    df = compute_features(store, definitions=defs, **kw)
    return {r["event_id"]: r for r in df.iter_rows(named=True)}


FAILED_PAY_10M = FeatureDef("card_failed_payments_10m", "count", entity="payment_instrument", window="10m",
                            types=("pay",), where=(("status", ("failure",)),))


def test_window_edges_and_ties(store: EventStore) -> None:
    pay = {"type": "pay", "status": "failure", "amount": 1.0, "payment_instrument": "c1"}
    add(store, [
        {**pay, "event_id": "a", "ts": T0},
        {**pay, "event_id": "b", "ts": T0},                                   # tie with a: sees nothing
        {**pay, "event_id": "c", "ts": T0 + timedelta(minutes=10)},            # a, b exactly 10 min before: in
        {**pay, "event_id": "d", "ts": T0 + timedelta(minutes=10) + US},       # a, b just out; c in
        {**pay, "event_id": "e", "ts": T0 + timedelta(minutes=10) + US, "status": "success"},  # tie with d
        {"event_id": "f", "type": "login", "status": "failure", "ts": T0 + timedelta(minutes=11)},  # no card
    ])
    v = values(store, [FAILED_PAY_10M])
    got = {k: r["card_failed_payments_10m"] for k, r in v.items()}
    assert got == {"a": 0.0, "b": 0.0, "c": 2.0, "d": 1.0, "e": 1.0, "f": None}


def test_user_flags_times_and_amount_stats(store: EventStore) -> None:
    base = {"user_id": "u1", "device_id": "dev1", "geo": "FR"}
    add(store, [
        {**base, "event_id": "s", "type": "signup", "ts": T0},
        {**base, "event_id": "p1", "type": "pay", "status": "success", "amount": 10.0, "ts": T0 + timedelta(hours=1)},
        {**base, "event_id": "p2", "type": "pay", "status": "success", "amount": 20.0, "ts": T0 + timedelta(hours=2)},
        {**base, "event_id": "pw", "type": "password_change", "ts": T0 + timedelta(hours=3)},
        {**base, "event_id": "p3", "type": "pay", "status": "success", "amount": 45.0, "ts": T0 + timedelta(hours=4),
         "device_id": "dev2", "geo": "CN"},
        {**base, "event_id": "p4", "type": "pay", "status": "success", "amount": 15.0, "ts": T0 + timedelta(hours=4),
         "device_id": "dev2"},  # tie with p3: dev2 is still new, p3 not yet in the history
    ])
    names = {"user_new_device", "user_new_geo", "user_since_signup_s", "user_since_password_change_s",
             "user_amount_mean_1d", "user_amount_zscore_30d", "user_amount_ratio_30d", "user_tx_1d",
             "user_since_last_event_s", "user_devices_1d"}
    defs = [d for d in DEFAULT_FEATURES if d.name in names]
    v = values(store, defs)
    assert v["s"]["user_new_device"] == 1.0 and v["s"]["user_since_signup_s"] is None
    assert v["p1"]["user_new_device"] == 0.0 and v["p1"]["user_since_signup_s"] == 3600.0
    assert v["p3"]["user_new_device"] == 1.0 and v["p3"]["user_new_geo"] == 1.0
    assert v["p4"]["user_new_device"] == 1.0 and v["p4"]["user_new_geo"] == 0.0
    assert v["p3"]["user_since_password_change_s"] == 3600.0 and v["p2"]["user_since_password_change_s"] is None
    assert v["p3"]["user_tx_1d"] == 2.0 and v["p3"]["user_amount_mean_1d"] == 15.0
    assert v["p3"]["user_amount_ratio_30d"] == 3.0
    assert v["p3"]["user_amount_zscore_30d"] == pytest.approx((45 - 15) / 5)
    assert v["p2"]["user_amount_zscore_30d"] is None  # one earlier amount: no spread yet
    assert v["p4"]["user_since_last_event_s"] == 3600.0  # the tie p3 is not "before"
    assert v["p4"]["user_devices_1d"] == 1.0


def test_merchant_risk_uses_only_labels_known_before_t(store: EventStore) -> None:
    """Handbook terminal risk: window ends `delay` before t and counts labels with labeled_at < t."""
    d = FeatureDef("m_risk", "label_rate", entity="merchant_id", window="7d", delay="7d", types=("pay",))
    n = FeatureDef("m_n", "count", entity="merchant_id", window="7d", delay="7d", types=("pay",))
    pay = {"type": "pay", "status": "success", "amount": 5.0, "merchant_id": "m1"}
    t = T0 + timedelta(days=20)
    add(store, [
        {**pay, "event_id": "old_fraud", "ts": t - timedelta(days=10)},
        {**pay, "event_id": "old_ok", "ts": t - timedelta(days=9)},
        {**pay, "event_id": "too_recent", "ts": t - timedelta(days=3)},   # inside the delay gap: not counted
        {**pay, "event_id": "edge_in", "ts": t - timedelta(days=14)},     # window start is inclusive
        {**pay, "event_id": "edge_out", "ts": t - timedelta(days=7)},     # window end is exclusive
        {**pay, "event_id": "now", "ts": t},
        {**pay, "event_id": "later", "ts": t + timedelta(days=1)},
    ])
    store.append_labels([
        {"entity_kind": "event", "entity_id": "old_fraud", "label": 1, "scenario": "card_testing", "labeled_at": t},
        {"entity_kind": "event", "entity_id": "edge_in", "label": 1, "scenario": "card_testing",
         "labeled_at": t - US},
        {"entity_kind": "event", "entity_id": "too_recent", "label": 1, "scenario": "card_testing",
         "labeled_at": t - timedelta(days=2)},
        {"entity_kind": "event", "entity_id": "old_ok", "label": 0, "scenario": "", "labeled_at": t - timedelta(days=8)},
    ])
    v = values(store, [d, n])
    assert v["now"]["m_n"] == 3.0  # edge_in, old_fraud, old_ok
    # edge_in is known 1 us before t; old_fraud's label arrives exactly at t: not yet known.
    assert v["now"]["m_risk"] == pytest.approx(1 / 3)
    # One day later: window [t-13d, t-6d) holds old_fraud, old_ok, edge_out; old_fraud's label is now known.
    assert v["later"]["m_n"] == 3.0 and v["later"]["m_risk"] == pytest.approx(1 / 3)


def test_order_labels_count_for_every_event_of_the_order(store: EventStore) -> None:
    d = FeatureDef("m_risk", "label_rate", entity="merchant_id", window="7d", delay="1d", types=("pay",))
    pay = {"type": "pay", "status": "success", "amount": 5.0, "merchant_id": "m1"}
    add(store, [
        {**pay, "event_id": "p", "order_id": "o1", "ts": T0},
        {**pay, "event_id": "q", "order_id": "o2", "ts": T0},
        {**pay, "event_id": "now", "ts": T0 + timedelta(days=3)},
    ])
    store.append_labels([{"entity_kind": "order", "entity_id": "o1", "label": 1, "scenario": "refund_abuse",
                          "labeled_at": T0 + timedelta(days=2)}])
    assert values(store, [d])["now"]["m_risk"] == 0.5


def test_future_events_and_labels_never_change_past_features(shop: EventStore) -> None:
    """Point-in-time by construction: inject the future, features before the cut stay identical."""
    cut = datetime(2024, 1, 30)
    before = compute_features(shop, until=cut)
    future = shop.events(since=cut)
    # Future copies of past events for the same entities, and labels on everything learnt at the cut.
    fakes = future.head(200).with_columns(
        pl.col("event_id") + "_f", pl.col("ts") + timedelta(days=1), pl.lit("pay").alias("type"),
        pl.lit("failure").alias("status"))
    past = shop.events(until=cut)
    copies = past.tail(200).with_columns(pl.col("event_id") + "_c", pl.lit(cut).alias("ts"))  # ties at the cut
    shop.append_events(fakes)
    shop.append_events(copies)
    shop.append_labels(pl.DataFrame({
        "entity_kind": "event", "entity_id": past["event_id"], "label": 1, "scenario": "leak",
        "labeled_at": [cut] * past.height,
    }))
    after = compute_features(shop, until=cut, definitions=feature_set(shop, until=cut))
    assert after.equals(before)
    # And from the full computation: rows before the cut are the same as when the future did not exist.
    full = compute_features(shop, definitions=feature_set(shop, until=cut)).filter(pl.col("ts") < cut)
    assert full.equals(before)


def test_since_uses_history_before_since(shop: EventStore) -> None:
    since = datetime(2024, 1, 25)
    full = compute_features(shop)
    part = compute_features(shop, since=since, types=["pay", "order"])
    expect = full.filter((pl.col("ts") >= since) & pl.col("type").is_in(["pay", "order"]))
    assert part.height == expect.height > 0
    assert part.equals(expect)
    assert part["user_tx_30d"].max() > 0


def test_output_columns_and_dtypes(shop: EventStore) -> None:
    df = compute_features(shop)
    fs = feature_set(shop)
    assert df.columns == list(KEY_COLUMNS) + fs.columns
    assert df.height == shop.count_events()
    assert df["event_id"].n_unique() == df.height
    cols = feature_columns(df)
    assert set(cols.categorical) == set(fs.categorical) and set(cols.numeric) == set(fs.numeric)
    assert all(df.schema[c] == pl.Categorical for c in cols.categorical)
    assert all(df.schema[c] == pl.Float64 for c in cols.numeric)
    assert df["ts"].is_sorted()


def test_attrs_become_features_without_code(store: EventStore) -> None:
    add(store, [
        {"event_id": "a", "ts": T0, "attrs": {"risk_score": 0.7, "tier": "gold", "vip": True,
                                               "first_seen": "2024-03-01T11:00:00Z", "is_fraud": 1,
                                               "nested": {"x": 1}}},
        {"event_id": "b", "ts": T0 + US, "attrs": {"risk_score": 3, "tier": "basic", "vip": False,
                                                    "first_seen": "2024-03-01T13:00:00+02:00"}},
        {"event_id": "c", "ts": T0 + 2 * US},
    ])
    fs = feature_set(store, [])
    kinds = {a.key: a.kind for a in fs.attrs}
    # Label-like keys never become features; objects are skipped.
    assert kinds == {"first_seen": "timestamp", "risk_score": "numeric", "tier": "categorical", "vip": "numeric"}
    df = compute_features(store, definitions=fs)
    assert df["attr_risk_score"].to_list() == [0.7, 3.0, None]
    assert df["attr_vip"].to_list() == [1.0, 0.0, None]
    assert df["attr_tier"].dtype == pl.Categorical and df["attr_tier"].to_list() == ["gold", "basic", None]
    assert df["attr_first_seen"].to_list()[:2] == [3600.0, pytest.approx(3600.0 + 1e-6)]
    assert "attr_tier" in feature_columns(df).categorical


def test_empty_and_bad_requests(store: EventStore) -> None:
    df = compute_features(store)
    assert df.height == 0 and df.columns[:4] == list(KEY_COLUMNS)
    with pytest.raises(DataError, match="types"):
        compute_features(store, types=[])
    with pytest.raises(DataError) as exc:
        compute_features(store, types=["purchase"])
    assert exc.value.field == "types" and "purchase" in exc.value.message
    with pytest.raises(DataError) as exc:
        compute_features(store, since="last tuesday")
    assert exc.value.field == "since"
    assert compute_features(store, since="2024-01-01T00:00:00Z").height == 0


def test_derived_ratio_missing_when_divisor_is_zero(store: EventStore) -> None:
    add(store, [
        {"event_id": "o", "type": "order", "amount": 10.0, "ts": T0},
        {"event_id": "r", "type": "return", "ts": T0 + timedelta(days=1)},
        {"event_id": "x", "type": "login", "status": "success", "ts": T0 + timedelta(days=2)},
    ])
    names = {"user_returns_30d", "user_orders_30d", "user_return_ratio_30d"}
    fs = FeatureSet(tuple(d for d in DEFAULT_FEATURES if d.name in names))
    v = values(store, list(fs.definitions))
    assert v["o"]["user_return_ratio_30d"] is None
    assert v["r"]["user_return_ratio_30d"] == 0.0
    assert v["x"]["user_return_ratio_30d"] == 1.0
