"""The unsupervised surprise score: per-event NLL, its session aggregation and the detector around it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from shopguard.errors import DataError, ShopguardError
from shopguard.models.base import load_detector
from shopguard.models.sequence.detectors import (
    BEHAVIOUR_FIELDS,
    SequenceInput,
    SequenceSurpriseDetector,
    session_surprise,
    window_surprise,
)
from shopguard.models.sequence.network import FoundationModel

from .conftest import make_log


@pytest.fixture(scope="module")
def held_out() -> pl.DataFrame:
    """A later log of other users, with takeovers (the detector is fitted on ``toy_log``, unlabelled)."""
    return make_log(n_users=15, seed=11, takeover_frac=0.5)


@pytest.fixture(scope="module")
def session_det(pretrained_dir: Path, toy_log: pl.DataFrame) -> SequenceSurpriseDetector:
    return SequenceSurpriseDetector(pretrained=str(pretrained_dir)).fit(toy_log.drop("label"))


def test_target_column_is_the_event_surprise(pretrained: FoundationModel, toy_log: pl.DataFrame) -> None:
    ids = ["u1e10", "u2e5", "u3e0", "u4e29"]
    b = pretrained.build(toy_log, ids)
    nll, valid, age = window_surprise(pretrained, b, BEHAVIOUR_FIELDS)
    np.testing.assert_allclose(nll[:, -1], pretrained.surprise(b, fields=BEHAVIOUR_FIELDS), rtol=1e-4, atol=1e-5)
    assert valid[:, -1].all() and np.all(age[:, -1] == 0)
    # u3e0 is a first event: nothing before it in its window.
    assert valid[2].sum() == 1


def test_age_is_time_before_the_target(pretrained: FoundationModel, toy_log: pl.DataFrame) -> None:
    ev = toy_log.filter(pl.col("user_id") == "u0").sort("ts")
    b = pretrained.build(toy_log, [ev["event_id"][6]])
    _, valid, age = window_surprise(pretrained, b)
    want = [(ev["ts"][6] - ev["ts"][i]).total_seconds() for i in range(7)]
    np.testing.assert_allclose(age[0][valid[0]], want, rtol=1e-4, atol=1e-2)


def test_degenerate_session_is_the_event_score(pretrained: FoundationModel, toy_log: pl.DataFrame) -> None:
    b = pretrained.build(toy_log, toy_log["event_id"][:50])
    s = session_surprise(pretrained, b, "all", events=1, minutes=0)
    np.testing.assert_allclose(s[:, 0], pretrained.surprise(b), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s[:, 1], s[:, 0], rtol=1e-6)
    with pytest.raises(DataError, match="session"):
        session_surprise(pretrained, b, events=0)


def test_session_peak_reaches_back_only_within_the_horizon(pretrained: FoundationModel, toy_log: pl.DataFrame) -> None:
    """An odd event (a new country) counts in the peak of the events after it only while it is recent."""
    user = toy_log.group_by("user_id").agg(pl.col("label").sum()).filter(pl.col("label") == 0)["user_id"].sort()[0]
    u = toy_log.filter(pl.col("user_id") == user).sort("ts")
    odd, odd_ts = u["event_id"][10], u["ts"][10]
    # Three routine follow-ups 2, 4 and 6 minutes after the odd event, then one 3 hours after it.
    later = [odd_ts + timedelta(minutes=m) for m in (2, 4, 6, 180)]
    head = u.head(11).with_columns(pl.when(pl.col("event_id") == odd).then(pl.lit("ZZ")).otherwise(pl.col("geo"))
                                   .alias("geo"))
    follow = u.slice(11, 4).with_columns(pl.Series("ts", later))
    log = pl.concat([head, follow])
    b = pretrained.build(log, follow["event_id"])
    peak = session_surprise(pretrained, b, events=1, minutes=30)[:, 1]
    nll, valid, age = window_surprise(pretrained, b)
    for i in range(3):
        odd_slot = np.flatnonzero(valid[i] & np.isclose(age[i], (later[i] - odd_ts).total_seconds(), atol=1.0))
        assert odd_slot.size == 1
        recent = valid[i] & (age[i] <= 1800)
        assert recent[odd_slot[0]]  # the odd event, 2-6 minutes back, is part of the session
        assert peak[i] == pytest.approx(nll[i][recent].max()) and peak[i] >= nll[i, odd_slot[0]]
    np.testing.assert_allclose(peak[3], nll[3, -1], rtol=1e-6)  # 3 hours later it no longer counts


def test_session_detector_ranks_takeovers(session_det: SequenceSurpriseDetector, pretrained_dir: Path,
                                          toy_log: pl.DataFrame, held_out: pl.DataFrame) -> None:
    y = held_out["label"].to_numpy()
    session = roc_auc_score(y, session_det.score(held_out))
    event = SequenceSurpriseDetector(pretrained=str(pretrained_dir), aggregate="event").fit(toy_log.drop("label"))
    single = roc_auc_score(y, event.score(held_out))
    assert session > 0.9
    assert session >= single - 0.02


def test_session_score_is_point_in_time(session_det: SequenceSurpriseDetector, held_out: pl.DataFrame) -> None:
    targets = ["u1e10", "u2e16", "u3e20"]
    before = session_det.score(SequenceInput(held_out, targets))
    cut = held_out.filter(pl.col("event_id").is_in(targets))["ts"].max()
    later = held_out.filter(pl.col("ts") > cut)
    changed = pl.concat([held_out.filter(pl.col("ts") <= cut),
                         later.with_columns(pl.col("type").reverse(), pl.lit("ZZ").alias("geo")),
                         later.with_columns(pl.col("event_id") + "_dup")])
    np.testing.assert_allclose(session_det.score(SequenceInput(changed, targets)), before, rtol=1e-5)


def test_save_load_and_legacy_folder(session_det: SequenceSurpriseDetector, held_out: pl.DataFrame,
                                     tmp_path: Path) -> None:
    targets = ["u1e10", "u2e16"]
    s = session_det.score(SequenceInput(held_out, targets))
    folder = session_det.save(tmp_path / "sur")
    again = load_detector(folder)
    assert again.aggregate == "session"
    np.testing.assert_allclose(again.score(SequenceInput(held_out, targets)), s, rtol=1e-5)
    # A folder saved before session scoring existed keeps scoring events one by one.
    (folder / "session_stats.json").unlink()
    legacy = load_detector(folder)
    assert legacy.aggregate == "event"
    assert legacy.score(SequenceInput(held_out, targets)).shape == (2,)


@pytest.mark.parametrize(("params", "field"), [
    ({"aggregate": "window"}, "aggregate"),
    ({"fields": "browsing"}, "fields"),
    ({"fields": ["type", "colour"]}, "fields"),
    ({"fields": []}, "fields"),
    ({"session_events": 0}, "session"),
])
def test_bad_parameters_name_the_field(pretrained_dir: Path, toy_log: pl.DataFrame, params: dict,
                                       field: str) -> None:
    det = SequenceSurpriseDetector(pretrained=str(pretrained_dir), **params)
    with pytest.raises(ShopguardError) as info:
        det.fit(toy_log.drop("label"))
    assert getattr(info.value, "field", None) == field
