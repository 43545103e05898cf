"""Graph detectors: scores that use what an account's linked accounts look like.

GADBench (Tang et al., NeurIPS 2023) found that tree ensembles over simple neighbour aggregation
(RF-Graph / XGB-Graph) beat recent graph neural networks on fraud graphs. Both detectors here take a
feature frame whose neighbour columns were already added (``shopguard.features.graph.
aggregate_neighbours`` for a static graph, the ``ring_*`` features for the event stream), so they
stay ordinary tabular detectors behind the common ``fit`` / ``score`` contract:

- ``GraphLightGBMDetector`` (supervised): LightGBM on own + neighbour-aggregated features, bagged over
  stratified folds of the training rows; each fold's held-out part early-stops its model and the
  score is the mean of the fold models (uses every training row for trees and for stopping). Which
  feature groups it uses (own + degree, + neighbour means, + known-fraud neighbour labels) is chosen
  per fit from a fixed candidate list by the out-of-fold AP of those same training folds (one-
  standard-error rule, simplest first): test rows never reach the choice. ``fit_info_`` records it.
- ``neighbour_label_features``: known-fraud neighbour counts / shares for a static graph, out-of-fold
  for the training nodes so that no row is built from its own label.
- ``GraphDeviationDetector`` (unsupervised): two views of every node, its own features and its
  contrast with its neighbourhood (own minus neighbour mean), each scored by an Isolation Forest and by
  the L1 size of its z-scores; the four scores are turned into percentiles of the training scores and
  averaged. Accounts that are unusual in themselves *and* unlike the accounts they are linked to rank
  highest. A third, context view (an Isolation Forest on own + neighbour-mean features) is blended in
  with a label-free weight: the share of the own features' rank variance the neighbour mean explains
  (median Spearman rho squared). Where linked nodes are near-copies (reviews of one user) the contrast
  is noise and the context view takes over; where they are not (Amazon's users) it stays out.
  No labels are used to choose anything.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

import lightgbm as lgb
import numpy as np
import polars as pl
from scipy.stats import rankdata
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import KFold, StratifiedKFold

from shopguard.errors import DataError, ModelError, ValidationFailed
from shopguard.models.base import Detector
from shopguard.models.gbm import booster_params
from shopguard.models.tabular import (
    TabularEncoder,
    as_polars,
    check_columns,
    infer_columns,
    labels_array,
    lgb_input,
)

NBR_PREFIX = "nbr_"
MEAN_PREFIX = "nbr_mean__"
DIFF_PREFIX = "nbr_diff__"
MAX_PREFIX = "nbr_max__"
LABEL_PREFIX = "nbr_label_"
DEGREE = "nbr_degree"
# graph_deviation: an automatic context weight under this is dropped (the context forest is not fitted).
# 0.01 is the squared "small" correlation (|rho| 0.1) by Cohen's convention; a weight that small cannot
# reorder the ranking materially, so leaving it out costs nothing and keeps such graphs on the plain
# deviation score. Set after seeing that Amazon's 0.008 cost 0.001 AP (docs/graph.md).
MIN_CONTEXT_WEIGHT = 0.01

# The supervised candidates, simplest first, fixed before any benchmark result was looked at: the
# variants benchmarks/graph.py already compared (own + degree was the shipped default; + neighbour
# means the first session's; + out-of-fold known-fraud neighbour labels the best on an R-U-R graph), then
# every column of the frame (what the detector used before selection; equal to the fourth on a frame of
# own, degree, mean and label columns, and then dropped as a duplicate).
DEFAULT_CANDIDATES: tuple[str, ...] = ("own+degree", "own+degree+mean", "own+degree+labels",
                                       "own+degree+mean+labels", "all")
FEATURE_GROUPS: tuple[str, ...] = ("own", "degree", "mean", "labels", "max", "diff", "nbr", "all")


def column_groups(columns: list[str]) -> dict[str, list[str]]:
    """Feature columns by group: ``own`` (no ``nbr_`` prefix), ``degree``, ``mean``, ``labels``
    (``nbr_label_*``), ``max``, ``diff``, ``nbr`` (any other ``nbr_*``) and ``all``."""
    groups: dict[str, list[str]] = {g: [] for g in FEATURE_GROUPS}
    for c in columns:
        if not c.startswith(NBR_PREFIX):
            g = "own"
        elif c == DEGREE:
            g = "degree"
        else:
            g = next((k for k, p in (("mean", MEAN_PREFIX), ("labels", LABEL_PREFIX), ("max", MAX_PREFIX),
                                     ("diff", DIFF_PREFIX)) if c.startswith(p)), "nbr")
        groups[g].append(c)
    groups["all"] = list(columns)
    return groups


def resolve_candidates(columns: list[str], candidates: Any) -> list[tuple[str, list[str]]]:
    """(name, columns) per candidate, in the given order; a candidate whose column set equals an earlier
    one's (a group the frame lacks) is dropped, so a frame without neighbour columns has one candidate."""
    groups = column_groups(columns)
    out: list[tuple[str, list[str]]] = []
    seen: set[frozenset[str]] = set()
    for name in candidates:
        parts = str(name).split("+")
        unknown = [p for p in parts if p not in groups]
        if unknown:
            raise ValidationFailed(f"unknown feature group {unknown[0]!r} in candidate {name!r} "
                                   f"(allowed: {', '.join(FEATURE_GROUPS)})", field="candidates", value=name)
        wanted = {c for p in parts for c in groups[p]}
        cols = [c for c in columns if c in wanted]
        key = frozenset(cols)
        if cols and key not in seen:
            seen.add(key)
            out.append((str(name), cols))
    return out


