"""Churn risk: the probability that a user has no activity of their own in the next N days.

Asked at a cutoff *t* about every user active in the ``active_days`` before it; the target is "no
activity in (t, t + horizon]" (activity: any event of the user except what others do to the account,
``PASSIVE_TYPES``). ``ChurnRiskDetector`` follows the detector contract with ``ChurnInput(events,
cutoffs)`` as ``X`` (one row per user and cutoff, ``rows(X)`` names them): ``fit`` derives the targets
from the events after each fit cutoff (so the events must reach ``cutoff + horizon``), ``score`` needs
only the events before its cutoffs. Honest use: fit at cutoffs t1, score at t2 >= t1 + horizon.

Feature sets (``features=``):

- ``rfm``: recency, frequency (7 / 28 days / all), active days, sessions, orders, money spent and
  tenure — the marketing baseline;
- ``sequence``: the pretrained transformer's embedding of the user's window at the cutoff, the time
  since its last event (the window cannot see the gap to the cutoff) and the zero-shot survival below;
- ``hybrid``: both;
- ``dt_head``: no training at all — the pretrained next-event head predicts the time to the next event
  (``dt`` buckets from 1 s to 90 days); churn risk is P(gap > elapsed + horizon | gap > elapsed).

Heads: ``logistic`` (standardised logistic regression) or ``lightgbm``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Self

import numpy as np
import polars as pl
import torch

from shopguard.errors import DataError, ModelError
from shopguard.models.base import Detector
from shopguard.models.sequence.cutoffs import UserWindows, as_cutoffs, windows_for_rows
from shopguard.models.sequence.network import FoundationModel, _k
from shopguard.models.sequence.tokenizer import DT_EDGES, OFFSET
from shopguard.models.state import load_state, save_state

# What others do to an account (carriers, merchants, the shop): not the user's own activity.
PASSIVE_TYPES: tuple[str, ...] = ("shipment", "refund", "price_change")
FEATURE_SETS: tuple[str, ...] = ("rfm", "sequence", "hybrid", "dt_head")
HEADS: tuple[str, ...] = ("logistic", "lightgbm")
MODEL_DIR = "model"
HEAD_FILE = "state.json"  # the head as plain state (shopguard.models.state), never a pickle
DAY_S = 86_400.0


@dataclass
class ChurnInput:
    """Events and the cutoff(s) to ask at; ``user_ids`` limits the users (default: all active ones)."""

    events: pl.DataFrame
    cutoffs: datetime | Sequence[datetime]
    user_ids: Sequence[str] | None = None


def activity(events: pl.DataFrame) -> pl.DataFrame:
    """The users' own events: (user_id, ts, type, session_id, amount)."""
    for c in ("ts", "type", "user_id"):
        if c not in events.columns:
            raise DataError(f"events need column {c!r}", field=c)
    cols = [pl.col("user_id").cast(pl.Utf8), pl.col("ts").dt.cast_time_unit("us"), pl.col("type").cast(pl.Utf8)]
    cols.append(pl.col("session_id").cast(pl.Utf8) if "session_id" in events.columns
                else pl.lit(None, pl.Utf8).alias("session_id"))
    cols.append(pl.col("amount").cast(pl.Float64) if "amount" in events.columns
                else pl.lit(None, pl.Float64).alias("amount"))
    return (events.filter(pl.col("user_id").is_not_null() & ~pl.col("type").is_in(list(PASSIVE_TYPES)))
            .select(cols))


def churn_rows(events: pl.DataFrame, cutoffs: datetime | Sequence[datetime], *, active_days: float = 28,
               user_ids: Sequence[str] | None = None) -> pl.DataFrame:
    """(user_id, cutoff) of every user with activity in [cutoff - active_days, cutoff), per cutoff.

    Named ``user_ids`` are kept even when quiet (they still need an event before the cutoff).
    """
    act = activity(events)
    parts = []
    for c in as_cutoffs(cutoffs):
        if user_ids is None:
            lo = c - timedelta(days=active_days)
            u = act.filter((pl.col("ts") >= lo) & (pl.col("ts") < c))["user_id"].unique().sort()
        else:
            u = pl.Series("user_id", [str(x) for x in user_ids], dtype=pl.Utf8)
        parts.append(pl.DataFrame({"user_id": u, "cutoff": pl.Series([c] * u.len(), dtype=pl.Datetime("us"))}))
    return pl.concat(parts)


