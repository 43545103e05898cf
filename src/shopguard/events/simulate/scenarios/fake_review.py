"""Fake reviews: paid praise for an item, or a malicious one-star attack on a competitor's item.

Signature: a burst of 8-20 reviews on one item within a day or so, extreme ratings (5 for praise, 1 for
an attack), short superlative text from a small pool, mostly without a verified purchase, written by
freshly created accounts sharing devices or proxy IPs mixed with recruited real accounts.
Labels: the reviews (taken down 1-7 days after posting), the fresh accounts' signups, the accounts.
"""

from __future__ import annotations

import numpy as np

from shopguard.events.simulate import flows
from shopguard.events.simulate.personas import datacenter_ips
from shopguard.events.simulate.scenarios._common import Incident, delays, new_accounts
from shopguard.events.simulate.world import DAY, HOUR, World

SCENARIO = "fake_review"


def inject(world: World) -> None:
    n = world.config.incidents(SCENARIO)
    if n == 0:
        return
    rng = world.rng(SCENARIO)
    pop, cat = world.pop, world.catalog
    existing = np.flatnonzero(np.isnan(pop.signup_t))
    for _ in range(n):
        inc = Incident(SCENARIO)
        attack = rng.random() < 0.3
        # Praise goes to middling items that need a push; attacks hit a rival's popular item.
        pool = (
            cat.item_order[: max(10, cat.item_order.size // 3)]
            if attack
            else np.flatnonzero(cat.item_quality < 4.0)
        )
        if pool.size == 0:
            pool = np.arange(cat.n_items)
        item = int(rng.choice(pool))
        k = int(rng.integers(8, 21))
        t_burst = rng.uniform(0.3, max(0.4, world.horizon / DAY - 1.5)) * DAY
        t_rev = t_burst + np.sort(rng.uniform(0, rng.uniform(6, 36) * HOUR, k))
        fresh = max(int(round(k * rng.uniform(0.3, 0.8))), k - existing.size)
        devices = world.alloc("device", max(1, fresh // 4))
        dev = rng.choice(devices, fresh)
        ip = datacenter_ips(rng, fresh)
        geo = rng.choice(pop.geo, fresh)
        t_signup = t_rev[:fresh] - rng.uniform(0.2, 3, fresh) * HOUR
        users_f, _, signup_keys = new_accounts(world, rng, t_signup, device=dev, ip=ip, geo=geo)
        recruited = rng.choice(existing, k - fresh, replace=False)
        users = np.concatenate([users_f, recruited])
        r_dev = np.concatenate([dev, pop.device0[recruited]])
        r_ip = np.concatenate([ip, pop.home_ip[recruited]])
        r_geo = np.concatenate([geo, pop.geo[recruited]])
        lang = np.full(k, int(rng.random() < 0.5))
        if attack:
            rating = np.where(rng.random(k) < 0.9, 1, 2)
        else:
            rating = np.where(rng.random(k) < 0.9, 5, 4)
        verified = np.zeros(k, dtype=bool)  # nobody bought it: no verified-purchase badge
        keys = flows.post_reviews(
            world,
            rng,
            user=users,
            t=t_rev,
            item=np.full(k, item),
            rating=rating,
            lang=lang,
            kind="attack" if attack else "paid",
            verified=verified,
            device=r_dev,
            ip=r_ip,
            geo=r_geo,
        )
        known = t_rev + delays(rng, k, 1, 7)
        inc.event(keys, known)
        inc.event(signup_keys, known[:fresh])
        inc.user(users, known)
        inc.commit(world)
