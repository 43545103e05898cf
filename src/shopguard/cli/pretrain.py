"""``shopguard pretrain``: self-supervised pretraining of the behaviour transformer on the store's events."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from shopguard.cli.common import DbOption, db_path, handle_errors, out, progress
from shopguard.errors import DataError, NotFound
from shopguard.store import EventStore


def register(app: typer.Typer) -> None:
    app.command("pretrain")(pretrain_cmd)


def open_store(db: Path | None) -> EventStore:
    path = db_path(db)
    if not path.exists():
        raise NotFound(f"no store at {path}: run `shopguard simulate` or `shopguard ingest` first", field="db",
                       value=str(path))
    return EventStore(path, read_only=True)


@handle_errors
def pretrain_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the pretrained model and its checkpoint.")],
    db: DbOption = None,
    config: Annotated[str, typer.Option("--config", help="Network size: tiny (CPU), base or large (GPU).")] = "tiny",
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Passes over the event log.")] = 3,
    max_len: Annotated[int | None, typer.Option("--max-len", min=2, help="Events of history per window.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Windows per step (CPU).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the checkpoint in --out.")] = False,
    since: Annotated[datetime | None, typer.Option("--since", help="Only events at or after (ISO).")] = None,
    until: Annotated[datetime | None, typer.Option("--until", help="Only events before (ISO).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda.")] = "auto",
    seed: Annotated[int, typer.Option("--seed")] = 7,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads for torch.")] = None,
    export_surprise: Annotated[bool, typer.Option(
        "--export-surprise/--no-export-surprise",
        help="Also fit the session surprise score's scales and export it to ONNX for `serve --sequence-model`.")] = True,
    surprise_sample: Annotated[int, typer.Option("--surprise-sample", min=100,
                                                 help="Latest events the surprise scales are fitted on.")] = 20_000,
) -> None:
    """Pretrain on unlabeled events (masked fields + next event); labels are never read."""
    from shopguard.models.sequence.config import PretrainConfig, preset
    from shopguard.models.sequence.pretrain import pretrain

    net = preset(config, **({"max_len": max_len} if max_len else {}))
    cfg = PretrainConfig(epochs=epochs, seed=seed, device=device, num_threads=threads,
                         **({"batch_size": batch_size} if batch_size else {}))
    with open_store(db) as store:
        events = store.events(since=since, until=until)
    if events.height == 0:
        raise DataError("no events in the store for that window", field="db")
    with progress() as prog:
        result = pretrain(events, network=net, config=cfg, out_dir=out_dir, resume=resume, progress=prog)
    t = Table(title=f"pretraining ({config}, {result.model.n_parameters():,} parameters, {events.height:,} events)")
    for c in ("epoch", "loss", "masked fields", "next event", "events/s"):
        t.add_column(c, justify="right")
    for h in result.history:
        t.add_row(str(h["epoch"]), f"{h.get('loss', float('nan')):.3f}", f"{h.get('mfm', float('nan')):.3f}",
                  f"{h.get('next', float('nan')):.3f}", f"{h['events_per_s']:,.0f}")
    out.print(t)
    out.print(f"[bold green]pretrained[/] -> {out_dir}")
    if export_surprise:
        _export_surprise(out_dir, events, surprise_sample, threads)


def _export_surprise(out_dir: Path, events, sample: int, threads: int | None) -> None:  # type: ignore[no-untyped-def]
    """Fit the unsupervised session surprise on the latest events and export it for the service."""
    from shopguard.models.sequence.detectors import SequenceInput, SequenceSurpriseDetector
    from shopguard.models.sequence.export import export_onnx

    # The scales are statistics of normal traffic: the latest events are the closest to what is served next.
    targets = events.sort("ts").get_column("event_id").tail(sample).to_list()
    detector = SequenceSurpriseDetector(pretrained=str(out_dir), num_threads=threads)
    detector.fit(SequenceInput(events, targets))
    res = export_onnx(detector, out_dir / "surprise-onnx")
    out.print(f"session surprise (fitted on {len(targets):,} events) -> {res.int8 or res.fp32}; "
              f"serve it with [bold]--sequence-model {out_dir / 'surprise-onnx'}[/]")
