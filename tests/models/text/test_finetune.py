from __future__ import annotations

import pickle

import numpy as np
import pytest

from shopguard.errors import DataError
from shopguard.models.text.finetune import MiniLMClassifier
from shopguard.models.text.review import ReviewRiskDetector

from .conftest import make_reviews


def test_lora_fine_tune_few_steps_and_round_trip() -> None:
    texts, y = make_reviews(16, seed=0)
    calls: list[tuple[int, int]] = []
    model = MiniLMClassifier(lora=True, max_steps=2, batch_size=8, max_length=32,
                             learning_rate=1e-3).fit(texts, y, progress=lambda s, t: calls.append((s, t)))
    assert calls[-1] == (2, 2) and len(model.losses_) == 2
    proba = model.predict_proba(texts[:4])
    assert proba.shape == (4, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    blob = pickle.dumps(model)
    assert len(blob) < 2_000_000  # only adapters and head are stored
    np.testing.assert_allclose(pickle.loads(blob).predict_proba(texts[:4]), proba, atol=1e-6)


def test_fine_tuned_components_inside_the_detector() -> None:
    texts, y = make_reviews(40, seed=1)
    det = ReviewRiskDetector(components=("ngram", "minilm_lora"), stack_folds=3, finetune_max_steps=1,
                             finetune_max_length=32, finetune_holdout=0.3).fit(texts, y)
    comps = det.score_all(texts[:4])
    assert set(comps) == {"ngram", "minilm_lora", "ensemble"}


def test_needs_both_classes() -> None:
    with pytest.raises(DataError, match="y"):
        MiniLMClassifier(max_steps=1).fit(["a", "b"], [1, 1])
