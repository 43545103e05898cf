"""``shopguard score``: decide events with a trained model and write the decisions to the store."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from shopguard.cli.common import DbOption, handle_errors, out, progress
from shopguard.cli.train import open_existing


def register(app: typer.Typer) -> None:
    app.command("score")(score)


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
) -> None:
    """Score events since T: probability, risk level, action and reasons, written to the decisions table."""
    from shopguard.pipeline import score_events

    with open_existing(db) as store, progress(transient=True) as prog:
        task = prog.add_task("scoring", total=None)
        n = score_events(store, model, since=since, until=until, top_reasons=reasons,
                         text_model_dir=text_model,
                         text_min_score=text_min_score, on_step=lambda m: prog.update(task, description=m))
        summary = store.query(
            "SELECT action, count(*) AS n FROM decisions GROUP BY 1 ORDER BY n DESC")
    out.print(f"[bold green]{n:,} new decisions[/] written")
    for row in summary.iter_rows(named=True):
        out.print(f"  {row['action']}: {row['n']:,}")
