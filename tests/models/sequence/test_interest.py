"""Next-interest prediction: point-in-time windows at a cutoff, rankers, hit rates and a quality floor."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shopguard.errors import DataError, ModelError
from shopguard.models.sequence.cutoffs import user_windows
from shopguard.models.sequence.interest import (
    InterestScores,
    NextInterest,
    PopularInterest,
    UserFrequentInterest,
    UserRecentInterest,
    engagement_counts,
    hit_rates,
    next_engagement,
    users_at,
)
from shopguard.models.sequence.network import FoundationModel

from .heads_data import churned_shop, day, pretrained_dir


@pytest.fixture(scope="module")
def events() -> pl.DataFrame:
    return churned_shop()[0]


@pytest.fixture(scope="module")
def model() -> FoundationModel:
    return FoundationModel.load(pretrained_dir())


@pytest.fixture(scope="module")
def test_rows(model: FoundationModel, events: pl.DataFrame) -> pl.DataFrame:
    return user_windows(model, events, [day(d) for d in range(14, 21)]).frame()


def test_windows_end_before_the_cutoff(model: FoundationModel, events: pl.DataFrame) -> None:
    win = user_windows(model, events, [day(10), day(12)])
    assert len(win) == win.batch.tokens.shape[0] > 0
    assert (win.last_ts < win.cutoffs).all() and (win.gap_s > 0).all()
    # The last event before the cutoff is each user's latest one: nothing in between.
    f = win.frame().head(20)
    for u, c, last in f.select("user_id", "cutoff", "last_ts").iter_rows():
        later = events.filter((pl.col("user_id") == u) & (pl.col("ts") > last) & (pl.col("ts") < c))
        assert later.height == 0


def test_windows_ignore_later_events(model: FoundationModel, events: pl.DataFrame) -> None:
    cut = day(10)
    a = user_windows(model, events, cut)
    b = user_windows(model, events.filter(pl.col("ts") < cut), cut)
    assert np.array_equal(a.batch.tokens, b.batch.tokens) and np.array_equal(a.user_ids, b.user_ids)


def test_named_user_without_history_is_refused(model: FoundationModel, events: pl.DataFrame) -> None:
    with pytest.raises(DataError, match="no events before"):
        user_windows(model, events, day(10), user_ids=["nobody"])


def test_next_engagement_and_counts_are_point_in_time(events: pl.DataFrame) -> None:
    rows = users_at(events, day(10)).head(30)
    targets = next_engagement(events, "category", rows, 7)
    u, c = rows.row(0)
    first = (events.filter((pl.col("user_id") == u) & (pl.col("ts") >= c) & pl.col("type").is_in(["view", "add_to_cart", "order"])
                           & pl.col("category").is_not_null()).sort("ts").head(1))
    expected = first["category"][0] if first.height and first["ts"][0] <= day(17) else None
    assert targets[0] == expected
    counts = engagement_counts(events, "category", rows, ["books", "toys", "fashion"])
    later = engagement_counts(events.filter(pl.col("ts") < day(10)), "category", rows, ["books", "toys", "fashion"])
    assert np.array_equal(counts, later)  # events after the cutoff never count
    decayed = engagement_counts(events, "category", rows, ["books", "toys", "fashion"], half_life=2.0)
    assert (decayed <= counts + 1e-6).all()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0.01, 1.0), min_size=3, max_size=3), st.sampled_from(["a", "b", "c", None]))
def test_hits_follow_the_ranking(p: list[float], target: str | None) -> None:
    s = InterestScores(np.array(["u"], dtype=object), np.array([np.datetime64("2024-03-01")]), ["a", "b", "c"],
                       np.array([p]))
    h1 = s.hits([target], 1)[0]
    if target is None:
        assert np.isnan(h1)
    else:
        assert h1 == float(s.top(1)[0][0][0] == target)
        assert s.hits([target], 3)[0] == 1.0


@pytest.mark.parametrize("field", ["category", "merchant"])
def test_rankers_beat_popularity(model: FoundationModel, events: pl.DataFrame, test_rows: pl.DataFrame,
                                 field: str) -> None:
    targets = next_engagement(events, field, test_rows, 7)
    assert sum(t is not None for t in targets) > 100
    pop = hit_rates(PopularInterest(field).fit(events, day(14)).predict_rows(events, test_rows), targets)
    own = hit_rates(UserFrequentInterest(field).fit(events, day(14)).predict_rows(events, test_rows), targets)
    recent = hit_rates(UserRecentInterest(field).fit(events, day(14)).predict_rows(events, test_rows), targets)
    # Fine-tuned on cutoffs whose targets end by day 14, the start of the test cutoffs.
    ft = NextInterest(model, field, method="finetuned").fit(events, [day(d) for d in range(3, 8)])
    assert ft.until_ <= day(14)
    tuned = hit_rates(ft.predict_rows(events, test_rows), targets)
    zero = hit_rates(NextInterest(model, field).fit(events, day(7)).predict_rows(events, test_rows), targets)
    # Users stick to a favourite category: their own history is worth far more than popularity.
    assert own["accuracy"] > pop["accuracy"] + 0.2 and recent["accuracy"] > pop["accuracy"] + 0.1
    assert tuned["accuracy"] > pop["accuracy"] + 0.15 and tuned["hit_at_5"] >= pop["hit_at_5"]
    assert zero["hit_at_5"] >= pop["hit_at_5"] - 0.05  # zero-shot from a 3-epoch toy model: at least popular


def test_zero_shot_names_real_values(model: FoundationModel, events: pl.DataFrame) -> None:
    ni = NextInterest(model, "merchant").fit(events, day(7))
    users = users_at(events, day(14))["user_id"].head(3).to_list()
    scores = ni.predict_proba(events, day(14), user_ids=users)
    assert list(scores.user_ids) == users
    assert np.allclose(scores.probs.sum(axis=1), 1.0)
    known = set(events["merchant_id"].drop_nulls().to_list())
    assert all(v in known for v, _ in scores.top(5)[0])
    frame = scores.frame(2)
    assert frame.height == 6 and frame["rank"].to_list()[:2] == [1, 2]


def test_bad_inputs_are_named(model: FoundationModel, events: pl.DataFrame) -> None:
    with pytest.raises(DataError, match="interest field"):
        PopularInterest("colour").fit(events, day(7))
    with pytest.raises(ModelError, match="method"):
        NextInterest(model, method="magic").fit(events, day(7))
    with pytest.raises(ModelError, match="not fitted"):
        PopularInterest().predict_proba(events, day(7))
    with pytest.raises(DataError, match="no engagements"):
        PopularInterest().fit(events, datetime(2000, 1, 1))
