"""Link graph and ring features: incremental == batch, point-in-time, planted rings, neighbour aggregates."""

from __future__ import annotations

import random
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pydantic
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shopguard.errors import DataError, ValidationFailed
from shopguard.features.graph import (
    RING_FEATURES,
    GraphConfig,
    RingIndex,
    aggregate_neighbours,
    build_ring_index,
    components_batch,
    link_edges_batch,
    linked_accounts,
    replay,
    ring_features,
)
from shopguard.store import EventStore

T0 = datetime(2024, 3, 1)
RING = [f"r{i}" for i in range(6)]


def background(seed: int, users: int = 40, events: int = 300) -> list[dict[str, Any]]:
    """Ordinary shoppers: own devices and cards, IPs from a pool, items from a small catalogue."""
    rng = random.Random(seed)
    out = []
    for i in range(events):
        u = rng.randrange(users)
        out.append({
            "event_id": f"b{seed}_{i:04d}", "ts": T0 + timedelta(minutes=rng.randrange(0, 14 * 24 * 60)),
            "type": rng.choice(["login", "order", "review", "pay", "view", "coupon_use"]),
            "user_id": f"u{u}", "device_id": f"dev{u}" if rng.random() < 0.9 else f"dev{rng.randrange(users)}",
            "ip": f"ip{rng.randrange(60)}", "item_id": f"i{rng.randrange(40)}",
            "payment_instrument": f"card{u}" if rng.random() < 0.5 else None,
            "address": f"addr{u}" if rng.random() < 0.3 else None,
            "status": "success", "amount": 10.0, "rating": 5, "coupon_code": "C",
        })
    return out


def planted_ring() -> list[dict[str, Any]]:
    """Six accounts on two phones, one card and one drop address, acting on day 3..5."""
    out = []
    for k, u in enumerate(RING):
        t = T0 + timedelta(days=3, hours=k)
        out.append({"event_id": f"ring_signup_{u}", "ts": t, "type": "signup", "user_id": u,
                    "device_id": f"phone{k % 2}", "ip": f"ringip{k}"})
        out.append({"event_id": f"ring_order_{u}", "ts": t + timedelta(days=1), "type": "order", "user_id": u,
                    "device_id": f"phone{k % 2}", "payment_instrument": "ringcard", "address": "drop1",
                    "amount": 20.0, "item_id": "brushed"})
        out.append({"event_id": f"ring_review_{u}", "ts": t + timedelta(days=2), "type": "review", "user_id": u,
                    "device_id": f"phone{k % 2}", "rating": 5, "item_id": "brushed"})
    return out


@pytest.fixture
def ring_store(store: EventStore) -> EventStore:
    store.append_events(background(0) + planted_ring())
    # r0 becomes a known fraudster on day 4.5 (after the ring's orders started, before its reviews).
    store.append_labels([{"entity_kind": "user", "entity_id": "r0", "label": 1, "scenario": "brushing",
                          "labeled_at": T0 + timedelta(days=4, hours=12)}])
    return store


def index_edges(index: RingIndex) -> set[tuple[str, str, str]]:
    return {(u, v, k) for u in index.users for v, ks in index.neighbours(u).items() for k in ks if u < v}


