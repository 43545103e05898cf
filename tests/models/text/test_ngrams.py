from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from shopguard.errors import DataError, ValidationFailed
from shopguard.models.text.ngrams import NBWeighting, NgramVectorizer, ngram_classifier, tokenize

from .conftest import make_reviews


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("Great STAFF, great room!", ["great", "staff", "great", "room"]),
        ("服务很好", ["服务", "很", "好"]),
        ("iPhone壳质量不错", ["iphone", "壳", "质量", "不错"]),
        ("", []),
    ],
)
def test_tokenize_english_and_chinese(text: str, tokens: list[str]) -> None:
    assert tokenize(text) == tokens


def test_vectorizer_word_and_char_features() -> None:
    texts, _ = make_reviews(20)
    vec = NgramVectorizer(min_df=1).fit(texts)
    X = vec.transform(texts)
    names = vec.feature_names()
    assert X.shape == (20, len(names))
    assert any(n.startswith("w:") and " " in n for n in names)  # word bigrams
    assert any(n.startswith("c:") for n in names)
    assert "w:推荐" in set(names)  # jieba segmented the Chinese reviews


def test_vectorizer_refuses_non_text() -> None:
    with pytest.raises(ValidationFailed, match="text"):
        NgramVectorizer().fit(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ValidationFailed, match="one string"):
        NgramVectorizer().fit("just one string")  # type: ignore[arg-type]


def test_ngram_classifier_quality_floor() -> None:
    train_x, train_y = make_reviews(120, seed=2)
    test_x, test_y = make_reviews(60, seed=3)
    model = ngram_classifier(min_df=1).fit(train_x, train_y)
    assert roc_auc_score(test_y, model.predict_proba(test_x)[:, 1]) > 0.95
    assert np.mean(model.predict(test_x) == test_y) > 0.9


def test_nb_weighting_log_count_ratio() -> None:
    import scipy.sparse as sp

    X = sp.csr_matrix(np.array([[2, 0, 1], [1, 0, 1], [0, 3, 1], [0, 1, 1]], dtype=float))
    y = np.array([1, 1, 0, 0])
    nb = NBWeighting(alpha=1.0).fit(X, y)
    # binary presence: fakes have feature 0 twice, genuine feature 1 twice; feature 2 in all rows
    p, q = np.array([3, 1, 3]), np.array([1, 3, 3])
    np.testing.assert_allclose(nb.ratio_, np.log(p / p.sum()) - np.log(q / q.sum()))
    assert nb.ratio_[0] > 0 > nb.ratio_[1] and abs(nb.ratio_[2]) < 1e-12
    np.testing.assert_allclose(nb.transform(X).toarray(), (X.toarray() > 0) * nb.ratio_)
    with pytest.raises(DataError, match="y"):
        NBWeighting().fit(X, [1, 1, 1, 1])


@pytest.mark.parametrize("kind", ["lr", "nb"])
def test_ngram_classifier_kinds_quality_floor(kind: str) -> None:
    train_x, train_y = make_reviews(120, seed=2)
    test_x, test_y = make_reviews(60, seed=3)
    model = ngram_classifier(C=1.0, min_df=1, kind=kind).fit(train_x, train_y)
    assert roc_auc_score(test_y, model.predict_proba(test_x)[:, 1]) > 0.95


def test_ngram_classifier_unknown_kind() -> None:
    with pytest.raises(ValidationFailed, match="kind"):
        ngram_classifier(kind="svm-rbf")
