"""Hyperparameter and feature-group search for the LightGBM detector, without peeking at the test window.

A shop's own logs rarely suit the defaults. ``tune_lightgbm`` searches LightGBM's settings and which
feature groups to use (Optuna's TPE, seeded) on the training window alone: it cuts the last
``validation_fraction`` of the rows it is given, by ``ts``, as a validation slice, grows trees on the
earlier rows with early stopping on that slice, and keeps the settings with the best average
precision there. The caller passes only the training window's fit rows, so the test window (and the
label-delay gap) cannot influence the choice. The default settings are scored the same way on the
same slice: callers report the gain and keep the defaults when tuning did not beat them.

Early stopping and scoring share the slice, so both scores are a little optimistic; they are
optimistic alike, which is what the comparison needs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl

from shopguard.errors import DataError
from shopguard.evaluation.metrics import average_precision
from shopguard.models.gbm import LightGBMDetector
from shopguard.models.tabular import TabularEncoder, as_polars, infer_columns, labels_array, time_order

# Feature-name prefixes and the group each one opens, most specific first (ring features start with
# ``user_`` too). Names matching none are the current event's own fields (amount, hour, channel...).
GROUP_PREFIXES: tuple[tuple[str, str], ...] = (
    ("user_ring_", "ring"),
    ("user_linked_", "ring"),
    ("ring_", "ring"),
    ("seq_emb_", "sequence"),
    ("seq_", "sequence"),
    ("text_emb_", "text"),
    ("card_", "card"),
    ("user_", "user"),
    ("device_", "device"),
    ("ip_", "ip"),
    ("merchant_", "merchant"),
    ("item_", "item"),
    ("attr_", "attr"),
)
EVENT_GROUP = "event"
MAX_TREES = 2000
EARLY_STOPPING_ROUNDS = 50


def feature_groups_from_names(columns: Sequence[str]) -> dict[str, list[str]]:
    """Feature names grouped by what they describe, from their prefixes (groups in first-seen order).

    >>> feature_groups_from_names(["amount", "user_tx_1d", "user_ring_size", "ip_users_1h", "hour"])
    {'event': ['amount', 'hour'], 'user': ['user_tx_1d'], 'ring': ['user_ring_size'], 'ip': ['ip_users_1h']}
    """
    groups: dict[str, list[str]] = {}
    for c in columns:
        g = next((name for prefix, name in GROUP_PREFIXES if c.startswith(prefix)), EVENT_GROUP)
        groups.setdefault(g, []).append(c)
    return groups


@dataclass
class TuneResult:
    """What the search chose and how it compares with the defaults on the same validation slice.

    ``params`` are ``LightGBMDetector`` keyword arguments to train with: the tuned ones when they beat
    the defaults (``improved``), else the defaults (``{}`` plus the feature lists). ``tuned_params``
    keeps the best trial's settings either way.
    """

    params: dict[str, Any]
    tuned_params: dict[str, Any]
    features: list[str]
    groups: list[str]
    best_score: float
    default_score: float
    improved: bool
    n_trials: int
    n_pruned: int
    elapsed_s: float
    budget_s: float
    seed: int
    validation: dict[str, Any] = field(default_factory=dict)
    metric: str = "average_precision"
    note: str | None = None

    @property
    def gain(self) -> float:
        """Best tuned score minus the defaults' score (NaN when either is missing)."""
        return self.best_score - self.default_score

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record for the model manifest (NaN as None)."""
        d = asdict(self)
        d["gain"] = self.gain
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


class _OutOfTime(Exception):
    pass


def tune_lightgbm(
    X: pl.DataFrame,
    y: np.ndarray,
    *,
    features: list[str],
    categorical: list[str],
    budget_s: float = 60,
    validation_fraction: float = 0.25,
    seed: int = 0,
    feature_groups: dict[str, list[str]] | None = None,
    max_trials: int = 200,
    n_jobs: int = 1,
    min_positives: int = 50,
    max_rows: int = 150_000,
) -> TuneResult:
    """Search LightGBM settings and feature groups on a time-ordered slice cut from the end of ``X``.

    ``X``: the training window's fit rows (with ``ts``); no other rows are read. ``budget_s`` bounds the
    whole call (the defaults' fit included; a trial still running at the deadline stops and is
    discarded), ``max_trials`` the number of trials. ``feature_groups`` (default: by name prefix) are
    switched on and off as wholes, at least one on; features in no group are always used. With a fixed
    ``seed`` and a trial cap reached before the budget, the result is reproducible.
    """
    import optuna

    start = time.monotonic()
    deadline = start + float(budget_s)
    if not 0.0 < validation_fraction < 0.9:
        raise DataError(f"validation_fraction must be in (0, 0.9), got {validation_fraction}",
                        field="validation_fraction", value=validation_fraction)
    frame = as_polars(X)
    target = labels_array(y, frame.height)
    numeric, cats = infer_columns(frame, features, categorical)
    order = time_order(frame)
    n_val = int(round(len(order) * validation_fraction))
    fit_idx, val_idx = order[: len(order) - n_val], order[len(order) - n_val:]
    ts = frame.get_column("ts") if "ts" in frame.columns else None
    validation = {
        "fraction": validation_fraction, "fit_rows": int(fit_idx.size), "rows": int(val_idx.size),
        "positives": int(target[val_idx].sum()),
        "start": _iso(ts[int(val_idx[0])]) if ts is not None and val_idx.size else None,
        "end": _iso(ts[int(val_idx[-1])]) if ts is not None and val_idx.size else None,
    }
    all_features = numeric + cats
    base = {"features": list(all_features), "categorical": list(cats)}
    full_fit = fit_idx.size
    if max_rows and fit_idx.size + val_idx.size > max_rows:
        # A large log: trials on every frauds and a seeded sample of the normal events, so dozens of trials
        # fit in the budget (ranking metrics barely move when negatives are thinned uniformly).
        rng = np.random.default_rng(seed)
        share = fit_idx.size / (fit_idx.size + val_idx.size)
        fit_idx = _thin(fit_idx, target, int(max_rows * share), rng)
        val_idx = _thin(val_idx, target, max_rows - int(max_rows * share), rng)
        validation["sampled_rows"] = int(fit_idx.size + val_idx.size)

    def result(**kw: Any) -> TuneResult:
        fields: dict[str, Any] = {
            "params": dict(base), "tuned_params": {}, "features": list(all_features), "groups": [],
            "best_score": float("nan"), "default_score": float("nan"), "improved": False, "n_trials": 0,
            "n_pruned": 0, "budget_s": float(budget_s), "seed": seed, "validation": validation,
        } | kw
        return TuneResult(elapsed_s=time.monotonic() - start, **fields)

    y_fit, y_val = target[fit_idx], target[val_idx]
    if not (0 < y_val.sum() < y_val.size and 0 < y_fit.sum() < y_fit.size):
        return result(note="the validation slice or the earlier rows lack fraud or normal examples: "
                           "nothing to tune on, the defaults stand")
    if y_val.sum() < min_positives:
        # With a handful of frauds the best of dozens of trials wins by luck, and loses on the test window.
        return result(note=f"the validation slice holds {int(y_val.sum())} fraud events (< {min_positives}): too "
                           "few to tell settings apart, the defaults stand")

    enc = TabularEncoder.fit(frame[fit_idx], numeric, cats)
    matrix = enc.lgb_matrix(frame)
    col_index = {c: i for i, c in enumerate(enc.columns)}
    groups = _groups(all_features, feature_groups)
    grouped = {c for cols in groups.values() for c in cols}
    always = [c for c in all_features if c not in grouped]
    datasets: dict[tuple[str, ...], tuple[lgb.Dataset, lgb.Dataset]] = {}

    def data(cols: list[str]) -> tuple[lgb.Dataset, lgb.Dataset]:
        key = tuple(cols)
        if key not in datasets:
            idx = [col_index[c] for c in cols]
            cat_pos = [i for i, c in enumerate(cols) if c in cats]
            # feature_pre_filter off: one Dataset serves trials with different min_child_samples.
            train = lgb.Dataset(matrix[np.ix_(fit_idx, idx)], y_fit, categorical_feature=cat_pos,
                                params={"feature_pre_filter": False, "verbosity": -1}, free_raw_data=False)
            valid = lgb.Dataset(matrix[np.ix_(val_idx, idx)], y_val, reference=train, categorical_feature=cat_pos)
            datasets[key] = (train, valid)
        return datasets[key]

    def fit_score(hp: dict[str, Any], cols: list[str], stop_at: float | None) -> tuple[float, int]:
        det = LightGBMDetector(**hp, random_state=seed, n_jobs=n_jobs)
        params = det._lgb_params() | {"metric": "average_precision", "feature_pre_filter": False}
        train, valid = data(cols)
        callbacks = [lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)]
        if stop_at is not None:
            callbacks.append(_deadline(stop_at))
        booster = lgb.train(params, train, num_boost_round=int(hp.get("n_estimators", MAX_TREES)),
                            valid_sets=[valid], callbacks=callbacks)
        best = int(booster.best_iteration or booster.current_iteration())
        scores = booster.predict(matrix[np.ix_(val_idx, [col_index[c] for c in cols])], num_iteration=best)
        last_scores[0] = scores
        return average_precision(y_val, scores), best

    last_scores: list[np.ndarray] = [np.zeros(0)]
    defaults = {k: v for k, v in LightGBMDetector().get_params().items() if k in _TUNED}
    default_score, default_trees = fit_score(defaults, all_features, None)
    default_val_scores = last_scores[0]

    pos = int(y_fit.sum())
    imbalance = max(1.0, (y_fit.size - pos) / max(pos, 1))
    names = sorted(groups)

    def objective(trial: Any) -> float:
        on = [g for g in names if trial.suggest_categorical(f"group_{g}", [True, False])] if len(names) > 1 else names
        if not on:
            raise optuna.TrialPruned("no feature group switched on")
        cols = [c for c in all_features if c in set(always).union(*(groups[g] for g in on))]
        hp = {
            "n_estimators": MAX_TREES,
            "num_leaves": trial.suggest_int("num_leaves", 8, 256, log=True),
            "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.15, log=True),
            "min_child_samples": trial.suggest_int("min_child_samples", 5, 500, log=True),
            "feature_fraction": trial.suggest_float("feature_fraction", 0.4, 1.0),
            "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
            "reg_lambda": trial.suggest_float("reg_lambda", 1e-3, 30.0, log=True),
            # Thinned negatives already weigh the frauds up: the weight is only searched on full data.
            "scale_pos_weight": (trial.suggest_float("scale_pos_weight", 1.0, imbalance, log=True)
                                 if imbalance > 1.0 and "sampled_rows" not in validation else 1.0),
        }
        try:
            score, trees = fit_score(hp, cols, deadline)
        except _OutOfTime:
            raise optuna.TrialPruned("out of time") from None
        trial.set_user_attr("trees", trees)
        trial.set_user_attr("groups", on)
        return score

    remaining = deadline - time.monotonic()
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
        if remaining > 0 and max_trials > 0:
            study.optimize(objective, n_trials=int(max_trials), timeout=remaining, catch=())
    finally:
        optuna.logging.set_verbosity(previous)

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    n_pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    if not complete:
        return result(default_score=default_score, n_pruned=n_pruned,
                      note="no trial finished within the budget: the defaults stand")
    best = max(complete, key=lambda t: (t.value, -t.number))
    on = list(best.user_attrs["groups"])
    cols = [c for c in all_features if c in set(always).union(*(groups[g] for g in on))]
    # More rows in the final fit than in the trial's: allow proportionally more trees (the detector
    # still stops early on its own late slice).
    trees = int(math.ceil(best.user_attrs["trees"] * len(order) / max(full_fit, 1)))
    tuned = {k: best.params[k] for k in _TUNED if k in best.params}
    tuned |= {"n_estimators": max(trees, 1), "features": cols, "categorical": [c for c in cats if c in cols]}
    if "scale_pos_weight" not in tuned:
        tuned["scale_pos_weight"] = 1.0
    # The best of many trials on one slice is optimistic: keep it only when a paired bootstrap of the slice
    # says it beats the defaults in at least 90% of resamples.
    best_hp = {k: v for k, v in tuned.items() if k in _TUNED} | {"n_estimators": MAX_TREES}
    fit_score(best_hp, cols, None)
    wins = _paired_wins(y_val, last_scores[0], default_val_scores, seed)
    improved = bool(best.value > default_score and wins >= 0.9)
    return result(
        params=dict(tuned) if improved else dict(base), tuned_params=tuned,
        features=cols if improved else list(all_features), groups=on if improved else names,
        best_score=float(best.value), default_score=float(default_score), improved=improved,
        n_trials=len(complete), n_pruned=n_pruned,
        note=None if improved else (f"tuning did not beat the defaults clearly (better in {wins:.0%} of "
                                    f"bootstrap resamples of the slice; default trees {default_trees})"),
    )


def _thin(idx: np.ndarray, y: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``cap`` of ``idx``: every positive, and a uniform sample of the negatives."""
    if idx.size <= cap:
        return idx
    pos, neg = idx[y[idx] == 1], idx[y[idx] == 0]
    keep = min(neg.size, max(cap - pos.size, cap // 2))
    return np.sort(np.concatenate([pos, rng.choice(neg, size=keep, replace=False)]))


def _paired_wins(y: np.ndarray, a: np.ndarray, b: np.ndarray, seed: int, n_boot: int = 200) -> float:
    """Share of stratified bootstrap resamples of (y, a, b) where ``a``'s average precision beats ``b``'s."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if pos.size == 0 or neg.size == 0 or a.size != y.size or b.size != y.size:
        return 0.0
    wins = 0
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        wins += average_precision(y[idx], a[idx]) > average_precision(y[idx], b[idx])
    return wins / n_boot


_TUNED = ("n_estimators", "num_leaves", "learning_rate", "min_child_samples", "feature_fraction",
          "bagging_fraction", "reg_lambda", "scale_pos_weight")


def _groups(features: list[str], given: dict[str, list[str]] | None) -> dict[str, list[str]]:
    present = set(features)
    raw = feature_groups_from_names(features) if given is None else given
    out = {g: [c for c in cols if c in present] for g, cols in raw.items()}
    return {g: cols for g, cols in out.items() if cols}


def _deadline(stop_at: float) -> Any:
    def callback(env: Any) -> None:
        if time.monotonic() > stop_at:
            raise _OutOfTime
    callback.order = 40  # type: ignore[attr-defined]
    return callback


def _iso(v: Any) -> str | None:
    return v.isoformat() if hasattr(v, "isoformat") else (None if v is None else str(v))


__all__ = ["TuneResult", "feature_groups_from_names", "tune_lightgbm"]
