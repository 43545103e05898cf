"""``shopguard ingest``: load a mapped CSV / Parquet / JSONL log, or JSONL events from stdin, into the store."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from shopguard.cli.common import DbOption, console, db_path, handle_errors, out, progress
from shopguard.errors import ConfigError, NotFound
from shopguard.events.ingest import IngestReport, count_rows_hint, ingest_jsonl, ingest_source
from shopguard.events.mapping import load_mapping
from shopguard.events.privacy import DEFAULT_KEY_ENV, Pseudonymiser
from shopguard.events.schema import PERSONAL_FIELDS
from shopguard.store import EventStore


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest)


@handle_errors
def ingest(
    source: Annotated[Path | None, typer.Option("--source", "-s", help="Mapping YAML describing the log file.")] = None,
    db: DbOption = None,
    data: Annotated[Path | None, typer.Option("--path", "--data", help="Read this file instead of the mapping's path.")] = None,
    jsonl: Annotated[str | None, typer.Option("--jsonl", help="Read JSONL events from this file, or '-' for stdin.")] = None,
    rejects: Annotated[Path | None, typer.Option("--rejects", help="Rejects file (.csv or .jsonl); default next to the store.")] = None,
    key_env: Annotated[str | None, typer.Option(
        "--pseudonymise-key-env",
        help=f"Environment variable holding the pseudonym key (default: {DEFAULT_KEY_ENV} if set).",
    )] = None,
    allow_raw_identifiers: Annotated[bool, typer.Option(
        "--allow-raw-identifiers", help="Store IPs, devices, cards, addresses, e-mails and phones as given, not as "
        "keyed hashes (the default; the key file lives beside the store).")] = False,
    chunk_rows: Annotated[int, typer.Option("--chunk-rows", min=1, help="Rows read and written per chunk.")] = 200_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Ingest a log into the store: valid rows kept, bad rows written with reasons to a rejects file.

    Re-running adds nothing. Exits 0 when the source could be read, even with some rejected rows; exits 1
    when every row was rejected (nothing could be stored).
    """
    given = (Pseudonymiser.from_env(key_env, required=True) if key_env else Pseudonymiser.from_settings())
    path = db_path(db)
    if source is None and jsonl is None:
        if sys.stdin.isatty():
            raise ConfigError("give --source MAPPING.yaml, or --jsonl FILE, or pipe JSONL events on stdin",
                              field="source")
        jsonl = "-"
    personal = True  # JSONL events may carry any field
    with EventStore(path) as store:
        from shopguard.store.identifiers import store_pseudonymiser

        # Safe by default: the store's key file (created once), unless the store already keeps raw values.
        pseudonymiser, note = store_pseudonymiser(store, key=given, allow_raw=allow_raw_identifiers)
        if note:
            console.print(f"[yellow]note:[/] {note}")
        if source is not None:
            mapping = load_mapping(source)
            personal = any(f in PERSONAL_FIELDS for e in mapping.resolved_events()
                           for f in list(e.columns) + list(e.constants))
            if data is not None:
                mapping = mapping.model_copy(update={"path": data.resolve()})
            hint = count_rows_hint(mapping) if mapping.resolved_path().exists() else None
            with progress() as prog:
                task = prog.add_task(f"ingest {mapping.source_name()}", total=hint)
                report = ingest_source(mapping, store, rejects_path=rejects, chunk_rows=chunk_rows,
                                       pseudonymiser=pseudonymiser, on_progress=lambda n: prog.advance(task, n))
        else:
            assert jsonl is not None
            report = _ingest_jsonl_arg(jsonl, store, rejects, pseudonymiser, chunk_rows)
    if pseudonymiser is None and personal:
        console.print("[dim]note: this store keeps personal identifiers as given (not pseudonymised); "
                      "see docs/ingest.md[/]")
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
    else:
        print_report(report, path)
    if all_rejected(report):
        where = f" (reasons in {report.rejects_path})" if report.rejects_path else ""
        console.print(f"[bold red]error:[/] every row was rejected ({report.rows_rejected:,} of "
                      f"{report.rows_read:,}); nothing was stored{where}", soft_wrap=True)
        raise typer.Exit(1)


def all_rejected(report: IngestReport) -> bool:
    """Rows were read and not one gave a valid event: the mapping or the file is wrong, not a few rows."""
    return report.rows_read > 0 and report.events_valid == 0 and report.rows_rejected > 0 and not report.erased


def _ingest_jsonl_arg(arg: str, store: EventStore, rejects: Path | None, pseudonymiser: Pseudonymiser | None,
                      chunk_rows: int) -> IngestReport:
    batch = min(chunk_rows, 5_000)
    if arg == "-":
        with progress() as prog:  # the length of stdin is unknown: the bar counts the rows read
            task = prog.add_task("ingest stdin", total=None)
            return ingest_jsonl(sys.stdin.buffer, store, pseudonymiser=pseudonymiser, rejects_path=rejects,
                                batch_size=batch, source="stdin", on_progress=lambda n: prog.advance(task, n))
    file = Path(arg)
    if not file.exists():
        raise NotFound(f"jsonl: file not found: {file}", field="jsonl", value=arg)
    with open(file, "rb") as fh, progress() as prog:
        task = prog.add_task(f"ingest {file.name}", total=_count_lines(file))
        return ingest_jsonl(fh, store, pseudonymiser=pseudonymiser, rejects_path=rejects, batch_size=batch,
                            source=file.stem, on_progress=lambda n: prog.advance(task, n))


def _count_lines(file: Path) -> int | None:
    """Lines of a JSONL file (one event each), to size the progress bar; None when it cannot be read."""
    try:
        n, last = 0, b"\n"
        with open(file, "rb") as fh:
            while block := fh.read(1 << 24):
                n += block.count(b"\n")
                last = block[-1:]
        return n + (last != b"\n")
    except OSError:
        return None


def print_report(report: IngestReport, db: Path) -> None:
    """The summary a risk engineer reads after an ingestion."""
    t = Table(title=f"ingest {report.source} -> {db}", show_header=False)
    t.add_column("what")
    t.add_column("count", justify="right")
    rate = report.rows_read / report.seconds if report.seconds else 0.0
    rows = [
        ("rows read", f"{report.rows_read:,}"),
        ("events added", f"{report.events_added:,}"),
        ("skipped: already stored", f"{report.already_stored:,}"),
        ("skipped: repeated in this input", f"{report.duplicates_in_input:,}"),
        ("rows rejected", f"{report.rows_rejected:,}"),
        ("labels added", f"{report.labels_added:,} (read {report.labels_positive:,} positive, "
                         f"{report.labels_negative:,} negative)"),
        ("time", f"{report.seconds:.1f} s ({rate:,.0f} rows/s)"),
    ]
    if report.erased:
        rows.insert(4, ("skipped: erased users", f"{report.erased:,}"))
    if report.pseudonymised:
        rows.append(("pseudonym key id", str(report.key_id)))
    for k, v in rows:
        t.add_row(k, v)
    out.print(t)
    if report.rejects_path:
        fields = ", ".join(f"{f} {n:,}" for f, n in report.rejects_by_field.items())  # every field
        out.print(f"[yellow]{report.problems:,} problems[/] by field: {fields}; written to "
                  f"[bold]{report.rejects_path}[/]")
        for p in report.first_problems[:3]:
            where = f"{p['event']}." if p.get("event") else ""
            value = f" = {p['value']!r}" if p.get("value") is not None else ""
            out.print(f"  row {p['row']}: {where}{p['field']}{value}: {p['reason']}", markup=False)
