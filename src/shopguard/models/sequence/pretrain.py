"""Self-supervised pretraining on unlabeled event logs.

Two objectives on the same causal pass: *masked field modelling* (a share of field tokens is replaced
by MASK and predicted from the hidden state of their own event, which sees that event's other fields
and its history) and *next-event prediction* (every field of event i+1 predicted from h_i). AdamW with
weight decay, linear warmup then cosine decay, gradient clipping, bf16/fp16 autocast and bigger batches
on CUDA, seeded, with checkpoints that resume mid-epoch exactly where they stopped.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from rich.progress import Progress

from shopguard.errors import DataError, ModelError
from shopguard.models.sequence.config import NetworkConfig, PretrainConfig
from shopguard.models.sequence.network import (
    BehaviourTransformer,
    FoundationModel,
    autocast_dtype,
    inference_autocast,
    resolve_device,
)
from shopguard.models.sequence.sequences import SequenceBatch, gather_windows, pretraining_rows
from shopguard.models.sequence.tokenizer import BOS, MASK, PAD, EventTokenizer, TokenizedEvents

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class PretrainResult:
    model: FoundationModel
    history: list[dict[str, Any]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pretrain_loss(net: BehaviourTransformer, tokens: torch.Tensor, dt: torch.Tensor, cfg: PretrainConfig,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted MFM + next-event loss of one batch of windows (B, L, F)."""
    real = (tokens[:, :, 0] != PAD) & (tokens[:, :, 0] != BOS)
    rand = torch.rand(tokens.shape, generator=generator, device="cpu").to(tokens.device)
    masked = (rand < cfg.mask_prob) & real[:, :, None]
    inputs = tokens.masked_fill(masked, MASK) if cfg.mfm_weight > 0 else tokens
    hidden = net.encode(inputs, dt)
    parts: dict[str, float] = {}
    total = hidden.new_zeros((), dtype=torch.float32)
    if cfg.mfm_weight > 0 and masked.any():
        # Heads only on events with a masked field: the output layers cost more than the blocks.
        rows = masked.any(dim=-1).reshape(-1)
        nll = net.field_nll(hidden.reshape(-1, hidden.shape[-1])[rows], tokens.reshape(-1, tokens.shape[-1])[rows],
                            "mfm")
        m = masked.reshape(-1, tokens.shape[-1])[rows].float()
        mfm = (nll * m).sum() / m.sum().clamp(min=1)
        total = total + cfg.mfm_weight * mfm
        parts["mfm"] = float(mfm.detach())
    if cfg.next_weight > 0:
        src = hidden[:, :-1, :].reshape(-1, hidden.shape[-1])
        tgt = tokens[:, 1:, :].reshape(-1, tokens.shape[-1])
        valid = real[:, 1:].reshape(-1)
        if valid.any():
            nxt = net.field_nll(src[valid], tgt[valid], "next").mean()  # per field, like MFM
            total = total + cfg.next_weight * nxt
            parts["next"] = float(nxt.detach())
    parts["loss"] = float(total.detach())
    return total, parts


def _windows(te: TokenizedEvents, rows: np.ndarray, batch_size: int, max_len: int, device: torch.device,
             first_batch: int = 0) -> Iterator[tuple[int, SequenceBatch, torch.Tensor, torch.Tensor]]:
    """``(batch number, windows, tokens, dt)`` for each batch of window ends from ``first_batch`` on.

    On CUDA the next batch is gathered (numpy, then pinned memory) in a background thread while the GPU
    runs this one, and copied asynchronously: with a small model the host-side gather, not the GPU, is
    what limits a step. The batches and their order are the same on every device.
    """
    starts = list(range(0, len(rows), batch_size))[first_batch:]

    def load(s: int) -> tuple[SequenceBatch, torch.Tensor, torch.Tensor]:
        win = gather_windows(te, rows[s:s + batch_size], max_len)
        tok, dtt = torch.from_numpy(win.tokens), torch.from_numpy(win.dt)
        if device.type == "cuda":
            tok, dtt = tok.pin_memory(), dtt.pin_memory()
        return win, tok, dtt

    if device.type != "cuda":
        for i, s in enumerate(starts):
            win, tok, dtt = load(s)
            yield first_batch + i, win, tok, dtt
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        nxt = pool.submit(load, starts[0]) if starts else None
        for i in range(len(starts)):
            assert nxt is not None
            win, tok, dtt = nxt.result()
            nxt = pool.submit(load, starts[i + 1]) if i + 1 < len(starts) else None
            yield first_batch + i, win, tok.to(device, non_blocking=True), dtt.to(device, non_blocking=True)


