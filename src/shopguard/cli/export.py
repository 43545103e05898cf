"""``shopguard export --parquet DIR``: a store's events and labels as Parquet partitioned by day.

The layout (``DIR/events/day=…``, ``DIR/labels/day=…``; ``store.parquet``) is what the Spark engine
reads (``shopguard features --engine spark --parquet DIR``) and what a cluster job is pointed at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shopguard.cli.common import DbOption, handle_errors, open_store, out


def register(app: typer.Typer) -> None:
    app.command("export")(export)


@handle_errors
def export(
    parquet: Annotated[Path, typer.Option("--parquet", help="Folder to write events/ and labels/ into.")],
    db: DbOption = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier export in that folder.")] = False,
) -> None:
    """Write the store's events and labels as Parquet partitioned by day (for Spark and other engines)."""
    from shopguard.store.parquet import export_parquet

    with open_store(db, read_only=True) as store:
        info = export_parquet(store, parquet, overwrite=overwrite)
    out.print(f"wrote {info['events']:,} events over {info['days']:,} days and {info['labels']:,} labels "
              f"to {info['path']}/events and {info['path']}/labels (partitioned by day)")
