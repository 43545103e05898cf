"""Users' histories as of a moment: the window ending at each user's last event before a cutoff.

User-level questions ("what will they look at next?", "will they go quiet?") are asked at a cutoff
*t*: only events strictly before *t* may be read, and the answer lies in what happens after *t*.
``user_windows(model, events, cutoffs)`` tokenizes the events once (tokens depend only on earlier
events, so later events in the frame change nothing) and returns, for every cutoff, one window per
user ending at their last event before it, plus how long ago that event was (the gap the window itself
cannot see: the model's last hidden state does not know how much time passed since).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import polars as pl

from shopguard.errors import DataError
from shopguard.models.sequence.network import FoundationModel
from shopguard.models.sequence.sequences import SequenceBatch, gather_windows
from shopguard.models.sequence.tokenizer import TokenizedEvents

ANON_PREFIX = "evt:"  # the tokenizer's user key of events without a user_id


@dataclass
class UserWindows:
    """One row per (cutoff, user): the window ending at the user's last event before the cutoff."""

    user_ids: np.ndarray  # (n,) object
    cutoffs: np.ndarray  # (n,) datetime64[us]
    last_ts: np.ndarray  # (n,) datetime64[us], the window's last event
    gap_s: np.ndarray  # (n,) float64, seconds from that event to the cutoff
    batch: SequenceBatch

    def __len__(self) -> int:
        return int(self.user_ids.size)

    def frame(self) -> pl.DataFrame:
        """(user_id, cutoff, last_ts, gap_s) of every row, in row order."""
        return pl.DataFrame({"user_id": self.user_ids.astype(str), "cutoff": self.cutoffs,
                             "last_ts": self.last_ts, "gap_s": self.gap_s})


def as_cutoffs(cutoffs: datetime | Sequence[datetime]) -> list[datetime]:
    """One cutoff or several, as a list of naive datetimes; an empty list is refused."""
    out = [cutoffs] if isinstance(cutoffs, datetime) else list(cutoffs)
    if not out:
        raise DataError("at least one cutoff is needed", field="cutoff")
    for c in out:
        if not isinstance(c, datetime):
            raise DataError(f"cutoff must be a datetime, got {type(c).__name__}", field="cutoff", value=c)
    # Aware cutoffs are converted to naive UTC, the store's clock.
    return [c if c.tzinfo is None else c.astimezone(UTC).replace(tzinfo=None) for c in out]


def last_rows(te: TokenizedEvents, cutoff: datetime) -> np.ndarray:
    """Row of each user's last event strictly before ``cutoff`` (rows of users with none are absent)."""
    before = te.ts < np.datetime64(cutoff, "us")
    idx = np.flatnonzero(before)
    if idx.size == 0:
        return idx
    # Rows are sorted by (user, ts): a masked row is its user's last when the next masked row is
    # another user's (or there is none).
    nxt_same_user = np.zeros(idx.size, dtype=bool)
    nxt_same_user[:-1] = te.user_start[idx[1:]] == te.user_start[idx[:-1]]
    rows = idx[~nxt_same_user]
    real = np.array([not str(u).startswith(ANON_PREFIX) for u in te.user_keys[rows]], dtype=bool)
    return rows[real]


def user_windows(model: FoundationModel, events: pl.DataFrame, cutoffs: datetime | Sequence[datetime],
                 user_ids: Sequence[str] | None = None, *, tokenized: TokenizedEvents | None = None) -> UserWindows:
    """Windows of every user (or of ``user_ids``, in that order per cutoff) at each cutoff.

    Users without an event before a cutoff are left out of that cutoff (or, when named in
    ``user_ids``, raise: there is no history to ask about).
    """
    cuts = as_cutoffs(cutoffs)
    te = tokenized if tokenized is not None else model.tokenizer.transform(events)
    all_rows, all_cuts = [], []
    for c in cuts:
        rows = last_rows(te, c)
        if user_ids is not None:
            pos = {str(u): r for u, r in zip(te.user_keys[rows], rows, strict=True)}
            missing = [u for u in user_ids if str(u) not in pos]
            if missing:
                raise DataError(f"user {missing[0]!r} has no events before {c:%Y-%m-%d %H:%M}", field="user_id",
                                value=missing[0])
            rows = np.array([pos[str(u)] for u in user_ids], dtype=np.int64)
        all_rows.append(rows)
        all_cuts.append(np.full(rows.size, np.datetime64(c, "us")))
    return _windows(model, te, np.concatenate(all_rows), np.concatenate(all_cuts))


def windows_for_rows(model: FoundationModel, events: pl.DataFrame, rows: pl.DataFrame,
                     *, tokenized: TokenizedEvents | None = None) -> UserWindows:
    """Windows for given (user_id, cutoff) rows, in the rows' order; every user needs a prior event."""
    for c in ("user_id", "cutoff"):
        if c not in rows.columns:
            raise DataError(f"rows need column {c!r}", field=c)
    te = tokenized if tokenized is not None else model.tokenizer.transform(events)
    users = rows["user_id"].cast(pl.Utf8).to_list()
    cuts = rows["cutoff"].dt.cast_time_unit("us").to_numpy()
    out = np.empty(len(users), dtype=np.int64)
    for c in np.unique(cuts):
        last = last_rows(te, c.astype(datetime))
        pos = {str(u): r for u, r in zip(te.user_keys[last], last, strict=True)}
        for i in np.flatnonzero(cuts == c):
            if users[i] not in pos:
                raise DataError(f"user {users[i]!r} has no events before {c}", field="user_id", value=users[i])
            out[i] = pos[users[i]]
    return _windows(model, te, out, cuts.astype("datetime64[us]"))


def _windows(model: FoundationModel, te: TokenizedEvents, rows: np.ndarray, cut_arr: np.ndarray) -> UserWindows:
    rows = rows.astype(np.int64)
    batch = gather_windows(te, rows, model.max_len)
    last_ts = te.ts[rows].astype("datetime64[us]")
    gap = (cut_arr.astype("datetime64[us]") - last_ts).astype("timedelta64[us]").astype(np.float64) / 1e6
    return UserWindows(te.user_keys[rows].astype(object), cut_arr.astype("datetime64[us]"), last_ts, gap, batch)
