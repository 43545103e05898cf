"""report.json is strict JSON; report.html is self-contained (embedded PNGs, no links out)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from shopguard.evaluation import metrics as M
from shopguard.evaluation.report import build_report, write_html, write_json


def _result(name: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    y = (rng.random(400) < 0.1).astype(int)
    s = rng.normal(size=400) + 2 * y
    sc = np.where(y == 1, rng.choice(["card_testing", "brushing"], 400), "")
    m = M.summary(y, s, days=np.repeat([1, 2], 200), scenarios=[x or None for x in sc], threshold=1.0)
    return {"model_version": f"{name}-1", "detector": name, "supervised": name == "lightgbm", "metrics": m,
            "policy": {"objective": "target_fpr", "medium": 0.1, "high": 0.5, "critical": 0.9,
                       "probability_kind": "probability"},
            "data": {"y": y, "scores": s, "scenarios": sc}}


def test_report_files(tmp_path: Path) -> None:
    results = [_result("lightgbm", 0), _result("ecod", 1)]
    results[1]["metrics"]["roc_auc"] = float("nan")
    report = build_report(results, window={"start": "2024-01-01", "end": "2024-01-08"}, db="x.duckdb")
    write_json(report, tmp_path / "r.json")
    loaded = json.loads((tmp_path / "r.json").read_text())  # strict JSON: NaN became null
    assert loaded["models"][1]["metrics"]["roc_auc"] is None
    assert "data" not in loaded["models"][0]
    write_html(report, results, tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # curves, histograms, scenarios
    assert "card_testing" in html and "brushing" in html
    assert "<script" not in html and "http" not in html
