"""``shopguard train / evaluate / score`` end to end on a small seeded store."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from shopguard.cli.main import app
from shopguard.store import EventStore

runner = CliRunner()


def synthetic_shop(seed: int = 0, users: int = 60, days: int = 21) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Logins and payments of users with their own amount level; card-testing and takeover bursts."""
    rng = np.random.default_rng(seed)
    start = datetime(2024, 3, 1)
    ev, lab = [], []
    for u in range(users):
        level = rng.lognormal(3.2, 0.5)
        for i in range(rng.poisson(days * 1.2)):
            t = start + timedelta(seconds=float(rng.uniform(0, days * 86400)))
            base = {"user_id": f"u{u}", "device_id": f"d{u}", "ip": f"ip{u}"}
            ev.append({**base, "event_id": f"l{u}_{i}", "ts": t, "type": "login", "status": "success"})
            ev.append({**base, "event_id": f"p{u}_{i}", "ts": t + timedelta(minutes=3), "type": "pay",
                       "amount": float(level * rng.lognormal(0, 0.3)), "status": "success",
                       "payment_instrument": f"c{u}", "merchant_id": f"m{rng.integers(0, 20)}"})
    for b in range(36):
        u = int(rng.integers(0, users))
        t0 = start + timedelta(seconds=float(rng.uniform(0, days * 86400)))
        scen = "card_testing" if b % 2 == 0 else "account_takeover"
        for j in range(int(rng.integers(3, 7))):
            t = t0 + timedelta(seconds=30 * j)
            ev.append({"event_id": f"f{b}_{j}", "ts": t, "type": "pay", "user_id": f"u{u}", "device_id": f"x{b}",
                       "ip": f"bad{b}", "payment_instrument": f"c{u}", "merchant_id": f"m{rng.integers(15, 25)}",
                       "amount": float(rng.uniform(0.5, 2.0) if scen == "card_testing" else rng.uniform(300, 900)),
                       "status": "failure" if scen == "card_testing" and j < 3 else "success"})
            lab.append({"entity_kind": "event", "entity_id": f"f{b}_{j}", "label": 1, "scenario": scen,
                        "labeled_at": t + timedelta(days=float(rng.uniform(1, 4)))})
    return pl.DataFrame(ev, infer_schema_length=None), pl.DataFrame(lab)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("shop") / "shop.duckdb"
    events, labels = synthetic_shop()
    with EventStore(path) as s:
        s.append_events(events)
        s.append_labels(labels)
    return path


@pytest.fixture(scope="module")
def models(db: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    out = {}
    for det in ("lightgbm", "ecod"):
        r = runner.invoke(app, ["train", "--db", str(db), "--out", str(root / det), "--detector", det,
                                "--delay-days", "3", "--test-days", "6"])
        assert r.exit_code == 0, r.output
        out[det] = root / det
    return out


def test_train_writes_bundle_with_honest_metrics(models: dict[str, Path]) -> None:
    m = json.loads((models["lightgbm"] / "manifest.json").read_text())
    test = m["metrics"]["test"]
    assert test["positives"] > 0 and test["roc_auc"] > 0.9
    assert set(test["scenarios"]) == {"card_testing", "account_takeover"}
    # Training only used labels known at the start of the test window.
    assert m["info"]["label_cutoff"] == m["split"]["test_start"]
    assert m["split"]["train_end"] < m["split"]["test_start"]


def test_evaluate_writes_json_and_self_contained_html(db: Path, models: dict[str, Path], tmp_path: Path) -> None:
    r = runner.invoke(app, ["evaluate", "--db", str(db), "--model", str(models["lightgbm"]), "--model",
                            str(models["ecod"]), "--json", str(tmp_path / "r.json"), "--html", str(tmp_path / "r.html")])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert [x["detector"] for x in report["models"]] == ["lightgbm", "ecod"]
    for x in report["models"]:
        assert {"roc_auc", "average_precision", "recall_at_1pct_fpr", "precision_at_k", "confusion"} <= set(x["metrics"])
        assert x["metrics"]["scenarios"]["card_testing"]["recall_at_1pct_fpr"] is not None
    html = (tmp_path / "r.html").read_text()
    assert html.count("data:image/png;base64,") >= 3
    assert "http://" not in html and "https://" not in html  # opens offline


def test_score_writes_decisions_with_reasons(db: Path, models: dict[str, Path]) -> None:
    r = runner.invoke(app, ["score", "--db", str(db), "--model", str(models["lightgbm"]), "--since", "2024-03-18"])
    assert r.exit_code == 0, r.output
    with EventStore(db, read_only=True) as s:
        d = s.query("SELECT * FROM decisions ORDER BY probability DESC")
    assert d.height > 0 and set(d["action"].unique()) <= {"allow", "review", "challenge", "block"}
    top = json.loads(d["reasons"][0])
    assert top and all({"code", "text", "weight"} <= set(x) for x in top)


def test_supervised_without_labels_suggests_unsupervised(tmp_path: Path) -> None:
    events, _ = synthetic_shop(users=15, days=18)
    path = tmp_path / "nolabels.duckdb"
    with EventStore(path) as s:
        s.append_events(events)
    r = runner.invoke(app, ["train", "--db", str(path), "--out", str(tmp_path / "m"), "--delay-days", "2",
                            "--test-days", "4"])
    assert r.exit_code == 2
    assert "unsupervised" in r.output and "iforest" in r.output
    r = runner.invoke(app, ["train", "--db", str(path), "--out", str(tmp_path / "b"), "--detector", "baseline",
                            "--delay-days", "2", "--test-days", "4"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["calibration"] == "percentile"


def test_missing_store_is_a_clear_error(tmp_path: Path) -> None:
    r = runner.invoke(app, ["train", "--db", str(tmp_path / "none.duckdb"), "--out", str(tmp_path / "m")])
    assert r.exit_code == 2 and "no store" in r.output
