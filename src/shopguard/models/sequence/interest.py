"""Next interest: which categories (merchants, items) a user will engage with next.

Asked at a cutoff *t*: given the user's events before *t*, rank the values of a field (``category``,
``merchant``, ``item``) by the probability that the user's *first engagement* after *t* (a view, an
add-to-cart or an order, ``ENGAGEMENT_TYPES``) carries it. Three rankers share one interface
(``fit(events, cutoffs)``, ``predict_proba(events, cutoffs) -> InterestScores``):

- ``NextInterest(model, method="pretrained")``: zero extra training. The pretrained network already
  has a next-event head per token field (``next_heads``, trained to predict every field of event
  *i + 1* from the hidden state of event *i*); its distribution at the user's last event, restricted to
  real values, is the ranking. Hashed fields (merchant, item) are spread back from a bucket to the ids
  seen in it by their frequency, so the answer names real ids.
- ``NextInterest(model, method="finetuned")``: a light head trained on next-engagement targets at
  earlier cutoffs, on the frozen encoder's state and the user's own engagement counts (the history
  beyond the window), initialised at the pretrained head so it starts from the zero-shot answer.
- baselines ``PopularInterest`` (what everyone engages with), ``UserFrequentInterest`` (what this
  user engaged with most; popularity breaks ties and fills a new user's gaps) and
  ``UserRecentInterest`` (recency-weighted: what the user engaged with last counts most).

Baselines' ``fit`` reads only events before their latest cutoff; ``NextInterest.fit`` reads events
before ``max(cutoffs) + horizon_days`` (its fine-tuning targets lie in (cutoff, cutoff + horizon]):
pick training cutoffs at least ``horizon_days`` before the test window (the benchmark does).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Self

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from shopguard.errors import DataError, ModelError
from shopguard.models.sequence.cutoffs import (
    ANON_PREFIX,
    UserWindows,
    as_cutoffs,
    user_windows,
    windows_for_rows,
)
from shopguard.models.sequence.network import FoundationModel, _k
from shopguard.models.sequence.tokenizer import FIELDS, OFFSET, _hash_bucket

ENGAGEMENT_TYPES: tuple[str, ...] = ("view", "add_to_cart", "order")
# token field -> the store column it is read from
INTEREST_FIELDS: dict[str, str] = {"category": "category", "merchant": "merchant_id", "item": "item_id"}


@dataclass
class InterestScores:
    """Probabilities (n, C) over ``classes`` (raw values) for each (user, cutoff) row."""

    user_ids: np.ndarray
    cutoffs: np.ndarray
    classes: list[str]
    probs: np.ndarray

    def __len__(self) -> int:
        return int(self.user_ids.size)

    def top(self, k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``k`` most likely values of each row with their probabilities, best first."""
        order = np.argsort(-self.probs, axis=1, kind="stable")[:, :k]
        return [[(self.classes[j], float(self.probs[i, j])) for j in row] for i, row in enumerate(order)]

    def frame(self, k: int = 5) -> pl.DataFrame:
        """Long frame (user_id, cutoff, rank, value, probability) of the top ``k`` per row."""
        cuts = np.asarray(self.cutoffs).astype("datetime64[us]").tolist()
        rows = [(str(u), c, r + 1, v, p) for u, c, top in zip(self.user_ids, cuts, self.top(k), strict=True)
                for r, (v, p) in enumerate(top)]
        return pl.DataFrame(rows, schema={"user_id": pl.Utf8, "cutoff": pl.Datetime("us"), "rank": pl.Int64,
                                          "value": pl.Utf8, "probability": pl.Float64}, orient="row")

    def hits(self, targets: Sequence[str | None], k: int = 1) -> np.ndarray:
        """1.0 where the target is among the top ``k``, 0.0 where not, NaN where there is no target."""
        if len(targets) != len(self):
            raise DataError(f"{len(targets)} targets for {len(self)} rows", field="targets")
        rank_of = {c: j for j, c in enumerate(self.classes)}
        order = np.argsort(-self.probs, axis=1, kind="stable")[:, :k]
        out = np.full(len(self), np.nan)
        for i, t in enumerate(targets):
            if t is None:
                continue
            j = rank_of.get(str(t))
            out[i] = float(j is not None and j in order[i])
        return out


