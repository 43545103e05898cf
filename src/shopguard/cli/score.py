"""``shopguard score``: decide events with a trained model and write the decisions to the store.

``shopguard decisions`` lists what is in the store's decisions table (riskiest first), so a run's
decisions can be read back without SQL.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from shopguard.cli.common import DbOption, db_path, handle_errors, open_store, out, progress
from shopguard.errors import ValidationFailed

_DECIDING = re.compile(r"deciding ([\d,]+)/([\d,]+)")


def register(app: typer.Typer) -> None:
    app.command("score")(score)
    app.command("decisions")(decisions)


@handle_errors
def score(
    model: Annotated[Path, typer.Option("--model", help="Model directory from `shopguard train`.")],
    db: DbOption = None,
    since: Annotated[datetime | None, typer.Option("--since", help="Score events from this time (ISO).")] = None,
    until: Annotated[datetime | None, typer.Option("--until", help="Up to this time (exclusive).")] = None,
    reasons: Annotated[int, typer.Option("--reasons", help="Reason codes per decision.")] = 3,
    text_model: Annotated[Path | None, typer.Option("--text-model", help="Text model from `shopguard train "
                                                    "--detector text`: scores review and chat text too.")] = None,
    text_min_score: Annotated[float, typer.Option("--text-min-score", min=0.0, max=1.0,
                                                  help="Text score from which it lifts a decision.")] = 0.5,
    top: Annotated[int, typer.Option("--top", min=0, help="Riskiest new decisions to print.")] = 10,
) -> None:
    """Score events since T: probability, risk level, action and reasons, written to the decisions table.

    Each event is decided once: events that already have a decision keep it (re-running writes nothing).
    """
    from shopguard.pipeline import score_events

    _window(since, until)  # checks the window before any work
    started = datetime.now(UTC).replace(tzinfo=None)
    with open_store(db) as store, progress(transient=True) as prog:
        task = prog.add_task("scoring", total=None)

        def on_step(message: str) -> None:
            m = _DECIDING.search(message)
            if m:  # "deciding 50,000/120,000": the chunks done so far, as a real count
                prog.update(task, description="deciding", completed=int(m[1].replace(",", "")),
                            total=int(m[2].replace(",", "")))
            else:
                prog.update(task, description=message)

        n = score_events(store, model, since=since, until=until, top_reasons=reasons, text_model_dir=text_model,
                         text_min_score=text_min_score, on_step=on_step)
        version = _model_version(model)
        where, params = _window(since, until)
        counts = store.query(
            "SELECT count(*) FILTER (WHERE d.model_version = ?) AS mine, "
            "count(*) FILTER (WHERE d.model_version IS DISTINCT FROM ?) AS other "
            f"FROM decisions d JOIN events e USING (event_id) WHERE {where}", [version, version, *params],
        ).row(0, named=True)
        new_where = f"{where} AND d.model_version = ? AND d.decided_at >= ?"
        new_params = [*params, version, started]
        actions = store.query(
            f"SELECT d.action, count(*) AS n FROM decisions d JOIN events e USING (event_id) WHERE {new_where} "
            "GROUP BY 1 ORDER BY n DESC", new_params)
        riskiest = _riskiest(store, new_where, new_params, top) if n and top else []
    path = db_path(db)
    window = _describe_window(since, until)
    if n == 0:
        mine, other = counts["mine"], counts["other"]
        if mine:
            out.print(f"{_events(mine)}{window} {'was' if mine == 1 else 'were'} already decided by this model; "
                      "nothing new written",
                      soft_wrap=True)
        else:
            out.print(f"no events{window} to decide; nothing new written", soft_wrap=True)
        if other:
            out.print(f"{_events(other)}{window} keep the decisions of another model (each event is decided once)",
                      soft_wrap=True)
    else:
        out.print(f"[bold green]{n:,} new decisions[/] written{window}")
        out.print(f"  model: {version}", markup=False, highlight=False)
        out.print("  " + ", ".join(f"{r['action']}: {r['n']:,}" for r in actions.iter_rows(named=True)))
        if counts["other"]:
            out.print(f"  {_events(counts['other'])}{window} kept the decisions of another model", soft_wrap=True)
        if riskiest:
            print_decisions(riskiest, title=f"Riskiest {len(riskiest)} of the {n:,} new decisions")
    db_arg = "" if path == db_path(None) else f" --db {path}"
    out.print(f"All decisions are in the decisions table of {path}; list them with:", soft_wrap=True,
              highlight=False)
    out.print(f"  shopguard decisions{db_arg} --model-version {version} --top 50", soft_wrap=True, markup=False,
              highlight=False)


@handle_errors
def decisions(
    db: DbOption = None,
    model_version: Annotated[str | None, typer.Option("--model-version",
                                                      help="Only this model's decisions.")] = None,
    since: Annotated[datetime | None, typer.Option("--since", help="Events from this time (ISO).")] = None,
    until: Annotated[datetime | None, typer.Option("--until", help="Up to this time (exclusive).")] = None,
    action: Annotated[str | None, typer.Option("--action", help="Only this action (e.g. block, review).")] = None,
    user: Annotated[str | None, typer.Option("--user", help="Only this user's events.")] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="How many to list, riskiest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List decisions in the store, riskiest first (what `shopguard score` and the service wrote)."""
    where, params = _window(since, until)
    for col, value in (("d.model_version", model_version), ("d.action", action), ("e.user_id", user)):
        if value is not None:
            where += f" AND {col} = ?"
            params.append(value)
    with open_store(db, read_only=True) as store:
        rows = _riskiest(store, where, params, top)
    if as_json:
        out.print_json(json.dumps(rows, default=str))
        return
    if not rows:
        out.print("no decisions match" if model_version or action or user or since or until
                  else "no decisions yet: run `shopguard score --model DIR`")
        return
    print_decisions(rows, title=f"Riskiest {len(rows)} decisions")