def churn_labels(events: pl.DataFrame, rows: pl.DataFrame, horizon_days: float) -> np.ndarray:
    """1 where the row's user has no activity in (cutoff, cutoff + horizon], else 0.

    Refuses when the events stop before a row's window closes (the label would be unknown).
    """
    if rows.height == 0:
        return np.zeros(0, dtype=np.int64)
    act = activity(events)
    last_seen = events["ts"].max()
    need = rows["cutoff"].max() + timedelta(days=horizon_days)
    # An hour of slack: a store's last event rarely falls exactly on the horizon's end.
    if last_seen is None or last_seen < need - timedelta(hours=1):
        raise DataError(f"churn targets need events up to {need:%Y-%m-%d %H:%M} (cutoff + {horizon_days:g} days); "
                        f"the events end at {last_seen}", field="cutoff", value=str(rows["cutoff"].max()))
    left = rows.select("user_id", pl.col("cutoff").dt.cast_time_unit("us")).with_row_index("_i")
    hits = (left.join(act.select("user_id", "ts"), on="user_id", how="inner")
            .filter((pl.col("ts") > pl.col("cutoff"))
                    & (pl.col("ts") <= pl.col("cutoff") + pl.duration(seconds=int(horizon_days * DAY_S))))
            ["_i"].unique().to_numpy())
    y = np.ones(rows.height, dtype=np.int64)
    y[hits] = 0
    return y


RFM_FEATURES: tuple[str, ...] = (
    "recency_days", "log_recency", "events_7d", "events_28d", "events_all", "active_days_28d", "sessions_28d",
    "orders_28d", "orders_all", "spend_28d", "tenure_days",
)


def rfm_features(events: pl.DataFrame, rows: pl.DataFrame) -> np.ndarray:
    """(n, len(RFM_FEATURES)) recency / frequency / monetary / tenure of each row's user before its cutoff."""
    act = activity(events)
    left = rows.select("user_id", pl.col("cutoff").dt.cast_time_unit("us")).with_row_index("_i")
    pairs = left.join(act, on="user_id", how="inner").filter(pl.col("ts") < pl.col("cutoff"))
    age_d = (pl.col("cutoff") - pl.col("ts")).dt.total_seconds() / DAY_S
    in7, in28 = age_d <= 7, age_d <= 28
    agg = pairs.group_by("_i").agg(
        age_d.min().alias("recency_days"),
        in7.sum().alias("events_7d"),
        in28.sum().alias("events_28d"),
        pl.len().alias("events_all"),
        pl.col("ts").filter(in28).dt.date().n_unique().alias("active_days_28d"),
        pl.col("session_id").filter(in28).drop_nulls().n_unique().alias("sessions_28d"),
        ((pl.col("type") == "order") & in28).sum().alias("orders_28d"),
        (pl.col("type") == "order").sum().alias("orders_all"),
        pl.col("amount").filter((pl.col("type") == "order") & in28).sum().alias("spend_28d"),
        age_d.max().alias("tenure_days"),
    )
    full = left.select("_i").join(agg, on="_i", how="left").sort("_i")
    full = full.with_columns(pl.col("recency_days").fill_null(365.0), pl.col("tenure_days").fill_null(0.0))
    full = full.with_columns(pl.col("recency_days").log1p().alias("log_recency")).fill_null(0)
    return full.select(RFM_FEATURES).to_numpy().astype(np.float64)


