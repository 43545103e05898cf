"""Event targets: event labels, order labels, scenarios, and only labels known in time."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

from shopguard.features import event_targets
from shopguard.store import EventStore

T0 = datetime(2024, 2, 1)


def fill(store: EventStore) -> None:
    store.append_events([
        {"event_id": "o", "type": "order", "user_id": "u", "amount": 5.0, "order_id": "o1", "ts": T0},
        {"event_id": "p", "type": "pay", "user_id": "u", "amount": 5.0, "status": "success", "order_id": "o1",
         "ts": T0 + timedelta(minutes=1)},
        {"event_id": "l", "type": "login", "user_id": "v", "status": "failure", "ts": T0 + timedelta(minutes=2)},
        {"event_id": "n", "type": "login", "user_id": "w", "status": "success", "ts": T0 + timedelta(minutes=3)},
        {"event_id": "z", "type": "login", "user_id": "w", "status": "success", "ts": T0 + timedelta(minutes=4)},
    ])
    store.append_labels([
        {"entity_kind": "order", "entity_id": "o1", "label": 1, "scenario": "refund_abuse",
         "labeled_at": T0 + timedelta(days=30)},
        {"entity_kind": "event", "entity_id": "l", "label": 1, "scenario": "account_takeover",
         "labeled_at": T0 + timedelta(days=1)},
        {"entity_kind": "event", "entity_id": "n", "label": 0, "scenario": "", "labeled_at": T0},
        {"entity_kind": "user", "entity_id": "w", "label": 1, "scenario": "bot_ordering", "labeled_at": T0},
    ])


def test_event_and_order_labels(store: EventStore) -> None:
    fill(store)
    t = event_targets(store)
    assert t.columns == ["event_id", "label", "scenario"] and t.schema["label"] == pl.Int32
    assert t.rows() == [("o", 1, "refund_abuse"), ("p", 1, "refund_abuse"), ("l", 1, "account_takeover"),
                        ("n", 0, None), ("z", 0, None)]


def test_known_before_drops_labels_not_yet_known(store: EventStore) -> None:
    fill(store)
    t = event_targets(store, known_before=T0 + timedelta(days=2))
    assert dict(zip(t["event_id"], t["label"], strict=True)) == {"o": 0, "p": 0, "l": 1, "n": 0, "z": 0}
    # labeled_at == known_before is not "before"
    t = event_targets(store, known_before=T0 + timedelta(days=1))
    assert t["label"].sum() == 0


def test_given_ids_keep_their_order(store: EventStore) -> None:
    fill(store)
    t = event_targets(store, ["l", "missing", "o"])
    assert t.rows() == [("l", 1, "account_takeover"), ("missing", 0, None), ("o", 1, "refund_abuse")]
    assert event_targets(store, []).height == 0
