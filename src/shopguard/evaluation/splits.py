"""Time-ordered train / test splits with a label-delay gap (the Fraud Detection Handbook's protocol).

::

    |------ train window ------|--- delay ---|------ test window ------|
    train_start          train_end      test_start               test_end

- The model is trained at ``test_start``: it may use labels known by then (``labeled_at <
  test_start``), which is why the delay gap exists: fraud on the last training days is only confirmed
  (chargebacks, take-downs) some days later. Events in the gap are neither trained nor tested on.
- The last ``validation_fraction`` of the training window (by time) is the validation slice used for
  early stopping, calibration and choosing thresholds.
- Test events of entities (users, cards) already known to be fraudulent before the test *day* are
  removed: the team has blocked them, so catching them again proves nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shopguard.errors import DataError


class SplitConfig(BaseModel):
    """How to cut the store's time span. Days may be fractional; ``train_days=None`` = all history."""

    model_config = ConfigDict(extra="forbid")

    train_days: float | None = Field(None, gt=0, description="Training window length; None uses all earlier data.")
    delay_days: float = Field(7.0, ge=0, description="Label-delay gap between training and test.")
    test_days: float = Field(7.0, gt=0, description="Test window length.")
    train_start: datetime | None = Field(None, description="Start of training; default: placed so the test window "
                                                           "ends at the last event.")
    validation_fraction: float = Field(0.2, ge=0, lt=0.9, description="Late share of training used for validation.")

    @model_validator(mode="after")
    def _check(self) -> SplitConfig:
        if self.train_start is not None and self.train_days is None:
            raise ValueError("train_days is needed when train_start is given")
        return self


class TimeSplit(BaseModel):
    """Concrete split boundaries (half-open intervals: start <= ts < end)."""

    model_config = ConfigDict(extra="forbid")

    train_start: datetime
    train_end: datetime
    test_start: datetime
    test_end: datetime
    validation_start: datetime

    @property
    def label_cutoff(self) -> datetime:
        """Labels known strictly before this moment may be used for training."""
        return self.test_start

    def to_dict(self) -> dict[str, str]:
        return {k: v.isoformat() for k, v in self.model_dump().items()}


def make_split(first: datetime, last: datetime, config: SplitConfig | None = None) -> TimeSplit:
    """Place the windows inside the store's span ``[first, last]``; clear error when it does not fit."""
    cfg = config or SplitConfig()
    delay = timedelta(days=cfg.delay_days)
    test = timedelta(days=cfg.test_days)
    if cfg.train_start is not None:
        train_start = cfg.train_start
        train_end = train_start + timedelta(days=cfg.train_days or 0)
        test_start = train_end + delay
        test_end = test_start + test
    else:
        # Whole days when the data allows, so per-day metrics see full days.
        end = last + timedelta(microseconds=1)
        test_end = end
        test_start = test_end - test
        train_end = test_start - delay
        train_start = first if cfg.train_days is None else max(first, train_end - timedelta(days=cfg.train_days))
    if train_end <= train_start or train_end <= first or test_start > last:
        span = (last - first).total_seconds() / 86400
        raise DataError(
            f"the store spans {span:.1f} days, too short for a {cfg.train_days or 'any'}-day training window, "
            f"{cfg.delay_days}-day delay and {cfg.test_days}-day test window: lower --delay-days/--test-days",
            field="split", value=round(span, 2),
        )
    val_start = train_end - (train_end - train_start) * cfg.validation_fraction
    return TimeSplit(train_start=train_start, train_end=train_end, test_start=test_start, test_end=test_end,
                     validation_start=val_start)


def known_fraud_entities(labels: pl.DataFrame, events: pl.DataFrame | None = None,
                         entity_col: str = "user_id") -> pl.DataFrame:
    """When each entity first became known as fraudulent: ``[entity_col, known_at]``.

    Counts the entity's own positive labels (``entity_kind`` = the column without ``_id``, e.g. user)
    and, when ``events`` (``event_id, entity_col``) is given, positive event labels of its events.
    """
    kind = entity_col.removesuffix("_id")
    pos = labels.filter(pl.col("label") == 1)
    own = pos.filter(pl.col("entity_kind") == kind).select(
        pl.col("entity_id").alias(entity_col), pl.col("labeled_at").alias("known_at"))
    parts = [own]
    if events is not None and events.height:
        via = (
            pos.filter(pl.col("entity_kind") == "event")
            .select(pl.col("entity_id").alias("event_id"), pl.col("labeled_at").alias("known_at"))
            .join(events.select("event_id", entity_col), on="event_id", how="inner")
            .select(entity_col, "known_at")
        )
        parts.append(via)
    out = pl.concat([p.with_columns(pl.col(entity_col).cast(pl.Utf8), pl.col("known_at").cast(pl.Datetime("us")))
                     for p in parts])
    return out.drop_nulls(entity_col).group_by(entity_col).agg(pl.col("known_at").min())


def remove_known_entities(test: pl.DataFrame, known: pl.DataFrame, entity_cols: Sequence[str] = ("user_id",)) -> pl.DataFrame:
    """Drop test rows whose entity was known fraudulent before the start of the row's day.

    ``known`` has one column per entity in ``entity_cols`` (or a subset) plus ``known_at``.
    """
    out = test.with_columns(pl.col("ts").dt.truncate("1d").alias("_day"))
    for col in entity_cols:
        if col not in out.columns or col not in known.columns:
            continue
        k = known.select(pl.col(col).cast(pl.Utf8), pl.col("known_at"))
        out = (
            out.with_columns(pl.col(col).cast(pl.Utf8).alias("_ent"))
            .join(k.rename({col: "_ent"}), on="_ent", how="left", maintain_order="left")
            .filter(pl.col("known_at").is_null() | (pl.col("known_at") >= pl.col("_day")))
            .drop("_ent", "known_at")
        )
    return out.drop("_day")
