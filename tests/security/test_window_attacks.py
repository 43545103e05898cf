"""D4 at the feature engine (defence in depth behind the API's clock-skew limit): windows evict by time
relative to the event being scored, so one future-dated event cannot stop eviction for good."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from shopguard.features import FeatureSet
from shopguard.features.online import OnlineFeatureEngine

REPO = Path(__file__).resolve().parents[2]
NAMES = ["user_failed_payments_10m", "card_failed_payments_10m", "user_failed_payments_1d"]


def _pay(i: int, ts: datetime, amount: float = 1.0) -> dict[str, object]:
    return {"event_id": f"p{i}", "type": "pay", "ts": ts.isoformat(), "user_id": "u1", "amount": amount,
            "status": "failure", "payment_instrument": "card1", "device_id": "d1", "ip": "10.0.0.1"}


def _engine() -> OnlineFeatureEngine:
    fs = FeatureSet()
    return OnlineFeatureEngine([d for d in fs.definitions if d.name in NAMES])


def test_d4_a_future_dated_event_does_not_stop_eviction() -> None:
    eng = _engine()
    eng.update(_pay(99, datetime(2099, 1, 1)))  # learnt (the API would refuse it; the engine must cope)
    start = datetime(2024, 3, 9, 1, 0)
    seen = []
    for i in range(8):  # 8 failed $1 payments an hour apart
        seen.append(eng.update(_pay(i, start + timedelta(hours=i))))
    for i, f in enumerate(seen):
        # the 2099 event is after every one of them: never counted; each earlier one is an hour old
        assert f["user_failed_payments_10m"] == 0.0, (i, f)
        assert f["card_failed_payments_10m"] == 0.0, (i, f)
        assert f["user_failed_payments_1d"] == float(i), (i, f)
    # bounded state: the 10-minute window holds the last payment and the future one, not all nine
    eng.flush()
    for spec in eng._specs.values():
        w = spec.state.get("u1") or spec.state.get("card1")
        if w is not None and hasattr(w, "items") and spec.window == 600 * 10**6:
            assert len(w.items) <= 2, (spec.entity, list(w.items))


def test_d4_card_testing_rule_does_not_fire_from_stale_state() -> None:
    from shopguard.decision.rules import RuleSet

    rules = RuleSet.load(REPO / "examples" / "rules.yaml")
    eng = _engine()
    eng.update(_pay(99, datetime(2099, 1, 1)))
    start = datetime(2024, 3, 9, 1, 0)
    for i in range(8):
        rec = _pay(i, start + timedelta(hours=i))
        feats = eng.update(rec)
        hits = [h.name for h in rules.evaluate({**rec, **feats, "score": 0.0, "probability": None,
                                                  "score_percentile": 0.0}).hits]
        assert "card_testing_burst" not in hits, (i, feats)


def test_d4_a_real_burst_still_counts_after_a_future_event() -> None:
    eng = _engine()
    eng.update(_pay(99, datetime(2099, 1, 1)))
    start = datetime(2024, 3, 9, 1, 0)
    got = [eng.update(_pay(i, start + timedelta(seconds=30 * i)))["user_failed_payments_10m"] for i in range(7)]
    assert got == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_d4_seconds_since_last_ignores_a_future_dated_event() -> None:
    since = [d for d in FeatureSet().definitions if d.name == "user_since_last_event_s"]
    eng = OnlineFeatureEngine(since)
    t0 = datetime(2024, 3, 9, 1, 0)
    eng.update({**_pay(0, t0), "type": "login", "status": "success"})
    eng.update({**_pay(1, datetime(2099, 1, 1)), "type": "login", "status": "success"})
    for i in range(2, 6):  # the real previous action, not a negative time to 2099
        f = eng.update({**_pay(i, t0 + timedelta(minutes=5 * (i - 1))), "type": "login", "status": "success"})
        assert f["user_since_last_event_s"] == 300.0, (i, f)
