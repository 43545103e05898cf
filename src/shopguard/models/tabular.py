"""Turning a feature frame into the matrices tabular detectors learn from.

Every tabular detector takes a Polars (or pandas) frame with one row per event: identifier columns
(``event_id``, ``ts``, ``user_id``) plus feature columns. This module decides which columns are
features (numeric or categorical), checks that a frame at scoring time carries the columns seen at fit
time, and encodes categories in a way each learner can use:

- LightGBM gets integer codes (its native categorical handling; unseen categories become missing);
- anomaly detectors get the category's training frequency, so a rare merchant or device type counts
  as unusual, and missing numbers are filled with the training median.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from shopguard.errors import ModelError, ValidationFailed

# Columns that identify an event; never features.
ID_COLUMNS: tuple[str, ...] = ("event_id", "ts", "user_id", "session_id", "order_id")
_STRING_TYPES = (pl.Utf8, pl.Categorical, pl.Enum)


def as_polars(X: Any) -> pl.DataFrame:
    """Accept a Polars or pandas frame (or a dict of columns); return Polars."""
    if isinstance(X, pl.DataFrame):
        return X
    if isinstance(X, dict):
        return pl.DataFrame(X)
    try:
        import pandas as pd

        if isinstance(X, pd.DataFrame):
            return pl.from_pandas(X)
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    raise ValidationFailed(
        f"detectors take a feature frame (Polars or pandas), got {type(X).__name__}", field="X", value=type(X).__name__
    )


def _is_string(dtype: pl.DataType) -> bool:
    return any(dtype == t or isinstance(dtype, t) for t in _STRING_TYPES)  # type: ignore[arg-type]


def infer_columns(
    X: pl.DataFrame, features: Sequence[str] | None = None, categorical: Sequence[str] | None = None
) -> tuple[list[str], list[str]]:
    """(numeric, categorical) feature columns of ``X``.

    With ``features`` given, those columns are used (string columns among them are categorical);
    otherwise the feature engine's own description (``shopguard.features.feature_columns``) is used
    when available, else every numeric/boolean/string column that is not an identifier.
    """
    if features is None:
        features, categorical = _from_feature_engine(X, categorical)
    missing = [c for c in features if c not in X.columns]
    if missing:
        raise ModelError(f"feature columns missing from the frame: {missing[:10]}", field=missing[0])
    cat = set(categorical or ()) | {c for c in features if _is_string(X.schema[c])}
    numeric = [c for c in features if c not in cat]
    bad = [c for c in numeric if not (X.schema[c].is_numeric() or X.schema[c] == pl.Boolean)]
    if bad:
        raise ModelError(
            f"feature column {bad[0]!r} has type {X.schema[bad[0]]}, expected a number, boolean or category",
            field=bad[0],
        )
    return numeric, [c for c in features if c in cat]


def _from_feature_engine(X: pl.DataFrame, categorical: Sequence[str] | None) -> tuple[list[str], list[str] | None]:
    try:
        from shopguard.features import feature_columns  # type: ignore[attr-defined]

        fs = feature_columns(X)
        names = list(getattr(fs, "columns", None) or getattr(fs, "features", None) or [])
        cats = list(getattr(fs, "categorical", None) or [])
        if names:
            return names, list(categorical or cats)
    except (ImportError, AttributeError, TypeError):
        pass
    names = [
        c for c, t in X.schema.items()
        if c not in ID_COLUMNS and (t.is_numeric() or t == pl.Boolean or _is_string(t))
    ]
    if not names:
        raise ModelError("the frame has no feature columns (numbers, booleans or categories)", field="X")
    return names, list(categorical) if categorical is not None else None


def check_columns(X: pl.DataFrame, expected: Sequence[str], owner: str) -> None:
    present = set(X.columns)
    missing = [c for c in expected if c not in present]
    if missing:
        raise ModelError(
            f"{owner} was fitted with feature columns the frame lacks: {missing[:10]}"
            + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""),
            field=missing[0],
        )


def _positions(columns: list[str], wanted: list[str]) -> list[int]:
    """Position of each wanted column in a frame's column list."""
    index = {c: i for i, c in enumerate(columns)}
    missing = [c for c in wanted if c not in index]
    if missing:
        raise ModelError(f"feature columns missing from the frame: {missing[:10]}", field=missing[0])
    return [index[c] for c in wanted]


# Frames this small are encoded row by row (faster than vectorised Polars for the service's single events).
SMALL_FRAME = 16


