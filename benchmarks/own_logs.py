"""Untuned use on logs shopguard was not tuned for: the plain CLI with default flags, against a plain script.

    nice -n 5 .venv/bin/python benchmarks/own_logs.py --json out/own_logs.json

For each log derived from ``../shared/data`` (``--logs``):

- ``handbook``: the Fraud Detection Handbook's 1.75M card payments as they are (labels 0/1 for every
  payment, known 7 days later);
- ``handbook_partial``: the same file where 60% of the payments (drawn at random, seeded) are marked
  "not reviewed" (label 2) and get no label row: a partially labelled log;
- ``handbook_2day``: a 2-day slice of the Handbook (hours-long windows, a short log);
- ``takehome``: the e-commerce first-purchase log (``ecommerce_fraud_takehome``), one order per account,
  with its signup time, device, IP, traffic source, browser, sex and age.

each is written to a file with a mapping YAML, as a new user would, and run through the plain CLI in a
subprocess: ``shopguard ingest --source MAPPING``, ``shopguard train`` with no split or model flags,
``shopguard score`` over the test window and ``shopguard evaluate``. With ``--tune-budget S`` (default
60) it trains again with ``--tune --budget-s S``.

The plain script (``plain_lightgbm``, no shopguard code): LightGBM on the file's raw columns (numbers as
they are, text as categories, times as hour / weekday and gaps between the row's own times) plus, per key
column, how many earlier rows the key had (point-in-time), fitted on the labelled rows of shopguard's
training window whose label was known at the test start, and scored on the labelled rows of its test
window. Both are measured on exactly those test rows (shopguard's score from its stored decisions), so
``ratio_to_plain`` (our average precision / the plain script's) compares like with like. Our own
``evaluate`` figures (known-fraud customers removed per day, as the Handbook protocol does) are in the
``evaluate_*`` fields beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl
import yaml
from rich.console import Console
from rich.table import Table
from sklearn.metrics import average_precision_score, roc_auc_score

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
SHOPGUARD = [sys.executable, "-m", "shopguard.cli.main"]
console = Console(width=None if sys.stdout.isatty() else 140)


@dataclass
class Log:
    """A derived log: its file, mapping, and what the plain script reads from the file."""

    name: str
    path: Path
    mapping: dict[str, Any]
    id_col: str
    id_prefix: str
    time_col: str
    label_col: str
    keys: list[str]
    drop: list[str] = field(default_factory=list)  # columns the plain script must not read (labels, ids)
    delay_days: float = 0.0  # when the file's labels became known


# -- the logs ---------------------------------------------------------------------------------------------
HB_LABEL = {"column": "TX_FRAUD", "positive": [1], "negative": [0], "entity": "event", "delay": "7d",
            "scenario": "card_fraud"}


def _handbook_mapping(path: Path, name: str, **label: Any) -> dict[str, Any]:
    return {"name": name, "path": str(path), "event_type": "pay",
            "event_id": {"column": "TRANSACTION_ID", "prefix": "hb-"},
            "columns": {"user_id": "CUSTOMER_ID", "merchant_id": "TERMINAL_ID", "amount": "TX_AMOUNT",
                        "ts": "TX_DATETIME"},
            "constants": {"status": "success"},
            "label": {**HB_LABEL, **label}}


def _handbook_log(name: str, path: Path, label: dict[str, Any] | None = None) -> Log:
    mapping = _handbook_mapping(path, name, **(label or {}))
    delay = {"7d": 7.0, "6h": 0.25}[mapping["label"]["delay"]]
    return Log(name, path, mapping, "TRANSACTION_ID", "hb-", "TX_DATETIME", "TX_FRAUD", ["CUSTOMER_ID", "TERMINAL_ID"],
               drop=["TRANSACTION_ID", "TX_FRAUD_SCENARIO", "TX_TIME_SECONDS", "TX_TIME_DAYS"], delay_days=delay)


def handbook(data: Path, work: Path, seed: int) -> Log:
    src = data / "card_transactions_handbook" / "transactions.parquet"
    out = work / "handbook.parquet"
    pl.read_parquet(src).drop("TX_FRAUD_SCENARIO").write_parquet(out)
    return _handbook_log("handbook", out)


def handbook_partial(data: Path, work: Path, seed: int) -> Log:
    src = data / "card_transactions_handbook" / "transactions.parquet"
    out = work / "handbook_partial.parquet"
    df = pl.read_parquet(src).drop("TX_FRAUD_SCENARIO")
    rng = np.random.default_rng(seed)
    unreviewed = pl.Series(rng.random(df.height) < 0.6)
    df.with_columns(pl.when(unreviewed).then(pl.lit(2, pl.Int8)).otherwise(pl.col("TX_FRAUD"))
                    .alias("TX_FRAUD")).write_parquet(out)
    return _handbook_log("handbook_partial", out, {"unknown": [2]})


def handbook_2day(data: Path, work: Path, seed: int) -> Log:
    from datetime import datetime

    src = data / "card_transactions_handbook" / "transactions.parquet"
    out = work / "handbook_2day.parquet"
    (pl.read_parquet(src).drop("TX_FRAUD_SCENARIO")
     .filter(pl.col("TX_DATETIME").is_between(datetime(2018, 7, 25), datetime(2018, 7, 27), closed="left"))
     .write_parquet(out))
    # A 2-day log: labels arrive within hours here, not in a week (the mapping says so).
    return _handbook_log("handbook_2day", out, {"delay": "6h"})


def takehome(data: Path, work: Path, seed: int) -> Log:
    src = data / "ecommerce_fraud_takehome" / "fraud_data_subset.parquet"
    out = work / "takehome.parquet"
    pl.read_parquet(src).drop("row_in_source").write_parquet(out)
    mapping = {
        "name": "takehome", "path": str(out), "event_type": "order",
        "event_id": {"column": "user_id", "prefix": "th-"},
        "columns": {"user_id": "user_id", "amount": "purchase_value", "ts": "purchase_time",
                    "device_id": "device_id", "ip": "ip_address"},
        "attrs": {"signup_time": "signup_time", "source": "source", "browser": "browser", "sex": "sex",
                  "age": "age"},
        "label": {"column": "class", "positive": [1], "negative": [0], "entity": "event",
                  "scenario": "first_purchase_fraud"},
    }
    return Log("takehome", out, mapping, "user_id", "th-", "purchase_time", "class", ["device_id", "ip_address"],
               drop=["user_id"])


PLAIN: dict[str, tuple[dict[str, float], dict[str, str]]] = {}  # per log: the plain scores and the split
LOGS: dict[str, Callable[[Path, Path, int], Log]] = {
    "handbook": handbook, "handbook_partial": handbook_partial, "handbook_2day": handbook_2day,
    "takehome": takehome,
}


# -- the plain script (no shopguard code) -----------------------------------------------------------------
def plain_features(log: Log) -> tuple[pl.DataFrame, list[str]]:
    """Raw columns + point-in-time per-key counts: what a careful 20-line script does."""
    df = pl.read_parquet(log.path).sort(log.time_col)
    feats = []
    for c, dt in df.schema.items():
        if c in (log.label_col, log.id_col, *log.drop):
            continue
        if dt == pl.Datetime or isinstance(dt, pl.Datetime):
            df = df.with_columns(pl.col(c).dt.hour().alias(f"{c}_hour"), pl.col(c).dt.weekday().alias(f"{c}_wd"))
            feats += [f"{c}_hour", f"{c}_wd"]
            if c != log.time_col:
                df = df.with_columns(((pl.col(log.time_col) - pl.col(c)).dt.total_seconds()).alias(f"{c}_gap_s"))
                feats.append(f"{c}_gap_s")
        elif dt == pl.Utf8:
            df = df.with_columns(pl.col(c).cast(pl.Categorical))
            feats.append(c)
        elif c not in log.keys:
            feats.append(c)
    for k in log.keys:
        df = df.with_columns(pl.col(log.time_col).cum_count().over(k).alias(f"{k}_n_before"))
        feats.append(f"{k}_n_before")
    return df, feats


def plain_scores(log: Log, split: dict[str, str], test_ids: set[str]) -> dict[str, float]:
    from datetime import datetime, timedelta

    df, feats = plain_features(log)
    train_end, test_start = (datetime.fromisoformat(split[k]) for k in ("train_end", "test_start"))
    known = pl.col(log.time_col) + timedelta(days=log.delay_days) < test_start
    labelled = pl.col(log.label_col).is_in([0, 1])
    train = df.filter((pl.col(log.time_col) < train_end) & labelled & known)
    ids = pl.lit(log.id_prefix) + pl.col(log.id_col).cast(pl.Utf8)
    test = df.with_columns(ids.alias("_id")).filter(pl.col("_id").is_in(list(test_ids)))
    model = lgb.LGBMClassifier(n_estimators=300, learning_rate=0.05, verbose=-1, random_state=0)
    model.fit(train.select(feats).to_pandas(), train[log.label_col].to_numpy())
    p = model.predict_proba(test.select(feats).to_pandas())[:, 1]
    return dict(zip(test["_id"].to_list(), p.tolist(), strict=True))


# -- shopguard through its CLI ----------------------------------------------------------------------------
def cli(*args: str, env: dict[str, str]) -> str:
    r = subprocess.run([*SHOPGUARD, *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"shopguard {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r.stdout


def our_scores(db: Path, model: Path, split: dict[str, str], env: dict[str, str]) -> tuple[dict[str, float], dict[str, int]]:
    """Score the test window with the CLI, read the stored decisions and the labels (duckdb, read-only)."""
    import duckdb

    cli("score", "--db", str(db), "--model", str(model), "--since", split["test_start"], env=env)
    con = duckdb.connect(str(db), read_only=True)
    try:
        version = json.loads((model / "manifest.json").read_text())["model_version"]
        rows = con.execute(
            "SELECT d.event_id, d.score, max(l.label) AS label FROM decisions d JOIN events e USING (event_id) "
            "JOIN labels l ON l.entity_kind = 'event' AND l.entity_id = d.event_id "
            "WHERE d.model_version = ? AND e.ts >= ? GROUP BY 1, 2", [version, split["test_start"]]).fetchall()
    finally:
        con.close()
    return {r[0]: float(r[1]) for r in rows}, {r[0]: int(r[2]) for r in rows}


def metrics(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    if y.sum() == 0 or y.sum() == len(y):
        return {"roc_auc": float("nan"), "average_precision": float("nan"), "recall_at_1pct_fpr": float("nan")}
    neg = np.sort(s[y == 0])
    thr = neg[min(len(neg) - 1, int(np.ceil(0.99 * len(neg))) - 1)]
    return {"roc_auc": float(roc_auc_score(y, s)), "average_precision": float(average_precision_score(y, s)),
            "recall_at_1pct_fpr": float((s[y == 1] > thr).mean())}


def run_log(log: Log, work: Path, tune_budget: float, env: dict[str, str]) -> list[dict[str, Any]]:
    mapping = work / f"{log.name}.yaml"
    mapping.write_text(yaml.safe_dump(log.mapping, sort_keys=False))
    db = work / f"{log.name}.duckdb"
    t0 = time.perf_counter()
    cli("ingest", "--source", str(mapping), "--db", str(db), env=env)
    ingest_s = time.perf_counter() - t0
    variants = [("shopguard_default", [])]
    if tune_budget > 0:
        variants.append(("shopguard_tuned", ["--tune", "--budget-s", str(int(tune_budget))]))
    rows, plain = [], None
    for name, extra in variants:
        model = work / f"{log.name}-{name}"
        t0 = time.perf_counter()
        train_out = cli("train", "--db", str(db), "--out", str(model), *extra, env=env)
        train_s = time.perf_counter() - t0
        manifest = json.loads((model / "manifest.json").read_text())
        split = manifest["split"]
        report = work / f"{log.name}-{name}.json"
        cli("evaluate", "--db", str(db), "--model", str(model), "--json", str(report), env=env)
        ev = json.loads(report.read_text())["models"][0]["metrics"]
        scores, labels = our_scores(db, model, split, env)
        if plain is None:  # the same test rows for every variant: the first model's split
            plain = (plain_scores(log, split, set(scores)), split)
            PLAIN[log.name] = plain
        ids = sorted(set(scores) & set(plain[0]))
        y = np.array([labels[i] for i in ids])
        ours = metrics(y, np.array([scores[i] for i in ids]))
        base = metrics(y, np.array([plain[0][i] for i in ids]))
        if name == variants[0][0]:
            rows.append({"dataset": log.name, "model": "plain_lightgbm", **base, "test_events": len(ids),
                         "test_positives": int(y.sum()), "split": plain[1]})
        rows.append({
            "dataset": log.name, "model": name, **ours, "test_events": len(ids), "test_positives": int(y.sum()),
            "ratio_to_plain": ours["average_precision"] / base["average_precision"],
            "roc_auc_ratio_to_plain": ours["roc_auc"] / base["roc_auc"],
            "evaluate_roc_auc": ev.get("roc_auc"), "evaluate_average_precision": ev.get("average_precision"),
            "evaluate_events": ev.get("events"), "warnings": [w.get("message") for w in ev.get("warnings", [])]
            if isinstance(ev.get("warnings"), list) else None,
            "train_s": round(train_s, 1), "ingest_s": round(ingest_s, 1), "split": split,
            "split_reasons": (manifest.get("info", {}).get("split_choice") or {}).get("reasons"),
            "tuning": manifest.get("info", {}).get("tuning"),
            "train_output_tail": train_out[-1500:],
        })
    return rows


def serve_check(db: Path, model: Path, env: dict[str, str], port: int = 18731) -> dict[str, Any]:
    """Start ``shopguard serve`` on loopback with the model and decide one event over HTTP."""
    import duckdb
    import httpx

    con = duckdb.connect(str(db), read_only=True)
    try:
        row = con.execute("SELECT * FROM events ORDER BY ts DESC LIMIT 1").fetchone()
        cols = [d[0] for d in con.description]
    finally:
        con.close()
    event = {k: (v.isoformat() if hasattr(v, "isoformat") else v)
             for k, v in zip(cols, row, strict=True) if v is not None and k != "ingested_at"}
    event["event_id"] = "served-" + str(event["event_id"])
    if isinstance(event.get("attrs"), str):
        event["attrs"] = json.loads(event["attrs"])
    proc = subprocess.Popen([*SHOPGUARD, "serve", "--db", str(db), "--model", str(model), "--no-auth",
                             "--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                return {"served": False, "error": (proc.stdout.read() if proc.stdout else "")[-2000:]}
            time.sleep(1)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/events", json=event, timeout=30)
        body = r.json()
        return {"served": r.status_code == 200, "status": r.status_code,
                "decision": {k: body.get(k) for k in ("action", "risk_level", "probability", "model_version")}
                if isinstance(body, dict) else body}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_fusion(log: Log, work: Path, split: dict[str, str], plain: dict[str, float], env: dict[str, str],
               epochs: int) -> dict[str, Any]:
    """The behaviour transformer pretrained on the log before the test window, fused with the features."""
    db = work / f"{log.name}.duckdb"
    seq, model = work / f"{log.name}-seq", work / f"{log.name}-fusion"
    t0 = time.perf_counter()
    cli("pretrain", "--db", str(db), "--out", str(seq), "--until", split["test_start"], "--epochs", str(epochs),
        env=env)
    cli("train", "--db", str(db), "--out", str(model), "--detector", "fusion", "--sequence-model", str(seq), env=env)
    train_s = time.perf_counter() - t0
    scores, labels = our_scores(db, model, split, env)
    ids = sorted(set(scores) & set(plain))
    y = np.array([labels[i] for i in ids])
    ours = metrics(y, np.array([scores[i] for i in ids]))
    base = metrics(y, np.array([plain[i] for i in ids]))
    served = serve_check(db, model, env)
    return {"dataset": log.name, "model": "shopguard_fusion", **ours, "test_events": len(ids),
            "test_positives": int(y.sum()), "ratio_to_plain": ours["average_precision"] / base["average_precision"],
            "roc_auc_ratio_to_plain": ours["roc_auc"] / base["roc_auc"], "train_s": round(train_s, 1),
            "onnx_exported": (model / "onnx").exists(), **served}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--logs", default=",".join(LOGS), help=f"comma-separated, from {', '.join(LOGS)}")
    ap.add_argument("--tune-budget", type=float, default=60.0, help="seconds for `train --tune` (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fusion", default="", help="comma-separated logs on which to also pretrain the behaviour "
                    "transformer and train --detector fusion, then serve it (e.g. handbook_2day,takehome)")
    ap.add_argument("--fusion-epochs", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None, help="folder for derived logs and stores (default: temp)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not args.data.exists():
        sys.exit(f"shared data not found at {args.data}")
    work = args.work or Path(tempfile.mkdtemp(prefix="own-logs-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    rows: list[dict[str, Any]] = []
    for name in args.logs.split(","):
        console.print(f"[bold]{name}[/]: deriving the log")
        log = LOGS[name](args.data, work, args.seed)
        t0 = time.perf_counter()
        rows += run_log(log, work, args.tune_budget, env)
        if name in args.fusion.split(","):
            scores, split = PLAIN[name]
            rows.append(run_fusion(log, work, split, scores, env, args.fusion_epochs))
        console.print(f"  done in {time.perf_counter() - t0:.0f} s")
    t = Table(title="Own logs, plain CLI with default flags, against a plain LightGBM script on the same test rows")
    for c in ("dataset", "model", "events", "pos", "ROC-AUC", "AP", "R@1%FPR", "AP ratio", "eval AUC / AP"):
        t.add_column(c, justify="left" if c in ("dataset", "model") else "right")
    for r in rows:
        ev = (f"{r['evaluate_roc_auc']:.3f} / {r['evaluate_average_precision']:.3f}"
              if r.get("evaluate_roc_auc") is not None else "")
        t.add_row(r["dataset"], r["model"], f"{r['test_events']:,}", str(r["test_positives"]), f"{r['roc_auc']:.3f}",
                  f"{r['average_precision']:.3f}", f"{r['recall_at_1pct_fpr']:.3f}",
                  f"{r['ratio_to_plain']:.2f}x" if "ratio_to_plain" in r else "1.00x", ev)
    console.print(t)
    console.print("Published: none for these derived logs (the Handbook protocol's own figures: "
                  "benchmarks/handbook.py).")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
