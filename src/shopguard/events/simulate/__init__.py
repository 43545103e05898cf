"""A realistic shop simulator with labelled abuse, for development, tests, demos and benchmarks.

>>> from shopguard.events.simulate import SimulationConfig, simulate_shop
>>> shop = simulate_shop(SimulationConfig(users=300, days=5, seed=7))   # doctest: +SKIP
>>> shop.write("out/")                                                  # doctest: +SKIP
"""

from __future__ import annotations

from shopguard.events.simulate.config import SCENARIOS, ScenarioRates, SimulationConfig
from shopguard.events.simulate.simulator import SimulatedShop, config_tag, simulate_shop

__all__ = ["SCENARIOS", "ScenarioRates", "SimulatedShop", "SimulationConfig", "config_tag", "simulate_shop"]
