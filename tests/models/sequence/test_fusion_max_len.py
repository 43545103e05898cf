"""``max_len`` of the fusion detector: the window it fits on, scores, saves, exports and serves.

Pins that a shorter window is really applied end to end (not overridden by the pretrained model's
``max_len``): the windows are the tail of the longer ones, the score reads those events and no earlier
one, and the save / ONNX export / incremental scorer keep the same window. Events deep in a window move
the score of a briefly pretrained encoder only a little (its attention is close to uniform over the
window): that, not an ignored ``max_len``, is why ``shopguard demo``'s FM+feat figures hardly change
between ``max_len`` 32 and 64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from shopguard.models.base import load_detector
from shopguard.models.sequence.export import IncrementalScorer, OnnxScorer, export_onnx
from shopguard.models.sequence.fusion import FusionClassifierDetector, FusionInput
from shopguard.models.sequence.tokenizer import PAD
from shopguard.pipeline import make_detector

from .conftest import make_log, tabular

SHORT = 4  # the pretrained toy model's windows are 12 events


@pytest.fixture(scope="module")
def data(toy_log: pl.DataFrame) -> dict:
    test = make_log(n_users=8, seed=21, takeover_frac=0.4)
    ftr = tabular(toy_log)
    y = ftr.join(toy_log.select("event_id", "label"), on="event_id", maintain_order="left")["label"]
    y = y.to_numpy()
    return {"train": toy_log, "test": test, "ftr": ftr, "fte": tabular(test), "y": y}


@pytest.fixture(scope="module")
def fitted(pretrained_dir: Path, data: dict) -> dict[str, FusionClassifierDetector]:
    # The demo's settings (frozen encoder, exact linear probe, capped negatives), two window lengths.
    inp = FusionInput(data["train"], data["ftr"])
    return {name: FusionClassifierDetector(pretrained=str(pretrained_dir), max_len=ml, fit_negatives=600,
                                           num_threads=1).fit(inp, data["y"])
            for name, ml in (("short", SHORT), ("default", None))}


def test_pipeline_passes_max_len_to_the_detector(pretrained_dir: Path) -> None:
    # ``shopguard demo`` / ``train --detector fusion`` build the detector from params like these.
    params = {"pretrained": str(pretrained_dir), "fit_negatives": 3000, "max_len": SHORT}
    det = make_detector("fusion", params)
    assert isinstance(det, FusionClassifierDetector) and det.max_len == SHORT


def test_max_len_sets_the_windows_the_model_reads(fitted: dict, data: dict) -> None:
    short, full = fitted["short"], fitted["default"]
    assert (short.window, full.window) == (SHORT, 12)
    ids = data["fte"]["event_id"]
    a, b = short.build(data["test"], ids), full.build(data["test"], ids)
    assert a.tokens.shape[1] == SHORT + 1 and b.tokens.shape[1] == 13
    # The short window is the tail of the long one, slot for slot; the long one reads more history.
    np.testing.assert_array_equal(a.tokens, b.tokens[:, -(SHORT + 1):])
    np.testing.assert_array_equal(a.dt, b.dt[:, -(SHORT + 1):])
    assert (b.tokens[:, :-(SHORT + 1), 0] != PAD).any(axis=1).mean() > 0.5
    # Fitted on those windows too (the hidden states the probe saw), and the scores differ.
    s_short = short.score(FusionInput(data["test"], data["fte"]))
    s_full = full.score(FusionInput(data["test"], data["fte"]))
    assert np.abs(s_short - s_full).max() > 1e-3


def test_score_reads_the_window_and_nothing_older(fitted: dict, data: dict) -> None:
    """Changing events older than the short window leaves its scores bit for bit; the long window sees them
    (measured: up to 7e-5 on this toy model; identical inputs would give identical scores)."""
    test, fte = data["test"], data["fte"]
    # Each user's last (30th) event is a target.
    last = test.sort("ts").group_by("user_id", maintain_order=True).tail(1)["event_id"]
    rows = fte.filter(pl.col("event_id").is_in(last.implode()))
    pos = pl.col("event_id").str.extract(r"e(\d+)$").cast(pl.Int64)
    # Event positions 17..23 are read by the 12-event window of event 29, not by the 4-event one (25..29).
    old = (pos >= 17) & (pos <= 23) & pl.col("amount").is_not_null()
    changed = test.with_columns(pl.when(old).then(pl.col("amount") * 40.0).otherwise(pl.col("amount"))
                                .alias("amount"))
    assert test.filter(old).height > 0
    short, full = fitted["short"], fitted["default"]
    np.testing.assert_array_equal(short.score(FusionInput(changed, rows)),
                                  short.score(FusionInput(test, rows)))
    assert np.abs(full.score(FusionInput(changed, rows)) - full.score(FusionInput(test, rows))).max() > 1e-6


def test_short_window_survives_save_export_and_serving(fitted: dict, data: dict, tmp_path: Path) -> None:
    det, test, fte = fitted["short"], data["test"], data["fte"]
    det.save(tmp_path / "det")
    loaded = load_detector(tmp_path / "det")
    assert loaded.window == SHORT
    want = det.score(FusionInput(test, fte))
    np.testing.assert_allclose(loaded.score(FusionInput(test, fte)), want, atol=1e-6)
    # As ``train`` / ``evaluate`` score it: bound to the event log, fed the bare feature frame.
    np.testing.assert_allclose(loaded.with_events(test).score(fte), want, atol=1e-6)
    export_onnx(tmp_path / "det", tmp_path / "onnx", quantize=False)
    scorer = OnnxScorer(tmp_path / "onnx", int8=False)
    assert scorer.max_len == SHORT
    got = scorer.score(det.build(test, fte["event_id"]), features=scorer.feature_matrix(fte))
    np.testing.assert_allclose(got, want, atol=1e-5)
    # One event at a time from the per-user cache: the same 4-event windows, the same scores.
    inc = IncrementalScorer(tmp_path / "onnx", int8=False)
    assert inc.length == SHORT + 1
    by_id = dict(zip(fte["event_id"].to_list(), want, strict=True))
    feats = {r["event_id"]: r for r in fte.iter_rows(named=True)}
    diffs = [inc.score_one(rec, features=feats[rec["event_id"]]) - by_id[rec["event_id"]]
             for rec in test.sort(["ts", "event_id"]).head(120).iter_rows(named=True)]
    assert np.abs(diffs).max() < 1e-5
