"""``shopguard rules check|backtest`` and ``shopguard keys create`` through the real CLI."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

from typer.testing import CliRunner

from shopguard.cli.main import app
from shopguard.store import EventStore

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


def test_check_accepts_the_example_and_names_the_broken_rule(tmp_path: Path) -> None:
    ok = runner.invoke(app, ["rules", "check", "--rules", str(REPO / "examples" / "rules.yaml")])
    assert ok.exit_code == 0, ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {name: tiny, when: 'amount <', action: block, reason: TINY}\n")
    res = runner.invoke(app, ["rules", "check", "--rules", str(bad)])
    assert res.exit_code == 2 and "rule 'tiny'" in res.output


def test_backtest_reports_per_rule(tmp_path: Path) -> None:
    db = tmp_path / "shop.duckdb"
    t0 = datetime(2024, 5, 1, 10)
    with EventStore(db) as store:
        store.append_events([{"event_id": f"e{i}", "ts": t0 + timedelta(minutes=i), "type": "pay", "user_id": "u",
                              "amount": 1.0 if i % 2 else 80.0, "status": "failure"} for i in range(10)])
        store.append_labels([{"entity_kind": "event", "entity_id": f"e{i}", "label": 1, "scenario": "card_testing",
                              "labeled_at": t0 + timedelta(days=2)} for i in (1, 3, 5)])
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {name: tiny, when: 'amount < 2', action: review, reason: TINY}\n")
    out = tmp_path / "report.json"
    res = runner.invoke(app, ["rules", "backtest", "--db", str(db), "--rules", str(rules), "--json", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    tiny = report["rules"][0]
    assert tiny["rule"] == "tiny" and tiny["hits"] == 5 and tiny["true_positives"] == 3
    assert report["events"] == 10 and report["positives"] == 3


def test_keys_create_prints_the_key_once_and_stores_a_hash(tmp_path: Path) -> None:
    db = tmp_path / "keys.duckdb"
    res = runner.invoke(app, ["keys", "create", "--scope", "ingest", "--scope", "analyst", "--db", str(db)])
    assert res.exit_code == 0, res.output
    key = res.stdout.strip().splitlines()[-1]
    assert key.startswith("sg_")
    with EventStore(db) as store:
        rows = store.query("SELECT key_hash, scopes FROM api_keys")
    assert rows["scopes"][0] == "analyst,ingest" and key.split("_", 2)[2] not in rows["key_hash"][0]
    bad = runner.invoke(app, ["keys", "create", "--scope", "root", "--db", str(db)])
    assert bad.exit_code == 2 and "scope" in bad.output
