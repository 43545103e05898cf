"""Warnings a careful analyst would give before anyone trusts the numbers.

Each check is a pure function of labels, scores, metric summaries or training rows and returns a list
of ``Check`` (empty when all is well): too few fraud examples for the figures to mean much, a ranking
worse than chance (labels inverted? unlabelled events counted as normal?), one feature that separates
the classes on its own (a label leak), a test window whose fraud rate is far from training's, a test
window too small to judge. ``run_checks`` gathers them for the model manifest and the reports.

>>> [c.code for c in check_few_positives(12, window="test")]
['few_positives']
>>> check_positive_rate_shift(0.01, 0.012)
[]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import polars as pl

from shopguard.evaluation.metrics import _average_ranks, roc_auc

Severity = Literal["warning", "info"]

MIN_POSITIVES = 30
MIN_EVENTS = 100
LEAK_AUC = 0.99
RATE_RATIO = 4.0
# Rows of the training frame the leak check reads (all positives kept, negatives sampled).
LEAK_MAX_ROWS = 50_000
# Categories with fewer training rows are pooled before the purity check: an id seen once is
# trivially "pure" and proves nothing.
LEAK_MIN_CATEGORY_ROWS = 10
# Below this many positives a single feature separating them is as likely chance as a leak.
LEAK_MIN_POSITIVES = 10


@dataclass(frozen=True)
class Check:
    """One finding: a stable ``code``, ``severity``, a sentence for people, and the measured ``value``."""

    code: str
    severity: Severity
    message: str
    value: Any = None
    window: str | None = None  # "train", "validation", "test" or None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        v = d["value"]
        if isinstance(v, float) and not math.isfinite(v):
            d["value"] = None
        elif isinstance(v, np.generic):
            d["value"] = v.item()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Check:
        return cls(code=str(d["code"]), severity=d.get("severity", "warning"), message=str(d.get("message", "")),
                   value=d.get("value"), window=d.get("window"))


def check_few_positives(positives: int | None, *, window: str = "test", minimum: int = MIN_POSITIVES) -> list[Check]:
    """Fewer than ``minimum`` fraud events in a window: its ROC-AUC and AP swing widely by chance."""
    if positives is None or positives >= minimum:
        return []
    return [Check("few_positives", "warning",
                  f"only {positives} fraud events in the {window} window (< {minimum}): the numbers mean little; "
                  "read the confidence intervals, label more, or widen the window", positives, window)]


def check_auc_below_chance(auc: float | None, *, window: str = "test") -> list[Check]:
    """ROC-AUC under 0.5: the model ranks normal events above fraud."""
    if auc is None or not math.isfinite(auc) or auc >= 0.5:
        return []
    return [Check("auc_below_chance", "warning",
                  f"{window} ROC-AUC {auc:.3f} is below 0.5 (worse than chance): labels inverted? unlabelled "
                  "events treated as negatives? a score direction flipped?", float(auc), window)]


WEAK_AUC = 0.65


def check_weak_signal(auc: float | None, ci: Sequence[float] | None = None, *, window: str = "test",
                      validation_auc: float | None = None) -> list[Check]:
    """ROC-AUC between 0.5 and ``WEAK_AUC``: the features carry little signal in this window; worse still
    when validation (inside the training window) looked much better, a sign the fraud changed."""
    if auc is None or not math.isfinite(auc) or auc < 0.5 or auc >= WEAK_AUC:
        return []
    span = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci and all(math.isfinite(x) for x in ci) else ""
    drift = ""
    if validation_auc is not None and math.isfinite(validation_auc) and validation_auc - auc > 0.1:
        drift = (f"; validation inside the training window reached {validation_auc:.3f}, so what marked fraud "
                 "then does not mark it in this window (the fraud changed, or the early fraud was different)")
    return [Check("weak_signal", "warning",
                  f"{window} ROC-AUC {auc:.3f}{span} is barely above chance: these features say little about "
                  f"fraud in this window{drift}. Treat the model as weak here; more history, labels or fields "
                  "may help", float(auc), window)]


def check_tiny_window(events: int | None, *, window: str = "test", minimum: int = MIN_EVENTS) -> list[Check]:
    """Fewer than ``minimum`` events to evaluate on."""
    if events is None or events >= minimum:
        return []
    return [Check("tiny_window", "warning",
                  f"the {window} window holds only {events} events (< {minimum}): too few to judge a model",
                  events, window)]


def check_positive_rate_shift(train_rate: float | None, test_rate: float | None, *, ratio: float = RATE_RATIO,
                              window: str = "test") -> list[Check]:
    """The window's fraud rate is more than ``ratio`` times (or less than 1/``ratio`` of) training's."""
    if train_rate is None or test_rate is None or not (math.isfinite(train_rate) and math.isfinite(test_rate)):
        return []
    if train_rate <= 0 or test_rate <= 0:
        if train_rate == test_rate:
            return []
        r = math.inf if train_rate <= 0 else 0.0
    else:
        r = test_rate / train_rate
    if 1.0 / ratio <= r <= ratio:
        return []
    return [Check("positive_rate_shift", "warning",
                  f"fraud rate {test_rate:.3%} in the {window} window vs {train_rate:.3%} in training "
                  f"({'x' + format(r, '.1f') if math.isfinite(r) else 'none in training'}): labelling changed, "
                  "an attack started or ended, or the labels are not yet in", float(r), window)]


def feature_separation(X: pl.DataFrame, y: Any, *, features: Sequence[str] | None = None,
                       categorical: Sequence[str] = (), min_category_rows: int = LEAK_MIN_CATEGORY_ROWS
                       ) -> dict[str, float]:
    """How well each feature alone separates the classes: ROC-AUC folded to [0.5, 1] (either direction).

    Numbers are ranked with missing values first and, separately, last (missingness itself may leak);
    the better of the two counts. Categories score by their own fraud share (categories with fewer
    than ``min_category_rows`` rows pooled), so 1.0 means pure-fraud categories hold every fraud event.
    """
    t = np.asarray(y).reshape(-1).astype(np.int64)
    names = list(features) if features is not None else [c for c in X.columns if c not in ("event_id", "ts")]
    cats = set(categorical)
    out: dict[str, float] = {}
    for c in names:
        if c not in X.columns:
            continue
        col = X[c]
        if c in cats or not (col.dtype.is_numeric() or col.dtype == pl.Boolean):
            v = _category_score(col, t, min_category_rows)
            out[c] = _fold(roc_auc(t, v))
            continue
        v = col.cast(pl.Float64).to_numpy()
        ok = np.isfinite(v)
        if ok.any():
            out[c] = _numeric_separation(v[ok], t[ok], int(t[~ok].sum()), int((~ok).sum() - t[~ok].sum()))
    return out


def _numeric_separation(v: np.ndarray, y: np.ndarray, pos_missing: int, neg_missing: int) -> float:
    """Folded ROC-AUC of values ``v`` with the missing ones ranked lowest, and again highest: one sort."""
    p_n, n_n = int(y.sum()), int(y.size - y.sum())
    pos, neg = p_n + pos_missing, n_n + neg_missing
    if pos == 0 or neg == 0:
        return 0.5
    wins = float(_average_ranks(v)[y == 1].sum() - p_n * (p_n + 1) / 2) if p_n and n_n else 0.0
    tie = 0.5 * pos_missing * neg_missing
    low = (wins + p_n * neg_missing + tie) / (pos * neg)  # missing ranked below every value
    high = (wins + pos_missing * n_n + tie) / (pos * neg)  # missing ranked above every value
    return max(_fold(low), _fold(high))


def _fold(auc: float) -> float:
    return 0.5 if not math.isfinite(auc) else max(auc, 1.0 - auc)


def _category_score(col: pl.Series, y: np.ndarray, min_rows: int) -> np.ndarray:
    keys = col.cast(pl.Utf8).fill_null("\x00missing").to_numpy()
    uniq, inv, counts = np.unique(keys, return_inverse=True, return_counts=True)
    small = counts < min_rows
    inv = np.where(small[inv], -1, inv)  # pooled
    _, pooled = np.unique(inv, return_inverse=True)
    share = np.bincount(pooled, weights=y) / np.bincount(pooled)
    return share[pooled]


def check_label_leak(X: pl.DataFrame, y: Any, *, features: Sequence[str] | None = None,
                     categorical: Sequence[str] = (), threshold: float = LEAK_AUC, max_rows: int = LEAK_MAX_ROWS,
                     min_positives: int = LEAK_MIN_POSITIVES, seed: int = 0) -> list[Check]:
    """A feature that alone separates fraud from normal (ROC-AUC >= ``threshold`` either way) on the
    training rows: most often a label leak (a column written after the fact, a chargeback flag, an
    id of known fraudsters). One warning per feature, strongest first."""
    t = np.asarray(y).reshape(-1).astype(np.int64)
    pos = int(t.sum())
    if pos < min_positives or pos == t.size or X.height != t.size:
        return []
    frame = X
    if X.height > max_rows:
        # Every positive, and enough negatives to fill the budget: the ranking check needs both classes.
        rng = np.random.default_rng(seed)
        neg = np.flatnonzero(t == 0)
        keep_neg = rng.choice(neg, size=max(1, min(neg.size, max_rows - pos)), replace=False)
        rows = np.sort(np.r_[np.flatnonzero(t == 1), keep_neg])
        frame, t = X[rows], t[rows]
    sep = feature_separation(frame, t, features=features, categorical=categorical)
    hits = sorted(((v, c) for c, v in sep.items() if v >= threshold), reverse=True)
    return [Check("label_leak", "warning",
                  f"feature {c!r} alone separates fraud from normal on the training rows (ROC-AUC {v:.3f}): "
                  "a possible label leak (is it known only after the fraud is confirmed?)", {"feature": c, "auc": v},
                  "train") for v, c in hits]


def run_checks(
    *,
    X_train: pl.DataFrame | None = None,
    y_train: Any | None = None,
    features: Sequence[str] | None = None,
    categorical: Sequence[str] = (),
    validation: Mapping[str, Any] | None = None,
    test: Mapping[str, Any] | None = None,
    train_positive_rate: float | None = None,
    min_positives: int = MIN_POSITIVES,
    min_events: int = MIN_EVENTS,
) -> list[Check]:
    """Every check that the given inputs allow.

    ``validation`` / ``test`` are ``metrics.summary`` dicts (``events``, ``positives``, ``roc_auc``);
    ``X_train`` / ``y_train`` the rows the detector was fitted on (for the leak check and the training
    fraud rate, unless ``train_positive_rate`` is given).
    """
    found: list[Check] = []
    if y_train is not None:
        t = np.asarray(y_train).reshape(-1)
        if train_positive_rate is None and t.size:
            train_positive_rate = float(t.mean())
        found += check_few_positives(int(t.sum()), window="train", minimum=min_positives)
        if X_train is not None:
            found += check_label_leak(X_train, t, features=features, categorical=categorical)
    for window, m in (("validation", validation), ("test", test)):
        if not m:
            continue
        found += check_window(m, window=window, train_positive_rate=train_positive_rate,
                              min_positives=min_positives, min_events=min_events,
                              validation_auc=(validation or {}).get("roc_auc") if window == "test" else None)
    return found


def check_window(m: Mapping[str, Any], *, window: str = "test", train_positive_rate: float | None = None,
                 min_positives: int = MIN_POSITIVES, min_events: int = MIN_EVENTS,
                 validation_auc: float | None = None) -> list[Check]:
    """The checks one window's metric summary allows (size, fraud count, AUC, fraud-rate shift)."""
    events, positives = m.get("events"), m.get("positives")
    found = check_tiny_window(events, window=window, minimum=min_events)
    found += check_few_positives(positives, window=window, minimum=min_positives)
    found += check_auc_below_chance(m.get("roc_auc"), window=window)
    found += check_weak_signal(m.get("roc_auc"), m.get("roc_auc_ci"), window=window,
                               validation_auc=validation_auc)
    if window == "test" and events and positives is not None:
        found += check_positive_rate_shift(train_positive_rate, positives / events, window=window)
    return found
