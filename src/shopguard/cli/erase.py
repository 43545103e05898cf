"""``shopguard erase --db DB --user ID``: erase one user (a data-subject request), audited and idempotent."""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Annotated

import typer

from shopguard.cli.common import DbOption, console, db_path, handle_errors, out


def register(app: typer.Typer) -> None:
    app.command("erase")(erase)


def _apply_journal(db: Path, store: object) -> int:
    """Journal segments a stopped service left beside the store (``DB.journal.<n>``) go in first, so the
    erasure also covers events acknowledged but not yet applied; returns how many events they held."""
    journal = Path(f"{db}.journal")
    if not any(p.name[len(journal.name) + 1:].isdigit() for p in journal.parent.glob(journal.name + ".*")):
        return 0
    from shopguard.api.scoring import StoreWriter

    return StoreWriter(store, journal=journal).recover()  # type: ignore[arg-type]


@handle_errors
def erase(
    user: Annotated[str, typer.Option("--user", help="The user id to erase, as the store holds it.")],
    db: DbOption = None,
    by: Annotated[str | None, typer.Option("--by", help="Who asks, for the audit trail (default: cli:<login>).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    compact: Annotated[bool, typer.Option(
        "--compact", help="Then rewrite the store file so the deleted rows' bytes are gone from it too (DuckDB "
        "reuses freed blocks only later); takes about as long as copying the store.")] = False,
) -> None:
    """Delete a user's events, labels, decisions and cases, and tombstone them so re-ingests leave them out.

    The tombstone is a keyed hash of the user id (never the id). Idempotent; an unknown user is said and
    exits 0. While `serve` runs it holds the store: use DELETE /v1/users/{id} (admin key) instead.
    Trained models are not changed: retrain to remove what they learnt from the user (docs/privacy.md).
    """
    from shopguard.cli.common import open_store
    from shopguard.errors import ConfigError, ShopguardError
    from shopguard.store.erasure import erase_user

    path = db_path(db)
    try:
        store = open_store(db)
    except ShopguardError as exc:
        if "lock" in exc.message.lower():
            raise ConfigError(f"the store {path} is held by a running service: erase through it with "
                              f"DELETE /v1/users/{{id}} (admin key)", field="db") from None
        raise
    with store:
        recovered = _apply_journal(path, store)
        who = by or f"cli:{_login()}"
        res = erase_user(store, user, by=who)
    sizes = None
    if compact and res.found:
        from shopguard.store.erasure import compact_store

        sizes = compact_store(path)
    if as_json:
        out.print_json(json.dumps({**res.to_dict(), "journal_events_applied": recovered, "user_id": user,
                                   "compacted": sizes is not None}))
        return
    if not res.found:
        console.print(f"no user {user!r} in {path}: nothing erased, no tombstone recorded")
        return
    if res.already_erased:
        console.print(f"user {user!r} was already erased (tombstone {res.tombstone_id}); "
                      f"removed {res.total:,} rows that arrived since")
    else:
        parts = ", ".join(f"{n:,} {t}" for t, n in res.removed.items())
        console.print(f"erased user {user!r}: removed {parts}; tombstone {res.tombstone_id} (re-ingests leave "
                      "them out). Models trained before keep what they learnt: retrain to clear it.")
    if sizes is not None:
        console.print(f"store rewritten without the deleted rows ({sizes[0]:,} -> {sizes[1]:,} bytes)")


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (containers): still audited as the CLI
        return "unknown"
