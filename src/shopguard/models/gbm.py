"""Supervised gradient-boosted trees (LightGBM) on point-in-time features.

Categories go through LightGBM's native categorical splits (no one-hot); early stopping watches a
time-ordered validation slice (the last ``validation_fraction`` of the training rows by ``ts``), so
the number of trees is chosen on data later than what the trees were grown on, as in production.
With ``refit`` (default) the model is then grown again on all rows with the chosen number of trees.
``explain`` returns LightGBM's exact per-feature contributions (TreeSHAP, ``pred_contrib=True``).
With ``n_seeds`` > 1 the final model is a bag of boosters grown with different seeds (row and feature
subsampling differ), averaged in log-odds: a steadier ranking when fraud examples are few.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

import lightgbm as lgb
import numpy as np
import polars as pl

from shopguard.errors import DataError
from shopguard.models.base import Detector
from shopguard.models.tabular import (
    TabularEncoder,
    as_polars,
    infer_columns,
    labels_array,
    lgb_input,
    time_order,
)


def booster_params(det: Any, seed: int) -> dict[str, Any]:
    """LightGBM booster settings from a tree detector's hyperparameters (shared by the LightGBM detectors)."""
    return {
        "objective": "binary",
        "learning_rate": det.learning_rate,
        "num_leaves": det.num_leaves,
        "min_child_samples": det.min_child_samples,
        "feature_fraction": det.feature_fraction,
        "bagging_fraction": det.bagging_fraction,
        "bagging_freq": 1 if det.bagging_fraction < 1.0 else 0,
        "lambda_l2": det.reg_lambda,
        "scale_pos_weight": det.scale_pos_weight,
        "seed": seed,
        "deterministic": True,
        "num_threads": det.n_jobs,
        "verbosity": -1,
    }


