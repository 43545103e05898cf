"""Text risk in decisions: ``shopguard train --detector text`` and ``shopguard score --text-model``."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from shopguard.cli.main import app
from shopguard.decision.policy import Decision, Policy, RiskLevel
from shopguard.decision.reasons import Reason
from shopguard.events.simulate import SimulationConfig, simulate_shop
from shopguard.models.base import META_FILE, load_detector
from shopguard.models.text.decisions import merge_decision, text_decision
from shopguard.models.text.scoring import TextEventDetector
from shopguard.store import EventStore

runner = CliRunner()
SPLIT = ["--test-days", "2", "--delay-days", "1"]


def _ok(args: list[str]) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A simulated shop, a LightGBM bundle and a text model trained on it through the CLI."""
    root = tmp_path_factory.mktemp("text_int")
    db = root / "shop.duckdb"
    with EventStore(db) as store:
        simulate_shop(SimulationConfig(users=300, days=10, seed=3)).to_store(store)
    _ok(["train", "--db", str(db), "--out", str(root / "lgbm"), "--detector", "lightgbm", *SPLIT])
    out = _ok(["train", "--db", str(db), "--out", str(root / "text"), "--detector", "text", *SPLIT])
    assert "text model" in out
    return {"db": db, "lgbm": root / "lgbm", "text": root / "text", "root": root}


def _test_start(model_dir: Path) -> datetime:
    meta = json.loads((model_dir / META_FILE).read_text())
    return datetime.fromisoformat(meta["metadata"]["split"]["test_start"])


def test_train_text_saves_a_loadable_text_model_fitted_before_the_test_window(shop: dict[str, Path]) -> None:
    model = load_detector(shop["text"])
    assert isinstance(model, TextEventDetector)
    assert model.fit_info_["reviews"] > 0 and model.fit_info_["chats"] > 0


def test_score_with_text_model_puts_text_reasons_first_and_keeps_other_events(shop: dict[str, Path]) -> None:
    since = _test_start(shop["text"])
    plain_db = shop["root"] / "plain.duckdb"
    shutil.copy(shop["db"], plain_db)
    _ok(["score", "--db", str(shop["db"]), "--model", str(shop["lgbm"]), "--text-model", str(shop["text"]),
         "--since", since.isoformat()])
    _ok(["score", "--db", str(plain_db), "--model", str(shop["lgbm"]), "--since", since.isoformat()])
    sql = ("SELECT d.event_id, e.type, d.probability, d.risk_level, d.action, d.reasons FROM decisions d "
           "JOIN events e USING (event_id) ORDER BY d.event_id")
    with EventStore(shop["db"], read_only=True) as s:
        with_text = s.query(sql)
        labels = s.labels()
    with EventStore(plain_db, read_only=True) as s:
        plain = s.query(sql)
    assert with_text.height == plain.height > 0
    both = with_text.join(plain, on="event_id", suffix="_plain")
    text_rows = both.filter(pl.col("type").is_in(["review", "chat"]))
    other = both.filter(~pl.col("type").is_in(["review", "chat"]))
    assert text_rows.height > 0
    # Non-text events: the decision is exactly the tabular one.
    for c in ("probability", "risk_level", "action", "reasons"):
        assert other[c].to_list() == other[f"{c}_plain"].to_list()
    # Text events: a strong text score puts its reasons first and never lowers the probability; a weak
    # one leaves the tabular decision as it is.
    lifted = 0
    for r in text_rows.iter_rows(named=True):
        reasons = json.loads(r["reasons"])
        if reasons and reasons[0]["code"] in ("TEXT_REVIEW", "TEXT_CHAT"):
            lifted += 1
            assert r["probability"] >= max(r["probability_plain"], reasons[0]["weight"]) - 1e-12
            assert r["probability"] >= 0.5
        else:
            assert (r["probability"], r["action"], r["reasons"]) == (r["probability_plain"], r["action_plain"],
                                                                      r["reasons_plain"])
    assert lifted > 0
    # Labelled fake reviews in the window get a high text-driven decision quoting the signal.
    fakes = set(labels.filter((pl.col("entity_kind") == "event") & (pl.col("label") == 1))["entity_id"].to_list())
    fake_reviews = text_rows.filter(pl.col("event_id").is_in(list(fakes)) & (pl.col("type") == "review"))
    assert fake_reviews.height > 0
    texts = [json.loads(x)[0]["text"] for x in fake_reviews["reasons"].to_list()]
    assert any("similar to" in t or "reads as fake" in t or "templated" in t for t in texts), texts
    assert (fake_reviews["probability"] >= 0.5).mean() >= 0.8


def test_score_refuses_a_text_model_dir_that_is_not_one(shop: dict[str, Path]) -> None:
    res = runner.invoke(app, ["score", "--db", str(shop["db"]), "--model", str(shop["lgbm"]),
                              "--text-model", str(shop["lgbm"])])
    assert res.exit_code != 0
    assert "text" in res.output


def _tabular(tab: float, policy: Policy) -> Decision:
    lv = policy.level(tab)
    return Decision(event_id="e1", score=1.5, probability=tab, risk_level=lv, action=policy.action_for(lv),
                    reasons=[Reason(code="AMOUNT", text="amount 900", weight=0.3)])


@pytest.mark.parametrize(("tab", "txt", "level"), [(0.05, 0.97, RiskLevel.CRITICAL), (0.95, 0.6, RiskLevel.CRITICAL),
                                                  (0.01, 0.55, RiskLevel.HIGH)])
def test_merge_takes_the_larger_probability_and_the_policy_level(tab: float, txt: float, level: RiskLevel) -> None:
    policy = Policy(medium=0.1, high=0.5, critical=0.9)
    m = merge_decision(_tabular(tab, policy), "review", txt,
                       ["text 0.97 similar to 14 reviews from 9 accounts this week"], policy)
    assert m.probability == max(tab, txt) and m.risk_level == level and m.action == policy.action_for(level)
    assert m.score == 1.5
    assert [r.code for r in m.reasons] == ["TEXT_REVIEW", "AMOUNT"]
    assert m.reasons[0].text.startswith("text 0.97 similar to 14 reviews")


@pytest.mark.parametrize("txt", [0.0, 0.2, 0.49])
def test_a_weak_text_score_leaves_the_decision_unchanged(txt: float) -> None:
    policy = Policy(medium=0.001, high=0.01, critical=0.4)  # thresholds tuned on all events: far below 0.5
    d = _tabular(0.0005, policy)
    assert merge_decision(d, "chat", txt, ["refund-abuse script (0.20)"], policy) == d


def test_text_only_decision_names_the_score_when_no_signal_fired() -> None:
    d = text_decision("c1", "chat", 0.2, [], Policy())
    assert d.reasons[0].code == "TEXT_CHAT" and "0.20" in d.reasons[0].text
    assert d.risk_level == RiskLevel.MEDIUM
