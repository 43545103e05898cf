"""Reusable event flows: an order with coupon and payment, its shipment, a review.

Normal shoppers and abusers go through the same code, so an abusive order looks like an order; what
differs is who places it, from where, how fast, and what follows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from shopguard.events.simulate import text as textgen
from shopguard.events.simulate.catalog import CARRIERS
from shopguard.events.simulate.world import DAY, HOUR, MINUTE, World

# code -> (percent off, cap, minimum spend)
COUPONS: dict[str, tuple[float, float, float]] = {
    "SAVE10": (0.10, 20.0, 0.0),
    "SPRING8": (0.08, 15.0, 0.0),
    "FLASH5": (0.0, 5.0, 30.0),
    "VIP20": (0.20, 40.0, 50.0),
    "FREESHIP": (0.0, 6.0, 0.0),
    "WELCOME15": (0.15, 25.0, 0.0),  # first order of a new account only
}
REGULAR_COUPONS = ("SAVE10", "SPRING8", "FLASH5", "VIP20", "FREESHIP")
PAY_FAIL_REASONS = ("insufficient_funds", "card_declined", "3ds_failed", "expired_card", "do_not_honor")
NONE = -1


def discount(code: np.ndarray, gross: np.ndarray) -> np.ndarray:
    """Coupon value for each order (0 where no coupon)."""
    out = np.zeros(gross.size)
    for c, (pct, cap, min_spend) in COUPONS.items():
        m = code == c
        if not m.any():
            continue
        val = np.minimum(gross[m] * pct, cap) if pct > 0 else np.full(int(m.sum()), cap)
        out[m] = np.where(gross[m] >= min_spend, val, 0.0)
    return np.round(np.minimum(out, gross * 0.9), 2)


@dataclass
class Orders:
    """What ``place_orders`` produced, row-aligned with its inputs."""

    order: np.ndarray
    order_ev: np.ndarray
    coupon_ev: np.ndarray  # -1 where no coupon
    pay_fail_ev: np.ndarray  # -1 where the first attempt did not fail
    pay_ev: np.ndarray  # successful payment, -1 if abandoned
    t_order: np.ndarray
    t_paid: np.ndarray  # NaN if never paid
    amount: np.ndarray
    merchant: np.ndarray
    category: np.ndarray


def place_orders(
    world: World,
    rng: np.random.Generator,
    *,
    user: np.ndarray,
    session: np.ndarray,
    device: np.ndarray,
    ip: np.ndarray,
    geo: np.ndarray,
    t: np.ndarray,
    item: np.ndarray,
    quantity: np.ndarray,
    instrument: np.ndarray,
    address: np.ndarray,
    coupon: np.ndarray | None = None,
    pay_fail: float = 0.03,
    pay_delay_s: float = 40.0,
    abandon: float = 0.15,
) -> Orders:
    """Order events, coupon uses and payments (a failed try is usually followed by a success)."""
    n = t.size
    cat = world.catalog
    order = world.alloc("order", n)
    merchant = cat.item_merchant[item]
    category = cat.item_category[item]
    gross = np.round(world.prices.price_at(item, t) * quantity, 2)
    code = coupon if coupon is not None else np.full(n, None, dtype=object)
    disc = discount(code, gross)
    amount = np.round(np.maximum(gross - disc, 0.01), 2)
    common = dict(user=user, session=session, device=device, ip=ip, geo=geo)
    order_ev = world.events.add(
        "order",
        t,
        **common,
        item=item,
        merchant=merchant,
        category=category,
        order=order,
        amount=amount,
        quantity=quantity,
        address=address,
        currency=world.config.currency,
    )
    coupon_ev = np.full(n, NONE, dtype=np.int64)
    has = np.array([c is not None for c in code], dtype=bool)
    if has.any():
        idx = np.flatnonzero(has)
        coupon_ev[idx] = world.events.add(
            "coupon_use",
            t[idx] + rng.uniform(0.5, 3.0, idx.size),
            **{k: v[idx] for k, v in common.items()},
            order=order[idx],
            merchant=merchant[idx],
            coupon_code=code[idx].astype(str),
            amount=disc[idx],
            currency=world.config.currency,
        )
    t_pay = t + 3.0 + rng.exponential(pay_delay_s, n)
    fail = rng.random(n) < pay_fail
    pay_fail_ev = np.full(n, NONE, dtype=np.int64)
    if fail.any():
        idx = np.flatnonzero(fail)
        pay_fail_ev[idx] = world.events.add(
            "pay",
            t_pay[idx],
            **{k: v[idx] for k, v in common.items()},
            order=order[idx],
            merchant=merchant[idx],
            amount=amount[idx],
            status="failure",
            instrument=instrument[idx],
            currency=world.config.currency,
            reason=rng.choice(PAY_FAIL_REASONS, idx.size, p=[0.35, 0.3, 0.15, 0.1, 0.1]),
        )
        t_pay[idx] += 20.0 + rng.exponential(90.0, idx.size)
    gave_up = fail & (rng.random(n) < abandon)
    ok = ~gave_up
    pay_ev = np.full(n, NONE, dtype=np.int64)
    pay_ev[ok] = world.events.add(
        "pay",
        t_pay[ok],
        **{k: v[ok] for k, v in common.items()},
        order=order[ok],
        merchant=merchant[ok],
        amount=amount[ok],
        status="success",
        instrument=instrument[ok],
        currency=world.config.currency,
    )
    if gave_up.any():  # unpaid orders are cancelled by the shop after half an hour
        idx = np.flatnonzero(gave_up)
        world.events.add(
            "cancel",
            t_pay[idx] + 30 * MINUTE,
            user=user[idx],
            order=order[idx],
            merchant=merchant[idx],
            reason="payment_timeout",
        )
    t_paid = np.where(ok, t_pay, np.nan)
    return Orders(order, order_ev, coupon_ev, pay_fail_ev, pay_ev, t, t_paid, amount, merchant, category)


@dataclass
class Shipments:
    delivered_t: np.ndarray  # NaN: lost or not shipped
    promised_t: np.ndarray
    late: np.ndarray
    lost: np.ndarray


def ship(
    world: World,
    rng: np.random.Generator,
    *,
    orders: Orders,
    idx: np.ndarray,
    user: np.ndarray,
    item: np.ndarray,
    address: np.ndarray,
    fast_fake: bool = False,
) -> Shipments:
    """Shipment events for orders ``idx`` (paid ones): shipped, in transit, maybe delayed, delivered.

    ``fast_fake`` ships an empty parcel the same day (brushing: the tracking number is all that matters).
    Logistics disruptions registered in ``world.disruptions`` turn some shipments lost or very late and
    label them.
    """
    n = idx.size
    merchant = orders.merchant[idx]
    carrier = world.catalog.merchant_carrier[merchant]
    promise = np.array([c[1] for c in CARRIERS])[carrier]
    spread = np.array([c[2] for c in CARRIERS])[carrier]
    t_paid = orders.t_paid[idx]
    t_ship = t_paid + (rng.uniform(0.5, 3, n) if fast_fake else rng.lognormal(np.log(14.0), 0.6, n)) * HOUR
    promised = orders.t_order[idx] + (promise + 1.0) * DAY
    transit = promise * np.exp(rng.normal(-0.3, spread, n)) * DAY
    if fast_fake:
        transit = rng.uniform(0.8, 1.5, n) * DAY
    delivered = t_ship + transit
    lost = np.zeros(n, dtype=bool)
    anomalous = np.zeros(n, dtype=bool)
    # Incidents draw from their own stream (keyed by the batch's first order time, itself a draw of the
    # caller) so that switching the logistics scenario off leaves every other draw unchanged.
    drng = np.random.default_rng([world.config.seed, 0x1065, int(orders.t_order[idx[0]] * 1000) if n else 0])
    for d in world.disruptions:
        m = (t_ship >= d.t0) & (t_ship < d.t1) & ~anomalous
        m &= np.isin(merchant, d.merchants)
        if d.carrier >= 0:
            m &= carrier == d.carrier
        m &= drng.random(n) < d.share
        if d.mode == "lost":
            lost |= m
        else:
            delivered[m] = promised[m] + drng.uniform(4, 15, int(m.sum())) * DAY
        anomalous |= m
    late = (delivered > promised) | lost
    base = dict(
        order=orders.order[idx], user=user, merchant=merchant, item=item, carrier=carrier, promised_t=promised
    )
    ev = world.events
    ev.add("shipment", t_ship, **base, status="shipped", address=address)
    mid = rng.random(n) < 0.6
    ev.add(
        "shipment",
        (t_ship + 0.35 * (np.minimum(delivered, promised) - t_ship))[mid],
        **{k: v[mid] for k, v in base.items()},
        status="in_transit",
    )
    delayed_t = promised + rng.uniform(1, 8, n) * HOUR
    delayed_keys = ev.add(
        "shipment", delayed_t[late], **{k: v[late] for k, v in base.items()}, status="delayed"
    )
    ok = ~lost
    delivered_keys = ev.add(
        "shipment",
        delivered[ok],
        **{k: v[ok] for k, v in base.items()},
        status="delivered",
        actual_t=delivered[ok],
    )
    lost_t = promised + rng.uniform(1, 4, n) * DAY
    lost_keys = ev.add("shipment", lost_t[lost], **{k: v[lost] for k, v in base.items()}, status="lost")
    if anomalous.any():
        # Known once the carrier confirms the loss (days after 'lost') or the parcel finally arrives.
        known = np.where(
            lost, lost_t + drng.uniform(1, 7, n) * DAY, delivered + drng.uniform(0.5, 3, n) * DAY
        )
        scen = "logistics_anomaly"
        lab = world.labels
        lab.add("event", delayed_keys[anomalous[late]], scen, known[late][anomalous[late]])
        lab.add("event", delivered_keys[anomalous[ok]], scen, known[ok][anomalous[ok]])
        lab.add("event", lost_keys[anomalous[lost]], scen, known[lost][anomalous[lost]])
        lab.add("order", orders.order[idx][anomalous], scen, known[anomalous])
        lab.add("merchant", merchant[anomalous], scen, known[anomalous] + 5 * DAY)
    return Shipments(np.where(lost, np.nan, delivered), promised, late, lost)


def post_reviews(
    world: World,
    rng: np.random.Generator,
    *,
    user: np.ndarray,
    t: np.ndarray,
    item: np.ndarray,
    rating: np.ndarray,
    lang: np.ndarray,
    kind: str,
    verified: np.ndarray | bool,
    order: np.ndarray | None = None,
    device: np.ndarray | None = None,
    ip: np.ndarray | None = None,
    geo: np.ndarray | None = None,
    session: np.ndarray | None = None,
) -> np.ndarray:
    """Review events; ``kind`` is genuine, paid, brushing or attack (the text pool it draws from)."""
    cat = world.catalog.item_category[item]
    if kind == "genuine":
        texts = [
            textgen.genuine_review(rng, int(r), int(c), int(lg))
            for r, c, lg in zip(rating, cat, lang, strict=True)
        ]
    else:
        texts = [textgen.farm_review(rng, kind, int(c), int(lg)) for c, lg in zip(cat, lang, strict=True)]
    verified = np.broadcast_to(np.asarray(verified, dtype=bool), t.shape)
    attrs = np.where(
        verified, json.dumps({"verified_purchase": True}), json.dumps({"verified_purchase": False})
    )
    return world.events.add(
        "review",
        t,
        user=user,
        item=item,
        merchant=world.catalog.item_merchant[item],
        category=cat,
        order=order,
        rating=rating,
        text=texts,
        language=np.where(lang == 1, "zh", "en"),
        attrs=attrs,
        device=device,
        ip=ip,
        geo=geo,
        session=session,
    )


def chats(
    world: World,
    rng: np.random.Generator,
    *,
    user: np.ndarray,
    t: np.ndarray,
    item: np.ndarray,
    lang: np.ndarray,
    intent: np.ndarray | str,
    order: np.ndarray | None = None,
    device: np.ndarray | None = None,
    ip: np.ndarray | None = None,
    geo: np.ndarray | None = None,
) -> np.ndarray:
    """Customer-service chat messages from users."""
    intents = np.broadcast_to(np.asarray(intent, dtype=object), t.shape)
    cat = world.catalog.item_category[item]
    texts = [textgen.chat(rng, str(i), int(c), int(lg)) for i, c, lg in zip(intents, cat, lang, strict=True)]
    return world.events.add(
        "chat",
        t,
        user=user,
        item=item,
        merchant=world.catalog.item_merchant[item],
        order=order,
        text=texts,
        language=np.where(lang == 1, "zh", "en"),
        device=device,
        ip=ip,
        geo=geo,
        attrs=[json.dumps({"channel": "in_app"})] * t.size,
    )


def genuine_ratings(world: World, rng: np.random.Generator, item: np.ndarray, late: np.ndarray) -> np.ndarray:
    """Ratings around each item's quality; late parcels cost a star now and then."""
    q = world.catalog.item_quality[item] - 0.6 * late
    return np.clip(np.rint(q + rng.normal(0, 0.9, item.size)), 1, 5).astype(np.int64)
