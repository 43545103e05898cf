"""Decision-service benchmark: latency in-process and over HTTP (open and closed loop), sustained events/s.

    nice -n 10 .venv/bin/python benchmarks/service.py [--model DIR] [--train-transformer [--fusion]] [--json out.json]
    nice -n 10 .venv/bin/python benchmarks/service.py --soak 600 [--soak-rate 300] --json soak.json

A simulated shop gives realistic traffic: its first days are stored as history (online features and the
account graph are rebuilt from them), the rest is replayed as live events. Without ``--model`` a small
LightGBM bundle is trained on the history first. Every run is bounded in count and time.

Reported: decision latency p50/p99/p99.9 in-process (decide + durable commit, one event at a time) and
over HTTP on loopback against ``shopguard serve`` in its own process (auth on). The HTTP load comes from
a separate process running a raw asyncio HTTP/1.1 client over keep-alive connections, so the client
costs ~0.1-0.2 ms CPU per request and never shares the server's interpreter. Open loop (``--rates``):
requests are due at fixed times whatever the server does and latency counts from the due time, so a
stall is never hidden (no coordinated omission). Closed loop (``--clients`` connections back to back):
the max sustained rate. Batch endpoint: sustained events/s. Each row also carries the server process's
CPU time per event (from /proc), which does not depend on what else the machine runs; the in-process
single-event rows carry the process's CPU per event too (and, in the JSON, the deciding thread's alone). The HTTP rows also
carry the server's stall meter: how many 10 ms timer wake-ups of its event loop came more than 5 / 10 ms late
during the run (``shopguard_event_loop_lag_seconds`` from /metrics), which tells a stall inside the server
from a slow client or a busy machine. With
``--sequence-model``/``--train-transformer`` the in-process and HTTP rows are repeated with the
behaviour transformer in the path (its session surprise as ``sequence_score`` for the rules); with
``--fusion`` too, with the fusion model (transformer + engineered features, ``train --detector fusion``)
as the model itself, decided from the service's per-user history cache. ``--soak SECONDS`` runs only a
soak: one server, open loop at ``--soak-rate`` (300 events/s) for SECONDS, errors, p50/p99 and the
server's RSS every ``--soak-sample`` seconds, with ``rss_growth_after_warmup`` = (last - RSS at 60 s) /
RSS at 60 s in the JSON row. Published figures and targets are printed beside ours; ratios are
against the in-process rules-only baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
FUSION_NAME = "rules + fusion (transformer + features as the model)"
console = Console(width=160)

PUBLISHED = {
    "stripe_radar_ms": "< 100 ms (Stripe Radar, documented)",
    "visa_ms": "~20 ms (Visa risk score, reported)",
    "afd_tps": "200 TPS default quota (Amazon Fraud Detector)",
    "target_p99_ms": "<= 10 ms p99 at 500 events/s over HTTP (our target)",
    "target_eps": ">= 2,000 events/s sustained on 2 cores (our target)",
}


def pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float) * 1000
    if a.size == 0:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "p999_ms": float("nan")}
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "p999_ms": float(np.percentile(a, 99.9))}


def jsonable(rec: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in rec.items():
        if v is None:
            continue
        if isinstance(v, datetime):
            v = v.isoformat()
        if k == "attrs" and isinstance(v, str):
            v = json.loads(v)
        out[k] = v
    return out


# -- data ----------------------------------------------------------------------------------------------
def prepare(workdir: Path, users: int, days: int, live_days: float, model: Path | None) -> tuple[Path, Path | None,
                                                                                             list[dict[str, Any]]]:
    from shopguard.events.simulate import SimulationConfig, simulate_shop
    from shopguard.store import EventStore

    console.print(f"simulating {users:,} users over {days} days …")
    shop = simulate_shop(SimulationConfig(users=users, days=days, seed=5))
    events = shop.events.sort(["ts", "event_id"])
    cut = events["ts"].max() - __import__("datetime").timedelta(days=live_days)
    history, live = events.filter(events["ts"] < cut), events.filter(events["ts"] >= cut)
    db = workdir / "bench.duckdb"
    with EventStore(db) as store:
        store.append_events(history)
        labels = shop.labels.filter(shop.labels["labeled_at"] < cut)
        store.append_labels(labels)
        if model is None:
            from shopguard.evaluation.splits import SplitConfig
            from shopguard.pipeline import train

            console.print(f"training a LightGBM bundle on {history.height:,} history events …")
            model = workdir / "model"
            train(store, model, detector="lightgbm", split=SplitConfig(delay_days=1, test_days=1))
    live_records = [jsonable(r) for r in live.iter_rows(named=True)]
    console.print(f"history {history.height:,} events, live stream {len(live_records):,} events")
    return db, model, live_records


def fresh_copy(db: Path, name: str) -> Path:
    """Each measurement starts from the same history (DuckDB files copy cleanly when closed)."""
    import shutil

    dest = db.with_name(f"{name}.duckdb")
    for suffix in ("", ".wal"):
        src = Path(str(db) + suffix)
        if src.exists():
            shutil.copy(src, Path(str(dest) + suffix))
    return dest


# -- in-process ------------------------------------------------------------------------------------------
def in_process(db: Path, model: Path | None, rules: Path, live: list[dict[str, Any]], n: int, batch: int,
               sequence: Path | None = None) -> dict[str, Any]:
    from shopguard.api.app import _one_thread_per_decision
    from shopguard.api.scoring import DecisionEngine, ModelSlot
    from shopguard.decision.rules import ReloadingRules
    from shopguard.store import EventStore

    _one_thread_per_decision()
    store = EventStore(db)
    slot = ModelSlot(model)
    slot.load_initial()
    seq = None
    if sequence is not None:
        from shopguard.models.sequence.export import IncrementalScorer

        seq = IncrementalScorer(sequence)
    # As the service runs it: acknowledged after an fsync-ed journal append, DuckDB written behind.
    engine = DecisionEngine(store, rules=ReloadingRules(rules), model=slot, sequence=seq,
                            journal=Path(f"{db}.journal"))
    t = time.perf_counter()
    engine.start()
    start_s = time.perf_counter() - t
    lat, decide = [], []
    singles = live[:n]
    t0 = time.perf_counter()
    # CPU per event, robust to what else the machine runs: the deciding thread alone, and the whole
    # process (writer and applier threads, and any worker threads a library wakes).
    thread0, process0 = time.thread_time(), time.process_time()
    for rec in singles:
        t = time.perf_counter()
        d = engine.process([rec], batch=False)[0]
        lat.append(time.perf_counter() - t)
        decide.append((d.get("latency_ms") or 0) / 1000)
    single_s = time.perf_counter() - t0
    thread_cpu, process_cpu = time.thread_time() - thread0, time.process_time() - process0
    rest = live[n:n + 10 * batch]
    t0 = time.perf_counter()
    for i in range(0, len(rest), batch):
        engine.process(rest[i:i + batch])
    batch_s = time.perf_counter() - t0
    engine.stop()
    store.close()
    per = 1000 / max(len(singles), 1)
    return {"start_s": start_s, "events": len(singles), "latency": pct(lat), "decide": pct(decide),
            "cpu": {"server_cpu_ms_per_request": process_cpu * per, "deciding_thread_cpu_ms_per_event": thread_cpu * per},
            "single_events_per_s": len(singles) / single_s if single_s else 0.0,
            "batch_events_per_s": len(rest) / batch_s if batch_s and rest else 0.0}


# -- over HTTP ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``shopguard serve`` in a subprocess (its own process, as in production; auth on, with a key)."""

    def __init__(self, db: Path, model: Path | None, rules: Path, sequence: Path | None = None) -> None:
        from shopguard.api.deps import create_key
        from shopguard.store import EventStore

        with EventStore(db) as store:
            self.key = create_key(store, "admin", "bench")[0]
        self.port = free_port()
        cmd = [sys.executable, "-m", "shopguard.cli.main", "serve", "--db", str(db), "--port", str(self.port),
               "--rules", str(rules), "--rate-limit", "1000000"]
        if model is not None:
            cmd += ["--model", str(model)]
        if sequence is not None:
            cmd += ["--sequence-model", str(sequence)]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("server did not start: " + (self.proc.stderr.read().decode()[-2000:]
                                                               if self.proc.stderr else ""))
            time.sleep(0.2)
        self.headers = {"Authorization": f"Bearer {self.key}", "content-type": "application/json"}

    def cpu_seconds(self) -> float:
        """User + system CPU the server process has used so far (all its threads), from /proc."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def loop_lag(self) -> dict[str, float]:
        """The server's stall meter (``shopguard_event_loop_lag_seconds``: how late a 10 ms timer fires on
        its event loop): wake-ups so far, those late by more than 5 and 10 ms, and the largest lag."""
        try:
            text = httpx.get(self.url + "/metrics", headers=self.headers, timeout=10).text
        except httpx.HTTPError:
            return {}
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("shopguard_event_loop_lag_seconds_count"):
                out["count"] = float(line.split()[-1])
            elif line.startswith('shopguard_event_loop_lag_seconds_bucket{le="0.005"}'):
                out["le5"] = float(line.split()[-1])
            elif line.startswith('shopguard_event_loop_lag_seconds_bucket{le="0.01"}'):
                out["le10"] = float(line.split()[-1])
            elif line.startswith("shopguard_event_loop_lag_max_seconds"):
                out["max_ms"] = 1000 * float(line.split()[-1])
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# -- load generator: a separate process with a raw asyncio HTTP/1.1 client ---------------------------------
def _http_request(path: str, headers: dict[str, str], body: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode() + b"\r\n" + body


async def _drive(port: int, requests: list[bytes], rate: float | None, connections: int,
                 timeout: float) -> dict[str, Any]:
    """Send ``requests`` over ``connections`` keep-alive connections.

    Open loop (``rate`` given): request i is due at ``t0 + i / rate`` whatever the server does, and its
    latency counts from that due time, so time spent waiting for a free connection behind a slow answer
    is counted (no coordinated omission). Closed loop (``rate`` None): each connection sends back to back.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    n = len(requests)
    lat = [float("nan")] * n
    status = [0] * n
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                i, due = item
                if rate is None:
                    due = time.perf_counter()
                try:
                    writer.write(requests[i])
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line[:15].lower() == b"content-length:":
                            length = int(line[15:])
                    if length:
                        await asyncio.wait_for(reader.readexactly(length), timeout)
                    status[i] = int(head[9:12])
                except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                    status[i] = -1
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                lat[i] = time.perf_counter() - due
        finally:
            writer.close()

    workers = [loop.create_task(connection()) for _ in range(connections)]
    await asyncio.sleep(0.05)  # connections open before the clock starts
    t0 = time.perf_counter()
    if rate is None:
        for i in range(n):
            queue.put_nowait((i, 0.0))
    else:
        for i in range(n):
            due = t0 + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            queue.put_nowait((i, due))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    wall = time.perf_counter() - t0
    idx = [i for i in range(n) if status[i] == 200]
    return {"events_sent": n, "errors": n - len(idx), "wall_s": wall, "latencies": [lat[i] for i in idx],
            "answered": idx, "client_cpu_s": time.process_time()}


