"""Reason codes from contributions, in the feature definitions' words."""

from __future__ import annotations

import polars as pl

from shopguard.decision.reasons import reasons_from_contributions
from shopguard.features import FeatureSet


def test_top_positive_contributions_in_domain_words() -> None:
    fs = FeatureSet()
    contrib = pl.DataFrame({"card_failed_payments_10m": [2.5, -1.0], "amount": [0.5, 0.1], "hour": [-0.3, 0.0]})
    feats = pl.DataFrame({"card_failed_payments_10m": [7.0, 0.0], "amount": [1.5, 30.0], "hour": [3.0, 12.0]})
    reasons = reasons_from_contributions(contrib, feats, fs, top=3)
    assert [r.code for r in reasons[0]] == ["CARD_FAILED_PAYMENTS_10M", "AMOUNT"]  # negative 'hour' left out
    assert reasons[0][0].text == "7 failed payments in 10 min on this card"
    assert reasons[0][1].text == "amount 1.50"
    assert reasons[0][0].weight == 2.5
    assert [r.code for r in reasons[1]] == ["AMOUNT"]


def test_unknown_feature_and_missing_value_fallback() -> None:
    contrib = pl.DataFrame({"attr_custom": [1.0], "amount": [0.5]})
    feats = pl.DataFrame({"attr_custom": ["gold"], "amount": [None]}, schema={"attr_custom": pl.Utf8, "amount": pl.Float64})
    r = reasons_from_contributions(contrib, feats, FeatureSet(), top=2)[0]
    assert r[0].text == "attr_custom = gold"
    assert r[1].text == "amount is missing"


def test_empty_and_no_feature_set() -> None:
    assert reasons_from_contributions(pl.DataFrame({"a": []}, schema={"a": pl.Float64}),
                                      pl.DataFrame({"a": []}, schema={"a": pl.Float64})) == []
    r = reasons_from_contributions(pl.DataFrame({"x": [3.0]}), pl.DataFrame({"x": [0.123456]}))[0]
    assert r[0].text == "x = 0.1235"
