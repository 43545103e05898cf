"""``shopguard rings``: the riskiest rings of linked accounts and what links them."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from shopguard.cli.common import DbOption, db_path, handle_errors, out, progress
from shopguard.errors import NotFound, ValidationFailed
from shopguard.features.graph import replay
from shopguard.store import EventStore


def register(app: typer.Typer) -> None:
    app.command("rings")(rings)


@handle_errors
def rings(
    db: DbOption = None,
    top: Annotated[int, typer.Option("--top", help="How many rings to list.")] = 20,
    min_size: Annotated[int, typer.Option("--min-size", help="Smallest ring (accounts) to list.")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the riskiest rings: accounts linked by shared devices, IPs, addresses, cards or items."""
    if top < 1:
        raise ValidationFailed(f"--top must be at least 1, got {top}", field="top", value=top)
    if min_size < 2:
        raise ValidationFailed(f"--min-size must be at least 2, got {min_size}", field="min_size", value=min_size)
    path = db_path(db)
    if not path.exists():
        raise NotFound(f"no store at {path}: run `shopguard simulate` or `shopguard ingest` first", field="db")
    with EventStore(path, read_only=True) as store, progress(transient=True) as prog:
        index, _ = replay(store, with_features=False, progress=prog)
    found = index.rings(top, min_size=min_size)
    if as_json:
        out.print_json(json.dumps({"rings": found, "users": len(index.users), "events": index.events_seen}))
        return
    if not found:
        out.print(f"no rings of {min_size}+ linked accounts among {len(index.users):,} users")
        return
    print_rings(found, total=len(index.components()), users=len(index.users))


def print_rings(found: list[dict], *, total: int, users: int) -> None:
    """One row per ring; what links it and its members in one wrapped column, so it fits 80 columns."""
    t = Table(title=f"Riskiest rings ({len(found)} of {total:,}, {users:,} users)", box=box.SIMPLE_HEAD,
              padding=(0, 1, 0, 0), show_edge=False)
    for c in ("#", "risk", "accts", "fraud"):
        t.add_column(c, justify="right", no_wrap=True)
    t.add_column("linked by / shared values / members", overflow="fold", ratio=1)
    for i, r in enumerate(found, 1):
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(r["link_kinds"].items(), key=lambda kv: -kv[1]) if n)
        shared = "; ".join(f"{k}: {', '.join(v[:2])}" for k, v in r["shared_values"].items() if v)
        members = ", ".join(r["members"][:6]) + (f" (+{r['size'] - 6})" if r["size"] > 6 else "")
        t.add_row(str(i), f"{r['risk']:.2f}", str(r["size"]), str(r["known_fraud"]),
                  f"{kinds}\n[dim]{escape(shared)}[/]\n{escape(members)}")
        if i < len(found):
            t.add_row("", "", "", "", "")
    out.print(t)
