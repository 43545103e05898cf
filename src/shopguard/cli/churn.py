"""``shopguard churn``: which active users are likely to go quiet over the next days."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from shopguard.cli.common import DbOption, handle_errors, out, progress
from shopguard.cli.interests import store_end
from shopguard.cli.pretrain import open_store
from shopguard.errors import DataError, ValidationFailed

FIT_CUTOFFS = 3  # fit at as-of - horizon, and one and two weeks before that


def register(app: typer.Typer) -> None:
    app.command("churn")(churn_cmd)


@handle_errors
def churn_cmd(
    model: Annotated[Path | None, typer.Option("--model", help="Folder written by `shopguard pretrain` "
                                               "(not needed with --features rfm).")] = None,
    db: DbOption = None,
    horizon_days: Annotated[float, typer.Option("--horizon-days", min=0.1, help="Inactive for this long.")] = 7.0,
    top: Annotated[int, typer.Option("--top", min=1, help="Riskiest users to list.")] = 20,
    as_of: Annotated[datetime | None, typer.Option("--as-of", help="Score as of this moment (ISO; default: the "
                                                   "store's last event).")] = None,
    features: Annotated[str, typer.Option("--features", help="hybrid, sequence, rfm or dt_head.")] = "hybrid",
    head: Annotated[str, typer.Option("--head", help="logistic or lightgbm.")] = "logistic",
    active_days: Annotated[float, typer.Option("--active-days", min=1, help="Users active this many days "
                                               "before the cutoff are scored.")] = 28.0,
    save: Annotated[Path | None, typer.Option("--save", help="Also save the fitted churn model here.")] = None,
) -> None:
    """Fit on what happened after earlier cutoffs, then rank users by the chance they stay inactive."""
    from shopguard.models.sequence.churn import (
        FEATURE_SETS,
        HEADS,
        ChurnInput,
        ChurnRiskDetector,
        churn_labels,
    )

    if features not in FEATURE_SETS:
        raise ValidationFailed(f"unknown features {features!r} (choose from {', '.join(FEATURE_SETS)})",
                               field="features", value=features)
    if head not in HEADS:
        raise ValidationFailed(f"unknown head {head!r} (choose from {', '.join(HEADS)})", field="head", value=head)
    if features != "rfm" and model is None:
        raise ValidationFailed(f"--features {features} needs --model (a pretrained sequence model)", field="model")
    with open_store(db) as store:
        cutoff = as_of or store_end(store)
        first, _ = store.time_range()
        assert first is not None
        fit_cuts = [cutoff - timedelta(days=horizon_days + 7 * k) for k in range(FIT_CUTOFFS)]
        fit_cuts = sorted(c for c in fit_cuts if c > first + timedelta(days=1))
        if not fit_cuts:
            raise DataError(f"the store covers {first:%Y-%m-%d} .. {cutoff:%Y-%m-%d}: churn needs more than "
                            f"{horizon_days:g} + 1 days of history to learn from", field="db")
        # Whole histories: tenure and all-time counts must mean the same at the fit and scoring cutoffs.
        events = store.events(until=cutoff)
    det = ChurnRiskDetector(pretrained=str(model) if model else None, features=features, head=head,
                            horizon_days=horizon_days, active_days=active_days)
    with progress(transient=True) as prog:
        task = prog.add_task("fitting churn model", total=None)
        fit_in = ChurnInput(events, fit_cuts)
        det.fit(fit_in)
        fit_rows = det.rows(fit_in)
        prog.update(task, description="scoring users")
        scored = det.score_frame(ChurnInput(events, cutoff))
    y = churn_labels(events, fit_rows, horizon_days)
    out.print(f"fit at {', '.join(f'{c:%Y-%m-%d}' for c in fit_cuts)}: {fit_rows.height:,} (user, cutoff) rows, "
              f"{y.mean():.1%} went {horizon_days:g} days without activity")
    t = Table(title=f"churn risk over the next {horizon_days:g} days as of {cutoff:%Y-%m-%d %H:%M} "
                    f"({features} features, {head}; {scored.height:,} users active in the last {active_days:g} days)")
    for c in ("user", "churn risk", "days since active", "events (28 d)"):
        t.add_column(c, justify="left" if c == "user" else "right")
    for r in scored.head(top).iter_rows(named=True):
        t.add_row(r["user_id"], f"{r['churn_risk']:.3f}", f"{r['days_since_active']:.1f}", f"{r['events_28d']:,}")
    out.print(t)
    if save is not None:
        det.save(save, metadata={"as_of": str(cutoff), "fit_cutoffs": [str(c) for c in fit_cuts]})
        out.print(f"[bold green]saved[/] -> {save}")
