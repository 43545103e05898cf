"""The shop simulator: determinism, schema, labels, shares and the realism of normal behaviour."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shopguard.events.schema import COLUMN_NAMES, EVENT_TYPES, check_record, parse_event
from shopguard.events.simulate import SCENARIOS, SimulatedShop, SimulationConfig, simulate_shop
from shopguard.events.simulate.personas import PERSONA_NAMES

SMALL = SimulationConfig(users=400, days=8, seed=3)


@pytest.fixture(scope="module")
def shop() -> SimulatedShop:
    return simulate_shop(SMALL)


@pytest.fixture(scope="module")
def event_labels(shop: SimulatedShop) -> pl.DataFrame:
    """Events joined with their (event-level) scenario; null scenario = normal."""
    lab = shop.labels.filter(pl.col("entity_kind") == "event").select(
        pl.col("entity_id").alias("event_id"), "scenario", "labeled_at"
    )
    return shop.events.join(lab, on="event_id", how="left")


def test_same_seed_gives_identical_events_and_files(shop: SimulatedShop, tmp_path: Path) -> None:
    again = simulate_shop(SMALL)
    assert shop.events.equals(again.events)
    assert shop.labels.equals(again.labels)
    a, b = shop.write(tmp_path / "a"), again.write(tmp_path / "b")
    for x, y in zip(a, b, strict=True):
        assert hashlib.sha256(x.read_bytes()).digest() == hashlib.sha256(y.read_bytes()).digest()


def test_other_seed_gives_other_events(shop: SimulatedShop) -> None:
    other = simulate_shop(SMALL.model_copy(update={"seed": 4}))
    assert not shop.events.equals(other.events)
    # Ids carry a config tag, so two simulations can share a store without clashing.
    assert not set(shop.events["event_id"]) & set(other.events["event_id"])


def test_columns_types_order_and_ids(shop: SimulatedShop) -> None:
    ev = shop.events
    assert tuple(ev.columns) == COLUMN_NAMES
    assert ev["event_id"].n_unique() == ev.height
    assert ev["ts"].is_sorted()
    assert ev["ts"].min() >= SMALL.start
    assert (ev["ts"].max() - SMALL.start).total_seconds() < SMALL.days * 86_400
    assert ev.schema["ts"] == pl.Datetime("us") and ev.schema["amount"] == pl.Float64


def test_every_event_type_present(shop: SimulatedShop) -> None:
    assert set(shop.events["type"].unique()) == set(EVENT_TYPES)


def test_events_pass_schema_rules(shop: SimulatedShop) -> None:
    bad = [(r["type"], p) for r in shop.events.iter_rows(named=True) for p in check_record(r)]
    assert bad == []
    # And the pydantic model accepts a sample of every type (attrs as an object, as the API receives it).
    sample = shop.events.group_by("type", maintain_order=True).head(3)
    for rec in sample.iter_rows(named=True):
        rec["attrs"] = json.loads(rec["attrs"]) if rec["attrs"] else {}
        assert parse_event(rec).event_id == rec["event_id"]


def test_every_scenario_labelled_on_events_and_actors(shop: SimulatedShop) -> None:
    lab = shop.labels
    assert set(lab["scenario"].unique()) == set(SCENARIOS)
    per = lab.group_by("scenario", "entity_kind").len()
    kinds = {(s, k) for s, k, _ in per.iter_rows()}
    for scen in SCENARIOS:
        assert (scen, "event") in kinds, scen
    for scen in (
        "account_takeover",
        "card_testing",
        "brushing",
        "bot_ordering",
        "coupon_abuse",
        "fake_review",
        "refund_abuse",
    ):
        assert (scen, "user") in kinds, scen
    for scen in ("brushing", "price_anomaly", "logistics_anomaly"):
        assert (scen, "merchant") in kinds, scen
    assert (lab["label"] == 1).all() and (lab["source"] == "simulator").all()


def test_labels_point_at_existing_entities(shop: SimulatedShop) -> None:
    ev, lab = shop.events, shop.labels
    columns = {"event": "event_id", "user": "user_id", "order": "order_id", "merchant": "merchant_id"}
    for kind, col in columns.items():
        ids = lab.filter(pl.col("entity_kind") == kind)["entity_id"]
        assert ids.is_in(ev[col].implode()).all(), kind
    assert lab.select("entity_kind", "entity_id", "scenario").is_unique().all()


def test_labels_known_after_the_event(event_labels: pl.DataFrame, shop: SimulatedShop) -> None:
    pos = event_labels.filter(pl.col("scenario").is_not_null())
    assert (pos["labeled_at"] >= pos["ts"]).all()
    # Delays are realistic: not instantaneous, and chargebacks can take weeks.
    delay_days = (pos["labeled_at"] - pos["ts"]).dt.total_seconds() / 86_400
    assert delay_days.median() > 0.5
    assert delay_days.max() > 7
    first_seen = shop.events.group_by("user_id").agg(pl.col("ts").min().alias("first"))
    users = shop.labels.filter(pl.col("entity_kind") == "user").join(
        first_seen, left_on="entity_id", right_on="user_id"
    )
    assert (users["labeled_at"] >= users["first"]).all()


def test_abuse_is_a_minority(event_labels: pl.DataFrame) -> None:
    shares = event_labels.group_by("scenario").len().with_columns(pl.col("len") / event_labels.height)
    per = dict(shares.iter_rows())
    assert per[None] > 0.9
    for scen in SCENARIOS:
        assert 0 < per[scen] < 0.03, (scen, per[scen])


@pytest.mark.slow
def test_default_rates_give_enough_positives_per_scenario() -> None:
    """At the documented size (2,000 users x 14 days) each scenario has at least ~30 positive events."""
    shop = simulate_shop(SimulationConfig(users=2000, days=14, seed=7))
    per = shop.labels.filter(pl.col("entity_kind") == "event").group_by("scenario").len()
    counts = dict(per.iter_rows())
    assert all(counts.get(s, 0) >= 30 for s in SCENARIOS), counts
    assert sum(counts.values()) < 0.02 * shop.events.height


def test_no_label_leaks_into_events(shop: SimulatedShop) -> None:
    ev = shop.events
    keys = set()
    for a in ev["attrs"].drop_nulls().unique():
        keys |= set(json.loads(a))
    assert keys <= {"verified_purchase", "channel"}
    cols = ("text", "reason", "attrs", "email", "status", "channel", "coupon_code")
    text = ev.select(pl.concat_str([pl.col(c).fill_null("") for c in cols], separator=" ").str.to_lowercase())
    text = text.to_series()
    for word in (*SCENARIOS, *PERSONA_NAMES, "fraud", "fake_", "abuse", "bot_"):
        assert not text.str.contains(word, literal=True).any(), word
    # Ids are opaque: an abuser's account id looks like anyone else's.
    assert ev["user_id"].drop_nulls().str.contains(r"^u\d{10}$").all()


def test_card_testing_payments_mostly_failed_and_small(event_labels: pl.DataFrame) -> None:
    pays = event_labels.filter(pl.col("type") == "pay")
    ct = pays.filter(pl.col("scenario") == "card_testing")
    normal = pays.filter(pl.col("scenario").is_null())
    assert (ct["status"] == "failure").mean() > 0.6
    assert ct["amount"].median() < 5
    assert (normal["status"] == "failure").mean() < 0.1
    assert normal["amount"].median() > 10
    # Many cards from one device.
    per_device = ct.group_by("device_id").agg(pl.col("payment_instrument").n_unique())
    assert per_device["payment_instrument"].min() >= 5


def test_brushing_ring_shares_devices_and_reviews_five_stars(event_labels: pl.DataFrame) -> None:
    br = event_labels.filter(pl.col("scenario") == "brushing")
    accounts_per_device = br.group_by("device_id").agg(pl.col("user_id").n_unique())["user_id"]
    assert accounts_per_device.mean() >= 2
    assert br["merchant_id"].drop_nulls().n_unique() == 1  # one ring, one merchant at this size
    reviews = br.filter(pl.col("type") == "review")
    assert reviews.height > 0 and (reviews["rating"] >= 4).all()
    # Boilerplate: few distinct texts per review.
    assert reviews["text"].n_unique() <= max(6, reviews.height // 2)


def test_bot_orders_land_within_seconds_of_the_drop(event_labels: pl.DataFrame) -> None:
    bots = event_labels.filter((pl.col("scenario") == "bot_ordering") & (pl.col("type") == "order")).sort(
        "ts"
    )
    span = (bots["ts"].max() - bots["ts"].min()).total_seconds()
    assert bots.height >= 8 and span < 120
    gaps = bots["ts"].diff().drop_nulls().dt.total_milliseconds() / 1000
    assert gaps.median() < 2.0
    assert bots["item_id"].n_unique() == 1
    ips = event_labels.filter(pl.col("scenario") == "bot_ordering")["ip"].drop_nulls()
    assert ips.str.split(".").list.slice(0, 2).list.join(".").n_unique() == 1  # one hosting block


def test_account_takeover_new_device_then_fast_orders(event_labels: pl.DataFrame) -> None:
    ato = event_labels.filter(pl.col("scenario") == "account_takeover")
    normal = event_labels.filter(pl.col("scenario").is_null())
    victim_devices = set(
        normal.filter(pl.col("user_id").is_in(ato["user_id"].implode()))["device_id"].drop_nulls()
    )
    assert not set(ato["device_id"].drop_nulls()) & victim_devices
    assert (ato.filter(pl.col("type") == "login")["status"] == "failure").sum() >= 2
    assert ato.filter(pl.col("type").is_in(["password_change", "address_change"])).height >= 1
    ato_orders = ato.filter(pl.col("type") == "order")["amount"]
    assert ato_orders.median() > normal.filter(pl.col("type") == "order")["amount"].median()


def test_coupon_farm_shares_ip_and_coupon(event_labels: pl.DataFrame) -> None:
    cp = event_labels.filter(pl.col("scenario") == "coupon_abuse")
    uses = cp.filter(pl.col("type") == "coupon_use")
    assert uses.height >= 5 and uses["coupon_code"].n_unique() == 1
    assert cp["ip"].drop_nulls().n_unique() == 1
    assert cp.filter(pl.col("type") == "signup").height == cp["user_id"].n_unique()


def test_fake_reviews_extreme_and_unverified(event_labels: pl.DataFrame) -> None:
    fr = event_labels.filter((pl.col("scenario") == "fake_review") & (pl.col("type") == "review"))
    genuine = event_labels.filter(pl.col("scenario").is_null() & (pl.col("type") == "review"))
    assert fr["rating"].is_in([1, 5]).mean() > 0.8
    assert fr["item_id"].n_unique() == 1  # a burst on one item
    assert (fr["attrs"].str.contains("false")).all()
    assert genuine["attrs"].str.contains("true").mean() > 0.7
    assert genuine["rating"].is_in([1, 5]).mean() < 0.6


def test_price_anomalies_far_from_normal_changes(event_labels: pl.DataFrame) -> None:
    pc = event_labels.filter(pl.col("type") == "price_change").with_columns(
        (pl.col("new_price") / pl.col("old_price")).log().abs().alias("jump")
    )
    anomalous = pc.filter(pl.col("scenario") == "price_anomaly")
    assert anomalous.height >= 1 and (anomalous["jump"] > np.log(5)).all()
    # Normal changes, leaving out the merchant's corrections of an anomalous price.
    fixes = anomalous.select("item_id", pl.col("new_price").alias("old_price"), pl.lit(True).alias("fix"))
    normal = pc.filter(pl.col("scenario").is_null()).join(fixes, on=["item_id", "old_price"], how="left")
    normal = normal.filter(pl.col("fix").is_null())
    assert normal["jump"].quantile(0.95) < np.log(2)


def test_logistics_anomalies_are_lost_or_very_late(event_labels: pl.DataFrame) -> None:
    ship = event_labels.filter(pl.col("type") == "shipment")
    bad = ship.filter(pl.col("scenario") == "logistics_anomaly")
    assert bad["status"].is_in(["delayed", "lost", "delivered"]).all()
    late_days = bad.filter(pl.col("status") == "delivered").select(
        ((pl.col("actual_ts") - pl.col("promised_ts")).dt.total_seconds() / 86_400).alias("d")
    )["d"]
    assert (late_days > 3).all()
    normal = ship.filter(pl.col("scenario").is_null())
    assert not (normal["status"] == "lost").any()
    normal_deliv = normal.filter(pl.col("status") == "delivered")
    assert (normal_deliv["actual_ts"] > normal_deliv["promised_ts"]).mean() < 0.2


def test_refund_abusers_claim_far_more_than_others(shop: SimulatedShop) -> None:
    ev = shop.events
    abusers = shop.labels.filter((pl.col("entity_kind") == "user") & (pl.col("scenario") == "refund_abuse"))
    per_user = (
        ev.group_by("user_id")
        .agg(
            (pl.col("type") == "order").sum().alias("orders"),
            (pl.col("type") == "refund").sum().alias("refunds"),
        )
        .filter(pl.col("orders") > 0)
    )
    is_abuser = per_user["user_id"].is_in(abusers["entity_id"].implode())
    rate_abuse = per_user.filter(is_abuser).select(pl.col("refunds").sum() / pl.col("orders").sum()).item()
    rate_other = per_user.filter(~is_abuser).select(pl.col("refunds").sum() / pl.col("orders").sum()).item()
    assert rate_abuse > 3 * rate_other


def test_normal_behaviour_is_realistic(event_labels: pl.DataFrame, shop: SimulatedShop) -> None:
    normal = event_labels.filter(pl.col("scenario").is_null())
    views = normal.filter(pl.col("type") == "view")
    # Zipf: the top 10% of items take a large share of views.
    per_item = views.group_by("item_id").len().sort("len", descending=True)["len"].to_numpy()
    assert per_item[: max(1, per_item.size // 10)].sum() / per_item.sum() > 0.35
    # Diurnal rhythm: evenings busier than the small hours.
    hours = views["ts"].dt.hour()
    assert (hours.is_between(19, 22)).sum() > 3 * (hours.is_between(2, 5)).sum()
    # Category price levels: phones cost more than groceries.
    orders = normal.filter(pl.col("type") == "order")
    med = dict(orders.group_by("category").agg(pl.col("amount").median()).iter_rows())
    assert med["phones"] > 5 * med["grocery"]
    # Households share devices legitimately.
    shared = normal.group_by("device_id").agg(pl.col("user_id").n_unique())
    assert (shared["user_id"] > 1).sum() > 5
    # Reviews in two languages with varied wording.
    reviews = normal.filter(pl.col("type") == "review")
    assert set(reviews["language"].unique()) == {"en", "zh"}
    assert reviews["text"].n_unique() > 0.6 * reviews.height
    chats = normal.filter(pl.col("type") == "chat")
    assert set(chats["language"].unique()) == {"en", "zh"}
    # Shipments carry carrier and promised time.
    ship = normal.filter(pl.col("type") == "shipment")
    assert ship["carrier"].null_count() == 0 and ship["promised_ts"].null_count() == 0


@pytest.mark.parametrize(
    ("update", "field"),
    [
        ({"users": 5}, "users"),
        ({"days": 0}, "days"),
        ({"rates": {"card_testing": -1}}, "rates"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_config_names_the_field(update: dict, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        SimulationConfig(**update)
    assert field in str(err.value)


def test_scenario_can_be_switched_off() -> None:
    cfg = SimulationConfig(users=200, days=4, seed=1, rates={"card_testing": 0.0, "brushing": 0.0})
    shop = simulate_shop(cfg)
    scen = set(shop.labels["scenario"].unique())
    assert "card_testing" not in scen and "brushing" not in scen
    assert "account_takeover" in scen


def test_switching_a_scenario_off_leaves_the_others_alone() -> None:
    """Each scenario draws from its own stream: removing fake reviews changes no other scenario."""
    base = SimulationConfig(users=300, days=6, seed=11)

    def counts(cfg: SimulationConfig) -> dict[tuple[str, str], int]:
        lab = simulate_shop(cfg).labels.group_by("scenario", "entity_kind").len()
        return {(s, k): n for s, k, n in lab.iter_rows() if s != "fake_review"}

    assert counts(base) == counts(
        base.model_copy(update={"rates": base.rates.model_copy(update={"fake_review": 0})})
    )


@settings(max_examples=40, deadline=None)
@given(users=st.integers(-5, 6_000_000), days=st.integers(-2, 400), rate=st.floats(-1, 5, allow_nan=False))
def test_config_accepts_exactly_the_documented_ranges(users: int, days: int, rate: float) -> None:
    ok = 20 <= users <= 5_000_000 and 1 <= days <= 366 and rate >= 0
    try:
        cfg = SimulationConfig(users=users, days=days, rates={"brushing": rate})
    except ValidationError:
        assert not ok
        return
    assert ok
    # Every enabled scenario happens at least once, and more users never means fewer incidents.
    assert cfg.incidents("brushing") == (0 if rate == 0 else max(1, round(rate * users * days / 1000)))
    bigger = cfg.model_copy(update={"users": users + 1000})
    assert bigger.incidents("brushing") >= cfg.incidents("brushing")


def test_to_store_is_idempotent(shop: SimulatedShop, store) -> None:  # noqa: ANN001 - conftest fixture
    added = shop.to_store(store)
    assert added == (shop.events.height, shop.labels.height)
    assert shop.to_store(store) == (0, 0)
    stats = store.stats()
    assert stats["events"] == shop.events.height
    scen = {r["scenario"] for r in stats["labels_by_scenario"]}
    assert scen == set(SCENARIOS)