def _check_field(field: str) -> str:
    if field not in INTEREST_FIELDS:
        raise DataError(f"unknown interest field {field!r} (choose from {', '.join(INTEREST_FIELDS)})",
                        field="field", value=field)
    return INTEREST_FIELDS[field]


def engagements(events: pl.DataFrame, field: str) -> pl.DataFrame:
    """Engagement events that carry the field: (user_id, ts, value), in time order."""
    col = _check_field(field)
    for c in ("ts", "type", "user_id"):
        if c not in events.columns:
            raise DataError(f"events need column {c!r}", field=c)
    if col not in events.columns:
        return pl.DataFrame(schema={"user_id": pl.Utf8, "ts": pl.Datetime("us"), "value": pl.Utf8})
    return (events.filter(pl.col("type").is_in(list(ENGAGEMENT_TYPES)) & pl.col(col).is_not_null()
                          & pl.col("user_id").is_not_null())
            .select(pl.col("user_id").cast(pl.Utf8), pl.col("ts").dt.cast_time_unit("us"),
                    pl.col(col).cast(pl.Utf8).alias("value"))
            .sort(["ts", "user_id"]))


def next_engagement(events: pl.DataFrame, field: str, rows: pl.DataFrame, horizon_days: float) -> list[str | None]:
    """The value of each row's first engagement in (cutoff, cutoff + horizon], None when there is none.

    ``rows``: (user_id, cutoff) in the order wanted.
    """
    eng = engagements(events, field).rename({"ts": "next_ts"})
    left = rows.select(pl.col("user_id").cast(pl.Utf8), pl.col("cutoff").dt.cast_time_unit("us")).with_row_index("_i")
    joined = left.sort("cutoff").join_asof(eng.sort("next_ts"), left_on="cutoff", right_on="next_ts", by="user_id",
                                           strategy="forward", check_sortedness=False)
    limit = pl.col("cutoff") + pl.duration(seconds=int(horizon_days * 86400))
    joined = joined.with_columns(pl.when(pl.col("next_ts") <= limit).then(pl.col("value")).otherwise(None)
                                 .alias("value")).sort("_i")
    return joined["value"].to_list()


def engagement_counts(events: pl.DataFrame, field: str, rows: pl.DataFrame, classes: Sequence[str],
                      half_life: float | None = None) -> np.ndarray:
    """(n, C) engagements of each row's user with each class value strictly before the row's cutoff.

    With ``half_life`` (in engagements) each engagement counts 0.5 ** (age / half_life), age 0 being
    the user's latest engagement before the cutoff: a recency-weighted count.
    """
    eng = engagements(events, field)
    left = rows.select(pl.col("user_id").cast(pl.Utf8), pl.col("cutoff").dt.cast_time_unit("us")).with_row_index("_i")
    pairs = left.join(eng, on="user_id", how="inner").filter(pl.col("ts") < pl.col("cutoff"))
    if half_life is not None:
        age = pl.col("ts").rank("ordinal", descending=True).over("_i") - 1
        pairs = pairs.with_columns((0.5 ** (age.cast(pl.Float64) / half_life)).alias("_w"))
    else:
        pairs = pairs.with_columns(pl.lit(1.0).alias("_w"))
    cls = pl.DataFrame({"value": [str(c) for c in classes], "_j": np.arange(len(classes), dtype=np.int64)})
    agg = pairs.join(cls, on="value", how="inner").group_by("_i", "_j").agg(pl.col("_w").sum())
    out = np.zeros((rows.height, len(classes)), dtype=np.float32)
    out[agg["_i"].to_numpy().astype(np.int64), agg["_j"].to_numpy()] = agg["_w"].to_numpy()
    return out


