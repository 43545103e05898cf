"""``shopguard users``: accounts worth a look, so examples can use ids that exist in this store."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from shopguard.cli.common import DbOption, handle_errors, open_store, out
from shopguard.errors import ValidationFailed


def register(app: typer.Typer) -> None:
    app.command("users")(users)


@handle_errors
def users(
    db: DbOption = None,
    top: Annotated[int, typer.Option("--top", help="Accounts per list.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """List interesting accounts: most events, most labelled-fraud events, riskiest recent decisions."""
    if top < 1:
        raise ValidationFailed(f"--top must be at least 1, got {top}", field="top", value=top)
    with open_store(db, read_only=True) as store:
        found = interesting_users(store, top)
    if as_json:
        out.print_json(json.dumps(found, default=str))
        return
    if not any(found.values()):
        out.print("no users in this store")
        return
    _table("Most active accounts", found["most_events"],
           [("user", "user_id"), ("events", "events"), ("types", "types"), ("first", "first"), ("last", "last")])
    if found["most_fraud"]:
        _table("Most labelled-fraud events", found["most_fraud"],
               [("user", "user_id"), ("fraud ev.", "fraud_events"), ("events", "events"), ("scenarios", "scenarios")])
    if found["riskiest_decisions"]:
        _table("Highest decision scores", found["riskiest_decisions"],
               [("user", "user_id"), ("max prob.", "max_probability"), ("max score", "max_score"),
                ("decisions", "decisions"),
                ("flagged", "flagged"), ("last event", "last_event")])


def interesting_users(store: Any, top: int) -> dict[str, list[dict[str, Any]]]:
    """``most_events``, ``most_fraud`` (events labelled fraud) and ``riskiest_decisions`` (max probability)."""
    most_events = store.query(
        "SELECT user_id, count(*) AS events, count(DISTINCT type) AS types, min(ts) AS first, max(ts) AS last "
        "FROM events WHERE user_id IS NOT NULL GROUP BY user_id ORDER BY events DESC, user_id LIMIT ?", [top])
    most_fraud = store.query(
        "WITH fraud AS (SELECT entity_id AS event_id, string_agg(DISTINCT scenario, ',') AS scenarios "
        "  FROM labels WHERE entity_kind = 'event' AND label = 1 GROUP BY entity_id), "
        "per_user AS (SELECT e.user_id, count(*) AS fraud_events, "
        "  string_agg(DISTINCT f.scenarios, ', ' ORDER BY f.scenarios) AS scenarios "
        "  FROM fraud f JOIN events e USING (event_id) WHERE e.user_id IS NOT NULL GROUP BY e.user_id) "
        "SELECT p.user_id, p.fraud_events, (SELECT count(*) FROM events x WHERE x.user_id = p.user_id) AS events, "
        "p.scenarios FROM per_user p ORDER BY p.fraud_events DESC, p.user_id LIMIT ?", [top])
    riskiest = store.query(
        "SELECT e.user_id, max(d.probability) AS max_probability, max(d.score) AS max_score, count(*) AS decisions, "
        "count(*) FILTER (WHERE d.action IS NOT NULL AND d.action <> 'allow') AS flagged, max(e.ts) AS last_event "
        "FROM decisions d JOIN events e USING (event_id) WHERE e.user_id IS NOT NULL GROUP BY e.user_id "
        "ORDER BY max_probability DESC NULLS LAST, max_score DESC NULLS LAST, last_event DESC, e.user_id LIMIT ?",
        [top])
    return {"most_events": most_events.to_dicts(), "most_fraud": most_fraud.to_dicts(),
            "riskiest_decisions": riskiest.to_dicts()}


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, int):
        return f"{v:,}"
    if hasattr(v, "strftime"):
        return v.strftime("%Y-%m-%d %H:%M")
    return "-" if v is None else str(v)


def _table(title: str, rows: list[dict[str, Any]], cols: list[tuple[str, str]]) -> None:
    """A compact table that fits 80 columns (long scenario lists wrap in their own column)."""
    t = Table(title=f"\n{title}", box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), show_edge=False, title_justify="left")
    for head, key in cols:
        numeric = isinstance(rows[0].get(key), int | float) if rows else False
        t.add_column(head, justify="right" if numeric else "left",
                     no_wrap=key != "scenarios", overflow="fold" if key == "scenarios" else "ellipsis")
    for r in rows:
        t.add_row(*[_cell(r.get(key)) for _, key in cols])
    out.print(t)