@dataclass
class TabularEncoder:
    """Learned column layout and category encodings; fitted once, applied at every score."""

    numeric: list[str]
    categorical: list[str]
    vocab: dict[str, dict[str, int]] = field(default_factory=dict)
    freq: dict[str, dict[str, float]] = field(default_factory=dict)
    medians: dict[str, float] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return self.numeric + self.categorical

    @classmethod
    def fit(cls, X: pl.DataFrame, numeric: list[str], categorical: list[str], max_categories: int = 1000) -> TabularEncoder:
        enc = cls(list(numeric), list(categorical))
        for c in categorical:
            counts = X.select(pl.col(c).cast(pl.Utf8)).to_series().drop_nulls().value_counts(sort=True)
            values = counts[:, 0].to_list()
            n = max(int(counts[:, 1].sum()), 1)
            # Most frequent categories keep their own code; the long tail shares "missing".
            enc.vocab[c] = {v: i for i, v in enumerate(values[:max_categories])}
            enc.freq[c] = {v: k / n for v, k in zip(values, counts[:, 1].to_list(), strict=True)}
        for c in numeric:
            med = X.select(pl.col(c).cast(pl.Float64).median()).item()
            enc.medians[c] = float(med) if med is not None and np.isfinite(med) else 0.0
        return enc

    def numeric_matrix(self, X: pl.DataFrame) -> np.ndarray:
        if not self.numeric:
            return np.zeros((X.height, 0))
        if X.height <= SMALL_FRAME:
            # One event at a time (the service): plain rows beat Polars' per-expression overhead.
            # Index plain rows by position: X.select(...) is a lazy collect costing 1-3 ms per call.
            pos = _positions(X.columns, self.numeric)
            m = np.array([[np.nan if row[k] is None else row[k] for k in pos] for row in X.rows()],
                         dtype=np.float64).reshape(X.height, len(self.numeric))
            m[~np.isfinite(m)] = np.nan
            return m
        m = X.select([pl.col(c).cast(pl.Float64) for c in self.numeric]).to_numpy().astype(np.float64, copy=True)
        m[~np.isfinite(m)] = np.nan
        return m

    def codes(self, X: pl.DataFrame) -> np.ndarray:
        """Integer category codes as floats (unseen or missing -> NaN), for LightGBM."""
        out = np.full((X.height, len(self.categorical)), np.nan)
        if X.height <= SMALL_FRAME:
            pos = _positions(X.columns, self.categorical)
            for i, row in enumerate(X.rows()):
                for j, c in enumerate(self.categorical):
                    v = row[pos[j]]
                    code = self.vocab[c].get(None if v is None else str(v))
                    out[i, j] = np.nan if code is None else code
            return out
        for j, c in enumerate(self.categorical):
            mapping = self.vocab[c]
            s = X.get_column(c).cast(pl.Utf8).replace_strict(mapping, default=None, return_dtype=pl.Float64)
            out[:, j] = s.to_numpy()
        return out

    def frequencies(self, X: pl.DataFrame) -> np.ndarray:
        """Training frequency of each row's category (0 for unseen), for anomaly detectors."""
        out = np.zeros((X.height, len(self.categorical)))
        for j, c in enumerate(self.categorical):
            s = X.get_column(c).cast(pl.Utf8).replace_strict(self.freq[c], default=0.0, return_dtype=pl.Float64)
            out[:, j] = s.fill_null(0.0).to_numpy()
        return out

    def lgb_matrix(self, X: pl.DataFrame) -> np.ndarray:
        return np.hstack([self.numeric_matrix(X), self.codes(X)])

    def encode_rows(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """``lgb_matrix`` of plain rows (dicts holding every feature column), without building a frame.

        The service's single events arrive as dicts; a frame costs more than the trees. Same encoding:
        numbers (booleans as 0/1, None, NaN and inf as NaN) then category codes (unseen or None as NaN).
        A row lacking a column raises ``KeyError``.
        """
        n_num = len(self.numeric)
        out = np.empty((len(rows), n_num + len(self.categorical)), dtype=np.float64)
        if n_num:
            take = operator.itemgetter(*self.numeric)  # every column in one C call
            # dtype=float64 turns None into NaN (as the frame path's null does).
            out[:, :n_num] = np.array([take(r) for r in rows], dtype=np.float64).reshape(len(rows), n_num)
            num = out[:, :n_num]
            bad = ~np.isfinite(num)
            if bad.any():
                num[bad] = np.nan
        for j, c in enumerate(self.categorical):
            vocab = self.vocab[c]
            col = n_num + j
            for i, r in enumerate(rows):
                v = r[c]
                code = vocab.get(None if v is None else str(v))
                out[i, col] = np.nan if code is None else code
        return out

    def dense_matrix(self, X: pl.DataFrame) -> np.ndarray:
        """Numbers with missing values filled by the training median, then category frequencies."""
        m = self.numeric_matrix(X)
        for j, c in enumerate(self.numeric):
            col = m[:, j]
            col[np.isnan(col)] = self.medians[c]
        return np.hstack([m, self.frequencies(X)])


def lgb_input(detector: Any, X: Any) -> np.ndarray:
    """LightGBM input for a fitted tree detector (``encoder_``, ``feature_names_``): columns checked."""
    detector.check_fitted()
    frame = as_polars(X)
    check_columns(frame, detector.feature_names_, type(detector).__name__)
    return detector.encoder_.lgb_matrix(frame)


def labels_array(y: Any, n: int) -> np.ndarray:
    """Binary labels as an int array of length ``n``; clear errors otherwise."""
    if y is None:
        raise ValidationFailed("this detector is supervised: fit(X, y) needs labels", field="y")
    if isinstance(y, pl.Series | pl.DataFrame):
        y = y.to_numpy()
    arr = np.asarray(y).reshape(-1)
    if arr.shape[0] != n:
        raise ValidationFailed(f"y has {arr.shape[0]} labels for {n} rows", field="y", value=arr.shape[0])
    try:
        numeric = arr.astype(np.float64)
    except (TypeError, ValueError):
        raise ValidationFailed("labels must be 0 or 1", field="y") from None
    if not np.isin(numeric, (0.0, 1.0)).all():
        raise ValidationFailed("labels must be 0 or 1 (no missing values)", field="y")
    return arr.astype(np.int64)


def time_order(X: pl.DataFrame) -> np.ndarray:
    """Row order by ``ts`` when the frame has it (stable), else the given order."""
    if "ts" in X.columns:
        return np.argsort(X.get_column("ts").to_numpy(), kind="stable")
    return np.arange(X.height)


def robust_deviation(m: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """|x - center| / scale per column; the generic per-feature 'how unusual' used for explanations."""
    return np.abs(m - center) / scale