def loadgen(port: int, requests: list[bytes], rate: float | None, connections: int, timeout: float = 30.0
            ) -> dict[str, Any]:
    """Entry point of the load-generator process (uvloop when installed: it costs the client less CPU)."""
    import asyncio

    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    import gc

    cpu0 = time.process_time()
    gc.disable()  # a collection in the client would add its pause to the latencies it measures
    try:
        out = runner(_drive(port, requests, rate, connections, timeout))
    finally:
        gc.enable()
    out["client_cpu_s"] = time.process_time() - cpu0
    return out


class LoadGenerator:
    """The load generator in its own process (spawned once), so its CPU never counts as the server's and
    its event loop never waits on ours. Everything it sends is encoded here, beforehand."""

    def __init__(self) -> None:
        import multiprocessing as mp

        self.pool = mp.get_context("spawn").Pool(1)

    def run(self, server: Server, bodies: list[bytes], rate: float | None, connections: int) -> dict[str, Any]:
        headers = {k.lower(): v for k, v in server.headers.items()}
        requests = [_http_request("/v1/events", headers, b) for b in bodies]
        lag0 = server.loop_lag()
        cpu0 = server.cpu_seconds()
        out: dict[str, Any] = self.pool.apply(loadgen, (server.port, requests, rate, connections))
        cpu = server.cpu_seconds() - cpu0
        lag1 = server.loop_lag()
        stalls = {}
        if lag0 and lag1:
            # Timer wake-ups of the server's event loop during this run that came more than 5 / 10 ms late.
            wakes = lag1["count"] - lag0["count"]
            stalls = {"loop_wakeups": wakes, "loop_late_5ms": wakes - (lag1["le5"] - lag0["le5"]),
                      "loop_late_10ms": wakes - (lag1["le10"] - lag0["le10"])}
        lat = out.pop("latencies")
        # Each answered request's position and latency (diagnostics: when in the run the slow ones were).
        self.last = {"rate": rate, "answered": out.pop("answered"), "latencies": lat}
        n = len(bodies)
        return {"requests": n, "rate": rate, "connections": connections, "errors": out["errors"],
                "achieved_per_s": len(lat) / out["wall_s"] if out["wall_s"] else 0.0,
                "server_cpu_ms_per_request": 1000 * cpu / n, "client_cpu_ms_per_request": 1000 * out["client_cpu_s"] / n,
                **pct(lat), **stalls}

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


