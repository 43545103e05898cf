"""The durability journal (recovery, torn lines) and webhook delivery (retries with backoff, never blocking)."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import orjson
from tests.api.conftest import event, free_port

from shopguard.api.scoring import DecisionEngine, StoreWriter
from shopguard.decision.cases import WebhookDispatcher
from shopguard.store import EventStore


def test_engine_acknowledges_from_the_journal_and_applies_it(tmp_path: Path) -> None:
    db = tmp_path / "j.duckdb"
    store = EventStore(db)
    engine = DecisionEngine(store, journal=Path(f"{db}.journal"))
    engine.start()
    out = engine.process([event(f"j{i}", seconds=i) for i in range(20)])
    assert len(out) == 20
    engine.flush()
    assert store.count_events() == 20
    assert not [p for p in tmp_path.iterdir() if ".journal." in p.name and p.stat().st_size > 0]
    engine.stop()
    store.close()


def test_recovery_applies_segments_in_order_and_ignores_a_torn_line(tmp_path: Path) -> None:
    db = tmp_path / "r.duckdb"
    journal = Path(f"{db}.journal")
    ts = datetime(2024, 3, 9, 12).isoformat()
    line = {"events": [{"event_id": "r1", "ts": ts, "type": "login", "user_id": "u", "status": "success"}],
            "decisions": [{"event_id": "r1", "decided_at": ts, "risk_level": "low", "action": "allow",
                           "reasons": "[]", "rule_hits": "[]"}], "cases": []}
    line2 = {**line, "events": [{**line["events"][0], "event_id": "r2"}],
             "decisions": [{**line["decisions"][0], "event_id": "r2"}]}
    Path(f"{journal}.3").write_bytes(orjson.dumps(line) + b"\n")
    Path(f"{journal}.7").write_bytes(orjson.dumps(line2) + b"\n" + b'{"events": [{"event_id": "torn')
    with EventStore(db) as store:
        writer = StoreWriter(store, journal=journal)
        assert writer.recover() == 2
        assert sorted(store.query("SELECT event_id FROM events")["event_id"].to_list()) == ["r1", "r2"]
        assert store.query("SELECT count(*) AS n FROM decisions")["n"][0] == 2
        assert writer.recover() == 0  # segments are gone once applied
        writer.start()  # the next segment number follows the recovered ones
        assert writer._segment is not None and writer._segment.name.endswith(".8")
        writer.stop()


class _Flaky(BaseHTTPRequestHandler):
    fail_first = 2
    hits: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).hits.append(body)
        self.send_response(500 if len(type(self).hits) <= type(self).fail_first else 200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_webhooks_retry_with_backoff_until_delivered() -> None:
    _Flaky.hits = []
    port = free_port()
    server = HTTPServer(("127.0.0.1", port), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    results: list[bool] = []
    hooks = WebhookDispatcher([f"http://127.0.0.1:{port}/hook"], base_delay=0.05, max_attempts=5,
                              on_result=lambda url, ok: results.append(ok))
    hooks.start()
    try:
        assert hooks.submit({"case_id": "c1", "risk_level": "high"})
        deadline = time.monotonic() + 10
        while hooks.delivered < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert hooks.delivered == 1 and len(_Flaky.hits) == 3 and results == [True]
        assert orjson.loads(_Flaky.hits[-1])["case_id"] == "c1"
    finally:
        hooks.stop()
        server.shutdown()


def test_webhook_submit_never_blocks_and_gives_up_after_max_attempts() -> None:
    dead = f"http://127.0.0.1:{free_port()}/nobody-listens"
    hooks = WebhookDispatcher([dead], base_delay=0.01, max_delay=0.02, max_attempts=3, queue_size=1, timeout=0.2)
    t = time.perf_counter()
    accepted = [hooks.submit({"n": i}) for i in range(50)]  # not started: the queue fills, then drops
    assert time.perf_counter() - t < 0.1
    assert accepted[0] and not any(accepted[1:]) and hooks.dropped == 49
    hooks.start()
    deadline = time.monotonic() + 10
    while hooks.failed < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    hooks.stop()
    assert hooks.failed == 1 and hooks.delivered == 0