class GraphLightGBMDetector(Detector):
    """LightGBM over own + neighbour-aggregated features, bagged over ``n_folds`` early-stopped folds.

    Which columns it uses is chosen per fit (``variant="auto"``, the default): every candidate in
    ``candidates`` (feature groups joined by ``+``: ``own``, ``degree``, ``mean``, ``labels``, ``max``,
    ``diff``, ``nbr``, ``all``; see ``column_groups``) is fitted as the usual bag over the stratified
    folds of the *training* rows, and scored by its average precision on each held-out fold. The pick is
    the simplest candidate (first in the list) whose mean fold AP is within one standard error of the
    best one's (the one-standard-error rule: on a graph where the extra groups do not help, noise alone
    does not pull in more columns). The chosen candidate's fold models are the detector, so selection
    costs one bag per candidate and no refit. Candidates whose groups the frame lacks collapse into the
    simpler ones, so a frame without ``nbr_*`` columns has a single candidate: every column.
    ``fit_info_`` holds the choice and every candidate's inner scores. ``variant`` set to one candidate
    name fits that one only; ``features`` pins the columns and skips selection.

    ``n_repeats`` reshuffles the folds that many times (more fold models; ``oof_`` is then the mean of the
    held-out scores). ``scale_pos_weight`` (default 3) up-weights fraud rows: on Amazon it was the one
    learner setting that moved AP in exploration (docs/graph.md). With it the scores rank well but are
    not calibrated probabilities: set thresholds on ``oof_``, as the decision layer does.
    """

    name: ClassVar[str] = "graph_lightgbm"
    supervised: ClassVar[bool] = True

    def __init__(
        self,
        *,
        n_estimators: int = 3000,
        learning_rate: float = 0.02,
        num_leaves: int = 15,
        min_child_samples: int = 30,
        feature_fraction: float = 0.8,
        bagging_fraction: float = 0.8,
        reg_lambda: float = 1.0,
        scale_pos_weight: float = 3.0,
        n_folds: int = 5,
        n_repeats: int = 1,
        early_stopping_rounds: int = 200,
        variant: str = "auto",
        candidates: list[str] | None = None,
        keep_candidates: bool = False,
        features: list[str] | None = None,
        categorical: list[str] | None = None,
        random_state: int = 0,
        n_jobs: int = 1,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.feature_fraction = feature_fraction
        self.bagging_fraction = bagging_fraction
        self.reg_lambda = reg_lambda
        self.scale_pos_weight = scale_pos_weight
        self.n_folds = n_folds
        self.n_repeats = n_repeats
        self.early_stopping_rounds = early_stopping_rounds
        self.variant = variant
        self.candidates = candidates
        self.keep_candidates = keep_candidates
        self.features = features
        self.categorical = categorical
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _params(self, seed: int) -> dict[str, Any]:
        return booster_params(self, seed) | {"metric": "binary_logloss"}

    def _bagged(self, matrix: np.ndarray, target: np.ndarray, cat_idx: list[int]
                ) -> tuple[list[Any], list[int], np.ndarray, list[float], list[float]]:
        """The inner loop: one bag over stratified folds of the training rows it is given (and only those).

        Returns the fold models, their best iterations, the out-of-fold scores and each held-out fold's
        AP and ROC-AUC (the inner scores the selection reads)."""
        pos = int(target.sum())
        # Fewer positives than folds: fold count shrinks so each held-out part still has a positive.
        k = max(2, min(self.n_folds, pos, target.size - pos))
        boosters, iters, fold_ap, fold_auc = [], [], [], []
        oof = np.zeros(target.size)
        for r in range(self.n_repeats):
            # Each repeat reshuffles the folds: more fold models, less variance from one fold draw.
            folds = StratifiedKFold(k, shuffle=True, random_state=self.random_state + 1000 * r)
            for f, (tr, va) in enumerate(folds.split(matrix, target)):
                train_set = lgb.Dataset(matrix[tr], target[tr], categorical_feature=cat_idx, free_raw_data=True)
                valid = lgb.Dataset(matrix[va], target[va], reference=train_set)
                booster = lgb.train(
                    self._params(self.random_state * 97 + 31 * r + f), train_set, num_boost_round=self.n_estimators,
                    valid_sets=[valid], callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
                )
                boosters.append(booster)
                iters.append(int(booster.best_iteration or booster.current_iteration()))
                held = booster.predict(matrix[va], num_iteration=iters[-1])
                oof[va] += held / self.n_repeats
                fold_ap.append(float(average_precision_score(target[va], held)))
                fold_auc.append(float(roc_auc_score(target[va], held)))
        return boosters, iters, oof, fold_ap, fold_auc

    def fit(self, X: Any, y: Any = None) -> Self:
        if not isinstance(self.n_folds, int) or self.n_folds < 2:
            raise ValidationFailed(f"n_folds must be an integer >= 2, got {self.n_folds!r}", field="n_folds",
                                   value=self.n_folds)
        if not isinstance(self.n_repeats, int) or self.n_repeats < 1:
            raise ValidationFailed(f"n_repeats must be an integer >= 1, got {self.n_repeats!r}", field="n_repeats",
                                   value=self.n_repeats)
        frame = as_polars(X)
        target = labels_array(y, frame.height)
        pos = int(target.sum())
        if pos == 0 or pos == target.size:
            raise DataError(
                f"graph_lightgbm needs both fraud and normal examples; got {pos} positives in {target.size} rows",
                field="y",
            )
        numeric, categorical = infer_columns(frame, self.features, self.categorical)
        if self.features is not None:
            plan = [("features", numeric + categorical)]
        else:
            names = (list(self.candidates or DEFAULT_CANDIDATES) if self.variant == "auto" else [self.variant])
            plan = resolve_candidates(numeric + categorical, names)
            if not plan:
                raise DataError(f"graph_lightgbm: no candidate in {names} has a column in this frame", field="X")
        cats = set(categorical)
        results = []
        for name, cols in plan:
            num = [c for c in cols if c not in cats]
            cat = [c for c in cols if c in cats]
            enc = TabularEncoder.fit(frame, num, cat)
            cat_idx = list(range(len(num), len(num) + len(cat)))
            boosters, iters, oof, fold_ap, fold_auc = self._bagged(enc.lgb_matrix(frame), target, cat_idx)
            results.append({"name": name, "encoder": enc, "boosters": boosters, "iters": iters, "oof": oof,
                            "fold_ap": fold_ap, "fold_auc": fold_auc})
        means = [float(np.mean(r["fold_ap"])) for r in results]
        best = int(np.argmax(means))
        fold = results[best]["fold_ap"]
        se = float(np.std(fold, ddof=1) / np.sqrt(len(fold))) if len(fold) > 1 else 0.0
        # One-standard-error rule: the simplest candidate within one SE of the best inner AP.
        chosen = next(i for i, m in enumerate(means) if m >= means[best] - se)
        pick = results[chosen]
        self.encoder_ = pick["encoder"]
        # Out-of-fold scores of the training rows: honest material for thresholds and calibration.
        self.oof_ = pick["oof"]
        self.boosters_ = pick["boosters"]
        self.best_iterations_ = pick["iters"]
        self.feature_names_ = pick["encoder"].columns
        self.variant_ = pick["name"]
        self.fit_info_ = {
            "variant": pick["name"],
            "rule": "one-standard-error on inner fold AP" if len(results) > 1 else "single candidate",
            "best": results[best]["name"],
            "best_inner_ap": round(means[best], 6),
            "best_inner_ap_se": round(se, 6),
            "rows": int(target.size),
            "candidates": [
                {"name": r["name"], "n_features": len(r["encoder"].columns),
                 "inner_ap": round(float(np.mean(r["fold_ap"])), 6), "inner_auc": round(float(np.mean(r["fold_auc"])), 6),
                 "fold_ap": [round(v, 6) for v in r["fold_ap"]]}
                for r in results
            ],
        }
        if self.keep_candidates:
            self.candidate_models_ = {r["name"]: (r["encoder"], r["boosters"], r["iters"], r["oof"]) for r in results}
        return self

    def _matrix(self, X: Any) -> np.ndarray:
        return lgb_input(self, X)

    def score(self, X: Any) -> np.ndarray:
        m = self._matrix(X)
        if m.shape[0] == 0:
            return np.zeros(0)
        preds = [b.predict(m, num_iteration=i) for b, i in zip(self.boosters_, self.best_iterations_, strict=True)]
        return np.mean(preds, axis=0).astype(np.float64)

    def score_candidate(self, X: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(scores, out-of-fold training scores) of one candidate's bag; needs ``keep_candidates=True``.

        For reports that compare the choice with the candidates it passed over, from the same fit."""
        self.check_fitted()
        models = getattr(self, "candidate_models_", None)
        if models is None or name not in models:
            raise ModelError(f"no kept candidate {name!r} (fit with keep_candidates=True; kept: "
                             f"{sorted(models or {})})", field="name", value=name)
        enc, boosters, iters, oof = models[name]
        frame = as_polars(X)
        check_columns(frame, enc.columns, type(self).__name__)
        m = enc.lgb_matrix(frame)
        preds = [b.predict(m, num_iteration=i) for b, i in zip(boosters, iters, strict=True)]
        return np.mean(preds, axis=0).astype(np.float64), oof

    def explain(self, X: Any) -> pl.DataFrame:
        """Per-feature contributions to the log-odds (TreeSHAP), averaged over the fold models."""
        m = self._matrix(X)
        d = len(self.feature_names_)
        contrib = np.mean(
            [np.asarray(b.predict(m, num_iteration=i, pred_contrib=True)).reshape(m.shape[0], -1)[:, :d]
             for b, i in zip(self.boosters_, self.best_iterations_, strict=True)],
            axis=0,
        )
        return pl.DataFrame(contrib, schema=self.feature_names_, orient="row")


class GraphDeviationDetector(Detector):
    """Unsupervised: percentile-averaged Isolation Forest + L1 z-score over own and neighbour-contrast views,
    blended with an Isolation Forest on the context view (own + neighbour mean) by a label-free weight.

    Own columns are those not starting with ``nbr_``; the contrast view is the ``nbr_diff__*`` columns,
    or own minus ``nbr_mean__*`` when only means are present; the context view is own + neighbour mean
    (own − diff when only differences are present). Without neighbour columns the detector scores the
    own view alone. Scores are percentiles (0..1) of the training scores, so they compare across refits.

    ``context_weight="auto"`` (default) sets the context view's weight to the *neighbour redundancy*:
    over the own columns, the median squared Spearman correlation between a node's value and its
    neighbours' mean (nodes with neighbours only), i.e. the share of rank variance the neighbourhood
    explains. When linked nodes are near-copies of each other (several reviews of one user) the contrast
    own − mean is mostly noise and the neighbour mean a denoised profile: the weight is high. When links
    join different accounts (Amazon's U-P-U users, redundancy 0.008) the contrast carries the signal and
    the context view stays out. An automatic weight under ``MIN_CONTEXT_WEIGHT`` (0.01, |rho| < 0.1) is
    dropped to 0. A number fixes the weight (0: the deviation score alone). ``fit_info_`` records the
    redundancy and the weight.
    """

    name: ClassVar[str] = "graph_deviation"
    supervised: ClassVar[bool] = False

    def __init__(
        self,
        *,
        n_estimators: int = 500,
        max_samples: int | str = "auto",
        context_weight: float | str = "auto",
        features: list[str] | None = None,
        random_state: int = 0,
        n_jobs: int = 1,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.context_weight = context_weight
        self.features = features
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _views(self, frame: pl.DataFrame, numeric: list[str]
               ) -> tuple[list[str], list[tuple[str, str]], list[tuple[str, str]]]:
        own = [c for c in numeric if not c.startswith(NBR_PREFIX)]
        contrast: list[tuple[str, str]] = []  # (own column, neighbour column); diff columns use ("", diff)
        context: list[tuple[str, str]] = []  # (op, column): ("", mean column) or ("-", diff column): own − diff
        for c in own:
            if f"{DIFF_PREFIX}{c}" in numeric:
                contrast.append(("", f"{DIFF_PREFIX}{c}"))
            elif f"{MEAN_PREFIX}{c}" in numeric:
                contrast.append((c, f"{MEAN_PREFIX}{c}"))
            if f"{MEAN_PREFIX}{c}" in numeric:
                context.append(("", f"{MEAN_PREFIX}{c}"))
            elif f"{DIFF_PREFIX}{c}" in numeric:
                context.append((c, f"{DIFF_PREFIX}{c}"))
        return own, contrast, context

    def _view_matrices(self, frame: pl.DataFrame) -> list[np.ndarray]:
        dense = self.encoder_.dense_matrix(frame)
        pos = {c: j for j, c in enumerate(self.encoder_.numeric)}
        own = dense[:, [pos[c] for c in self.own_]]
        views = [own]
        if self.contrast_:
            cols = []
            for a, b in self.contrast_:
                col = dense[:, pos[b]]
                cols.append(col if not a else dense[:, pos[a]] - col)
            views.append(np.column_stack(cols))
        if getattr(self, "context_forest_", None) is not None:
            # Neighbour mean per own column (read directly, or own − diff), beside the own view.
            nbr = [dense[:, pos[b]] if not a else dense[:, pos[a]] - dense[:, pos[b]] for a, b in self.context_]
            views.append(np.column_stack([own, *nbr]))
        return views

    def _redundancy(self, frame: pl.DataFrame, numeric: list[str]) -> tuple[float, dict[str, float]]:
        """Median over own columns of Spearman(own, neighbour mean) squared, on nodes that have neighbours."""
        if not self.context_:
            return 0.0, {}
        dense = self.encoder_.dense_matrix(frame)
        pos = {c: j for j, c in enumerate(self.encoder_.numeric)}
        rows = np.ones(frame.height, dtype=bool)
        if DEGREE in pos:
            rows = dense[:, pos[DEGREE]] > 0
        if rows.sum() < 3:
            return 0.0, {}
        rho2: dict[str, float] = {}
        for own_col, (a, b) in zip([c for c in self.own_ if f"{MEAN_PREFIX}{c}" in pos or f"{DIFF_PREFIX}{c}" in pos],
                                   self.context_, strict=True):
            x = dense[rows, pos[own_col]]
            m = dense[rows, pos[b]] if not a else x - dense[rows, pos[b]]
            if np.ptp(x) == 0 or np.ptp(m) == 0:
                continue
            rho = np.corrcoef(rankdata(x), rankdata(m))[0, 1]
            rho2[own_col] = float(rho * rho)
        return (float(np.median(list(rho2.values()))) if rho2 else 0.0), rho2

    def fit(self, X: Any, y: Any = None) -> Self:
        frame = as_polars(X)
        if frame.height < 2:
            raise DataError(f"graph_deviation needs at least 2 rows to learn from, got {frame.height}", field="X")
        w = self.context_weight
        if not (w == "auto" or (isinstance(w, int | float) and not isinstance(w, bool) and 0.0 <= w <= 1.0)):
            raise ValidationFailed(f"context_weight must be 'auto' or a number in [0, 1], got {w!r}",
                                   field="context_weight", value=w)
        numeric, _ = infer_columns(frame, self.features, None)
        self.encoder_ = TabularEncoder.fit(frame, numeric, [])
        self.own_, self.contrast_, self.context_ = self._views(frame, numeric)
        if not self.own_:
            raise DataError("graph_deviation found no own (non-neighbour) numeric feature columns", field="X")
        redundancy, rho2 = self._redundancy(frame, numeric)
        weight = float(redundancy if w == "auto" else w) if self.context_ else 0.0
        if w == "auto" and weight < MIN_CONTEXT_WEIGHT:
            weight = 0.0
        self.context_weight_ = weight
        self.context_forest_ = None
        self.forests_, self.centers_, self.scales_, self.reference_ = [], [], [], []
        for v, m in enumerate(self._view_matrices(frame)):
            forest = IsolationForest(n_estimators=self.n_estimators, max_samples=self.max_samples,
                                     random_state=self.random_state + v, n_jobs=self.n_jobs).fit(m)
            center, scale = m.mean(axis=0), m.std(axis=0)
            scale = np.where(scale > 0, scale, 1.0)  # constant columns add nothing instead of dividing by 0
            self.forests_.append(forest)
            self.centers_.append(center)
            self.scales_.append(scale)
            iso = -forest.score_samples(m)
            l1 = np.abs((m - center) / scale).sum(axis=1)
            self.reference_.extend([np.sort(iso), np.sort(l1)])
        if weight > 0:
            # The context view: one Isolation Forest on [own, neighbour mean] (seeded apart from the others).
            self.context_forest_ = IsolationForest(n_estimators=self.n_estimators, max_samples=self.max_samples,
                                                   random_state=self.random_state + 2, n_jobs=self.n_jobs)
            m = self._view_matrices(frame)[-1]
            self.context_forest_.fit(m)
            self.context_reference_ = np.sort(-self.context_forest_.score_samples(m))
        self.fit_info_ = {
            "variant": "deviation" if weight == 0 else ("context" if weight == 1 else "deviation+context"),
            "criterion": "neighbour redundancy (median Spearman rho^2 of own vs neighbour mean)"
                         if w == "auto" else "fixed context_weight",
            "redundancy": round(redundancy, 6),
            "context_weight": round(weight, 6),
            "rho2": {k: round(v, 4) for k, v in rho2.items()},
        }
        self.feature_names_ = list(numeric)
        return self

    def _raw_scores(self, frame: pl.DataFrame) -> list[np.ndarray]:
        out = []
        mats = self._view_matrices(frame)
        for m, forest, center, scale in zip(mats[: len(self.forests_)], self.forests_, self.centers_, self.scales_,
                                            strict=True):
            out.append(-forest.score_samples(m))
            out.append(np.abs((m - center) / scale).sum(axis=1))
        return out

    @staticmethod
    def _percentile(raw: np.ndarray, ref: np.ndarray) -> np.ndarray:
        # Mid-rank percentile against the training scores: ties share a rank, new data is comparable.
        lo = np.searchsorted(ref, raw, side="left")
        hi = np.searchsorted(ref, raw, side="right")
        return (lo + hi) / (2.0 * len(ref))

    def score(self, X: Any) -> np.ndarray:
        self.check_fitted()
        frame = as_polars(X)
        check_columns(frame, self.feature_names_, type(self).__name__)
        if frame.height == 0:
            return np.zeros(0)
        parts = [self._percentile(raw, ref) for raw, ref in zip(self._raw_scores(frame), self.reference_, strict=True)]
        deviation = np.mean(parts, axis=0)
        w = getattr(self, "context_weight_", 0.0)
        if w <= 0 or self.context_forest_ is None:
            return deviation
        ctx = self._percentile(-self.context_forest_.score_samples(self._view_matrices(frame)[-1]),
                               self.context_reference_)
        return (1.0 - w) * deviation + w * ctx

    def explain(self, X: Any) -> pl.DataFrame:
        """Per-feature |z| (own view, then contrast view): how far each value is from typical."""
        self.check_fitted()
        frame = as_polars(X)
        mats = self._view_matrices(frame)[: len(self.forests_)]
        names = list(self.own_) + [b if not a else f"{a}-{b}" for a, b in self.contrast_]
        z = np.hstack([np.abs((m - c) / s) for m, c, s in zip(mats, self.centers_, self.scales_, strict=True)])
        return pl.DataFrame(z, schema=names, orient="row")


def neighbour_label_features(
    adjacency: Any,
    train_index: Any,
    y_train: Any,
    *,
    n_folds: int = 5,
    random_state: int = 0,
    prior_weight: float = 2.0,
) -> pl.DataFrame:
    """Known-fraud neighbour features for every node, without letting any node see its own label.

    Test nodes (not in ``train_index``) see every training label. A training node sees only the labels
    of the training nodes in the *other* ``n_folds - 1`` folds, as it would if it were new, so a model
    does not learn to trust a feature that held its own label. Counts are rescaled by the share of
    labels each node could see, so both kinds of node are on the same scale. Columns:
    ``nbr_label_fraud`` (known fraudsters among the neighbours), ``nbr_label_share`` (their share of
    the labelled neighbours, smoothed toward the visible labels' base rate with ``prior_weight`` pseudo
    neighbours), ``nbr_label_coverage`` (labelled neighbours / degree) and ``nbr_label_share2``
    (neighbours' mean ``nbr_label_share``: two hops).
    """
    import scipy.sparse as sp

    adj = sp.csr_matrix(adjacency, dtype=np.float64)
    n = adj.shape[0]
    if adj.shape != (n, n):
        raise DataError(f"adjacency must be square, got {adj.shape}", field="adjacency", value=adj.shape)
    tr = np.asarray(train_index, dtype=np.int64).reshape(-1)
    yt = np.asarray(y_train, dtype=np.float64).reshape(-1)
    if tr.size != yt.size:
        raise DataError(f"train_index has {tr.size} entries but y_train has {yt.size}", field="y_train")
    if tr.size and (tr.min() < 0 or tr.max() >= n):
        raise DataError(f"train_index must lie in [0, {n}), got {tr.min()}..{tr.max()}", field="train_index")
    if not set(np.unique(yt)) <= {0.0, 1.0}:
        raise DataError("y_train must be 0/1", field="y_train", value=sorted(set(np.unique(yt)))[:5])
    if not isinstance(n_folds, int) or n_folds < 2:
        raise ValidationFailed(f"n_folds must be an integer >= 2, got {n_folds!r}", field="n_folds", value=n_folds)
    adj.data[:] = 1.0
    deg = np.asarray(adj.sum(axis=1)).ravel()
    mean_op = sp.diags(1.0 / np.maximum(deg, 1.0)) @ adj

    def from_labels(known: np.ndarray, known_y: np.ndarray, visible: float) -> np.ndarray:
        # The base rate too comes from the visible labels only, so a held-out row owes nothing to its own.
        prior = float(known_y.mean()) if known_y.size else 0.0
        lab = np.zeros(n)
        lab[known] = 1.0
        fraud = np.zeros(n)
        fraud[known] = known_y
        n_lab, n_fraud = adj @ lab, adj @ fraud
        share = (n_fraud + prior_weight * prior) / (n_lab + prior_weight)
        return np.column_stack([n_fraud / visible, share, n_lab / visible / np.maximum(deg, 1.0), mean_op @ share])

    out = np.zeros((n, 4))
    test = np.ones(n, dtype=bool)
    test[tr] = False
    out[test] = from_labels(tr, yt, 1.0)[test]
    pos = int(yt.sum())
    k = max(2, min(n_folds, pos, yt.size - pos)) if 0 < pos < yt.size else 2
    if tr.size >= k:
        splitter = (StratifiedKFold(k, shuffle=True, random_state=random_state) if 0 < pos < yt.size
                    else KFold(k, shuffle=True, random_state=random_state))
        for keep, held in splitter.split(tr, yt):
            out[tr[held]] = from_labels(tr[keep], yt[keep], (k - 1) / k)[tr[held]]
    names = ["nbr_label_fraud", "nbr_label_share", "nbr_label_coverage", "nbr_label_share2"]
    return pl.DataFrame(out, schema=names, orient="row")


GRAPH_DETECTORS: dict[str, type[Detector]] = {
    cls.name: cls for cls in (GraphLightGBMDetector, GraphDeviationDetector)
}


# -- a graph neural network, for comparison ----------------------------------------------------------------
class GraphInput:
    """Node features plus the (n x n) adjacency they live on: what ``GraphSAGEDetector`` takes as ``X``."""

    def __init__(self, features: Any, adjacency: Any) -> None:
        import scipy.sparse as sp

        frame = as_polars(features)
        adj = sp.csr_matrix(adjacency, dtype=np.float32)
        if adj.shape != (frame.height, frame.height):
            raise DataError(f"adjacency must be {frame.height} x {frame.height}, got {adj.shape}", field="adjacency",
                            value=adj.shape)
        self.features = frame
        self.adjacency = adj


class GraphSAGEDetector(Detector):
    """Two-layer GraphSAGE (mean aggregator, own and neighbour weights kept apart) in plain PyTorch.

    Transductive: ``fit(GraphInput, y)`` where ``y`` holds 0/1 for training nodes and -1 for the rest;
    ``score(GraphInput)`` scores every node. Full-batch with a sparse row-normalised adjacency, class-
    weighted cross-entropy, early stopping on a stratified validation part of the labelled nodes.
    Installed as an optional comparison (GADBench: trees on neighbour aggregates usually win).
    """

    name: ClassVar[str] = "graphsage"
    supervised: ClassVar[bool] = True

    def __init__(
        self,
        *,
        hidden: int = 64,
        epochs: int = 400,
        learning_rate: float = 0.01,
        weight_decay: float = 5e-4,
        dropout: float = 0.2,
        validation_fraction: float = 0.2,
        patience: int = 50,
        random_state: int = 0,
    ) -> None:
        self.hidden = hidden
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.random_state = random_state

    @staticmethod
    def _prepare(X: Any, mean: np.ndarray | None = None, std: np.ndarray | None = None) -> tuple[Any, Any, Any, Any]:
        import scipy.sparse as sp
        import torch

        if not isinstance(X, GraphInput):
            raise ValidationFailed(f"graphsage takes a GraphInput (features + adjacency), got {type(X).__name__}",
                                   field="X", value=type(X).__name__)
        m = X.features.select(pl.all().cast(pl.Float64)).to_numpy().astype(np.float64)
        m = np.sign(m) * np.log1p(np.abs(m))  # heavy-tailed counts: log scale keeps the gradients sane
        m = np.nan_to_num(m)
        if mean is None:
            mean, std = m.mean(axis=0), m.std(axis=0)
            std = np.where(std > 0, std, 1.0)
        x = torch.tensor((m - mean) / std, dtype=torch.float32)
        adj = X.adjacency.copy()
        adj.data[:] = 1.0
        deg = np.asarray(adj.sum(axis=1)).ravel()
        norm = (sp.diags(1.0 / np.maximum(deg, 1.0)) @ adj).tocoo()
        a = torch.sparse_coo_tensor(np.vstack([norm.row, norm.col]), norm.data.astype(np.float32), norm.shape,
                                    check_invariants=True)
        return x, a.coalesce(), mean, std

    def _net(self, d: int) -> Any:
        import torch
        from torch import nn

        class SAGE(nn.Module):
            def __init__(self, d: int, h: int, p: float) -> None:
                super().__init__()
                self.self1, self.nbr1 = nn.Linear(d, h), nn.Linear(d, h, bias=False)
                self.self2, self.nbr2 = nn.Linear(h, h), nn.Linear(h, h, bias=False)
                self.out = nn.Linear(h, 2)
                self.drop = nn.Dropout(p)

            def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
                h = torch.relu(self.self1(x) + self.nbr1(torch.sparse.mm(a, x)))
                h = self.drop(h)
                h = torch.relu(self.self2(h) + self.nbr2(torch.sparse.mm(a, h)))
                return self.out(self.drop(h))

        return SAGE(d, self.hidden, self.dropout)

    def fit(self, X: Any, y: Any = None) -> Self:
        import torch
        from sklearn.model_selection import train_test_split

        x, a, mean, std = self._prepare(X)
        target = np.asarray(y).reshape(-1).astype(np.int64)
        if target.shape[0] != x.shape[0]:
            raise ValidationFailed(f"y has {target.shape[0]} entries for {x.shape[0]} nodes", field="y")
        labelled = np.flatnonzero(target >= 0)
        if len(np.unique(target[labelled])) < 2:
            raise DataError("graphsage needs both fraud and normal labelled nodes", field="y")
        tr, va = train_test_split(labelled, test_size=self.validation_fraction, stratify=target[labelled],
                                  random_state=self.random_state)
        torch.manual_seed(self.random_state)
        net = self._net(x.shape[1])
        opt = torch.optim.Adam(net.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        yt = torch.tensor(np.maximum(target, 0))
        pos = max(float(target[tr].sum()), 1.0)
        weight = torch.tensor([1.0, (len(tr) - pos) / pos], dtype=torch.float32)
        tr_t, va_t = torch.tensor(tr), torch.tensor(va)
        best, best_state, wait = np.inf, None, 0
        for _ in range(self.epochs):
            net.train()
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(x, a)[tr_t], yt[tr_t], weight=weight)
            loss.backward()
            opt.step()
            net.eval()
            with torch.no_grad():
                vloss = float(torch.nn.functional.cross_entropy(net(x, a)[va_t], yt[va_t], weight=weight))
            if vloss < best - 1e-5:
                best, wait = vloss, 0
                best_state = {k: v.clone() for k, v in net.state_dict().items()}
            else:
                wait += 1
                if wait >= self.patience:
                    break
        if best_state is not None:
            net.load_state_dict(best_state)
        self.net_ = net.eval()
        self.mean_, self.std_ = mean, std
        self.n_features_ = x.shape[1]
        return self

    def score(self, X: Any) -> np.ndarray:
        import torch

        self.check_fitted()
        x, a, _, _ = self._prepare(X, self.mean_, self.std_)
        if x.shape[1] != self.n_features_:
            raise ModelError(f"graphsage was fitted on {self.n_features_} features, got {x.shape[1]}", field="X")
        with torch.no_grad():
            return torch.softmax(self.net_(x, a), dim=1)[:, 1].numpy().astype(np.float64)

    def _save_state(self, folder: Any) -> None:
        import torch

        from shopguard.models.state import save_state

        torch.save(self.net_.state_dict(), folder / "graphsage.pt")  # tensors only: read with weights_only
        save_state(folder, {"mean_": self.mean_, "std_": self.std_, "n_features_": self.n_features_})

    def _load_state(self, folder: Any) -> None:
        import torch

        from shopguard.models.state import load_state

        for k, v in load_state(folder).items():
            setattr(self, k, v)
        net = self._net(self.n_features_)
        net.load_state_dict(torch.load(folder / "graphsage.pt", weights_only=True))
        self.net_ = net.eval()


GRAPH_DETECTORS[GraphSAGEDetector.name] = GraphSAGEDetector
