"""The event store: migrations, idempotent appends, reads, stats."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest

from shopguard.errors import DataError
from shopguard.events.schema import COLUMN_NAMES, parse_event
from shopguard.store import EventStore
from shopguard.store.migrations import LATEST_VERSION


def _events(n: int, start: datetime = datetime(2024, 3, 1)) -> list[dict]:
    return [
        parse_event(
            {"type": "pay", "ts": start + timedelta(minutes=i), "user_id": f"u{i % 3}", "amount": 10.0 + i,
             "status": "success" if i % 4 else "failure", "attrs": {"k": i}}
        ).to_record()
        for i in range(n)
    ]


def test_new_store_is_migrated(store: EventStore) -> None:
    assert store.schema_version() == LATEST_VERSION
    assert store.count_events() == 0


def test_reopening_keeps_data_and_version(tmp_path) -> None:
    path = tmp_path / "s.duckdb"
    with EventStore(path) as s:
        s.append_events(_events(5))
    with EventStore(path) as s:
        assert s.count_events() == 5
        assert s.schema_version() == LATEST_VERSION
    with EventStore(path, read_only=True) as s:
        assert s.stats()["events"] == 5


def test_append_is_idempotent_on_event_id(store: EventStore) -> None:
    evs = _events(10)
    assert store.append_events(evs) == 10
    assert store.append_events(evs) == 0
    # duplicates inside one batch count once
    assert store.append_events(_events(12)[10:] * 2) == 2
    assert store.count_events() == 12


def test_events_round_trip_all_columns_in_time_order(store: EventStore) -> None:
    evs = _events(6)
    store.append_events(list(reversed(evs)))
    df = store.events()
    assert tuple(df.columns) == COLUMN_NAMES
    assert df["ts"].is_sorted()
    assert df["amount"].to_list() == [e["amount"] for e in evs]
    assert df["attrs"][0] == '{"k":0}'


def test_events_filters(store: EventStore) -> None:
    store.append_events(_events(10))
    t0 = datetime(2024, 3, 1)
    assert store.events(since=t0 + timedelta(minutes=5)).height == 5
    assert store.events(until=t0 + timedelta(minutes=5)).height == 5
    assert store.events(user_ids=["u0"]).height == 4
    assert store.events(types=["login"]).height == 0
    assert store.events(columns=["event_id", "ts"], limit=3).shape == (3, 2)


def test_frames_with_missing_columns_and_tz_aware_times_are_conformed(store: EventStore) -> None:
    df = pl.DataFrame(
        {"event_id": ["a", "b"], "ts": ["2024-03-01T10:00:00+02:00", "2024-03-01T11:00:00Z"],
         "type": ["view", "view"], "user_id": ["u", "u"]}
    )
    assert store.append_events(df) == 2
    got = store.events()
    assert got["ts"].to_list() == [datetime(2024, 3, 1, 8), datetime(2024, 3, 1, 11)]
    assert got["amount"].null_count() == 2


def test_event_without_id_is_refused(store: EventStore) -> None:
    with pytest.raises(DataError, match="event_id"):
        store.append_events([{"ts": datetime(2024, 1, 1), "type": "view", "user_id": "u"}])


def test_labels_idempotent_and_filtered_by_when_known(store: EventStore) -> None:
    rows = [
        {"entity_kind": "event", "entity_id": "e1", "label": 1, "scenario": "card_testing",
         "labeled_at": datetime(2024, 3, 5)},
        {"entity_kind": "user", "entity_id": "u1", "label": 1, "labeled_at": "2024-03-09T00:00:00"},
    ]
    assert store.append_labels(rows) == 2
    assert store.append_labels(rows) == 0
    assert store.labels(known_before=datetime(2024, 3, 6)).height == 1
    assert store.labels(entity_kind="user")["scenario"].to_list() == [""]
    # replace updates the label in place
    store.append_labels([{**rows[0], "label": 0}], replace=True)
    assert store.labels(entity_kind="event")["label"].to_list() == [0]


def test_labels_need_their_columns(store: EventStore) -> None:
    with pytest.raises(DataError, match="labeled_at"):
        store.append_labels([{"entity_kind": "event", "entity_id": "e", "label": 1}])


def test_decisions_idempotent(store: EventStore) -> None:
    d = {"event_id": "e1", "decided_at": datetime(2024, 3, 1), "score": 0.9, "risk_level": "high",
         "action": "review", "reasons": '["x"]', "rule_hits": "[]", "model_version": "v1", "latency_ms": 1.2}
    assert store.append_decisions([d]) == 1
    assert store.append_decisions([d]) == 0
    assert store.decision("e1")["action"] == "review"
    assert store.decision("nope") is None


def test_stats_counts_by_type_and_scenario(store: EventStore) -> None:
    store.append_events(_events(4))
    store.append_labels([{"entity_kind": "event", "entity_id": "x", "label": 1, "scenario": "card_testing",
                          "labeled_at": datetime(2024, 3, 2)}])
    st = store.stats()
    assert st["events_by_type"] == {"pay": 4}
    assert st["labels_by_scenario"] == [
        {"entity_kind": "event", "scenario": "card_testing", "positive": 1, "negative": 0}
    ]
