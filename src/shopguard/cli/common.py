"""What every command shares: the console, the ``--db`` option, progress bars and error reporting."""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from shopguard.config import get_settings
from shopguard.errors import ShopguardError

console = Console(stderr=True)
out = Console()

DbOption = Annotated[
    Path | None,
    typer.Option("--db", help="DuckDB store file (default: shopguard-data/shop.duckdb, or $SHOPGUARD_DB)."),
]

F = TypeVar("F", bound=Callable[..., Any])


def db_path(db: Path | None) -> Path:
    return get_settings(db=db).db_path


def open_store(db: Path | None, *, read_only: bool = False) -> Any:
    """The existing store at ``--db`` (``NotFound`` naming ``db`` when there is none)."""
    from shopguard.errors import NotFound
    from shopguard.store import EventStore

    path = db_path(db)
    if not path.exists():
        raise NotFound(f"no store at {path}: run `shopguard simulate` or `shopguard ingest` first", field="db",
                       value=str(path))
    return EventStore(path, read_only=read_only)


def quiet_libraries() -> None:
    """Keep library chatter off the user's terminal; called once when the CLI starts.

    Python warnings (torch's tracer warnings, sklearn / lightgbm / pyod deprecations) are ignored and the
    root logger only passes errors (onnxruntime's quantiser logs through it), while shopguard's own
    loggers keep their warnings. ``SHOPGUARD_WARNINGS=1`` or any ``-W`` / ``PYTHONWARNINGS`` setting
    leaves everything as Python would.
    """
    if os.environ.get("SHOPGUARD_WARNINGS", "") not in ("", "0") or sys.warnoptions:
        return
    warnings.simplefilter("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    logging.getLogger("shopguard").setLevel(logging.WARNING)
    for name in ("onnxruntime", "onnx", "torch", "lightgbm", "sklearn", "pyod", "transformers",
                 "sentence_transformers", "peft", "numba"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def handle_errors(fn: F) -> F:
    """Print shopguard errors as one clear line and exit non-zero, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ShopguardError as exc:
            console.print(f"[bold red]error:[/] {exc.message}", soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def progress_enabled() -> bool:
    return sys.stderr.isatty() or os.environ.get("SHOPGUARD_PROGRESS", "") not in ("", "0")


@contextmanager
def progress(transient: bool = False) -> Iterator[Progress]:
    """A Rich progress bar on stderr; quiet when stderr is not a terminal unless SHOPGUARD_PROGRESS=1.

    Give each task its ``total`` (rows, chunks, steps) whenever the work has a known length, so the bar
    shows ``done/total`` and a time estimate instead of a spinner.
    """
    prog = Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=not progress_enabled(),
    )
    with prog:
        yield prog
