"""Generated per-key features: smoothed fraud rate, counts, user share and accounts for any key a log carries."""

from __future__ import annotations

import json
import math
import random
from datetime import datetime, timedelta
from typing import Any

import pytest

from shopguard.errors import ConfigError
from shopguard.features import FeatureDef, FeatureSet, OnlineFeatureEngine, compute_features, feature_set
from shopguard.features.batch import entity_keys, generated_definitions, label_prior
from shopguard.features.definitions import DEFAULT_FEATURES
from shopguard.store import EventStore

T0 = datetime(2024, 3, 1, 12, 0)
US = timedelta(microseconds=1)


def add(store: EventStore, rows: list[dict[str, Any]]) -> None:
    for i, r in enumerate(rows):
        r.setdefault("event_id", f"x{i:03d}")
        r.setdefault("user_id", "u1")
        r.setdefault("type", "pay")
    store.append_events(rows)


def label(eid: str, value: int, at: datetime, kind: str = "event") -> dict[str, Any]:
    return {"entity_kind": kind, "entity_id": eid, "label": value, "scenario": "s" if value else "",
            "labeled_at": at}


def both(store: EventStore, defs: list[FeatureDef] | FeatureSet) -> dict[str, dict[str, Any]]:
    """Batch values by event id, after checking that the online engine gives the same numbers."""
    batch = compute_features(store, definitions=defs)
    engine = OnlineFeatureEngine(defs)
    engine.add_labels(store.labels())
    online = [engine.update(r) for r in store.events().iter_rows(named=True)]
    for got, row in zip(online, batch.iter_rows(named=True), strict=True):
        for name, value in got.items():
            b = row[name]
            ok = (value is None and b is None) or (value is not None and b is not None and (
                value == b if isinstance(value, str) else math.isclose(value, b, rel_tol=1e-9, abs_tol=1e-12)))
            assert ok, (row["event_id"], name, value, b)
    return {r["event_id"]: r for r in batch.iter_rows(named=True)}


def risk(entity: str = "merchant_id", denominator: str = "events", prior: float = 0.1, m: float = 10.0) -> FeatureDef:
    return FeatureDef("risk", "smoothed_label_rate", entity=entity, prior=prior, smoothing=m, denominator=denominator)


# -- point in time -----------------------------------------------------------------------------------------
def test_smoothed_rate_uses_only_labels_known_before_t_and_no_ties(store: EventStore) -> None:
    pay = {"merchant_id": "m1"}
    add(store, [
        {**pay, "event_id": "a", "ts": T0},
        {**pay, "event_id": "b", "ts": T0 + timedelta(hours=1)},
        {**pay, "event_id": "tie", "ts": T0 + timedelta(hours=2)},
        {**pay, "event_id": "now", "ts": T0 + timedelta(hours=2)},           # tie: never sees "tie"
        {**pay, "event_id": "later", "ts": T0 + timedelta(hours=3)},
        {**pay, "event_id": "last", "ts": T0 + timedelta(hours=5)},
        {"event_id": "other", "ts": T0 + timedelta(hours=5), "merchant_id": None},
    ])
    store.append_labels([
        label("a", 1, T0 + timedelta(hours=2)),          # known exactly at "now": not yet
        label("b", 1, T0 + timedelta(hours=2) - US),     # known 1 us before "now": counts
        label("tie", 1, T0),                             # known early, but at the same ts as "now"
        label("later", 1, T0 + timedelta(hours=4)),      # known after "later" itself
    ])
    v = both(store, [risk()])
    pr = 10 * 0.1
    assert v["a"]["risk"] == pytest.approx(pr / 10)             # no history: the prior
    assert v["now"]["risk"] == pytest.approx((1 + pr) / (2 + 10))  # a, b earlier; only b known
    assert v["tie"]["risk"] == v["now"]["risk"]
    assert v["later"]["risk"] == pytest.approx((3 + pr) / (4 + 10))  # a, b, tie known; now is not labelled
    assert v["last"]["risk"] == pytest.approx((4 + pr) / (5 + 10))
    assert v["other"]["risk"] is None  # no merchant: missing


