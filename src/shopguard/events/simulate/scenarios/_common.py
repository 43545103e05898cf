"""Helpers the abuse scenarios share: new accounts, session context, labelling an incident."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shopguard.events.simulate.personas import CHANNELS, GEOS, datacenter_ips, geo_ips
from shopguard.events.simulate.shop import emit_signups, person_emails
from shopguard.events.simulate.world import World


@dataclass
class Incident:
    """Collects the keys of everything one scenario did, to label them in one go."""

    scenario: str
    events: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (keys, labeled_t)
    users: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    orders: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    merchants: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    def event(self, keys: np.ndarray, labeled_t: np.ndarray | float) -> None:
        keys = np.asarray(keys, dtype=np.int64)
        keep = keys >= 0
        self.events.append((keys[keep], np.broadcast_to(np.asarray(labeled_t, float), keys.shape)[keep]))

    def user(self, keys: np.ndarray, labeled_t: np.ndarray | float) -> None:
        keys = np.asarray(keys, dtype=np.int64)
        self.users.append((keys, np.broadcast_to(np.asarray(labeled_t, float), keys.shape)))

    def order(self, keys: np.ndarray, labeled_t: np.ndarray | float) -> None:
        keys = np.asarray(keys, dtype=np.int64)
        self.orders.append((keys, np.broadcast_to(np.asarray(labeled_t, float), keys.shape)))

    def merchant(self, keys: np.ndarray, labeled_t: np.ndarray | float) -> None:
        keys = np.asarray(keys, dtype=np.int64)
        self.merchants.append((keys, np.broadcast_to(np.asarray(labeled_t, float), keys.shape)))

    def commit(self, world: World) -> None:
        for kind, parts in (
            ("event", self.events),
            ("user", self.users),
            ("order", self.orders),
            ("merchant", self.merchants),
        ):
            if parts:
                world.labels.add(
                    kind,
                    np.concatenate([p[0] for p in parts]),
                    self.scenario,
                    np.concatenate([p[1] for p in parts]),
                )


def new_accounts(
    world: World,
    rng: np.random.Generator,
    t: np.ndarray,
    *,
    device: np.ndarray,
    ip: np.ndarray,
    geo: np.ndarray,
    emails: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Accounts an abuser signs up at times ``t``; returns (user keys, session keys, signup event keys)."""
    n = t.size
    users = world.alloc("user", n)
    sessions = world.alloc("session", n)
    mails, phones = person_emails(rng, n)
    if emails is not None:
        mails = emails
    channel = rng.choice(len(CHANNELS), n, p=[0.5, 0.4, 0.1])
    keys = emit_signups(world, users, t, device, ip, geo, channel, mails, phones, session=sessions)
    return users, sessions, keys


def farm_emails(rng: np.random.Generator, n: int) -> list[str]:
    """Sequential look-alike addresses one operator registers in a batch."""
    from shopguard.events.simulate.personas import EMAIL_DOMAINS, FIRST_NAMES

    base = str(rng.choice(FIRST_NAMES)) + str(int(rng.integers(10, 99)))
    dom = str(rng.choice(EMAIL_DOMAINS))
    start = int(rng.integers(1, 50))
    style = int(rng.integers(3))
    if style == 0:
        return [f"{base}{start + i}@{dom}" for i in range(n)]
    if style == 1:
        return [f"{base}.{chr(97 + (start + i) % 26)}{i}@{dom}" for i in range(n)]
    return [f"{base}+{start + i}@{dom}" for i in range(n)]


def attacker_network(
    world: World, rng: np.random.Generator, n: int, *, risky: float = 0.5, datacenter: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """(ip, geo) for abusers: risky places, hosting ranges, or anywhere."""
    from shopguard.events.simulate.personas import DATACENTER_GEOS, RISKY_GEOS

    u = rng.random(n)
    geo = rng.integers(0, len(GEOS), n)
    r = u < risky
    geo[r] = rng.choice(np.array(RISKY_GEOS), int(r.sum()))
    ip = geo_ips(rng, geo)
    dc = (u >= risky) & (u < risky + datacenter)
    ip[dc] = datacenter_ips(rng, int(dc.sum()))
    geo[dc] = rng.choice(np.array(DATACENTER_GEOS), int(dc.sum()))
    return ip, geo


def delays(rng: np.random.Generator, n: int, lo_days: float, hi_days: float) -> np.ndarray:
    """Label delays in seconds, uniform between two bounds in days."""
    return rng.uniform(lo_days, hi_days, n) * 86_400.0
