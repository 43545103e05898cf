"""Crash safety: kill -9 the server mid-stream, restart it; every acknowledged event is stored exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from tests.api.conftest import REPO, event, free_port, make_keys

from shopguard.store import EventStore


def _start(db: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "shopguard.cli.main", "serve", "--db", str(db), "--port", str(port),
           "--rules", str(REPO / "examples" / "rules.yaml")]
    proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)


@pytest.mark.slow
def test_kill_9_mid_stream_loses_no_acknowledged_event(tmp_path: Path) -> None:
    db = tmp_path / "crash.duckdb"
    keys = make_keys(db)
    headers = {"Authorization": f"Bearer {keys['ingest']}"}
    port = free_port()
    log = tmp_path / "server.log"
    proc = _start(db, port, log)
    acked: dict[str, dict] = {}
    stop = threading.Event()

    def stream(worker: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=10) as c:
            for i in range(2_000):
                if stop.is_set():
                    return
                if i % 3 == 0:  # mix single events and batches
                    body = {"events": [event(f"k{worker}-{i}-{j}", user=f"k{worker}", seconds=i + j / 10)
                                       for j in range(5)]}
                else:
                    body = event(f"k{worker}-{i}", user=f"k{worker}", seconds=i)
                try:
                    r = c.post("/v1/events", json=body)
                except httpx.HTTPError:
                    return  # the server died under us: this request was never acknowledged
                if r.status_code == 200:
                    out = r.json()
                    for d in out.get("decisions", [out]):
                        acked[d["event_id"]] = d

    threads = [threading.Thread(target=stream, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 150 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # mid-stream: requests are in flight
    proc.wait(10)
    stop.set()
    for t in threads:
        t.join(30)
    assert len(acked) >= 150

    proc = _start(db, port, log)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as c:
            # Re-sending acknowledged events after the restart returns their original decisions.
            sample = list(acked)[:: max(1, len(acked) // 20)]
            for eid in sample:
                worker, i = eid[1:].split("-")[:2]
                r = c.post("/v1/events", json=event(eid, user=f"k{worker}"))
                assert r.json() == acked[eid]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    with EventStore(db, read_only=True) as store:
        rows = store.query("SELECT event_id, count(*) AS n FROM events GROUP BY 1")
        decided = set(store.query("SELECT event_id FROM decisions")["event_id"].to_list())
    counts = dict(zip(rows["event_id"].to_list(), rows["n"].to_list(), strict=True))
    missing = [e for e in acked if counts.get(e) != 1]
    assert not missing, f"{len(missing)} acknowledged events lost or duplicated, e.g. {missing[:3]}"
    assert set(acked) <= decided


@pytest.mark.slow
def test_kill_9_under_concurrent_single_events_group_commit(tmp_path: Path) -> None:
    """Many connections at once: their events share model passes and journal fsyncs (group commit).
    Killed mid-stream, every acknowledged event is stored exactly once after the restart, with the
    decision it was answered with."""
    db = tmp_path / "group.duckdb"
    keys = make_keys(db)
    headers = {"Authorization": f"Bearer {keys['ingest']}"}
    port = free_port()
    log = tmp_path / "server.log"
    proc = _start(db, port, log)
    acked: dict[str, dict] = {}
    stop = threading.Event()

    def stream(worker: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=10) as c:
            for i in range(1_000):
                if stop.is_set():
                    return
                try:
                    r = c.post("/v1/events", json=event(f"g{worker}-{i}", user=f"g{worker % 4}", seconds=i))
                except httpx.HTTPError:
                    return  # the server died under us: never acknowledged
                if r.status_code == 200:
                    acked[r.json()["event_id"]] = r.json()

    threads = [threading.Thread(target=stream, args=(w,)) for w in range(12)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 200 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    stop.set()
    for t in threads:
        t.join(30)
    assert len(acked) >= 200

    proc = _start(db, port, log)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as c:
            for eid in list(acked)[:: max(1, len(acked) // 15)]:
                worker = int(eid[1:].split("-")[0])
                assert c.post("/v1/events", json=event(eid, user=f"g{worker % 4}")).json() == acked[eid]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    with EventStore(db, read_only=True) as store:
        rows = store.query("SELECT event_id, count(*) AS n FROM events GROUP BY 1")
        decisions = store.query("SELECT event_id, action, risk_level FROM decisions")
    counts = dict(zip(rows["event_id"].to_list(), rows["n"].to_list(), strict=True))
    missing = [e for e in acked if counts.get(e) != 1]
    assert not missing, f"{len(missing)} acknowledged events lost or duplicated, e.g. {missing[:3]}"
    stored = {r["event_id"]: r for r in decisions.iter_rows(named=True)}
    assert all(stored[e]["action"] == d["action"] and stored[e]["risk_level"] == d["risk_level"]
               for e, d in acked.items())