def test_future_labels_and_events_never_change_past_risk(store: EventStore) -> None:
    add(store, [{"event_id": f"e{i}", "ts": T0 + timedelta(minutes=i), "merchant_id": "m1"} for i in range(6)])
    store.append_labels([label("e1", 1, T0 + timedelta(minutes=3))])
    fs = FeatureSet((risk(), FeatureDef("share", "user_share", entity="merchant_id", window="1h")))
    before = compute_features(store, definitions=fs)
    store.append_events([{"event_id": "f", "ts": T0 + timedelta(minutes=10), "type": "pay", "user_id": "u2",
                          "merchant_id": "m1"}])
    store.append_labels([label(f"e{i}", 1, T0 + timedelta(minutes=10)) for i in range(6)])
    after = compute_features(store, definitions=fs, until=T0 + timedelta(minutes=10))
    assert after.equals(before)


# -- denominators ------------------------------------------------------------------------------------------
def test_explicit_negatives_count_only_labelled_events(store: EventStore) -> None:
    pay = {"merchant_id": "m1"}
    add(store, [
        {**pay, "event_id": "p", "ts": T0},
        {**pay, "event_id": "n1", "ts": T0 + timedelta(minutes=1)},
        {**pay, "event_id": "n2", "ts": T0 + timedelta(minutes=2), "order_id": "o2"},
        {**pay, "event_id": "unlabelled", "ts": T0 + timedelta(minutes=3)},
        {**pay, "event_id": "now", "ts": T0 + timedelta(hours=1)},
    ])
    store.append_labels([
        label("p", 1, T0 + timedelta(minutes=10)),
        label("n1", 0, T0 + timedelta(minutes=10)),
        label("o2", 0, T0 + timedelta(minutes=10), kind="order"),  # an order label labels its events
        label("now", 0, T0 + timedelta(days=1)),                    # known after every event here
    ])
    v = both(store, [risk(denominator="labelled"), FeatureDef(
        "risk_all", "smoothed_label_rate", entity="merchant_id", prior=0.1, smoothing=10.0, denominator="events")])
    assert v["now"]["risk"] == pytest.approx((1 + 1) / (3 + 10))     # p, n1, n2 labelled; unlabelled left out
    assert v["now"]["risk_all"] == pytest.approx((1 + 1) / (4 + 10))  # every earlier event counts
    assert v["unlabelled"]["risk"] == pytest.approx(1 / 10)          # labels not known yet: the prior


def test_label_prior_decides_the_denominator(store: EventStore) -> None:
    add(store, [{"event_id": f"e{i}", "ts": T0 + timedelta(minutes=i), "merchant_id": f"m{i % 2}"}
                for i in range(20)])
    store.append_labels([label("e0", 1, T0), label("e1", 1, T0), label("e2", 0, T0)])
    # One stray negative next to two positives: positives only, rate over all events.
    assert label_prior(store) == (pytest.approx(2 / 20), "events", 2)
    store.append_labels([label(f"e{i}", 0, T0) for i in range(3, 10)])
    assert label_prior(store) == (pytest.approx(2 / 10), "labelled", 2)
    # Labels known at or after `until` are not known yet.
    assert label_prior(store, until=T0) == (0.0, "events", 0)
    gen = {d.name: d for d in generated_definitions(store)}
    assert gen["merchant_risk"].denominator == "labelled" and gen["merchant_risk"].prior == pytest.approx(0.2)
    # No positive known: no risk features at all (they would be a constant).
    assert not any(d.aggregate == "smoothed_label_rate" for d in generated_definitions(store, until=T0))


