"""Scoring ``review`` and ``chat`` events: the one entry point the pipeline and the service call.

``TextEventDetector`` wraps the review-text detector, the review-context signals and the chat detector
behind the detector contract, over a frame of store events:

- ``fit(events, labels)``: ``events`` holds the store's columns (history included: signups, orders,
  earlier reviews); ``labels`` the store's label rows. A review or chat event is positive when it has
  an ``entity_kind='event'`` label 1 known before ``known_before`` (every other one is a negative, as in
  event-level evaluation); events in the last ``label_delay_days`` before ``known_before`` are left out
  of training because their labels may not have arrived yet. Reviews are split by time: the text detector learns from the earlier
  ``1 - fusion_holdout`` share, a logistic fusion of its score with the context signals from the later
  share (so the fusion sees honest, out-of-sample text scores), then the text detector is refitted on
  all labelled reviews.
- ``score(events)``: one score per row, 0 for rows that are neither review nor chat.
- ``score_events(events, since=...)``: a frame ``event_id, ts, type, score, text_score,
  context_score, reasons`` for the review and chat events at or after ``since``, with reasons that quote
  the signal ("text 0.97 similar to 14 reviews from 9 accounts this week").

Without review labels the review score is the context score combined with nothing else; without chat
labels the chat detector runs on its lexicon and prototypes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar, Self

import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression

from shopguard.errors import ValidationFailed
from shopguard.models.base import Detector
from shopguard.models.text.chat import ChatRiskDetector
from shopguard.models.text.context import ReviewContextConfig, review_context
from shopguard.models.text.review import ReviewRiskDetector, logit

TEXT_EVENT_TYPES = ("review", "chat")


def event_labels(events: pl.DataFrame, labels: pl.DataFrame | None, *,
                 known_before: datetime | None = None) -> np.ndarray:
    """0/1 per row of ``events``: 1 when a positive event label known before ``known_before`` exists."""
    if labels is None or labels.height == 0:
        return np.zeros(events.height, dtype=int)
    lab = labels.filter((pl.col("entity_kind") == "event") & (pl.col("label") == 1))
    if known_before is not None and "labeled_at" in lab.columns:
        lab = lab.filter(pl.col("labeled_at") < known_before)
    positive = set(lab["entity_id"].cast(pl.Utf8).to_list())
    return np.array([e in positive for e in events["event_id"].cast(pl.Utf8).to_list()], dtype=int)


def _context_matrix(ctx: pl.DataFrame) -> np.ndarray:
    """Context signals on scales a linear model can use (counts logged, deviation absolute)."""
    return np.column_stack([
        ctx["dup_max_sim"].to_numpy(),
        np.log1p(ctx["dup_accounts"].to_numpy().astype(float)),
        np.log1p(ctx["minhash_dup_count"].to_numpy().astype(float)),
        np.log(ctx["item_burst_ratio"].to_numpy().astype(float)),
        np.abs(ctx["rating_deviation"].to_numpy()),
        np.log1p(np.maximum(ctx["account_age_days"].to_numpy(), 0.0)),
        ctx["verified_purchase"].to_numpy().astype(float),
    ])


class TextEventDetector(Detector):
    """Review and chat event risk (higher = riskier) over a frame of store events."""

    name: ClassVar[str] = "text_events"
    supervised: ClassVar[bool] = False  # works unsupervised; uses labels where they exist

    def __init__(self, review_components: Sequence[str] = ("ngram", "use"), fusion_holdout: float = 0.3,
                 context: dict[str, Any] | None = None, min_positives: int = 10, label_delay_days: float = 7.0,
                 seed: int = 0) -> None:
        self.review_components = review_components
        self.label_delay_days = label_delay_days
        self.fusion_holdout = fusion_holdout
        self.context = context
        self.min_positives = min_positives
        self.seed = seed

    def _context_config(self) -> ReviewContextConfig:
        return ReviewContextConfig(**(self.context or {}))

    @staticmethod
    def _check(events: Any) -> pl.DataFrame:
        if not isinstance(events, pl.DataFrame):
            raise ValidationFailed(f"events: expected a Polars DataFrame of store events, got "
                                   f"{type(events).__name__}", field="events")
        missing = [c for c in ("event_id", "ts", "type", "user_id", "text") if c not in events.columns]
        if missing:
            raise ValidationFailed(f"events: missing columns {missing}", field=missing[0])
        return events

    def fit(self, X: Any, y: Any = None, *, known_before: datetime | None = None) -> Self:
        """Learn from ``X`` (store events) and ``y`` (store labels frame, or None)."""
        events = self._check(X)
        labels = y if isinstance(y, pl.DataFrame) else None
        if y is not None and labels is None:
            raise ValidationFailed("y: expected the store's labels frame (entity_kind, entity_id, label, ...)",
                                   field="y")
        cfg = self._context_config()
        # -- reviews: text detector + context fusion -----------------------------------------------------
        settled = pl.lit(True)
        if known_before is not None:
            # Labels arrive days late (take-downs, chargebacks): recent events without a label yet are not
            # known negatives, so they stay out of training (the Handbook's delay gap).
            settled = pl.col("ts") < known_before - timedelta(days=self.label_delay_days)
        reviews = events.filter((pl.col("type") == "review") & settled).sort("ts", "event_id")
        reviews = reviews.filter(pl.col("text").is_not_null() & (pl.col("text").str.strip_chars() != ""))
        yr = event_labels(reviews, labels, known_before=known_before)
        self.review_model_: ReviewRiskDetector | None = None
        self.fusion_: LogisticRegression | None = None
        self.fit_info_: dict[str, Any] = {"reviews": reviews.height, "review_positives": int(yr.sum())}
        if yr.sum() >= self.min_positives and (len(yr) - yr.sum()) >= self.min_positives:
            cut = int(len(yr) * (1 - self.fusion_holdout))
            early, late = slice(0, cut), slice(cut, len(yr))
            if yr[early].sum() >= 5 and yr[late].sum() >= 3 and (yr[late] == 0).sum() >= 3:
                text_model = self._new_review_model().fit(reviews[early], yr[early])
                ctx = reviews.select("event_id").join(review_context(events, config=cfg), on="event_id",
                                                      how="left", maintain_order="left")
                late_rows = reviews[late]
                feats = np.column_stack([logit(text_model.score(late_rows)), _context_matrix(ctx[late])])
                self.fusion_ = LogisticRegression(C=1.0, max_iter=2000).fit(feats, yr[late])
            self.review_model_ = self._new_review_model().fit(reviews, yr)
        # -- chats ------------------------------------------------------------------------------------
        chats = events.filter((pl.col("type") == "chat") & pl.col("text").is_not_null() & settled)
        yc = event_labels(chats, labels, known_before=known_before)
        self.fit_info_.update(chats=chats.height, chat_positives=int(yc.sum()))
        chat_labels = yc if 0 < yc.sum() < len(yc) and yc.sum() >= 3 else None
        self.chat_model_ = ChatRiskDetector(seed=self.seed).fit(chats["text"].to_list(), chat_labels)
        return self

    def _new_review_model(self) -> ReviewRiskDetector:
        return ReviewRiskDetector(components=tuple(self.review_components), seed=self.seed)

    def score_events(self, X: Any, *, since: datetime | None = None) -> pl.DataFrame:
        """Scores and reasons for review and chat events (at or after ``since``; history before it is
        used for context only)."""
        self.check_fitted()
        events = self._check(X)
        parts: list[pl.DataFrame] = []
        cfg = self._context_config()
        reviews = events.filter(pl.col("type") == "review").sort("ts", "event_id")
        if since is not None:
            reviews = reviews.filter(pl.col("ts") >= since)
        if reviews.height:
            ctx = review_context(events, config=cfg, reviews_only_since=since)
            ctx = reviews.select("event_id").join(ctx, on="event_id", how="left", maintain_order="left")
            texts = reviews["text"].fill_null("")
            context_s = ctx["context_score"].fill_null(0.0).to_numpy()
            reasons = [list(r or []) for r in ctx["reasons"].to_list()]
            if self.review_model_ is not None:
                text_s = self.review_model_.score(reviews.with_columns(texts.alias("text")))
                text_s = np.where(texts.str.strip_chars().str.len_chars().to_numpy() > 0, text_s, 0.0)
                if self.fusion_ is not None:
                    feats = np.column_stack([logit(text_s), _context_matrix(ctx)])
                    score = self.fusion_.predict_proba(feats)[:, 1]
                else:
                    score = 1 - (1 - text_s) * (1 - context_s)
                reasons = [([f"review text reads as fake ({s:.2f})"] if s >= 0.5 else []) + r
                           for s, r in zip(text_s, reasons, strict=True)]
            else:
                text_s = np.full(reviews.height, np.nan)
                score = context_s
            parts.append(pl.DataFrame({
                "event_id": reviews["event_id"], "ts": reviews["ts"], "type": reviews["type"],
                "score": score, "text_score": text_s, "context_score": context_s,
                "reasons": pl.Series(reasons, dtype=pl.List(pl.Utf8)),
            }))
        chats = events.filter(pl.col("type") == "chat")
        if since is not None:
            chats = chats.filter(pl.col("ts") >= since)
        if chats.height:
            texts = chats["text"].fill_null("").to_list()
            s = self.chat_model_.score(texts)
            parts.append(pl.DataFrame({
                "event_id": chats["event_id"], "ts": chats["ts"], "type": chats["type"],
                "score": s, "text_score": s, "context_score": np.full(chats.height, np.nan),
                "reasons": pl.Series(self.chat_model_.reasons(texts), dtype=pl.List(pl.Utf8)),
            }))
        if not parts:
            return pl.DataFrame(schema={"event_id": pl.Utf8, "ts": pl.Datetime("us"), "type": pl.Utf8,
                                        "score": pl.Float64, "text_score": pl.Float64,
                                        "context_score": pl.Float64, "reasons": pl.List(pl.Utf8)})
        return pl.concat([p.with_columns(pl.col("ts").cast(pl.Datetime("us"))) for p in parts]).sort("ts", "event_id")

    def score_record(self, record: dict[str, Any], history: pl.DataFrame | None = None) -> dict[str, Any]:
        """Score one incoming review or chat (a store record, e.g. ``Event.to_record()``) for the service.

        ``history``: store events before it that the review context needs (recent reviews of all items,
        the reviewer's signup and orders), e.g. ``store.events(since=ts - 30 days, types=["review",
        "signup", "order", "pay"])``; without it only the text is scored. Returns ``score,
        text_score, context_score, reasons``; a record of another type scores 0 with no reasons.
        """
        if record.get("type") not in TEXT_EVENT_TYPES:
            return {"score": 0.0, "text_score": None, "context_score": None, "reasons": []}
        row = {k: record.get(k) for k in ("event_id", "ts", "type", "user_id", "item_id", "order_id", "text",
                                          "rating")}
        row["event_id"] = row["event_id"] or "_incoming"
        one = pl.DataFrame([row], schema={"event_id": pl.Utf8, "ts": pl.Datetime("us"), "type": pl.Utf8,
                                          "user_id": pl.Utf8, "item_id": pl.Utf8, "order_id": pl.Utf8,
                                          "text": pl.Utf8, "rating": pl.Float64})
        frame = one
        if history is not None and history.height:
            hist = history.select([pl.col(c).cast(one.schema[c]) if c in history.columns
                                   else pl.lit(None, dtype=one.schema[c]).alias(c) for c in one.columns])
            frame = pl.concat([hist.filter(pl.col("event_id") != row["event_id"]), one])
        out = self.score_events(frame, since=row["ts"]).filter(pl.col("event_id") == row["event_id"])
        r = out.row(0, named=True)
        ctx = r["context_score"]
        return {"score": float(r["score"]),
                "text_score": None if r["text_score"] is None or np.isnan(r["text_score"]) else float(r["text_score"]),
                "context_score": None if ctx is None or np.isnan(ctx) else float(ctx),
                "reasons": list(r["reasons"])}

    def score(self, X: Any) -> np.ndarray:
        """One score per row of ``X``; 0 for rows that are neither reviews nor chats."""
        events = self._check(X)
        scored = self.score_events(events)
        by_id = dict(zip(scored["event_id"].to_list(), scored["score"].to_list(), strict=True))
        return np.array([by_id.get(e, 0.0) for e in events["event_id"].to_list()], dtype=float)


def fit_text_model(store: Any, *, until: datetime | None = None, **params: Any) -> TextEventDetector:
    """Fit on a store's events before ``until`` with the labels known before ``until``."""
    events = store.events(until=until) if until is not None else store.events()
    labels = store.labels(known_before=until) if until is not None else store.labels()
    return TextEventDetector(**params).fit(events, labels, known_before=until)


def score_text_events(store: Any, model: TextEventDetector, *, since: datetime | None = None,
                      until: datetime | None = None, history_days: float = 30.0) -> pl.DataFrame:
    """Score review and chat events in ``[since, until)`` of a store, with ``history_days`` of
    history before ``since`` for context (duplicates, bursts, account age)."""
    start = since - timedelta(days=history_days) if since is not None else None
    events = store.events(since=start, until=until)
    return model.score_events(events, since=since)
