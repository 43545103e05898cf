"""``shopguard simulate`` writes a store (or Parquet files) that ``shopguard stats`` can read."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from shopguard.cli.main import app
from shopguard.events.simulate import SCENARIOS

runner = CliRunner()


def test_simulate_into_store_then_stats(tmp_path: Path) -> None:
    db = tmp_path / "shop.duckdb"
    res = runner.invoke(app, ["simulate", "--users", "200", "--days", "6", "--seed", "5", "--db", str(db)])
    assert res.exit_code == 0, res.output
    assert "Labels by scenario" in res.output and "card_testing" in res.output
    res = runner.invoke(app, ["stats", "--db", str(db), "--json"])
    assert res.exit_code == 0, res.output
    stats = json.loads(res.output)
    assert stats["events"] > 1000
    assert {"view", "order", "pay", "review", "shipment"} <= set(stats["events_by_type"])
    assert {r["scenario"] for r in stats["labels_by_scenario"]} == set(SCENARIOS)
    # Re-running the same simulation adds nothing.
    res = runner.invoke(app, ["simulate", "--users", "200", "--days", "6", "--seed", "5", "--db", str(db)])
    assert res.exit_code == 0 and "0 new events, 0 new labels" in " ".join(res.output.split())


def test_simulate_to_parquet(tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        [
            "simulate",
            "--users",
            "100",
            "--days",
            "3",
            "--start",
            "2024-06-01",
            "--out",
            str(tmp_path / "sim"),
        ],
    )
    assert res.exit_code == 0, res.output
    ev = pl.read_parquet(tmp_path / "sim" / "events.parquet")
    lab = pl.read_parquet(tmp_path / "sim" / "labels.parquet")
    assert ev.height > 100 and lab.height > 0
    assert str(ev["ts"].min()).startswith("2024-06-01")


def test_bad_option_is_one_clear_error(tmp_path: Path) -> None:
    res = runner.invoke(app, ["simulate", "--users", "5", "--db", str(tmp_path / "x.duckdb")])
    assert res.exit_code == 2
    assert "users" in res.output and "5" in res.output
    res = runner.invoke(app, ["simulate", "--start", "yesterday", "--db", str(tmp_path / "x.duckdb")])
    assert res.exit_code == 2 and "--start" in res.output
    res = runner.invoke(app, ["simulate", "--out", str(tmp_path), "--db", str(tmp_path / "x.duckdb")])
    assert res.exit_code == 2 and "not both" in res.output
    res = runner.invoke(app, ["simulate", "--rate", "phishing=1", "--db", str(tmp_path / "x.duckdb")])
    assert res.exit_code == 2 and "phishing" in res.output
    res = runner.invoke(app, ["simulate", "--rate", "card_testing=-1", "--db", str(tmp_path / "x.duckdb")])
    assert res.exit_code == 2 and "card_testing" in res.output


def test_rate_override_switches_a_scenario_off(tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        [
            "simulate",
            "--users",
            "100",
            "--days",
            "3",
            "--rate",
            "card_testing=0",
            "--out",
            str(tmp_path / "sim"),
        ],
    )
    assert res.exit_code == 0, res.output
    lab = pl.read_parquet(tmp_path / "sim" / "labels.parquet")
    assert "card_testing" not in set(lab["scenario"]) and "account_takeover" in set(lab["scenario"])
