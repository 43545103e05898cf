"""``shopguard interests`` and ``shopguard churn`` on a small simulated store with a tiny pretrained model."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from shopguard.cli.main import app
from shopguard.events.simulate import SimulationConfig, simulate_shop
from shopguard.events.simulate.churn import ChurnConfig, apply_churn
from shopguard.store import EventStore

runner = CliRunner()


@pytest.fixture(scope="module")
def shop_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(db, pretrained model folder, a user id) of a 40-user, 18-day shop where some users leave."""
    tmp = tmp_path_factory.mktemp("heads-cli")
    shop, _ = apply_churn(simulate_shop(SimulationConfig(users=40, days=18, seed=9)), ChurnConfig(monthly_rate=1.0))
    db = tmp / "shop.duckdb"
    with EventStore(db) as store:
        store.append_events(shop.events)
    r = runner.invoke(app, ["pretrain", "--db", str(db), "--out", str(tmp / "pre"), "--epochs", "1", "--max-len", "8",
                            "--threads", "1"])
    assert r.exit_code == 0, r.output
    user = shop.events.filter(shop.events["type"] == "view")["user_id"][0]
    return db, tmp / "pre", user


def test_interests_lists_ranked_values(shop_store: tuple[Path, Path, str]) -> None:
    db, pre, user = shop_store
    r = runner.invoke(app, ["interests", "--db", str(db), "--model", str(pre), "--user", user, "--top", "3"])
    assert r.exit_code == 0, r.output
    assert "next category" in r.output and "next merchant" in r.output and "probability" in r.output
    r = runner.invoke(app, ["interests", "--db", str(db), "--model", str(pre), "--user", user, "--fields", "category",
                            "--finetune", "--horizon-days", "3"])
    assert r.exit_code == 0, r.output
    assert "fine-tuned head" in r.output


def test_interests_errors_name_the_problem(shop_store: tuple[Path, Path, str], tmp_path: Path) -> None:
    db, pre, user = shop_store
    r = runner.invoke(app, ["interests", "--db", str(db), "--model", str(pre), "--user", "ghost"])
    assert r.exit_code == 2 and "ghost" in r.output
    r = runner.invoke(app, ["interests", "--db", str(db), "--model", str(pre), "--user", user, "--fields", "colour"])
    assert r.exit_code == 2 and "colour" in r.output
    r = runner.invoke(app, ["interests", "--db", str(db), "--model", str(tmp_path), "--user", user])
    assert r.exit_code == 2 and "no pretrained sequence model" in r.output


def test_churn_ranks_users_and_saves(shop_store: tuple[Path, Path, str], tmp_path: Path) -> None:
    db, pre, _ = shop_store
    r = runner.invoke(app, ["churn", "--db", str(db), "--model", str(pre), "--horizon-days", "3", "--top", "5",
                            "--save", str(tmp_path / "churn")])
    assert r.exit_code == 0, r.output
    assert "churn risk" in r.output and "without activity" in r.output
    assert (tmp_path / "churn" / "detector.json").exists()
    r = runner.invoke(app, ["churn", "--db", str(db), "--features", "rfm", "--horizon-days", "3"])
    assert r.exit_code == 0, r.output


def test_churn_errors_name_the_problem(shop_store: tuple[Path, Path, str], tmp_path: Path) -> None:
    db, _, _ = shop_store
    r = runner.invoke(app, ["churn", "--db", str(db)])
    assert r.exit_code == 2 and "--model" in r.output
    r = runner.invoke(app, ["churn", "--db", str(db), "--features", "vibes"])
    assert r.exit_code == 2 and "vibes" in r.output
    r = runner.invoke(app, ["churn", "--db", str(tmp_path / "none.duckdb"), "--features", "rfm"])
    assert r.exit_code == 2 and "no store" in r.output