class Stream:
    """Live events handed out in time order, each once; replayed with fresh ids when it runs out.

    With ``advance_time`` each replay is also moved forward by the stream's span (every time field), so
    simulated time keeps running as it does in production and windows evict as they would there; without
    it a replay repeats the same times (late events that land in windows already seen)."""

    TS_FIELDS = ("ts", "promised_ts", "actual_ts")

    def __init__(self, live: list[dict[str, Any]], advance_time: bool = False) -> None:
        self.live = live
        self.pos = 0
        self.lap = 0
        self.advance = advance_time
        times = [datetime.fromisoformat(str(e["ts"])) for e in live[:1] + live[-1:]] if live else []
        self.span = (times[-1] - times[0]) + __import__("datetime").timedelta(seconds=1) if times else None

    def _shifted(self, e: dict[str, Any]) -> dict[str, Any]:
        out = {**e, "event_id": f"{e['event_id']}-r{self.lap}"}
        if self.advance and self.span is not None:
            for k in self.TS_FIELDS:
                if isinstance(out.get(k), str):
                    out[k] = (datetime.fromisoformat(out[k]) + self.lap * self.span).isoformat()
        return out

    def take(self, n: int) -> list[dict[str, Any]]:
        out = []
        while len(out) < n:
            if self.pos == len(self.live):
                self.pos, self.lap = 0, self.lap + 1
            e = self.live[self.pos]
            out.append(e if self.lap == 0 else self._shifted(e))
            self.pos += 1
        return out


