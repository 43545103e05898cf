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
def revoke(key_id: Annotated[str, typer.Argument(help="The key id (the part after sg_).")], db: DbOption = None,
           url: Annotated[str | None, typer.Option(
               "--url", help="Revoke through a running service (e.g. http://127.0.0.1:8080), with the admin key in "
               "$SHOPGUARD_ADMIN_KEY: the service holds its store, so this is how to revoke while it runs.")] = None,
           ) -> None:
    """Revoke a key (audited). While `serve` runs, use --url (or POST /v1/keys/{id}/revoke): it takes effect at once."""
    if url:
        _revoke_over_http(url, key_id)
        console.print(f"revoked {key_id} (through {url})")
        return
    from shopguard.api.deps import revoke_key
    from shopguard.errors import ConfigError, ShopguardError
    from shopguard.store import EventStore

    try:
        store = EventStore(db_path(db))
    except ShopguardError as exc:
        if "lock" in exc.message.lower():
            raise ConfigError(f"the store {db_path(db)} is held by a running service: revoke through it with "
                              f"`shopguard keys revoke {key_id} --url http://HOST:PORT` (admin key in "
                              f"$SHOPGUARD_ADMIN_KEY) or POST /v1/keys/{key_id}/revoke", field="db") from None
        raise
    with store:
        revoke_key(store, key_id, by="cli")
    console.print(f"revoked {key_id}")


def _revoke_over_http(url: str, key_id: str) -> None:
    import json
    import os
    import urllib.error
    import urllib.parse
    import urllib.request

    from shopguard.errors import ConfigError, ShopguardError

    admin = os.environ.get("SHOPGUARD_ADMIN_KEY")
    if not admin:
        raise ConfigError("set SHOPGUARD_ADMIN_KEY to an admin key to revoke through the service", field="url")
    req = urllib.request.Request(f"{url.rstrip('/')}/v1/keys/{urllib.parse.quote(key_id, safe='')}/revoke",
                                 method="POST", data=b"", headers={"Authorization": f"Bearer {admin}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 (an operator-given URL)
            resp.read()
    except urllib.error.HTTPError as exc:
        try:
            msg = json.loads(exc.read()).get("message", "")
        except ValueError:
            msg = ""
        raise ShopguardError(f"the service refused: HTTP {exc.code} {msg}".strip(), field="url") from None
    except OSError as exc:
        raise ShopguardError(f"cannot reach the service at {url}: {exc}", field="url") from None
