"""``shopguard stats``: what the store holds."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from shopguard.cli.common import DbOption, db_path, handle_errors, out
from shopguard.errors import NotFound
from shopguard.store import EventStore


def register(app: typer.Typer) -> None:
    app.command("stats")(stats)


@handle_errors
def stats(
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Counts per event type and per labelled scenario."""
    path = db_path(db)
    if not path.exists():
        raise NotFound(f"no store at {path}: run `shopguard simulate` or `shopguard ingest` first", field="db")
    with EventStore(path, read_only=True) as store:
        summary = store.stats()
    if as_json:
        out.print_json(json.dumps(summary))
        return
    print_summary(summary)


def print_summary(summary: dict) -> None:
    out.print(
        f"[bold]{summary['db']}[/]: {summary['events']:,} events from {summary['users']:,} users, "
        f"{summary['first_event']} .. {summary['last_event']}"
    )
    t = Table(title="Events by type")
    t.add_column("type")
    t.add_column("events", justify="right")
    for k, v in summary["events_by_type"].items():
        t.add_row(k, f"{v:,}")
    out.print(t)
    if summary["labels_by_scenario"]:
        t = Table(title="Labels by scenario")
        for c in ("entity", "scenario", "positive", "negative"):
            t.add_column(c, justify="right" if c in ("positive", "negative") else "left")
        for r in summary["labels_by_scenario"]:
            t.add_row(r["entity_kind"], r["scenario"], f"{r['positive']:,}", f"{r['negative']:,}")
        out.print(t)
