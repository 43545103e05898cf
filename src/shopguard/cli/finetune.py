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
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 10,
    scenario: Annotated[str | None, typer.Option("--scenario", help="Only this scenario's labels are positive.")] = None,
    types: Annotated[str | None, typer.Option("--types", help="Comma-separated event types to classify.")] = None,
    since: Annotated[datetime | None, typer.Option("--since", help="Targets at or after (ISO).")] = None,
    until: Annotated[datetime | None, typer.Option("--until", help="Targets before (ISO); labels known before it.")] = None,
    export: Annotated[bool, typer.Option("--export/--no-export", help="Also write ONNX (fp32 + int8) to OUT/onnx.")] = True,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda.")] = "auto",
    seed: Annotated[int, typer.Option("--seed")] = 7,
    threads: Annotated[int | None, typer.Option("--threads", min=1)] = None,
) -> None:
    """Fine-tune on event labels (time-ordered validation, early stopping on average precision)."""
    from shopguard.features.targets import event_targets
    from shopguard.models.sequence.config import FinetuneConfig
    from shopguard.models.sequence.finetune import finetune
    from shopguard.models.sequence.network import FoundationModel

    if method not in METHODS:
        raise ValidationFailed(f"--method must be one of {', '.join(METHODS)}", field="method", value=method)
    model = FoundationModel.load(pretrained)
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
    cfg = FinetuneConfig(method=method, epochs=epochs, seed=seed, device=device, num_threads=threads)  # type: ignore[arg-type]
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
