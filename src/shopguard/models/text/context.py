"""Review-context signals: what around a review makes it suspicious, computed point in time.

For each ``review`` event, using only events strictly before it (and the reviewer's own first event for
account age):

- near-duplicate text across accounts: embedding cosine to reviews by *other* accounts in the last
  ``window_days`` (``dup_max_sim``, ``dup_count``, ``dup_accounts``) and MinHash-LSH Jaccard on character
  shingles for templated text that embeddings call merely similar (``minhash_dup_count``);
- review bursts per item: reviews of the item in the last ``burst_hours`` against its usual rate over
  ``baseline_days`` (``item_reviews_burst``, ``item_burst_ratio``);
- rating deviation from the item's earlier ratings (``rating_deviation``, ``item_prior_reviews``);
- reviewer account age (``account_age_days``) and purchase verification (``verified_purchase``: an
  ``order`` or ``pay`` event by the reviewer for the same item or order before the review).

Each row carries ``reasons``: sentences quoting the signal, e.g. "text 0.97 similar to 14 reviews from 9
accounts this week". ``context_score`` is a transparent unsupervised combination (documented in
``context_score``); when labels exist, ``shopguard.models.text.scoring`` learns the weights instead.
These feed the ``brushing`` and ``fake_review`` scenarios.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from shopguard.errors import ValidationFailed

CONTEXT_FEATURES = (
    "dup_max_sim", "dup_count", "dup_accounts", "minhash_dup_count", "item_reviews_burst",
    "item_burst_ratio", "item_prior_reviews", "rating_deviation", "account_age_days", "verified_purchase",
)
_REQUIRED = ("event_id", "ts", "type", "user_id")
_NORMALISE = re.compile(r"[\W_]+", re.UNICODE)


class ReviewContextConfig(BaseModel):
    """Windows and thresholds of the review-context signals."""

    model_config = ConfigDict(extra="forbid")

    window_days: float = Field(7.0, gt=0, description="Look-back for near-duplicate text.")
    sim_threshold: float = Field(0.9, gt=0, le=1, description="Embedding cosine that counts as a near duplicate.")
    minhash_threshold: float = Field(0.6, gt=0, le=1, description="Shingle Jaccard that counts as templated.")
    num_perm: int = Field(64, ge=16, le=512, description="MinHash permutations.")
    shingle: int = Field(3, ge=1, le=10, description="Characters per shingle.")
    burst_hours: float = Field(24.0, gt=0, description="Window of the per-item review burst.")
    baseline_days: float = Field(30.0, gt=0, description="Window of the item's usual review rate.")
    encoder: str = Field("use", description="Sentence encoder for near duplicates (multilingual 'use').")


def _shingles(text: str, k: int) -> list[bytes]:
    norm = _NORMALISE.sub(" ", text.lower()).strip()
    if len(norm) <= k:
        return [norm.encode()] if norm else []
    return list({norm[i:i + k].encode() for i in range(len(norm) - k + 1)})


def _window_phrase(days: float) -> str:
    if days == 7:
        return "this week"
    if days == 1:
        return "today"
    return f"in the last {days:g} days"


def _check(events: pl.DataFrame) -> None:
    if not isinstance(events, pl.DataFrame):
        raise ValidationFailed(f"events: expected a Polars DataFrame, got {type(events).__name__}", field="events")
    missing = [c for c in _REQUIRED if c not in events.columns]
    if missing:
        raise ValidationFailed(f"events: missing columns {missing}", field=missing[0])
    if events.schema["ts"] not in (pl.Datetime, pl.Datetime("us"), pl.Datetime("ns"), pl.Datetime("ms")) \
            and not isinstance(events.schema["ts"], pl.Datetime):
        raise ValidationFailed(f"ts: must be a datetime column, got {events.schema['ts']}", field="ts")


def _col(frame: pl.DataFrame, name: str, dtype: Any) -> pl.Expr:
    return pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype=dtype).alias(name)


def review_context(events: pl.DataFrame, *, config: ReviewContextConfig | None = None,
                   encoder: Any = None, reviews_only_since: datetime | None = None) -> pl.DataFrame:
    """Context signals for every review in ``events`` (one row per review, time order).

    ``events`` holds the store's columns (at least ``event_id, ts, type, user_id``; reviews use ``text,
    rating, item_id, order_id``), including the history before the reviews to score: signups and first
    events give account age, orders and payments give verification, earlier reviews give duplicates,
    bursts and rating baselines. ``reviews_only_since`` limits the output (not the history) to reviews
    at or after that time. ``encoder`` is anything with ``encode(texts) -> ndarray`` (default: the
    shared multilingual USE encoder).
    """
    cfg = config or ReviewContextConfig()
    _check(events)
    ev = events.select(
        pl.col("event_id").cast(pl.Utf8), pl.col("ts"), pl.col("type").cast(pl.Utf8),
        pl.col("user_id").cast(pl.Utf8), _col(events, "item_id", pl.Utf8), _col(events, "order_id", pl.Utf8),
        _col(events, "text", pl.Utf8), _col(events, "rating", pl.Float64),
    )
    reviews = ev.filter(pl.col("type") == "review").sort("ts", "event_id", maintain_order=True)
    n = reviews.height
    if n == 0:
        return _empty()
    t = reviews["ts"].dt.epoch("us").to_numpy().astype(np.int64)
    users = np.array(reviews["user_id"].fill_null("").to_list(), dtype=object)
    items = reviews["item_id"].to_list()
    texts = reviews["text"].fill_null("").to_list()
    ratings = reviews["rating"].to_numpy()
    day_us = 86_400_000_000

    # -- near duplicates by embedding (other accounts, last window) ------------------------------------
    if encoder is None:
        from shopguard.models.text.encoders import shared_encoder

        encoder = shared_encoder(cfg.encoder)
    emb = np.asarray(encoder.encode(texts), dtype=np.float32)
    has_text = np.array([bool(x.strip()) for x in texts])
    win = int(cfg.window_days * day_us)
    starts = np.searchsorted(t, t - win, side="left")
    ends = np.searchsorted(t, t, side="left")  # strictly before: ties do not see each other
    dup_max = np.zeros(n)
    dup_count = np.zeros(n, dtype=np.int64)
    dup_accounts = np.zeros(n, dtype=np.int64)
    for i in range(n):
        s, e = starts[i], ends[i]
        if e <= s or not has_text[i]:
            continue
        sims = emb[s:e] @ emb[i]
        other = (users[s:e] != users[i]) & has_text[s:e]
        sims = np.where(other, sims, -1.0)
        dup_max[i] = max(0.0, float(sims.max()))
        hit = sims >= cfg.sim_threshold
        dup_count[i] = int(hit.sum())
        dup_accounts[i] = len(set(users[s:e][hit]))

    # -- templated text by MinHash LSH ---------------------------------------------------------------
    from datasketch import MinHash, MinHashLSH

    shingles = [_shingles(x, cfg.shingle) for x in texts]
    hashes = MinHash.bulk(shingles, num_perm=cfg.num_perm, seed=1)
    lsh = MinHashLSH(threshold=cfg.minhash_threshold, num_perm=cfg.num_perm)
    mh_count = np.zeros(n, dtype=np.int64)
    for i in range(n):
        if not shingles[i]:
            continue
        if ends[i] > starts[i]:
            cands = [j for j in lsh.query(hashes[i])
                     if starts[i] <= j < ends[i] and users[j] != users[i]]
            mh_count[i] = len(cands)
        lsh.insert(i, hashes[i])

    # -- item bursts and rating deviation ------------------------------------------------------------
    burst = np.zeros(n, dtype=np.int64)
    burst_ratio = np.ones(n)
    prior_n = np.zeros(n, dtype=np.int64)
    rating_dev = np.zeros(n)
    burst_us = int(cfg.burst_hours * 3_600_000_000)
    base_us = int(cfg.baseline_days * day_us)
    by_item: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        if item is not None:
            by_item.setdefault(item, []).append(i)
    for rows in by_item.values():
        idx = np.asarray(rows)
        ti = t[idx]
        r = ratings[idx]
        r_ok = ~np.isnan(r)
        csum = np.concatenate([[0.0], np.cumsum(np.where(r_ok, r, 0.0))])
        ccnt = np.concatenate([[0], np.cumsum(r_ok)])
        before = np.searchsorted(ti, ti, side="left")
        in_burst = before - np.searchsorted(ti, ti - burst_us, side="left")
        in_base = before - np.searchsorted(ti, ti - base_us, side="left")
        expected = in_base * (burst_us / base_us)
        burst[idx] = in_burst
        burst_ratio[idx] = (in_burst + 1.0) / (expected + 1.0)
        prior_n[idx] = ccnt[before]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_before = csum[before] / ccnt[before]
        rating_dev[idx] = np.where((ccnt[before] > 0) & r_ok, r - mean_before, 0.0)

    # -- account age and purchase verification ------------------------------------------------------
    first_seen = ev.filter(pl.col("user_id").is_not_null()).group_by("user_id").agg(pl.col("ts").min().alias("_first"))
    age = (reviews.select("user_id", "ts").join(first_seen, on="user_id", how="left", maintain_order="left")
           .select(((pl.col("ts") - pl.col("_first")).dt.total_seconds() / 86_400).fill_null(0.0).alias("age")))
    account_age = age["age"].to_numpy().astype(float)
    buys = ev.filter(pl.col("type").is_in(["order", "pay"]) & pl.col("user_id").is_not_null())
    first_item = (buys.filter(pl.col("item_id").is_not_null()).group_by("user_id", "item_id")
                  .agg(pl.col("ts").min().alias("_bought_item")))
    first_order = (buys.filter(pl.col("order_id").is_not_null()).group_by("user_id", "order_id")
                   .agg(pl.col("ts").min().alias("_bought_order")))
    ver = (reviews.select("user_id", "item_id", "order_id", "ts")
           .join(first_item, on=["user_id", "item_id"], how="left", maintain_order="left")
           .join(first_order, on=["user_id", "order_id"], how="left", maintain_order="left")
           .select(((pl.col("_bought_item") < pl.col("ts")).fill_null(False)
                    | (pl.col("_bought_order") < pl.col("ts")).fill_null(False)).alias("v")))
    verified = ver["v"].to_numpy().astype(np.int64)

    out = reviews.select("event_id", "ts", "user_id", "item_id").with_columns(
        pl.Series("dup_max_sim", dup_max), pl.Series("dup_count", dup_count),
        pl.Series("dup_accounts", dup_accounts), pl.Series("minhash_dup_count", mh_count),
        pl.Series("item_reviews_burst", burst), pl.Series("item_burst_ratio", burst_ratio),
        pl.Series("item_prior_reviews", prior_n), pl.Series("rating_deviation", rating_dev),
        pl.Series("account_age_days", account_age), pl.Series("verified_purchase", verified),
    )
    out = out.with_columns(pl.Series("context_score", context_score(out)),
                           pl.Series("reasons", context_reasons(out, ratings, cfg), dtype=pl.List(pl.Utf8)))
    if reviews_only_since is not None:
        out = out.filter(pl.col("ts") >= reviews_only_since)
    return out


def context_score(frame: pl.DataFrame) -> np.ndarray:
    """Unsupervised review-context risk in [0, 1]: ``1 - prod(1 - s_k)`` over signal strengths ``s_k``.

    - duplicates: accounts with near-identical text (3 or more = 1) times how close (cosine 0.8 -> 1);
    - templates: MinHash near-copies from other accounts (3 or more = 1);
    - burst: item reviewed at 2x its usual rate -> 0, at 10x -> 1;
    - rating: more than 1.5 stars from the item's average -> rising to 1 at 3.5;
    - new account: 0.4 under a day old, 0.2 under a week;
    - unverified: 0.2 when no purchase of the item by the reviewer is on record.
    Each is a reading an analyst would agree with on its own; the product form lets any one strong
    signal raise the score while weak ones add up.
    """
    f = {c: frame[c].to_numpy().astype(float) for c in CONTEXT_FEATURES}
    s = [
        np.clip(f["dup_accounts"] / 3, 0, 1) * np.clip((f["dup_max_sim"] - 0.8) / 0.2, 0, 1),
        np.clip(f["minhash_dup_count"] / 3, 0, 1),
        np.clip((f["item_burst_ratio"] - 2) / 8, 0, 1),
        np.clip((np.abs(f["rating_deviation"]) - 1.5) / 2, 0, 1) * (f["item_prior_reviews"] >= 3),
        np.where(f["account_age_days"] < 1, 0.4, np.where(f["account_age_days"] < 7, 0.2, 0.0)),
        np.where(f["verified_purchase"] > 0, 0.0, 0.2),
    ]
    return 1 - np.prod([1 - x for x in s], axis=0)


def context_reasons(frame: pl.DataFrame, ratings: np.ndarray, cfg: ReviewContextConfig) -> list[list[str]]:
    """Sentences quoting each signal that fired, strongest evidence first."""
    rows = frame.select(CONTEXT_FEATURES).to_numpy()
    col = {c: j for j, c in enumerate(CONTEXT_FEATURES)}
    when = _window_phrase(cfg.window_days)
    out: list[list[str]] = []
    for k, r in enumerate(rows):
        rs: list[str] = []
        if r[col["dup_count"]] > 0:
            rs.append(f"text {r[col['dup_max_sim']]:.2f} similar to {_n(r[col['dup_count']], 'review')} from "
                      f"{_n(r[col['dup_accounts']], 'account')} {when}")
        if r[col["minhash_dup_count"]] > 0:
            rs.append(f"templated: near-copy of {_n(r[col['minhash_dup_count']], 'review')} by other accounts {when}")
        if r[col["item_burst_ratio"]] >= 3 and r[col["item_reviews_burst"]] >= 3:
            rs.append(f"{_n(r[col['item_reviews_burst']], 'review')} of this item in the last {cfg.burst_hours:g} h "
                      f"({r[col['item_burst_ratio']]:.1f}x its usual rate)")
        if r[col["item_prior_reviews"]] >= 3 and abs(r[col["rating_deviation"]]) >= 1.5:
            avg = ratings[k] - r[col["rating_deviation"]]
            rs.append(f"rating {ratings[k]:.0f} vs item average {avg:.1f} over {int(r[col['item_prior_reviews']])} reviews")
        if r[col["account_age_days"]] < 7:
            rs.append(f"account {r[col['account_age_days']]:.1f} days old")
        if r[col["verified_purchase"]] == 0:
            rs.append("no purchase of this item by the reviewer on record")
        out.append(rs)
    return out


def _n(count: float, noun: str) -> str:
    c = int(count)
    return f"{c} {noun}" if c == 1 else f"{c} {noun}s"


def _empty() -> pl.DataFrame:
    schema: dict[str, Any] = {"event_id": pl.Utf8, "ts": pl.Datetime("us"), "user_id": pl.Utf8, "item_id": pl.Utf8}
    schema.update({c: pl.Float64 for c in CONTEXT_FEATURES})
    schema.update({"context_score": pl.Float64, "reasons": pl.List(pl.Utf8)})
    return pl.DataFrame(schema=schema)