def users_at(events: pl.DataFrame, cutoffs: datetime | Sequence[datetime],
             user_ids: Sequence[str] | None = None) -> pl.DataFrame:
    """(user_id, cutoff) of every user with an event before each cutoff (or of ``user_ids``)."""
    parts = []
    for c in as_cutoffs(cutoffs):
        if user_ids is None:
            u = events.filter((pl.col("ts") < c) & pl.col("user_id").is_not_null())["user_id"].cast(pl.Utf8)
            u = u.filter(~u.str.starts_with(ANON_PREFIX)).unique().sort()
        else:
            u = pl.Series("user_id", [str(x) for x in user_ids], dtype=pl.Utf8)
        parts.append(pl.DataFrame({"user_id": u, "cutoff": pl.Series([c] * u.len(), dtype=pl.Datetime("us"))}))
    return pl.concat(parts)


class _Ranker:
    """What the interest rankers share: the field, the class index and the popularity prior."""

    field: str

    def _fit_classes(self, events: pl.DataFrame, until: datetime) -> None:
        last = until
        eng = engagements(events, self.field).filter(pl.col("ts") < last)
        if eng.height == 0:
            raise DataError(f"no engagements ({', '.join(ENGAGEMENT_TYPES)}) with a {self.field} before "
                            f"{last:%Y-%m-%d}", field="events")
        counts = eng.group_by("value").len().sort(["len", "value"], descending=[True, False])
        self.classes_ = [str(v) for v in counts["value"].to_list()]
        self.counts_ = counts["len"].to_numpy().astype(np.float64)
        self.prior_ = self.counts_ / self.counts_.sum()

    def _check(self) -> None:
        if not hasattr(self, "classes_"):
            raise ModelError(f"{type(self).__name__} is not fitted: call fit() first")


class PopularInterest(_Ranker):
    """Baseline: everyone gets the values most engaged with before the training cutoff."""

    name = "popular"

    def __init__(self, field: str = "category") -> None:
        self.field = field

    def fit(self, events: pl.DataFrame, cutoffs: datetime | Sequence[datetime]) -> Self:
        """Count engagements before the latest cutoff."""
        self._fit_classes(events, max(as_cutoffs(cutoffs)))
        return self

    def predict_proba(self, events: pl.DataFrame, cutoffs: datetime | Sequence[datetime],
                      user_ids: Sequence[str] | None = None) -> InterestScores:
        return self.predict_rows(events, users_at(events, cutoffs, user_ids))

    def predict_rows(self, events: pl.DataFrame, rows: pl.DataFrame) -> InterestScores:
        """Probabilities for given (user_id, cutoff) rows, in their order."""
        self._check()
        probs = np.tile(self.prior_, (rows.height, 1))
        return InterestScores(rows["user_id"].to_numpy().astype(object), rows["cutoff"].to_numpy(),
                              list(self.classes_), probs)


class _OwnEngagementInterest(_Ranker):
    """Rank by the user's own engagements before the cutoff (weighted by recency when ``half_life`` is
    set), plus ``prior_weight`` pseudo-engagements spread by popularity to break ties."""

    half_life: float | None = None
    prior_weight: float

    def fit(self, events: pl.DataFrame, cutoffs: datetime | Sequence[datetime]) -> Self:
        """Count engagements before the latest cutoff."""
        self._fit_classes(events, max(as_cutoffs(cutoffs)))
        return self

    def predict_proba(self, events: pl.DataFrame, cutoffs: datetime | Sequence[datetime],
                      user_ids: Sequence[str] | None = None) -> InterestScores:
        return self.predict_rows(events, users_at(events, cutoffs, user_ids))

    def predict_rows(self, events: pl.DataFrame, rows: pl.DataFrame) -> InterestScores:
        """Probabilities for given (user_id, cutoff) rows, in their order."""
        self._check()
        extra = {} if self.half_life is None else {"half_life": self.half_life}
        w = engagement_counts(events, self.field, rows, self.classes_, **extra).astype(np.float64)
        probs = w + self.prior_weight * self.prior_[None, :]
        probs /= probs.sum(axis=1, keepdims=True)
        return InterestScores(rows["user_id"].to_numpy().astype(object), rows["cutoff"].to_numpy(),
                              list(self.classes_), probs)


