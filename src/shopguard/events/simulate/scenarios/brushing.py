"""Brushing: a merchant's ring of accounts buys its items to fake sales volume and five-star reviews.

Signature: 6-14 accounts (fresh signups and bought, long-idle accounts) sharing two or three devices,
one or two IPs and a couple of cards, each ordering the same merchant's items several times within a
few days, straight to the item (no browsing), parcels shipped and 'delivered' within a day, and a
templated five-star review soon after.
Labels: every ring event (signups, logins, views, carts, orders, payments, reviews), the accounts, the
orders and the merchant; reviews are taken down 1-7 days after posting, the ring is uncovered 3-20
days after it stops.
"""

from __future__ import annotations

import numpy as np

from shopguard.events.simulate import flows
from shopguard.events.simulate.personas import PERSONA_NAMES, datacenter_ips, geo_ips
from shopguard.events.simulate.scenarios._common import Incident, delays, new_accounts
from shopguard.events.simulate.world import DAY, HOUR, World

SCENARIO = "brushing"


def inject(world: World) -> None:
    n = world.config.incidents(SCENARIO)
    if n == 0:
        return
    rng = world.rng(SCENARIO)
    pop, cat, ev = world.pop, world.catalog, world.events
    dormant = np.flatnonzero((pop.persona == PERSONA_NAMES.index("dormant")) & np.isnan(pop.signup_t))
    # Small and mid-size merchants brush; the giants do not need to.
    small = np.argsort(cat.merchant_size)[: max(3, int(0.7 * cat.n_merchants))]
    small = small[np.isin(small, cat.item_merchant[: cat.item_order.size])]  # sellers with items listed
    merchants = rng.choice(small, n, replace=n > small.size)
    for r in range(n):
        inc = Incident(SCENARIO)
        m = int(merchants[r])
        items_m = cat.items_of_merchant(m)
        if items_m.size == 0:
            continue
        targets = rng.choice(items_m, min(items_m.size, int(rng.integers(1, 4))), replace=False)
        k = int(rng.integers(6, 15))
        t_begin = rng.uniform(0.5, max(0.6, world.horizon / DAY - 4)) * DAY
        span = rng.uniform(2, 6) * DAY
        n_dev = int(rng.integers(2, 4))
        devices = world.alloc("device", n_dev)
        geo0 = int(rng.integers(0, 6))  # rings run from one place
        ring_ips = np.concatenate([geo_ips(rng, np.array([geo0])), datacenter_ips(rng, 1)])[
            : int(rng.integers(1, 3))
        ]
        cards = world.alloc("instrument", int(rng.integers(1, 4)))
        fresh = int(round(k * rng.uniform(0.4, 0.8)))
        bought = min(k - fresh, dormant.size)
        acct_dev = rng.choice(devices, fresh + bought)
        acct_ip = rng.choice(ring_ips, fresh + bought)
        acct_geo = np.full(fresh + bought, geo0)
        t_signup = t_begin - rng.uniform(0.1, 2.0, fresh) * DAY
        t_signup = np.maximum(t_signup, rng.uniform(0, 0.3 * DAY, fresh))
        users_f, _, signup_keys = new_accounts(
            world, rng, t_signup, device=acct_dev[:fresh], ip=acct_ip[:fresh], geo=acct_geo[:fresh]
        )
        users = np.concatenate([users_f, rng.choice(dormant, bought, replace=False)])
        addresses = world.alloc("address", int(rng.integers(1, 3)))  # parcels go to a drop address
        # Orders: each account buys 2-4 times over the ring's span.
        per = rng.integers(2, 5, users.size)
        ou = np.repeat(np.arange(users.size), per)
        t_o = np.sort(t_begin + rng.random(ou.size) * span)
        t_o = world.diurnal_times(rng, (t_o // DAY).astype(np.int64))
        t_o = np.maximum(t_o, np.repeat(np.concatenate([t_signup, np.zeros(bought)]), per) + HOUR)
        S = ou.size
        sess = world.alloc("session", S)
        ctx = dict(user=users[ou], session=sess, device=acct_dev[ou], ip=acct_ip[ou], geo=acct_geo[ou])
        item = rng.choice(targets, S)
        ie = dict(item=item, merchant=cat.item_merchant[item], category=cat.item_category[item])
        ends = t_begin + span
        known_ring = ends + delays(rng, 1, 3, 20)[0]
        inc.event(signup_keys, known_ring)
        inc.event(
            ev.add("login", t_o - rng.uniform(40, 120, S), **ctx, status="success", channel="app"), known_ring
        )
        inc.event(ev.add("view", t_o - rng.uniform(15, 35, S), **ctx, **ie), known_ring)
        inc.event(ev.add("add_to_cart", t_o - rng.uniform(3, 12, S), **ctx, **ie, quantity=1), known_ring)
        orders = flows.place_orders(
            world,
            rng,
            **ctx,
            t=t_o,
            item=item,
            quantity=np.ones(S, dtype=np.int64),
            instrument=rng.choice(cards, S),
            address=rng.choice(addresses, S),
            pay_fail=0.0,
            pay_delay_s=10.0,
        )
        for keys in (orders.order_ev, orders.pay_ev, orders.coupon_ev):
            inc.event(keys, known_ring)
        inc.order(orders.order, known_ring)
        sh = flows.ship(
            world,
            rng,
            orders=orders,
            idx=np.arange(S),
            user=ctx["user"],
            item=item,
            address=rng.choice(addresses, S),
            fast_fake=True,
        )
        # Five-star boilerplate within a day or two of 'delivery', mostly.
        rv = ~np.isnan(sh.delivered_t) & (rng.random(S) < 0.85)
        ri = np.flatnonzero(rv)
        t_r = sh.delivered_t[ri] + rng.uniform(1, 30, ri.size) * HOUR
        rating = np.where(rng.random(ri.size) < 0.93, 5, 4)
        lang = np.full(ri.size, int(rng.random() < 0.6))
        keys = flows.post_reviews(
            world,
            rng,
            user=ctx["user"][ri],
            t=t_r,
            item=item[ri],
            rating=rating,
            lang=lang,
            kind="brushing",
            verified=True,
            order=orders.order[ri],
            device=ctx["device"][ri],
            ip=ctx["ip"][ri],
            geo=ctx["geo"][ri],
        )
        inc.event(keys, np.minimum(t_r + delays(rng, ri.size, 1, 7), known_ring))
        inc.user(users, known_ring)
        inc.merchant(np.array([m]), known_ring)
        inc.commit(world)
