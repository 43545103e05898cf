"""``shopguard finetune``: fine-tune a pretrained behaviour transformer on the store's event labels."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from shopguard.cli.common import DbOption, handle_errors, out, progress
from shopguard.cli.pretrain import open_store
from shopguard.errors import DataError, ValidationFailed

METHODS = ("full", "lora", "frozen")


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune_cmd)


@handle_errors
def finetune_cmd(
    pretrained: Annotated[Path, typer.Option("--pretrained", help="Folder written by `shopguard pretrain`.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the fine-tuned model.")],
    db: DbOption = None,
    method: Annotated[str, typer.Option("--method", help="full, lora or frozen.")] = "full",
    fusion: Annotated[bool, typer.Option("--fusion/--no-fusion", help="Fuse the event's engineered features (and "
                                         "the per-field surprise) into the head, trained jointly; best with few "
                                         "labels. Writes a `sequence_fusion` detector.")] = False,
    surprise: Annotated[bool, typer.Option("--surprise/--no-surprise", help="With --fusion: also fuse the "
                                           "pretrained per-field surprise.")] = True,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Default: the config's (4; 3 with "
                                               "--fusion).")] = None,
    scenario: Annotated[str | None, typer.Option("--scenario", help="Only this scenario's labels are positive.")] = None,
    types: Annotated[str | None, typer.Option("--types", help="Comma-separated event types to classify.")] = None,
    since: Annotated[datetime | None, typer.Option("--since", help="Targets at or after (ISO).")] = None,
    until: Annotated[datetime | None, typer.Option("--until", help="Targets before (ISO); labels known before it.")] = None,
    export: Annotated[bool, typer.Option("--export/--no-export", help="Also write ONNX (fp32 + int8) to OUT/onnx.")] = True,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda.")] = "auto",
    seed: Annotated[int, typer.Option("--seed")] = 7,
    threads: Annotated[int | None, typer.Option("--threads", min=1)] = None,
) -> None:
    """Fine-tune on event labels (time-ordered validation, early stopping on average precision).

    With --fusion the head also reads the event's engineered point-in-time features and the pretrained
    per-field surprise (nuFormer-style joint fine-tuning); the result is a detector folder
    (`load_detector(OUT)`), scored from events + features; its ONNX graph (OUT/onnx) takes the token
    window and the raw feature vector. `shopguard train --detector fusion` trains the same model as a
    model directory for `score` / `evaluate`.
    """
    from shopguard.features.targets import event_targets
    from shopguard.models.sequence.config import FinetuneConfig
    from shopguard.models.sequence.finetune import finetune
    from shopguard.models.sequence.network import FoundationModel

    if method not in METHODS:
        raise ValidationFailed(f"--method must be one of {', '.join(METHODS)}", field="method", value=method)
    model = FoundationModel.load(pretrained)
    if fusion:
        _fusion(pretrained, out_dir, db, method, surprise, epochs, scenario, types, since, until, seed, threads,
                export)
        return
    with open_store(db) as store:
        # Histories need the events before `since`; targets are filtered below.
        events = store.events(until=until)
        targets = events
        if since is not None:
            targets = targets.filter(targets["ts"] >= since)
        if types:
            wanted = [t.strip() for t in types.split(",") if t.strip()]
            targets = targets.filter(targets["type"].is_in(wanted))
        targets = targets.filter(targets["user_id"].is_not_null())
        if targets.height == 0:
            raise DataError("no target events to fine-tune on", field="types")
        labels = event_targets(store, targets["event_id"].to_list(), known_before=until)
    y = labels["label"].to_numpy()
    if scenario is not None:
        y = (y == 1) & (labels["scenario"] == scenario).to_numpy()
    batch = model.build(events, targets["event_id"])
    cfg = FinetuneConfig(method=method, seed=seed, device=device, num_threads=threads,  # type: ignore[arg-type]
                         **({"epochs": epochs} if epochs else {}))
    with progress() as prog:
        result = finetune(model, batch, y.astype("float32"), config=cfg, progress=prog)
    result.model.save(out_dir)
    t = Table(title=f"fine-tuning ({method})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in (("targets", f"{len(batch):,}"), ("positives", f"{int(y.sum()):,}"),
                 ("trainable parameters", f"{result.trainable_params:,} of {result.total_params:,}"),
                 ("epochs run", str(len(result.history))), ("best validation AP", f"{result.best_val_ap:.4f}"),
                 ("seconds", f"{result.seconds:.1f}")):
        t.add_row(k, v)
    out.print(t)
    if export:
        from shopguard.models.sequence.export import export_onnx

        res = export_onnx(result.model, out_dir / "onnx")
        out.print(f"ONNX: {res.fp32}" + (f", int8: {res.int8}" if res.int8 else ""))
    out.print(f"[bold green]fine-tuned[/] -> {out_dir}")


def _fusion(pretrained: Path, out_dir: Path, db: Path | None, method: str, surprise: bool, epochs: int | None,
            scenario: str | None, types: str | None, since: datetime | None, until: datetime | None, seed: int,
            threads: int | None, export: bool = True) -> None:
    """Fusion fine-tuning: features from the store's batch engine, a ``sequence_fusion`` detector out."""
    from shopguard.features.batch import compute_features
    from shopguard.features.targets import event_targets
    from shopguard.models.sequence.fusion import FusionClassifierDetector, FusionInput

    wanted = [t.strip() for t in types.split(",") if t.strip()] if types else None
    with open_store(db) as store, progress() as prog:
        task = prog.add_task("features", total=None)
        events = store.events(until=until)
        feats = compute_features(store, since=since, until=until, types=wanted)
        feats = feats.filter(feats["user_id"].is_not_null())
        if feats.height == 0:
            raise DataError("no target events to fine-tune on", field="types")
        labels = event_targets(store, feats["event_id"].to_list(), known_before=until)
        prog.update(task, total=1, completed=1)
    y = labels["label"].to_numpy()
    if scenario is not None:
        y = (y == 1) & (labels["scenario"] == scenario).to_numpy()
    det = FusionClassifierDetector(pretrained=str(pretrained), method=method, surprise=surprise, epochs=epochs,
                                   seed=seed, num_threads=threads)
    det.fit(FusionInput(events, feats), y.astype("int8"))
    det.save(out_dir)
    info = det.finetune_
    t = Table(title=f"fusion fine-tuning ({method}{', + surprise' if surprise else ''})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in (("targets", f"{feats.height:,}"), ("positives", f"{int(y.sum()):,}"),
                 ("fused columns", f"{info['n_extra']:,}"),
                 ("trainable parameters", f"{info['trainable_params']:,} of {info['total_params']:,}"),
                 ("epochs run", str(sum(1 for h in info["history"] if h.get("epoch", 0) > 0))),
                 ("seconds", f"{info['seconds']:.1f}")):
        t.add_row(k, v)
    out.print(t)
    if export:
        from shopguard.models.sequence.export import export_onnx

        res = export_onnx(det, out_dir / "onnx")
        out.print(f"ONNX (tokens, dt, features -> probability): {res.fp32}" + (f", int8: {res.int8}" if res.int8 else ""))
    out.print(f"[bold green]fine-tuned (fusion)[/] -> {out_dir}  (load with shopguard.models.base.load_detector)")
