"""``shopguard keys create|list|revoke``: API keys with scopes, stored hashed."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from shopguard.cli.common import DbOption, console, db_path, handle_errors, out

keys_app = typer.Typer(help="API keys of the decision service (ingest, analyst, admin scopes).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")


@keys_app.command("create")
@handle_errors
def create(
    scope: Annotated[list[str], typer.Option("--scope", help="ingest, analyst or admin (repeatable or comma list).")],
    name: Annotated[str, typer.Option("--name", help="A note to tell keys apart.")] = "",
    db: DbOption = None,
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    from shopguard.api.deps import create_key
    from shopguard.store import EventStore

    with EventStore(db_path(db)) as store:
        key, rec = create_key(store, ",".join(scope), name)
    console.print(f"key {rec.key_id} with scopes {', '.join(sorted(rec.scopes))}: store it now, it is not shown again")
    out.print(key, highlight=False, soft_wrap=True)


@keys_app.command("list")
@handle_errors
def list_(db: DbOption = None) -> None:
    """Key ids, scopes and state (never the keys)."""
    from shopguard.api.deps import list_keys
    from shopguard.store import EventStore

    with EventStore(db_path(db)) as store:
        rows = list_keys(store)
    t = Table(title="API keys")
    for c in ("key_id", "scopes", "name", "created_at", "revoked_at"):
        t.add_column(c)
    for r in rows:
        t.add_row(*(str(r[c] or "") for c in ("key_id", "scopes", "name", "created_at", "revoked_at")))
    out.print(t)


@keys_app.command("revoke")
@handle_errors
def revoke(key_id: Annotated[str, typer.Argument(help="The key id (the part after sg_).")], db: DbOption = None) -> None:
    """Revoke a key (a running service stops accepting it within seconds)."""
    from shopguard.api.deps import revoke_key
    from shopguard.store import EventStore

    with EventStore(db_path(db)) as store:
        revoke_key(store, key_id)
    console.print(f"revoked {key_id}")
