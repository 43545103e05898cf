"""Behaviour foundation model at scale: ``tiny`` / ``base`` / ``large`` pretrained on one big simulated log.

The GPU half of issue #4's benchmark: every preset is pretrained on the SAME simulated shop, on the same
device, in the same run, then scored on held-out time (and users), so the table shows what size buys
and what it costs. Rows (``--json PATH`` writes them as ``{"rows": [...]}``):

- ``pretrain <preset>``: parameters, epochs, wall time, training ``events_per_s`` (one event = one
  sequence position = 13 field tokens), an estimate of the achieved TFLOP/s, peak GPU memory, and the
  pretraining loss on users never seen in pretraining (``heldout_loss``: masked fields + next event);
- ``surprise (session) <preset>``: the shipped unsupervised score (``SequenceSurpriseDetector``'s
  default: standardised mean surprise of the last 16 events + peak within 30 minutes, behaviour
  fields, standardisation fitted on unlabeled training-window targets) on every test target:
  ``roc_auc``, ``average_precision``, ``recall_at_1pct_fpr``, scoring ``events_per_s`` (target events
  scored per second, each with its whole window), ratios to ``tiny`` measured in the same run; the same
  restricted to users held out of pretraining, and per scenario (that scenario's positives vs all
  negatives);
- ``fusion_{frozen,full} <preset>, 5% labels``: fusion fine-tuning (``fusion_config``: exact linear
  probe, then LP-FT for ``full``) on ``--label-frac`` of the training targets, fusing the target's
  hidden state with the model's own unsupervised surprise columns (per-field NLL + session mean / peak).
  The engineered features of the CPU benchmark are left out here (they need DuckDB, which a bare GPU
  machine lacks), so this is not comparable with ``benchmarks/foundation.py``'s fusion rows;
- ``pretrain <preset> (CPU, N threads)``: training throughput of the same code on the host's cores, for
  the GPU / CPU ratio.

Protocol (as ``benchmarks/foundation.py``): the simulator with the three sequence-driven scenarios
(account takeover, card testing, bot ordering) at ``--rate-mult`` times their rates, other scenarios'
positives left out; targets are signup, login, add-to-cart, order, pay, password and address changes;
train window up to 10 days before the end, a 3-day label-delay gap, test = the last 7 days. Pretraining
reads the unlabeled events before the test window of all users except ``--heldout-users`` of them (by a
stable hash). Only Polars, PyTorch, NumPy and pydantic are needed (no DuckDB): labels come from the
simulator's label table with the rule of ``shopguard.features.targets.event_targets`` (checked against
it in ``--smoke`` runs).

    python benchmarks/foundation_gpu.py --users 30000 --days 28 --json reports/foundation_gpu.json   # CUDA
    nice -n 10 .venv/bin/python benchmarks/foundation_gpu.py --smoke --json /tmp/foundation_gpu_smoke.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
import zlib
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from rich.console import Console
from rich.table import Table

from shopguard.evaluation.metrics import summary
from shopguard.models.sequence.config import PretrainConfig, fusion_config, preset
from shopguard.models.sequence.detectors import session_surprise
from shopguard.models.sequence.finetune import finetune
from shopguard.models.sequence.fusion import FusionFeatures
from shopguard.models.sequence.network import FoundationModel, resolve_device
from shopguard.models.sequence.pretrain import evaluate_loss, pretrain
from shopguard.models.sequence.sequences import SequenceBatch, gather_windows
from shopguard.models.sequence.tokenizer import FIELDS, TokenizedEvents

SEQ_SCENARIOS = ("account_takeover", "card_testing", "bot_ordering")
SIM_TYPES = ("signup", "login", "add_to_cart", "order", "pay", "password_change", "address_change")
console = Console(width=220)


def log(msg: str) -> None:
    console.log(msg)


# -- data --------------------------------------------------------------------------------------------
def frame_targets(events: pl.DataFrame, labels: pl.DataFrame, known_before: datetime | None = None) -> pl.DataFrame:
    """``event_id, label, scenario`` per event, in ``events`` order, without a store.

    The rule of ``shopguard.features.targets.event_targets``: positive when the event has a positive
    ``event`` label or its ``order_id`` a positive ``order`` label (known before ``known_before``);
    the scenario is that of the earliest such label, the event's own first.
    """
    pos = labels.filter(pl.col("label") == 1)
    if known_before is not None:
        pos = pos.filter(pl.col("labeled_at") < known_before)

    def first(kind: str, key: str) -> pl.DataFrame:
        return (pos.filter(pl.col("entity_kind") == kind)
                .group_by("entity_id")
                .agg(pl.col("scenario").sort_by("labeled_at").first().alias(f"_{key}_scenario"))
                .rename({"entity_id": key}).with_columns(pl.lit(True).alias(f"_{key}_hit")))

    order_id = pl.col("order_id").cast(pl.Utf8) if "order_id" in events.columns else pl.lit(None, pl.Utf8)
    out = events.select(pl.col("event_id").cast(pl.Utf8), order_id.alias("order_id"))
    out = out.join(first("event", "event_id"), on="event_id", how="left", maintain_order="left")
    out = out.join(first("order", "order_id"), on="order_id", how="left", maintain_order="left")
    return out.select(
        "event_id",
        (pl.col("_event_id_hit").fill_null(False) | pl.col("_order_id_hit").fill_null(False)).cast(pl.Int32)
        .alias("label"),
        pl.coalesce(pl.col("_event_id_scenario").replace("", None), pl.col("_order_id_scenario").replace("", None))
        .cast(pl.Utf8).alias("scenario"),
    )


class SimData:
    """One simulated shop, split by time (and users) the way ``benchmarks/foundation.py`` splits it."""

    def __init__(self, args: argparse.Namespace) -> None:
        from shopguard.events.simulate import ScenarioRates, SimulationConfig, simulate_shop

        t0 = time.perf_counter()
        base = ScenarioRates()
        rates = base.model_copy(update={s: getattr(base, s) * args.rate_mult for s in SEQ_SCENARIOS})
        shop = simulate_shop(SimulationConfig(users=args.users, days=args.days, seed=args.seed, rates=rates))
        self.events, self.labels = shop.events, shop.labels
        self.simulate_s = time.perf_counter() - t0
        last = self.events["ts"].max()
        assert isinstance(last, datetime)
        test_end = last + timedelta(seconds=1)
        self.test_start = test_end - timedelta(days=7)
        self.train_end = self.test_start - timedelta(days=3)
        users = self.events["user_id"].drop_nulls().unique().sort().to_list()
        # A stable hash (crc32), so the held-out users are the same on every machine and version.
        cut = int(round(args.heldout_users * 1000))
        self.heldout = {u for u in users if zlib.crc32(u.encode()) % 1000 < cut}
        held = pl.col("user_id").is_in(list(self.heldout))
        self.pretrain_events = self.events.filter((pl.col("ts") < self.test_start) & ~held.fill_null(False))
        self.heldout_events = self.events.filter(held.fill_null(False))
        cand = self.events.filter(pl.col("type").is_in(list(SIM_TYPES)))
        train = cand.filter(pl.col("ts") < self.train_end)
        test = cand.filter(pl.col("ts") >= self.test_start)
        train = train.select("event_id", "ts", "user_id").with_columns(
            frame_targets(train, self.labels, known_before=self.test_start).select("label", "scenario"))
        test = test.select("event_id", "ts", "user_id").with_columns(
            frame_targets(test, self.labels).select("label", "scenario"))
        # Positives of other scenarios are neither positives nor negatives for this benchmark.
        keep = (pl.col("label") == 0) | pl.col("scenario").is_in(list(SEQ_SCENARIOS))
        self.train, self.test = train.filter(keep), test.filter(keep)
        self.test_heldout = self.test["user_id"].is_in(list(self.heldout)).fill_null(False).to_numpy()
        self.name = f"simulator {args.users // 1000}k users x {args.days} d" if args.users >= 1000 else \
            f"simulator {args.users} users x {args.days} d"
        log(f"[data] {self.events.height:,} events ({self.simulate_s:.0f}s to simulate); pretraining on "
            f"{self.pretrain_events.height:,} events of {len(users) - len(self.heldout):,} users "
            f"({len(self.heldout):,} held out); train targets {self.train.height:,} "
            f"({int(self.train['label'].sum())} pos), test {self.test.height:,} ({int(self.test['label'].sum())} pos, "
            f"{int(self.test['label'].to_numpy()[self.test_heldout].sum())} of held-out users)")


def check_targets(data: SimData) -> None:
    """Smoke check: ``frame_targets`` agrees with the store-backed ``event_targets`` (needs DuckDB)."""
    import tempfile

    from shopguard.features.targets import event_targets
    from shopguard.store import EventStore

    with tempfile.TemporaryDirectory() as tmp, EventStore(Path(tmp) / "check.duckdb") as store:
        store.append_events(data.events)
        store.append_labels(data.labels)
        ids = data.events["event_id"].to_list()
        for known in (None, data.test_start):
            ours = frame_targets(data.events, data.labels, known_before=known)
            ref = event_targets(store, ids, known_before=known)
            if not (ours["label"].to_list() == ref["label"].to_list()
                    and ours["scenario"].to_list() == ref["scenario"].to_list()):
                raise AssertionError("frame_targets disagrees with event_targets")
    log("[data] frame_targets == event_targets on every event (all labels, and known before the test window)")


# -- scoring -----------------------------------------------------------------------------------------
class Windows:
    """Target windows of one tokenized log, built chunk by chunk (a big test set does not fit at once)."""

    def __init__(self, te: TokenizedEvents, max_len: int) -> None:
        self.te, self.max_len = te, max_len
        self.index = pl.DataFrame({"event_id": pl.Series(te.event_ids.astype(str), dtype=pl.Utf8),
                                   "_row": np.arange(len(te), dtype=np.int64)})

    def rows(self, event_ids: pl.Series) -> np.ndarray:
        got = pl.DataFrame({"event_id": event_ids.cast(pl.Utf8)}).join(self.index, on="event_id", how="left",
                                                                         maintain_order="left")
        if got["_row"].null_count():
            raise AssertionError("a target event is missing from the tokenized log")
        return got["_row"].to_numpy()

    def chunks(self, rows: np.ndarray, size: int) -> Iterator[tuple[slice, SequenceBatch]]:
        for s in range(0, len(rows), size):
            yield slice(s, s + size), gather_windows(self.te, rows[s:s + size], self.max_len)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def surprise_columns(model: FoundationModel, win: Windows, rows: np.ndarray, args: argparse.Namespace,
                     device: torch.device, per_field: bool) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Session surprise (n, 2) and, when asked, per-field NLL (n, F) of target windows; seconds of the
    session pass alone (the shipped score)."""
    sess = np.zeros((len(rows), 2))
    fields = np.zeros((len(rows), len(FIELDS)), dtype=np.float32) if per_field else None
    session_s = 0.0
    for sl, batch in win.chunks(rows, args.chunk):
        sync(device)
        t0 = time.perf_counter()
        sess[sl] = session_surprise(model, batch, batch_size=args.score_batch, device=str(device))
        sync(device)
        session_s += time.perf_counter() - t0
        if fields is not None:
            fields[sl] = model.field_surprise(batch, batch_size=args.score_batch, device=str(device))
    return sess, fields, session_s


