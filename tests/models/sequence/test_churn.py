"""Churn risk: targets from later activity, RFM and sequence features, the zero-shot dt head, quality floors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from shopguard.errors import DataError, ModelError
from shopguard.events.simulate import SimulationConfig, simulate_shop
from shopguard.events.simulate.churn import ChurnConfig, apply_churn
from shopguard.models.base import load_detector
from shopguard.models.sequence.churn import (
    RFM_FEATURES,
    ChurnInput,
    ChurnRiskDetector,
    churn_labels,
    churn_rows,
    rfm_features,
)

from .heads_data import churned_shop, day, pretrained_dir

FIT = [day(5), day(7), day(10)]
TEST = [day(17), day(20)]  # after every fit target window (10 + 7 = 17)


@pytest.fixture(scope="module")
def events() -> pl.DataFrame:
    return churned_shop()[0]


def test_labels_follow_activity(events: pl.DataFrame) -> None:
    rows = churn_rows(events, day(10))
    y = churn_labels(events, rows, 7)
    assert 0.05 < y.mean() < 0.95
    u = rows["user_id"][int(np.argmax(y))]
    after = events.filter((pl.col("user_id") == u) & (pl.col("ts") > day(10)) & (pl.col("ts") <= day(17))
                          & ~pl.col("type").is_in(["shipment", "refund", "price_change"]))
    assert after.height == 0
    with pytest.raises(DataError, match="need events up to"):
        churn_labels(events, churn_rows(events, day(27)), 7)


def test_rfm_reads_only_the_past(events: pl.DataFrame) -> None:
    rows = churn_rows(events, day(12))
    a = rfm_features(events, rows)
    b = rfm_features(events.filter(pl.col("ts") < day(12)), rows)
    assert np.array_equal(a, b) and a.shape == (rows.height, len(RFM_FEATURES))
    assert (a[:, RFM_FEATURES.index("recency_days")] <= 28).all()


@pytest.mark.parametrize(("features", "head", "floor"), [
    ("rfm", "logistic", 0.75), ("dt_head", "logistic", 0.65), ("sequence", "logistic", 0.7),
    ("hybrid", "lightgbm", 0.75),
])
def test_churn_quality_on_a_later_cutoff(events: pl.DataFrame, features: str, head: str, floor: float) -> None:
    det = ChurnRiskDetector(pretrained=str(pretrained_dir()), features=features, head=head).fit(ChurnInput(events, FIT))
    X = ChurnInput(events, TEST)
    y = churn_labels(events, det.rows(X), 7)
    s = det.score(X)
    assert s.shape == y.shape and np.isfinite(s).all() and ((s >= 0) & (s <= 1)).all()
    assert roc_auc_score(y, s) > floor


def test_scores_ignore_the_future(events: pl.DataFrame) -> None:
    det = ChurnRiskDetector(pretrained=str(pretrained_dir()), features="hybrid").fit(ChurnInput(events, FIT))
    a = det.score(ChurnInput(events, day(17)))
    b = det.score(ChurnInput(events.filter(pl.col("ts") < day(17)), day(17)))
    assert np.allclose(a, b)


def test_save_load_and_frame(events: pl.DataFrame, tmp_path: Path) -> None:
    det = ChurnRiskDetector(pretrained=str(pretrained_dir()), features="sequence").fit(ChurnInput(events, FIT))
    det.save(tmp_path / "churn")
    back = load_detector(tmp_path / "churn")
    X = ChurnInput(events, day(20))
    assert np.allclose(det.score(X), back.score(X))
    frame = back.score_frame(X)
    assert frame.columns[:3] == ["user_id", "cutoff", "churn_risk"]
    assert frame["churn_risk"].is_sorted(descending=True)


def test_bad_inputs_are_named(events: pl.DataFrame) -> None:
    with pytest.raises(ModelError, match="features"):
        ChurnRiskDetector(features="vibes").fit(ChurnInput(events, FIT))
    with pytest.raises(ModelError, match="pretrained"):
        ChurnRiskDetector(features="hybrid").fit(ChurnInput(events, FIT))
    with pytest.raises(DataError, match="ChurnInput"):
        ChurnRiskDetector(features="rfm").fit(events)
    with pytest.raises(ModelError, match="not fitted"):
        ChurnRiskDetector(features="rfm").score(ChurnInput(events, FIT))


def test_churn_process_is_opt_in_and_seeded() -> None:
    shop = simulate_shop(SimulationConfig(users=40, days=10, seed=2))
    again = simulate_shop(SimulationConfig(users=40, days=10, seed=2))
    assert shop.events.equals(again.events)  # the base simulator is untouched by churn
    a, left_a = apply_churn(shop, ChurnConfig(monthly_rate=2.0, seed=1))
    b, left_b = apply_churn(again, ChurnConfig(monthly_rate=2.0, seed=1))
    assert a.events.equals(b.events) and left_a.equals(left_b)
    assert a.events.height < shop.events.height and left_a.height > 0
    # Nobody acts on their own after leaving; labels of removed events are gone too.
    joined = a.events.join(left_a, on="user_id").filter(
        (pl.col("ts") >= pl.col("churn_at")) & ~pl.col("type").is_in(["shipment", "refund", "price_change"]))
    labelled = set(a.labels.filter(pl.col("entity_kind") == "event")["entity_id"].to_list())
    assert set(joined["event_id"].to_list()) <= labelled
    assert labelled <= set(a.events["event_id"].to_list())
    none, _ = apply_churn(shop, ChurnConfig(monthly_rate=0.0, bad_experience_leave=0.0))
    assert none.events.equals(shop.events)
