"""Ring features in the service: a rule over a ring feature fires over HTTP, and the timeline shows links."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from tests.api.conftest import T0, make_keys, serve_in_thread

from shopguard.api import ServiceSettings

RULES = """
mode: all_match
rules:
  - name: account_farm_small_order
    when: "user_ring_size >= 5 and amount < 5"
    action: review
    reason: ACCOUNT_FARM
    description: "small order from an account in a ring of five or more"
    scenario: brushing
"""


def farm_event(eid: str, k: int, minutes: float, **fields: object) -> dict[str, object]:
    base: dict[str, object] = {"event_id": eid, "type": "order", "user_id": f"farm{k}", "device_id": f"phone{k % 2}",
                               "ts": (T0 + timedelta(minutes=minutes)).isoformat() + "Z", "amount": 2.5,
                               "address": "drop", "item_id": "cheap"}
    base.update(fields)
    return base


def test_rule_over_a_ring_feature_and_the_timeline(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    db = tmp_path / "shop.duckdb"
    keys = make_keys(db)
    settings = ServiceSettings(db=db, rules=rules, watch_every_s=0.2)
    with serve_in_thread(settings, keys) as svc:
        signups = [farm_event(f"s{k}", k, k, type="signup", amount=None, address=None, item_id=None)
                   for k in range(6)]
        orders = [farm_event(f"o{k}", k, 60 + k) for k in range(6)]
        with svc.client("ingest") as c:
            assert c.post("/v1/events", json={"events": signups}).status_code == 200
            out = {}
            for ev in orders:  # one by one, as a shop's checkout would call
                r = c.post("/v1/events", json=ev)
                assert r.status_code == 200, r.text
                out[ev["event_id"]] = r.json()
        # Two phones' rings of three join once two orders went to the same drop address.
        assert out["o0"]["rule_hits"] == [] and out["o1"]["rule_hits"] == []
        assert out["o5"]["rule_hits"] == ["account_farm_small_order"] and out["o5"]["action"] == "review"
        assert any(r["code"] == "ACCOUNT_FARM" for r in out["o5"]["reasons"])
        with svc.client("analyst") as c:
            tl = c.get("/v1/users/farm0/timeline").json()
        linked = {x["user_id"]: x for x in tl["linked_accounts"]}
        assert {"farm2", "farm4"} <= set(linked)  # same phone
        assert {k["kind"] for k in linked["farm2"]["links"]} >= {"device", "address"}
        assert set(linked) == {f"farm{k}" for k in range(1, 6)}  # the drop address links all five
