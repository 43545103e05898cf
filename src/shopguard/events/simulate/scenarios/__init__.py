"""Abuse scenarios, one module each. ``prepare`` (optional) runs before normal behaviour, ``inject`` after.

A scenario that changes how the normal shop behaves (price anomalies, logistics incidents, who abuses
refunds) prepares; one that adds an attacker's own events injects.
"""

from __future__ import annotations

from types import ModuleType

from shopguard.events.simulate.scenarios import (
    account_takeover,
    bot_ordering,
    brushing,
    card_testing,
    coupon_abuse,
    fake_review,
    logistics_anomaly,
    price_anomaly,
    refund_abuse,
)

MODULES: dict[str, ModuleType] = {
    m.SCENARIO: m
    for m in (
        account_takeover,
        card_testing,
        brushing,
        bot_ordering,
        refund_abuse,
        coupon_abuse,
        fake_review,
        price_anomaly,
        logistics_anomaly,
    )
}

__all__ = ["MODULES"]