def _gpu_memory(device: torch.device) -> dict[str, float]:
    """Peak GPU memory of this run so far (GiB), for the run's history; nothing on CPU."""
    if device.type != "cuda":
        return {}
    return {"gpu_max_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30}


def _lr_lambda(total_steps: int, warmup: int) -> Any:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def pretrain(
    events: pl.DataFrame,
    *,
    network: NetworkConfig | None = None,
    config: PretrainConfig | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> PretrainResult:
    """Fit the tokenizer on ``events`` (unlabeled store records) and pretrain a behaviour transformer.

    With ``out_dir`` a checkpoint is written every ``checkpoint_every`` steps and at each epoch end,
    and the final model is saved there (``FoundationModel.load(out_dir)``). ``resume=True`` continues
    from the checkpoint in ``out_dir`` (same events expected).
    """
    cfg = config or PretrainConfig()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out = Path(out_dir) if out_dir is not None else None
    ckpt_path = out / CHECKPOINT_FILE if out is not None else None
    state: dict[str, Any] | None = None
    if resume:
        if ckpt_path is None or not ckpt_path.exists():
            raise ModelError(f"nothing to resume: no {CHECKPOINT_FILE} in {out}", field="resume", value=str(out))
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        net_cfg = NetworkConfig(**state["network"])
        tokenizer = EventTokenizer.from_dict(state["tokenizer"])
    else:
        net_cfg = network or NetworkConfig()
        tokenizer = EventTokenizer(net_cfg.tokenizer).fit(events)
    if events.height == 0:
        raise DataError("no events to pretrain on", field="events")
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    amp = autocast_dtype(device, cfg.mixed_precision)
    batch_size = cfg.gpu_batch_size if device.type == "cuda" else cfg.batch_size
    te = tokenizer.transform(events)
    model = FoundationModel(net_cfg, tokenizer)
    net = model.network.to(device)
    decay = [p for n, p in net.named_parameters() if p.ndim >= 2 and "embeddings" not in n]
    no_decay = [p for n, p in net.named_parameters() if not (p.ndim >= 2 and "embeddings" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    per_epoch = len(pretraining_rows(te, net_cfg.max_len, 0))
    if cfg.max_sequences:
        per_epoch = min(per_epoch, cfg.max_sequences)
    steps_per_epoch = max(1, math.ceil(per_epoch / batch_size))
    total_steps = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total_steps, int(cfg.warmup_frac * total_steps)))
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    start_epoch, start_batch, step, history = 0, 0, 0, []
    if state is not None:
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, start_batch, step = state["epoch"], state["batch"], state["step"]
        history = state.get("history", [])
        torch.set_rng_state(state["torch_rng"])

    def save_checkpoint(epoch: int, batch: int) -> None:
        if ckpt_path is None:
            return
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "epoch": epoch, "batch": batch, "step": step, "history": history,
                    "network": net_cfg.model_dump(), "pretrain": cfg.model_dump(),
                    "tokenizer": tokenizer.to_dict(), "torch_rng": torch.get_rng_state(),
                    "mask_rng": gen.get_state()}, tmp)
        tmp.replace(ckpt_path)  # atomic: a crash never leaves half a checkpoint

    task = progress.add_task("pretraining", total=total_steps, completed=step) if progress else None
    gen = torch.Generator().manual_seed(cfg.seed)
    if state is not None:
        gen.set_state(state["mask_rng"])
    stopped = False
    for epoch in range(start_epoch, cfg.epochs):
        # The epoch's windows and their order depend only on (seed, epoch): resume replays them exactly.
        rng = np.random.default_rng(cfg.seed * 1009 + epoch)
        rows = pretraining_rows(te, net_cfg.max_len, int(rng.integers(net_cfg.max_len)))
        rows = rows[rng.permutation(len(rows))]
        if cfg.max_sequences:
            rows = rows[: cfg.max_sequences]
        net.train()
        sums: dict[str, float] = {}
        n_batches, n_events, t0 = 0, 0, time.perf_counter()
        first_batch = start_batch if epoch == start_epoch else 0
        for b, win, tok, dtt in _windows(te, rows, batch_size, net_cfg.max_len, device, first_batch):
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss, parts = pretrain_loss(net, tok, dtt, cfg, gen)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            n_batches += 1
            n_events += int((win.tokens[:, :, 0] > BOS).sum())
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            if progress is not None and task is not None:
                progress.update(task, advance=1, description=f"pretraining epoch {epoch + 1} loss {parts['loss']:.3f}")
            if cfg.max_steps is not None and step - (state["step"] if state else 0) >= cfg.max_steps:
                stopped = True
                save_checkpoint(epoch, b + 1)
                break
            if step % cfg.checkpoint_every == 0:
                save_checkpoint(epoch, b + 1)
        if stopped:
            break
        elapsed = time.perf_counter() - t0
        history.append({"epoch": epoch + 1, **{k: v / max(1, n_batches) for k, v in sums.items()},
                        "sequences": int(len(rows)), "events_per_s": n_events / max(elapsed, 1e-9),
                        "seconds": elapsed, **_gpu_memory(device)})
        save_checkpoint(epoch + 1, 0)
    net.eval()
    model.network = net.cpu()
    model.metadata = {"history": history, "complete": not stopped, "steps": step, "pretrain": cfg.model_dump(), "events": int(events.height),
                      "device": str(device)}
    if out is not None:
        model.save(out)
    return PretrainResult(model, history)


@torch.no_grad()
def evaluate_loss(model: FoundationModel, events: pl.DataFrame, cfg: PretrainConfig | None = None,
                  batch_size: int = 256, *, device: str = "cpu", max_windows: int | None = None) -> dict[str, float]:
    """Mean pretraining losses on held-out events (masking seeded, dropout off).

    ``device``: where to run (``cuda``: bf16 autocast); ``max_windows``: score only the first N windows
    of the held-out tiling (a quick estimate on a big log).
    """
    cfg = cfg or PretrainConfig()
    te = model.tokenizer.transform(events)
    rows = pretraining_rows(te, model.max_len, 0)
    if max_windows is not None:
        rows = rows[:max_windows]
    dev = resolve_device(device)
    net = model.network.to(dev).eval()
    gen = torch.Generator().manual_seed(cfg.seed)
    sums: dict[str, float] = {}
    n = 0
    for s in range(0, len(rows), batch_size):
        win = gather_windows(te, rows[s:s + batch_size], model.max_len)
        with inference_autocast(dev):
            _, parts = pretrain_loss(net, torch.from_numpy(win.tokens).to(dev), torch.from_numpy(win.dt).to(dev),
                                     cfg, gen)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
        n += 1
    return {k: v / max(n, 1) for k, v in sums.items()}
