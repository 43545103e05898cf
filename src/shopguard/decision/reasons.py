"""Reason codes: a model's per-feature contributions turned into the domain's words.

The detector says which features pushed an event's score up (LightGBM: exact TreeSHAP contributions;
anomaly detectors: how unusual each value is). The feature definitions' ``describe`` templates turn the
feature's value into text a risk analyst reads, e.g. ``card_failed_payments_10m = 7`` becomes
"7 failed payments in 10 min on this card".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict


class Reason(BaseModel):
    """One reason for a decision: a stable code, a sentence, and how much it weighed."""

    model_config = ConfigDict(extra="forbid")

    code: str
    text: str
    weight: float


def reason_code(feature: str) -> str:
    """Stable machine code of a feature reason, e.g. ``CARD_FAILED_PAYMENTS_10M``."""
    return feature.upper()


def describe(feature: str, value: Any, feature_set: Any | None = None) -> str:
    """Text for a feature value, from the feature set's ``describe`` template when it has one."""
    if feature_set is not None:
        try:
            return str(feature_set.describe(feature, value))
        except Exception:  # an unknown feature or a template that does not fit this value
            pass
    if isinstance(value, float):
        return f"{feature} = {value:.4g}"
    return f"{feature} = {value}"


def reasons_from_contributions(
    contributions: pl.DataFrame,
    features: pl.DataFrame,
    feature_set: Any | None = None,
    *,
    top: int = 3,
    min_weight: float = 1e-6,
) -> list[list[Reason]]:
    """The ``top`` features pushing each row's score up, as reasons (largest weight first).

    ``contributions`` is rows x features (from ``Detector.explain``); ``features`` holds the values
    the texts quote. Features that pushed the score down, or by less than ``min_weight``, are left out.
    """
    if contributions.height != features.height:
        raise ValueError(f"{contributions.height} contribution rows for {features.height} feature rows")
    columns: dict[str, list[Any]] = {}

    def value(r: int, name: str) -> Any:
        if name not in features.columns:
            return None
        if name not in columns:
            columns[name] = features.get_column(name).to_list()
        return columns[name][r]

    return reasons_from_weights(contributions.to_numpy() if contributions.width else
                                np.zeros((contributions.height, 0)), contributions.columns, value, feature_set,
                                top=top, min_weight=min_weight)


def reasons_from_weights(
    weights: np.ndarray,
    names: Sequence[str],
    value: Callable[[int, str], Any],
    feature_set: Any | None = None,
    *,
    top: int = 3,
    min_weight: float = 1e-6,
) -> list[list[Reason]]:
    """``reasons_from_contributions`` on a (rows x features) array of contributions in ``names`` order;
    ``value(row, name)`` gives the value a text quotes (the real-time paths read it from plain dicts)."""
    n = weights.shape[0]
    if not names or n == 0:
        return [[] for _ in range(n)]
    w_all = np.nan_to_num(np.asarray(weights, dtype=np.float64), nan=0.0)
    k = min(top, len(names))
    idx = np.argsort(-w_all, axis=1, kind="stable")[:, :k]
    out: list[list[Reason]] = []
    for r in range(n):
        row: list[Reason] = []
        for j in idx[r]:
            w = float(w_all[r, j])
            if not w > min_weight:
                break
            name = names[j]
            v = value(r, name)
            if isinstance(v, float) and math.isnan(v):
                v = None
            row.append(Reason(code=reason_code(name), text=describe(name, v, feature_set), weight=round(w, 6)))
        out.append(row)
    return out
