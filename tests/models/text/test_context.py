from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from shopguard.errors import ValidationFailed
from shopguard.models.text.context import ReviewContextConfig, review_context

from .conftest import T0, event


def test_burst_of_templated_reviews_is_flagged(shop: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    events, _ = shop
    ctx = review_context(events)
    assert ctx.height == events.filter(pl.col("type") == "review").height
    fake = ctx.filter(pl.col("user_id").str.starts_with("new"))
    genuine = ctx.filter(pl.col("user_id").str.starts_with("old"))
    last = fake.row(-1, named=True)
    assert last["dup_count"] == 8 and last["dup_accounts"] == 8 and last["dup_max_sim"] > 0.99
    assert last["minhash_dup_count"] == 8
    assert last["item_reviews_burst"] == 8 and last["item_burst_ratio"] > 3
    assert last["rating_deviation"] > 2 and last["verified_purchase"] == 0
    assert last["account_age_days"] < 1
    assert "text 1.00 similar to 8 reviews from 8 accounts this week" in last["reasons"]
    assert fake["context_score"].min() > genuine["context_score"].max() - 0.2
    assert fake["context_score"].mean() > genuine["context_score"].mean() + 0.4
    assert genuine["verified_purchase"].min() == 1


def test_point_in_time_first_copy_sees_nothing_and_future_is_ignored(shop: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    events, _ = shop
    full = review_context(events)
    first = full.filter(pl.col("event_id") == "r_new0").row(0, named=True)
    assert first["dup_count"] == 0 and first["minhash_dup_count"] == 0
    # Dropping everything after a review does not change its signals.
    cutoff = T0 + timedelta(days=20, hours=3)
    early = review_context(events.filter(pl.col("ts") <= cutoff))
    joined = early.join(full, on="event_id", suffix="_full")
    for col in ("dup_count", "minhash_dup_count", "item_reviews_burst", "rating_deviation", "verified_purchase"):
        np.testing.assert_allclose(joined[col].to_numpy(), joined[f"{col}_full"].to_numpy())


def test_same_account_and_ties_do_not_count() -> None:
    t = datetime(2024, 1, 1)
    rows = [event("a", t, "review", "u1", text="same words here", rating=5, item_id="i"),
            event("b", t + timedelta(hours=1), "review", "u1", text="same words here", rating=5, item_id="i"),
            event("c", t + timedelta(hours=1), "review", "u2", text="same words here", rating=5, item_id="i")]
    ctx = review_context(pl.DataFrame(rows)).sort("event_id")
    assert ctx["dup_count"].to_list() == [0, 0, 1]  # b: own account; c: a counts, b (same ts) does not
    assert ctx["dup_accounts"].to_list() == [0, 0, 1]


def test_since_limits_output_not_history(shop: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    events, _ = shop
    since = T0 + timedelta(days=20)
    ctx = review_context(events, reviews_only_since=since)
    assert ctx.height == 9 and ctx["ts"].min() >= since
    assert ctx.filter(pl.col("event_id") == "r_new8")["dup_count"][0] == 8


def test_no_reviews_gives_empty_frame() -> None:
    ctx = review_context(pl.DataFrame([event("s", datetime(2024, 1, 1), "signup", "u")]))
    assert ctx.height == 0 and "reasons" in ctx.columns


@pytest.mark.parametrize(("frame", "match"), [
    (pl.DataFrame({"event_id": ["a"], "type": ["review"]}), "ts"),
    ("not a frame", "events"),
])
def test_bad_input(frame: object, match: str) -> None:
    with pytest.raises(ValidationFailed, match=match):
        review_context(frame)  # type: ignore[arg-type]


def test_config_rejects_unknown_and_bad_values() -> None:
    with pytest.raises(ValueError, match="window_day"):
        ReviewContextConfig(window_day=3)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="sim_threshold"):
        ReviewContextConfig(sim_threshold=1.5)