# -- attrs keys --------------------------------------------------------------------------------------------
def test_attrs_keys_are_entities_in_both_engines(store: EventStore) -> None:
    rows = []
    for i in range(12):
        attrs: dict[str, Any] = {"app": ["shop", "game", 3][i % 3], "is_fraud": i % 2}
        if i == 5:
            attrs = {"other": 1}
        rows.append({"event_id": f"e{i:02d}", "ts": T0 + timedelta(minutes=i // 2), "user_id": f"u{i % 4}",
                     "attrs": attrs if i != 7 else None})
    add(store, rows)
    store.append_labels([label("e00", 1, T0 + US), label("e03", 1, T0 + timedelta(minutes=9))])
    defs = [
        FeatureDef("app_events", "count", entity="attr:app", window="1h"),
        FeatureDef("app_users", "distinct", entity="attr:app", window="1h", field="user_id"),
        FeatureDef("app_share", "user_share", entity="attr:app", window="1h"),
        FeatureDef("app_risk", "smoothed_label_rate", entity="attr:app", prior=0.2, smoothing=2.0,
                   denominator="events"),
    ]
    v = both(store, defs)
    # e06 (app "shop", u2, minute 3): earlier "shop" events e00 (u0), e03 (u3) at minutes 0 and 1.
    assert v["e06"]["app_events"] == 2.0 and v["e06"]["app_users"] == 2.0 and v["e06"]["app_share"] == 0.0
    assert v["e06"]["app_risk"] == pytest.approx((1 + 0.4) / (2 + 2))
    # The number 3 is the text "3", a value of its own.
    assert v["e11"]["app_events"] == 2.0  # e02, e08 ("3"); e05 has no app
    assert v["e05"]["app_events"] is None and v["e07"]["app_risk"] is None


def test_label_like_attrs_never_become_keys(store: EventStore) -> None:
    add(store, [{"event_id": f"e{i}", "ts": T0 + timedelta(minutes=i), "user_id": f"u{i % 3}",
                 "attrs": {"fraud_reason": ["none", "stolen"][i % 2], "Label": ["a", "b"][i % 2],
                           "browser": ["chrome", "safari"][i % 2], "seen": (T0 - timedelta(days=i)).isoformat(),
                           "price": str(1.5 + i), "app_id": str(i % 4), "one": "x"}}
                for i in range(10)])
    keys = {k.entity for k in entity_keys(store)[0]}
    assert {"attr:browser", "attr:app_id"} <= keys
    # Label-like, timestamps, decimal measurements and constants are not keys.
    assert not keys & {"attr:fraud_reason", "attr:Label", "attr:seen", "attr:price", "attr:one"}
    with pytest.raises(ConfigError) as exc:
        FeatureDef("x", "count", entity="attr:is_fraud", window="1h")
    assert exc.value.field == "x.entity"


# -- what feature_set generates ------------------------------------------------------------------------------
def test_feature_set_generates_round_trips_and_is_deterministic(shop: EventStore) -> None:
    fs = feature_set(shop)
    gen = [d for d in fs.definitions if d not in DEFAULT_FEATURES]
    names = {d.name for d in gen}
    assert {"device_risk", "ip_risk", "user_risk", "merchant_user_share_1d", "card_users_1d",
            "attr_tier_risk", "attr_tier_users_1d", "attr_tier_user_share_1d"} <= names
    assert all(d.doc and d.describe for d in gen)
    # Defaults already computing the same thing are not repeated (device_users_1d, user_events_1h).
    assert "device_users_1d" in fs.columns and "device_users_1d_2" not in names and "user_events_1h" not in names
    # Low-cardinality ids become categoricals; label-like attrs (fraud_flag) are never keys.
    assert {"merchant", "item"} <= set(fs.categorical)
    assert not any("fraud" in (d.entity or "") for d in fs.definitions)
    back = FeatureSet.from_dict(json.loads(json.dumps(fs.to_dict())))
    assert back == fs and back.version == fs.version
    assert feature_set(shop).version == fs.version
    # Sets without the new fields keep their versions: the new keys are left out of to_dict.
    assert "prior" not in DEFAULT_FEATURES[0].to_dict()
    # Generation can be turned off, and a list of definitions is kept as it is.
    assert feature_set(shop, generated=False).columns == [c for c in fs.columns if c not in names]
    assert not set(feature_set(shop, list(DEFAULT_FEATURES)).columns) & names


def test_generated_features_leave_the_defaults_unchanged(shop: EventStore) -> None:
    with_gen = compute_features(shop, definitions=feature_set(shop))
    without = compute_features(shop, definitions=feature_set(shop, generated=False))
    assert with_gen.select(without.columns).equals(without)


def test_env_turns_generation_off(shop: EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOPGUARD_GENERATED_FEATURES", "0")
    assert "device_risk" not in feature_set(shop).columns


def test_windows_follow_the_span_and_keys_are_capped(store: EventStore) -> None:
    rng = random.Random(1)
    add(store, [{"event_id": f"e{i:03d}", "ts": T0 + timedelta(minutes=7 * i), "user_id": f"u{rng.randrange(9)}",
                 "device_id": f"d{rng.randrange(5)}", "ip": f"i{rng.randrange(30)}", "merchant_id": f"m{i % 3}",
                 "attrs": {"os": f"os{rng.randrange(4)}"}} for i in range(200)])  # spans under a day
    store.append_labels([label("e010", 1, T0 + timedelta(hours=2))])
    names = {d.name for d in generated_definitions(store)}
    assert {"device_events_10m", "device_events_1h", "device_users_1h", "attr_os_user_share_1h"} <= names
    assert "device_users_1d" not in names and "ip_user_share_1d" not in names
    capped = generated_definitions(store, max_keys=2)
    assert {d.entity for d in capped if d.entity} == {"attr:os", "device_id"}  # most covered, then by name
    # 3 merchants over 200 events: a categorical; 30 IPs over 200 events: too many to learn from.
    assert [d.name for d in capped if d.categorical] == ["merchant"]


def test_describe_in_words(shop: EventStore) -> None:
    fs = feature_set(shop)
    assert fs.describe("card_users_1d", 5) == "this card seen with 5 accounts in 24 h"
    assert fs.describe("ip_risk", 0.12) == "12.0% of this IP's earlier events were fraud"
    assert fs.describe("attr_tier_user_share_1d", 0.5) == "50% of this tier's events in 24 h were by this account"


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"aggregate": "smoothed_label_rate", "entity": "ip", "smoothing": 10.0, "denominator": "events"}, "prior"),
    ({"aggregate": "smoothed_label_rate", "entity": "ip", "prior": 1.5, "smoothing": 10.0,
      "denominator": "events"}, "prior"),
    ({"aggregate": "smoothed_label_rate", "entity": "ip", "prior": 0.1, "smoothing": 0,
      "denominator": "events"}, "smoothing"),
    ({"aggregate": "smoothed_label_rate", "entity": "ip", "prior": 0.1, "smoothing": 1.0,
      "denominator": "some"}, "denominator"),
    ({"aggregate": "smoothed_label_rate", "entity": "ip", "prior": 0.1, "smoothing": 1.0,
      "denominator": "events", "window": "1d"}, "window"),
    ({"aggregate": "count", "entity": "ip", "prior": 0.1}, "prior"),
    ({"aggregate": "user_share", "entity": "user_id", "window": "1h"}, "entity"),
    ({"aggregate": "user_share", "entity": "ip", "window": "1h", "field": "device_id"}, "field"),
    ({"aggregate": "count", "entity": "attr:", "window": "1h"}, "entity"),
    ({"aggregate": "count", "entity": 'attr:a"b', "window": "1h"}, "entity"),
    ({"aggregate": "count", "entity": "attr:chargeback", "window": "1h"}, "entity"),
])
def test_bad_generated_definitions_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as exc:
        FeatureDef("bad", **kwargs)
    assert exc.value.field == f"bad.{field}"


