"""Building blocks of the simulator: id hashing, grouped sums, coupons, prices, catalogue, text."""

from __future__ import annotations

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from shopguard.events.simulate import SimulationConfig
from shopguard.events.simulate import text as textgen
from shopguard.events.simulate.buffer import EventBuffer, LabelBuffer, finalize, format_ids, mix32
from shopguard.events.simulate.catalog import CATEGORIES, build_catalog
from shopguard.events.simulate.flows import discount
from shopguard.events.simulate.shop import group_cumsum
from shopguard.events.simulate.world import World


@settings(max_examples=50, deadline=None)
@given(
    keys=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=200, unique=True),
    salt=st.integers(0, 2**32),
)
def test_mix32_is_a_bijection(keys: list[int], salt: int) -> None:
    out = mix32(np.array(keys, dtype=np.int64), salt)
    assert len(set(out.tolist())) == len(keys)
    assert (out >= 0).all() and (out < 2**32).all()


def test_format_ids_keeps_nulls_and_distinct_keys() -> None:
    ids = format_ids(pl.Series([3, -1, 0, 3, None]), "u", "abc", "user")
    assert ids[1] is None and ids[4] is None
    assert ids[0] == ids[3] != ids[2]
    assert ids.drop_nulls().str.contains(r"^u\d{10}$").all()


@given(st.lists(st.lists(st.floats(0, 100), min_size=1, max_size=6), min_size=1, max_size=8))
def test_group_cumsum_restarts_per_group(groups: list[list[float]]) -> None:
    values = np.array([v for g in groups for v in g])
    counts = np.array([len(g) for g in groups])
    expected = np.concatenate([np.cumsum(g) for g in groups])
    assert np.allclose(group_cumsum(values, counts), expected)


def test_discount_rules() -> None:
    code = np.array(["SAVE10", "FLASH5", "FLASH5", None, "VIP20", "WELCOME15"], dtype=object)
    gross = np.array([300.0, 40.0, 20.0, 50.0, 40.0, 10.0])
    d = discount(code, gross)
    assert d.tolist() == [20.0, 5.0, 0.0, 0.0, 0.0, 1.5]  # caps, minimum spend, no coupon


def test_catalogue_prices_follow_categories_and_zipf() -> None:
    rng = np.random.default_rng(0)
    cat = build_catalog(rng, 60, 3000)
    med = {
        name: np.median(cat.item_price[cat.item_category == i]) for i, (name, *_rest) in enumerate(CATEGORIES)
    }
    assert med["computers"] > med["electronics"] > med["books"] > med["grocery"]
    draws = cat.sample_items(rng, np.zeros(20_000, dtype=np.int64))
    assert (cat.item_category[draws] == 0).all()
    counts = np.sort(np.bincount(draws))[::-1]
    assert counts[:10].sum() > 0.3 * counts.sum()  # a handful of items take a big share


def test_price_book_follows_changes_and_overlays() -> None:
    world = World(SimulationConfig(users=50, days=3, seed=1))
    item = np.array([5, 5, 7])
    world.prices.set_changes(item, np.array([100.0, 200.0, 50.0]), np.array([10.0, 12.0, 3.0]))
    world.prices.overlays.append((5, 150.0, 160.0, 0.01))
    base5 = world.catalog.item_price[5]
    q = world.prices.price_at(np.array([5, 5, 5, 5, 7, 8]), np.array([50.0, 120.0, 155.0, 250.0, 60.0, 60.0]))
    assert q.tolist() == [base5, 10.0, 0.01, 12.0, 3.0, world.catalog.item_price[8]]


def test_finalize_sorts_drops_out_of_window_and_maps_labels() -> None:
    ev, lab = EventBuffer(), LabelBuffer()
    k1 = ev.add("view", np.array([30.0, 10.0]), user=np.array([1, 2]), item=np.array([4, 4]))
    k2 = ev.add("login", np.array([20.0, 99_999.0]), user=np.array([1, 1]), status="success")
    lab.add("event", np.array([k1[0], k2[1]]), "account_takeover", 5.0)  # the second event is out of window
    lab.add("user", np.array([1]), "account_takeover", 40.0)
    from datetime import datetime

    events, labels = finalize(ev, lab, start=datetime(2024, 1, 1), horizon_s=1000.0, tag="t")
    assert events["type"].to_list() == ["view", "login", "view"]
    assert events["event_id"].to_list() == ["et-000000000", "et-000000001", "et-000000002"]
    ev_labels = labels.filter(pl.col("entity_kind") == "event")
    assert ev_labels["entity_id"].to_list() == ["et-000000002"]
    # labeled_at is never before the event itself, even when the given delay would say so.
    assert ev_labels["labeled_at"][0] == events["ts"][2]
    assert labels.filter(pl.col("entity_kind") == "user")["entity_id"][0] == events["user_id"][2]


@settings(max_examples=30, deadline=None)
@given(
    rating=st.integers(1, 5),
    category=st.integers(0, len(CATEGORIES) - 1),
    lang=st.integers(0, 1),
    seed=st.integers(0, 1000),
)
def test_review_text_matches_language(rating: int, category: int, lang: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    text = textgen.genuine_review(rng, rating, category, lang)
    has_cjk = any("\u4e00" <= ch <= "\u9fff" for ch in text)
    assert text and has_cjk == bool(lang)
    for kind in ("paid", "brushing", "attack"):
        farm = textgen.farm_review(rng, kind, category, lang)
        assert farm and any("\u4e00" <= ch <= "\u9fff" for ch in farm) == bool(lang)
