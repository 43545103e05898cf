"""Rules over ring (account-graph) features: validated on load, fed by the online feature engine."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from shopguard.decision.rules import RuleSet, known_feature_names
from shopguard.errors import ValidationFailed
from shopguard.features import OnlineFeatureEngine
from shopguard.features.definitions import RING_FEATURE_NAMES

T0 = datetime(2024, 3, 1)
FARM_RULE = """
mode: all_match
rules:
  - name: small_orders_from_account_farm
    when: "user_ring_size >= 5 and amount < 5"
    action: review
    reason: ACCOUNT_FARM
    description: "small order from an account in a ring of five or more"
    scenario: brushing
  - name: many_accounts_per_device
    when: "type == 'pay' and user_ring_accounts_per_device >= 3 and user_ring_cards == 1"
    action: challenge
    reason: SHARED_DEVICES_AND_CARDS
"""


def shop() -> list[dict[str, Any]]:
    """Six accounts on two phones paying small amounts with one card, and an honest shopper."""
    out = []
    for k in range(6):
        u = f"farm{k}"
        out.append({"event_id": f"s{k}", "ts": T0 + timedelta(minutes=k), "type": "signup", "user_id": u,
                     "device_id": f"phone{k % 2}"})
    for k in range(6):
        out.append({"event_id": f"o{k}", "ts": T0 + timedelta(hours=1, minutes=k), "type": "order", "user_id": f"farm{k}",
                    "device_id": f"phone{k % 2}", "address": "drop", "amount": 2.5, "item_id": "i1"})
        out.append({"event_id": f"p{k}", "ts": T0 + timedelta(hours=2, minutes=k), "type": "pay",
                    "user_id": f"farm{k}", "device_id": f"phone{k % 2}", "payment_instrument": "card0",
                    "amount": 2.5, "status": "success"})
    out.append({"event_id": "h", "ts": T0 + timedelta(hours=3), "type": "order", "user_id": "honest",
                "device_id": "own", "amount": 2.5, "item_id": "i2"})
    return sorted(out, key=lambda e: e["ts"])


def test_ring_features_are_known_names() -> None:
    assert set(RING_FEATURE_NAMES) <= known_feature_names()
    rules = RuleSet.from_yaml(FARM_RULE, source="farm.yaml")
    assert {"user_ring_size", "user_ring_accounts_per_device"} <= rules.names_used()


@pytest.mark.parametrize("when", ["user_ring_sise >= 5", "amount < 5 and user_rings_known_fraud > 0"])
def test_unknown_ring_names_are_refused_naming_the_rule(when: str) -> None:
    text = f"rules:\n  - name: typo_rule\n    when: \"{when}\"\n    action: review\n    reason: TYPO\n"
    with pytest.raises(ValidationFailed) as exc:
        RuleSet.from_yaml(text, source="typo.yaml")
    assert "typo_rule" in exc.value.message and exc.value.field == "rules[0].when"
    assert "user_ring" in exc.value.message  # the hint names the close ring features


def test_rule_over_ring_features_fires_on_the_farm_only() -> None:
    rules = RuleSet.from_yaml(FARM_RULE, source="farm.yaml")
    engine = OnlineFeatureEngine()
    hits: dict[str, list[str]] = {}
    for rec in shop():
        ctx = {**rec, **engine.update(rec)}
        hits[rec["event_id"]] = [h.name for h in rules.evaluate(ctx).hits]
    # Each phone's three accounts are a ring; the first two orders to the drop address join the rings.
    assert hits["o0"] == hits["o1"] == []
    assert hits["o2"] == hits["o5"] == ["small_orders_from_account_farm"]
    assert hits["p0"] == ["small_orders_from_account_farm"]  # no card seen in the ring yet
    assert hits["p5"] == ["small_orders_from_account_farm", "many_accounts_per_device"]  # 6 accounts, 2 phones, 1 card
    assert hits["h"] == []
