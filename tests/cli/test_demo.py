"""``shopguard demo`` end to end on a small shop: simulate, train every detector, evaluate, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shopguard.cli.main import app


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reports_every_model(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        app, ["demo", "--home", str(tmp_path), "--users", "300", "--days", "12", "--delay-days", "2",
              "--test-days", "3", "--seed", "3"],
    )
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "reports" / "report.json").read_text())
    detectors = [m["detector"] for m in report["models"]]
    assert detectors[0] == "lightgbm" and "foundation_surprise" in detectors and "iforest" in detectors
    html = (tmp_path / "reports" / "report.html").read_text()
    assert "data:image/png;base64," in html and "<script src=" not in html  # self-contained
    assert "recall at 1% false-positive rate" in " ".join(res.output.split())
    # a second run reuses the store instead of simulating again
    again = CliRunner().invoke(app, ["demo", "--home", str(tmp_path), "--no-foundation", "--delay-days", "2",
                                     "--test-days", "3"])
    assert again.exit_code == 0, again.output
    assert "already in" in again.output
