"""Model inputs: one fixed-length window of a user's history per target event.

``build_sequences(events, target_event_ids, max_len, tokenizer)`` returns a ``SequenceBatch`` whose
row i is the window ending at target i (targets keep the order given). A window holds ``max_len``
events at most, the target last, *only events before the target* in (ts, event_id) order before it
(point-in-time by construction), right-aligned: ``[PAD.., BOS, e_1, ..., e_t]``. ``BOS`` marks that
the whole history fits; when it does not, slot 0 holds the event before the window instead. The
tensor length is therefore ``max_len + 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from shopguard.errors import DataError
from shopguard.models.sequence.tokenizer import BOS, FIELDS, PAD, EventTokenizer, TokenizedEvents


@dataclass
class SequenceBatch:
    """Windows of field tokens, one per target event.

    ``tokens``: (B, L, F) int64; ``dt``: (B, L) float32, log1p(seconds since previous event);
    ``event_ids``: (B,) target ids in the order asked; ``ts``: (B,) target times (for time splits).
    """

    tokens: np.ndarray
    dt: np.ndarray
    event_ids: np.ndarray
    ts: np.ndarray

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def fields(self) -> tuple[str, ...]:
        return FIELDS

    def subset(self, idx: np.ndarray | Sequence[int]) -> SequenceBatch:
        idx = np.asarray(idx)
        return SequenceBatch(self.tokens[idx], self.dt[idx], self.event_ids[idx], self.ts[idx])


def gather_windows(te: TokenizedEvents, rows: np.ndarray, max_len: int) -> SequenceBatch:
    """Windows ending at the given rows of tokenized events (rows index the sorted order)."""
    rows = np.asarray(rows, dtype=np.int64)
    length = max_len + 1
    idx = rows[:, None] - (length - 1) + np.arange(length)[None, :]
    start = te.user_start[rows][:, None]
    real = idx >= start
    bos = idx == start - 1
    safe = np.clip(idx, 0, max(len(te) - 1, 0))
    tokens = np.where(real[..., None], te.tokens[safe], PAD)
    tokens[bos] = BOS
    dt = np.where(real, te.dt_log[safe], 0.0).astype(np.float32)
    return SequenceBatch(tokens.astype(np.int64), dt, te.event_ids[rows], te.ts[rows])


def build_sequences(
    events: pl.DataFrame,
    target_event_ids: Sequence[str] | pl.Series | None,
    max_len: int,
    tokenizer: EventTokenizer,
) -> SequenceBatch:
    """One window per target event (all events when ``target_event_ids`` is None), in that order.

    ``events`` must hold the targets *and* their users' earlier events (the store's flat records); later
    events may be present and are never looked at.
    """
    if max_len < 1:
        raise DataError(f"max_len must be at least 1, got {max_len}", field="max_len", value=max_len)
    te = tokenizer.transform(events)
    if target_event_ids is None:
        rows = np.lexsort((te.event_ids.astype(str), te.ts))  # all events, in time order
    else:
        targets = list(target_event_ids)
        pos = {eid: i for i, eid in enumerate(te.event_ids.tolist())}
        missing = [t for t in targets if t not in pos]
        if missing:
            raise DataError(f"{len(missing)} target event ids not in events (first: {missing[0]!r})",
                            field="target_event_ids", value=missing[0])
        rows = np.fromiter((pos[t] for t in targets), dtype=np.int64, count=len(targets))
    return gather_windows(te, rows, max_len)


def pretraining_rows(te: TokenizedEvents, max_len: int, offset: int = 0) -> np.ndarray:
    """Window ends that tile every user's history with stride ``max_len`` (shifted by ``offset``)."""
    n = len(te)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    ar = np.arange(n)
    # user_end[i]: last row of i's user
    is_last = np.ones(n, dtype=bool)
    is_last[:-1] = te.user_start[1:] != te.user_start[:-1]
    last_rows = ar[is_last]
    user_end = last_rows[np.searchsorted(last_rows, ar)]
    from_end = user_end - ar
    return ar[(from_end % max_len) == (offset % max_len)]