def single_bodies(events: list[dict[str, Any]]) -> list[bytes]:
    return [json.dumps(e).encode() for e in events]


class _SoakOnly(Exception):
    """A soak run skips the other HTTP rows."""


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MB (VmRSS from /proc)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def soak(db: Path, model: Path | None, rules: Path, live: list[dict[str, Any]], seconds: float, rate: float,
         sample_s: float, connections: int) -> dict[str, Any]:
    """Sustained open-loop load at ``rate`` events/s for ``seconds`` against one ``shopguard serve``, the
    server's RSS sampled every ``sample_s`` s. ``rss_growth_after_warmup`` = (last - value at 60 s) / value
    at 60 s (the first minute is warm-up: caches, the recent-decisions memory, the journal fill up)."""
    import threading

    console.print(f"soak: {rate:.0f} events/s for {seconds:.0f} s over HTTP (rules + lightgbm) …")
    stream = Stream(live, advance_time=True)  # replays move on in time: windows evict as in production
    server = Server(fresh_copy(db, "soak"), model, rules)
    gen = LoadGenerator()
    try:
        gen.run(server, single_bodies(stream.take(200)), None, 4)  # warm-up (not reported)
        bodies = single_bodies(stream.take(int(rate * seconds)))
        samples: list[tuple[float, float]] = []
        result: dict[str, Any] = {}
        done = threading.Event()

        def drive() -> None:
            try:
                result.update(gen.run(server, bodies, rate, connections))
            finally:
                done.set()

        t0 = time.monotonic()
        worker = threading.Thread(target=drive, daemon=True)
        worker.start()
        while not done.wait(max(0.0, t0 + len(samples) * sample_s - time.monotonic())):
            samples.append((round(time.monotonic() - t0, 1), round(rss_mb(server.proc.pid), 1)))
        samples.append((round(time.monotonic() - t0, 1), round(rss_mb(server.proc.pid), 1)))
        worker.join()
    finally:
        gen.close()
        server.stop()
    at60 = next((mb for t, mb in samples if t >= 60.0), samples[-1][1])
    last = samples[-1][1]
    return {"dataset": "simulated shop", "model": "rules + lightgbm", "mode": f"HTTP soak @ {rate:.0f}/s, {seconds:.0f} s",
            "p50_ms": result.get("p50_ms"), "p99_ms": result.get("p99_ms"), "p999_ms": result.get("p999_ms"),
            "events_per_s": result.get("achieved_per_s"), "events": len(bodies), "errors": result.get("errors"),
            "offered_per_s": rate, "soak_s": seconds, "server_cpu_ms_per_request": result.get("server_cpu_ms_per_request"),
            "rss_samples_mb": samples, "rss_start_mb": samples[0][1], "rss_at_60s_mb": at60, "rss_end_mb": last,
            "rss_max_mb": max(mb for _, mb in samples),
            "rss_growth_after_warmup": (last - at60) / at60 if at60 == at60 and at60 > 0 else float("nan"),
            **{k: result[k] for k in ("loop_wakeups", "loop_late_5ms", "loop_late_10ms") if k in result}}


