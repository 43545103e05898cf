"""Event targets: event labels, order labels, scenarios, and only labels known in time."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest

from shopguard.errors import ValidationFailed
from shopguard.features import event_targets
from shopguard.features.targets import label_counts, label_rule
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
    t = event_targets(store, unlabeled="negative")
    assert t.columns == ["event_id", "label", "labeled", "scenario"] and t.schema["label"] == pl.Int32
    assert t.rows() == [("o", 1, True, "refund_abuse"), ("p", 1, True, "refund_abuse"),
                        ("l", 1, True, "account_takeover"), ("n", 0, True, None), ("z", 0, True, None)]


def test_explicit_negatives_make_the_rest_unlabelled(store: EventStore) -> None:
    fill(store)  # "n" carries an explicit label 0: "z", without a label row, was never reviewed
    rule = label_rule(store)
    assert rule.unlabeled == "ignore" and "explicit negative" in rule.reason
    t = event_targets(store)
    assert dict(zip(t["event_id"], t["labeled"], strict=True)) == {"o": True, "p": True, "l": True, "n": True,
                                                                   "z": False}
    assert label_counts(t) == {"positive": 3, "negative": 1, "unlabeled": 1}
    # A label not known yet is no label: before n's review, n is unlabelled too.
    t = event_targets(store, known_before=T0 - timedelta(seconds=1), with_times=True)
    assert not t["labeled"].any() and t.columns[-2:] == ["ts", "known_at"]


def test_positives_only_keep_silence_as_legitimate(store: EventStore) -> None:
    store.append_events([{"event_id": "a", "type": "login", "user_id": "u", "ts": T0},
                         {"event_id": "b", "type": "login", "user_id": "u", "ts": T0 + timedelta(minutes=1)}])
    store.append_labels([{"entity_kind": "event", "entity_id": "a", "label": 1, "scenario": "x", "labeled_at": T0}])
    assert label_rule(store).unlabeled == "negative"
    assert event_targets(store)["labeled"].to_list() == [True, True]
    assert event_targets(store, unlabeled="ignore")["labeled"].to_list() == [True, False]
    with pytest.raises(ValidationFailed):
        label_rule(store, "sometimes")


def test_user_labels_land_on_the_users_events_when_nothing_else_is_labelled(store: EventStore) -> None:
    store.append_events([{"event_id": "a", "type": "order", "user_id": "u", "ts": T0},
                         {"event_id": "b", "type": "order", "user_id": "v", "ts": T0},
                         {"event_id": "c", "type": "order", "user_id": "w", "ts": T0}])
    store.append_labels([{"entity_kind": "user", "entity_id": "u", "label": 1, "scenario": "x", "labeled_at": T0},
                         {"entity_kind": "user", "entity_id": "v", "label": 0, "scenario": "", "labeled_at": T0}])
    rule = label_rule(store)
    assert (rule.source, rule.unlabeled) == ("user", "ignore")
    t = event_targets(store)
    assert t.select("event_id", "label", "labeled").rows() == [("a", 1, True), ("b", 0, True), ("c", 0, False)]


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
    assert t.rows() == [("l", 1, True, "account_takeover"), ("missing", 0, False, None),
                        ("o", 1, True, "refund_abuse")]
    assert event_targets(store, []).height == 0