# -- parity, labels arriving during the stream -------------------------------------------------------------
def test_parity_with_explicit_negatives_and_labels_streamed(store: EventStore) -> None:
    """A log with a label on every order (0 or 1), arriving late and out of order, attrs keys included."""
    rng = random.Random(5)
    rows, labels = [], []
    for i in range(400):
        ts = T0 + timedelta(minutes=rng.choice([0, 0, 3, 10]) + 10 * (i // 3))
        rec = {"event_id": f"e{i:03d}", "ts": ts, "type": rng.choice(["order", "view"]),
               "user_id": f"u{rng.randrange(15)}", "device_id": f"d{rng.randrange(8)}",
               "ip": f"10.0.{rng.randrange(6)}", "attrs": {"browser": rng.choice(["ff", "chrome", "safari"]),
                                                           "source": rng.choice(["ads", "seo", 2])}}
        if rec["type"] == "order":
            rec["order_id"] = f"o{i}"
            y = int(rng.random() < 0.2)
            labels.append(label(f"o{i}", y, ts + timedelta(minutes=rng.choice([0, 1, 30, 600])), kind="order"))
            if y and rng.random() < 0.5:  # an earlier event label for some positives, given after the order's
                labels.append(label(f"e{i:03d}", 1, ts + timedelta(minutes=rng.choice([5, 20]))))
        rows.append(rec)
    rows.sort(key=lambda r: (r["ts"], r["event_id"]))
    store.append_events(rows)
    store.append_labels(labels)
    fs = feature_set(store)
    assert fs.get("attr_browser_risk").denominator == "labelled"  # type: ignore[union-attr]
    batch = compute_features(store, definitions=fs)
    # Labels reach the engine in the order they were written (not by labeled_at), once known.
    engine = OnlineFeatureEngine(fs)
    queue = list(labels)
    online = []
    for r in store.events().iter_rows(named=True):
        for lab in [x for x in queue if x["labeled_at"] < r["ts"]]:
            engine.learn_label(lab["entity_kind"], lab["entity_id"], lab["label"], lab["labeled_at"])
            queue.remove(lab)
        online.append(engine.update(r))
    gen = [d.name for d in fs.definitions if d not in DEFAULT_FEATURES]
    for got, row in zip(online, batch.iter_rows(named=True), strict=True):
        for name in gen:
            a, b = got[name], row[name]
            assert (a is None and b is None) or (
                a is not None and b is not None and (a == b if isinstance(a, str) else math.isclose(a, b))
            ), (row["event_id"], name, a, b)
    assert batch["attr_browser_risk"].n_unique() > 10 and batch["device_risk"].max() > 0.3
    assert batch["attr_source_users_1h"].max() >= 5  # the log spans under a day: 1 h windows


def test_online_takes_an_earlier_label_that_arrives_last(store: EventStore) -> None:
    """A label with an earlier labeled_at, learnt after a later one, moves the hit earlier (as in batch)."""
    add(store, [{"event_id": "a", "ts": T0, "merchant_id": "m", "order_id": "o"},
                {"event_id": "b", "ts": T0 + timedelta(hours=1), "merchant_id": "m"},
                {"event_id": "c", "ts": T0 + timedelta(hours=3), "merchant_id": "m"}])
    store.append_labels([label("o", 1, T0 + timedelta(hours=2), kind="order"), label("a", 1, T0 + timedelta(minutes=30)),
                         label("b", 0, T0 + timedelta(hours=2))])
    defs = [risk(denominator="labelled")]
    batch = {r["event_id"]: r["risk"] for r in compute_features(store, definitions=defs).iter_rows(named=True)}
    engine = OnlineFeatureEngine(defs)
    got = {}
    for r in store.events().iter_rows(named=True):
        got[r["event_id"]] = engine.update(r)["risk"]
        if r["event_id"] == "a":  # after a is learnt: the late order label first, then the earlier event label
            engine.flush()
            engine.learn_label("order", "o", 1, T0 + timedelta(hours=2))
            engine.learn_label("event", "a", 1, T0 + timedelta(minutes=30))
        if r["event_id"] == "b":
            engine.learn_label("event", "b", 0, T0 + timedelta(hours=2))
    assert got == pytest.approx(batch)
    assert batch["b"] == pytest.approx((1 + 1) / (1 + 10)) and batch["c"] == pytest.approx((1 + 1) / (2 + 10))
