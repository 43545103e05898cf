"""`shopguard pretrain` also exports the session surprise for `serve --sequence-model`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from shopguard.cli.main import app
from shopguard.models.sequence.export import IncrementalScorer
from shopguard.store import EventStore

from .conftest import make_log


def test_pretrain_exports_a_session_surprise_the_incremental_scorer_serves(tmp_path: Path) -> None:
    log = make_log(n_users=10, n_events=20, seed=5)
    db = tmp_path / "shop.duckdb"
    with EventStore(db) as store:
        store.append_events(log.drop("label"))
    r = CliRunner().invoke(app, ["pretrain", "--db", str(db), "--out", str(tmp_path / "pre"), "--epochs", "1",
                                 "--max-len", "8", "--threads", "1", "--surprise-sample", "150"])
    assert r.exit_code == 0, r.output
    assert "--sequence-model" in r.output
    folder = tmp_path / "pre" / "surprise-onnx"
    scorer = IncrementalScorer(folder)
    events = log.drop("label").sort("ts")
    scores = [scorer.score_one(rec) for rec in events.head(60).iter_rows(named=True)]
    assert np.all(np.isfinite(scores))


def test_pretrain_can_skip_the_export(tmp_path: Path) -> None:
    log = make_log(n_users=6, n_events=12, seed=6)
    db = tmp_path / "shop.duckdb"
    with EventStore(db) as store:
        store.append_events(log.drop("label"))
    r = CliRunner().invoke(app, ["pretrain", "--db", str(db), "--out", str(tmp_path / "pre"), "--epochs", "1",
                                 "--max-len", "8", "--threads", "1", "--no-export-surprise"])
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "pre" / "surprise-onnx").exists()
