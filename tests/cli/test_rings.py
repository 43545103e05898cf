"""``shopguard rings`` on a tiny store with one planted ring."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shopguard.cli.main import app
from shopguard.store import EventStore

runner = CliRunner()
T0 = datetime(2024, 3, 1)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "shop.duckdb"
    events = []
    for i in range(12):  # loners: own device, own card
        events.append({"event_id": f"s{i}", "ts": T0 + timedelta(hours=i), "type": "login", "user_id": f"u{i}",
                       "status": "success", "device_id": f"d{i}", "ip": f"ip{i}"})
    for k in range(4):  # a coupon farm: one phone, one card, one address
        events.append({"event_id": f"f{k}", "ts": T0 + timedelta(days=1, minutes=k), "type": "order",
                       "user_id": f"farm{k}", "amount": 5.0, "device_id": "phoneX", "payment_instrument": "cardX",
                       "address": "dropX"})
    events.append({"event_id": "pair", "ts": T0 + timedelta(days=2), "type": "login", "user_id": "u0",
                   "status": "success", "device_id": "d1"})
    with EventStore(path) as store:
        store.append_events(events)
        store.append_labels([{"entity_kind": "user", "entity_id": "farm0", "label": 1, "scenario": "coupon_abuse",
                              "labeled_at": T0 + timedelta(days=3)}])
    return path


def test_rings_json(db: Path) -> None:
    res = runner.invoke(app, ["rings", "--db", str(db), "--top", "5", "--json"])
    assert res.exit_code == 0, res.output
    rings = json.loads(res.output)["rings"]
    assert [r["size"] for r in rings] == [4, 2]
    farm = rings[0]
    assert farm["members"] == ["farm0", "farm1", "farm2", "farm3"]
    assert farm["known_fraud"] == 1
    assert farm["shared_values"]["instrument"] == ["cardX"]
    assert {"device", "instrument", "address"} <= set(farm["link_kinds"])


def test_rings_table(db: Path) -> None:
    res = runner.invoke(app, ["rings", "--db", str(db), "--top", "1"])
    assert res.exit_code == 0, res.output
    assert "farm0" in res.output and "cardX" in res.output
    res = runner.invoke(app, ["rings", "--db", str(db), "--min-size", "10"])
    assert res.exit_code == 0 and "no rings" in res.output


@pytest.mark.parametrize("args,needle", [(["--top", "0"], "--top"), (["--min-size", "1"], "--min-size")])
def test_rings_bad_options(db: Path, args: list[str], needle: str) -> None:
    res = runner.invoke(app, ["rings", "--db", str(db), *args])
    assert res.exit_code == 2 and needle in res.output


def test_rings_missing_store(tmp_path: Path) -> None:
    res = runner.invoke(app, ["rings", "--db", str(tmp_path / "none.duckdb")])
    assert res.exit_code == 2 and "no store" in res.output
