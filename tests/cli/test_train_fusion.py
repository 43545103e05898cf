"""``shopguard train --detector fusion`` / ``score`` / ``evaluate`` with the fused sequence + features model."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from shopguard.cli.main import app
from shopguard.models.bundle import ModelBundle
from shopguard.models.sequence.config import PretrainConfig, preset
from shopguard.models.sequence.fusion import FusionClassifierDetector
from shopguard.models.sequence.pretrain import pretrain
from shopguard.store import EventStore

runner = CliRunner()
START = datetime(2024, 3, 1)
DAYS = 21
TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "max_len": 12,
        "tokenizer": {"merchant_buckets": 32, "item_buckets": 32, "min_count": 1}}


def takeover_shop(seed: int = 0, users: int = 50) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Routine logins, views and payments; some accounts are taken over (a login from a new device and
    country, a password change, then large payments with a new card within minutes), labelled days later."""
    rng = np.random.default_rng(seed)
    ev, lab = [], []
    for u in range(users):
        level = rng.lognormal(3.2, 0.4)
        t = START + timedelta(hours=float(rng.uniform(0, 24)))
        hijack = float(rng.uniform(3, DAYS - 0.5)) if u % 4 == 0 else None
        i = 0
        while t < START + timedelta(days=DAYS):
            base = {"user_id": f"u{u}", "device_id": f"d{u}", "ip": f"ip{u}", "geo": "FR"}
            if hijack is not None and t >= START + timedelta(days=hijack):
                bad = {"user_id": f"u{u}", "device_id": f"x{u}", "ip": f"bad{u}", "geo": "ZZ"}
                for j, typ in enumerate(("login", "password_change", "pay", "pay")):
                    e = {**bad, "event_id": f"h{u}_{j}", "ts": t + timedelta(seconds=40 * j), "type": typ,
                         "status": "success" if typ in ("login", "pay") else None}
                    if typ == "pay":
                        e |= {"amount": float(rng.uniform(600, 1200)), "payment_instrument": f"stolen{u}",
                              "merchant_id": "m_fence"}
                    ev.append(e)
                    lab.append({"entity_kind": "event", "entity_id": e["event_id"], "label": 1,
                                "scenario": "account_takeover", "labeled_at": e["ts"] + timedelta(days=1)})
                hijack = None
                t += timedelta(hours=2)
                continue
            ev.append({**base, "event_id": f"l{u}_{i}", "ts": t, "type": "login", "status": "success"})
            ev.append({**base, "event_id": f"v{u}_{i}", "ts": t + timedelta(minutes=1), "type": "view",
                       "category": str(rng.choice(["books", "toys", "food"]))})
            ev.append({**base, "event_id": f"p{u}_{i}", "ts": t + timedelta(minutes=3), "type": "pay",
                       "amount": float(level * rng.lognormal(0, 0.3)), "status": "success",
                       "payment_instrument": f"c{u}", "merchant_id": f"m{rng.integers(0, 10)}"})
            i += 1
            t += timedelta(hours=float(rng.exponential(20)))
    return pl.DataFrame(ev, infer_schema_length=None), pl.DataFrame(lab)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fusionshop")
    events, labels = takeover_shop()
    db = root / "shop.duckdb"
    with EventStore(db) as s:
        s.append_events(events)
        s.append_labels(labels)
    # Pretrained on the events before the test window only (no labels), as the error hint says.
    test_start = START + timedelta(days=DAYS - 6)
    pretrain(events.filter(pl.col("ts") < test_start), network=preset("tiny", **TINY),
             config=PretrainConfig(epochs=3, batch_size=32, lr=3e-3, seed=3), out_dir=root / "seq")
    model = root / "fusion"
    r = runner.invoke(app, ["train", "--db", str(db), "--out", str(model), "--detector", "fusion",
                            "--sequence-model", str(root / "seq"), "--delay-days", "2", "--test-days", "6"])
    assert r.exit_code == 0, r.output
    return {"db": db, "seq": root / "seq", "model": model, "root": root}


