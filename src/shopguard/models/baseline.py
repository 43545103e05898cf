"""Learn each user's normal pattern, and flag events that leave it.

For every numeric feature (amount, hour of day, velocity counts, new-device flags, ...) the detector
keeps the user's own centre and spread (median and median absolute deviation; circular for hour and
weekday) and, for 0/1 flags, how often the user shows them. A new event is scored by how surprising
each value is *for this user*, in nats (-log tail probability), and the score is the mean of the
``top_k`` largest surprises, so one strong deviation is enough.

Users with little history borrow from the population: their statistics are shrunk towards population
statistics with weight ``n / (n + prior_strength)`` (empirical Bayes), so a brand-new user is judged
against everyone and a long-standing one against themself.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

import numpy as np
import polars as pl
from scipy.stats import norm

from shopguard.errors import DataError, ModelError
from shopguard.models.base import Detector
from shopguard.models.tabular import as_polars, check_columns, infer_columns

_DEFAULT_PERIODS = {"hour": 24.0, "weekday": 7.0, "hour_of_day": 24.0, "day_of_week": 7.0}
_MAX_Z = 40.0


class UserBaselineDetector(Detector):
    """Per-user robust deviation from the user's own history, with population fallback."""

    name: ClassVar[str] = "baseline"
    supervised: ClassVar[bool] = False

    def __init__(self, *, user_col: str = "user_id", features: list[str] | None = None,
                 periodic: dict[str, float] | None = None, prior_strength: float = 5.0, top_k: int = 3) -> None:
        self.user_col = user_col
        self.features = features
        self.periodic = periodic
        self.prior_strength = prior_strength
        self.top_k = top_k

    # -- fitting ---------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None) -> Self:
        frame = as_polars(X)
        if self.user_col not in frame.columns:
            raise ModelError(f"UserBaselineDetector needs the user column {self.user_col!r} in the frame",
                             field=self.user_col)
        if frame.height == 0:
            raise DataError("UserBaselineDetector needs at least one row to learn from", field="X", value=0)
        numeric, _ = infer_columns(frame.drop(self.user_col), self.features, None)
        periods = {**_DEFAULT_PERIODS, **(self.periodic or {})}
        kinds: dict[str, str] = {}
        for c in numeric:
            col = frame.get_column(c).cast(pl.Float64).drop_nulls()
            if c in periods:
                kinds[c] = "periodic"
            elif col.len() and col.is_in([0.0, 1.0]).all():
                kinds[c] = "flag"
            else:
                kinds[c] = "value"
        base = frame.select(pl.col(self.user_col).cast(pl.Utf8).alias("_user"),
                            *[pl.col(c).cast(pl.Float64) for c in numeric])
        aggs: list[pl.Expr] = [pl.len().alias("_n")]
        population: dict[str, tuple[float, float]] = {}
        for c in numeric:
            x = pl.col(c)
            if kinds[c] == "flag":
                aggs += [x.mean().alias(f"{c}__c"), x.count().alias(f"{c}__n")]
                p = base.select(x.mean()).item()
                population[c] = (float(p) if p is not None else 0.0, 0.0)
            elif kinds[c] == "periodic":
                ang = x * (2 * np.pi / periods[c])
                aggs += [pl.arctan2(ang.sin().mean(), ang.cos().mean()).alias(f"{c}__a"), x.count().alias(f"{c}__n")]
            else:
                aggs += [x.median().alias(f"{c}__c"), x.count().alias(f"{c}__n")]
        stats = base.group_by("_user").agg(aggs)
        # Spreads need the centre first: a second pass over the rows joined with their user's centre.
        joined = base.join(stats, on="_user", how="left")
        spread_aggs: list[pl.Expr] = []
        for c in numeric:
            if kinds[c] == "value":
                spread_aggs.append((pl.col(c) - pl.col(f"{c}__c")).abs().median().alias(f"{c}__s"))
                med = base.select(pl.col(c).median()).item()
                med = float(med) if med is not None else 0.0
                mad = base.select((pl.col(c) - med).abs().median()).item()
                std = base.select(pl.col(c).std()).item()
                population[c] = (med, _positive(mad, std))
            elif kinds[c] == "periodic":
                period = periods[c]
                center = pl.col(f"{c}__a") * (period / (2 * np.pi))
                spread_aggs.append(_circ_dist(pl.col(c), center, period).median().alias(f"{c}__s"))
                vals = base.get_column(c).drop_nulls().to_numpy()
                ang = vals * 2 * np.pi / period
                pc = float(np.arctan2(np.sin(ang).mean(), np.cos(ang).mean()) * period / (2 * np.pi)) if vals.size else 0.0
                d = np.abs((vals - pc + period / 2) % period - period / 2) if vals.size else np.zeros(1)
                population[c] = (pc, _positive(float(np.median(d)), float(d.std())))
        if spread_aggs:
            stats = stats.join(joined.group_by("_user").agg(spread_aggs), on="_user", how="left")
        for c in numeric:
            if kinds[c] == "periodic":
                stats = stats.with_columns((pl.col(f"{c}__a") * (periods[c] / (2 * np.pi))).alias(f"{c}__c")).drop(f"{c}__a")
        self.kinds_ = kinds
        self.periods_ = {c: periods[c] for c in numeric if kinds[c] == "periodic"}
        self.population_ = population
        self.user_stats_ = stats
        self.feature_names_ = numeric
        return self

    # -- scoring ---------------------------------------------------------------------------------------
    def surprises(self, X: Any) -> np.ndarray:
        """Per-feature surprise (nats) of each row given its user's history; rows x features."""
        self.check_fitted()
        frame = as_polars(X)
        check_columns(frame, [self.user_col, *self.feature_names_], type(self).__name__)
        rows = frame.select(pl.col(self.user_col).cast(pl.Utf8).alias("_user"),
                            *[pl.col(c).cast(pl.Float64) for c in self.feature_names_]).with_row_index("_row")
        j = rows.join(self.user_stats_, on="_user", how="left", suffix="_u").sort("_row")
        k = float(self.prior_strength)
        out = np.zeros((frame.height, len(self.feature_names_)))
        for i, c in enumerate(self.feature_names_):
            x = j.get_column(c).to_numpy().astype(np.float64)
            n = j.get_column(f"{c}__n").fill_null(0).to_numpy().astype(np.float64)
            w = n / (n + k)
            pop_c, pop_s = self.population_[c]
            kind = self.kinds_[c]
            if kind == "flag":
                p_u = np.nan_to_num(j.get_column(f"{c}__c").to_numpy().astype(np.float64), nan=pop_c)
                p = np.clip(w * p_u + (1 - w) * pop_c, 1e-4, 1 - 1e-4)
                s = -np.log(np.where(x >= 0.5, p, 1 - p))
            else:
                cu = np.nan_to_num(j.get_column(f"{c}__c").to_numpy().astype(np.float64), nan=pop_c)
                su = np.nan_to_num(j.get_column(f"{c}__s").to_numpy().astype(np.float64), nan=pop_s)
                scale = np.maximum(1.4826 * (w * su + (1 - w) * pop_s), 0.25 * 1.4826 * pop_s)
                if kind == "periodic":
                    period = self.periods_[c]
                    # Blend centres on the circle: the shortest arc from the population centre.
                    delta = (cu - pop_c + period / 2) % period - period / 2
                    center = pop_c + w * delta
                    dist = np.abs((x - center + period / 2) % period - period / 2)
                else:
                    center = w * cu + (1 - w) * pop_c
                    dist = np.abs(x - center)
                z = np.minimum(dist / scale, _MAX_Z)
                # Two-sided Gaussian tail surprise: comparable with the flags' -log p.
                s = -(np.log(2.0) + norm.logsf(z))
                s = np.maximum(s, 0.0)
            out[:, i] = np.where(np.isnan(x), 0.0, s)
        return out

    def score(self, X: Any) -> np.ndarray:
        s = self.surprises(X)
        if s.shape[0] == 0 or s.shape[1] == 0:
            return np.zeros(s.shape[0])
        k = max(1, min(int(self.top_k), s.shape[1]))
        return np.sort(s, axis=1)[:, -k:].mean(axis=1)

    def explain(self, X: Any) -> pl.DataFrame:
        return pl.DataFrame(self.surprises(X), schema=self.feature_names_, orient="row")


def _positive(mad: float | None, std: float | None) -> float:
    """A usable spread: the MAD, else the standard deviation, else 1 (a constant feature)."""
    for v in (mad, std):
        if v is not None and np.isfinite(v) and v > 0:
            return float(v)
    return 1.0


def _circ_dist(x: pl.Expr, center: pl.Expr, period: float) -> pl.Expr:
    return ((x - center + period / 2) % period - period / 2).abs()
