"""The issue's closing note: a field named ``probability`` must be one. A model calibrated without labels
only knows the score's percentile among validation events: the service answers ``probability: null``
for it and gives rules ``score_percentile`` instead, so ``probability >= 0.98`` never reads a percentile."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.security.conftest import auth, event, running, small_bundle

RULES = ("rules:\n"
         "  - {name: very_sure, when: 'probability >= 0.0', action: review, reason: VERY_SURE}\n"
         "  - {name: top_share, when: 'score_percentile >= 0.0', action: review, reason: TOP_SHARE}\n"
         "mode: all_match\n")


@pytest.mark.parametrize("labelled", [False, True])
def test_probability_is_null_for_percentile_calibrated_models(tmp_path: Path, labelled: bool) -> None:
    model = small_bundle(tmp_path / "m", detector="hbos", labelled=labelled)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    with running(tmp_path, model=model, rules=rules) as (c, keys):
        r = c.post("/v1/events", json=event("e1", amount=3.0), headers=auth(keys["ingest"]))
        assert r.status_code == 200, r.text
        d = r.json()
        assert d["score"] is not None and d["model_version"]
        if labelled:
            assert 0.0 <= d["probability"] <= 1.0 and d["rule_hits"] == ["very_sure"]
        else:
            assert d["probability"] is None
            assert d["rule_hits"] == ["top_share"]  # a percentile, under its own name