class UserFrequentInterest(_OwnEngagementInterest):
    """Baseline: the user's own most-engaged values up to the cutoff; popularity breaks ties."""

    name = "user_frequent"

    def __init__(self, field: str = "category", prior_weight: float = 0.5) -> None:
        self.field = field
        # prior_weight < 1 pseudo-engagement spread by popularity: a user's own count always wins.
        self.prior_weight = prior_weight


class UserRecentInterest(_OwnEngagementInterest):
    """Baseline: the user's recent engagements count most (half-life ``half_life`` engagements); the
    strong baseline inside a session, where the next cart is usually something just viewed."""

    name = "user_recent"

    def __init__(self, field: str = "category", half_life: float = 3.0, prior_weight: float = 0.05) -> None:
        self.field = field
        self.half_life = half_life
        self.prior_weight = prior_weight


class NextInterest(_Ranker):
    """The pretrained model's next-event head, zero-shot (``pretrained``) or lightly fine-tuned.

    >>> ni = NextInterest(FoundationModel.load("models/seq")).fit(events, [datetime(2024, 3, 20)])  # doctest: +SKIP
    >>> ni.predict_proba(events, datetime(2024, 3, 21), user_ids=["u123"]).top(5)  # doctest: +SKIP
    """

    name = "next_interest"

    def __init__(self, model: FoundationModel, field: str = "category", method: str = "pretrained",
                 use_counts: bool = True, horizon_days: float = 7.0, steps: int = 300, lr: float = 0.02,
                 weight_decay: float = 1e-3, val_frac: float = 0.25, seed: int = 7) -> None:
        self.model = model
        self.field = field
        self.method = method
        self.use_counts = use_counts
        self.horizon_days = horizon_days
        self.steps = steps
        self.lr = lr
        self.weight_decay = weight_decay
        self.val_frac = val_frac
        self.seed = seed

    # -- class index: raw values <-> token ids of the field --------------------------------------------
    def _token_of(self, value: str) -> int:
        tok = self.model.tokenizer
        if self.field == "category":
            assert tok.categories_ is not None
            return tok.categories_.get(value, -1)
        buckets = tok.config.merchant_buckets if self.field == "merchant" else tok.config.item_buckets
        return _hash_bucket(value, buckets)

    def fit(self, events: pl.DataFrame, cutoffs: datetime | Sequence[datetime]) -> Self:
        """Learn the values to rank; ``finetuned`` also trains the head on next-engagement targets.

        Reads only events before ``max(cutoffs) + horizon_days`` (the targets of the latest cutoff end
        there): keep that at or before the start of the window it will be evaluated on.
        """
        if self.method not in ("pretrained", "finetuned"):
            raise ModelError(f"unknown method {self.method!r} (choose pretrained or finetuned)", field="method",
                             value=self.method)
        _check_field(self.field)
        cuts = as_cutoffs(cutoffs)
        self.until_ = max(cuts) + timedelta(days=self.horizon_days)
        self._fit_classes(events, self.until_)
        tokens = np.array([self._token_of(v) for v in self.classes_], dtype=np.int64)
        keep = tokens >= OFFSET  # categories outside the model's vocabulary cannot be ranked by it
        if not keep.any():
            raise ModelError(f"none of the {self.field} values is in the model's vocabulary", field="model")
        self.classes_ = [c for c, k in zip(self.classes_, keep, strict=True) if k]
        self.counts_, self.prior_ = self.counts_[keep], self.prior_[keep] / self.prior_[keep].sum()
        self.tokens_ = tokens[keep]
        # A bucket shared by several ids: spread its probability by each id's share of the bucket.
        share = np.zeros(len(self.classes_))
        for t in np.unique(self.tokens_):
            m = self.tokens_ == t
            share[m] = self.counts_[m] / self.counts_[m].sum()
        self.log_share_ = np.log(share)
        head = self.model.network.next_heads[_k(self.field)]
        w = head.weight.detach().cpu()[torch.from_numpy(self.tokens_)]
        b = head.bias.detach().cpu()[torch.from_numpy(self.tokens_)] + torch.from_numpy(self.log_share_).float()
        self.weight_, self.bias_ = w.clone(), b.clone()
        self.count_weight_ = torch.zeros(len(self.classes_) + 1)
        self.history_: list[dict[str, float]] = []
        if self.method == "finetuned":
            self._finetune(events.filter(pl.col("ts") < self.until_), cuts)
        return self

    def _features(self, events: pl.DataFrame, windows: UserWindows) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.from_numpy(self.model.embeddings(windows.batch)).float()
        rows = windows.frame().select("user_id", "cutoff")
        if not self.use_counts:
            return hidden, torch.zeros((len(windows), len(self.classes_) + 1))
        counts = engagement_counts(events, self.field, rows, self.classes_).astype(np.float64)
        # The user's own smoothed share of each value, as in UserFrequentInterest: with weight 1 the head
        # multiplies the window's prediction by the user's long-run habit (a product of experts).
        share = counts + 0.5 * self.prior_[None, :]
        share /= share.sum(axis=1, keepdims=True)
        # Last column: how much history the share rests on (log1p of the user's engagements), so the head
        # can trust a long habit more than a short one (fit cutoffs come earlier, with shorter histories).
        n = np.log1p(counts.sum(axis=1, keepdims=True))
        return hidden, torch.from_numpy(np.concatenate([np.log(share), n], axis=1)).float()

    def _logits(self, hidden: torch.Tensor, counts: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                cw: torch.Tensor) -> torch.Tensor:
        # Per-class weight on the user's own log share, growing with the length of the history
        # (``cw[-1]``): the head learns how much habit beats the window.
        log_share, n = counts[:, :-1], counts[:, -1:]
        return hidden @ w.T + b + log_share * (cw[None, :-1] + cw[-1] * n)

    def _finetune(self, known: pl.DataFrame, cutoffs: list[datetime]) -> None:
        cuts = sorted(cutoffs)
        win = user_windows(self.model, known, cuts)
        targets = next_engagement(known, self.field, win.frame(), self.horizon_days)
        col_of = {c: j for j, c in enumerate(self.classes_)}
        y = np.array([col_of.get(t, -1) if t is not None else -1 for t in targets])
        ok = y >= 0
        if ok.sum() < 20:
            raise DataError(f"only {int(ok.sum())} next-engagement targets to fine-tune on: give earlier cutoffs",
                            field="cutoffs")
        hidden, counts = self._features(known, win)
        hidden, counts, y_t = hidden[ok], counts[ok], torch.from_numpy(y[ok])
        cut_of = win.cutoffs[ok]
        n_val_cuts = max(1, int(round(self.val_frac * len(cuts)))) if len(cuts) > 1 else 0
        val_cuts = set(np.unique(cut_of)[-n_val_cuts:].tolist()) if n_val_cuts else set()
        is_val = torch.from_numpy(np.array([c in val_cuts for c in cut_of.tolist()]))
        tr = ~is_val if is_val.any() else torch.ones_like(is_val)
        torch.manual_seed(self.seed)
        w = self.weight_.clone().requires_grad_(True)
        b = self.bias_.clone().requires_grad_(True)
        # Start from the product of the zero-shot head and the user's habit (weight 1 on the log share).
        cw = torch.full((len(self.classes_) + 1,), 1.0 if self.use_counts else 0.0)
        cw[-1] = 0.0
        cw.requires_grad_(True)
        w0 = self.weight_.clone()
        opt = torch.optim.Adam([w, b, cw], lr=self.lr)
        ev = is_val if is_val.any() else tr

        def validate() -> tuple[float, float]:
            with torch.no_grad():
                logits = self._logits(hidden[ev], counts[ev], w, b, cw)
                return (float((logits.argmax(dim=1) == y_t[ev]).float().mean()),
                        float(F.cross_entropy(logits, y_t[ev])))

        # Keep the step with the best validation hit@1 (then loss): ranking is what is asked of it.
        acc, v0 = validate()
        best = ((-acc, v0), copy.deepcopy((w.detach(), b.detach(), cw.detach())), 0)
        self.history_.append({"step": 0, "val_accuracy": acc, "val_loss": v0})
        for step in range(self.steps):
            opt.zero_grad()
            loss = F.cross_entropy(self._logits(hidden[tr], counts[tr], w, b, cw), y_t[tr])
            # Stay near the pretrained head (L2 towards it): a few thousand targets must not undo pretraining.
            loss = loss + self.weight_decay * ((w - w0) ** 2).sum()
            loss.backward()
            opt.step()
            if step % 10 == 9 or step == self.steps - 1:
                acc, vloss = validate()
                self.history_.append({"step": step + 1, "train_loss": float(loss.detach()), "val_accuracy": acc,
                                      "val_loss": vloss})
                if (-acc, vloss) < best[0]:
                    best = ((-acc, vloss), copy.deepcopy((w.detach(), b.detach(), cw.detach())), step + 1)
        self.weight_, self.bias_, self.count_weight_ = (t.clone() for t in best[1])
        self.best_step_ = best[2]
        self.n_targets_ = int(ok.sum())

    def predict_proba(self, events: pl.DataFrame, cutoffs: datetime | Sequence[datetime],
                      user_ids: Sequence[str] | None = None) -> InterestScores:
        """Probability of each value for every user with history at each cutoff (or ``user_ids``)."""
        self._check()
        return self.scores_for(events, user_windows(self.model, events, cutoffs, user_ids))

    def predict_rows(self, events: pl.DataFrame, rows: pl.DataFrame) -> InterestScores:
        """Probabilities for given (user_id, cutoff) rows, in their order (each user needs history)."""
        self._check()
        return self.scores_for(events, windows_for_rows(self.model, events, rows))

    def scores_for(self, events: pl.DataFrame, windows: UserWindows) -> InterestScores:
        """``predict_proba`` on windows already built (the benchmark reuses them across rankers)."""
        self._check()
        if self.method == "finetuned":
            hidden, counts = self._features(events, windows)
        else:  # the zero-shot head reads the window only
            hidden = torch.from_numpy(self.model.embeddings(windows.batch)).float()
            counts = torch.zeros((len(windows), len(self.classes_) + 1))
        with torch.no_grad():
            logits = self._logits(hidden, counts, self.weight_, self.bias_, self.count_weight_)
            probs = torch.softmax(logits, dim=1).numpy().astype(np.float64)
        return InterestScores(windows.user_ids, windows.cutoffs, list(self.classes_), probs)


def zero_shot_field_probs(model: FoundationModel, windows: UserWindows, field: str) -> np.ndarray:
    """The pretrained next-event head's full distribution (n, vocab) of ``field`` (reserved ids too)."""
    if field not in FIELDS:
        raise DataError(f"unknown token field {field!r}", field="field", value=field)
    hidden = torch.from_numpy(model.embeddings(windows.batch)).float()
    with torch.no_grad():
        return torch.softmax(model.network.next_heads[_k(field)](hidden), dim=1).numpy()


def hit_rates(scores: InterestScores, targets: Sequence[str | None], ks: Sequence[int] = (1, 5)) -> dict[str, Any]:
    """hit@k over rows with a target (``accuracy`` = hit@1, ``hit_at_<k>``), and how many rows counted."""
    out: dict[str, Any] = {}
    for k in ks:
        h = scores.hits(targets, k)
        v = float(np.nanmean(h)) if np.isfinite(h).any() else float("nan")
        out["accuracy" if k == 1 else f"hit_at_{k}"] = v
    out["n"] = int(sum(t is not None for t in targets))
    return out
