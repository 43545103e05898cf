"""What every command shares: the console, the ``--db`` option, progress bars and error reporting."""

from __future__ import annotations

import functools
import sys
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


def handle_errors(fn: F) -> F:
    """Print shopguard errors as one clear line and exit non-zero, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ShopguardError as exc:
            console.print(f"[bold red]error:[/] {exc.message}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def progress(transient: bool = False) -> Iterator[Progress]:
    """A Rich progress bar on stderr; quiet when stderr is not a terminal unless SHOPGUARD_PROGRESS=1."""
    prog = Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=not (sys.stderr.isatty()),
    )
    with prog:
        yield prog
