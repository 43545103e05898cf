"""``shopguard evaluate``'s terminal output stays readable at 80 columns, with intervals and warnings."""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console

from shopguard.cli.evaluate import print_report
from shopguard.evaluation import metrics as M
from shopguard.evaluation.report import build_report


def _report(detectors: list[str]) -> dict:
    rng = np.random.default_rng(0)
    results = []
    for i, name in enumerate(detectors):
        y = (rng.random(600) < (0.02 if i == 0 else 0.08)).astype(int)
        s = rng.normal(size=600) + 2 * y
        sc = np.where(y == 1, rng.choice(["card_testing", "account_takeover_credential_stuffing"], 600), "")
        m = M.summary(y, s, days=np.repeat([1, 2, 3], 200), scenarios=[x or None for x in sc], threshold=1.0)
        results.append({"model_version": f"{name}-20240101", "detector": name, "supervised": True, "metrics": m})
    return build_report(results, window={"start": "2024-03-11T00:00:00", "end": "2024-03-18T00:00:00"})


def _render(report: dict, width: int) -> str:
    con = Console(width=width, file=io.StringIO(), record=True, force_terminal=True, color_system="standard")
    print_report(report, con)
    return con.export_text(styles=False)


@pytest.mark.parametrize("n_models", [1, 2, 5])
def test_fits_80_columns_without_squeezed_cells(n_models: int) -> None:
    names = ["lightgbm", "iforest", "ecod", "hbos", "baseline"][:n_models]
    report = _report(names)
    text = _render(report, 80)
    lines = text.splitlines()
    assert max(len(x) for x in lines) <= 80
    # Every number is printed whole: no cell wrapped onto two lines or cut with an ellipsis.
    for m in report["models"]:
        x = m["metrics"]
        lo, hi = x["roc_auc_ci"]
        assert f"{x['roc_auc']:.4f}" in text and f"{lo:.3f}–{hi:.3f}" in text
        assert f"{x['average_precision']:.4f}" in text
    for name in names:
        assert any(name in line for line in lines)
    assert "ROC-AUC" in text and "95% CI" in text and "card_testing" in text


def test_warnings_printed_in_yellow() -> None:
    report = _report(["lightgbm"])
    con = Console(width=80, file=io.StringIO(), record=True, force_terminal=True, color_system="standard")
    print_report(report, con)
    raw = con.export_text(styles=True, clear=False)
    assert report["warnings"] and report["warnings"][0]["code"] == "few_positives"
    assert "\x1b[33m" in raw  # yellow
    assert "numbers mean little" in " ".join(con.export_text(styles=False).split())


def test_wide_terminal_puts_models_side_by_side() -> None:
    report = _report(["lightgbm", "iforest", "ecod", "hbos", "baseline"])
    text = _render(report, 160)
    header = next(line for line in text.splitlines() if "metric" in line)
    assert all(n in header for n in ["lightgbm", "iforest", "ecod", "hbos", "baseline"])


def test_print_warnings_takes_checks_or_dicts() -> None:
    from shopguard.cli.evaluate import print_warnings
    from shopguard.evaluation.checks import Check

    con = Console(width=80, file=io.StringIO(), record=True)
    print_warnings([Check("label_leak", "warning", "feature 'x' [leaks]", None, "train"),
                    {"code": "n", "severity": "info", "message": "a note", "detector": "ecod"}], con)
    text = con.export_text()
    assert "warning: feature 'x' [leaks]" in text and "info (ecod): a note" in text
