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
    got = [eng.update({**_pay(i, t0 + timedelta(minutes=5 * (i - 1))), "type": "login",
                       "status": "success"})["user_since_last_event_s"] for i in range(2, 7)]
    # never a negative time to 2099: the first event after it has no known previous action (only the
    # latest time was kept), every later one sees its real previous action
    assert got == [None, 300.0, 300.0, 300.0, 300.0]


def test_d11_windows_of_entities_never_seen_again_are_dropped(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Bounded memory: one-off IPs and cards do not keep their windows for good, and dropping them
    changes no feature value (an entity that comes back reads exactly as an expired window)."""
    import shopguard.features.online as online
    from shopguard.events.simulate import SimulationConfig, simulate_shop

    recs = simulate_shop(SimulationConfig(users=300, days=4, seed=3)).events.sort(["ts", "event_id"]).to_dicts()
    start = datetime(2030, 1, 1)  # then one-off IPs, a minute apart, for two days
    recs += [{"event_id": f"x{i}", "type": "login", "ts": start + timedelta(minutes=i), "user_id": f"v{i % 50}",
              "ip": f"203.0.{i // 250}.{i % 250}", "status": "success"} for i in range(2 * 1440)]
    plain = OnlineFeatureEngine()
    got_plain = [plain.update(r) for r in recs]
    monkeypatch.setattr(online, "_SWEEP_EVERY", 50)
    monkeypatch.setattr(online, "_SWEEP_KEYS", 500)
    swept = OnlineFeatureEngine()
    got_swept = [swept.update(r) for r in recs]
    assert got_swept == got_plain
    ip_specs = [s for s in swept._specs.values() if s.kind == "win" and s.window is not None and s.entity == "ip"]
    assert ip_specs
    for spec in ip_specs:
        kept = [k for k in spec.state if str(k).startswith("203.0.")]
        # only IPs inside the window, the hour of slack and a sweep's lag remain (2,879 without the sweep)
        limit = (spec.window // 60_000_000) + 60 + 600
        assert len(kept) <= limit, (spec.window, len(kept))
