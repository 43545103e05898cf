"""``shopguard rules check|backtest``: validate a rule file; replay history through it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from shopguard.cli.common import DbOption, console, db_path, handle_errors, out

rules_app = typer.Typer(help="Decision rules: check a file, backtest it on history.", no_args_is_help=True)
RulesOption = Annotated[Path, typer.Option("--rules", help="YAML rule file.")]


def register(app: typer.Typer) -> None:
    app.add_typer(rules_app, name="rules")


@rules_app.command("check")
@handle_errors
def check(rules: RulesOption) -> None:
    """Parse and validate the rule file; errors name the rule and the problem."""
    from shopguard.decision.rules import RuleSet

    rs = RuleSet.load(rules)
    console.print(f"{rules}: {len(rs)} rules OK ({rs.mode})")


@rules_app.command("backtest")
@handle_errors
def backtest(
    rules: RulesOption,
    db: DbOption = None,
    since: Annotated[str | None, typer.Option("--since", help="First day replayed (ISO date).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Day after the last replayed (ISO date).")] = None,
    as_json: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON here.")] = None,
) -> None:
    """Replay stored events (with point-in-time features) through the rules: hits, precision, alerts/day."""
    from shopguard.decision.rules import RuleSet, run_backtest
    from shopguard.events.schema import to_utc_naive
    from shopguard.store import EventStore

    rs = RuleSet.load(rules)
    with EventStore(db_path(db), read_only=True) as store:
        report = run_backtest(store, rs, since=to_utc_naive(since, "since") if since else None,
                              until=to_utc_naive(until, "until") if until else None)
    t = Table(title=f"Backtest of {rules} over {report['events']:,} events, {report['days']:.1f} days "
                    f"({report['positives']:,} labelled abusive)")
    for c in ("rule", "action", "hits", "true pos.", "precision", "recall", "alerts/day"):
        t.add_column(c, justify="left" if c in ("rule", "action") else "right", overflow="fold")
    for r in report["rules"]:
        t.add_row(r["rule"], r["action"], f"{r['hits']:,}", f"{r['true_positives']:,}",
                  "-" if r["precision"] is None else f"{r['precision']:.3f}",
                  "-" if r["recall"] is None else f"{r['recall']:.3f}",
                  "-" if r["alerts_per_day"] is None else f"{r['alerts_per_day']:.1f}")
    out.print(t)
    if report.get("note"):
        console.print(report["note"])
    if as_json:
        as_json.write_text(json.dumps(report, indent=2, default=str))
