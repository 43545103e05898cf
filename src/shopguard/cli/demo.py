"""``shopguard demo``: the main job on embedded defaults.

Simulates a shop (when the store is empty), trains the supervised and unsupervised detectors on a
time-ordered split with a label delay, evaluates them on the held-out last week, writes a JSON and
HTML report and prints a per-scenario table. With ``--db`` pointing at your own store it runs the same
steps on your data.
"""

from __future__ import annotations

import math
import shlex
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from shopguard.cli.common import console, db_path, handle_errors, out, progress
from shopguard.config import get_settings
from shopguard.errors import DataError

SUPERVISED = ("lightgbm",)
UNSUPERVISED = ("iforest", "ecod", "baseline")
SHORT_NAMES = {"lightgbm": "LightGBM", "iforest": "IForest", "ecod": "ECOD", "hbos": "HBOS",
               "baseline": "UserBase", "foundation_surprise": "FM", "sequence_fusion": "FM+feat"}


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


@handle_errors
def demo(
    home: Annotated[Path | None, typer.Option("--home", help="Folder for the store, models and reports "
                                              "(default: shopguard-data).")] = None,
    db: Annotated[Path | None, typer.Option("--db", help="Store to use (default: HOME/shop.duckdb, the store every "
                                            "command uses by default, or $SHOPGUARD_DB).")] = None,
    users: Annotated[int, typer.Option("--users", help="Simulated users.")] = 2000,
    days: Annotated[int, typer.Option("--days", help="Simulated days.")] = 28,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 7,
    delay_days: Annotated[float, typer.Option("--delay-days", help="Label delay before the test week.")] = 3.0,
    test_days: Annotated[float, typer.Option("--test-days", help="Held-out test window.")] = 7.0,
    fresh: Annotated[bool, typer.Option("--fresh", help="Delete the store (HOME/shop.duckdb, or --db) and "
                                                 "simulate again.")] = False,
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
    settings = get_settings(home=home, db=db)
    # The store every other command opens by default (`shopguard stats` right after the demo finds it);
    # an explicit --home keeps everything, the store included, under that folder.
    store_path = db if db is not None else (home / "shop.duckdb" if home is not None else settings.db_path)
    home = home if home is not None else settings.home
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
        steps = Steps(len(SUPERVISED) + len(UNSUPERVISED) + (2 if foundation and fusion else int(foundation)) + 1)
        with progress() as prog:
            steps.task = prog.add_task("demo", total=steps.total)
            steps.prog = prog
            cache: dict[Any, Any] = {}  # one feature computation for every detector trained here
            model_dirs = _train_all(store, models_dir, steps, delay_days=delay_days, test_days=test_days, cache=cache)
            extra = []
            if foundation:
                from shopguard.models.bundle import ModelBundle

                fm = _foundation(store, models_dir, ModelBundle.load(model_dirs[0]).split, steps)
                extra = [fm] if fm is not None else []
                if fusion:
                    if fm is not None:
                        model_dirs += _fusion(store, models_dir, steps, delay_days=delay_days,
                                              test_days=test_days, cache=cache)
                    else:
                        steps.done("fusion skipped")
            report = _evaluate(store, model_dirs, reports_dir, extra, steps)
    _print_scenarios(report)
    elapsed = time.perf_counter() - started
    out.print(f"\n[bold green]done[/] in {elapsed / 60:.1f} min. Report: {reports_dir / 'report.html'}", soft_wrap=True)
    _print_next(store_path, model_dirs[0], report)


class Steps:
    """The demo's overall progress: one bar counting its steps, the current one named in its description."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.current = 0
        self.prog: Any = None
        self.task: Any = None

    def start(self, name: str) -> None:
        self.current += 1
        self.name = name
        self.show(name)

    def show(self, message: str) -> None:
        if self.prog is not None:
            self.prog.update(self.task, description=f"step {self.current}/{self.total}: {message}")

    def step_fn(self, prefix: str) -> Any:
        return lambda m: self.show(f"{prefix}: {m}")

    def done(self, message: str | None = None) -> None:
        if message is not None:
            self.current += 1
            self.show(message)
        if self.prog is not None:
            self.prog.advance(self.task)


def _arg(path: Path) -> str:
    return shlex.quote(str(path))


def next_commands(store_path: Path, model_dir: Path, report: dict[str, Any]) -> list[tuple[str, str]]:
    """``(command, what it does)`` pairs that run verbatim after ``source .venv/bin/activate``."""
    db = "" if store_path == db_path(None) else f" --db {_arg(store_path)}"
    since = str((report.get("window") or {}).get("start") or "")[:10]
    window = f" --since {since}" if since else ""
    return [
        (f"shopguard stats{db}", "what the store holds"),
        (f"shopguard users{db} --top 10", "accounts worth a look (ids to try below)"),
        (f"shopguard rings{db} --top 10", "accounts linked by devices, IPs, cards"),
        (f"shopguard score{db} --model {_arg(model_dir)}{window}", "decide the test window's events"),
        (f"shopguard evaluate{db} --model {_arg(model_dir)} --html "
         f"{_arg(model_dir.parent.parent / 'reports' / (model_dir.name + '.html'))}", "this model's report alone"),
        ("shopguard ingest --source examples/shop_orders.yaml --db shopguard-data/orders.duckdb",
         "load a mapped CSV log (a store of its own)"),
        (f"shopguard keys create --scope ingest{db}", "an API key for the service (shown once)"),
        (f"shopguard serve{db} --model {_arg(model_dir)}", "decisions over HTTP (Ctrl-C stops)"),
    ]


def _print_next(store_path: Path, model_dir: Path, report: dict[str, Any]) -> None:
    out.print("Next (after `source .venv/bin/activate`):", markup=False, highlight=False)
    for cmd, what in next_commands(store_path, model_dir, report):
        out.print(f"  {cmd}", markup=False, highlight=False, soft_wrap=True)
        out.print(f"      {what}", markup=False, highlight=False, style="dim")


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
        prog.update(task, description="simulated", completed=1, total=1)


def _print_stats(stats: dict[str, Any]) -> None:
    out.print(
        f"[bold]store[/] {stats['db']}: {stats['events']:,} events, {stats['users']:,} users, "
        f"{str(stats['first_event'])[:16].replace('T', ' ')} .. {str(stats['last_event'])[:16].replace('T', ' ')}"
    )
    t = Table(title="Labelled abuse in the store (events)")
    t.add_column("scenario")
    t.add_column("labelled events", justify="right")
    for row in stats["labels_by_scenario"]:
        if row["entity_kind"] == "event" and row["positive"]:
            t.add_row(row["scenario"], f"{row['positive']:,}")
    out.print(t)


def _train_all(store: Any, models_dir: Path, steps: Steps, *, delay_days: float, test_days: float,
               cache: dict[Any, Any] | None = None) -> list[Path]:
    from shopguard.evaluation.splits import SplitConfig
    from shopguard.pipeline import train

    split = SplitConfig(delay_days=delay_days, test_days=test_days)
    dirs: list[Path] = []
    for name in SUPERVISED + UNSUPERVISED:
        steps.start(f"training {name}")
        target = models_dir / name
        try:
            train(store, target, detector=name, split=split, feature_cache=cache, on_step=steps.step_fn(name))
        except DataError as exc:
            console.print(f"[yellow]skipped {name}:[/] {exc.message}")
            steps.done()
            continue
        dirs.append(target)
        steps.done()
    if not dirs:
        raise DataError("no detector could be trained on this store", field="db")
    return dirs


def _foundation(store: Any, models_dir: Path, split: dict[str, Any], steps: Steps) -> dict[str, Any] | None:
    """Pretrain the tiny behaviour foundation model (no labels) and evaluate its surprise score."""
    try:
        import torch  # noqa: F401

        from shopguard.pipeline import surprise_result
    except ImportError:  # the deep extra is not installed
        console.print("[yellow]foundation model skipped:[/] install the 'deep' extra (torch)")
        steps.done("foundation model skipped")
        return None
    steps.start("pretraining the behaviour foundation model")
    result = surprise_result(store, split, out_dir=models_dir / "foundation", on_step=steps.step_fn("foundation model"))
    steps.done()
    return result


def _fusion(store: Any, models_dir: Path, steps: Steps, *, delay_days: float, test_days: float,
            cache: dict[Any, Any] | None = None) -> list[Path]:
    """The pretrained model fused with the engineered features (``train --detector fusion``): its column.

    Kept cheap: the exact linear probe on a frozen encoder (the default), fitted on every positive and
    3,000 other rows, windows of the last 32 events (the encoder's cost grows with the window); the test
    window is scored once, by the evaluation that follows.
    """
    from shopguard.evaluation.splits import SplitConfig
    from shopguard.pipeline import train

    target = models_dir / "fusion"
    steps.start("training the fused model (foundation model + features)")
    try:
        train(store, target, detector="fusion",
              params={"pretrained": str(models_dir / "foundation"), "fit_negatives": 3000, "max_len": 32},
              split=SplitConfig(delay_days=delay_days, test_days=test_days), evaluate_test=False,
              feature_cache=cache, on_step=steps.step_fn("fusion"))
    except DataError as exc:
        console.print(f"[yellow]skipped fusion:[/] {exc.message}")
        return []
    finally:
        steps.done()
    return [target]


def _evaluate(store: Any, model_dirs: list[Path], reports_dir: Path, extra: list[dict[str, Any]],
              steps: Steps) -> dict[str, Any]:
    from shopguard.pipeline import evaluate

    reports_dir.mkdir(parents=True, exist_ok=True)
    steps.start("evaluating")
    report = evaluate(store, model_dirs, json_path=reports_dir / "report.json",
                      html_path=reports_dir / "report.html", extra_results=extra, on_step=steps.step_fn("evaluating"))
    steps.done()
    return report


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _print_scenarios(report: dict[str, Any]) -> None:
    """Recall at 1% FPR per scenario and model; fits 80 columns with the demo's seven models."""
    models = report["models"]
    t = Table(title="Held-out test window: recall at 1% false-positive rate, per scenario",
              box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, collapse_padding=True)
    t.add_column("scenario", no_wrap=True, overflow="ellipsis", max_width=18)
    t.add_column("pos.", justify="right", no_wrap=True)
    for m in models:
        name = SHORT_NAMES.get(m["detector"], m["detector"])
        t.add_column(f"{name}\n{'sup.' if m['supervised'] else 'unsup.'}", justify="right", no_wrap=True)
    scenarios = sorted({s for m in models for s in (m["metrics"].get("scenarios") or {})})
    for s in scenarios:
        first = next(m["metrics"]["scenarios"][s] for m in models if s in (m["metrics"].get("scenarios") or {}))
        t.add_row(s, str(first["positives"]),
                  *[_fmt((m["metrics"].get("scenarios") or {}).get(s, {}).get("recall_at_1pct_fpr")) for m in models])
    t.add_section()
    for key, label in (("roc_auc", "all: ROC-AUC"), ("average_precision", "all: avg prec."),
                       ("recall_at_1pct_fpr", "all: rec@1%FPR")):
        t.add_row(label, "", *[_fmt(m["metrics"].get(key)) for m in models])
    out.print(t)
    out.print("sup. = learns from labels; unsup. = no labels. FM = the behaviour foundation model's session "
              "surprise (how unlike the user's recent behaviour this is). FM+feat = the same pretrained model "
              "fused with the engineered features, trained on the labels (`train --detector fusion`).")
