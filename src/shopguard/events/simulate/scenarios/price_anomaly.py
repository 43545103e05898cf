"""Merchant price anomalies: a price far outside the item's usual range.

Signature: a price change to a value wildly off the item's history and category: a fat-finger 0.01 or
a hundredth of the price, a tenfold decimal slip, or price gouging at 20-50 times; most are reverted
within hours by a second change (the revert itself is normal). Orders placed meanwhile pay that price.
Labels: the anomalous price change and the merchant, known within hours (monitoring, complaints).
"""

from __future__ import annotations

import numpy as np

from shopguard.events.simulate.scenarios._common import Incident
from shopguard.events.simulate.world import DAY, HOUR, World

SCENARIO = "price_anomaly"


def prepare(world: World) -> None:
    """Runs after the normal price changes and before sessions, so orders see the anomalous price."""
    n = world.config.incidents(SCENARIO)
    if n == 0:
        return
    rng = world.rng(SCENARIO)
    cat, ev = world.catalog, world.events
    inc = Incident(SCENARIO)
    # Popular items are the ones whose price errors get noticed and exploited.
    item = cat.sample_items(rng, cat.sample_categories(rng, n))
    t = world.random_times(rng, n, lo=0.1 * DAY, hi=world.horizon - 0.1 * DAY)
    old = world.prices.base_at(item, t)
    kind = rng.choice(4, n, p=[0.3, 0.15, 0.35, 0.2])
    factor = np.select(
        [kind == 0, kind == 1, kind == 2, kind == 3],
        [np.zeros(n), np.full(n, 0.01), rng.uniform(20, 50, n), np.where(rng.random(n) < 0.5, 10.0, 0.1)],
    )
    new = np.where(kind == 0, 0.01, np.round(old * factor, 2))
    new = np.maximum(new, 0.01)
    revert = rng.random(n) < 0.8
    t_end = np.where(revert, t + rng.uniform(0.5, 12, n) * HOUR, world.horizon + DAY)
    for i in range(n):
        world.prices.overlays.append((int(item[i]), float(t[i]), float(t_end[i]), float(new[i])))
    merchant = cat.item_merchant[item]
    keys = ev.add(
        "price_change",
        t,
        merchant=merchant,
        item=item,
        category=cat.item_category[item],
        old_price=old,
        new_price=new,
        currency=world.config.currency,
    )
    known = np.minimum(t_end, t + rng.uniform(0.5, 24, n) * HOUR)
    inc.event(keys, known)
    inc.merchant(merchant, known)
    inc.commit(world)
    r = np.flatnonzero(revert)
    ev.add(
        "price_change",
        t_end[r],
        merchant=merchant[r],
        item=item[r],
        category=cat.item_category[item[r]],
        old_price=new[r],
        new_price=world.prices.base_at(item[r], t_end[r]),
        currency=world.config.currency,
    )
