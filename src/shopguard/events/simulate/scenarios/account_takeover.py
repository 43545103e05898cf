"""Account takeover: someone else logs into a real customer's account and cashes it out.

Signature: failed logins then a success from a device, IP and place the account has never used; a
password and/or shipping-address change; within minutes, one to three high-value orders (electronics,
phones, gift cards) paid with the victim's saved card and sent to the new address.
Labels: every attacker event, the orders, and the victim account; known when the victim complains
(1-4 days, 40%) or through the chargeback (7-45 days).
"""

from __future__ import annotations

import numpy as np

from shopguard.events.simulate import flows
from shopguard.events.simulate.catalog import HIGH_VALUE_CATEGORIES
from shopguard.events.simulate.scenarios._common import Incident, attacker_network
from shopguard.events.simulate.world import DAY, World

SCENARIO = "account_takeover"


def inject(world: World) -> None:
    n = world.config.incidents(SCENARIO)
    if n == 0:
        return
    rng = world.rng(SCENARIO)
    pop, cat, ev = world.pop, world.catalog, world.events
    inc = Incident(SCENARIO)
    existing = np.flatnonzero(np.isnan(pop.signup_t))
    victims = rng.choice(existing, n, replace=n > existing.size)
    t_a = world.random_times(rng, n, lo=0.5 * DAY, hi=world.horizon - 0.3 * DAY)
    device = world.alloc("device", n)
    ip, geo = attacker_network(world, rng, n, risky=0.5, datacenter=0.3)
    session = world.alloc("session", n)
    # Some owners notice within days and complain (then the platform knows soon); otherwise the bank's
    # chargeback tells, weeks later.
    react = rng.random(n) < 0.45
    t_react = t_a + rng.uniform(0.1, 3, n) * DAY
    known = np.where(react, t_react + rng.uniform(0.2, 2, n) * DAY, t_a + rng.uniform(7, 45, n) * DAY)
    for i in range(n):
        ctx = dict(user=victims[i], session=session[i], device=device[i], ip=ip[i], geo=geo[i])
        k = int(rng.integers(2, 9))
        t_fail = t_a[i] - rng.uniform(5, 25, k).cumsum()
        inc.event(
            ev.add("login", t_fail, **ctx, status="failure", reason="wrong_password", channel="web"), known[i]
        )
        inc.event(ev.add("login", np.array([t_a[i]]), **ctx, status="success", channel="web"), known[i])
        t = t_a[i] + rng.uniform(20, 90)
        if rng.random() < 0.7:
            inc.event(ev.add("password_change", np.array([t]), **ctx), known[i])
            t += rng.uniform(15, 60)
        new_addr = world.alloc("address", 1)
        if rng.random() < 0.85:
            inc.event(ev.add("address_change", np.array([t]), **ctx, address=new_addr), known[i])
            t += rng.uniform(15, 90)
        m = int(rng.integers(1, 4))
        items = cat.sample_items(rng, rng.choice(np.array(HIGH_VALUE_CATEGORIES), m))
        t_view = t + np.cumsum(rng.uniform(4, 20, m))
        inc.event(
            ev.add(
                "view",
                t_view,
                **ctx,
                item=items,
                merchant=cat.item_merchant[items],
                category=cat.item_category[items],
            ),
            known[i],
        )
        t_order = t_view + rng.uniform(10, 60, m)
        is_gc = cat.item_category[items] == HIGH_VALUE_CATEGORIES[-1]
        qty = np.where(is_gc, rng.integers(2, 6, m), rng.integers(1, 3, m))
        inc.event(
            ev.add(
                "add_to_cart",
                t_order - rng.uniform(3, 8, m),
                **ctx,
                item=items,
                quantity=qty,
                merchant=cat.item_merchant[items],
                category=cat.item_category[items],
            ),
            known[i],
        )
        rep = {k_: np.full(m, v) for k_, v in ctx.items()}
        orders = flows.place_orders(
            world,
            rng,
            **rep,
            t=t_order,
            item=items,
            quantity=qty,
            instrument=np.full(m, pop.instrument0[victims[i]]),
            address=np.full(m, new_addr[0]),
            pay_fail=0.15,
            pay_delay_s=8.0,
            abandon=0.0,
        )
        for keys in (orders.order_ev, orders.pay_fail_ev, orders.pay_ev, orders.coupon_ev):
            inc.event(keys, known[i])
        inc.order(orders.order, known[i])
        paid = np.flatnonzero(~np.isnan(orders.t_paid))
        flows.ship(
            world,
            rng,
            orders=orders,
            idx=paid,
            user=np.full(paid.size, victims[i]),
            item=items[paid],
            address=np.full(paid.size, new_addr[0]),
        )
    inc.user(victims, known)
    inc.commit(world)
    _owners_react(world, rng, victims[react], t_react[react])


def _owners_react(world: World, rng: np.random.Generator, victims: np.ndarray, t: np.ndarray) -> None:
    """The real owner, from their usual device, complains and resets the password (not malicious)."""
    pop = world.pop
    ctx = dict(
        user=victims,
        session=world.alloc("session", victims.size),
        device=pop.device0[victims],
        ip=pop.home_ip[victims],
        geo=pop.geo[victims],
    )
    world.events.add(
        "login",
        t - rng.uniform(60, 600, t.size),
        **ctx,
        status="failure",
        reason="wrong_password",
        channel="app",
    )
    world.events.add("password_change", t - rng.uniform(5, 50, t.size), **ctx)
    items = world.catalog.sample_items(rng, world.catalog.sample_categories(rng, t.size))
    flows.chats(
        world,
        rng,
        user=victims,
        t=t,
        item=items,
        lang=pop.lang[victims],
        intent="unauthorized",
        device=ctx["device"],
        ip=ctx["ip"],
        geo=ctx["geo"],
    )