def test_train_fusion_writes_a_bundle_with_held_out_metrics(shop: dict[str, Path]) -> None:
    m = json.loads((shop["model"] / "manifest.json").read_text())
    assert m["detector"] == "sequence_fusion" and m["supervised"]
    assert {"onnx/model.onnx", "onnx/export.json"} <= set(m["files"])  # the served graph is checksummed too
    assert m["info"]["label_cutoff"] == m["split"]["test_start"] and m["split"]["train_end"] < m["split"]["test_start"]
    test = m["metrics"]["test"]
    assert test["positives"] > 0 and test["roc_auc"] > 0.9 and test["average_precision"] > 0.5
    bundle = ModelBundle.load(shop["model"])
    assert isinstance(bundle.detector, FusionClassifierDetector)
    # The engineered columns it fuses are the bundle's pinned numeric feature columns.
    assert set(bundle.detector.feature_columns) <= set(bundle.columns)
    with pytest.raises(Exception, match="FusionInput"):
        bundle.detector.score(pl.DataFrame({"event_id": ["x"]}))


def test_train_fusion_exports_one_onnx_graph_equal_to_the_bundle(shop: dict[str, Path]) -> None:
    """OUT/onnx scores the store's own feature rows (batch feature engine) as the bundle's detector does."""
    from shopguard.features import compute_features
    from shopguard.models.sequence.export import OnnxScorer
    from shopguard.pipeline import history_for

    bundle = ModelBundle.load(shop["model"])
    scorer = OnnxScorer(shop["model"] / "onnx", int8=False)
    with EventStore(shop["db"], read_only=True) as s:
        rows = compute_features(s, since=datetime(2024, 3, 18), definitions=bundle.feature_set).head(300)
        events = history_for(s, rows)
    want = bundle.detector.with_events(events).score(rows)
    got = scorer.score(bundle.detector.build(events, rows["event_id"]), features=scorer.feature_matrix(rows))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_score_and_evaluate_with_fusion(shop: dict[str, Path], tmp_path: Path) -> None:
    r = runner.invoke(app, ["score", "--db", str(shop["db"]), "--model", str(shop["model"]), "--since", "2024-03-16"])
    assert r.exit_code == 0, r.output
    with EventStore(shop["db"], read_only=True) as s:
        d = s.query("SELECT d.*, l.label FROM decisions d LEFT JOIN labels l ON l.entity_id = d.event_id "
                    "ORDER BY probability DESC")
        n = s.query("SELECT count(*) AS n FROM events WHERE ts >= '2024-03-16'")["n"][0]
    assert d.height == n and d["model_version"][0].startswith("sequence_fusion-")
    # The top decisions are the takeovers, with feature reasons from the linear head.
    assert d["label"].head(5).fill_null(0).sum() >= 3
    assert json.loads(d["reasons"][0])
    r = runner.invoke(app, ["evaluate", "--db", str(shop["db"]), "--model", str(shop["model"]),
                            "--json", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "r.json").read_text())["models"][0]
    assert rep["detector"] == "sequence_fusion" and rep["metrics"]["roc_auc"] > 0.9


@pytest.mark.parametrize(("args", "expected"), [
    ([], ["--sequence-model", "shopguard pretrain"]),
    (["--sequence-model", "nowhere"], ["not a pretrained behaviour model", "shopguard pretrain"]),
])
def test_fusion_without_a_pretrained_model_is_a_clear_error(shop: dict[str, Path], tmp_path: Path,
                                                            args: list[str], expected: list[str]) -> None:
    r = runner.invoke(app, ["train", "--db", str(shop["db"]), "--out", str(tmp_path / "m"), "--detector", "fusion",
                            *args, "--delay-days", "2", "--test-days", "6"])
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())  # the console wraps long lines
    assert all(e in text for e in expected) and "Traceback" not in text


def test_sequence_model_is_only_for_fusion(shop: dict[str, Path], tmp_path: Path) -> None:
    r = runner.invoke(app, ["train", "--db", str(shop["db"]), "--out", str(tmp_path / "m"), "--detector", "lightgbm",
                            "--sequence-model", str(shop["seq"])])
    assert r.exit_code == 2 and "--detector fusion" in " ".join(r.output.split())
