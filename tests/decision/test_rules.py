"""Rules engine: the expression parser, validation on load, lists, modes, hot reload and backtests."""

from __future__ import annotations

import os
import re
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from shopguard.decision.rules import (
    ExpressionError,
    ReloadingRules,
    RuleSet,
    backtest,
    evaluate,
    parse_expression,
    run_backtest,
)
from shopguard.errors import ConfigError, ValidationFailed

CTX = {"amount": 1.5, "type": "pay", "status": "failure", "user_failed_payments_10m": 6, "score": 0.93,
       "user_id": "u1", "attrs": {"bin_country": "NG", "n": 3}, "rating": None}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("user_failed_payments_10m >= 5 and amount < 2", True),
        ("user_failed_payments_10m >= 5 and amount < 1", False),
        ("type == 'pay' or type == \"order\"", True),
        ("not (amount > 1)", False),
        ("type in ['pay', 'refund']", True),
        ("type not in ['pay', 'refund']", False),
        ("attrs.bin_country == 'NG'", True),
        ("attrs.n * 2 + 1 == 7", True),
        ("-amount < 0", True),
        ("abs(-amount) == 1.5 and max(1, 2, 3) == 3 and min(amount, 9) == 1.5", True),
        ("lower('AbC') == 'abc' and len(user_id) == 2", True),
        ("rating > 3", False),  # missing values satisfy no comparison
        ("rating != 3", False),
        ("missing_feature == 1", False),
        ("amount / 0 > 1", False),  # division by zero is missing, not an error
        ("score >= 0.9 and status == 'failure'", True),
        ("amount == 'text'", False),  # different kinds are never equal
        ("true and not false", True),
        ("1e2 == 100", True),
    ],
)
def test_expressions_evaluate(expr: str, expected: bool) -> None:
    assert evaluate(expr, CTX) is expected


@pytest.mark.parametrize(
    ("expr", "needle"),
    [
        ("", "empty"),
        ("amount >", "unexpected"),
        ("amount >= 5 and", "unexpected"),
        ("(amount > 1", "expected ')'"),
        ("amount $ 2", "unexpected character"),
        ("__import__('os')", "unknown function"),
        ("amount.__class__ > 1", None),  # parses as a dotted name; refused at rule validation, below
        ("abs(1, 2)", "takes 1..1"),
        ("type in 'pay'", "expected '['"),
        ("a = 1", "unexpected character"),
    ],
)
def test_bad_expressions(expr: str, needle: str | None) -> None:
    if needle is None:
        parse_expression(expr)
        return
    with pytest.raises(ExpressionError, match=re.escape(needle)):
        parse_expression(expr)


def test_python_is_never_evaluated() -> None:
    # Things eval() would run are simply names or errors here.
    with pytest.raises(ExpressionError):
        parse_expression("[x for x in ().__class__.__bases__]")
    with pytest.raises(ExpressionError):
        parse_expression("lambda: 1")


def _rules(*rules: dict, **top: object) -> RuleSet:
    return RuleSet.from_dict({"rules": list(rules), **top}, strict_names={"user_failed_payments_10m"})


R_SMALL = {"name": "small", "when": "amount < 2", "action": "review", "reason": "SMALL", "priority": 1}
R_BURST = {"name": "burst", "when": "user_failed_payments_10m >= 5", "action": "block", "reason": "BURST",
           "priority": 5, "scenario": "card_testing"}


def test_first_match_follows_priority_and_all_match_collects() -> None:
    first = _rules(R_SMALL, R_BURST)
    res = first.evaluate(CTX)
    assert [h.name for h in res.hits] == ["burst"] and res.action == "block"
    every = _rules(R_SMALL, R_BURST, mode="all_match")
    res = every.evaluate(CTX)
    assert [h.name for h in res.hits] == ["burst", "small"]
    assert res.action == "block" and res.reasons == ["BURST", "SMALL"]


def test_disabled_rules_do_not_fire() -> None:
    rs = _rules({**R_BURST, "enabled": False})
    assert rs.evaluate(CTX).hits == []


def test_deny_list_wins_over_allow_and_rules() -> None:
    rs = _rules(R_SMALL, lists={"deny": {"instruments": ["card_9"]}, "allow": {"users": ["u1"]}})
    res = rs.evaluate({**CTX, "payment_instrument": "card_9"})
    assert res.list_match == "deny" and res.action == "block" and res.reasons == ["DENYLIST_INSTRUMENTS"]
    res = rs.evaluate(CTX)
    assert res.list_match == "allow" and res.action == "allow"
    assert rs.evaluate({**CTX, "user_id": "u2"}).action == "review"


