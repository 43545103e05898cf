"""Turning what callers pass (lists, arrays, Polars/pandas frames or series) into texts and labels."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from shopguard.errors import DataError, ValidationFailed
from shopguard.models.text.encoders import check_texts
from shopguard.models.text.language import detect_language


def as_texts(X: Any, column: str = "text") -> tuple[list[str], list[str]]:
    """Texts and their languages from a sequence of strings or a frame with a ``text`` column.

    A frame's ``language`` column is used where it holds ``en``/``zh``; other rows are detected.
    """
    langs: list[str | None] | None = None
    if isinstance(X, pl.DataFrame) or _is_pandas_frame(X):
        frame = X if isinstance(X, pl.DataFrame) else pl.from_pandas(X)
        if column not in frame.columns:
            raise ValidationFailed(f"{column}: frame has no {column!r} column (columns: {frame.columns})",
                                   field=column)
        texts = check_texts(frame[column].cast(pl.Utf8).to_list(), column)
        if "language" in frame.columns:
            langs = frame["language"].cast(pl.Utf8).to_list()
    elif isinstance(X, pl.Series):
        texts = check_texts(X.cast(pl.Utf8).to_list(), column)
    elif isinstance(X, np.ndarray):
        texts = check_texts(X.tolist(), column)
    else:
        if isinstance(X, str) or not hasattr(X, "__iter__"):
            raise ValidationFailed(f"{column}: expected a sequence of texts or a frame, got "
                                   f"{type(X).__name__}", field=column)
        texts = check_texts(list(X), column)
    given = langs or [None] * len(texts)
    languages = [g if g in ("en", "zh") else detect_language(t)
                 for t, g in zip(texts, given, strict=True)]
    return texts, languages


def as_labels(y: Any, n: int, X: Any = None, column: str = "label") -> np.ndarray:
    """0/1 labels as an int array of length ``n``; ``y=None`` takes the frame's ``label`` column."""
    if y is None:
        if isinstance(X, pl.DataFrame) and column in X.columns:
            y = X[column].to_numpy()
        elif _is_pandas_frame(X) and column in X.columns:
            y = X[column].to_numpy()
        else:
            raise DataError(f"y: labels are required (pass y or a frame with a {column!r} column)", field="y")
    arr = np.asarray(y)
    if arr.shape[0] != n:
        raise DataError(f"y: {arr.shape[0]} labels for {n} texts", field="y", value=arr.shape[0])
    if arr.dtype == bool:
        arr = arr.astype(int)
    try:
        arr = arr.astype(float)
    except (TypeError, ValueError) as exc:
        raise DataError("y: labels must be 0/1", field="y") from exc
    if np.isnan(arr).any() or not np.isin(arr, (0, 1)).all():
        raise DataError("y: labels must be 0/1", field="y", value=np.unique(arr)[:5].tolist())
    return arr.astype(int)


def _is_pandas_frame(X: Any) -> bool:
    return type(X).__name__ == "DataFrame" and hasattr(X, "iloc")
