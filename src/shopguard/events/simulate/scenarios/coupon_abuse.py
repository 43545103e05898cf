"""Coupon abuse: one person opens many accounts to use a new-customer or one-per-customer coupon again.

Signature: 5-15 fresh accounts signed up within hours from the same one or two devices and one IP,
look-alike e-mail addresses, each placing a first order soon after signing up with the same coupon,
paid with the same one or two cards and shipped to the same address.
Labels: every event of the farm's accounts (signups, logins, views, carts, orders, coupon uses,
payments), the accounts and the orders; known at the promotion audit (3-21 days later).
"""

from __future__ import annotations

import numpy as np

from shopguard.events.simulate import flows
from shopguard.events.simulate.personas import datacenter_ips, geo_ips
from shopguard.events.simulate.scenarios._common import Incident, delays, farm_emails, new_accounts
from shopguard.events.simulate.world import DAY, HOUR, World

SCENARIO = "coupon_abuse"


def inject(world: World) -> None:
    n = world.config.incidents(SCENARIO)
    if n == 0:
        return
    rng = world.rng(SCENARIO)
    pop, cat, ev = world.pop, world.catalog, world.events
    for _ in range(n):
        inc = Incident(SCENARIO)
        k = int(rng.integers(5, 16))
        t_start = rng.uniform(0.2, max(0.3, world.horizon / DAY - 1.0)) * DAY
        t_signup = t_start + np.sort(rng.uniform(0, rng.uniform(1, 8) * HOUR, k))
        devices = world.alloc("device", int(rng.integers(1, 3)))
        geo0 = int(rng.choice(pop.geo))
        ip = geo_ips(rng, np.array([geo0])) if rng.random() < 0.7 else datacenter_ips(rng, 1)
        dev = rng.choice(devices, k)
        ips = np.full(k, ip[0])
        geo = np.full(k, geo0)
        users, sess, signup_keys = new_accounts(
            world,
            rng,
            t_signup,
            device=dev,
            ip=ips,
            geo=geo,
            emails=farm_emails(rng, k) if rng.random() < 0.7 else None,
        )
        known = t_signup[-1] + delays(rng, 1, 3, 21)[0]
        inc.event(signup_keys, known)
        ctx = dict(user=users, session=sess, device=dev, ip=ips, geo=geo)
        # Same cheap-ish target items for every account: the coupon is the point.
        c = int(rng.choice(pop.fav_category))
        item = cat.sample_items(rng, np.full(k, c))
        ie = dict(item=item, merchant=cat.item_merchant[item], category=cat.item_category[item])
        t_v = t_signup + rng.uniform(30, 240, k)
        inc.event(ev.add("view", t_v, **ctx, **ie), known)
        t_c = t_v + rng.uniform(10, 60, k)
        inc.event(ev.add("add_to_cart", t_c, **ctx, **ie, quantity=1), known)
        code = "WELCOME15" if rng.random() < 0.75 else str(rng.choice(["FLASH5", "FREESHIP"]))
        cards = world.alloc("instrument", int(rng.integers(1, 3)))
        address = world.alloc("address", 1)
        orders = flows.place_orders(
            world,
            rng,
            **ctx,
            t=t_c + rng.uniform(20, 90, k),
            item=item,
            quantity=np.ones(k, dtype=np.int64),
            instrument=rng.choice(cards, k),
            address=np.full(k, address[0]),
            coupon=np.full(k, code, dtype=object),
        )
        for keys in (orders.order_ev, orders.coupon_ev, orders.pay_fail_ev, orders.pay_ev):
            inc.event(keys, known)
        inc.order(orders.order, known)
        inc.user(users, known)
        inc.commit(world)
        paid = np.flatnonzero(~np.isnan(orders.t_paid))
        flows.ship(
            world,
            rng,
            orders=orders,
            idx=paid,
            user=users[paid],
            item=item[paid],
            address=np.full(paid.size, address[0]),
        )
