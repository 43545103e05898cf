"""``shopguard demo``: the main job on embedded defaults.

Simulates a shop (when the store is empty), trains the supervised and unsupervised detectors on a
time-ordered split with a label delay, evaluates them on the held-out last week, writes a JSON and
HTML report and prints a per-scenario table. With ``--db`` pointing at your own store it runs the same
steps on your data.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from shopguard.cli.common import console, handle_errors, out, progress
from shopguard.errors import DataError

DEFAULT_HOME = Path("shopguard-data")
SUPERVISED = ("lightgbm",)
UNSUPERVISED = ("iforest", "ecod", "baseline")
SHORT_NAMES = {"lightgbm": "LightGBM", "iforest": "IForest", "ecod": "ECOD", "hbos": "HBOS",
               "baseline": "UserBase", "foundation_surprise": "FM", "sequence_fusion": "FM+feat"}


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


@handle_errors
def demo(
    home: Annotated[Path, typer.Option("--home", help="Folder for the store, models and reports.")] = DEFAULT_HOME,
    db: Annotated[Path | None, typer.Option("--db", help="Store to use (default HOME/demo.duckdb).")] = None,
    users: Annotated[int, typer.Option("--users", help="Simulated users.")] = 2000,
    days: Annotated[int, typer.Option("--days", help="Simulated days.")] = 28,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 7,
    delay_days: Annotated[float, typer.Option("--delay-days", help="Label delay before the test week.")] = 3.0,
    test_days: Annotated[float, typer.Option("--test-days", help="Held-out test window.")] = 7.0,
    fresh: Annotated[bool, typer.Option("--fresh", help="Delete the demo store and start again.")] = False,
    foundation: Annotated[
        bool, typer.Option("--foundation/--no-foundation", help="Also pretrain the tiny behaviour foundation model.")
    ] = True,
    fusion: Annotated[
        bool, typer.Option("--fusion/--no-fusion", help="With --foundation: also train the foundation model fused "
                                                        "with the engineered features on the labels (FM+feat).")
    ] = True,
) -> None:
    """Simulate a shop, train and evaluate every detector, and print what each one catches."""
    from shopguard.store import EventStore

    started = time.perf_counter()
    store_path = db or home / "demo.duckdb"
    if fresh and store_path.exists():
        store_path.unlink()
        Path(str(store_path) + ".wal").unlink(missing_ok=True)
    models_dir, reports_dir = home / "models", home / "reports"
    with EventStore(store_path) as store:
        if store.count_events() == 0:
            _simulate(store, users=users, days=days, seed=seed)
        else:
            console.print(f"using the {store.count_events():,} events already in {store_path} (--fresh to rebuild)")
        _print_stats(store.stats())
        cache: dict[Any, Any] = {}  # one feature computation for every detector trained here
        model_dirs = _train_all(store, models_dir, delay_days=delay_days, test_days=test_days, cache=cache)
        extra = []
        if foundation:
            from shopguard.models.bundle import ModelBundle

            fm = _foundation(store, models_dir, ModelBundle.load(model_dirs[0]).split)
            extra = [fm] if fm is not None else []
            if fm is not None and fusion:
                model_dirs += _fusion(store, models_dir, delay_days=delay_days, test_days=test_days, cache=cache)
        report = _evaluate(store, model_dirs, reports_dir, extra)
    _print_scenarios(report)
    elapsed = time.perf_counter() - started
    out.print(f"\n[bold green]done[/] in {elapsed / 60:.1f} min. Report: {reports_dir / 'report.html'}")
    out.print(
        "Next: load your own logs with [bold]shopguard ingest --source YOUR.yaml[/] (see examples/), "
        "then [bold]shopguard train[/], [bold]shopguard evaluate[/] and [bold]shopguard serve[/]."
    )


def _simulate(store: Any, *, users: int, days: int, seed: int) -> None:
    from shopguard.events.simulate import SimulationConfig, simulate_shop

    config = SimulationConfig(users=users, days=days, seed=seed)
    with progress() as prog:
        task = prog.add_task(f"simulating {users:,} users x {days} days", total=None)

        def on_progress(desc: str, done: int, total: int) -> None:
            prog.update(task, description=desc, completed=done, total=total)

        shop = simulate_shop(config, progress=on_progress)
        prog.update(task, description="writing to the store")
        shop.to_store(store)


def _print_stats(stats: dict[str, Any]) -> None:
    out.print(
        f"[bold]store[/] {stats['db']}: {stats['events']:,} events, {stats['users']:,} users, "
        f"{stats['first_event']} .. {stats['last_event']}"
    )
    t = Table(title="Labelled abuse in the store (events)")
    t.add_column("scenario")
    t.add_column("labelled events", justify="right")
    for row in stats["labels_by_scenario"]:
        if row["entity_kind"] == "event" and row["positive"]:
            t.add_row(row["scenario"], f"{row['positive']:,}")
    out.print(t)


def _train_all(store: Any, models_dir: Path, *, delay_days: float, test_days: float,
               cache: dict[Any, Any] | None = None) -> list[Path]:
    from shopguard.evaluation.splits import SplitConfig
    from shopguard.pipeline import train

    split = SplitConfig(delay_days=delay_days, test_days=test_days)
    dirs: list[Path] = []
    with progress() as prog:
        task = prog.add_task("training", total=len(SUPERVISED) + len(UNSUPERVISED))
        for name in SUPERVISED + UNSUPERVISED:
            prog.update(task, description=f"training {name}")
            target = models_dir / name
            try:
                train(store, target, detector=name, split=split, feature_cache=cache,
                      on_step=lambda m, n=name: prog.update(task, description=f"{n}: {m}"))
            except DataError as exc:
                console.print(f"[yellow]skipped {name}:[/] {exc.message}")
                prog.advance(task)
                continue
            dirs.append(target)
            prog.advance(task)
    if not dirs:
        raise DataError("no detector could be trained on this store", field="db")
    return dirs


def _foundation(store: Any, models_dir: Path, split: dict[str, Any]) -> dict[str, Any] | None:
    """Pretrain the tiny behaviour foundation model (no labels) and evaluate its surprise score."""
    try:
        import torch  # noqa: F401

        from shopguard.pipeline import surprise_result
    except ImportError:  # the deep extra is not installed
        console.print("[yellow]foundation model skipped:[/] install the 'deep' extra (torch)")
        return None
    with progress() as prog:
        task = prog.add_task("pretraining the behaviour foundation model", total=None)
        return surprise_result(store, split, out_dir=models_dir / "foundation",
                               on_step=lambda m: prog.update(task, description=f"foundation model: {m}"))


def _fusion(store: Any, models_dir: Path, *, delay_days: float, test_days: float,
            cache: dict[Any, Any] | None = None) -> list[Path]:
    """The pretrained model fused with the engineered features (``train --detector fusion``): its column.

    Kept cheap: the exact linear probe on a frozen encoder (the default), fitted on every positive and
    3,000 other rows, windows of the last 32 events (the encoder's cost grows with the window); the test
    window is scored once, by the evaluation that follows.
    """
    from shopguard.evaluation.splits import SplitConfig
    from shopguard.pipeline import train

    target = models_dir / "fusion"
    with progress() as prog:
        task = prog.add_task("training the fused model (foundation model + features)", total=None)
        try:
            train(store, target, detector="fusion",
                  params={"pretrained": str(models_dir / "foundation"), "fit_negatives": 3000, "max_len": 32},
                  split=SplitConfig(delay_days=delay_days, test_days=test_days), evaluate_test=False,
                  feature_cache=cache, on_step=lambda m: prog.update(task, description=f"fusion: {m}"))
        except DataError as exc:
            console.print(f"[yellow]skipped fusion:[/] {exc.message}")
            return []
    return [target]


def _evaluate(store: Any, model_dirs: list[Path], reports_dir: Path, extra: list[dict[str, Any]]) -> dict[str, Any]:
    from shopguard.pipeline import evaluate

    reports_dir.mkdir(parents=True, exist_ok=True)
    with progress() as prog:
        task = prog.add_task("evaluating", total=None)
        return evaluate(store, model_dirs, json_path=reports_dir / "report.json",
                        html_path=reports_dir / "report.html", extra_results=extra,
                        on_step=lambda m: prog.update(task, description=f"evaluating: {m}"))


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _print_scenarios(report: dict[str, Any]) -> None:
    models = report["models"]
    t = Table(title="Held-out test window: recall at 1% false-positive rate, per scenario")
    t.add_column("scenario", no_wrap=True)
    t.add_column("pos.", justify="right")
    for m in models:
        name = SHORT_NAMES.get(m["detector"], m["detector"])
        t.add_column(f"{name}\n{'sup.' if m['supervised'] else 'unsup.'}", justify="right")
    scenarios = sorted({s for m in models for s in (m["metrics"].get("scenarios") or {})})
    for s in scenarios:
        first = next(m["metrics"]["scenarios"][s] for m in models if s in (m["metrics"].get("scenarios") or {}))
        t.add_row(s, str(first["positives"]),
                  *[_fmt((m["metrics"].get("scenarios") or {}).get(s, {}).get("recall_at_1pct_fpr")) for m in models])
    t.add_section()
    for key, label in (("roc_auc", "all: ROC-AUC"), ("average_precision", "all: avg precision"),
                       ("recall_at_1pct_fpr", "all: recall@1%FPR")):
        t.add_row(label, "", *[_fmt(m["metrics"].get(key)) for m in models])
    out.print(t)
    out.print("sup. = learns from labels; unsup. = no labels. FM = the behaviour foundation model's session surprise (how unlike the user's recent behaviour this is). FM+feat = the same pretrained model fused with the engineered features, trained on the labels (`train --detector fusion`).")
