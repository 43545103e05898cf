"""Serving path: ONNX export, int8 dynamic quantisation, and an incremental one-event scorer.

``export_onnx`` writes ``model.onnx`` (fp32) and, by default, ``model.int8.onnx`` (weights of every
MatMul/Gemm quantised to int8 by ``onnxruntime.quantization.quantize_dynamic``) plus the tokenizer and
``export.json``. The graph maps windows ``tokens`` (B, L, F) int64 and ``dt`` (B, L) float32 to one
score per window: the fine-tuned probability (``kind="classifier"``), the surprise NLL
(``"surprise"``), the embedding (``"embedding"``, (B, D)) or, for ``"session"``, the NLL of *every*
event of the window given the events before it ((B, L-1), over the detector's fields).

``kind="session"`` is the serving form of ``SequenceSurpriseDetector(aggregate="session")``: export the
fitted detector (or its saved folder) and ``export.json`` carries its fields, ``session_events``,
``session_minutes`` and the standardisation statistics of the fit events, so the online score equals
the batch ``score`` of the same event. Why the whole window rather than a ring of past per-event
scores: the batch detector reads each earlier event's surprise *inside the target's window* (its
context cut at the window start), and the one causal pass already yields it for every slot, so parity
is exact at the cost of the small behaviour heads over L-1 positions instead of one.

``IncrementalScorer`` keeps each user's last ``max_len`` token rows and the state the tokenizer needs
(last event time, devices / IPs / geos / instruments seen), so scoring one new event is one small
forward over a cached window: no store query, no re-tokenising of the history.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import torch
from torch import nn

from shopguard.errors import ModelError
from shopguard.models.sequence.finetune import FineTunedModel
from shopguard.models.sequence.network import BehaviourTransformer, FoundationModel, field_weights
from shopguard.models.sequence.network import _k as net_key
from shopguard.models.sequence.sequences import SequenceBatch
from shopguard.models.sequence.tokenizer import BOS, FIELDS, OFFSET, PAD, EventTokenizer, UserState

EXPORT_FILE = "export.json"
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
Kind = Literal["classifier", "surprise", "embedding", "session"]


class _Graph(nn.Module):
    def __init__(self, encoder: BehaviourTransformer, kind: str, head: nn.Module | None,
                 weights: torch.Tensor | None = None, fields: Sequence[str] | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.kind = kind
        self.head = head
        self.weights = weights
        self.cols = [(FIELDS.index(f), net_key(f)) for f in (fields or FIELDS)]

    def forward(self, tokens: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        if self.kind == "session":
            # As ``detectors.window_surprise``: hidden state i predicts event i+1; only the chosen heads run.
            hidden = self.encoder.encode(tokens, dt)[:, :-1]
            target = tokens[:, 1:]
            nll = []
            for j, key in self.cols:
                logp = torch.log_softmax(self.encoder.next_heads[key](hidden).float(), dim=-1)
                nll.append(-torch.gather(logp, -1, target[:, :, j:j + 1]).squeeze(-1))
            return torch.stack(nll, dim=0).sum(dim=0)
        if self.kind == "surprise":
            return self.encoder.surprise(tokens, dt, self.weights)
        if self.kind == "embedding":
            return self.encoder.embed(tokens, dt)
        assert self.head is not None
        return torch.sigmoid(self.head(self.encoder.encode(tokens, dt)[:, -1, :]))


@dataclass
class ExportResult:
    folder: Path
    fp32: Path
    int8: Path | None
    kind: str


def session_spec(detector: Any) -> dict[str, Any]:
    """What the online scorer needs of a fitted ``SequenceSurpriseDetector(aggregate="session")``."""
    from shopguard.models.sequence.detectors import resolve_fields

    stats = detector.session_stats_ if detector.normalize else []
    return {"fields": resolve_fields(detector.fields), "events": int(detector.session_events),
            "minutes": float(detector.session_minutes), "stats": [[float(m), float(sd)] for m, sd in stats]}


def _from_detector(model: Any) -> tuple[FoundationModel, dict[str, Any] | None, list[str] | None]:
    """(network, session spec or None, per-event fields) of a surprise detector or its saved folder."""
    from shopguard.models.base import load_detector
    from shopguard.models.sequence.detectors import SequenceSurpriseDetector, resolve_fields

    det = load_detector(model) if isinstance(model, str | Path) else model
    if not isinstance(det, SequenceSurpriseDetector):
        raise ModelError(f"export_onnx takes a FoundationModel or a fitted sequence_surprise detector, got "
                         f"{type(det).__name__}", field="model", value=type(det).__name__)
    det.check_fitted()
    if det.aggregate == "session":
        return det.model_, session_spec(det), None
    return det.model_, None, resolve_fields(det.fields)


def export_onnx(model: FoundationModel | Any, folder: str | Path, *, kind: Kind | None = None, quantize: bool = True,
                opset: int = 17, surprise_fields: Sequence[str] | None = None,
                session: dict[str, Any] | None = None) -> ExportResult:
    """Export ``model`` for CPU inference with onnxruntime (see module docstring).

    ``model``: a ``FoundationModel`` / ``FineTunedModel``, or a fitted ``SequenceSurpriseDetector`` (or
    the folder it was saved to): a session detector exports ``kind="session"`` with its fields and
    statistics, an ``aggregate="event"`` one the raw per-event surprise over its fields. ``session``
    (``session_spec(detector)``'s keys ``fields``, ``events``, ``minutes``, ``stats``) sets them by hand.
    """
    if not isinstance(model, FoundationModel):
        model, spec, event_fields = _from_detector(model)
        session = session or spec
        surprise_fields = surprise_fields or event_fields
        kind = kind or ("session" if session else "surprise")
    kind = kind or ("session" if session else "classifier" if isinstance(model, FineTunedModel) else "surprise")
    if kind == "session":
        from shopguard.models.sequence.detectors import BEHAVIOUR_FIELDS, SESSION_EVENTS, SESSION_MINUTES

        spec = {"fields": list(BEHAVIOUR_FIELDS), "events": SESSION_EVENTS, "minutes": SESSION_MINUTES,
                "stats": [], **(session or {})}
        field_weights(spec["fields"])  # unknown names are a clear error
        if spec["events"] < 1 or spec["minutes"] < 0:
            raise ModelError(f"session needs events >= 1 and minutes >= 0, got {spec['events']} / {spec['minutes']}",
                             field="session", value=(spec["events"], spec["minutes"]))
        if spec["stats"] and len(spec["stats"]) != 2:
            raise ModelError("session stats are two (mean, sd) pairs", field="session.stats", value=spec["stats"])
        session = spec
    if kind == "classifier" and not isinstance(model, FineTunedModel):
        raise ModelError("kind='classifier' needs a fine-tuned model", field="kind", value=kind)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    encoder = model.network.cpu().eval()
    encoder.set_export_mode(True)
    head = model.head.cpu().eval() if isinstance(model, FineTunedModel) else None
    graph = _Graph(encoder, kind, head, field_weights(surprise_fields),
                   session["fields"] if kind == "session" and session else None).eval()
    length = model.max_len + 1
    tokens = torch.full((2, length, len(FIELDS)), PAD, dtype=torch.long)
    tokens[:, -3] = BOS
    tokens[:, -2:] = OFFSET  # a valid id in every field
    dt = torch.zeros((2, length), dtype=torch.float32)
    fp32 = out / FP32_FILE
    try:
        with torch.no_grad():
            torch.onnx.export(graph, (tokens, dt), str(fp32), input_names=["tokens", "dt"], output_names=["score"],
                              dynamic_axes={"tokens": {0: "batch"}, "dt": {0: "batch"}, "score": {0: "batch"}},
                              opset_version=opset, dynamo=False)
    finally:
        encoder.set_export_mode(False)
    int8 = None
    if quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        int8 = out / INT8_FILE
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    model.tokenizer.save(out)
    meta: dict[str, Any] = {"kind": kind, "max_len": model.max_len, "fields": list(FIELDS), "opset": opset,
                            "fp32": FP32_FILE, "int8": INT8_FILE if int8 else None}
    if kind == "session":
        meta["session"] = session
    (out / EXPORT_FILE).write_text(json.dumps(meta, indent=2))
    return ExportResult(out, fp32, int8, kind)


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def session_scores(nll: np.ndarray, tokens: np.ndarray, dt: np.ndarray, session: dict[str, Any]) -> np.ndarray:
    """Session score (B,) of windows from their per-slot NLL (B, L-1): the aggregation and standardisation
    of ``SequenceSurpriseDetector(aggregate="session").score`` (``detectors.session_surprise``), in numpy.
    """
    nll = np.asarray(nll, dtype=np.float64)
    valid = tokens[:, 1:, 0] > BOS
    gaps = np.where(valid, np.expm1(dt[:, 1:].astype(np.float64)), 0.0)
    age = np.cumsum(gaps[:, ::-1], axis=1)[:, ::-1] - gaps  # seconds from each slot to the target
    slots = nll.shape[1]
    last = valid & (np.arange(slots)[None, :] >= slots - int(session["events"]))
    mean_k = (nll * last).sum(axis=1) / np.maximum(last.sum(axis=1), 1)
    recent = valid & (age <= float(session["minutes"]) * 60.0)
    recent[:, -1] = True
    peak = np.where(recent, nll, -np.inf).max(axis=1)
    stats = session.get("stats") or []
    if not stats:
        return mean_k + peak
    (m0, s0), (m1, s1) = stats
    return (mean_k - m0) / s0 + (peak - m1) / s1


class OnnxScorer:
    """Batch scoring of ``SequenceBatch`` windows with onnxruntime (``int8=True``: the quantised graph).

    ``score`` gives one number per window for every kind (``session``: the session score); ``run`` the
    graph's raw output (``session``: per-slot NLL (B, L-1)).
    """

    def __init__(self, folder: str | Path, *, int8: bool = True, threads: int = 1) -> None:
        self.folder = Path(folder)
        meta_file = self.folder / EXPORT_FILE
        if not meta_file.exists():
            raise ModelError(f"no exported model at {self.folder} ({EXPORT_FILE} missing)", field="model",
                             value=str(self.folder))
        self.meta = json.loads(meta_file.read_text())
        name = self.meta["int8"] if int8 and self.meta.get("int8") else self.meta["fp32"]
        self.session = _session(self.folder / name, threads)
        self.tokenizer = EventTokenizer.load(self.folder)
        self.max_len = int(self.meta["max_len"])
        self.kind = self.meta["kind"]
        self.session_spec: dict[str, Any] | None = self.meta.get("session") if self.kind == "session" else None

    def run(self, tokens: np.ndarray, dt: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"tokens": tokens, "dt": dt})[0]

    def score_windows(self, tokens: np.ndarray, dt: np.ndarray) -> np.ndarray:
        """One score per window (B,) (embeddings: (B, D)); ``session`` aggregates the per-slot NLL."""
        out = self.run(tokens, dt)
        if self.session_spec is not None:
            return session_scores(out, tokens, dt, self.session_spec)
        return out

    def score(self, batch: SequenceBatch, batch_size: int = 1024) -> np.ndarray:
        outs = [self.score_windows(batch.tokens[s:s + batch_size], batch.dt[s:s + batch_size])
                for s in range(0, len(batch), batch_size)]
        return np.concatenate(outs) if outs else np.zeros(0, dtype=np.float32)


class _UserHistory:
    __slots__ = ("state", "tokens", "dt")

    def __init__(self, length: int) -> None:
        self.state = UserState()
        self.tokens = np.full((length, len(FIELDS)), PAD, dtype=np.int64)
        self.tokens[-1] = BOS  # empty history: the next event's window starts with BOS
        self.dt = np.zeros(length, dtype=np.float32)


class IncrementalScorer:
    """Scores one new event at a time from a per-user cache of token history (score, then learn).

    A ``kind="session"`` export returns the session score of ``SequenceSurpriseDetector`` (same value as
    its batch ``score`` of the event); older surprise exports the per-event NLL, as before.

    >>> # scorer = IncrementalScorer(export_dir); scorer.warm(store.events()); scorer.score_one(record)
    """

    def __init__(self, folder: str | Path, *, int8: bool = True, threads: int = 1, max_users: int = 1_000_000) -> None:
        self.scorer = OnnxScorer(folder, int8=int8, threads=threads)
        self.tokenizer = self.scorer.tokenizer
        self.length = self.scorer.max_len + 1
        self.max_users = max_users
        self.users: dict[str, _UserHistory] = {}
        self._tokens = np.empty((1, self.length, len(FIELDS)), dtype=np.int64)
        self._dt = np.empty((1, self.length), dtype=np.float32)

    def _history(self, record: dict[str, Any]) -> _UserHistory:
        key = record.get("user_id") or f"evt:{record.get('event_id')}"
        h = self.users.get(key)
        if h is None:
            if len(self.users) >= self.max_users:
                self.users.pop(next(iter(self.users)))  # drop the oldest-inserted user: bounded memory
            h = self.users[key] = _UserHistory(self.length)
        return h

    def score_one(self, record: dict[str, Any], *, learn: bool = True) -> float:
        """Score of one event (a store record with a datetime ``ts``) given its user's cached history."""
        h = self._history(record)
        row, dt = self.tokenizer.encode_one(record, h.state)
        self._tokens[0, :-1] = h.tokens[1:]
        self._tokens[0, -1] = row
        self._dt[0, :-1] = h.dt[1:]
        self._dt[0, -1] = dt
        out = self.scorer.score_windows(self._tokens, self._dt)
        if learn:
            h.tokens[:] = self._tokens[0]
            h.dt[:] = self._dt[0]
            self.tokenizer.state_update(record, h.state)
        return float(np.asarray(out).reshape(-1)[0]) if self.scorer.kind != "embedding" else out

    def score_windows(self, tokens: np.ndarray, dt: np.ndarray) -> np.ndarray:
        """Scores (B,) of windows stacked by the caller (``api.scoring.sequence_scores``): one ONNX run."""
        return self.scorer.score_windows(tokens, dt)

    def learn_one(self, record: dict[str, Any]) -> None:
        """Add an event to its user's history without scoring it."""
        h = self._history(record)
        row, dt = self.tokenizer.encode_one(record, h.state)
        h.tokens[:-1] = h.tokens[1:]
        h.tokens[-1] = row
        h.dt[:-1] = h.dt[1:]
        h.dt[-1] = dt
        self.tokenizer.state_update(record, h.state)

    def warm(self, events: pl.DataFrame | Iterable[dict[str, Any]]) -> int:
        """Fill the cache from past events (e.g. ``store.events(since=...)``), in time order."""
        if isinstance(events, pl.DataFrame):
            events = events.sort(["ts", "event_id"]).iter_rows(named=True)
        n = 0
        for rec in events:
            self.learn_one(rec)
            n += 1
        return n
