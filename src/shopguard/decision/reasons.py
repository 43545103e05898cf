"""Reason codes: a model's per-feature contributions turned into the domain's words.

The detector says which features pushed an event's score up (LightGBM: exact TreeSHAP contributions;
anomaly detectors: how unusual each value is). The feature definitions' ``describe`` templates turn the
feature's value into text a risk analyst reads, e.g. ``card_failed_payments_10m = 7`` becomes
"7 failed payments in 10 min on this card".
"""

from __future__ import annotations

import math
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
    names = contributions.columns
    if not names or contributions.height == 0:
        return [[] for _ in range(contributions.height)]
    weights = np.nan_to_num(contributions.to_numpy().astype(np.float64), nan=0.0)
    k = min(top, len(names))
    idx = np.argsort(-weights, axis=1, kind="stable")[:, :k]
    used = {names[i] for i in np.unique(idx)}
    columns = {n: features.get_column(n).to_list() for n in used if n in features.columns}
    out: list[list[Reason]] = []
    for r in range(weights.shape[0]):
        row: list[Reason] = []
        for j in idx[r]:
            w = float(weights[r, j])
            if not w > min_weight:
                break
            name = names[j]
            value = columns[name][r] if name in columns else None
            if isinstance(value, float) and math.isnan(value):
                value = None
            row.append(Reason(code=reason_code(name), text=describe(name, value, feature_set), weight=round(w, 6)))
        out.append(row)
    return out
