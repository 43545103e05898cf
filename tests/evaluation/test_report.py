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


def test_report_lists_warnings_with_their_model(tmp_path: Path) -> None:
    good, weak = _result("lightgbm", 0), _result("ecod", 1)
    rng = np.random.default_rng(5)
    y = (rng.random(60) < 0.2).astype(int)
    weak["metrics"] = M.summary(y, -y + rng.normal(size=60) * 0.1)  # tiny, few fraud, inverted
    weak["data"] = {"y": y, "scores": -y.astype(float), "scenarios": np.array([""] * 60, dtype=object)}
    # Training-time findings travel with the model; its old test-window ones are recomputed here.
    good["warnings"] = [{"code": "label_leak", "severity": "warning", "message": "feature 'x' leaks",
                         "value": {"feature": "x", "auc": 1.0}, "window": "train"},
                        {"code": "tiny_window", "severity": "warning", "message": "old", "value": 3,
                         "window": "test"}]
    good["info"] = {"train_events": 1000, "train_positives": 10}  # 1% in training vs ~10% in the window
    report = build_report([good, weak], window={"start": "2024-01-01", "end": "2024-01-08"})
    got = {(w["detector"], w["code"]) for w in report["warnings"]}
    assert got == {("lightgbm", "label_leak"), ("lightgbm", "positive_rate_shift"), ("ecod", "tiny_window"),
                   ("ecod", "few_positives"), ("ecod", "auc_below_chance")}
    assert all(w["model"] and w["message"] for w in report["warnings"])
    assert "warnings" not in report["models"][0]
    write_json(report, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["warnings"] == report["warnings"]
    write_html(report, [good, weak], tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "<h2>Warnings</h2>" in page and "label_leak" in page and "worse than chance" in page
    # ROC-AUC shown with its interval.
    lo, hi = good["metrics"]["roc_auc_ci"]
    assert f"{good['metrics']['roc_auc']:.4f} [{lo:.3f}, {hi:.3f}]" in page
