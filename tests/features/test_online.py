"""The online engine computes exactly what the batch engine computes, event by event."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import polars as pl
import pytest

from shopguard.errors import ValidationFailed
from shopguard.features import FeatureDef, OnlineFeatureEngine, compute_features, feature_set
from shopguard.features.definitions import KEY_COLUMNS
from shopguard.store import EventStore


def same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def mismatches(online: list[dict[str, Any]], batch: pl.DataFrame) -> list[tuple[str, str, Any, Any]]:
    bad = []
    for got, row in zip(online, batch.iter_rows(named=True), strict=True):
        for name, value in got.items():
            if not same(value, row[name]):
                bad.append((row["event_id"], name, value, row[name]))
    return bad


def test_parity_with_batch_on_a_seeded_log(shop: EventStore) -> None:
    fs = feature_set(shop)
    batch = compute_features(shop, definitions=fs)
    engine = OnlineFeatureEngine(fs)
    engine.add_labels(shop.labels())
    online = [engine.update(r) for r in shop.events().iter_rows(named=True)]
    assert list(online[0]) == fs.columns
    assert mismatches(online, batch) == []
    # The log really exercises the features: ties, window hits, label-delayed risk, attrs.
    assert shop.events().group_by("ts").len()["len"].max() > 1
    assert batch["merchant_risk_7d"].drop_nulls().max() > 0
    assert batch["user_failed_payments_10m"].max() > 0 and batch["user_new_device"].sum() > 0
    assert batch["attr_tier"].drop_nulls().len() > 0
    # ... and the ring (account-graph) features: rings form, labels known in time reach them.
    assert batch["user_ring_size"].max() > 2 and batch["user_linked_accounts_shared_ip_24h"].max() > 0
    assert batch["user_ring_known_fraud"].max() > 0 and batch["user_linked_max_failed_payments"].max() > 0
    # ... and the generated per-key features, an attrs key (tier) included: risk moves off its prior as
    # labels become known, shares and accounts per key vary.
    prior = fs.get("device_risk").prior  # type: ignore[union-attr]
    assert batch["device_risk"].max() > prior > batch["device_risk"].min()
    assert batch["attr_tier_risk"].n_unique() > 10 and batch["attr_tier_users_1d"].max() > 2
    assert 0 < batch["ip_user_share_1d"].drop_nulls().mean() < 1  # type: ignore[operator]
    assert batch["merchant"].dtype == pl.Categorical and batch["card_users_1d"].max() >= 2


def test_parity_when_labels_arrive_during_the_stream(shop: EventStore) -> None:
    """In the service labels come in over time; each one is learnt when it becomes known."""
    fs = feature_set(shop)
    batch = compute_features(shop, definitions=fs)
    labels = shop.labels().sort("labeled_at").iter_rows(named=True)
    pending = next(labels, None)
    engine = OnlineFeatureEngine(fs)
    online = []
    for r in shop.events().iter_rows(named=True):
        while pending is not None and pending["labeled_at"] < r["ts"]:
            engine.learn_label(pending["entity_kind"], pending["entity_id"], pending["label"], pending["labeled_at"])
            pending = next(labels, None)
        online.append(engine.update(r))
    assert mismatches(online, batch) == []


def test_record_inputs_as_the_api_sends_them(shop: EventStore) -> None:
    """ISO strings for times, JSON text or dicts for attrs, ints for amounts: same numbers."""
    fs = feature_set(shop)
    batch = compute_features(shop, definitions=fs)
    engine = OnlineFeatureEngine(fs)
    engine.add_labels(shop.labels())
    online = []
    for r in shop.events().iter_rows(named=True):
        rec = {k: v for k, v in r.items() if v is not None}
        rec["ts"] = r["ts"].isoformat() + "Z"
        for k in ("promised_ts", "actual_ts"):
            if r[k] is not None:
                rec[k] = r[k].isoformat()
        if isinstance(r["attrs"], str):
            import orjson
            rec["attrs"] = orjson.loads(r["attrs"])
        online.append(engine.update(rec))
    assert mismatches(online, batch) == []


def test_rebuild_continues_like_a_full_replay(shop: EventStore) -> None:
    cut = datetime(2024, 1, 28)
    fs = feature_set(shop)
    batch = compute_features(shop, definitions=fs, since=cut)
    engine = OnlineFeatureEngine(fs)
    learned = engine.rebuild(shop, until=cut)
    assert learned == shop.events(until=cut).height
    online = [engine.update(r) for r in shop.events(since=cut).iter_rows(named=True)]
    assert mismatches(online, batch) == []


def test_ties_do_not_see_each_other() -> None:
    d = FeatureDef("n", "count", entity="user_id", window="1h")
    eng = OnlineFeatureEngine([d])
    t = datetime(2024, 1, 1)
    recs = [{"ts": t, "user_id": "u", "type": "view"}] * 3 + [{"ts": t + timedelta(seconds=1), "user_id": "u",
                                                                "type": "view"}]
    assert [eng.update(r)["n"] for r in recs] == [0.0, 0.0, 0.0, 3.0]


def test_features_peek_does_not_learn() -> None:
    d = FeatureDef("n", "count", entity="user_id", window="1h")
    eng = OnlineFeatureEngine([d])
    rec = {"ts": "2024-01-01T00:00:00", "user_id": "u", "type": "view"}
    eng.features(rec)
    eng.features(rec)
    assert eng.update({**rec, "ts": "2024-01-01T00:00:01"})["n"] == 0.0


@pytest.mark.parametrize(("record", "field"), [
    ({"user_id": "u", "type": "view"}, "ts"),
    ({"ts": "yesterday", "user_id": "u"}, "ts"),
    ({"ts": "2024-01-01T00:00:00", "user_id": "u", "type": "pay", "amount": "lots"}, "amount"),
])
def test_bad_records_name_the_field(record: dict[str, Any], field: str) -> None:
    eng = OnlineFeatureEngine()
    with pytest.raises(ValidationFailed) as exc:
        eng.update(record)
    assert exc.value.field == field


def test_key_columns_are_not_features() -> None:
    eng = OnlineFeatureEngine()
    out = eng.update({"ts": "2024-01-01T00:00:00", "user_id": "u", "type": "view"})
    assert not set(KEY_COLUMNS) & set(out)
    assert out["user_events_1h"] == 0.0 and out["device_users_1d"] is None and out["event_type"] == "view"


def test_parity_on_a_dense_log_with_many_ties(store: EventStore, log_factory: Any) -> None:
    """A second seed, squeezed into a few days: most windows are full and many events share a ts."""
    events, labels = log_factory(seed=11, bursts=90, days=6)
    store.append_events(events)
    store.append_labels(pl.DataFrame(labels))
    fs = feature_set(store)
    batch = compute_features(store, definitions=fs)
    engine = OnlineFeatureEngine(fs)
    engine.add_labels(store.labels())
    online = [engine.update(r) for r in store.events().iter_rows(named=True)]
    assert mismatches(online, batch) == []
    assert batch["user_events_10m"].max() >= 5
    assert batch["user_ring_size"].n_unique() > 3 and batch["user_ring_known_fraud_share"].drop_nulls().max() > 0
