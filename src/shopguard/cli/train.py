"""``shopguard train``: fit a detector on the store's training window and write a model directory."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from shopguard.cli.common import DbOption, handle_errors, open_store, out, progress
from shopguard.errors import ValidationFailed
from shopguard.evaluation.splits import SplitConfig


def register(app: typer.Typer) -> None:
    app.command("train")(train)


def _params(text: str | None) -> dict | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationFailed(f"--params must be a JSON object: {exc}", field="params", value=text) from None
    if not isinstance(value, dict):
        raise ValidationFailed("--params must be a JSON object", field="params", value=text)
    return value


@handle_errors
def train(
    out_dir: Annotated[Path, typer.Option("--out", help="Model directory to write.")],
    db: DbOption = None,
    detector: Annotated[str, typer.Option("--detector", help="lightgbm, iforest, ecod, hbos, baseline, fusion "
                                                               "(pretrained behaviour transformer + features, "
                                                               "needs --sequence-model), or text (review/chat text "
                                                               "model, for `score --text-model`).")] = "lightgbm",
    train_days: Annotated[float | None, typer.Option("--train-days", help="Training window (days); default all.")] = None,
    delay_days: Annotated[float | None, typer.Option(
        "--delay-days", help="Label-delay gap before the test window; default: from the labels (90% of fraud "
        "labels known within it).")] = None,
    test_days: Annotated[float | None, typer.Option(
        "--test-days", help="Held-out test window at the end; default: about the last quarter of the labelled "
        "events, with at least 30 positives in train and test where the data allows.")] = None,
    unlabeled: Annotated[str, typer.Option(
        "--unlabeled", help="What events without a label row are: auto (unlabelled when the store holds explicit "
        "negative labels, else legitimate), negative, or ignore (neither trained nor evaluated on).")] = "auto",
    train_start: Annotated[datetime | None, typer.Option("--train-start", help="Start of training (ISO).")] = None,
    target_fpr: Annotated[float, typer.Option("--target-fpr", help="False-positive rate of the high threshold.")] = 0.01,
    alert_rate: Annotated[float | None, typer.Option("--alert-rate", help="Alert budget as a share of events "
                                                                           "(instead of --target-fpr).")] = None,
    params: Annotated[str | None, typer.Option("--params", help="Detector hyperparameters as JSON.")] = None,
    sequence_model: Annotated[Path | None, typer.Option(
        "--sequence-model", help="With --detector fusion: folder written by `shopguard pretrain` (pretrain on "
        "events before the test window, e.g. --until).")] = None,
    method: Annotated[str | None, typer.Option("--method", help="With --detector fusion: frozen (default: exact "
                                               "linear probe, fast), lora or full.")] = None,
    tune: Annotated[bool, typer.Option("--tune", help="Search LightGBM's settings and feature groups (Optuna TPE) "
                                       "on a time-ordered slice of the training window; never the test window.")] = False,
    budget_s: Annotated[float, typer.Option("--budget-s", help="Seconds for --tune.", min=1)] = 60.0,
    export: Annotated[bool, typer.Option("--export/--no-export", help="With --detector fusion: also write the "
                                         "ONNX graph (token window + features -> probability) to OUT/onnx.")] = True,
) -> None:
    """Train a detector (time-ordered split with a label-delay gap) and write MODEL_DIR."""
    from shopguard.models.base import needs_events
    from shopguard.pipeline import SEQUENCE_DETECTORS
    from shopguard.pipeline import train as run_train

    split = SplitConfig(train_days=train_days, delay_days=delay_days, test_days=test_days, train_start=train_start)
    if detector == "text":
        _train_text(db, out_dir, split, _params(params))
        return
    hyper = _params(params)
    if sequence_model is not None or method is not None:
        if detector not in SEQUENCE_DETECTORS:
            opt = "--sequence-model" if sequence_model is not None else "--method"
            raise ValidationFailed(f"{opt} is for --detector fusion, not {detector!r}",
                                   field=opt.lstrip("-").replace("-", "_"), value=detector)
        if method is not None and method not in ("frozen", "lora", "full"):
            raise ValidationFailed("--method must be frozen, lora or full", field="method", value=method)
        hyper = {**(hyper or {}), **({"pretrained": str(sequence_model)} if sequence_model is not None else {}),
                 **({"method": method} if method is not None else {})}
    with open_store(db) as store, progress(transient=True) as prog:
        task = prog.add_task("training", total=None)
        bundle = run_train(store, out_dir, detector=detector, params=hyper, split=split,
                           target_fpr=target_fpr, alert_rate=alert_rate, unlabeled=unlabeled,
                           tune=tune, tune_budget_s=budget_s,
                           on_step=lambda m: prog.update(task, description=m))
    print_split(bundle.info, bundle.split)
    print_tuning(bundle.info.get("tuning"))
    out.print(f"[bold green]trained[/] {bundle.model_version} -> {out_dir}")
    print_metrics(bundle.metrics.get("test", {}), title=f"{bundle.detector.name} on the test window")
    from shopguard.cli.evaluate import print_warnings

    print_warnings(bundle.info.get("warnings") or [])
    if export and needs_events(bundle.detector):
        from shopguard.models.bundle import seal_files
        from shopguard.models.sequence.export import export_onnx

        res = export_onnx(bundle.detector, out_dir / "onnx")
        seal_files(out_dir, "onnx")  # the served graph is checksummed like the rest of the model
        out.print(f"ONNX (tokens, dt, features -> probability): {res.fp32}" + (f", int8: {res.int8}" if res.int8 else ""))


def _train_text(db: Path | None, out_dir: Path, split: SplitConfig, params: dict | None) -> None:
    """The review/chat text model: fitted before the test window, saved with ``Detector.save``."""
    from shopguard.pipeline import train_text

    with open_store(db) as store, progress(transient=True) as prog:
        task = prog.add_task("training the text model", total=None)
        _model, metrics = train_text(store, out_dir, split=split, params=params,
                                     on_step=lambda m: prog.update(task, description=m))
    fit = metrics["fit"]
    out.print(f"[bold green]trained[/] text model on {fit['reviews']:,} reviews ({fit['review_positives']:,} "
              f"labelled fake) and {fit['chats']:,} chats ({fit['chat_positives']:,} labelled) -> {out_dir}")
    t = Table(title=f"text model on the test window {metrics['test_start']} .. {metrics['test_end']}")
    for c in ("events", "type", "positives", "roc_auc", "average_precision"):
        t.add_column(c, justify="left" if c == "type" else "right")
    for etype in ("review", "chat"):
        m = metrics[etype]
        t.add_row(str(m["events"]), etype, str(m["positives"]), _f(m.get("roc_auc")), _f(m.get("average_precision")))
    out.print(t)


def print_split(info: dict, split: dict) -> None:
    """Which label rule applied, how many events each class holds, and the split with its reasons."""
    labels = info.get("labels") or {}
    if labels:
        out.print(f"labels: {labels.get('reason', '')}")
        c = labels.get("counts") or {}
        out.print(f"  training window: {c.get('positive', 0):,} fraud, {c.get('negative', 0):,} legitimate, "
                  f"{c.get('unlabeled', 0):,} unlabelled (history only)")
    choice = info.get("split_choice")
    out.print(f"split: train {split.get('train_start', '?')[:16]} .. {split.get('train_end', '?')[:16]}, "
              f"test {split.get('test_start', '?')[:16]} .. {split.get('test_end', '?')[:16]}")
    if choice:
        for reason in choice.get("reasons", []):
            out.print(f"  {reason}")
        out.print(f"  positives: {choice['train_positives']:,} known for training, {choice['test_positives']:,} in "
                  f"the test window")
        if choice.get("too_few"):
            out.print("[yellow]  warning: fewer than 30 positives in the train or test window: the test metrics "
                      "below are very uncertain[/]")


def print_tuning(t: dict | None) -> None:
    if not t:
        return
    v = t.get("validation") or {}
    out.print(f"tuning: {t['n_trials']} trials in {t['elapsed_s']:.0f} s on the last {v.get('rows', 0):,} fit events "
              f"({v.get('positives', 0):,} fraud); validation AP {_f(t.get('best_score'))} tuned vs "
              f"{_f(t.get('default_score'))} with the defaults: "
              + ("[green]tuned settings kept[/]" if t.get("improved") else "defaults kept"))
    if t.get("note"):
        out.print(f"  {t['note']}")


def print_metrics(m: dict, title: str) -> None:
    if not m:
        out.print("[yellow]no test window metrics (no events after the delay gap)[/]")
        return
    if not m.get("events"):
        out.print(f"[yellow]no test-window events to measure: {m.get('removed_known_fraud_events', 0):,} belong to "
                  f"users already known as fraudulent, {m.get('unlabeled_events', 0):,} have no label (widen "
                  f"--test-days, or check the label mapping)[/]")
        return
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k in ("events", "positives", "roc_auc", "average_precision", "recall_at_1pct_fpr", "precision_at_k",
              "card_precision_at_k", "precision_at_threshold", "recall_at_threshold", "removed_known_fraud_events",
              "unlabeled_events"):
        if k in m:
            v = m[k]
            ci = m.get(f"{k}_ci")
            text = f"{v:.4f}" if isinstance(v, float) else str(v)
            if ci and all(isinstance(x, float) and x == x for x in ci):
                text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
            t.add_row(k, text)
    out.print(t)
    sc = m.get("scenarios") or {}
    if sc:
        t = Table(title="Per scenario")
        for c in ("scenario", "fraud events", "recall@1%FPR", "recall@threshold"):
            t.add_column(c, justify="left" if c == "scenario" else "right")
        for name, v in sc.items():
            t.add_row(name, str(v["positives"]), _f(v.get("recall_at_1pct_fpr")), _f(v.get("recall_at_threshold")))
        out.print(t)


def _f(v: float | None) -> str:
    return "–" if v is None or v != v else f"{v:.3f}"
