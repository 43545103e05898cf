"""Export on a click log whose vocabularies are not the simulator's (views only, apps as items, os /
channel in attrs, no status / category / amount in pretraining, values unseen in pretraining later).

Regression: ``shopguard pretrain`` (surprise export) and ``shopguard train --detector fusion`` (fusion
export) crashed with ``IndexError: index out of range in self`` in the fused embedding lookup: the
export traced the graph with the id ``OFFSET`` in every field, which is out of a field's table when the
training events never carried that field (``status`` here: its table is the 5 reserved ids).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from shopguard.cli.main import app
from shopguard.models.sequence.config import PretrainConfig, preset
from shopguard.models.sequence.detectors import SequenceInput, SequenceSurpriseDetector
from shopguard.models.sequence.export import OnnxScorer, export_onnx, fusion_graph
from shopguard.models.sequence.fusion import FusionClassifierDetector, FusionInput
from shopguard.models.sequence.network import FoundationModel
from shopguard.models.sequence.pretrain import pretrain
from shopguard.models.sequence.tokenizer import FIELDS, OFFSET, UNK
from shopguard.store import EventStore

from .click_data import DELAY_DAYS, PRETRAIN_UNTIL, TEST_DAYS, click_features, click_log

TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "max_len": 8,
        "tokenizer": {"merchant_buckets": 32, "item_buckets": 32, "min_count": 1}}
LATE = PRETRAIN_UNTIL


@pytest.fixture(scope="module")
def clicks() -> dict:
    events, labels = click_log()
    bad = set(labels["entity_id"].to_list())
    y = np.array([1.0 if e in bad else 0.0 for e in click_features(events)["event_id"].to_list()])
    return {"events": events, "labels": labels, "features": click_features(events), "y": y}


@pytest.fixture(scope="module")
def model_dir(clicks: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("click-pretrained")
    pretrain(clicks["events"].filter(pl.col("ts") < LATE), network=preset("tiny", **TINY),
             config=PretrainConfig(epochs=1, batch_size=64, lr=3e-3, seed=3), out_dir=out)
    return out


def _late_targets(clicks: dict, n: int = 400) -> list[str]:
    """Events after pretraining, with the values it never saw among them (and their histories before)."""
    return clicks["events"].filter(pl.col("ts") >= LATE).head(n)["event_id"].to_list()


def test_tables_of_fields_without_values_and_unseen_ids(model_dir: Path, clicks: dict) -> None:
    model = FoundationModel.load(model_dir)
    sizes = model.tokenizer.vocab_sizes
    # No status / category in pretraining: only the reserved ids; no amount: one bucket.
    assert sizes["status"] == OFFSET and sizes["category"] == OFFSET and sizes["amount"] == OFFSET + 1
    b = model.build(clicks["events"], _late_targets(clicks))
    last = b.tokens[:, -1, :]
    assert (last[:, FIELDS.index("category")] == UNK).any() and (last[:, FIELDS.index("status")] == UNK).any()
    limit = np.array([sizes[f] for f in FIELDS])
    assert (b.tokens >= 0).all() and (b.tokens < limit).all()


def test_surprise_and_session_export_match_pytorch(model_dir: Path, clicks: dict, tmp_path: Path) -> None:
    model = FoundationModel.load(model_dir)
    b = model.build(clicks["events"], _late_targets(clicks))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(model, tmp_path / "surprise", kind="surprise", quantize=False)
    np.testing.assert_allclose(OnnxScorer(tmp_path / "surprise", int8=False).score(b), model.surprise(b),
                               rtol=1e-4, atol=1e-4)
    # The session detector, as `shopguard pretrain` exports it.
    early = clicks["events"].filter(pl.col("ts") < LATE)
    det = SequenceSurpriseDetector(pretrained=str(model_dir), num_threads=1).fit(
        SequenceInput(early, early["event_id"].tail(300).to_list()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(det, tmp_path / "session", quantize=False)
    np.testing.assert_allclose(OnnxScorer(tmp_path / "session", int8=False).score(b), det.score(b),
                               rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module", params=["frozen", "full"])
def fusion(request: pytest.FixtureRequest, model_dir: Path, clicks: dict,
           tmp_path_factory: pytest.TempPathFactory) -> tuple[FusionClassifierDetector, Path]:
    feats, y = clicks["features"], clicks["y"]
    fit = (feats["ts"] < LATE + (LATE - feats["ts"].min()) / 16).to_numpy()  # reaches past pretraining
    det = FusionClassifierDetector(pretrained=str(model_dir), method=request.param, epochs=1, num_threads=1,
                                   fit_negatives=600)
    det.fit(FusionInput(clicks["events"], feats.filter(pl.Series(fit))), y[fit])
    folder = tmp_path_factory.mktemp(f"click-fusion-{request.param}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = export_onnx(det, folder)
    assert res.kind == "fusion"
    return det, folder


def test_fusion_export_matches_the_detector(fusion: tuple[FusionClassifierDetector, Path], clicks: dict) -> None:
    det, folder = fusion
    rows = clicks["features"].filter(pl.col("ts") >= LATE).head(400)
    want = det.score(FusionInput(clicks["events"], rows))
    np.testing.assert_allclose(want, det.score_reference(FusionInput(clicks["events"], rows)), atol=1e-5)
    scorer = OnnxScorer(folder, int8=False)
    b = det.build(clicks["events"], rows["event_id"])
    assert (b.tokens[:, -1, FIELDS.index("status")] == UNK).any()  # values pretraining never saw
    got = scorer.score(b, features=scorer.feature_matrix(rows))
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.isfinite(OnnxScorer(folder, int8=True).score(b, features=scorer.feature_matrix(rows))).all()


def test_ids_outside_a_table_read_as_unknown(fusion: tuple[FusionClassifierDetector, Path], clicks: dict) -> None:
    """Tokens no table holds (another tokenizer's, a client's) score as UNK in PyTorch and ONNX, never fail."""
    det, folder = fusion
    rows = clicks["features"].filter(pl.col("ts") >= LATE).head(64)
    b = det.build(clicks["events"], rows["event_id"])
    x = det.raw_features(rows)
    odd = b.tokens.copy()
    sizes = det.model_.tokenizer.vocab_sizes
    for f, bad in (("status", sizes["status"]), ("category", 10_000), ("item", -3), ("amount", sizes["amount"])):
        odd[:, -1, FIELDS.index(f)] = bad
    same = odd.copy()
    for f in ("status", "category", "item", "amount"):
        same[:, -1, FIELDS.index(f)] = UNK
    graph = fusion_graph(det)
    with torch.no_grad():
        want = graph(torch.from_numpy(same), torch.from_numpy(b.dt), torch.from_numpy(x)).numpy()
        got = graph(torch.from_numpy(odd), torch.from_numpy(b.dt), torch.from_numpy(x)).numpy()
        net = det.model_.network
        np.testing.assert_allclose(net.encode(torch.from_numpy(odd), torch.from_numpy(b.dt)).numpy(),
                                   net.encode(torch.from_numpy(same), torch.from_numpy(b.dt)).numpy(), atol=1e-6)
    np.testing.assert_allclose(got, want, atol=1e-6)
    onnx = OnnxScorer(folder, int8=False).score_windows(odd, b.dt, x)
    np.testing.assert_allclose(onnx, want, atol=1e-5)


def test_cli_pretrain_and_train_fusion_on_the_click_log(clicks: dict, tmp_path: Path) -> None:
    """`shopguard pretrain` exports its surprise; `train --detector fusion` prints its test metrics and
    exports one graph that scores the store's rows as the saved bundle does."""
    from shopguard.features import compute_features
    from shopguard.models.bundle import ModelBundle
    from shopguard.pipeline import history_for

    db = tmp_path / "clicks.duckdb"
    with EventStore(db) as s:
        s.append_events(clicks["events"])
        s.append_labels(clicks["labels"])
    runner = CliRunner()
    r = runner.invoke(app, ["pretrain", "--db", str(db), "--out", str(tmp_path / "seq"), "--epochs", "1",
                            "--max-len", "8", "--threads", "1", "--until", LATE.isoformat(),
                            "--surprise-sample", "300"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "seq" / "surprise-onnx" / "model.onnx").exists()
    model = tmp_path / "fusion"
    r = runner.invoke(app, ["train", "--db", str(db), "--out", str(model), "--detector", "fusion",
                            "--sequence-model", str(tmp_path / "seq"), "--delay-days", str(DELAY_DAYS),
                            "--test-days", str(TEST_DAYS), "--params", '{"fit_negatives": 800}'])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "on the test window" in text
    for metric in ("positives", "roc_auc", "average_precision", "recall_at_1pct_fpr"):
        assert f"│ {metric} " in r.output, r.output  # a row of the metrics table, with its value
    assert (model / "onnx" / "model.onnx").exists()
    bundle = ModelBundle.load(model)
    assert bundle.metrics["test"]["positives"] > 0 and bundle.metrics["test"]["roc_auc"] > 0.8
    scorer = OnnxScorer(model / "onnx", int8=False)
    with EventStore(db, read_only=True) as s:
        rows = compute_features(s, since=LATE, definitions=bundle.feature_set).head(300)
        events = history_for(s, rows)
    want = bundle.detector.with_events(events).score(rows)
    got = scorer.score(bundle.detector.build(events, rows["event_id"]), features=scorer.feature_matrix(rows))
    np.testing.assert_allclose(got, want, atol=1e-5)