class LightGBMDetector(Detector):
    """Gradient-boosted trees; ``score`` is the predicted fraud probability (higher = riskier).

    Parameters are LightGBM's usual ones; ``features``/``categorical`` pin the columns (default: what
    the feature engine reports), ``validation_fraction`` is the late slice used for early stopping.
    """

    name: ClassVar[str] = "lightgbm"
    supervised: ClassVar[bool] = True

    def __init__(
        self,
        *,
        n_estimators: int = 600,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        min_child_samples: int = 20,
        feature_fraction: float = 0.8,
        bagging_fraction: float = 0.8,
        reg_lambda: float = 1.0,
        scale_pos_weight: float = 1.0,
        validation_fraction: float = 0.2,
        early_stopping_rounds: int = 50,
        refit: bool = True,
        features: list[str] | None = None,
        categorical: list[str] | None = None,
        random_state: int = 0,
        n_jobs: int = 1,
        n_seeds: int = 1,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.feature_fraction = feature_fraction
        self.bagging_fraction = bagging_fraction
        self.reg_lambda = reg_lambda
        self.scale_pos_weight = scale_pos_weight
        self.validation_fraction = validation_fraction
        self.early_stopping_rounds = early_stopping_rounds
        self.refit = refit
        self.features = features
        self.categorical = categorical
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.n_seeds = n_seeds

    def _lgb_params(self) -> dict[str, Any]:
        return booster_params(self, self.random_state) | {"max_cat_to_onehot": 8, "cat_smooth": 10.0}

    def fit(self, X: Any, y: Any = None) -> Self:
        if int(self.n_seeds) < 1:
            raise DataError(f"n_seeds must be at least 1, got {self.n_seeds}", field="n_seeds", value=self.n_seeds)
        if not 0.0 <= self.validation_fraction < 0.9:
            raise DataError(f"validation_fraction must be in [0, 0.9), got {self.validation_fraction}",
                            field="validation_fraction", value=self.validation_fraction)
        frame = as_polars(X)
        target = labels_array(y, frame.height)
        if target.min(initial=1) == target.max(initial=0):
            raise DataError(
                f"LightGBM needs both fraud and normal examples; all {target.size} training labels are "
                f"{int(target[0]) if target.size else 'absent'}. Label more data or use an unsupervised detector "
                "(--detector iforest, ecod, hbos or baseline).",
                field="y",
            )
        numeric, categorical = infer_columns(frame, self.features, self.categorical)
        enc = TabularEncoder.fit(frame, numeric, categorical)
        matrix = enc.lgb_matrix(frame)
        order = time_order(frame)
        n_val = int(round(len(order) * self.validation_fraction))
        val_idx = order[len(order) - n_val:] if n_val else order[:0]
        fit_idx = order[: len(order) - n_val]
        # Early stopping needs positives in the late slice; without them, train on everything.
        use_val = n_val > 0 and 0 < target[val_idx].sum() < n_val and 0 < target[fit_idx].sum()
        if not use_val:
            fit_idx = order
        cat_idx = list(range(len(numeric), len(numeric) + len(categorical)))
        names = [_safe(c) for c in enc.columns]
        train_set = lgb.Dataset(matrix[fit_idx], target[fit_idx], feature_name=names,
                                categorical_feature=cat_idx, free_raw_data=True)
        callbacks = []
        valid_sets = []
        if use_val:
            valid_sets = [lgb.Dataset(matrix[val_idx], target[val_idx], reference=train_set)]
            callbacks.append(lgb.early_stopping(self.early_stopping_rounds, verbose=False))
        params = self._lgb_params() | {"metric": "binary_logloss"}
        booster = lgb.train(params, train_set, num_boost_round=self.n_estimators, valid_sets=valid_sets,
                            callbacks=callbacks)
        best = int(booster.best_iteration or booster.current_iteration())
        if use_val and self.refit:
            # The validation slice is the most recent data: once it has chosen the number of trees, grow
            # that many on everything, so the model does not miss the latest patterns.
            full = lgb.Dataset(matrix[order], target[order], feature_name=names, categorical_feature=cat_idx)
            booster = lgb.train(self._lgb_params(), full, num_boost_round=max(best, 1))
            best = booster.current_iteration()
        extra = []
        if int(self.n_seeds) > 1:
            # More boosters of the same size on the same rows, other seeds: the bag averages their logits.
            rows = order if (use_val and self.refit) or not use_val else fit_idx
            bag_set = lgb.Dataset(matrix[rows], target[rows], feature_name=names, categorical_feature=cat_idx)
            for i in range(1, int(self.n_seeds)):
                extra.append(lgb.train(self._lgb_params() | {"seed": self.random_state + i}, bag_set,
                                       num_boost_round=max(best, 1)))
        self.encoder_ = enc
        self.booster_ = booster
        self.extra_boosters_ = extra
        self.best_iteration_ = best
        self.feature_names_ = enc.columns
        self.used_validation_ = bool(use_val)
        return self

    def _matrix(self, X: Any) -> np.ndarray:
        return lgb_input(self, X)

    def score(self, X: Any) -> np.ndarray:
        return self.score_matrix(self._matrix(X))

    def score_matrix(self, m: np.ndarray) -> np.ndarray:
        """``score`` of an already encoded matrix (``encoder_.lgb_matrix`` or ``encoder_.encode_rows``)."""
        if m.shape[0] == 0:
            return np.zeros(0)
        if not getattr(self, "extra_boosters_", None):
            return np.asarray(self.booster_.predict(m, num_iteration=self.best_iteration_), dtype=np.float64)
        raw = np.mean([b.predict(m, num_iteration=self.best_iteration_, raw_score=True) for b in self._boosters()],
                      axis=0)
        return np.asarray(1.0 / (1.0 + np.exp(-raw)), dtype=np.float64)

    def _boosters(self) -> list[lgb.Booster]:
        return [self.booster_, *getattr(self, "extra_boosters_", [])]

    def explain(self, X: Any) -> pl.DataFrame:
        """Per-feature contributions to the log-odds (TreeSHAP); columns are the feature names."""
        return self.score_and_explain(X)[1]

    def score_and_explain(self, X: Any) -> tuple[np.ndarray, pl.DataFrame]:
        """Scores and contributions from one encoding and one TreeSHAP pass (the decision path's need).

        For the binary objective the contributions plus the bias sum to the raw log-odds, so the score
        is their sigmoid: one LightGBM call instead of two.
        """
        m = self._matrix(X)
        n_feat = len(self.feature_names_)
        if m.shape[0] == 0:
            return np.zeros(0), pl.DataFrame(schema={c: pl.Float64 for c in self.feature_names_})
        # The bag's contributions are the mean of its boosters' (TreeSHAP is linear in the model).
        contrib = np.mean([np.asarray(b.predict(m, num_iteration=self.best_iteration_, pred_contrib=True))
                           .reshape(m.shape[0], -1) for b in self._boosters()], axis=0)
        scores = 1.0 / (1.0 + np.exp(-contrib.sum(axis=1)))
        return scores, pl.DataFrame(contrib[:, :n_feat], schema=self.feature_names_, orient="row")

    def feature_importance(self) -> dict[str, float]:
        """Total gain per feature, largest first."""
        self.check_fitted()
        gains = np.sum([b.feature_importance(importance_type="gain", iteration=self.best_iteration_)
                        for b in self._boosters()], axis=0)
        pairs = sorted(zip(self.feature_names_, gains.tolist(), strict=True), key=lambda p: -p[1])
        return {k: float(v) for k, v in pairs}


def _safe(name: str) -> str:
    # LightGBM rejects some JSON special characters in feature names.
    return "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in name)
