"""``DELETE /v1/users/{id}`` on a real server: the user leaves the store, the journal and the online state;
their later events are dropped (also after a restart); other users are untouched."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

from tests.api.conftest import event, make_keys, serve_in_thread

from shopguard.api import ServiceSettings

GONE, KEEP = "u_gone_7f3", "u_keep_2c9"


def strings(root: Any, limit: int = 2_000_000) -> set[str]:
    """Every string reachable from ``root`` (dict keys and values, containers, object attributes)."""
    seen: set[int] = set()
    out: set[str] = set()
    todo: deque[Any] = deque([root])
    while todo and len(seen) < limit:
        o = todo.pop()
        if isinstance(o, str):
            out.add(o)
            continue
        if isinstance(o, bytes):
            out.add(o.decode("utf-8", "replace"))
            continue
        if o is None or isinstance(o, int | float | bool) or id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, dict):
            todo.extend(o.keys())
            todo.extend(o.values())
        elif isinstance(o, list | tuple | set | frozenset | deque):
            todo.extend(o)
        elif hasattr(o, "__dict__") and type(o).__module__.startswith("shopguard"):
            todo.extend(vars(o).values())
        elif hasattr(type(o), "__slots__") and type(o).__module__.startswith("shopguard"):
            todo.extend(getattr(o, s, None) for s in type(o).__slots__)
    return out


def holds(found: set[str], needle: str) -> bool:
    return any(needle in s for s in found)


def scan_store(store: Any, needle: str) -> list[str]:
    hits = []
    for t in store.query("SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'")[
            "table_name"].to_list():
        for c in store.query("SELECT column_name FROM information_schema.columns WHERE table_name = ?",
                             [t])["column_name"].to_list():
            if store.query(f'SELECT count(*) AS n FROM "{t}" WHERE CAST("{c}" AS VARCHAR) LIKE ?',
                           [f"%{needle}%"])["n"][0]:
                hits.append(f"{t}.{c}")
    return hits


def test_delete_user_erases_and_keeps_them_out(tmp_path: Path) -> None:
    db = tmp_path / "shop.duckdb"
    keys = make_keys(db)
    settings = ServiceSettings(db=db, watch_every_s=0.2)
    with serve_in_thread(settings, keys) as svc, svc.client("admin") as admin:
        evs = [event(f"g{i}", user=GONE, seconds=i) for i in range(4)]
        evs += [event(f"k{i}", user=KEEP, seconds=10 + i, device_id=f"dev_{GONE}") for i in range(3)]  # shared device
        evs.append(event("o1", user=GONE, seconds=20, type="order", order_id="ord_g1", amount=99.0))
        r = admin.post("/v1/events", json={"events": evs})
        assert r.status_code == 200, r.text
        r = admin.post("/v1/labels", json={"labels": [
            {"entity_kind": "event", "entity_id": "g1", "label": 1, "scenario": "card_testing"},
            {"entity_kind": "order", "entity_id": "ord_g1", "label": 1, "scenario": "payment_fraud"},
            {"entity_kind": "user", "entity_id": GONE, "label": 1, "scenario": "card_testing"},
            {"entity_kind": "event", "entity_id": "k1", "label": 0}]})
        assert r.status_code == 200, r.text
        engine = svc.engine
        # events acknowledged but still in the journal: the erasure must cover them too
        r = admin.post("/v1/events", json=event("g9", user=GONE, seconds=30))
        assert r.status_code == 200
        device = engine.pseudonymiser.pseudonym(f"dev_{GONE}", "device_id")
        card = engine.pseudonymiser.pseudonym(f"card_{GONE}", "payment_instrument")
        assert holds(strings(engine.features), GONE)  # the scan below sees online state at all
        keep_before = svc.store.query("SELECT e.*, d.action FROM events e JOIN decisions d USING (event_id) "
                                      "WHERE user_id = ? ORDER BY event_id", [KEEP])

        with svc.client("analyst") as analyst:
            assert analyst.delete(f"/v1/users/{GONE}").status_code == 403  # admin only
        r = admin.delete(f"/v1/users/{GONE}")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["tombstone_id"].startswith("t_") and not body["already_erased"]
        assert body["removed"]["events"] == 6 and body["removed"]["decisions"] == 6 and body["removed"]["labels"] == 3

        store = svc.store
        assert scan_store(store, GONE) == []
        assert scan_store(store, card) == []  # the user's own pseudonymised card is gone too
        for seg in db.parent.glob(db.name + ".journal.*"):
            assert GONE.encode() not in seg.read_bytes()
        online = strings(engine.features) | strings(engine.graph) | strings(engine._known) | strings(
            dict(engine._recent)) | strings(engine._pending)
        assert not holds(online, GONE) and not holds(online, card)
        assert holds(online, device)  # the shared device stays: it is also the other user's (their events)
        keep_after = store.query("SELECT e.*, d.action FROM events e JOIN decisions d USING (event_id) "
                                 "WHERE user_id = ? ORDER BY event_id", [KEEP])
        assert keep_after.equals(keep_before)
        assert store.query("SELECT count(*) AS n FROM labels WHERE entity_id = 'k1'")["n"][0] == 1
        audit = store.query("SELECT * FROM erasure_audit")
        assert audit.height == 1 and audit["by_key"][0] == keys["admin"].split("_")[1]

        # a later event of the erased user is answered but neither stored nor learnt; others go on
        r = admin.post("/v1/events", json={"events": [event("g10", user=GONE, seconds=40),
                                                      event("k10", user=KEEP, seconds=41)]})
        assert r.status_code == 200, r.text
        answers = r.json()["decisions"]
        assert answers[0]["reasons"][0]["code"] == "user_erased" and answers[1]["reasons"] != answers[0]["reasons"]
        assert scan_store(svc.store, GONE) == []
        assert svc.store.query("SELECT count(*) AS n FROM events WHERE event_id = 'k10'")["n"][0] == 1
        assert not holds(strings(engine.erased) | strings(engine.features), GONE)
        r = admin.post("/v1/labels", json={"labels": [{"entity_kind": "user", "entity_id": GONE, "label": 1}]})
        assert r.status_code == 200 and r.json()["stored"] == 0  # a label would bring the id back: left out
        assert scan_store(svc.store, GONE) == []
        timeline = admin.get(f"/v1/users/{GONE}/timeline").json()
        assert timeline["events"] == [] and timeline["labels"] == []

        again = admin.delete(f"/v1/users/{GONE}")  # idempotent
        assert again.status_code == 200 and again.json()["already_erased"]
        assert again.json()["tombstone_id"] == body["tombstone_id"]
        missing = admin.delete("/v1/users/nobody_at_all")
        assert missing.status_code == 404 and "nothing erased" in missing.json()["message"]

    # after a restart the tombstone still keeps the user out
    with serve_in_thread(settings, keys) as svc, svc.client("admin") as admin:
        r = admin.post("/v1/events", json=event("g11", user=GONE, seconds=50))
        assert r.status_code == 200 and r.json()["reasons"][0]["code"] == "user_erased"
        assert scan_store(svc.store, GONE) == []
        assert not holds(strings(svc.engine.features), GONE)