@pytest.mark.parametrize("cap,ip_hours", [(25, 24), (3, 2), (2, 0)])
def test_incremental_matches_batch(ring_store: EventStore, cap: int, ip_hours: int) -> None:
    cfg = GraphConfig(max_entity_users=cap, ip_window=timedelta(hours=ip_hours))
    index = build_ring_index(ring_store, config=cfg)
    assert sorted(index.components().values()) == components_batch(ring_store, cfg)
    assert index_edges(index) == set(map(tuple, link_edges_batch(ring_store, cfg).rows()))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, 7), st.integers(0, 600), st.integers(0, 4), st.integers(0, 4),
                  st.sampled_from(["login", "order", "review"])),
        min_size=1, max_size=40,
    )
)
def test_incremental_matches_batch_on_any_log(rows: list[tuple[int, int, int, int, str]]) -> None:
    events = [{"event_id": f"e{i:03d}", "ts": T0 + timedelta(minutes=m), "type": t, "user_id": f"u{u}",
               "device_id": f"d{d}", "ip": f"ip{ip}", "item_id": f"i{d}", "rating": 3}
              for i, (u, m, d, ip, t) in enumerate(rows)]
    cfg = GraphConfig(max_entity_users=3, ip_window=timedelta(minutes=60), item_window=timedelta(minutes=30))
    with tempfile.TemporaryDirectory() as tmp, EventStore(Path(tmp) / "s.duckdb") as store:
        store.append_events(events)
        index = build_ring_index(store, config=cfg)
        assert sorted(index.components().values()) == components_batch(store, cfg)
        assert index_edges(index) == set(map(tuple, link_edges_batch(store, cfg).rows()))


def test_planted_ring_features(ring_store: EventStore) -> None:
    feats = ring_features(ring_store).join(ring_store.events(columns=["event_id", "ts"]), on="event_id")
    assert set(RING_FEATURES) <= set(feats.columns)
    assert feats.height == ring_store.count_events()
    row = feats.filter(pl.col("event_id") == "ring_review_r5").row(0, named=True)
    assert row["ring_size"] >= 6
    assert row["ring_device_accounts"] == 2  # r1, r3 share phone1 with r5
    assert row["ring_known_fraud"] == 1  # r0, labelled before this review
    assert row["ring_fraud_share"] == pytest.approx(1 / (row["ring_size"] - 1))
    order = feats.filter(pl.col("event_id") == "ring_order_r5").row(0, named=True)
    assert order["ring_instrument_accounts"] == 5  # five ring accounts paid with the card before
    first = feats.filter(pl.col("event_id") == "ring_signup_r0").row(0, named=True)
    assert first["ring_size"] == 1 and first["ring_linked_accounts"] == 0
    # Nothing known about r0 before its label: an event before labeled_at sees no fraud.
    early = feats.filter(pl.col("event_id") == "ring_order_r1").row(0, named=True)
    assert early["ring_known_fraud"] == 0


def test_point_in_time(ring_store: EventStore) -> None:
    """Future events and labels never change an earlier event's features."""
    cut = T0 + timedelta(days=4, hours=3)
    before = ring_features(ring_store, until=cut)
    ring_store.append_events([
        {"event_id": "late_link", "ts": cut + timedelta(hours=1), "type": "login", "user_id": "u1",
         "device_id": "phone0"},
    ])
    ring_store.append_labels([{"entity_kind": "user", "entity_id": "r1", "label": 1, "scenario": "brushing",
                               "labeled_at": cut + timedelta(minutes=5)}])
    after = ring_features(ring_store).filter(pl.col("event_id").is_in(before["event_id"].to_list()))
    assert after.sort("event_id").equals(before.sort("event_id"))
    # A label stamped exactly at an event's time is not yet known to that event (strictly before).
    ring_store.append_events([{"event_id": "same_ts", "ts": cut + timedelta(minutes=5), "type": "login",
                               "user_id": "r2", "device_id": "phone0"}])
    row = ring_features(ring_store).filter(pl.col("event_id") == "same_ts").row(0, named=True)
    assert row["ring_known_fraud"] == 0  # r0 is labelled at day 4.5, r1 at exactly this ts


def test_linked_accounts_and_rings(ring_store: EventStore) -> None:
    links = linked_accounts(ring_store, "r0")
    by_user = {r["user_id"]: r for r in links}
    assert {"r2", "r4"} <= set(by_user)  # same phone
    kinds = {k["kind"] for k in by_user["r2"]["links"]}
    assert {"device", "instrument", "address"} <= kinds
    assert any(k["value"] == "ringcard" for k in by_user["r2"]["links"])
    index = build_ring_index(ring_store)
    assert linked_accounts(index, "r0") == links
    top = index.rings(1, min_size=3)[0]
    assert set(RING) <= set(top["members"])
    assert top["known_fraud"] == 1 and top["link_kinds"]["instrument"] > 0
    assert linked_accounts(index, "nobody") == []


