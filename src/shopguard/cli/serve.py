"""``shopguard serve``: the real-time decision service over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shopguard.cli.common import DbOption, console, db_path, handle_errors


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


@handle_errors
def serve(
    db: DbOption = None,
    model: Annotated[Path | None, typer.Option("--model", help="Model folder or registry root (hot swaps).")] = None,
    rules: Annotated[Path | None, typer.Option("--rules", help="YAML rule file (reloaded on change).")] = None,
    sequence_model: Annotated[Path | None, typer.Option("--sequence-model", help="Exported behaviour transformer (ONNX folder).")] = None,
    text_model: Annotated[Path | None, typer.Option("--text-model", help="Review/chat text model "
                                                    "(`shopguard train --detector text`).")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8080,
    case_risk_level: Annotated[str, typer.Option("--case-risk-level", help="Open a case at this risk level or above.")] = "high",
    webhook: Annotated[list[str] | None, typer.Option("--webhook", help="URL receiving new cases (repeatable).")] = None,
    rate_limit: Annotated[float, typer.Option("--rate-limit", help="Requests per second per API key.")] = 2_000.0,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", help="Largest request body.")] = 1_048_576,
    journal_fsync: Annotated[bool, typer.Option("--journal-fsync/--no-journal-fsync",
                                                help="fsync the journal before answering (off: survives a "
                                                     "process crash, not a power cut).")] = True,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Accept requests without keys (local benchmarks only).")] = False,
    allow_raw_identifiers: Annotated[bool, typer.Option(
        "--allow-raw-identifiers", help="Store IPs, devices, cards, addresses, e-mails and phones as given. Default: "
        "keyed hashes under $SHOPGUARD_PSEUDONYM_KEY, else the key file beside the store (created once, mode 0600).",
    )] = False,
    max_connections: Annotated[int, typer.Option(
        "--max-connections", min=1, help="Most connections and requests in flight; beyond, new requests get 503 "
        "(a client holding many half-sent requests open cannot exhaust the service).")] = 4096,
    log_level: Annotated[str, typer.Option("--log-level")] = "warning",
) -> None:
    """Serve POST /v1/events and friends; one process owns the store (DuckDB has a single writer)."""
    import uvicorn

    from shopguard.api import ServiceSettings, create_app
    from shopguard.config import get_settings

    settings = ServiceSettings(
        db=db_path(db), model=model, rules=rules, sequence_model=sequence_model, text_model=text_model, case_risk_level=case_risk_level,  # type: ignore[arg-type]
        webhooks=webhook or [], rate_limit_per_s=rate_limit, rate_limit_burst=max(rate_limit * 2, 1.0),
        max_body_bytes=max_body_bytes, auth=not no_auth, journal_fsync=journal_fsync, pseudonym_key=get_settings().pseudonym_key,
        allow_raw_identifiers=allow_raw_identifiers,
    )
    # Fail fast with one clear line on what can be checked before the server starts.
    from shopguard.decision.rules import RuleSet
    from shopguard.errors import NotFound

    if model is not None and not model.exists():
        raise NotFound(f"model path {model} does not exist", field="model", value=str(model))
    if text_model is not None and not text_model.exists():
        raise NotFound(f"text model path {text_model} does not exist", field="text_model", value=str(text_model))
    if rules is not None:
        RuleSet.load(rules)
    if no_auth and host not in ("127.0.0.1", "localhost", "::1"):
        console.print("[bold red]error:[/] --no-auth is only allowed on a loopback address")
        raise typer.Exit(2)
    from shopguard.store import EventStore
    from shopguard.store.identifiers import store_pseudonymiser

    with EventStore(settings.db) as store:  # closed before the service opens it
        _pseudo, note = store_pseudonymiser(store, key=settings.pseudonym_key, allow_raw=allow_raw_identifiers)
    if note:  # said once: the file exists from now on
        console.print(f"[yellow]note:[/] {note}")
    elif allow_raw_identifiers:
        console.print("[yellow]note:[/] --allow-raw-identifiers: personal identifiers are stored as given")
    console.print(f"shopguard serving {settings.db} on http://{host}:{port} (docs at /docs)")
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level, access_log=False,
                timeout_graceful_shutdown=5, limit_concurrency=max_connections, timeout_keep_alive=5)
