"""Concurrent single-event requests share a model pass and a journal fsync, and still answer each one
only after its own event is durably committed; a failing request never takes its neighbours down."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.api.conftest import Service, event

from shopguard.api.coalesce import RequestCoalescer
from shopguard.api.scoring import DecisionEngine
from shopguard.errors import ValidationFailed
from shopguard.store import EventStore


@pytest.fixture()
def engine(tmp_path: Path) -> Any:
    store = EventStore(tmp_path / "shop.duckdb")
    eng = DecisionEngine(store, journal=Path(f"{tmp_path / 'shop.duckdb'}.journal"))
    eng.start()
    yield eng
    eng.stop()
    store.close()


def _prep(eng: DecisionEngine, *ids: str, user: str = "g") -> list[Any]:
    return eng.prepare([event(i, user=user, seconds=n) for n, i in enumerate(ids)], batch=True)


def test_groups_share_one_commit_and_a_failing_group_is_isolated(engine: DecisionEngine,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real = engine._context

    def flaky(rec: dict[str, Any], **kw: Any) -> Any:
        if rec["event_id"] == "bad-2":
            raise ValidationFailed("amount: feature engine refused it", field="amount")
        return real(rec, **kw)

    monkeypatch.setattr(engine, "_context", flaky)
    commits = engine.writer.commits
    outs = engine.submit_groups([_prep(engine, "ok-1"), _prep(engine, "bad-1", "bad-2"), _prep(engine, "ok-2", "ok-3")])
    assert isinstance(outs[1], ValidationFailed)
    (r1, c1), (r3, c3) = outs[0], outs[2]
    assert c1 is c3 and c1 is not None  # one journal commit for every group's events
    decided = [f.result(10) for f in [*r1, *r3]]
    assert [d["event_id"] for d in decided] == ["ok-1", "ok-2", "ok-3"]
    assert engine.writer.commits == commits + 1
    # The failed group's first event was withdrawn: not pending, never committed, decidable later.
    assert "bad-1" not in engine._pending
    engine.flush()
    stored = set(engine.store.query("SELECT event_id FROM events")["event_id"].to_list())
    assert stored == {"ok-1", "ok-2", "ok-3"}
    monkeypatch.setattr(engine, "_context", real)
    again = engine.process([event("bad-1", user="g"), event("ok-2", user="g")])
    assert again[1] == decided[1]  # a repeated id keeps its original decision


def test_coalescer_decides_requests_of_one_loop_turn_in_one_pass(engine: DecisionEngine) -> None:
    co = RequestCoalescer(engine, max_events=4)

    async def run() -> list[Any]:
        reqs = [_prep(engine, f"co-{i}", user=f"co{i}") for i in range(10)]
        return await asyncio.gather(*(co.submit(r) for r in reqs))

    outs = asyncio.run(run())
    assert co.requests == 10 and co.passes == 3  # 10 one-event requests, at most 4 events per pass
    ids = [r[0][0].result(10)["event_id"] for r in outs]
    assert ids == [f"co-{i}" for i in range(10)]


def test_threaded_passes_never_overlap_and_grow_while_one_runs(engine: DecisionEngine,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Decided on the background thread: requests that arrive during a pass wait for it and go together
    into the next one; one user's events are decided in the order they came."""
    import threading
    import time

    co = RequestCoalescer(engine, max_events=64, in_thread=True)
    real = engine.submit_groups
    running, seen = threading.Lock(), []

    def slow(groups: Any) -> Any:
        assert running.acquire(blocking=False), "two passes overlapped"
        try:
            assert threading.current_thread().name.startswith("shopguard-decider")
            seen.append(len(groups))
            time.sleep(0.02)  # a transformer run: the loop keeps taking requests meanwhile
            return real(groups)
        finally:
            running.release()

    monkeypatch.setattr(engine, "submit_groups", slow)

    async def run() -> list[Any]:
        tasks = []
        for i in range(30):
            tasks.append(asyncio.ensure_future(co.submit(_prep(engine, f"th-{i}", user="same"))))
            await asyncio.sleep(0.002)
        return await asyncio.gather(*tasks)

    outs = asyncio.run(run())
    co.close()
    assert co.requests == 30 and sum(seen) == 30 and co.threaded_passes == len(seen)
    assert len(seen) < 30 and max(seen) > 1  # later passes took what queued during the earlier ones
    decided = [r[0][0].result(10) for r in outs]
    assert [d["event_id"] for d in decided] == [f"th-{i}" for i in range(30)]
    engine.flush()
    stored = engine.store.query("SELECT event_id FROM events WHERE event_id LIKE 'th-%'")
    assert sorted(stored["event_id"].to_list()) == sorted(f"th-{i}" for i in range(30))  # each stored once


def test_concurrent_http_requests_share_passes_and_each_is_stored_once(service: Service) -> None:
    co = service.app.state.coalescer
    passes, requests = co.passes, co.requests
    n = 120

    def send(i: int) -> dict[str, Any]:
        with httpx.Client(base_url=service.url, headers=service.headers("ingest"), timeout=30) as c:
            r = c.post("/v1/events", json=event(f"conc-{i}", user=f"conc{i % 7}", seconds=i))
            assert r.status_code == 200, r.text
            return r.json()  # type: ignore[no-any-return]

    with cf.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(send, range(n)))
    assert [a["event_id"] for a in answers] == [f"conc-{i}" for i in range(n)]
    assert co.requests - requests >= n
    assert co.passes - passes <= co.requests - requests  # never more passes than requests (usually far fewer)
    rows = service.store.query("SELECT event_id, count(*) AS k FROM events WHERE event_id LIKE 'conc-%' GROUP BY 1")
    assert rows.height == n and set(rows["k"].to_list()) == {1}
    decided = service.store.query("SELECT count(*) AS k FROM decisions WHERE event_id LIKE 'conc-%'")["k"][0]
    assert decided == n