def dt_survival(model: FoundationModel, windows: UserWindows, horizon_days: float,
                hidden: np.ndarray | None = None) -> np.ndarray:
    """Zero-shot P(no event in (cutoff, cutoff + horizon] | none since the window's last event).

    From the pretrained next-event ``dt`` head: a distribution over log-scale gap buckets, read as a
    survival curve S (log-linear inside a bucket); the answer is S(elapsed + horizon) / S(elapsed).
    """
    h = torch.from_numpy(model.embeddings(windows.batch) if hidden is None else hidden).float()
    with torch.no_grad():
        logits = model.network.next_heads[_k("dt")](h)
    n_buckets = len(DT_EDGES) + 1
    probs = torch.softmax(logits[:, OFFSET:OFFSET + n_buckets], dim=1).numpy().astype(np.float64)
    lo = np.concatenate([[0.0], np.asarray(DT_EDGES, dtype=np.float64)])
    hi = np.concatenate([np.asarray(DT_EDGES, dtype=np.float64), [365 * DAY_S]])

    def survival(x: np.ndarray) -> np.ndarray:
        # Share of each bucket above x, interpolated on log1p(seconds).
        frac_below = np.clip((np.log1p(x[:, None]) - np.log1p(lo[None, :]))
                             / (np.log1p(hi[None, :]) - np.log1p(lo[None, :])), 0.0, 1.0)
        return np.clip((probs * (1.0 - frac_below)).sum(axis=1), 1e-9, 1.0)

    elapsed = np.clip(windows.gap_s, 0.0, None)
    return np.clip(survival(elapsed + horizon_days * DAY_S) / survival(elapsed), 0.0, 1.0)


def sequence_features(model: FoundationModel, events: pl.DataFrame, rows: pl.DataFrame,
                      horizon_days: float) -> tuple[np.ndarray, np.ndarray]:
    """(embedding | log1p(gap days) | logit of zero-shot survival) per row, and the survival itself."""
    win = windows_for_rows(model, events, rows)
    hidden = model.embeddings(win.batch)
    surv = dt_survival(model, win, horizon_days, hidden=hidden)
    p = np.clip(surv, 1e-4, 1 - 1e-4)
    extra = np.stack([np.log1p(win.gap_s / DAY_S), np.log(p / (1 - p))], axis=1)
    return np.concatenate([hidden.astype(np.float64), extra], axis=1), surv


