"""``shopguard evaluate``: metrics on the held-out window, written as report.json and report.html."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from shopguard.cli.common import DbOption, handle_errors, out, progress
from shopguard.cli.train import open_existing


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)


@handle_errors
def evaluate(
    model: Annotated[list[Path], typer.Option("--model", help="Model directory (repeat to compare models).")],
    db: DbOption = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write report.json here.")] = None,
    html_path: Annotated[Path | None, typer.Option("--html", help="Write a self-contained report.html here.")] = None,
    since: Annotated[datetime | None, typer.Option("--since", help="Window start (default: the model's test window).")] = None,
    until: Annotated[datetime | None, typer.Option("--until", help="Window end (exclusive).")] = None,
    k: Annotated[int, typer.Option("--k", help="Daily alert budget for precision@k.")] = 100,
) -> None:
    """Evaluate models on a time window after their training (known-fraud users removed per day)."""
    from shopguard.pipeline import evaluate as run_evaluate

    with open_existing(db, read_only=True) as store, progress(transient=True) as prog:
        task = prog.add_task("evaluating", total=None)
        report = run_evaluate(store, model, since=since, until=until, json_path=json_path, html_path=html_path,
                              k=k, on_step=lambda m: prog.update(task, description=m))
    print_report(report)
    for p in (json_path, html_path):
        if p:
            out.print(f"wrote {p}")


def print_report(report: dict) -> None:
    t = Table(title=f"Test window {report['window'].get('start')} .. {report['window'].get('end')}")
    cols = ("roc_auc", "average_precision", "recall_at_1pct_fpr", "precision_at_k", "recall_at_threshold")
    for c in ("detector", "events", "fraud", *cols):
        t.add_column(c, justify="left" if c == "detector" else "right")
    for m in report["models"]:
        x = m["metrics"]
        t.add_row(m["detector"], str(x.get("events")), str(x.get("positives")),
                  *[("–" if x.get(c) is None else f"{x[c]:.4f}") for c in cols])
    out.print(t)
    names = sorted({n for m in report["models"] for n in m["metrics"].get("scenarios", {})})
    if names:
        t = Table(title="Recall at 1% FPR per scenario")
        t.add_column("scenario")
        t.add_column("fraud events", justify="right")
        for m in report["models"]:
            t.add_column(m["detector"], justify="right")
        for n in names:
            sc = [m["metrics"].get("scenarios", {}).get(n, {}) for m in report["models"]]
            pos = next((s["positives"] for s in sc if s), 0)
            t.add_row(n, str(pos), *[("–" if s.get("recall_at_1pct_fpr") is None else f"{s['recall_at_1pct_fpr']:.3f}")
                                     for s in sc])
        out.print(t)