def _riskiest(store: Any, where: str, params: list[Any], top: int) -> list[dict[str, Any]]:
    frame = store.query(
        "SELECT d.event_id, e.user_id, e.type, e.ts, d.probability, d.score, d.risk_level, d.action, d.reasons, "
        f"d.model_version FROM decisions d JOIN events e USING (event_id) WHERE {where} "
        "ORDER BY d.probability DESC NULLS LAST, d.score DESC NULLS LAST, d.event_id LIMIT ?", [*params, top])
    rows = frame.to_dicts()
    for r in rows:
        try:
            r["reasons"] = [x.get("code", "") for x in json.loads(r["reasons"] or "[]")]
        except (TypeError, ValueError, AttributeError):
            r["reasons"] = []
    return rows


def print_decisions(rows: list[dict[str, Any]], *, title: str) -> None:
    """A compact table (fits 80 columns): event, user, probability, action, top two reasons (one a line)."""
    t = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), show_edge=False)
    t.add_column("event", no_wrap=True, overflow="ellipsis", max_width=20)
    t.add_column("user", no_wrap=True, overflow="ellipsis", max_width=14)
    t.add_column("prob.", justify="right", no_wrap=True)
    t.add_column("action", no_wrap=True)
    t.add_column("top reasons", overflow="fold", ratio=1)
    for r in rows:
        p = r.get("probability")
        t.add_row(str(r["event_id"]), str(r.get("user_id") or "-"), "-" if p is None else f"{p:.3f}",
                  str(r.get("action") or ""), "\n".join(c.lower() for c in r["reasons"][:2]) or "-")
    out.print(t)


def _window(since: datetime | None, until: datetime | None) -> tuple[str, list[Any]]:
    where, params = "TRUE", []
    if since is not None:
        where += " AND e.ts >= ?"
        params.append(since)
    if until is not None:
        where += " AND e.ts < ?"
        params.append(until)
    if since is not None and until is not None and until <= since:
        raise ValidationFailed(f"--until ({until}) must be after --since ({since})", field="until", value=str(until))
    return where, params


def _describe_window(since: datetime | None, until: datetime | None) -> str:
    if since is None and until is None:
        return ""
    return (f" since {since:%Y-%m-%d %H:%M}" if since else "") + (f" until {until:%Y-%m-%d %H:%M}" if until else "")


def _events(n: int) -> str:
    return f"{n:,} event{'' if n == 1 else 's'}"


def _model_version(model: Path) -> str:
    try:
        return str(json.loads((Path(model) / "manifest.json").read_text()).get("model_version", ""))
    except (OSError, ValueError):
        return ""
