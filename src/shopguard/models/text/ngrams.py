"""TF-IDF word and character n-grams for English and Chinese text: the classic strong text baseline.

Word n-grams need words: English is split on letters/digits, Chinese (no spaces) is segmented with
jieba. Character n-grams need no segmentation and catch spelling, punctuation and emoji habits that
templated spam shares. Both are TF-IDF weighted with sublinear term frequency and stacked side by side;
a linear model on top (``ngram_classifier``) is what Ott et al. used on op_spam (their n-gram SVM).

>>> v = NgramVectorizer(min_df=1).fit(["great hotel, great staff", "房间很干净，服务很好"])
>>> v.transform(["great room"]).shape[0]
1
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any, Self

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from shopguard.errors import DataError, ValidationFailed
from shopguard.models.text.encoders import check_texts
from shopguard.models.text.language import detect_language

_WORD = re.compile(r"[\w']+", re.UNICODE)
_CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_jieba: Any = None


def _jieba_module() -> Any:
    global _jieba
    if _jieba is None:
        import jieba

        jieba.setLogLevel(logging.WARNING)  # it logs its dictionary loading at INFO
        _jieba = jieba
    return _jieba


def tokenize(text: str, language: str | None = None) -> list[str]:
    """Lower-cased word tokens; runs of Chinese characters are segmented with jieba.

    >>> tokenize("Great STAFF!")
    ['great', 'staff']
    >>> tokenize("服务很好")
    ['服务', '很', '好']
    """
    lang = language or detect_language(text)
    text = text.lower()
    if lang != "zh" and not _CJK_RUN.search(text):
        return _WORD.findall(text)
    jieba = _jieba_module()
    tokens: list[str] = []
    pos = 0
    # Segment only the Chinese runs; Latin words and numbers in between keep the plain splitter.
    for m in _CJK_RUN.finditer(text):
        tokens.extend(_WORD.findall(text[pos:m.start()]))
        tokens.extend(w for w in jieba.lcut(m.group(), HMM=True) if w.strip())
        pos = m.end()
    tokens.extend(_WORD.findall(text[pos:]))
    return tokens


class NgramVectorizer(BaseEstimator, TransformerMixin):
    """Word (1..``word_ngrams``) and character (``char_ngrams``) TF-IDF features, horizontally stacked."""

    def __init__(self, word_ngrams: int = 2, char_ngrams: tuple[int, int] = (2, 5), min_df: int = 2,
                 max_features: int | None = 200_000, use_chars: bool = True) -> None:
        self.word_ngrams = word_ngrams
        self.char_ngrams = char_ngrams
        self.min_df = min_df
        self.max_features = max_features
        self.use_chars = use_chars

    def fit(self, X: Sequence[str], y: Any = None) -> Self:
        texts = check_texts(X)
        self.word_ = TfidfVectorizer(tokenizer=tokenize, token_pattern=None, lowercase=False,
                                     ngram_range=(1, self.word_ngrams), min_df=self.min_df,
                                     sublinear_tf=True, max_features=self.max_features)
        self.word_.fit(texts)
        self.char_ = None
        if self.use_chars:
            self.char_ = TfidfVectorizer(analyzer="char_wb", ngram_range=tuple(self.char_ngrams),
                                         min_df=self.min_df, sublinear_tf=True,
                                         max_features=self.max_features)
            self.char_.fit(texts)
        return self

    def transform(self, X: Sequence[str]) -> sp.csr_matrix:
        texts = check_texts(X)
        parts = [self.word_.transform(texts)]
        if self.char_ is not None:
            parts.append(self.char_.transform(texts))
        return sp.hstack(parts, format="csr")

    def feature_names(self) -> np.ndarray:
        names = [f"w:{n}" for n in self.word_.get_feature_names_out()]
        if self.char_ is not None:
            names += [f"c:{n}" for n in self.char_.get_feature_names_out()]
        return np.asarray(names, dtype=object)


class NBWeighting(BaseEstimator, TransformerMixin):
    """Naive-Bayes log-count-ratio feature scaling (NB-SVM, Wang & Manning 2012).

    ``fit`` learns ``r = log((alpha + sum of x over fakes) / |.|_1) - log((alpha + sum over genuine) / |.|_1)``
    per feature, ``transform`` returns ``x * r`` (with ``binary=True``, ``1[x > 0] * r``). A linear model
    on top then starts from the naive-Bayes evidence of each n-gram, which is what makes NB-SVM strong on
    small text sets where a plain SVM has too little data per feature.
    """

    def __init__(self, alpha: float = 1.0, binary: bool = True) -> None:
        self.alpha = alpha
        self.binary = binary

    def _prep(self, X: Any) -> sp.csr_matrix:
        X = sp.csr_matrix(X, dtype=np.float64)
        return (X > 0).astype(np.float64) if self.binary else X

    def fit(self, X: Any, y: Any) -> Self:
        X = self._prep(X)
        labels = np.asarray(y).astype(int)
        if X.shape[0] != len(labels) or len(np.unique(labels)) < 2:
            raise DataError("y: NBWeighting needs one 0/1 label per row and both classes", field="y")
        p = self.alpha + np.asarray(X[labels == 1].sum(axis=0)).ravel()
        q = self.alpha + np.asarray(X[labels == 0].sum(axis=0)).ravel()
        self.ratio_ = np.log(p / p.sum()) - np.log(q / q.sum())
        return self

    def transform(self, X: Any) -> sp.csr_matrix:
        return sp.csr_matrix(self._prep(X).multiply(self.ratio_))


def ngram_classifier(C: float = 10.0, min_df: int = 2, seed: int = 0, kind: str = "lr") -> Pipeline:
    """TF-IDF word + char n-grams and a linear model.

    ``kind="lr"``: L2 logistic regression (probabilities, like a linear SVM). ``kind="nb"``: NB-SVM style,
    binary word 1-2-gram presence scaled by naive-Bayes log-count ratios (``NBWeighting``) and a logistic
    regression (``C`` around 1 suits it).
    """
    if kind == "lr":
        return Pipeline([
            ("ngrams", NgramVectorizer(min_df=min_df)),
            ("linear", LogisticRegression(C=C, max_iter=2000, random_state=seed)),
        ])
    if kind == "nb":
        return Pipeline([
            ("ngrams", NgramVectorizer(min_df=min_df, use_chars=False)),
            ("nb", NBWeighting(binary=True)),
            ("linear", LogisticRegression(C=C, solver="liblinear", max_iter=2000, random_state=seed)),
        ])
    raise ValidationFailed(f"kind: unknown n-gram model {kind!r} (choose lr or nb)", field="kind", value=kind)
