"""Logistics anomalies: parcels lost or delivered far too late, concentrated on a merchant or a carrier.

Signature: for a few days, a large share of one merchant's shipments (a fake-shipping seller or a failing
warehouse) end 'lost', or a carrier's hub backs up and its parcels arrive 4-15 days after the promised
time, with 'delayed' events on the way. Ordinary parcels are late by hours, not weeks.
Labels: the delayed, lost and late-delivered shipment events, the orders and the merchant, known once
the loss is confirmed or the parcel finally arrives (days after the promise).
"""

from __future__ import annotations

import numpy as np

from shopguard.events.simulate.catalog import CARRIERS, CATEGORIES
from shopguard.events.simulate.world import DAY, Disruption, World

SCENARIO = "logistics_anomaly"


def prepare(world: World) -> None:
    """Register the incidents; ``flows.ship`` applies them to every shipment and labels what they hit."""
    n = world.config.incidents(SCENARIO)
    if n == 0:
        return
    rng = world.rng(SCENARIO)
    cat = world.catalog
    # Weight merchants by how much they sell, so an incident actually hits parcels.
    share = np.array([c[1] for c in CATEGORIES])[cat.merchant_category]
    per_cat = np.bincount(cat.merchant_category, weights=cat.merchant_size, minlength=len(CATEGORIES))
    w = share * cat.merchant_size / per_cat[cat.merchant_category]
    w = w**1.5  # incidents at big sellers are the ones that hurt (and get noticed)
    span_days = world.config.days
    for _ in range(n):
        t0 = rng.uniform(0, max(0.5, 0.6 * span_days)) * DAY  # early enough for the damage to show
        if rng.random() < 0.6:
            merchant = int(rng.choice(cat.n_merchants, p=w / w.sum()))
            mode = "lost" if rng.random() < 0.6 else "late"
            world.disruptions.append(
                Disruption(
                    (merchant,), -1, t0, t0 + rng.uniform(3, 10) * DAY, mode, float(rng.uniform(0.5, 0.85))
                )
            )
        else:
            # A regional hub of one carrier backs up: it serves a handful of that carrier's merchants.
            carrier = int(rng.integers(len(CARRIERS)))
            served = np.flatnonzero(cat.merchant_carrier == carrier)
            if served.size == 0:
                continue
            p = w[served] / w[served].sum()
            hub = rng.choice(served, min(served.size, int(rng.integers(4, 12))), replace=False, p=p)
            t1 = t0 + rng.uniform(1.5, 4) * DAY
            world.disruptions.append(
                Disruption(tuple(int(x) for x in hub), carrier, t0, t1, "late", float(rng.uniform(0.3, 0.6)))
            )