def test_hub_cap_stops_giant_rings() -> None:
    """A busy IP links only its first max_entity_users accounts; the rest stay apart."""
    index = RingIndex(GraphConfig(max_entity_users=3))
    for i in range(10):
        index.add_event({"ts": T0 + timedelta(minutes=i), "type": "login", "user_id": f"u{i}", "ip": "office"})
    assert index.ring_size("u0") == 3 and index.ring_size("u9") == 1
    assert index.entity_accounts("ip", "office") == 10


def test_ip_window() -> None:
    index = RingIndex(GraphConfig(ip_window=timedelta(hours=1)))
    index.add_event({"ts": T0, "type": "login", "user_id": "a", "ip": "1.2.3.4"})
    index.add_event({"ts": T0 + timedelta(hours=2), "type": "login", "user_id": "b", "ip": "1.2.3.4"})
    assert index.ring_of("a") != index.ring_of("b")
    index.add_event({"ts": T0 + timedelta(hours=2, minutes=30), "type": "login", "user_id": "a", "ip": "1.2.3.4"})
    assert index.ring_of("a") == index.ring_of("b")


def test_bad_input_is_named() -> None:
    index = RingIndex()
    index.add_event({"ts": T0, "type": "login", "user_id": "a"})
    with pytest.raises(ValidationFailed) as exc:
        index.add_event({"ts": T0 - timedelta(seconds=1), "type": "login", "user_id": "b"})
    assert exc.value.field == "ts"
    with pytest.raises(ValidationFailed) as exc:
        index.add_event({"ts": "yesterday", "type": "login", "user_id": "b"})
    assert exc.value.field == "ts"
    assert index.add_event({"ts": T0, "type": "shipment", "order_id": "o1"}) == []
    with pytest.raises(pydantic.ValidationError, match="max_entity_users"):
        GraphConfig(max_entity_users=1)
    with pytest.raises(pydantic.ValidationError, match="unknown_key"):
        GraphConfig(unknown_key=1)  # type: ignore[call-arg]


def test_replay_features_match_live_index(ring_store: EventStore) -> None:
    """The service path (features_for, then add_event) gives the batch replay's numbers."""
    _, batch = replay(ring_store)
    index = RingIndex()
    labels = ring_store.labels().rows(named=True)
    live = []
    for rec in ring_store.events().iter_rows(named=True):
        for lab in labels:
            if lab["labeled_at"] < rec["ts"]:
                index.add_label(lab["entity_id"], lab["label"])
        live.append({"event_id": rec["event_id"], **index.features_for(rec)})
        index.add_event(rec)
    assert pl.DataFrame(live).select(batch.columns).equals(batch)


def test_aggregate_neighbours() -> None:
    X = np.array([[1.0, 10.0], [3.0, 0.0], [5.0, 2.0], [7.0, 7.0]])
    A = sp.csr_matrix(np.array([[0, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]))
    f = aggregate_neighbours(X, A, names=["a", "b"])
    assert f["nbr_mean__a"].to_list() == [4.0, 1.0, 1.0, 0.0]
    assert f["nbr_max__b"].to_list() == [2.0, 10.0, 10.0, 0.0]
    assert f["nbr_diff__a"].to_list() == [-3.0, 2.0, 4.0, 7.0]
    assert f["nbr_degree"].to_list() == [2.0, 1.0, 1.0, 0.0]
    g = aggregate_neighbours(pl.DataFrame({"a": X[:, 0]}), A, aggregates=("mean",))
    assert g.columns == ["a", "nbr_mean__a", "nbr_degree"]
    with pytest.raises(DataError) as exc:
        aggregate_neighbours(X, sp.eye(3), names=["a", "b"])
    assert exc.value.field == "adjacency"
    with pytest.raises(ValidationFailed):
        aggregate_neighbours(X, A, aggregates=("median",))
