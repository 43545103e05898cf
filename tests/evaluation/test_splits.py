"""The time-ordered split with a label-delay gap, and removal of known-fraud entities."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest
from pydantic import ValidationError

from shopguard.errors import DataError
from shopguard.evaluation.splits import SplitConfig, known_fraud_entities, make_split, remove_known_entities

T0 = datetime(2024, 1, 1)


def test_windows_are_ordered_with_gap() -> None:
    sp = make_split(T0, T0 + timedelta(days=30), SplitConfig(train_days=10, delay_days=5, test_days=7))
    assert sp.train_start < sp.validation_start < sp.train_end
    assert sp.test_start - sp.train_end == timedelta(days=5)
    assert sp.test_end - sp.test_start == timedelta(days=7)
    assert sp.train_end - sp.train_start == timedelta(days=10)
    assert sp.test_end > T0 + timedelta(days=30)  # the last event is inside the test window
    assert sp.label_cutoff == sp.test_start


def test_handbook_placement() -> None:
    start = datetime(2018, 7, 25)
    sp = make_split(datetime(2018, 4, 1), datetime(2018, 9, 30),
                    SplitConfig(train_days=7, delay_days=7, test_days=7, train_start=start))
    assert (sp.train_start, sp.train_end) == (start, datetime(2018, 8, 1))
    assert (sp.test_start, sp.test_end) == (datetime(2018, 8, 8), datetime(2018, 8, 15))


def test_all_history_and_too_short() -> None:
    sp = make_split(T0, T0 + timedelta(days=30))
    assert sp.train_start == T0
    with pytest.raises(DataError, match="too short"):
        make_split(T0, T0 + timedelta(days=10), SplitConfig(delay_days=7, test_days=7))


def test_config_is_typed() -> None:
    with pytest.raises(ValidationError):
        SplitConfig(test_days=0)
    with pytest.raises(ValidationError):
        SplitConfig(unknown=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        SplitConfig(train_start=T0)


def test_known_entities_removed_from_later_days_only() -> None:
    labels = pl.DataFrame({
        "entity_kind": ["event", "user"], "entity_id": ["e1", "u9"], "label": [1, 1],
        "scenario": ["x", "y"], "labeled_at": [T0 + timedelta(days=2, hours=5), T0 + timedelta(days=9, hours=12)],
    })
    events = pl.DataFrame({"event_id": ["e1"], "user_id": ["u1"]})
    known = known_fraud_entities(labels, events)
    assert dict(zip(known["user_id"], known["known_at"], strict=True)) == {
        "u1": T0 + timedelta(days=2, hours=5), "u9": T0 + timedelta(days=9, hours=12)}
    test = pl.DataFrame({
        "event_id": ["a", "b", "c", "d", "e"],
        "ts": [T0 + timedelta(days=2, hours=23), T0 + timedelta(days=3, hours=1), T0 + timedelta(days=3, hours=2),
               T0 + timedelta(days=10, hours=1), T0 + timedelta(days=11)],
        "user_id": ["u1", "u1", "u2", "u9", "u9"],
    })
    kept = remove_known_entities(test, known)
    # u1 known during day 2 -> its day-2 event stays (not known at day start), day 3 removed;
    # u9 known during day 9 -> removed from day 10 on.
    assert kept["event_id"].to_list() == ["a", "c"]
    assert kept.columns == test.columns