def fusion_frame(sess: np.ndarray, fields: np.ndarray) -> pl.DataFrame:
    data = {f"surprise_{f}": fields[:, j] for j, f in enumerate(FIELDS)}
    data["surprise_total"] = fields.sum(axis=1)
    data["session_mean"], data["session_peak"] = sess[:, 0], sess[:, 1]
    return pl.DataFrame(data)


def flops_per_event(model: FoundationModel, mask_prob: float) -> float:
    """Training FLOPs per sequence position, roughly: 6 x block parameters, the attention products over
    the whole window (the mask skips no work), the next-event heads at every position and the masked-field
    heads on the positions with a masked field."""
    net, cfg = model.network, model.config
    blocks = sum(p.numel() for p in net.blocks.parameters())
    vocab = sum(model.network.vocab_sizes.values())
    mfm_rows = 1 - (1 - mask_prob) ** len(FIELDS)
    length = cfg.max_len + 1
    return 6 * blocks + 12 * cfg.n_layers * length * cfg.d_model + 6 * cfg.d_model * vocab * (1 + mfm_rows)


# -- one preset --------------------------------------------------------------------------------------
def run_preset(name: str, data: SimData, args: argparse.Namespace, device: torch.device,
               tokens_cache: dict[str, TokenizedEvents]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    net = preset(name)
    # The same number of events per optimiser step for every preset (a longer window, fewer windows), so
    # the presets take the same number of steps over the same data.
    gpu_batch = args.batch_size or max(1, args.events_per_step // net.max_len)
    cfg = PretrainConfig(epochs=args.epochs, batch_size=args.cpu_batch, gpu_batch_size=gpu_batch, lr=args.lr,
                         seed=args.seed, device=str(device), max_sequences=args.max_windows,
                         checkpoint_every=10**9)
    batch = gpu_batch if device.type == "cuda" else args.cpu_batch
    log(f"[{name}] pretraining on {device} ({args.epochs} epochs, {batch} windows of {net.max_len} per step)")
    sync(device)
    t0 = time.perf_counter()
    model = pretrain(data.pretrain_events, network=net, config=cfg).model
    sync(device)
    pre_s = time.perf_counter() - t0
    hist = model.metadata["history"]
    train_events = sum(h["events_per_s"] * h["seconds"] for h in hist)
    train_s = sum(h["seconds"] for h in hist)
    eps = train_events / max(train_s, 1e-9)
    fpe = flops_per_event(model, cfg.mask_prob)
    t1 = time.perf_counter()
    held = evaluate_loss(model, data.heldout_events, cfg, batch_size=args.score_batch, device=str(device),
                         max_windows=args.heldout_windows) if data.heldout_events.height else {}
    held_s = time.perf_counter() - t1
    row = {"dataset": data.name, "model": f"pretrain {name}", "preset": name, "device": torch_device_name(device),
           "trainable_params": model.n_parameters(), "epochs": args.epochs, "train_s": pre_s, "batch_windows": batch,
           "steps": model.metadata.get("steps"),
           "loop_s": train_s, "events_per_s": eps, "tokens_per_s": eps * len(FIELDS),
           "events_per_s_last_epoch": hist[-1]["events_per_s"], "approx_tflops": eps * fpe / 1e12,
           "gpu_max_memory_gib": hist[-1].get("gpu_max_memory_gib"), "train_loss_first": hist[0]["loss"],
           "train_loss_last": hist[-1]["loss"], "heldout_loss": held.get("loss"), "heldout_mfm": held.get("mfm"),
           "heldout_next": held.get("next"), "heldout_loss_s": held_s}
    rows.append(row)
    log(f"[{name}] {model.n_parameters():,} params, {pre_s:.0f}s ({train_s:.0f}s in the loop), "
        f"{eps:,.0f} events/s (~{row['approx_tflops']:.1f} TFLOP/s), loss {hist[0]['loss']:.3f} -> "
        f"{hist[-1]['loss']:.3f}, held-out users {row['heldout_loss'] or float('nan'):.3f}, "
        f"GPU peak {row['gpu_max_memory_gib'] or 0:.1f} GiB")
    if args.save_models:
        model.save(Path(args.save_models) / name)

    # Tokenize the whole log once per tokenizer (tiny and base share theirs).
    key = json.dumps(model.tokenizer.to_dict(), sort_keys=True)
    t1 = time.perf_counter()
    if key not in tokens_cache:
        tokens_cache.clear()
        tokens_cache[key] = model.tokenizer.transform(data.events)
    win = Windows(tokens_cache[key], model.max_len)
    tok_s = time.perf_counter() - t1
    per_field = args.label_frac > 0
    norm_ids = data.train["event_id"]
    if norm_ids.len() > args.norm_targets:
        norm_ids = data.train.sample(args.norm_targets, seed=args.seed).sort("ts")["event_id"]
    norm_sess, norm_fields, _ = surprise_columns(model, win, win.rows(norm_ids), args, device, per_field)
    stats = [(float(np.mean(c)), float(np.std(c)) or 1.0) for c in norm_sess.T]
    test_rows = win.rows(data.test["event_id"])
    sess, fields, score_s = surprise_columns(model, win, test_rows, args, device, per_field)
    score = sum((sess[:, j] - mu) / sd for j, (mu, sd) in enumerate(stats))
    y = data.test["label"].to_numpy()
    scen = np.asarray(data.test["scenario"].fill_null("").to_list(), dtype=object)

    def add(model_name: str, scores: np.ndarray, mask: np.ndarray | None = None, **extra: Any) -> dict[str, Any]:
        yy, ss = (y, scores) if mask is None else (y[mask], scores[mask])
        m = summary(yy, ss)
        r = {"dataset": data.name, "model": model_name, "preset": name,
             **{k: float(m[k]) for k in ("roc_auc", "average_precision", "recall_at_1pct_fpr")},
             "test_targets": int(yy.size), "test_positives": int(yy.sum()), **extra}
        rows.append(r)
        log(f"[{name}] {model_name}: ROC-AUC {r['roc_auc']:.3f} AP {r['average_precision']:.3f} "
            f"R@1%FPR {r['recall_at_1pct_fpr']:.3f}")
        return r

    add(f"surprise (session) {name}", score, events_per_s=len(test_rows) / max(score_s, 1e-9),
        window_events_per_s=len(test_rows) * (model.max_len + 1) / max(score_s, 1e-9), score_s=score_s,
        tokenize_s=tok_s)
    if data.test_heldout.any():
        add(f"surprise (session) {name}, users unseen in pretraining", score, data.test_heldout)
    for sc in SEQ_SCENARIOS:
        keep = (y == 0) | (scen == sc)
        if (y[keep] == 1).any():
            add(f"surprise (session) {name}: {sc} only", score, keep)

    if per_field and over_budget(args, 0.85):
        log(f"[{name}] over the time budget: fusion fine-tuning skipped")
    elif per_field and fields is not None and norm_fields is not None:
        rows.extend(run_fusion(name, model, data, args, device, win, norm_sess, norm_fields, sess, fields, y))
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def run_fusion(name: str, model: FoundationModel, data: SimData, args: argparse.Namespace, device: torch.device,
               win: Windows, norm_sess: np.ndarray, norm_fields: np.ndarray, test_sess: np.ndarray,
               test_fields: np.ndarray, y_test: np.ndarray) -> list[dict[str, Any]]:
    """Fusion fine-tuning on ``label_frac`` of the training targets (hidden state + surprise columns)."""
    out: list[dict[str, Any]] = []
    lab = data.train.sample(fraction=args.label_frac, seed=args.seed).sort("ts")
    y = lab["label"].to_numpy().astype(np.float32)
    if y.sum() == 0:
        log(f"[{name}] no positives in {args.label_frac:.0%} of the training targets: fusion skipped")
        return out
    lab_rows = win.rows(lab["event_id"])
    lab_sess, lab_fields, _ = surprise_columns(model, win, lab_rows, args, device, True)
    assert lab_fields is not None
    feats = FusionFeatures().fit(fusion_frame(norm_sess, norm_fields))  # unlabeled rows: no label read
    x = feats.transform(fusion_frame(lab_sess, lab_fields))
    x_test = feats.transform(fusion_frame(test_sess, test_fields))
    batch = gather_windows(win.te, lab_rows, model.max_len)
    test_rows = win.rows(data.test["event_id"])
    pct = f"{args.label_frac * 100:g}%"
    for method in args.fusion_methods:
        sync(device)
        t0 = time.perf_counter()
        res = finetune(model, batch, y, config=fusion_config(method, device=str(device)), extra=x)
        sync(device)
        ft_s = time.perf_counter() - t0
        scores = np.zeros(len(test_rows))
        for sl, b in win.chunks(test_rows, args.chunk):
            scores[sl] = res.model.predict_proba(b, x_test[sl], batch_size=args.score_batch, device=str(device))
        m = summary(y_test, scores)
        r = {"dataset": data.name, "model": f"fusion_{method} {name}, {pct} labels (surprise columns)", "preset": name,
             **{k: float(m[k]) for k in ("roc_auc", "average_precision", "recall_at_1pct_fpr")},
             "labels_frac": args.label_frac, "label_rows": int(len(y)), "label_positives": int(y.sum()),
             "trainable_params": res.trainable_params, "train_s": ft_s, "test_targets": int(len(y_test))}
        out.append(r)
        log(f"[{name}] fusion_{method} ({len(y):,} labelled rows, {int(y.sum())} pos): ROC-AUC {r['roc_auc']:.3f} "
            f"AP {r['average_precision']:.3f} R@1%FPR {r['recall_at_1pct_fpr']:.3f} ({ft_s:.0f}s)")
        del res
    return out


def cpu_throughput(name: str, data: SimData, args: argparse.Namespace) -> dict[str, Any]:
    """Training events/s of a preset on the host CPU (a few hundred windows: throughput only)."""
    threads = args.cpu_threads or os.cpu_count() or 1
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        windows = max(args.cpu_batch, args.cpu_events // preset(name).max_len)
        cfg = PretrainConfig(epochs=1, batch_size=args.cpu_batch, seed=args.seed, device="cpu",
                             max_sequences=windows, checkpoint_every=10**9)
        model = pretrain(data.pretrain_events, network=preset(name), config=cfg).model
    finally:
        torch.set_num_threads(before)
    h = model.metadata["history"][-1]
    log(f"[cpu] {name}: {h['events_per_s']:,.0f} events/s on {threads} CPU threads ({h['seconds']:.0f}s)")
    return {"dataset": data.name, "model": f"pretrain {name} (CPU, {threads} threads)", "preset": name,
            "device": f"cpu x{threads}", "trainable_params": model.n_parameters(), "events_per_s": h["events_per_s"],
            "tokens_per_s": h["events_per_s"] * len(FIELDS), "loop_s": h["seconds"], "windows": h["sequences"]}


T_START = time.perf_counter()


def over_budget(args: argparse.Namespace, share: float) -> bool:
    """True when the run has spent ``share`` of ``--budget-s`` (optional work is skipped then)."""
    return args.budget_s is not None and time.perf_counter() - T_START > share * args.budget_s


def torch_device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"


# -- report ------------------------------------------------------------------------------------------
def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each preset's figures over tiny's, measured in the same run."""
    by = {r["model"]: r for r in rows}
    for r in rows:
        if r.get("preset") in (None, "tiny"):
            continue
        ref = by.get(r["model"].replace(r["preset"], "tiny", 1))
        if ref is None or r is ref:
            continue
        for k in ("average_precision", "recall_at_1pct_fpr", "events_per_s"):
            if r.get(k) is not None and ref.get(k):
                r[f"{k}_vs_tiny"] = r[k] / ref[k]
    gpu = {r["preset"]: r for r in rows if r["model"].startswith("pretrain") and "CPU" not in r["model"]}
    for r in rows:
        if "CPU" in r["model"] and r["preset"] in gpu and r.get("events_per_s"):
            gpu[r["preset"]]["speedup_vs_cpu"] = gpu[r["preset"]]["events_per_s"] / r["events_per_s"]


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    t = Table(title=title)
    cols = [("model", "model", "{}"), ("params", "trainable_params", "{:,}"), ("train s", "train_s", "{:.0f}"),
            ("events/s", "events_per_s", "{:,.0f}"), ("~TFLOP/s", "approx_tflops", "{:.1f}"),
            ("GPU GiB", "gpu_max_memory_gib", "{:.1f}"), ("held-out loss", "heldout_loss", "{:.3f}"),
            ("ROC-AUC", "roc_auc", "{:.3f}"), ("AP", "average_precision", "{:.3f}"),
            ("AP / tiny", "average_precision_vs_tiny", "{:.2f}x"), ("R@1%FPR", "recall_at_1pct_fpr", "{:.3f}"),
            ("x CPU", "speedup_vs_cpu", "{:.0f}x")]
    for head, _, _ in cols:
        t.add_column(head, justify="left" if head == "model" else "right")
    for r in rows:
        cells = []
        for _, key, fmt in cols:
            v = r.get(key)
            cells.append("" if v is None or (isinstance(v, float) and not np.isfinite(v)) else fmt.format(v))
        t.add_row(*cells)
    console.print(t)


def write_json(path: Path | None, rows: list[dict[str, Any]], args: argparse.Namespace, extra: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": rows, "config": {k: str(v) for k, v in vars(args).items()}, **extra},
                               indent=1, default=str))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=30000)
    p.add_argument("--days", type=int, default=28)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--rate-mult", type=float, default=3.0, help="Rate multiplier of the sequence scenarios.")
    p.add_argument("--presets", default="tiny,base,large")
    p.add_argument("--epochs", type=int, default=3, help="Pretraining epochs, the same for every preset.")
    p.add_argument("--max-windows", type=int, default=None, help="Cap on pretraining windows per epoch.")
    p.add_argument("--events-per-step", type=int, default=32768,
                   help="Pretraining events per step on CUDA (windows per step = this / max_len).")
    p.add_argument("--batch-size", type=int, default=None, help="Pretraining windows per step on CUDA "
                   "(overrides --events-per-step).")
    p.add_argument("--cpu-batch", type=int, default=64, help="Pretraining windows per step on CPU.")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--device", default="auto", help="auto | cuda | cpu")
    p.add_argument("--heldout-users", type=float, default=0.2, help="Share of users kept out of pretraining.")
    p.add_argument("--heldout-windows", type=int, default=4000, help="Windows for the held-out users' loss.")
    p.add_argument("--norm-targets", type=int, default=20000,
                   help="Unlabeled training targets that standardise the surprise (sampled).")
    p.add_argument("--label-frac", type=float, default=0.05, help="Labelled share for fusion (0: skip).")
    p.add_argument("--fusion-methods", default="frozen,full")
    p.add_argument("--score-batch", type=int, default=1024, help="Windows per forward when scoring.")
    p.add_argument("--chunk", type=int, default=16384, help="Windows gathered at a time when scoring.")
    p.add_argument("--cpu-throughput", default="tiny,large", help="Presets to time on the host CPU ('' to skip).")
    p.add_argument("--cpu-events", type=int, default=16384, help="Events (window positions) of the CPU "
                   "throughput runs.")
    p.add_argument("--cpu-threads", type=int, default=None)
    p.add_argument("--threads", type=int, default=1, help="torch threads for the main run on CPU.")
    p.add_argument("--save-models", default=None, help="Folder to save each pretrained preset in.")
    p.add_argument("--smoke", action="store_true",
                   help="CPU check: 300 users x 14 days, tiny + base, 1 epoch, small caps; checks the label rule.")
    p.add_argument("--budget-s", type=float, default=None, help="Wall-time budget: later presets, fusion and "
                   "CPU runs are skipped once it is (nearly) spent.")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.smoke:
        args.users, args.days, args.epochs = min(args.users, 300), min(args.days, 14), 1
        args.presets = "tiny,base" if args.presets == "tiny,base,large" else args.presets
        args.max_windows = args.max_windows or 128
        args.norm_targets, args.heldout_windows, args.cpu_events = 1000, 64, 4096
        args.cpu_throughput = "tiny" if args.cpu_throughput == "tiny,large" else args.cpu_throughput
        args.cpu_threads = args.cpu_threads or 1
        args.chunk, args.score_batch = 512, 256
    args.fusion_methods = [m for m in args.fusion_methods.split(",") if m]
    warnings.filterwarnings("ignore", category=UserWarning)
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 parts (optimizer, heads' softmax) on TF32
        torch.backends.cudnn.allow_tf32 = True
    env = {"device": torch_device_name(device), "torch": torch.__version__, "polars": pl.__version__,
           "cpu_count": os.cpu_count()}
    log(f"[env] {env}")
    t_start = T_START
    data = SimData(args)
    if args.smoke:
        check_targets(data)
    rows: list[dict[str, Any]] = []
    tokens_cache: dict[str, TokenizedEvents] = {}
    for i, name in enumerate(s for s in args.presets.split(",") if s):
        if i and over_budget(args, 0.7):
            log(f"[{name}] over the time budget: preset skipped")
            continue
        rows.extend(run_preset(name, data, args, device, tokens_cache))
        add_ratios(rows)
        write_json(args.json, rows, args, {"env": env, "wall_s": time.perf_counter() - t_start})
    for name in [s for s in args.cpu_throughput.split(",") if s]:
        if over_budget(args, 0.9):
            log(f"[cpu] over the time budget: CPU throughput of {name} skipped")
            continue
        rows.append(cpu_throughput(name, data, args))
    add_ratios(rows)
    wall = time.perf_counter() - t_start
    write_json(args.json, rows, args, {"env": env, "wall_s": wall})
    print_table(rows, f"Behaviour foundation model by size: {data.name}, {env['device']}, same data and run "
                      f"({wall:.0f}s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
