"""``shopguard models list|register|promote|rollback|verify``: the model registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from shopguard.cli.common import console, handle_errors, out

models_app = typer.Typer(help="Versioned models: register, promote, roll back.", no_args_is_help=True)
RegistryOption = Annotated[
    Path | None, typer.Option("--registry", help="Registry root (default: shopguard-data/models).")
]


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")


def _registry(root: Path | None):  # type: ignore[no-untyped-def]
    from shopguard.config import get_settings
    from shopguard.models.registry import ModelRegistry

    return ModelRegistry(root or get_settings().models_dir)


@models_app.command("list")
@handle_errors
def list_(registry: RegistryOption = None,
          as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Versions with their training window and metrics; * marks the one in service."""
    versions = [v.summary() for v in _registry(registry).versions()]
    if as_json:
        out.print_json(json.dumps(versions, default=str))
        return
    t = Table(title="Models")
    for c in ("", "version", "created", "detector", "feature set", "training window", "test metrics"):
        t.add_column(c, overflow="fold")
    for v in versions:
        win = v["training_window"] or {}
        m = v["metrics"] or {}
        m = m.get("test") or m.get("validation") or m  # bundles nest metrics per split: show the test ones
        metrics = ", ".join(f"{k}={m[k]:.3f}" for k in ("roc_auc", "average_precision", "precision_at_k")
                            if isinstance(m.get(k), int | float))
        t.add_row("*" if v["current"] else "", v["version"], str(v["created_at"] or ""), str(v["detector"] or ""),
                  str(v["feature_set_version"] or ""), f"{win.get('start', '')} .. {win.get('end', '')}", metrics)
    out.print(t)


@models_app.command("register")
@handle_errors
def register_(source: Annotated[Path, typer.Argument(help="A trained model folder.")], registry: RegistryOption = None,
              promote: Annotated[bool, typer.Option("--promote", help="Also make it current.")] = False) -> None:
    """Copy a trained model into the registry as the next version, with a checksummed manifest."""
    reg = _registry(registry)
    v = reg.register(source)
    console.print(f"registered {v.version} at {v.path}")
    if promote:
        _check(reg, v.version, feature_set_change=False)
        reg.promote(v.version)
        console.print(f"{v.version} is now current")


def _check(reg, version: str, *, feature_set_change: bool) -> None:  # type: ignore[no-untyped-def]
    """Load the version exactly as ``serve`` would; a version the service would refuse is never promoted."""
    from shopguard.api.scoring import check_servable

    path = reg.root / version
    if not path.is_dir():
        return  # promote names the known versions
    cur = reg.current_path()
    what = check_servable(path, serving=None if feature_set_change or cur is None or cur == path else cur)
    console.print(f"{version}: loads as the service loads it ({what})")


@models_app.command("promote")
@handle_errors
def promote(version: Annotated[str, typer.Argument(help="Version to serve, e.g. v0002.")],
            registry: RegistryOption = None,
            feature_set_change: Annotated[bool, typer.Option(
                "--feature-set-change", help="Promote a version whose feature set differs from the one in service "
                "(a running service keeps the old model until it is restarted).")] = False) -> None:
    """Load a version exactly as the service would (checksums, calibrator, policy, detector, feature set) and
    make it current; a running service swaps. A version that would not load is refused."""
    reg = _registry(registry)
    _check(reg, version, feature_set_change=feature_set_change)
    v = reg.promote(version)
    console.print(f"{v.version} is now current")


@models_app.command("rollback")
@handle_errors
def rollback(registry: RegistryOption = None) -> None:
    """Go back to the previously promoted version."""
    v = _registry(registry).rollback()
    console.print(f"rolled back: {v.version} is now current")


@models_app.command("verify")
@handle_errors
def verify(version: Annotated[str, typer.Argument()], registry: RegistryOption = None) -> None:
    """Check a version's files against its manifest."""
    from shopguard.models.registry import verify as _verify

    reg = _registry(registry)
    _verify(reg.root / version)
    console.print(f"{version}: every file matches its checksum")
