"""Card testing: checking a list of stolen card numbers with tiny payments before cashing one out.

Signature: a fresh account on a new device behind a hosting or foreign IP orders something cheap and
then tries 10-40 different cards on it within minutes, at scripted intervals, for a few dollars each;
most attempts fail (declined, wrong CVC, expired); finally one card that worked pays a large order
(gift cards, electronics).
Labels: every event of the attack (signup, login, views, orders, payments), the account and the orders;
known from the processor's alert (1-10 days, half the cases) or the chargebacks (7-45 days).
"""

from __future__ import annotations

import numpy as np

from shopguard.events.simulate import flows
from shopguard.events.simulate.catalog import CATEGORY_NAMES, HIGH_VALUE_CATEGORIES
from shopguard.events.simulate.scenarios._common import Incident, attacker_network, new_accounts
from shopguard.events.simulate.world import DAY, World

SCENARIO = "card_testing"
DECLINES = (
    "card_declined",
    "invalid_cvc",
    "expired_card",
    "do_not_honor",
    "invalid_number",
    "insufficient_funds",
)


def inject(world: World) -> None:
    n = world.config.incidents(SCENARIO)
    if n == 0:
        return
    rng = world.rng(SCENARIO)
    cat = world.catalog
    inc = Incident(SCENARIO)
    t0 = world.random_times(rng, n, lo=0.2 * DAY, hi=world.horizon - 0.2 * DAY)
    device = world.alloc("device", n)
    ip, geo = attacker_network(world, rng, n, risky=0.4, datacenter=0.5)
    known = t0 + np.where(rng.random(n) < 0.5, rng.uniform(1, 10, n), rng.uniform(7, 45, n)) * DAY
    cheap_cats = np.array([CATEGORY_NAMES.index(c) for c in ("grocery", "books", "beauty", "gift_cards")])
    for i in range(n):
        # Testers often rotate accounts on one device so that no single account shows all the failures.
        n_acc = 1 if rng.random() < 0.6 else int(rng.integers(2, 5))
        k = int(rng.integers(10, 41))
        cards = world.alloc("instrument", k)
        ok = rng.random(k) < 0.15
        ok[-1] = ok[-1] or not ok.any()  # at least one card works, else there is nothing to cash out
        split = np.array_split(np.arange(k), n_acc)
        t = t0[i]
        users = []
        for part in split:
            t, user, session = _test_cards(
                world, rng, inc, i, t, device, ip, geo, known, cheap_cats, cards[part], ok[part]
            )
            users.append(user)
            t += rng.uniform(60, 400)
        # Cash-out: a large order on a card that passed, from the last account.
        ctx = dict(user=users[-1], session=session, device=device[i], ip=ip[i], geo=geo[i])
        good = cards[np.flatnonzero(ok)[0]]
        big_item = cat.sample_items(rng, rng.choice(np.array(HIGH_VALUE_CATEGORIES), 1))
        t_big = t + rng.uniform(30, 600)
        inc.event(
            world.events.add(
                "view",
                np.array([t_big - rng.uniform(5, 20)]),
                **ctx,
                item=big_item,
                merchant=cat.item_merchant[big_item],
                category=cat.item_category[big_item],
            ),
            known[i],
        )
        rep = {k_: np.array([v]) for k_, v in ctx.items()}
        orders = flows.place_orders(
            world,
            rng,
            **rep,
            t=np.array([t_big]),
            item=big_item,
            quantity=rng.integers(1, 4, 1),
            instrument=np.array([good]),
            address=world.alloc("address", 1),
            pay_fail=0.3,
            pay_delay_s=10.0,
            abandon=0.3,
        )
        for keys in (orders.order_ev, orders.pay_fail_ev, orders.pay_ev):
            inc.event(keys, known[i])
        inc.order(orders.order, known[i])
        inc.user(np.array(users), known[i])
    inc.commit(world)


def _test_cards(
    world: World,
    rng: np.random.Generator,
    inc: Incident,
    i: int,
    t: float,
    device: np.ndarray,
    ip: np.ndarray,
    geo: np.ndarray,
    known: np.ndarray,
    cheap_cats: np.ndarray,
    cards: np.ndarray,
    ok: np.ndarray,
) -> tuple[float, int, int]:
    """One throwaway account: signup, a cheap order, then one payment attempt per card on it."""
    cat, ev = world.catalog, world.events
    users, sessions, signup_keys = new_accounts(
        world, rng, np.array([t]), device=device[i : i + 1], ip=ip[i : i + 1], geo=geo[i : i + 1]
    )
    inc.event(signup_keys, known[i])
    ctx = dict(user=users[0], session=sessions[0], device=device[i], ip=ip[i], geo=geo[i])
    item = cat.sample_items(rng, rng.choice(cheap_cats, 1))
    ie = dict(item=item, merchant=cat.item_merchant[item], category=cat.item_category[item])
    t += rng.uniform(20, 90)
    inc.event(ev.add("login", np.array([t]), **ctx, status="success", channel="web"), known[i])
    t += rng.uniform(5, 30)
    inc.event(ev.add("view", np.array([t]), **ctx, **ie), known[i])
    t += rng.uniform(5, 20)
    inc.event(ev.add("add_to_cart", np.array([t]), **ctx, **ie, quantity=1), known[i])
    order = world.alloc("order", 1)
    small = round(float(rng.choice([0.5, 1.0, 1.99, 2.5, 3.0, 4.99])), 2)
    t += rng.uniform(5, 20)
    inc.event(
        ev.add(
            "order",
            np.array([t]),
            **ctx,
            **ie,
            order=order,
            amount=small,
            quantity=1,
            address=world.alloc("address", 1),
            currency=world.config.currency,
        ),
        known[i],
    )
    inc.order(order, known[i])
    m = cards.size
    interval = rng.uniform(3, 15)
    t_pay = t + 5 + np.cumsum(interval + rng.normal(0, 0.2 * interval, m).clip(-0.5 * interval))
    amounts = np.where(rng.random(m) < 0.7, small, np.round(rng.uniform(0.5, 5.0, m), 2))
    reasons = np.where(ok, None, rng.choice(DECLINES, m)).astype(object)
    inc.event(
        ev.add(
            "pay",
            t_pay,
            **ctx,
            order=order,
            merchant=ie["merchant"][0],
            amount=amounts,
            status=np.where(ok, "success", "failure"),
            reason=reasons,
            instrument=cards,
            currency=world.config.currency,
        ),
        known[i],
    )
    return float(t_pay[-1]), int(users[0]), int(sessions[0])