def batch_bodies(events: list[dict[str, Any]], batch: int) -> list[bytes]:
    return [json.dumps({"events": events[i:i + batch]}).encode() for i in range(0, len(events), batch)]


def train_transformer(db: Path, folder: Path) -> Path:
    """A small behaviour transformer, time-boxed (the foundation benchmark measures quality; here only cost)."""
    from shopguard.models.sequence.config import NetworkConfig, PretrainConfig
    from shopguard.models.sequence.detectors import SequenceInput, SequenceSurpriseDetector
    from shopguard.models.sequence.export import export_onnx
    from shopguard.models.sequence.pretrain import pretrain
    from shopguard.store import EventStore

    console.print("pretraining a small behaviour transformer (time-boxed) and exporting it to ONNX …")
    with EventStore(db, read_only=True) as store:
        events = store.events()
    fm_dir = folder.parent / f"{folder.name}-pretrained"
    pretrain(events, network=NetworkConfig(d_model=64, n_layers=2, n_heads=4, d_ff=128, max_len=32),
             config=PretrainConfig(epochs=1, max_steps=60, num_threads=1), out_dir=fm_dir)
    # The served score is the session surprise (what `shopguard pretrain` exports): scales fitted on
    # the latest history events, no labels.
    detector = SequenceSurpriseDetector(pretrained=str(fm_dir), num_threads=1)
    detector.fit(SequenceInput(events, events.sort("ts").get_column("event_id").tail(5_000).to_list()))
    export_onnx(detector, folder)
    return folder


