from __future__ import annotations

from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from shopguard.cli.main import app
from shopguard.models.base import load_detector
from shopguard.models.sequence.finetune import FineTunedModel
from shopguard.models.sequence.fusion import FusionClassifierDetector
from shopguard.store import EventStore

from .conftest import make_log


def test_pretrain_then_finetune_cli(tmp_path: Path) -> None:
    log = make_log(n_users=12, n_events=20, seed=4)
    db = tmp_path / "shop.duckdb"
    with EventStore(db) as store:
        store.append_events(log.drop("label"))
        pos = log.filter(pl.col("label") == 1)
        store.append_labels(pl.DataFrame({"entity_kind": "event", "entity_id": pos["event_id"], "label": 1,
                                          "scenario": "account_takeover", "labeled_at": pos["ts"]}))
    runner = CliRunner()
    r = runner.invoke(app, ["pretrain", "--db", str(db), "--out", str(tmp_path / "pre"), "--epochs", "1",
                            "--max-len", "8", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "pre" / "model.safetensors").exists() and (tmp_path / "pre" / "checkpoint.pt").exists()
    r = runner.invoke(app, ["finetune", "--db", str(db), "--pretrained", str(tmp_path / "pre"), "--out",
                            str(tmp_path / "ft"), "--method", "frozen", "--epochs", "2", "--no-export"])
    assert r.exit_code == 0, r.output
    assert FineTunedModel.load(tmp_path / "ft").finetune["method"] == "frozen"
    r = runner.invoke(app, ["finetune", "--db", str(db), "--pretrained", str(tmp_path / "pre"), "--out",
                            str(tmp_path / "fusion"), "--method", "frozen", "--fusion", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert "fused columns" in r.output
    det = load_detector(tmp_path / "fusion")
    assert isinstance(det, FusionClassifierDetector) and det.finetune_["n_extra"] > 14  # features + surprise
    r = runner.invoke(app, ["finetune", "--db", str(db), "--pretrained", str(tmp_path / "pre"), "--out",
                            str(tmp_path / "x"), "--method", "bogus"])
    assert r.exit_code == 2 and "method" in r.output
    r = runner.invoke(app, ["pretrain", "--db", str(db), "--out", str(tmp_path / "y"), "--config", "huge"])
    assert r.exit_code == 2 and "huge" in r.output