@pytest.mark.parametrize(
    ("rule", "field", "needle"),
    [
        ({**R_SMALL, "when": "amount <"}, "rules[0].when", "rule 'small'"),
        ({**R_SMALL, "when": "amout < 2"}, "rules[0].when", "unknown name 'amout'"),
        ({**R_SMALL, "when": "amount == 'x'"}, "rules[0].when", "is a number but is compared with text"),
        ({**R_SMALL, "action": "explode"}, "rules.0.action", "rule 'small'"),
        ({**R_SMALL, "reason": "lower case"}, "rules.0.reason", "UPPER_SNAKE_CASE"),
        ({**R_SMALL, "colour": "red"}, "rules.0.colour", "Extra inputs"),
        ({**R_SMALL, "when": "os.system == 1"}, "rules[0].when", "only attrs.<key> may be dotted"),
    ],
)
def test_validation_names_rule_and_problem(rule: dict, field: str, needle: str) -> None:
    with pytest.raises(ValidationFailed, match=needle) as err:
        _rules(rule)
    assert err.value.field == field


def test_duplicate_names_and_bad_yaml_are_refused() -> None:
    with pytest.raises(ValidationFailed, match="duplicate rule name"):
        _rules(R_SMALL, R_SMALL)
    with pytest.raises(ValidationFailed, match="not valid YAML"):
        RuleSet.from_yaml("rules: [", source="x.yaml")
    with pytest.raises(ValidationFailed, match="mapping"):
        RuleSet.from_yaml("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="does not exist"):
        RuleSet.load("/nonexistent/rules.yaml")


def test_example_rule_file_loads() -> None:
    path = Path(__file__).resolve().parents[2] / "examples" / "rules.yaml"
    rs = RuleSet.load(path)
    assert len(rs) >= 5


def test_hot_reload_keeps_last_good_rules(tmp_path: Path) -> None:
    import yaml

    p = tmp_path / "rules.yaml"
    p.write_text(yaml.safe_dump({"rules": [R_SMALL]}))
    live = ReloadingRules(p, check_every=0.0)
    assert [r.name for r in live.current().rules] == ["small"]
    time.sleep(0.01)
    p.write_text(yaml.safe_dump({"rules": [R_SMALL, {**R_SMALL, "name": "big", "when": "amount > 100"}]}))
    os.utime(p, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert [r.name for r in live.current().rules] == ["small", "big"]
    p.write_text("rules:\n  - name: broken\n    when: 'amount <'\n    action: block\n    reason: X\n")
    assert [r.name for r in live.current().rules] == ["small", "big"]  # the broken edit is refused
    assert live.last_error is not None and "broken" in live.last_error


def test_backtest_counts_hits_precision_and_volume() -> None:
    rs = _rules(R_SMALL, R_BURST)
    rows = [{"event_id": f"e{i}", "amount": 1.0 if i % 2 else 50.0, "user_failed_payments_10m": i} for i in range(10)]
    labels = {"e5": 1, "e7": 1, "e9": 1, "e2": 1}
    report = {r["rule"]: r for r in backtest(rs, rows, labels, days=2.0)}
    assert report["small"]["hits"] == 5 and report["small"]["true_positives"] == 3
    assert report["small"]["precision"] == pytest.approx(0.6)
    assert report["burst"]["hits"] == 5 and report["burst"]["alerts_per_day"] == 2.5
    assert report["(any rule)"]["hits"] == 7 and report["(any rule)"]["recall"] == 0.75


def test_backtest_over_a_store_uses_point_in_time_features(store) -> None:  # type: ignore[no-untyped-def]
    t0 = datetime(2024, 5, 1, 10)
    events = [{"event_id": f"p{i}", "ts": t0 + timedelta(seconds=30 * i), "type": "pay", "user_id": "u1",
               "amount": 1.0, "status": "failure", "payment_instrument": "c1"} for i in range(8)]
    events.append({"event_id": "ok", "ts": t0 + timedelta(hours=5), "type": "pay", "user_id": "u2", "amount": 40.0,
                   "status": "success", "payment_instrument": "c2"})
    store.append_events(events)
    store.append_labels([{"entity_kind": "event", "entity_id": f"p{i}", "label": 1, "scenario": "card_testing",
                          "labeled_at": t0 + timedelta(days=3)} for i in range(8)])
    names = {"user_failed_payments_10m"}
    from shopguard.decision.rules import known_feature_names

    if "user_failed_payments_10m" not in known_feature_names():
        pytest.skip("the feature set has no user_failed_payments_10m")
    rs = RuleSet.from_dict({"rules": [{**R_BURST, "when": "user_failed_payments_10m >= 5 and amount < 2"}]},
                           strict_names=names)
    report = run_backtest(store, rs)
    burst = report["rules"][0]
    # Events p0..p4 see 0..4 earlier failures; p5, p6, p7 see >= 5: three hits, all true positives.
    assert burst["hits"] == 3 and burst["precision"] == 1.0
    assert report["events"] == 9 and report["positives"] == 8