def train_fusion(db: Path, pretrained: Path, folder: Path) -> Path:
    """The fusion model (the pretrained transformer fused with the engineered features, frozen probe) on the
    history, exported to ONNX as ``shopguard train --detector fusion`` does: the service then decides with
    the transformer *as* the model (its history cache + one fused graph per pass)."""
    from shopguard.evaluation.splits import SplitConfig
    from shopguard.models.sequence.export import export_onnx
    from shopguard.pipeline import train
    from shopguard.store import EventStore

    console.print("training the fusion model (transformer + features, frozen probe) and exporting it …")
    with EventStore(db) as store:
        train(store, folder, detector="fusion", split=SplitConfig(delay_days=1, test_days=1),
              params={"pretrained": str(pretrained), "method": "frozen", "fit_negatives": 3000})
    export_onnx(folder, folder / "onnx")
    return folder


# -- report ----------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="Model folder or registry (default: train a small one).")
    ap.add_argument("--sequence-model", type=Path, help="Exported behaviour transformer (adds 'with transformer').")
    ap.add_argument("--train-transformer", action="store_true",
                    help="Pretrain a small behaviour transformer on the history (time-boxed) and export it, "
                         "to measure the service with the transformer in the path.")
    ap.add_argument("--fusion", action="store_true",
                    help="With --train-transformer: also train the fusion model (transformer + engineered "
                         "features) and measure the service with it as the model.")
    ap.add_argument("--rules", type=Path, default=REPO / "examples" / "rules.yaml")
    ap.add_argument("--users", type=int, default=1500)
    ap.add_argument("--days", type=int, default=8)
    ap.add_argument("--in-process", type=int, default=1500, help="Single events decided in-process.")
    ap.add_argument("--http", type=int, default=3000, help="Single events sent closed-loop over HTTP (max rate).")
    ap.add_argument("--clients", type=int, default=16, help="Connections of the closed-loop (saturation) run.")
    ap.add_argument("--rates", default="200,500,800", help="Open-loop arrival rates (events/s), comma separated.")
    ap.add_argument("--connections", type=int, default=32, help="Keep-alive connections of the open-loop client.")
    ap.add_argument("--open-seconds", type=float, default=8.0, help="Length of each open-loop run.")
    ap.add_argument("--skip-in-process", action="store_true", help="Only the HTTP rows.")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--batch-events", type=int, default=20_000)
    ap.add_argument("--json", type=Path, help="Write the rows here.")
    ap.add_argument("--soak", type=float, metavar="SECONDS",
                    help="Only a soak run: --soak-rate events/s for SECONDS against one server, with its RSS sampled "
                         "(issue 15 acceptance: --soak 600, 0 errors, RSS growth <= 10%% after the first minute).")
    ap.add_argument("--soak-rate", type=float, default=300.0, help="Arrival rate of the soak run (events/s).")
    ap.add_argument("--soak-sample", type=float, default=5.0, help="Seconds between RSS samples of the soak run.")
    args = ap.parse_args()

    os.environ.setdefault("SHOPGUARD_PROGRESS", "0")
    with tempfile.TemporaryDirectory(prefix="sg-bench-") as tmp:
        work = Path(tmp)
        db, model, live = prepare(work, args.users, args.days, live_days=2.0, model=args.model)
        need = args.in_process + 10 * args.batch
        if len(live) < need:
            console.print(f"[yellow]only {len(live):,} live events; some runs are shorter[/]")
        rows: list[dict[str, Any]] = []
        if args.soak:
            rows.append(soak(db, model, args.rules, live, args.soak, args.soak_rate, args.soak_sample,
                             args.connections))
            args.skip_in_process, args.rates, args.train_transformer, args.fusion = True, "", False, False
        fusion: Path | None = None
        if args.train_transformer and args.sequence_model is None:
            args.sequence_model = train_transformer(db, work / "sequence")
            if args.fusion:
                fusion = train_fusion(fresh_copy(db, "fusion_train"), work / "sequence-pretrained", work / "fusion")
        elif args.fusion:
            console.print("[yellow]--fusion needs --train-transformer: skipped[/]")

        def add(mode: str, model_name: str, res: dict[str, Any], eps_key: str = "events_per_s") -> None:
            row = {"dataset": "simulated shop", "model": model_name, "mode": mode,
                   "p50_ms": res.get("p50_ms"), "p99_ms": res.get("p99_ms"), "p999_ms": res.get("p999_ms"),
                   "events_per_s": res.get(eps_key), "events": res.get("events"), "errors": res.get("errors", 0)}
            # CPU per request is load independent: the figure to compare across machines and runs.
            for k in ("offered_per_s", "server_cpu_ms_per_request", "deciding_thread_cpu_ms_per_event",
                      "client_cpu_ms_per_request", "loop_wakeups", "loop_late_5ms", "loop_late_10ms"):
                if res.get(k) is not None:
                    row[k] = res[k]
            rows.append(row)

        if not args.skip_in_process:
            console.print("in-process, rules only (baseline) …")
            base = in_process(fresh_copy(db, "rules_only"), None, args.rules, live, args.in_process, args.batch)
            add("in-process single (decide+commit)", "rules only", {**base["latency"], "events": base["events"],
                "events_per_s": base["single_events_per_s"], **base["cpu"]})
            add("in-process batch", "rules only", {"events_per_s": base["batch_events_per_s"], "events": 10 * args.batch})
            console.print("in-process, rules + model …")
            full = in_process(fresh_copy(db, "full"), model, args.rules, live, args.in_process, args.batch)
            add("in-process single (decide+commit)", "rules + lightgbm", {**full["latency"], "events": full["events"],
                "events_per_s": full["single_events_per_s"], **full["cpu"]})
            add("in-process decide only", "rules + lightgbm", {**full["decide"], "events": full["events"]})
            add("in-process batch", "rules + lightgbm", {"events_per_s": full["batch_events_per_s"],
                                                          "events": 10 * args.batch})
            if args.sequence_model is not None:
                console.print("in-process, rules + model + transformer …")
                seq = in_process(fresh_copy(db, "seq"), model, args.rules, live, args.in_process, args.batch,
                                 sequence=args.sequence_model)
                add("in-process single (decide+commit)", "rules + lightgbm + transformer",
                    {**seq["latency"], "events": seq["events"], "events_per_s": seq["single_events_per_s"],
                     **seq["cpu"]})
                add("in-process decide only", "rules + lightgbm + transformer", {**seq["decide"], "events": seq["events"]})
            if fusion is not None:
                console.print("in-process, rules + fusion model …")
                fus = in_process(fresh_copy(db, "fusion"), fusion, args.rules, live, args.in_process, args.batch)
                add("in-process single (decide+commit)", FUSION_NAME,
                    {**fus["latency"], "events": fus["events"], "events_per_s": fus["single_events_per_s"], **fus["cpu"]})
                add("in-process decide only", FUSION_NAME, {**fus["decide"], "events": fus["events"]})
        else:
            args.in_process = 0

        rates = [float(r) for r in args.rates.split(",") if r.strip()]
        stream = Stream(live[args.in_process + 10 * args.batch:] or live)
        gen = LoadGenerator()
        try:
            if args.soak:
                raise _SoakOnly
            variants: list[tuple[str, Path | None, Path | None]] = [("rules + lightgbm", model, None)]
            if args.sequence_model is not None:
                variants.append(("rules + lightgbm + transformer", model, args.sequence_model))
            if fusion is not None:
                variants.append((FUSION_NAME, fusion, None))
            for i, (name, served, seq_model) in enumerate(variants):
                console.print(f"over HTTP ({name}) …")
                server = Server(fresh_copy(db, f"http{i}"), served, args.rules, sequence=seq_model)
                try:
                    gen.run(server, single_bodies(stream.take(200)), None, 4)  # warm-up (not reported)
                    for rate in rates:
                        n = int(rate * args.open_seconds)
                        console.print(f"  open loop at {rate:.0f} events/s ({n:,} single-event requests) …")
                        res = gen.run(server, single_bodies(stream.take(n)), rate, args.connections)
                        add(f"HTTP open loop @ {rate:.0f}/s, one event per request", name,
                            {**res, "events": n, "offered_per_s": rate}, "achieved_per_s")
                    console.print(f"  closed loop, {args.clients} connections (max sustained rate) …")
                    res = gen.run(server, single_bodies(stream.take(args.http)), None, args.clients)
                    add(f"HTTP closed loop, {args.clients} connections, one event per request", name,
                        {**res, "events": args.http}, "achieved_per_s")
                    if i == 0:
                        bulk = stream.take(args.batch_events)
                        console.print(f"  batches of {args.batch} …")
                        res = gen.run(server, batch_bodies(bulk, args.batch), None, 2)
                        res["achieved_per_s"] *= args.batch
                        for k in ("server_cpu_ms_per_request", "client_cpu_ms_per_request"):
                            res[k] /= args.batch  # per event, like the single-event rows
                        add(f"HTTP batch of {args.batch}, 2 connections (ms per request)", name,
                            {**res, "events": len(bulk)}, "achieved_per_s")
                finally:
                    server.stop()
        except _SoakOnly:
            pass
        finally:
            gen.close()

    base_p50 = (rows[0]["p50_ms"] if rows else None) or float("nan")
    table = Table(title="shopguard decision service (loopback, this machine; see notes)")
    for c in ("mode", "model", "p50 ms", "p99 ms", "p99.9 ms", "events/s", "server CPU ms/event",
              "loop stalls >10 ms", "errors", "p50 vs baseline"):
        table.add_column(c, justify="left" if c in ("mode", "model") else "right")
    for r in rows:
        f = (lambda v: "-" if v is None or v != v else f"{v:,.2f}")  # noqa: E731
        ratio = "-" if r["p50_ms"] is None else f"{r['p50_ms'] / base_p50:.2f}x"
        table.add_row(r["mode"], r["model"], f(r["p50_ms"]), f(r["p99_ms"]), f(r["p999_ms"]),
                      "-" if r["events_per_s"] is None else f"{r['events_per_s']:,.0f}",
                      f(r.get("server_cpu_ms_per_request")),
                      "-" if r.get("loop_wakeups") is None else f"{r['loop_late_10ms']:.0f} / {r['loop_wakeups']:.0f}",
                      str(r["errors"]), ratio)
    console.print(table)
    for r in rows:
        if "rss_samples_mb" in r:
            console.print(f"soak: {r['events']:,} events at {r['offered_per_s']:.0f}/s for {r['soak_s']:.0f} s, "
                          f"{r['errors']} errors, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms; server RSS "
                          f"{r['rss_start_mb']:.0f} MB at start, {r['rss_at_60s_mb']:.0f} MB at 60 s, "
                          f"{r['rss_end_mb']:.0f} MB at the end, max {r['rss_max_mb']:.0f} MB: growth after warm-up "
                          f"{100 * r['rss_growth_after_warmup']:+.1f}%")
    pub = Table(title="Published figures and targets")
    pub.add_column("reference")
    pub.add_column("figure")
    for k, v in PUBLISHED.items():
        pub.add_row(k, v)
    console.print(pub)
    console.print(f"machine: {os.cpu_count()} CPUs visible, load average {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "published": PUBLISHED,
                                         "load_average": os.getloadavg()}, indent=2, default=str))


if __name__ == "__main__":
    main()
