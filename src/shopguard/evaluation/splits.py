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
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shopguard.errors import DataError


class SplitConfig(BaseModel):
    """How to cut the store's time span. Days may be fractional; ``train_days=None`` = all history."""

    model_config = ConfigDict(extra="forbid")

    train_days: float | None = Field(None, gt=0, description="Training window length; None uses all earlier data.")
    delay_days: float | None = Field(None, ge=0, description="Label-delay gap between training and test; None: "
                                                             "from the labels (``choose_split``), 7 in make_split.")
    test_days: float | None = Field(None, gt=0, description="Test window length; None: about the last quarter of "
                                                            "the labelled events (``choose_split``), 7 in make_split.")
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
    delay_days = 7.0 if cfg.delay_days is None else cfg.delay_days
    test_days = 7.0 if cfg.test_days is None else cfg.test_days
    delay = timedelta(days=delay_days)
    test = timedelta(days=test_days)
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
            f"{delay_days}-day delay and {test_days}-day test window: lower --delay-days/--test-days, or leave "
            "them out to let train choose from the labels",
            field="split", value=round(span, 2),
        )
    val_start = train_end - (train_end - train_start) * cfg.validation_fraction
    return TimeSplit(train_start=train_start, train_end=train_end, test_start=test_start, test_end=test_end,
                     validation_start=val_start)


#: Fewest positives a train or test window needs before its numbers mean anything.
MIN_POSITIVES = 30


class SplitChoice(BaseModel):
    """A split chosen from the data (``choose_split``), with the counts and the reasons behind it."""

    model_config = ConfigDict(extra="forbid")

    split: TimeSplit
    delay_days: float
    test_days: float
    train_positives: int
    train_labelled: int
    test_positives: int
    test_labelled: int
    reasons: list[str]
    too_few: bool = Field(False, description="Fewer than MIN_POSITIVES positives in train or test.")

    def to_dict(self) -> dict[str, Any]:
        return {**self.model_dump(mode="json", exclude={"split"}), "split": self.split.to_dict()}


def _floor(t: datetime, span: timedelta) -> datetime:
    """Round a boundary down to whole days (long logs), hours (days-long) or minutes (hours-long)."""
    if span >= timedelta(days=28):
        return t.replace(hour=0, minute=0, second=0, microsecond=0)
    if span >= timedelta(days=2):
        return t.replace(minute=0, second=0, microsecond=0)
    return t.replace(second=0, microsecond=0)


def _human(td: timedelta) -> str:
    s = td.total_seconds()
    if s >= 86400:
        return f"{s / 86400:.1f} days"
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 60:.0f} min"


def choose_split(first: datetime, last: datetime, targets: pl.DataFrame, config: SplitConfig | None = None,
                 *, test_share: float = 0.25, min_positives: int = MIN_POSITIVES) -> SplitChoice:
    """Place the windows from the data when ``config`` leaves ``delay_days`` / ``test_days`` open.

    ``targets``: one row per event with ``ts, label, labeled, known_at`` (``features.targets.event_targets``
    with ``with_times=True``). The label delay is the 90th percentile of how long fraud labels took to
    become known (``known_at - ts``), capped at a fifth of the span; the test window holds about the
    last ``test_share`` of the labelled events, moved earlier or later (shares 0.1 .. 0.5) until train
    (labels known at test start) and test both hold ``min_positives`` positives where the data allows.
    Works for logs spanning minutes to years: boundaries round to days, hours or minutes by span.
    """
    cfg = config or SplitConfig()
    span = last - first
    end = last + timedelta(microseconds=1)
    reasons: list[str] = []
    lab = targets.filter(pl.col("labeled"))
    pos = lab.filter(pl.col("label") == 1)
    if cfg.delay_days is not None:
        delay = timedelta(days=cfg.delay_days)
        reasons.append(f"label delay {_human(delay)}: as asked (--delay-days)")
    else:
        lags = pos.filter(pl.col("known_at").is_not_null()).select((pl.col("known_at") - pl.col("ts")).alias("d"))
        if lags.height == 0:
            delay = timedelta(0)
            reasons.append("label delay 0: no fraud label says when it became known")
        else:
            q90 = lags["d"].quantile(0.9, "higher")
            q90 = max(q90, timedelta(0)) if q90 is not None else timedelta(0)
            cap = span / 5
            delay = min(q90, cap)
            reasons.append(f"label delay {_human(delay)}: 90% of fraud labels were known within {_human(q90)} of "
                           f"the event" + (f" (capped at a fifth of the {_human(span)} span)" if q90 > cap else ""))

    def counts(test_start: datetime) -> tuple[int, int, int, int]:
        train_end = test_start - delay
        in_train = lab.filter((pl.col("ts") < train_end)
                              & (pl.col("known_at").is_null() | (pl.col("known_at") < test_start)))
        in_test = lab.filter(pl.col("ts") >= test_start)
        return (int(in_train["label"].sum()), in_train.height, int(in_test["label"].sum()), in_test.height)

    def fits(test_start: datetime) -> bool:
        return test_start - delay > first and test_start <= last

    if cfg.test_days is not None:
        test_start = end - timedelta(days=cfg.test_days)
        reasons.append(f"test window {_human(end - test_start)}: as asked (--test-days)")
    else:
        basis = lab if lab.height else targets
        what = "labelled events" if lab.height else "events"
        ts_sorted = basis["ts"].sort()
        best: tuple[int, datetime, float] | None = None
        chosen = None
        for share in (test_share, 0.3, 0.35, 0.4, 0.2, 0.45, 0.5, 0.15, 0.1):
            q = ts_sorted[min(len(ts_sorted) - 1, int(len(ts_sorted) * (1 - share)))] if len(ts_sorted) else last
            t0 = _floor(q, span)
            if not fits(t0):
                t0 = q
            if not fits(t0):
                continue
            tr_pos, _tr_n, te_pos, _te_n = counts(t0)
            if pos.height == 0 or (tr_pos >= min_positives and te_pos >= min_positives):
                chosen = (t0, share)
                break
            score = min(tr_pos, te_pos)
            if best is None or score > best[0]:
                best = (score, t0, share)
        if chosen is None and best is not None:
            chosen = (best[1], best[2])
        if chosen is None:
            raise DataError(
                f"the store spans {_human(span)}: too short to place a test window after a {_human(delay)} label "
                f"delay; pass --delay-days and --test-days that fit", field="split", value=span.total_seconds() / 86400)
        test_start, share = chosen
        reasons.append(f"test window from {test_start:%Y-%m-%d %H:%M}: about the last {share:.0%} of the {what}")
    train_end = test_start - delay
    train_start = first if cfg.train_days is None else max(first, train_end - timedelta(days=cfg.train_days))
    if train_end <= train_start or test_start > last:
        raise DataError(f"the store spans {_human(span)}, too short for a {_human(delay)} label delay and a "
                        f"{_human(end - test_start)} test window", field="split", value=span.total_seconds() / 86400)
    tr_pos, tr_n, te_pos, te_n = counts(test_start)
    val_start = train_end - (train_end - train_start) * cfg.validation_fraction
    split = TimeSplit(train_start=train_start, train_end=train_end, test_start=test_start, test_end=end,
                      validation_start=val_start)
    too_few = pos.height > 0 and (tr_pos < min_positives or te_pos < min_positives)
    return SplitChoice(split=split, delay_days=delay.total_seconds() / 86400,
                       test_days=(end - test_start).total_seconds() / 86400, train_positives=tr_pos,
                       train_labelled=tr_n, test_positives=te_pos, test_labelled=te_n, reasons=reasons,
                       too_few=too_few)


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
