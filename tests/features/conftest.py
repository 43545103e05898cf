"""Small seeded shop logs for the feature tests: every event type, bursts, ties on ts, attrs and labels."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

import polars as pl
import pytest

from shopguard.store import EventStore

START = datetime(2024, 1, 1)


def make_log(seed: int = 0, bursts: int = 160, days: int = 45) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Events and labels of a tiny shop. Times sit on a one-minute grid so window edges and ties happen."""
    rng = random.Random(seed)
    users = [f"u{i}" for i in range(24)]
    devices = [f"d{i}" for i in range(14)]
    ips = [f"10.0.0.{i}" for i in range(10)]
    cards = [f"c{i}" for i in range(16)]
    merchants = [f"m{i}" for i in range(5)]
    items = [f"i{i}" for i in range(8)]
    geos = ["FR", "DE", "US", "CN"]
    events: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    n = 0

    def ev(**kw: Any) -> dict[str, Any]:
        nonlocal n
        n += 1
        kw.setdefault("event_id", f"e{n:05d}")
        return kw

    for u in users:  # signups early on
        events.append(ev(type="signup", ts=START + timedelta(minutes=rng.randrange(0, 3 * 24 * 60)), user_id=u,
                         device_id=rng.choice(devices), ip=rng.choice(ips), geo=rng.choice(geos),
                         channel=rng.choice(["web", "app"])))
    types = ["login", "view", "order", "pay", "pay", "return", "refund", "review", "coupon_use", "address_change",
             "password_change", "shipment", "price_change", "chat"]
    for b in range(bursts):
        u = rng.choice(users)
        anchor = START + timedelta(minutes=rng.randrange(3 * 24 * 60, days * 24 * 60))
        dev, ip, card, geo = rng.choice(devices), rng.choice(ips), rng.choice(cards), rng.choice(geos)
        for _ in range(rng.randint(2, 14)):
            # Minutes 0..20 after the anchor, often the same minute: ties and 10-minute edges.
            ts = anchor + timedelta(minutes=rng.choice([0, 0, 1, 5, 10, 10, 11, 20]))
            t = rng.choice(types)
            oid = f"o{b}"
            rec: dict[str, Any] = {"type": t, "ts": ts, "user_id": u, "session_id": f"s{b}",
                                   "device_id": dev if rng.random() < 0.85 else rng.choice(devices),
                                   "ip": ip if rng.random() < 0.8 else None, "geo": geo,
                                   "merchant_id": rng.choice(merchants)}
            if t == "login":
                rec["status"] = rng.choice(["success", "failure"])
            elif t == "order":
                rec.update(order_id=oid, amount=round(rng.uniform(5, 300), 2), item_id=rng.choice(items),
                           quantity=rng.randint(1, 3), category=rng.choice(["toys", "books", None]))
            elif t == "pay":
                rec.update(order_id=oid, amount=round(rng.choice([1.0, rng.uniform(5, 300)]), 2),
                           status=rng.choice(["success", "success", "failure"]),
                           payment_instrument=card if rng.random() < 0.9 else rng.choice(cards))
            elif t in ("return", "refund"):
                rec.update(order_id=oid, amount=round(rng.uniform(5, 100), 2), reason="damaged")
            elif t == "review":
                rec.update(item_id=rng.choice(items[:3]), rating=rng.randint(1, 5), text="great " * rng.randint(1, 5))
            elif t == "coupon_use":
                rec["coupon_code"] = rng.choice(["WELCOME", "SPRING"])
            elif t == "shipment":
                rec.update(order_id=oid, status="delivered", promised_ts=ts + timedelta(days=2),
                           actual_ts=ts + timedelta(days=2, hours=rng.randint(-5, 30)))
            elif t == "price_change":
                rec.update(item_id=rng.choice(items), old_price=20.0, new_price=rng.choice([0.0, 5.0, 25.0]))
            elif t == "chat":
                rec["text"] = "hello"
            if rng.random() < 0.5:
                rec["attrs"] = {"score": rng.choice([0.5, 3, None]), "tier": rng.choice(["gold", "basic"]),
                                "first_seen": (ts - timedelta(hours=rng.randint(1, 500))).isoformat(),
                                "vip": rng.random() < 0.3, "fraud_flag": 1}
            events.append(ev(**rec))
            if t == "pay" and rng.random() < 0.15:
                labels.append({"entity_kind": "event", "entity_id": events[-1]["event_id"], "label": 1,
                               "scenario": "card_testing",
                               "labeled_at": ts + timedelta(days=rng.choice([0, 1, 3, 7, 8, 20]),
                                                            minutes=rng.choice([0, 1]))})
        if rng.random() < 0.1:
            labels.append({"entity_kind": "order", "entity_id": f"o{b}", "label": 1, "scenario": "refund_abuse",
                           "labeled_at": anchor + timedelta(days=rng.randint(1, 15))})
    labels.append({"entity_kind": "event", "entity_id": "e00030", "label": 0, "scenario": "",
                   "labeled_at": START + timedelta(days=5)})
    events.sort(key=lambda e: (e["ts"], e["event_id"]))
    return events, labels


@pytest.fixture
def log_factory() -> Any:
    """``make_log`` itself, for tests that want another seed or density."""
    return make_log


@pytest.fixture(scope="module")
def log() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return make_log(seed=3)


@pytest.fixture
def shop(store: EventStore, log: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> EventStore:
    """A store holding the seeded log and its labels."""
    events, labels = log
    store.append_events(events)
    store.append_labels(pl.DataFrame(labels))
    return store
