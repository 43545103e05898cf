from __future__ import annotations

import pickle

import numpy as np
import pytest

from shopguard.errors import DataError
from shopguard.models.text.finetune import MiniLMClassifier, _batches
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


def test_fine_tuned_detector_saves_without_pickles_and_scores_the_same(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from shopguard.models.base import load_detector

    texts, y = make_reviews(40, seed=1)
    det = ReviewRiskDetector(components=("ngram", "minilm_lora"), stack_folds=3, finetune_max_steps=1,
                             finetune_max_length=32, finetune_holdout=0.3).fit(texts, y)
    det.save(tmp_path / "review")
    assert not [p for p in (tmp_path / "review").rglob("*") if p.suffix in (".joblib", ".pkl", ".pickle")]
    back = load_detector(tmp_path / "review")
    np.testing.assert_allclose(back.score(texts[:6]), det.score(texts[:6]), rtol=0, atol=1e-9)


def test_needs_both_classes() -> None:
    with pytest.raises(DataError, match="y"):
        MiniLMClassifier(max_steps=1).fit(["a", "b"], [1, 1])


@pytest.mark.parametrize("bucket", [1, 4])
def test_batches_cover_every_text_once(bucket: int) -> None:
    lengths = np.random.default_rng(0).integers(10, 500, size=103)
    batches = _batches(lengths, 8, bucket, np.random.default_rng(1))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(103)) and max(len(b) for b in batches) == 8
    if bucket > 1:  # similar lengths share a batch: less padding than random batches
        spread = np.mean([np.ptp(lengths[b]) for b in batches])
        random_spread = np.mean([np.ptp(lengths[b]) for b in _batches(lengths, 8, 1, np.random.default_rng(1))])
        assert spread < 0.75 * random_spread


def test_unavailable_device_is_refused_before_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from shopguard.errors import ModelError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    texts, y = make_reviews(8, seed=2)
    with pytest.raises(ModelError, match="device 'cuda'"):
        MiniLMClassifier(device="cuda", max_steps=1).fit(texts, y)


def test_weights_folder_override_is_checked(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from shopguard.errors import ModelError
    from shopguard.models.text.encoders import minilm_path

    monkeypatch.setenv("SHOPGUARD_MINILM_PATH", str(tmp_path))
    with pytest.raises(ModelError, match="SHOPGUARD_MINILM_PATH"):
        minilm_path()
    (tmp_path / "config.json").write_text("{}")
    assert minilm_path() == tmp_path


def test_fine_tuning_imports_no_tabular_stack() -> None:
    """A GPU box with torch and transformers but no Polars / LightGBM / PyOD can run the fine-tuning."""
    import subprocess
    import sys

    code = ("import sys, shopguard.models.text.finetune; "
            "print(sorted(m for m in ('polars', 'lightgbm', 'pyod', 'duckdb') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
