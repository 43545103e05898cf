"""Property tests of the rule expression parser: total on any text, faithful on generated expressions."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shopguard.decision.rules import ExpressionError, compile_expression, evaluate, parse_expression

FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TOKENS = ["amount", "score", "type", "attrs.x", "(", ")", "[", "]", ",", "and", "or", "not", "in", "==", "!=",
          "<", "<=", ">", ">=", "+", "-", "*", "/", "1", "2.5", "'pay'", "true", "null", "abs", "max", "lower"]


@FAST
@given(st.text(max_size=80))
def test_any_text_parses_or_raises_expression_error(src: str) -> None:
    try:
        ast = parse_expression(src)
    except ExpressionError:
        return
    assert isinstance(ast, tuple)


@FAST
@given(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=25).map(" ".join),
       st.dictionaries(st.sampled_from(["amount", "score", "type", "attrs"]),
                       st.one_of(st.none(), st.floats(allow_nan=True), st.integers(), st.text(max_size=5),
                                 st.dictionaries(st.just("x"), st.integers()))))
def test_token_soup_never_crashes_evaluation(src: str, ctx: dict[str, Any]) -> None:
    try:
        fn = compile_expression(parse_expression(src))
    except ExpressionError:
        return
    try:
        fn(ctx)
    except (TypeError, ValueError, AttributeError):
        pass  # Rule.matches turns these into "no match"; anything else (e.g. RecursionError) is a bug


# -- generated expressions against a reference evaluator ------------------------------------------------
NUM = st.integers(min_value=-50, max_value=50)


@st.composite
def arith(draw: Any, depth: int = 0) -> tuple[str, float]:
    """(source, value) of an arithmetic expression over literals and the names a, b."""
    env = {"a": 3.0, "b": -2.0}
    if depth > 3 or draw(st.booleans()):
        choice = draw(st.sampled_from(["lit", "a", "b"]))
        if choice == "lit":
            n = draw(NUM)
            return (f"({n})" if n < 0 else str(n)), float(n)
        return choice, env[choice]
    op = draw(st.sampled_from(["+", "-", "*"]))
    ls, lv = draw(arith(depth + 1))
    rs, rv = draw(arith(depth + 1))
    val = {"+": lv + rv, "-": lv - rv, "*": lv * rv}[op]
    return f"({ls} {op} {rs})", val


@st.composite
def boolean(draw: Any, depth: int = 0) -> tuple[str, bool]:
    if depth > 2 or draw(st.booleans()):
        ls, lv = draw(arith())
        rs, rv = draw(arith())
        op = draw(st.sampled_from(["==", "!=", "<", "<=", ">", ">="]))
        val = {"==": lv == rv, "!=": lv != rv, "<": lv < rv, "<=": lv <= rv, ">": lv > rv, ">=": lv >= rv}[op]
        return f"{ls} {op} {rs}", val
    kind = draw(st.sampled_from(["and", "or", "not"]))
    if kind == "not":
        s, v = draw(boolean(depth + 1))
        return f"not ({s})", not v
    ls, lv = draw(boolean(depth + 1))
    rs, rv = draw(boolean(depth + 1))
    return f"({ls}) {kind} ({rs})", (lv and rv) if kind == "and" else (lv or rv)


@FAST
@given(arith())
def test_arithmetic_matches_python(pair: tuple[str, float]) -> None:
    src, expected = pair
    got = compile_expression(parse_expression(src))({"a": 3.0, "b": -2.0})
    assert got is not None and math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9)


@FAST
@given(boolean())
def test_conditions_match_python(pair: tuple[str, bool]) -> None:
    src, expected = pair
    assert evaluate(src, {"a": 3.0, "b": -2.0}) is expected


@FAST
@given(st.lists(st.one_of(NUM, st.sampled_from(["'x'", "'y'"])), min_size=0, max_size=6), st.sampled_from([1, 2, "x"]))
def test_membership_matches_python(items: list[Any], value: Any) -> None:
    src = "v in [" + ", ".join(str(i) for i in items) + "]"
    py_items = [i.strip("'") if isinstance(i, str) else i for i in items]
    assert evaluate(src, {"v": value}) is (value in py_items)
    assert evaluate(src.replace(" in ", " not in "), {"v": value}) is (value not in py_items)
