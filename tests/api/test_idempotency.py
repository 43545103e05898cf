"""A repeated event_id is answered with its original decision and never counted twice."""

from __future__ import annotations

import concurrent.futures as cf

from tests.api.conftest import Service, event


def _count(service: Service, like: str) -> int:
    return int(service.store.query("SELECT count(*) AS n FROM events WHERE event_id LIKE ?", [like])["n"][0])


def test_repeat_returns_the_original_decision(service: Service) -> None:
    with service.client("ingest") as c:
        first = c.post("/v1/events", json=event("idem-1", user="idem")).json()
        # Same id, different content: still the original answer, and the store keeps the original event.
        again = c.post("/v1/events", json=event("idem-1", user="idem", amount=9999.0)).json()
        batch = c.post("/v1/events", json={"events": [event("idem-1", user="idem"), event("idem-1", user="idem")]})
    assert again == first
    assert batch.json()["decisions"] == [first, first]
    assert _count(service, "idem-1") == 1
    amount = service.store.query("SELECT amount FROM events WHERE event_id = 'idem-1'")["amount"][0]
    assert amount == 25.0
    # After the in-memory cache, the store answers: the same decision again.
    service.engine._recent.clear()
    with service.client("ingest") as c:
        assert c.post("/v1/events", json=event("idem-1", user="idem")).json() == first


def test_concurrent_repeats_store_once(service: Service) -> None:
    def send(_: int) -> dict:
        with service.client("ingest") as c:
            r = c.post("/v1/events", json=event("idem-race", user="idem-race"))
            assert r.status_code == 200
            return r.json()  # type: ignore[no-any-return]

    with cf.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(16)))
    assert all(a == answers[0] for a in answers)
    assert _count(service, "idem-race") == 1


def test_repeats_do_not_double_count_online_features(service: Service) -> None:
    # Three failed payments, each sent twice; the probe rule fires only when the feature sees exactly three.
    fails = [event(f"idem-f{i}", user="idem-feat", seconds=10 * i, status="failure", amount=1.0) for i in range(3)]
    with service.client("ingest") as c:
        for e in fails + fails:
            assert c.post("/v1/events", json=e).status_code == 200
        probe = c.post("/v1/events", json=event("idem-probe", user="idem-feat", seconds=40, attrs={"probe": 1})).json()
    if service.engine.features is None:
        return  # no online features in this install: nothing to double count
    assert "dup_probe" in probe["rule_hits"], probe
