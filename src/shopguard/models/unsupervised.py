"""Unsupervised anomaly detectors from PyOD behind the shopguard contract.

They learn what normal traffic looks like without any labels, which is what a shop has on day one.
Categories enter as their training frequency (a rare category is unusual) and missing numbers as the
training median. PyOD's ``decision_function`` is already "higher = more anomalous".

``explain`` gives, per feature, how far the value is from the training median in robust units
(median absolute deviation): not the model's internal attribution, but the honest answer to "what is
unusual about this event", which is what reason codes need.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

import numpy as np
import polars as pl

from shopguard.errors import DataError
from shopguard.models.base import Detector
from shopguard.models.tabular import TabularEncoder, as_polars, check_columns, infer_columns


class _PyODDetector(Detector):
    """Shared fit/score/explain for PyOD models; subclasses build the PyOD estimator."""

    supervised: ClassVar[bool] = False

    def _build(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def fit(self, X: Any, y: Any = None) -> Self:
        frame = as_polars(X)
        if frame.height < 10:
            raise DataError(f"{type(self).__name__} needs at least 10 rows to learn from, got {frame.height}",
                            field="X", value=frame.height)
        numeric, categorical = infer_columns(frame, self.features, self.categorical)  # type: ignore[attr-defined]
        enc = TabularEncoder.fit(frame, numeric, categorical)
        matrix = enc.dense_matrix(frame)
        rng = np.random.default_rng(self.random_state)  # type: ignore[attr-defined]
        cap = self.max_train_rows  # type: ignore[attr-defined]
        if cap and matrix.shape[0] > cap:
            # Distribution-based detectors do not need every row; a seeded sample keeps fit fast.
            matrix = matrix[np.sort(rng.choice(matrix.shape[0], cap, replace=False))]
        center = np.median(matrix, axis=0)
        mad = np.median(np.abs(matrix - center), axis=0)
        spread = np.std(matrix, axis=0)
        scale = np.where(mad > 0, 1.4826 * mad, np.where(spread > 0, spread, 1.0))
        model = self._build()
        model.fit(matrix)
        self.encoder_ = enc
        self.model_ = model
        self.feature_names_ = enc.columns
        self.center_ = center
        self.scale_ = scale
        return self

    def _matrix(self, X: Any) -> np.ndarray:
        self.check_fitted()
        frame = as_polars(X)
        check_columns(frame, self.feature_names_, type(self).__name__)
        return self.encoder_.dense_matrix(frame)

    def score(self, X: Any) -> np.ndarray:
        m = self._matrix(X)
        if m.shape[0] == 0:
            return np.zeros(0)
        s = np.asarray(self.model_.decision_function(m), dtype=np.float64)
        # Some PyOD models give inf/NaN on values far outside the training range: that is maximal risk.
        finite = s[np.isfinite(s)]
        top = float(finite.max()) + 1.0 if finite.size else 1.0
        return np.nan_to_num(s, nan=top, posinf=top, neginf=float(finite.min()) if finite.size else 0.0)

    def explain(self, X: Any) -> pl.DataFrame:
        m = self._matrix(X)
        dev = np.abs(m - self.center_) / self.scale_
        return pl.DataFrame(dev, schema=self.feature_names_, orient="row")


class IsolationForestDetector(_PyODDetector):
    """Isolation Forest (Liu et al. 2008): anomalies are isolated by few random splits."""

    name: ClassVar[str] = "iforest"

    def __init__(self, *, n_estimators: int = 200, max_samples: int | str = "auto", max_features: float = 1.0,
                 max_train_rows: int | None = 200_000, features: list[str] | None = None,
                 categorical: list[str] | None = None, random_state: int = 0, n_jobs: int = 1) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.max_features = max_features
        self.max_train_rows = max_train_rows
        self.features = features
        self.categorical = categorical
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _build(self) -> Any:
        from pyod.models.iforest import IForest

        return IForest(n_estimators=self.n_estimators, max_samples=self.max_samples,
                       max_features=self.max_features, random_state=self.random_state, n_jobs=self.n_jobs)


class ECODDetector(_PyODDetector):
    """ECOD (Li et al., TKDE 2022): per-feature empirical tail probabilities, summed; no tuning.

    Follows PyOD's ``ECOD`` (same tails, same skewness rule; a test checks the ranking against it), but
    freezes the empirical distributions at fit time: PyOD re-ranks each scoring batch together with the
    training rows, which makes a row's score depend on its batch neighbours, costs O(training rows) per
    call and writes to the model while scoring. Here a score is a binary search per feature, and
    ``explain`` returns the per-feature tail scores the total is made of.
    """

    name: ClassVar[str] = "ecod"

    def __init__(self, *, max_train_rows: int | None = 20_000, features: list[str] | None = None,
                 categorical: list[str] | None = None, random_state: int = 0) -> None:
        self.max_train_rows = max_train_rows
        self.features = features
        self.categorical = categorical
        self.random_state = random_state

    def _build(self) -> Any:
        return _FrozenECOD()

    def explain(self, X: Any) -> pl.DataFrame:
        m = self._matrix(X)
        return pl.DataFrame(self.model_.tails(m), schema=self.feature_names_, orient="row")


class _FrozenECOD:
    """The learned state of ECOD: sorted training values and skewness sign per feature."""

    def fit(self, X: np.ndarray) -> _FrozenECOD:
        from scipy.stats import skew

        self.sorted_ = np.sort(X, axis=0).astype(np.float64)
        with np.errstate(all="ignore"):
            sk = np.nan_to_num(skew(X, axis=0), nan=0.0)
        self.skew_sign_ = np.sign(sk)
        return self

    def tails(self, X: np.ndarray) -> np.ndarray:
        n = self.sorted_.shape[0]
        out = np.empty_like(X, dtype=np.float64)
        for j in range(X.shape[1]):
            col = self.sorted_[:, j]
            below = np.searchsorted(col, X[:, j], side="right")  # training values <= x
            above = n - np.searchsorted(col, X[:, j], side="left")  # training values >= x
            # (count + 1) / (n + 1): a value beyond every training value is rarer than the extreme one.
            u_l = -np.log((below + 1) / (n + 1))
            u_r = -np.log((above + 1) / (n + 1))
            s = self.skew_sign_[j]
            u_skew = u_l * -np.sign(s - 1) + u_r * np.sign(s + 1)
            out[:, j] = np.maximum(np.maximum(u_l, u_r), u_skew)
        return out

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return self.tails(X).sum(axis=1)


class HBOSDetector(_PyODDetector):
    """HBOS (Goldstein & Dengel 2012): per-feature histograms; fast and strong on tabular data."""

    name: ClassVar[str] = "hbos"

    def __init__(self, *, n_bins: int | str = 20, alpha: float = 0.1, max_train_rows: int | None = 500_000,
                 features: list[str] | None = None, categorical: list[str] | None = None,
                 random_state: int = 0) -> None:
        self.n_bins = n_bins
        self.alpha = alpha
        self.max_train_rows = max_train_rows
        self.features = features
        self.categorical = categorical
        self.random_state = random_state

    def _build(self) -> Any:
        from pyod.models.hbos import HBOS

        return HBOS(n_bins=self.n_bins, alpha=self.alpha)
