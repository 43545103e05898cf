"""Ring (account-graph) features as feature definitions: both engines, point in time, ties, labels, text."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import polars as pl
import pytest

from shopguard.errors import ConfigError
from shopguard.features import FeatureDef, FeatureSet, OnlineFeatureEngine, compute_features, feature_set
from shopguard.features.definitions import DEFAULT_FEATURES, RING_FEATURE_DEFS, RING_FEATURE_NAMES
from shopguard.features.graph import RingFeatures, ring_feature_frame
from shopguard.store import EventStore


def mismatches(online: list[dict[str, Any]], batch: pl.DataFrame) -> list[tuple[str, str, Any, Any]]:
    """(event, feature, online, batch) for every value the engines disagree on (1e-9)."""
    bad = []
    for got, row in zip(online, batch.iter_rows(named=True), strict=True):
        for name, value in got.items():
            want = row[name]
            if (value is None) != (want is None) or (value is not None and value != pytest.approx(want, abs=1e-9)):
                bad.append((row["event_id"], name, value, want))
    return bad

T0 = datetime(2024, 3, 1)
RING = [f"r{i}" for i in range(6)]
RING_SET = FeatureSet(RING_FEATURE_DEFS)  # the graph features and the ratios built on them
GRAPH_NAMES = [d.name for d in RING_FEATURE_DEFS if d.kind == "graph"]


def farm() -> list[dict[str, Any]]:
    """Six accounts on two phones, one card and one drop address, plus two honest shoppers.

    The farm's orders share one timestamp per phone pair, so ties happen where the links are made.
    """
    out: list[dict[str, Any]] = []
    for k, u in enumerate(RING):
        t = T0 + timedelta(hours=k)
        out.append({"event_id": f"s_{u}", "ts": t, "type": "signup", "user_id": u, "device_id": f"phone{k % 2}",
                    "ip": f"ip{k}"})
        out.append({"event_id": f"o_{u}", "ts": T0 + timedelta(days=1, minutes=k // 2), "type": "order",
                    "user_id": u, "device_id": f"phone{k % 2}", "address": "drop1", "item_id": "brushed",
                    "amount": 3.0})
        out.append({"event_id": f"p_{u}", "ts": T0 + timedelta(days=1, minutes=5 + k), "type": "pay", "user_id": u,
                    "device_id": f"phone{k % 2}", "payment_instrument": "ringcard", "amount": 3.0,
                    "status": "failure" if k < 2 else "success"})
        out.append({"event_id": f"v_{u}", "ts": T0 + timedelta(days=3, hours=k), "type": "review", "user_id": u,
                    "device_id": f"phone{k % 2}", "item_id": "brushed", "rating": 5})
    for h in ("h1", "h2"):
        out.append({"event_id": f"s_{h}", "ts": T0 + timedelta(hours=1), "type": "signup", "user_id": h,
                    "device_id": f"own_{h}", "ip": f"home_{h}"})
        out.append({"event_id": f"o_{h}", "ts": T0 + timedelta(days=2), "type": "order", "user_id": h,
                    "device_id": f"own_{h}", "address": f"addr_{h}", "item_id": "book", "amount": 40.0})
    return out


@pytest.fixture
def farm_store(store: EventStore) -> EventStore:
    store.append_events(farm())
    # r0's failed payment is confirmed fraud on day 2, r1 is a known fraudster from day 2 12:00 on.
    store.append_labels([
        {"entity_kind": "event", "entity_id": "p_r0", "label": 1, "scenario": "brushing",
         "labeled_at": T0 + timedelta(days=2)},
        {"entity_kind": "user", "entity_id": "r1", "label": 1, "scenario": "brushing",
         "labeled_at": T0 + timedelta(days=2, hours=12)},
    ])
    return store


def by_id(frame: pl.DataFrame) -> dict[str, dict[str, Any]]:
    return {r["event_id"]: r for r in frame.iter_rows(named=True)}


def test_ring_features_are_default_named_documented_definitions() -> None:
    names = {d.name for d in DEFAULT_FEATURES}
    assert set(RING_FEATURE_NAMES) <= names
    for name in ("user_ring_size", "user_ring_accounts_per_device", "user_linked_accounts_shared_ip_24h",
                 "user_ring_known_fraud_share"):
        assert name in names
    for d in RING_FEATURE_DEFS:
        assert d.doc and (d.kind == "graph" and d.entity == "user_id" or set(d.inputs) <= set(GRAPH_NAMES))
    fs = feature_set()
    assert set(RING_FEATURE_NAMES) <= set(fs.numeric)


def test_planted_farm_point_in_time(farm_store: EventStore) -> None:
    rows = by_id(compute_features(farm_store))
    # Signups: r2 finds r0 on phone0; r3 finds r1 on phone1.
    assert rows["s_r0"]["user_ring_size"] == 1 and rows["s_r0"]["user_linked_accounts"] == 0
    assert rows["s_r2"]["user_ring_size"] == 1  # r2 is not linked before its own first event
    assert rows["o_r2"]["user_linked_accounts_shared_device"] == 2  # r0 and r4 on phone0 by then
    # r0 and r1 ship to drop1 at the same minute: r1's order does not see that link (a tie), so its ring is
    # still its phone's three accounts; a minute later both phones' rings are one.
    assert rows["o_r1"]["user_ring_size"] == 3 and rows["o_r1"]["user_linked_accounts_shared_address"] == 0
    assert rows["o_r2"]["user_ring_size"] == 6
    assert rows["p_r5"]["user_ring_size"] == 6
    assert rows["p_r5"]["user_linked_accounts_shared_card"] == 0  # its own first use of the card is this event
    assert rows["v_r5"]["user_linked_accounts_shared_card"] == 5
    assert rows["p_r5"]["user_ring_devices"] == 2 and rows["p_r5"]["user_ring_accounts_per_device"] == 3
    assert rows["p_r5"]["user_ring_cards"] == 1 and rows["p_r5"]["user_ring_accounts_per_card"] == 6
    assert rows["p_r5"]["user_linked_max_failed_payments"] == 1
    # Honest shoppers stay alone, with the neighbour aggregates missing.
    assert rows["o_h1"]["user_ring_size"] == 1 and rows["o_h1"]["user_linked_mean_orders"] is None
    assert rows["o_h1"]["user_ring_known_fraud_share"] is None and rows["o_h1"]["user_ring_accounts_per_device"] == 1
    # Labels count only once known: before day 2 nobody is a known fraudster.
    assert rows["p_r5"]["user_ring_known_fraud"] == 0
    # Reviews on day 3: r0 (event label, day 2) is known; r1 (day 2 12:00) too.
    assert rows["v_r2"]["user_ring_known_fraud"] == 2
    assert rows["v_r2"]["user_ring_known_fraud_share"] == pytest.approx(2 / 5)
    assert rows["v_r0"]["user_ring_known_fraud"] == 1  # r0 itself does not count
    assert rows["v_r2"]["user_linked_known_fraud_share"] == pytest.approx(2 / 5)


def test_label_known_exactly_at_the_event_does_not_count(farm_store: EventStore) -> None:
    farm_store.append_events([{"event_id": "late", "ts": T0 + timedelta(days=2), "type": "login", "user_id": "r3",
                               "device_id": "phone1"}])
    rows = by_id(compute_features(farm_store, since=T0 + timedelta(days=2), until=T0 + timedelta(days=2, hours=1)))
    assert rows["late"]["user_ring_known_fraud"] == 0  # labeled_at == ts is not "before"


def test_future_events_and_labels_do_not_change_the_past(farm_store: EventStore) -> None:
    cut = T0 + timedelta(days=1, minutes=5)
    before = compute_features(farm_store, until=cut).select(["event_id", *RING_FEATURE_NAMES])
    # A tie at the cut, later events that would merge rings, and labels of every account known at the cut.
    farm_store.append_events([
        {"event_id": "tie", "ts": cut, "type": "login", "user_id": "h1", "device_id": "phone0"},
        {"event_id": "later", "ts": cut + timedelta(hours=1), "type": "login", "user_id": "h2", "device_id": "phone1"},
    ])
    farm_store.append_labels([{"entity_kind": "user", "entity_id": u, "label": 1, "scenario": "x", "labeled_at": cut}
                              for u in [*RING, "h1", "h2"]])
    after = compute_features(farm_store).select(["event_id", *RING_FEATURE_NAMES])
    after = after.filter(pl.col("event_id").is_in(before["event_id"].to_list()))
    assert after.sort("event_id").equals(before.sort("event_id"))


def test_since_and_types_give_the_full_replay_rows(farm_store: EventStore) -> None:
    full = compute_features(farm_store).select(["event_id", "ts", "type", *RING_FEATURE_NAMES])
    cut = T0 + timedelta(days=1, minutes=3)
    part = compute_features(farm_store, since=cut, types=["pay"]).select(["event_id", *RING_FEATURE_NAMES])
    want = full.filter((pl.col("ts") >= cut) & (pl.col("type") == "pay")).drop("ts", "type")
    assert part.height == want.height > 0
    assert part.sort("event_id").equals(want.sort("event_id"))


@pytest.mark.parametrize("labels_upfront", [True, False])
def test_online_matches_batch_on_the_farm(farm_store: EventStore, labels_upfront: bool) -> None:
    batch = compute_features(farm_store, definitions=RING_SET)
    engine = OnlineFeatureEngine(RING_SET)
    labels = farm_store.labels().sort("labeled_at").iter_rows(named=True)
    pending = next(labels, None)
    if labels_upfront:
        engine.add_labels(farm_store.labels())
        pending = None
    online = []
    for r in farm_store.events().iter_rows(named=True):
        while pending is not None and pending["labeled_at"] < r["ts"]:
            engine.learn_label(pending["entity_kind"], pending["entity_id"], pending["label"], pending["labeled_at"])
            pending = next(labels, None)
        online.append(engine.update(r))
    assert mismatches(online, batch) == []
    assert batch["user_ring_known_fraud"].max() == 2


def test_online_ties_do_not_see_each_other() -> None:
    engine = OnlineFeatureEngine(RING_SET)
    t = datetime(2024, 1, 1)
    a = engine.update({"event_id": "a", "ts": t, "type": "login", "user_id": "a", "device_id": "d"})
    b = engine.update({"event_id": "b", "ts": t, "type": "login", "user_id": "b", "device_id": "d"})
    c = engine.update({"event_id": "c", "ts": t + timedelta(seconds=1), "type": "login", "user_id": "b"})
    assert a["user_ring_size"] == b["user_ring_size"] == 1.0
    assert c["user_ring_size"] == 2.0 and c["user_linked_accounts_shared_device"] == 1.0


def test_rebuild_then_stream_matches_batch(farm_store: EventStore) -> None:
    cut = T0 + timedelta(days=1, minutes=2)
    batch = compute_features(farm_store, definitions=RING_SET, since=cut)
    engine = OnlineFeatureEngine(RING_SET)
    engine.rebuild(farm_store, until=cut)
    online = [engine.update(r) for r in farm_store.events(since=cut).iter_rows(named=True)]
    assert mismatches(online, batch) == []
    assert engine.ring_index is not None and engine.ring_index.ring_size("r0") == 6


def test_a_late_event_is_learnt_not_refused() -> None:
    engine = OnlineFeatureEngine(RING_SET)
    t = datetime(2024, 1, 1, 12)
    engine.update({"event_id": "a", "ts": t, "type": "login", "user_id": "a", "device_id": "d"})
    engine.update({"event_id": "b", "ts": t - timedelta(hours=1), "type": "login", "user_id": "b", "device_id": "d"})
    out = engine.update({"event_id": "c", "ts": t + timedelta(hours=1), "type": "login", "user_id": "a"})
    assert out["user_ring_size"] == 2.0


def test_events_without_a_user_get_missing_ring_features(farm_store: EventStore) -> None:
    farm_store.append_events([{"event_id": "ship", "ts": T0 + timedelta(days=5), "type": "shipment",
                               "order_id": "o1", "status": "delivered"}])
    row = by_id(compute_features(farm_store, since=T0 + timedelta(days=5)))["ship"]
    assert all(row[n] is None for n in RING_FEATURE_NAMES)


def test_rings_can_be_turned_off(farm_store: EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
    cols = compute_features(farm_store, definitions=feature_set(farm_store, rings=False)).columns
    assert not set(RING_FEATURE_NAMES) & set(cols) and "user_ring_accounts_per_device" not in cols
    monkeypatch.setenv("SHOPGUARD_RING_FEATURES", "0")
    assert not set(RING_FEATURE_NAMES) & set(feature_set(farm_store).columns)
    monkeypatch.setenv("SHOPGUARD_RING_FEATURES", "1")
    assert set(RING_FEATURE_NAMES) <= set(feature_set(farm_store).columns)


def test_a_log_with_nothing_that_links_accounts_gets_no_ring_features(store: EventStore) -> None:
    """A card-payment log (customer, terminal, amount) has no device, IP, address, card or item."""
    store.append_events([{"event_id": f"t{i}", "ts": T0 + timedelta(minutes=i), "type": "pay", "user_id": f"c{i % 3}",
                          "merchant_id": "m1", "amount": 5.0, "status": "success"} for i in range(6)])
    assert not set(RING_FEATURE_NAMES) & set(feature_set(store).columns)
    assert set(RING_FEATURE_NAMES) <= set(feature_set(store, rings=True).columns)


def test_graph_config_is_pinned_with_the_set(farm_store: EventStore) -> None:
    fs = FeatureSet(RING_SET.definitions, graph={"max_entity_users": 2})
    assert fs.version != RING_SET.version and "graph" not in RING_SET.to_dict()
    again = FeatureSet.from_dict(fs.to_dict())
    assert again == fs and again.graph_config().max_entity_users == 2
    capped = by_id(compute_features(farm_store, definitions=fs))
    assert capped["p_r5"]["user_ring_size"] < 6  # only two accounts per phone, card or address may link
    with pytest.raises(ConfigError) as exc:
        FeatureSet(RING_SET.definitions, graph={"max_entity_users": 1})
    assert exc.value.field == "graph"
    # Durations are stored as JSON; restating a default adds nothing to the version.
    hour = FeatureSet(RING_SET.definitions, graph={"ip_window": timedelta(hours=1), "item_window": "PT30M"})
    assert hour.to_dict()["graph"] == {"ip_window": "PT1H"}
    assert FeatureSet.from_dict(hour.to_dict()).graph_config().ip_window == timedelta(hours=1)


@pytest.mark.parametrize(("kw", "field"), [
    ({"aggregate": "ring_size", "entity": "device_id"}, "entity"),
    ({"aggregate": "ring_size", "entity": "user_id", "window": "1d"}, "window"),
    ({"aggregate": "ring_distinct", "entity": "user_id"}, "field"),
    ({"aggregate": "linked_accounts", "entity": "user_id", "field": "amount"}, "field"),
    ({"aggregate": "ring_size", "entity": "user_id", "types": ("pay",)}, "types"),
    ({"aggregate": "linked_mean", "entity": "user_id", "types": ("nope",)}, "types"),
])
def test_bad_graph_definitions_name_the_field(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as exc:
        FeatureDef("bad_ring", **kw)
    assert exc.value.field == f"bad_ring.{field}"


@pytest.mark.parametrize(("name", "value", "text"), [
    ("user_ring_size", 15.0, "account is in a ring of 15 linked accounts"),
    ("user_linked_accounts_shared_device", 14.0, "account is linked to 14 others through shared devices"),
    ("user_ring_accounts_per_device", 4.5, "4.5 accounts per device in this account's ring"),
    ("user_ring_known_fraud_share", 0.25, "25% of the accounts in this account's ring are known fraudsters"),
    ("user_linked_accounts_shared_ip_24h", 3.0, "account used the same IP address as 3 others within 24 h"),
])
def test_reason_text_in_domain_words(name: str, value: float, text: str) -> None:
    assert feature_set().describe(name, value) == text


def test_ring_feature_frame_directly(farm_store: EventStore) -> None:
    frame = ring_feature_frame(farm_store, RING_FEATURE_DEFS)
    assert frame.columns == ["event_id", *GRAPH_NAMES] and frame.height == len(farm())
    assert ring_feature_frame(farm_store, []).height == 0
    assert RingFeatures(RING_FEATURE_DEFS).columns == GRAPH_NAMES


def brute_force(rf: RingFeatures, record: dict[str, Any], counts: dict[str, dict[str, int]]) -> list[Any]:
    """The graph features recomputed from the index's links, without the incremental aggregates."""
    idx, user = rf.index, record["user_id"]
    known = user in idx._parent
    size = idx.ring_size(user) if known else 1
    nbrs = idx.neighbours(user) if known else {}
    members = [u for u in idx.users if idx.ring_of(u) == idx.ring_of(user)] if known else []
    others_fraud = sum(1 for u in members if u != user and u in idx._known_fraud)
    out: list[Any] = []
    for d in rf.definitions:
        kind = {"device_id": "device", "ip": "ip", "address": "address", "payment_instrument": "instrument",
                "item_id": "item"}.get(d.field or "")
        vals = [counts[d.name].get(v, 0) for v in nbrs]
        agg = d.aggregate
        if agg == "ring_size":
            out.append(float(size))
        elif agg == "linked_accounts":
            out.append(float(sum(1 for ks in nbrs.values() if kind is None or kind in ks)))
        elif agg == "ring_distinct":
            out.append(float(len(idx.ring_values(user, kind))) if known else 0.0)  # type: ignore[arg-type]
        elif agg == "ring_known_fraud":
            out.append(float(others_fraud))
        elif agg == "ring_known_fraud_share":
            out.append(others_fraud / (size - 1) if size > 1 else None)
        elif agg == "linked_known_fraud_share":
            out.append(sum(v in idx._known_fraud for v in nbrs) / len(nbrs) if nbrs else None)
        elif agg == "linked_mean":
            out.append(sum(vals) / len(vals) if vals else None)
        else:
            out.append(float(max(vals)) if vals else None)
    return out


def test_incremental_aggregates_equal_a_recount(log_factory: Any) -> None:
    """Neighbour sums / maxima, per-kind link counts and fraud counts kept incrementally == recomputed."""
    events, labels = log_factory(seed=5, bursts=60, days=10)
    rf = RingFeatures(RING_FEATURE_DEFS)
    for lab in labels:
        rf.add_label(lab["entity_kind"], lab["entity_id"], lab["label"], lab["labeled_at"])
    counts: dict[str, dict[str, int]] = {d.name: {} for d in rf.definitions}
    checked = 0
    for i, rec in enumerate(events):
        rf.advance(rec["ts"])
        if i % 7 == 0 and rec.get("user_id"):
            assert rf.values(rec) == pytest.approx(brute_force(rf, rec, counts)), rec["event_id"]
            checked += 1
        rf.learn(rec, rec["ts"])
        for d in rf.definitions:
            if d.aggregate in ("linked_mean", "linked_max") and d.matches(rec):
                counts[d.name][rec["user_id"]] = counts[d.name].get(rec["user_id"], 0) + 1
    assert checked > 50 and rf.index.ring_size(events[-1]["user_id"]) > 3
