from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from shopguard.errors import DataError, ValidationFailed
from shopguard.models.base import load_detector
from shopguard.models.text.review import ReviewRiskDetector

from .conftest import make_reviews


@pytest.fixture(scope="module")
def fitted() -> ReviewRiskDetector:
    texts, y = make_reviews(80, seed=1)
    return ReviewRiskDetector(components=("ngram", "use"), stack_folds=3).fit(texts, y)


def test_quality_floor_english_and_chinese(fitted: ReviewRiskDetector) -> None:
    texts, y = make_reviews(60, seed=9)
    scores = fitted.score(texts)
    assert scores.shape == (60,) and np.all((scores >= 0) & (scores <= 1))
    zh = np.array([i // 2 % 2 == 1 for i in range(60)])
    for mask in (zh, ~zh):
        assert roc_auc_score(y[mask], scores[mask]) > 0.95


def test_components_explain_and_frame_input(fitted: ReviewRiskDetector) -> None:
    texts, _ = make_reviews(6, seed=4)
    frame = pl.DataFrame({"text": texts, "language": ["en", None, "zh", "en", "zh", None]})
    comps = fitted.score_all(frame)
    assert set(comps) == {"ngram", "use", "ensemble"}
    np.testing.assert_allclose(comps["ensemble"], fitted.score(pd.DataFrame({"text": texts})))
    contrib = fitted.explain(texts)
    assert contrib.columns == ["ngram", "use"] and contrib.height == 6


def test_save_and_load_round_trip(fitted: ReviewRiskDetector, tmp_path: Path) -> None:
    texts, _ = make_reviews(10, seed=5)
    fitted.save(tmp_path / "review")
    loaded = load_detector(tmp_path / "review")
    assert isinstance(loaded, ReviewRiskDetector)
    np.testing.assert_allclose(loaded.score(texts), fitted.score(texts))


def test_english_only_components_are_skipped_without_english() -> None:
    texts, y = make_reviews(80, seed=1)
    zh = [t for t, i in zip(texts, range(80), strict=True) if i // 2 % 2 == 1]
    det = ReviewRiskDetector(components=("ngram", "minilm"), stack_folds=3).fit(zh, y[[i // 2 % 2 == 1 for i in range(80)]])
    assert det.skipped_ == ["minilm"] and det.component_names_ == ["ngram"]


def test_frozen_minilm_component_scores_english_only() -> None:
    texts, y = make_reviews(80, seed=1)
    det = ReviewRiskDetector(components=("ngram", "minilm"), stack_folds=3).fit(texts, y)
    comps = det.score_components(["Best lamp ever!!! Highly recommend!!!", "台灯很好"])
    assert not np.isnan(comps["minilm"][0]) and np.isnan(comps["minilm"][1])


def test_layer_pooled_minilm_component_is_standardised_and_english_only() -> None:
    texts, y = make_reviews(80, seed=1)
    det = ReviewRiskDetector(components=("ngram", "minilm_layers"), stack_folds=3).fit(texts, y)
    assert det.models_["minilm_layers"].model_.steps[0][0] == "standardscaler"
    comps = det.score_components(["Best lamp ever!!! Highly recommend!!!", "台灯很好"])
    assert not np.isnan(comps["minilm_layers"][0]) and np.isnan(comps["minilm_layers"][1])
    held, held_y = make_reviews(40, seed=9)
    en = np.array([i // 2 % 2 == 0 for i in range(40)])
    layer_scores = det.score_components([t for t, e in zip(held, en, strict=True) if e])["minilm_layers"]
    assert roc_auc_score(held_y[en], layer_scores) > 0.9


@pytest.mark.parametrize(
    ("params", "labels", "match"),
    [
        ({"components": ("ngram", "gpt")}, None, "components"),
        ({"finetune_holdout": 0.9}, None, "finetune_holdout"),
        ({}, [0] * 20, "y"),
        ({}, [0, 1] * 5 + [2] * 10, "y"),
    ],
)
def test_bad_input_names_the_field(params: dict, labels: list[int] | None, match: str) -> None:
    texts, y = make_reviews(20)
    err = (ValidationFailed, DataError)
    with pytest.raises(err, match=match):
        ReviewRiskDetector(**params).fit(texts, labels if labels is not None else y)


def test_missing_labels_and_text_column() -> None:
    with pytest.raises(DataError, match="y"):
        ReviewRiskDetector().fit(["a", "b"])
    with pytest.raises(ValidationFailed, match="text"):
        ReviewRiskDetector().fit(pl.DataFrame({"body": ["a"]}), [1])


def test_op_spam_slice(shared_data: Path) -> None:
    """A quick slice of the real corpus: n-grams trained on 200 reviews of folds 1-4 beat chance clearly."""
    data = pd.read_csv(shared_data / "op_spam" / "op_spam_v1.4.csv")
    train = data[data.fold != 5].sample(200, random_state=0)
    test = data[data.fold == 5].sample(100, random_state=0)
    det = ReviewRiskDetector(components=("ngram",), stack_folds=2).fit(train.text.tolist(), train.deceptive)
    assert roc_auc_score(test.deceptive, det.score(test.text.tolist())) > 0.8


def test_nb_ngram_component_in_the_stack() -> None:
    texts, y = make_reviews(80, seed=4)
    det = ReviewRiskDetector(components=("ngram", "ngram_nb"), stack_folds=3).fit(texts, y)
    test_x, test_y = make_reviews(40, seed=5)
    comps = det.score_all(test_x)
    assert set(comps) == {"ngram", "ngram_nb", "ensemble"}
    assert roc_auc_score(test_y, comps["ngram_nb"]) > 0.95
    assert roc_auc_score(test_y, comps["ensemble"]) > 0.95