class ChurnRiskDetector(Detector):
    """Probability that a user is inactive over the next ``horizon_days`` (higher = more likely to leave).

    >>> det = ChurnRiskDetector(pretrained="models/seq", features="hybrid").fit(ChurnInput(events, t1))  # doctest: +SKIP
    >>> det.score_frame(ChurnInput(events, t2)).sort("churn_risk", descending=True).head(20)  # doctest: +SKIP
    """

    name = "churn_risk"
    supervised = False  # targets come from the events themselves: no labels needed

    def __init__(self, pretrained: str | None = None, features: str = "hybrid", head: str = "logistic",
                 horizon_days: float = 7.0, active_days: float = 28.0, seed: int = 7) -> None:
        self.pretrained = pretrained
        self.features = features
        self.head = head
        self.horizon_days = horizon_days
        self.active_days = active_days
        self.seed = seed

    # -- inputs ---------------------------------------------------------------------------------------
    def _validate(self) -> None:
        if self.features not in FEATURE_SETS:
            raise ModelError(f"unknown churn features {self.features!r} (choose from {', '.join(FEATURE_SETS)})",
                             field="features", value=self.features)
        if self.head not in HEADS:
            raise ModelError(f"unknown churn head {self.head!r} (choose from {', '.join(HEADS)})", field="head",
                             value=self.head)
        if not self.horizon_days > 0:
            raise ModelError(f"horizon_days must be positive, got {self.horizon_days}", field="horizon_days",
                             value=self.horizon_days)
        if self.features != "rfm" and not self.pretrained:
            raise ModelError(f"churn features {self.features!r} need a pretrained sequence model", field="pretrained")

    @staticmethod
    def _input(X: Any) -> ChurnInput:
        if not isinstance(X, ChurnInput):
            raise DataError(f"churn_risk takes a ChurnInput(events, cutoffs), got {type(X).__name__}", field="X")
        if not isinstance(X.events, pl.DataFrame):
            raise DataError("ChurnInput.events must be a Polars frame of store events", field="events")
        return X

    def rows(self, X: ChurnInput) -> pl.DataFrame:
        """The (user_id, cutoff) rows ``score(X)`` answers, in order."""
        X = self._input(X)
        return churn_rows(X.events, X.cutoffs, active_days=self.active_days, user_ids=X.user_ids)

    def _matrix(self, X: ChurnInput, rows: pl.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
        parts, surv = [], None
        if self.features in ("rfm", "hybrid"):
            parts.append(rfm_features(X.events, rows))
        if self.features in ("sequence", "hybrid", "dt_head"):
            seq, surv = sequence_features(self.model_, X.events, rows, self.horizon_days)
            parts.append(seq)
        return np.concatenate(parts, axis=1), surv

    # -- the contract ---------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None) -> Self:
        """Learn from users at the cutoffs of ``X``; targets from the events after them unless ``y``."""
        self._validate()
        X = self._input(X)
        self.model_ = FoundationModel.load(self.pretrained) if self.pretrained and self.features != "rfm" else None
        rows = self.rows(X)
        if rows.height == 0:
            raise DataError("no user was active before the fit cutoffs", field="cutoff")
        target = churn_labels(X.events, rows, self.horizon_days) if y is None else np.asarray(y).astype(np.int64)
        if target.shape != (rows.height,):
            raise DataError(f"y has {target.shape} entries for {rows.height} (user, cutoff) rows", field="y")
        self.base_rate_ = float(target.mean())
        self.n_fit_rows_ = int(rows.height)
        if self.features == "dt_head":
            self.head_ = None
            return self
        if np.unique(target).size < 2:
            raise DataError("every fit user churned or none did: pick other cutoffs or a longer window", field="y")
        feats, _ = self._matrix(X, rows)
        self.head_ = self._make_head().fit(feats, target)
        return self

    def _make_head(self) -> Any:
        if self.head == "lightgbm":
            from lightgbm import LGBMClassifier

            return LGBMClassifier(n_estimators=300, learning_rate=0.03, num_leaves=15, min_child_samples=20,
                                  subsample=0.8, subsample_freq=1, colsample_bytree=0.8, reg_lambda=1.0,
                                  random_state=self.seed, verbose=-1, n_jobs=1)
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))

    def score(self, X: Any) -> np.ndarray:
        """Churn probability of each row of ``rows(X)`` (only events before each cutoff are read)."""
        self.check_fitted()
        X = self._input(X)
        rows = self.rows(X)
        if rows.height == 0:
            return np.zeros(0)
        cut = max(as_cutoffs(X.cutoffs))
        events = ChurnInput(X.events.filter(pl.col("ts") < cut), X.cutoffs, X.user_ids)
        feats, surv = self._matrix(events, rows)
        if self.head_ is None:
            assert surv is not None
            return surv.astype(np.float64)
        return self.head_.predict_proba(feats)[:, 1].astype(np.float64)

    def score_frame(self, X: Any) -> pl.DataFrame:
        """(user_id, cutoff, churn_risk, last_active, days_since_active, events_28d), riskiest first."""
        X = self._input(X)
        rows = self.rows(X)
        risk = self.score(X)
        rfm = rfm_features(X.events.filter(pl.col("ts") < max(as_cutoffs(X.cutoffs))), rows)
        recency = rfm[:, RFM_FEATURES.index("recency_days")]
        return rows.with_columns(
            pl.Series("churn_risk", risk),
            pl.Series("days_since_active", recency),
            pl.Series("events_28d", rfm[:, RFM_FEATURES.index("events_28d")].astype(np.int64)),
        ).sort("churn_risk", descending=True)

    # -- persistence ----------------------------------------------------------------------------------
    def _save_state(self, folder: Path) -> None:
        if self.model_ is not None:
            self.model_.save(folder / MODEL_DIR)
        save_state(folder, {"head_": self.head_, "base_rate_": self.base_rate_, "n_fit_rows_": self.n_fit_rows_})

    def _load_state(self, folder: Path) -> None:
        self.model_ = FoundationModel.load(folder / MODEL_DIR) if (folder / MODEL_DIR).exists() else None
        for k, v in load_state(folder).items():
            setattr(self, k, v)
