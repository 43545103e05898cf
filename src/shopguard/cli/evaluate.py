"""``shopguard evaluate``: metrics on the held-out window, written as report.json and report.html."""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shopguard.cli.common import DbOption, handle_errors, open_store, out, progress


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
    unlabeled: Annotated[str | None, typer.Option(
        "--unlabeled", help="auto, negative or ignore: what events without a label row are (default: the rule "
        "each model was trained under).")] = None,
) -> None:
    """Evaluate models on a time window after their training (known-fraud users removed per day, unlabelled
    events left out)."""
    from shopguard.pipeline import evaluate as run_evaluate

    with open_store(db, read_only=True) as store, progress(transient=True) as prog:
        task = prog.add_task("evaluating", total=None)
        report = run_evaluate(store, model, since=since, until=until, json_path=json_path, html_path=html_path,
                              k=k, unlabeled=unlabeled, on_step=lambda m: prog.update(task, description=m))
    print_report(report)
    for p in (json_path, html_path):
        if p:
            out.print(f"wrote {p}")


# (label, metric key, digits) rows of the summary table; ``None`` key rows print the interval above.
_ROWS: tuple[tuple[str, str, int], ...] = (
    ("events", "events", 0),
    ("fraud events", "positives", 0),
    ("ROC-AUC", "roc_auc", 4),
    ("  95% CI", "roc_auc_ci", 3),
    ("average precision", "average_precision", 4),
    ("  95% CI", "average_precision_ci", 3),
    ("recall @1% FPR", "recall_at_1pct_fpr", 4),
    ("precision@k / day", "precision_at_k", 4),
    ("recall @threshold", "recall_at_threshold", 4),
)
_LABEL_W = 18
_MIN_COL_W = 12


def _cell(v: Any, digits: int) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, list | tuple):
        if len(v) != 2 or any(x is None or not math.isfinite(x) for x in v):
            return "–"
        return f"{v[0]:.{digits}f}–{v[1]:.{digits}f}"
    if digits == 0:
        return f"{int(v):,}"
    return f"{float(v):.{digits}f}"


def _headers(models: list[dict]) -> list[str]:
    """Detector names, numbered when two models share one."""
    names = [str(m.get("detector")) for m in models]
    return [f"{n} #{i + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def _chunks(headers: list[str], width: int, fixed: int) -> list[list[int]]:
    """Model indices per table so that each table fits ``width`` columns (one model per table at least)."""
    groups: list[list[int]] = [[]]
    used = fixed
    for i, h in enumerate(headers):
        w = max(len(h), _MIN_COL_W) + 3  # cell padding and border
        if groups[-1] and used + w > width:
            groups.append([])
            used = fixed
        groups[-1].append(i)
        used += w
    return groups


def print_report(report: dict, console: Console | None = None) -> None:
    """Metrics as a vertical table (a row per metric, a column per model), split so that every table
    fits the terminal (80 columns included); then recall per scenario; then the warnings in yellow."""
    con = console or out
    models = report["models"]
    headers = _headers(models)
    width = max(con.width, 40)
    con.print(f"[bold]Test window[/] {escape(str(report['window'].get('start')))} .. "
              f"{escape(str(report['window'].get('end')))}")
    for group in _chunks(headers, width, _LABEL_W + 4):
        t = Table()
        t.add_column("metric", no_wrap=True, min_width=_LABEL_W)
        for i in group:
            t.add_column(headers[i], justify="right", no_wrap=True, min_width=_MIN_COL_W)
        for label, key, digits in _ROWS:
            vals = [models[i]["metrics"].get(key) for i in group]
            if all(v is None for v in vals) and key not in ("roc_auc", "average_precision"):
                continue
            t.add_row(label, *[_cell(v, digits) for v in vals])
        con.print(t)
    names = sorted({n for m in models for n in m["metrics"].get("scenarios", {})})
    if names:
        name_w = min(max(len(n) for n in names), 28)
        for group in _chunks(headers, width, name_w + 4 + 9):
            t = Table(title="Recall at 1% FPR per scenario", title_justify="left")
            t.add_column("scenario", no_wrap=True, overflow="ellipsis", max_width=name_w)
            t.add_column("fraud", justify="right", no_wrap=True)
            for i in group:
                t.add_column(headers[i], justify="right", no_wrap=True, min_width=_MIN_COL_W)
            for n in names:
                sc = [m["metrics"].get("scenarios", {}).get(n, {}) for m in models]
                pos = next((s["positives"] for s in sc if s), 0)
                t.add_row(n, str(pos), *[_cell(sc[i].get("recall_at_1pct_fpr"), 3) for i in group])
            con.print(t)
    print_warnings(report.get("warnings") or (), con)


def print_warnings(warnings: Any, console: Console | None = None) -> None:
    """Checks (``evaluation.checks``, as dicts or ``Check``) one per line: warnings yellow, notes cyan."""
    con = console or out
    for w in warnings:
        d = w if isinstance(w, dict) else w.to_dict()
        severity = str(d.get("severity") or "warning")
        who = f" ({d['detector']})" if d.get("detector") else ""
        style = "yellow" if severity == "warning" else "cyan"
        con.print(f"[{style}]{escape(severity)}{escape(who)}: {escape(str(d.get('message')))}[/]")
