"""``shopguard interests``: what a user is likely to engage with next, from the behaviour model."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from shopguard.cli.common import DbOption, console, handle_errors, out
from shopguard.cli.pretrain import open_store
from shopguard.errors import DataError, NotFound, ValidationFailed
from shopguard.store import EventStore

FIELD_CHOICES = ("category", "merchant", "item")
FINETUNE_DAYS = 14  # cutoffs of the light head: one per day over the two weeks before
HISTORY_DAYS = 28  # history read before the first of those cutoffs


def register(app: typer.Typer) -> None:
    app.command("interests")(interests_cmd)


def store_end(store: EventStore) -> datetime:
    """Just after the store's last event: the default "now" of user-level questions."""
    _, last = store.time_range()
    if last is None:
        raise DataError("the store holds no events", field="db")
    return last + timedelta(microseconds=1)


@handle_errors
def interests_cmd(
    user: Annotated[str, typer.Option("--user", help="The user_id to ask about.")],
    model: Annotated[Path, typer.Option("--model", help="Folder written by `shopguard pretrain`.")],
    db: DbOption = None,
    top: Annotated[int, typer.Option("--top", min=1, max=100, help="Values to list per field.")] = 5,
    fields: Annotated[str, typer.Option("--fields", help="Comma-separated: category, merchant, item.")] = "category,merchant",
    as_of: Annotated[datetime | None, typer.Option("--as-of", help="Ask as of this moment (ISO; default: the "
                                                   "store's last event). Only earlier events are read.")] = None,
    finetune: Annotated[bool, typer.Option("--finetune", help="First fit a light head on everyone's next "
                                           "engagements over the two weeks before (slower).")] = False,
    horizon_days: Annotated[float, typer.Option("--horizon-days", min=0.1, help="Next engagement within.")] = 7.0,
) -> None:
    """Rank the categories (merchants, items) the user will most likely view, cart or order next."""
    from shopguard.models.sequence.detectors import load_model
    from shopguard.models.sequence.interest import ENGAGEMENT_TYPES, NextInterest, engagement_counts, users_at

    wanted = [f.strip() for f in fields.split(",") if f.strip()]
    bad = [f for f in wanted if f not in FIELD_CHOICES]
    if bad or not wanted:
        raise ValidationFailed(f"unknown field {bad[0] if bad else fields!r} (choose from {', '.join(FIELD_CHOICES)})",
                               field="fields", value=fields)
    m = load_model(model)
    with open_store(db) as store:
        cutoff = as_of or store_end(store)
        mine = store.events(user_ids=[user], until=cutoff)
        if mine.height == 0:
            raise NotFound(f"user {user!r} has no events before {cutoff:%Y-%m-%d %H:%M} in the store", field="user",
                           value=user)
        if finetune:
            since = cutoff - timedelta(days=FINETUNE_DAYS + horizon_days + HISTORY_DAYS)
            others = store.events(since=since, until=cutoff)
        else:  # engagements name the values (and their frequencies) the head ranks
            others = store.events(types=ENGAGEMENT_TYPES, until=cutoff)
    row = users_at(mine, cutoff, [user])
    for field in wanted:
        try:
            if finetune:
                cuts = [cutoff - timedelta(days=horizon_days + d) for d in range(FINETUNE_DAYS, 0, -1)]
                ranker = NextInterest(m, field, method="finetuned", horizon_days=horizon_days).fit(others, cuts)
            else:
                ranker = NextInterest(m, field, horizon_days=horizon_days).fit(others, cutoff - timedelta(
                    days=horizon_days))
        except DataError as exc:
            console.print(f"[yellow]{field}: {exc.message}[/]")
            continue
        scores = ranker.predict_rows(mine, row)
        own = engagement_counts(mine, field, row, ranker.classes_)[0]
        col = {c: j for j, c in enumerate(ranker.classes_)}
        how = "fine-tuned head" if finetune else "pretrained next-event head"
        t = Table(title=f"{user}: next {field} ({how}, as of {cutoff:%Y-%m-%d %H:%M})")
        for c in ("rank", field, "probability", "user's past engagements"):
            t.add_column(c, justify="left" if c == field else "right")
        for rank, (value, p) in enumerate(scores.top(top)[0], start=1):
            t.add_row(str(rank), value, f"{p:.3f}", f"{int(own[col[value]]):,}")
        out.print(t)
