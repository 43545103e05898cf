"""``simulate_shop``: a whole shop's events and labels from a config, deterministic per seed."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from shopguard.events.simulate.buffer import finalize
from shopguard.events.simulate.config import SCENARIOS, SimulationConfig
from shopguard.events.simulate.scenarios import MODULES
from shopguard.events.simulate.shop import emit_price_changes, simulate_sessions
from shopguard.events.simulate.world import World

if TYPE_CHECKING:
    from shopguard.store import EventStore

ProgressFn = Callable[[str, int, int], None]  # (step description, steps done, steps in all)


@dataclass
class SimulatedShop:
    """Events in the store's columns (time order) and positive labels (``entity_kind .. source``)."""

    config: SimulationConfig
    events: pl.DataFrame
    labels: pl.DataFrame

    def to_store(self, store: EventStore) -> tuple[int, int]:
        """Append events and labels to a store; returns (new events, new labels). Re-running adds nothing."""
        return store.append_events(self.events), store.append_labels(self.labels)

    def write(self, directory: str | Path) -> tuple[Path, Path]:
        """Write ``events.parquet`` and ``labels.parquet`` into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        ev, lab = d / "events.parquet", d / "labels.parquet"
        self.events.write_parquet(ev, statistics=False)
        self.labels.write_parquet(lab, statistics=False)
        return ev, lab

    def summary(self) -> dict[str, Any]:
        """Counts per event type and per scenario (events and actors), as the CLI prints them."""
        by_type = dict(self.events.group_by("type").len().sort("len", descending=True).iter_rows())
        lab = self.labels.group_by("scenario", "entity_kind").len()
        per: dict[str, dict[str, int]] = {s: {} for s in SCENARIOS}
        for scen, kind, n in lab.iter_rows():
            per.setdefault(scen, {})[kind] = int(n)
        return {
            "events": self.events.height,
            "users": self.events["user_id"].drop_nulls().n_unique(),
            "first_event": str(self.events["ts"].min()),
            "last_event": str(self.events["ts"].max()),
            "events_by_type": by_type,
            "labels": self.labels.height,
            "labels_by_scenario": per,
        }


def config_tag(config: SimulationConfig) -> str:
    """Six hex digits naming this config; event ids carry it, so two simulations never share ids."""
    return hashlib.blake2b(config.model_dump_json().encode(), digest_size=3).hexdigest()


def simulate_shop(
    config: SimulationConfig | None = None, *, progress: ProgressFn | None = None
) -> SimulatedShop:
    """Simulate a shop: normal behaviour for every user plus the labelled abuse scenarios.

    >>> shop = simulate_shop(SimulationConfig(users=100, days=3, seed=1))
    >>> shop.events.height > 1000, "card_testing" in set(shop.labels["scenario"])
    (True, True)
    """
    config = config or SimulationConfig()
    world = World(config)
    steps: list[tuple[str, Callable[[World], None]]] = [("merchant prices", emit_price_changes)]
    # Scenarios that shape normal behaviour come first (price anomalies after the regular price chain).
    steps += [(f"prepare {name}", m.prepare) for name, m in MODULES.items() if hasattr(m, "prepare")]
    steps.append(("user sessions", simulate_sessions))
    steps += [(name, m.inject) for name, m in MODULES.items() if hasattr(m, "inject")]
    total = len(steps) + 1
    for i, (desc, fn) in enumerate(steps):
        if progress:
            progress(desc, i, total)
        fn(world)
    if progress:
        progress("sorting and labelling", total - 1, total)
    events, labels = finalize(
        world.events, world.labels, start=config.start, horizon_s=world.horizon, tag=config_tag(config)
    )
    if progress:
        progress("done", total, total)
    return SimulatedShop(config, events, labels)
