"""Entry point of the ``shopguard`` console script.

Command groups live one per module in this package; each module defines ``register(app)``. New groups
are picked up without editing this file.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

import shopguard.cli as cli_pkg
from shopguard.cli.common import quiet_libraries

app = typer.Typer(
    name="shopguard",
    help="Find fraud and abuse in an online shop's behaviour logs, and explain every decision.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

_SKIP = {"main", "common"}


def _version(value: bool) -> None:
    if value:
        from shopguard import __version__

        typer.echo(f"shopguard {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Find fraud and abuse in an online shop's behaviour logs, and explain every decision."""
    quiet_libraries()  # before any command imports torch, onnxruntime, sklearn or lightgbm


def _register_all() -> None:
    for mod in sorted(pkgutil.iter_modules(cli_pkg.__path__), key=lambda m: m.name):
        if mod.name in _SKIP or mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"shopguard.cli.{mod.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_all()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
