"""D1, D7, D10, D12: rule files that used to crash or silently disable the decision path."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tests.security.conftest import GOOD_RULES, auth, event, running
from typer.testing import CliRunner

from shopguard.cli.main import app as cli
from shopguard.decision.rules import ReloadingRules, RuleSet, evaluate
from shopguard.errors import ValidationFailed

runner = CliRunner()
CHAIN = "+".join(["1"] * 975) + " > 0"  # under 2,000 characters


def _rule(when: str) -> str:
    return f"rules:\n  - name: chain\n    when: \"{when}\"\n    action: review\n    reason: CHAIN\n"


def _wait_for(cond, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


# D1 -------------------------------------------------------------------------------------------------
def test_d1_rules_check_refuses_an_expression_over_budget(tmp_path: Path) -> None:
    assert len(CHAIN) < 2_000
    f = tmp_path / "chain.yaml"
    f.write_text(_rule(CHAIN))
    res = runner.invoke(cli, ["rules", "check", "--rules", str(f)])
    assert res.exit_code == 2, res.output
    assert "nested" in res.output and "chain" in res.output
    with pytest.raises(ValidationFailed):
        RuleSet.load(f)


def test_d1_a_within_budget_chain_still_works_and_deep_trees_never_recurse() -> None:
    assert evaluate("+".join(["1"] * 40) + " == 40", {})
    assert evaluate(" and ".join(["amount > 1"] * 40), {"amount": 2})


def test_d1_hot_reload_of_the_chain_keeps_the_last_good_rules(tmp_path: Path) -> None:
    with running(tmp_path) as (c, keys):
        rules = tmp_path / "rules.yaml"
        rules.write_text(_rule(CHAIN))
        time.sleep(0.2)
        for i in range(5):
            r = c.post("/v1/events", json=event(f"e{i}", amount=1.0), headers=auth(keys["ingest"]))
            assert r.status_code == 200, r.text
            assert "tiny" in r.json()["rule_hits"]  # the last good rules keep deciding
            time.sleep(0.05)
        ready = c.get("/readyz", headers=auth(keys["analyst"])).json()
        assert any("nested" in p for p in ready["problems"]), ready


# D7 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [
    b"rules: " + b"[" * 5000 + b"]" * 5000,
    b"rules:\n" + b"".join(b"  " * i + b"- \n" for i in range(1, 5000)),
    b"rules:\n  - {name: x, when: 'amount < 2', action: review, reason: \xff\xfe}\n",
    _rule("+".join(["1"] * 999)).encode(),  # 1,997 characters
])
def test_d7_any_broken_edit_is_caught_recorded_and_never_500(tmp_path: Path, content: bytes) -> None:
    with running(tmp_path) as (c, keys):
        rules = tmp_path / "rules.yaml"
        rules.write_bytes(content)
        time.sleep(0.15)
        r = c.post("/v1/events", json=event("e1", amount=1.0), headers=auth(keys["ingest"]))
        assert r.status_code == 200, r.text
        assert r.json()["rule_hits"] == ["tiny"]
        _wait_for(lambda: c.get("/readyz").json()["problems"])
        status = c.get("/v1/rules", headers=auth(keys["analyst"])).json()
        assert status["last_error"] and status["rules"] == 1


def test_d7_reloader_never_raises(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text(GOOD_RULES)
    rr = ReloadingRules(f, check_every=0)
    f.write_bytes(b"rules: " + b"[" * 100_000)
    time.sleep(0.01)
    assert len(rr.current()) == 1 and rr.last_error
    f.write_text(GOOD_RULES.replace("amount < 2", "amount < 3"))
    assert rr.reload() and rr.last_error is None


# D10 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["", "\n", "# all commented out\n", "mode: first_match\n"])
def test_d10_an_empty_rule_file_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValidationFailed, match="rules: \\[\\]"):
        RuleSet.from_yaml(text)
    with running(tmp_path) as (c, keys):
        (tmp_path / "rules.yaml").write_text(text)
        time.sleep(0.15)
        r = c.post("/v1/events", json=event("e1", user="u_bad"), headers=auth(keys["ingest"]))
        assert r.status_code == 200 and r.json()["action"] == "block"  # the deny list still applies
        status = c.get("/v1/rules", headers=auth(keys["analyst"])).json()
        assert status["rules"] == 1 and "rules: []" in status["last_error"]


def test_d10_an_explicitly_empty_rule_file_is_accepted() -> None:
    assert len(RuleSet.from_yaml("rules: []\n")) == 0


# D12 ------------------------------------------------------------------------------------------------
def test_d12_readyz_hides_internals_from_callers_without_a_key(tmp_path: Path) -> None:
    with running(tmp_path) as (c, keys):
        (tmp_path / "rules.yaml").write_text(
            "rules:\n  - {name: secret_rule, when: 'user_failed_payments_10mx > 3', action: block, reason: X}\n")
        c.post("/v1/rules/reload", headers=auth(keys["admin"]))
        anon = c.get("/readyz").json()
        assert anon["problems"], anon
        text = " ".join(anon["problems"])
        for leak in ("rules.yaml", str(tmp_path), "secret_rule", "user_failed_payments", "10mx"):
            assert leak not in text
        bad_key = c.get("/readyz", headers={"Authorization": "Bearer sg_x_y"}).json()
        assert "rules.yaml" not in " ".join(bad_key["problems"])
        ingest_only = c.get("/readyz", headers=auth(keys["ingest"])).json()
        assert "rules.yaml" not in " ".join(ingest_only["problems"])
        full = c.get("/readyz", headers=auth(keys["analyst"])).json()
        assert "secret_rule" in " ".join(full["problems"])
