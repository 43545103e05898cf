"""Refund abuse: customers who keep the goods and get their money back.

Signature: ordinary-looking, frequent buyers whose delivered orders are followed, far more often than
anyone else's, by refund claims that the parcel never arrived (tracking says delivered), 'empty box' or
'not as described' returns, and a scripted, insistent chat that threatens a chargeback.
Labels: the claim events (chats, returns, refunds), the orders claimed and the user; known once the
pattern is investigated (14-60 days after the claim).
"""

from __future__ import annotations

import numpy as np

from shopguard.events.simulate import flows
from shopguard.events.simulate.personas import PERSONA_NAMES
from shopguard.events.simulate.scenarios._common import Incident, delays
from shopguard.events.simulate.world import DAY, HOUR, World

SCENARIO = "refund_abuse"
RETURN_CLAIMS = ("empty_box", "not_as_described", "damaged", "wrong_item")


def prepare(world: World) -> None:
    """Pick the abusers among existing users before normal behaviour is simulated; they buy a lot."""
    share = world.config.rates.refund_abuse
    if share <= 0:
        return
    rng = world.rng(SCENARIO + ".prepare")
    pop = world.pop
    eligible = np.flatnonzero(np.isnan(pop.signup_t) & (pop.persona != PERSONA_NAMES.index("dormant")))
    k = min(eligible.size, max(world.config.min_incidents, int(round(share * world.config.users))))
    abusers = rng.choice(eligible, k, replace=False)
    pop.persona[abusers] = PERSONA_NAMES.index("heavy_buyer")
    pop.activity[abusers] = np.maximum(pop.activity[abusers], 1.0) * 1.5
    world.refund_abusers = np.sort(abusers)


def inject(world: World) -> None:
    if world.refund_abusers.size == 0:
        return
    rng = world.rng(SCENARIO)
    cur = world.config.currency
    d = world.delivered.get()
    if not d:
        return
    mine = np.flatnonzero(np.isin(d["user"], world.refund_abusers) & (rng.random(d["user"].size) < 0.65))
    if mine.size == 0:  # tiny shops: make sure the abusers' earliest delivered order is claimed
        theirs = np.flatnonzero(np.isin(d["user"], world.refund_abusers))
        mine = theirs[np.argsort(d["delivered_t"][theirs], kind="stable")[:1]]
    inc = Incident(SCENARIO)
    user, order, item = d["user"][mine], d["order"][mine], d["item"][mine]
    merchant, amount, t_del = d["merchant"][mine], d["amount"][mine], d["delivered_t"][mine]
    pop = world.pop
    home = dict(device=pop.device0[user], ip=pop.home_ip[user], geo=pop.geo[user])
    lang = pop.lang[user]
    path = rng.choice(3, mine.size, p=[0.55, 0.3, 0.15])
    t_claim = t_del + rng.uniform(0.3, 3, mine.size) * DAY
    known = t_claim + delays(rng, mine.size, 14, 60)
    # (a) "never arrived": a scripted chat, then the refund claim.
    a = np.flatnonzero(path == 0)
    inc.event(
        flows.chats(
            world,
            rng,
            user=user[a],
            t=t_claim[a],
            item=item[a],
            lang=lang[a],
            intent="not_received",
            order=order[a],
            **{k: v[a] for k, v in home.items()},
        ),
        known[a],
    )
    if a.size:  # a second, pushier message now and then
        again = a[rng.random(a.size) < 0.5]
        inc.event(
            flows.chats(
                world,
                rng,
                user=user[again],
                t=t_claim[again] + rng.uniform(2, 20, again.size) * HOUR,
                item=item[again],
                lang=lang[again],
                intent="not_received",
                order=order[again],
                **{k: v[again] for k, v in home.items()},
            ),
            known[again],
        )
    def claim(kind: str, idx: np.ndarray, t: np.ndarray, reason: object, **extra: object) -> None:
        """A refund or return on the abuser's orders ``idx``, labelled when the claim is investigated."""
        inc.event(
            world.events.add(kind, t, user=user[idx], order=order[idx], item=item[idx], merchant=merchant[idx],
                             amount=amount[idx], currency=cur, reason=reason, **extra),
            known[idx],
        )

    # (a) and (c): refund for a parcel the carrier delivered.
    ac = np.flatnonzero(path != 1)
    claim("refund", ac, t_claim[ac] + rng.uniform(2, 48, ac.size) * HOUR, "item_not_received")
    # (b) a return claiming an empty box or the wrong thing, refunded in full.
    b = np.flatnonzero(path == 1)
    reason = rng.choice(RETURN_CLAIMS, b.size)
    claim("return", b, t_claim[b], reason, **{k: v[b] for k, v in home.items()})
    claim("refund", b, t_claim[b] + rng.uniform(1, 5, b.size) * DAY, reason)
    inc.order(order, known)
    # The user is known as an abuser once the first of their claims is investigated.
    first_known = {int(u): float(k) for u, k in sorted(zip(user, known, strict=True), key=lambda x: -x[1])}
    us = np.array(sorted(first_known), dtype=np.int64)
    inc.user(us, np.array([first_known[int(u)] for u in us]))
    inc.commit(world)
