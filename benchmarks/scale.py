"""Feature backfill at scale: DuckDB vs Spark (``local[N]``) on synthetic logs of growing size.

For each size a synthetic shop log is generated vectorised (users, devices, IPs, cards, merchants and
items drawn with skew; logins, views, orders, payments with failures, refunds, reviews; ~1% of payments
labelled fraud, known 0-20 days later), stored in DuckDB and exported as day-partitioned Parquet. Then
each engine computes the same feature table (every non-graph feature, generated ones included) in its own
process, so peak RSS is that engine's (for Spark: the Python driver plus the JVM, summed, sampled every
0.2 s). Reports events/s and peak RSS per size, and fits time ~ size^k per engine.

Two local cores cannot show a cluster's speed-up: the point here is that the Spark path runs large logs
in bounded memory and how its cost grows; see docs/scale.md for running on a cluster.

    nice -n 5 .venv/bin/python benchmarks/scale.py --sizes 1000000 5000000 20000000 --json out/scale.json
    nice -n 5 .venv/bin/python benchmarks/scale.py --sizes 20000 --engines duckdb spark      # a smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

START = datetime(2024, 1, 1)


def simulate(n: int, path: Path, seed: int = 0) -> None:
    """``n`` events over ~n/50k days (at least 14) into a new store at ``path``, plus labels."""
    from shopguard.store import EventStore

    rng = np.random.default_rng(seed)
    days = max(14, n // 50_000)
    users = max(100, n // 40)

    def ids(prefix: str, k: int, size: int) -> np.ndarray:
        # Zipf-like skew: a few hot keys, a long tail.
        idx = np.minimum((rng.pareto(1.2, size) * k / 20).astype(np.int64), k - 1)
        return np.char.add(prefix, idx.astype(str))

    types = np.array(["login", "view", "view", "order", "pay", "pay", "refund", "review"])
    t = rng.choice(types, n)
    us = np.sort(rng.integers(0, days * 86_400_000_000, n))
    ts = pl.lit(START) + pl.Series("ts", us).cast(pl.Duration("us"))
    is_pay, is_order = t == "pay", t == "order"
    amount = np.where(is_pay | is_order | (t == "refund"), np.round(rng.lognormal(3.5, 1.0, n), 2), np.nan)
    money = is_pay | is_order | (t == "refund")
    fail = rng.random(n)
    frame = pl.DataFrame({
        "event_id": np.char.add("e", np.arange(n).astype(str)),
        "type": t,
        "user_id": ids("u", users, n),
        "device_id": ids("d", users, n),
        "ip": ids("ip", users // 2, n),
        "merchant_id": ids("m", max(20, users // 200), n),
        "item_id": ids("i", max(50, users // 20), n),
        "payment_instrument": ids("c", users, n),
        "order_id": np.char.add("o", (np.arange(n) // 3).astype(str)),
        "amount": amount,
        "status": np.where(fail < (np.where(is_pay, 0.1, 0.05)), "failure", "success"),
        "rating": rng.integers(1, 6, n),
        "__item": is_order | (t == "review") | (t == "view"), "__pay": is_pay, "__money": money,
        "__status": is_pay | (t == "login"), "__review": t == "review",
    }).with_columns(
        ts.alias("ts"), pl.col("amount").fill_nan(None),
        pl.when("__item").then("item_id").alias("item_id"),
        pl.when("__pay").then("payment_instrument").alias("payment_instrument"),
        pl.when("__money").then("order_id").alias("order_id"),
        pl.when("__status").then("status").alias("status"),
        pl.when("__review").then("rating").alias("rating"),
    ).drop("__item", "__pay", "__money", "__status", "__review")
    fraud = frame.filter((pl.col("type") == "pay") & (pl.lit(rng.random(n)) < 0.01))
    delays = pl.Series(rng.integers(0, 20 * 86_400, fraud.height) * 1_000_000).cast(pl.Duration("us"))
    labels = fraud.select(pl.lit("event").alias("entity_kind"), pl.col("event_id").alias("entity_id"),
                          pl.lit(1).alias("label"), pl.lit("card_testing").alias("scenario"),
                          (pl.col("ts") + delays).alias("labeled_at"))
    with EventStore(path) as store:
        step = 2_000_000
        for i in range(0, n, step):
            store.append_events(frame.slice(i, step))
        store.append_labels(labels)


def worker(engine: str, db: Path, parquet: Path, out: Path, master: str) -> None:
    """Run one engine's backfill (in its own process, for a clean peak RSS)."""
    from shopguard.cli.main import app

    args = ["features", "--db", str(db), "--engine", engine, "--out", str(out)]
    if engine == "spark":
        args += ["--parquet", str(parquet), "--spark-master", master]
    app(args, standalone_mode=False)


def measure(cmd: list[str]) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MiB, the process tree summed, sampled) and exit code of ``cmd``."""
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [ps, *ps.children(recursive=True)])
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.2)
    return time.perf_counter() - started, peak / 2**20, proc.returncode


def fit_exponent(sizes: list[int], secs: list[float]) -> float | None:
    """k in time ~ size^k (least squares on logs); None below two sizes."""
    if len(sizes) < 2:
        return None
    k, _ = np.polyfit(np.log(sizes), np.log(secs), 1)
    return round(float(k), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000])
    ap.add_argument("--engines", nargs="+", default=["duckdb", "spark"], choices=["duckdb", "spark"])
    ap.add_argument("--spark-master", default="local[2]")
    ap.add_argument("--json", type=Path, help="Write the results here too.")
    ap.add_argument("--worker", nargs=5, metavar=("ENGINE", "DB", "PARQUET", "OUT", "MASTER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        engine, db, parquet, out, master = args.worker
        worker(engine, Path(db), Path(parquet), Path(out), master)
        return

    from shopguard.store import EventStore
    from shopguard.store.parquet import export_parquet

    rows = []
    with tempfile.TemporaryDirectory(prefix="shopguard-scale-") as tmp:
        for n in args.sizes:
            db, pq = Path(tmp) / f"s{n}.duckdb", Path(tmp) / f"pq{n}"
            t0 = time.perf_counter()
            simulate(n, db)
            with EventStore(db, read_only=True) as store:
                export_parquet(store, pq)
            sim_s = time.perf_counter() - t0
            for engine in args.engines:
                out = Path(tmp) / f"{engine}{n}.parquet"
                secs, peak, rc = measure([sys.executable, __file__, "--worker", engine, str(db), str(pq), str(out),
                                          args.spark_master])
                row = {"events": n, "engine": engine, "seconds": round(secs, 1), "events_per_s": round(n / secs),
                       "peak_rss_mib": round(peak), "ok": rc == 0, "simulate_export_s": round(sim_s, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
            db.unlink(missing_ok=True)
    fits = {e: fit_exponent([r["events"] for r in rows if r["engine"] == e and r["ok"]],
                            [r["seconds"] for r in rows if r["engine"] == e and r["ok"]]) for e in args.engines}
    result = {"machine_cores": __import__("os").cpu_count(), "spark_master": args.spark_master, "runs": rows,
              "time_exponent": fits,
              "note": "2 local cores cannot show a cluster's speed-up; see docs/scale.md"}
    print(json.dumps({"time_exponent": fits}))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    if not all(r["ok"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
