"""Bot bulk ordering: scripts buy up a limited drop the second it goes on sale, to resell it.

Signature: accounts created in a batch days before, logging in just before the drop time and then, with
no browsing at all, putting the limited item in the cart and ordering the maximum quantity within
seconds of the drop, one account after another at near-constant intervals, from one hosting block's
IPs. Real fans view the item in the days before and arrive over minutes, so the drop is not all bots.
Labels: every bot event (signups, logins, carts, orders, payments), the accounts and the orders, known
after the ops team reviews the drop (0.5-3 days).
"""

from __future__ import annotations

import numpy as np

from shopguard.events.simulate import flows
from shopguard.events.simulate.catalog import CATEGORY_NAMES, add_items
from shopguard.events.simulate.personas import DATACENTER_GEOS, DATACENTER_PREFIXES, datacenter_ips
from shopguard.events.simulate.scenarios._common import Incident, delays, farm_emails, new_accounts
from shopguard.events.simulate.world import DAY, HOUR, World

SCENARIO = "bot_ordering"
DROP_CATEGORIES = ("shoes", "electronics", "toys", "phones")


def inject(world: World) -> None:
    n = world.config.incidents(SCENARIO)
    if n == 0:
        return
    rng = world.rng(SCENARIO)
    pop, cat, ev = world.pop, world.catalog, world.events
    days = world.config.days
    drop_cat = np.array([CATEGORY_NAMES.index(c) for c in rng.choice(DROP_CATEGORIES, n)])
    drop_merchant = np.array([rng.choice(np.flatnonzero(cat.merchant_category == c)) for c in drop_cat])
    items = add_items(
        cat, drop_cat, drop_merchant, np.round(rng.uniform(129, 499, n), 0) - 0.01, np.full(n, 4.5)
    )
    drop_day = rng.integers(min(2, days - 1), days, n) if days > 1 else np.zeros(n, dtype=np.int64)
    t_drop = drop_day * DAY + rng.choice([10.0, 12.0, 20.0], n) * HOUR  # drops start on the hour
    existing = np.flatnonzero(np.isnan(pop.signup_t))
    for d in range(n):
        item = items[d : d + 1]
        ie = dict(item=item[0], merchant=cat.item_merchant[item][0], category=cat.item_category[item][0])
        _fans(world, rng, existing, item, ie, t_drop[d])
        inc = Incident(SCENARIO)
        known = t_drop[d] + delays(rng, 1, 0.5, 3)[0]
        k = int(rng.integers(8, 26))
        block = int(rng.choice(np.array(DATACENTER_PREFIXES)))
        ips = datacenter_ips(rng, k, prefix=block)
        geo = np.full(k, rng.choice(np.array(DATACENTER_GEOS)))
        devices = world.alloc("device", k)  # fingerprints are spoofed: one per account
        t_signup = max(0.0, t_drop[d] - rng.uniform(1, 5) * DAY) + np.sort(rng.uniform(0, 40 * 60, k))
        users, _, signup_keys = new_accounts(
            world, rng, t_signup, device=devices, ip=ips, geo=geo, emails=farm_emails(rng, k)
        )
        inc.event(signup_keys, known)
        # Each bot places 1-3 orders, one after another at a scripted interval.
        per = rng.integers(1, 4, k)
        bu = np.repeat(np.arange(k), per)
        interval = rng.uniform(0.3, 1.5)
        m = bu.size
        t_o = t_drop[d] + 0.2 + np.arange(m) * interval + rng.normal(0, 0.03, m)
        sess = world.alloc("session", k)
        ctx_acct = dict(user=users, session=sess, device=devices, ip=ips, geo=geo)
        inc.event(
            ev.add("login", t_drop[d] - rng.uniform(5, 30, k), **ctx_acct, status="success", channel="web"),
            known,
        )
        ctx = {key: v[bu] for key, v in ctx_acct.items()}
        qty = np.full(m, int(rng.integers(2, 6)))
        inc.event(ev.add("add_to_cart", t_o - 0.4 + rng.normal(0, 0.02, m), **ctx, **ie, quantity=qty), known)
        addr = world.alloc("address", k)[bu]  # resellers' forwarding addresses
        orders = flows.place_orders(
            world,
            rng,
            **ctx,
            t=t_o,
            item=np.full(m, item[0]),
            quantity=qty,
            instrument=world.alloc("instrument", k)[bu],
            address=addr,
            pay_fail=0.05,
            pay_delay_s=1.2,
            abandon=0.0,
        )
        for keys in (orders.order_ev, orders.pay_fail_ev, orders.pay_ev):
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
            user=ctx["user"][paid],
            item=np.full(paid.size, item[0]),
            address=addr[paid],
        )


def _fans(
    world: World, rng: np.random.Generator, existing: np.ndarray, item: np.ndarray, ie: dict, t_drop: float
) -> None:
    """Real customers waiting for the drop: they look at it before and some buy it after it opens."""
    pop, ev = world.pop, world.events
    f = min(existing.size, int(rng.integers(15, 50)))
    fans = rng.choice(existing, f, replace=False)
    sess = world.alloc("session", f)
    ctx = dict(user=fans, session=sess, device=pop.device0[fans], ip=pop.home_ip[fans], geo=pop.geo[fans])
    t_view = np.maximum(0.0, t_drop - rng.uniform(0.2, 3, f) * DAY)
    ev.add("view", t_view, **ctx, **ie)
    ev.add("view", t_drop - rng.uniform(30, 600, f), **ctx, **ie)
    buy = rng.random(f) < 0.6
    b = np.flatnonzero(buy)
    t_o = t_drop + 20 + rng.exponential(150.0, b.size)
    sub = {k: v[b] for k, v in ctx.items()}
    ev.add("add_to_cart", t_o - rng.uniform(5, 40, b.size), **sub, **ie, quantity=1)
    orders = flows.place_orders(
        world,
        rng,
        **sub,
        t=t_o,
        item=np.full(b.size, item[0]),
        quantity=np.ones(b.size, dtype=np.int64),
        instrument=pop.instrument0[fans[b]],
        address=pop.address[fans[b]],
    )
    paid = np.flatnonzero(~np.isnan(orders.t_paid))
    flows.ship(
        world,
        rng,
        orders=orders,
        idx=paid,
        user=sub["user"][paid],
        item=np.full(paid.size, item[0]),
        address=pop.address[fans[b]][paid],
    )
