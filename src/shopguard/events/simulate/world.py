"""The simulated world every generator shares: config, random streams, catalogue, users, prices.

Each generator draws from its own named random stream, so switching one scenario off or changing its
rate leaves the other scenarios' draws as they were (scenarios that shape normal behaviour, such as
price anomalies or refund abusers, change what the affected shoppers do, as they should).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from shopguard.events.simulate.buffer import EventBuffer, LabelBuffer
from shopguard.events.simulate.catalog import Catalog, build_catalog
from shopguard.events.simulate.config import SimulationConfig
from shopguard.events.simulate.personas import Population, build_population

DAY = 86_400.0
HOUR = 3_600.0
MINUTE = 60.0
# Share of sessions starting in each hour of the day (evening peak, quiet nights).
DIURNAL = np.array(
    [
        2.0,
        1.2,
        0.8,
        0.5,
        0.4,
        0.5,
        1.0,
        2.0,
        3.5,
        4.5,
        5.0,
        5.5,
        6.0,
        5.5,
        5.0,
        5.0,
        5.2,
        5.5,
        6.0,
        7.0,
        8.0,
        8.5,
        7.0,
        4.5,
    ]
)
DIURNAL_CDF = np.cumsum(DIURNAL) / DIURNAL.sum()
WEEKLY = np.array([0.95, 0.93, 0.95, 1.0, 1.08, 1.22, 1.18])  # Monday .. Sunday


class PriceBook:
    """Each item's price over time: a chain of merchant changes plus short anomalous overlays."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._key = np.empty(0)
        self._price = np.empty(0)
        self._item = np.empty(0, dtype=np.int64)
        self.overlays: list[tuple[int, float, float, float]] = []

    _K = 1e9  # item * K + t orders changes by (item, time)

    def set_changes(self, item: np.ndarray, t: np.ndarray, price: np.ndarray) -> None:
        key = item * self._K + t
        order = np.argsort(key, kind="stable")
        self._key, self._item, self._price = key[order], item[order], price[order]

    def base_at(self, item: np.ndarray, t: np.ndarray) -> np.ndarray:
        """The regular (chain) price at ``t``, ignoring anomalous overlays."""
        price = self.catalog.item_price[item].copy()
        if self._key.size:
            pos = np.searchsorted(self._key, item * self._K + t, side="right") - 1
            ok = pos >= 0
            ok[ok] &= self._item[pos[ok]] == item[ok]
            price[ok] = self._price[pos[ok]]
        return price

    def price_at(self, item: np.ndarray, t: np.ndarray) -> np.ndarray:
        price = self.base_at(item, t)
        for it, t0, t1, p in self.overlays:
            m = (item == it) & (t >= t0) & (t < t1)
            price[m] = p
        return price


@dataclass
class DeliveredOrders:
    """Normal orders that were delivered: what post-delivery scenarios (refund abuse) act on."""

    chunks: list[dict[str, np.ndarray]] = field(default_factory=list)

    def add(self, **cols: np.ndarray) -> None:
        self.chunks.append(cols)

    def get(self) -> dict[str, np.ndarray]:
        if not self.chunks:
            return {}
        return {k: np.concatenate([c[k] for c in self.chunks]) for k in self.chunks[0]}


@dataclass
class Disruption:
    """A logistics incident: shipments of a merchant (or carrier) in a window get lost or very late."""

    merchants: tuple[int, ...]  # the merchant (seller-side incident) or the merchants a carrier hub serves
    carrier: int  # -1: whatever carrier the merchant uses
    t0: float
    t1: float
    mode: str  # "lost" | "late"
    share: float  # share of affected shipments


class World:
    """Everything the generators need, built once from the config."""

    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        self.horizon = config.days * DAY
        self.alloc_counts: dict[str, int] = {}
        self.events = EventBuffer()
        self.labels = LabelBuffer()
        self.catalog = build_catalog(self.rng("catalog"), config.n_merchants, config.n_items)
        self.alloc_counts["merchant"] = self.catalog.n_merchants
        self.alloc_counts["item"] = self.catalog.n_items
        self.pop: Population = build_population(
            self.rng("population"), config.users, self.horizon, config.new_user_share, self.alloc_counts
        )
        self.alloc_counts["user"] = self.pop.size
        self.prices = PriceBook(self.catalog)
        self.disruptions: list[Disruption] = []
        self.delivered = DeliveredOrders()
        # Users whose after-sale behaviour a scenario takes over (their normal returns are skipped).
        self.refund_abusers = np.empty(0, dtype=np.int64)
        self.start_weekday = config.start.weekday()

    def rng(self, stream: str) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, zlib.crc32(stream.encode())])

    def alloc(self, kind: str, n: int) -> np.ndarray:
        """Fresh internal keys for ``n`` new entities of a kind (user, order, session, device, ...)."""
        start = self.alloc_counts.get(kind, 0)
        self.alloc_counts[kind] = start + n
        return np.arange(start, start + n, dtype=np.int64)

    def weekday(self, t: np.ndarray) -> np.ndarray:
        return (self.start_weekday + (t // DAY).astype(np.int64)) % 7

    def diurnal_times(self, rng: np.random.Generator, day: np.ndarray) -> np.ndarray:
        """A start time on each given day following the diurnal curve."""
        hour = np.searchsorted(DIURNAL_CDF, rng.random(day.size), side="right")
        return day * DAY + hour * HOUR + rng.random(day.size) * HOUR

    def random_times(
        self, rng: np.random.Generator, n: int, lo: float = 0.0, hi: float | None = None
    ) -> np.ndarray:
        """Times in [lo, hi) that follow the diurnal rhythm."""
        hi = self.horizon if hi is None else hi
        d0, d1 = int(lo // DAY), max(int(np.ceil(hi / DAY)), int(lo // DAY) + 1)
        t = self.diurnal_times(rng, rng.integers(d0, d1, n))
        return np.clip(t, lo, hi - 1.0)
