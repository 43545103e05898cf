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

``kind="fusion"`` is the serving form of a fitted ``FusionClassifierDetector`` (``export_onnx(detector,
dir)``, or the folder it or its ``shopguard train --detector fusion`` model directory was saved to): one
graph maps ``tokens``, ``dt`` and ``features`` (B, K) float32 — the event's raw engineered features in
``export.json``'s ``features`` order, NaN where missing — to the probability. Everything the batch
detector does between them is inside: the pretrained model's surprise columns (per-field NLL of the
target, session mean / peak over the window), the signed log, standardisation, clipping and missing
-> 0 of ``FusionFeatures``, the fine-tuned encoder and the linear head.

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
from shopguard.models.sequence.tokenizer import BOS, FIELDS, OFFSET, PAD, UNK, EventTokenizer, UserState

EXPORT_FILE = "export.json"
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
Kind = Literal["classifier", "surprise", "embedding", "session", "fusion"]


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
        tokens = self.encoder.known_ids(tokens)  # the heads' targets too: ids outside a table read as UNK
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


def example_windows(net: BehaviourTransformer, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tracing inputs for the export: two windows ``[PAD.., BOS, e, e]`` whose every id is one the
    field's table holds. ``OFFSET`` (the first real value) is not always one: a field the training events
    never carried (a click log has no ``status``, no ``amount``, maybe no ``category``) has no real value,
    its table ends at ``UNK``; there the events hold ``UNK``. The values only drive the trace."""
    first = [OFFSET if net.vocab_sizes[f] > OFFSET else UNK for f in FIELDS]
    tokens = torch.full((2, length, len(FIELDS)), PAD, dtype=torch.long)
    tokens[:, -3] = BOS
    tokens[:, -2:] = torch.tensor(first, dtype=torch.long)
    return tokens, torch.zeros((2, length), dtype=torch.float32)


class FusionGraph(nn.Module):
    """Token window + raw engineered features -> probability: ``FusionClassifierDetector.score`` in one pass.

    Both the detector's batch scoring (torch) and the ONNX export run this module (``fusion_graph``).
    ``index`` orders [features (K), surprise columns (16)] into the fitted ``FusionFeatures`` columns;
    ``surprise_encoder`` is None when the classifier's own encoder is the pretrained one (``frozen``).
    """

    def __init__(self, encoder: BehaviourTransformer, head: nn.Module, surprise: bool,
                 surprise_encoder: BehaviourTransformer | None, index: list[int], mean: np.ndarray,
                 scale: np.ndarray, length: int, session_events: int, session_minutes: float,
                 session_fields: Sequence[str]) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.surprise = surprise
        self.surprise_encoder = surprise_encoder
        self.register_buffer("index", torch.tensor(index, dtype=torch.long))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))
        slots = length - 1
        k = torch.arange(slots)
        self.register_buffer("last_k", k >= slots - session_events)
        self.register_buffer("is_target", k == slots - 1)
        self.minutes = float(session_minutes)
        self.all_cols = [(j, net_key(f)) for j, f in enumerate(FIELDS)]
        self.session_cols = [(FIELDS.index(f), net_key(f)) for f in session_fields]

    def _surprise(self, net: BehaviourTransformer, hidden: torch.Tensor, tokens: torch.Tensor,
                  dt: torch.Tensor) -> torch.Tensor:
        """(B, 16): per-field NLL of the target, their total, session mean and peak (``fusion_frame``)."""
        prev, target = hidden[:, -2, :], tokens[:, -1, :]
        per_field = []
        for j, key in self.all_cols:
            logp = torch.log_softmax(net.next_heads[key](prev).float(), dim=-1)
            per_field.append(-torch.gather(logp, -1, target[:, j:j + 1]).squeeze(-1))
        fields = torch.stack(per_field, dim=1)
        # As ``detectors.window_surprise`` + ``session_surprise`` (behaviour fields, every slot).
        h, nxt = hidden[:, :-1], tokens[:, 1:]
        nll = torch.zeros(nxt.shape[:2], dtype=torch.float32, device=tokens.device)
        for j, key in self.session_cols:
            logp = torch.log_softmax(net.next_heads[key](h).float(), dim=-1)
            nll = nll - torch.gather(logp, -1, nxt[:, :, j:j + 1]).squeeze(-1)
        valid = nxt[:, :, 0] > BOS
        gaps = torch.where(valid, torch.exp(dt[:, 1:]) - 1.0, torch.zeros_like(nll))
        # age of slot p = the sum of the gaps after it (a CumSum, not a MatMul: int8 must not round seconds)
        age = torch.flip(torch.cumsum(torch.flip(gaps, dims=[1]), dim=1), dims=[1]) - gaps
        last = valid & self.last_k[None, :]
        mean_k = (nll * last.float()).sum(dim=1) / last.float().sum(dim=1).clamp(min=1.0)
        recent = (valid & (age <= self.minutes * 60.0)) | self.is_target[None, :]
        peak = torch.where(recent, nll, torch.full_like(nll, -1e30)).amax(dim=1)
        return torch.cat([fields.sum(dim=1, keepdim=True), fields, mean_k[:, None], peak[:, None]], dim=1)

    def forward(self, tokens: torch.Tensor, dt: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder.known_ids(tokens)  # the surprise targets too: ids outside a table read as UNK
        hidden = self.encoder.encode(tokens, dt)
        x = features.float()
        if self.surprise:
            net = self.surprise_encoder if self.surprise_encoder is not None else self.encoder
            hs = hidden if self.surprise_encoder is None else net.encode(tokens, dt)
            x = torch.cat([x, self._surprise(net, hs, tokens, dt)], dim=1)
        x = torch.index_select(x, 1, self.index)
        x = torch.sign(x) * torch.log1p(torch.abs(x))  # FusionFeatures: signed log, then standardise
        z = (x - self.mean) / self.scale
        z = torch.where(torch.isfinite(z), z, torch.zeros_like(z)).clamp(-5.0, 5.0)  # missing = the mean
        return torch.sigmoid(self.head(hidden[:, -1, :], z))


def fusion_detector(model: Any) -> Any | None:
    """A fitted ``FusionClassifierDetector`` from itself, its saved folder or a model directory holding
    one (``shopguard train --detector fusion``); None for anything else."""
    from shopguard.models.sequence.fusion import FusionClassifierDetector

    if isinstance(model, FusionClassifierDetector):
        return model
    if not isinstance(model, str | Path):
        return None
    folder = Path(model)
    for cand in (folder, folder / "detector"):
        meta = cand / "detector.json"
        if meta.exists() and json.loads(meta.read_text()).get("name") == FusionClassifierDetector.name:
            from shopguard.models.base import load_detector

            return load_detector(cand)
    return None


def fusion_graph(det: Any) -> FusionGraph:
    """The one-pass scoring module of a fitted ``FusionClassifierDetector`` (its own weights, not copies;
    CPU, eval mode). Inputs: windows and the raw ``det.feature_columns`` (NaN = missing)."""
    from shopguard.models.sequence.detectors import BEHAVIOUR_FIELDS, SESSION_EVENTS, SESSION_MINUTES
    from shopguard.models.sequence.fusion import SURPRISE_COLUMNS

    det.check_fitted()
    model: FineTunedModel = det.model_
    features = det.feature_columns
    pos = {c: i for i, c in enumerate(features)}
    if det.surprise:
        pos.update({c: len(features) + i for i, c in enumerate(SURPRISE_COLUMNS)})
    columns = det.features_.columns or []
    unknown = [c for c in columns if c not in pos]
    if unknown:
        raise ModelError(f"fused column {unknown[0]!r} has no source in the fusion graph", field="features",
                         value=unknown[0])
    encoder = model.network.cpu().eval()
    surprise_net = det.surprise_model_.network.cpu().eval() if det.surprise and det.surprise_model_ is not None else None
    return FusionGraph(encoder, model.head.cpu().eval(), bool(det.surprise), surprise_net,
                       [pos[c] for c in columns], det.features_.mean_, det.features_.scale_, det.window + 1,
                       SESSION_EVENTS, SESSION_MINUTES, BEHAVIOUR_FIELDS).eval()


def _export_fusion(det: Any, folder: str | Path, *, quantize: bool, opset: int) -> ExportResult:
    graph = fusion_graph(det)
    model: FineTunedModel = det.model_
    features = det.feature_columns
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    nets = [graph.encoder] + ([graph.surprise_encoder] if graph.surprise_encoder is not None else [])
    tokens, dt = example_windows(graph.encoder, det.window + 1)
    feats = torch.zeros((2, len(features)), dtype=torch.float32)
    fp32 = out / FP32_FILE
    for n in nets:
        n.set_export_mode(True)
    try:
        with torch.no_grad():
            torch.onnx.export(graph, (tokens, dt, feats), str(fp32), input_names=["tokens", "dt", "features"],
                              output_names=["score"],
                              dynamic_axes={"tokens": {0: "batch"}, "dt": {0: "batch"}, "features": {0: "batch"},
                                            "score": {0: "batch"}},
                              opset_version=opset, dynamo=False)
    finally:
        for n in nets:
            n.set_export_mode(False)
    int8 = None
    if quantize:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # The head is one small dot product over [hidden state, standardised features]: int8 would save
        # nothing there and move the probability most; the encoder and the surprise heads are quantised.
        head_nodes = [n.name for n in onnx.load(str(fp32)).graph.node if n.name.startswith("/head/")]
        int8 = out / INT8_FILE
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, nodes_to_exclude=head_nodes)
    model.tokenizer.save(out)
    meta: dict[str, Any] = {"kind": "fusion", "max_len": det.window, "fields": list(FIELDS), "opset": opset,
                            "fp32": FP32_FILE, "int8": INT8_FILE if int8 else None, "features": features,
                            "surprise": bool(det.surprise), "method": det.method}
    (out / EXPORT_FILE).write_text(json.dumps(meta, indent=2))
    return ExportResult(out, fp32, int8, "fusion")


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
    A fitted ``FusionClassifierDetector`` (or its folder, or a model directory holding one) exports
    ``kind="fusion"``: inputs ``tokens``, ``dt`` and ``features`` (see the module docstring).
    """
    fusion = None if isinstance(model, FoundationModel) else fusion_detector(model)
    if fusion is not None:
        return _export_fusion(fusion, folder, quantize=quantize, opset=opset)
    if kind == "fusion":
        raise ModelError("kind='fusion' needs a fitted sequence_fusion detector", field="kind", value=kind)
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
    tokens, dt = example_windows(encoder, model.max_len + 1)
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
        #: ``fusion``: the engineered feature columns the graph's ``features`` input takes, in order.
        self.feature_names: list[str] | None = self.meta.get("features") if self.kind == "fusion" else None

    def feature_matrix(self, frame: pl.DataFrame) -> np.ndarray:
        """(B, K) float32 ``features`` input of a fusion export from a feature frame (nulls -> NaN)."""
        if self.feature_names is None:
            raise ModelError(f"a {self.kind!r} export takes no features", field="features")
        missing = [c for c in self.feature_names if c not in frame.columns]
        if missing:
            raise ModelError(f"feature frame lacks column {missing[0]!r} the exported fusion model reads",
                             field=missing[0])
        x = frame.select([pl.col(c).cast(pl.Float64) for c in self.feature_names]).to_numpy()
        return np.ascontiguousarray(x, dtype=np.float32)

    def _features(self, features: np.ndarray | None, n: int) -> np.ndarray:
        if features is None:
            raise ModelError("a fusion export needs features=(windows x features) next to the windows",
                             field="features")
        x = np.asarray(features, dtype=np.float32).reshape(n, -1)
        if self.feature_names is not None and x.shape[1] != len(self.feature_names):
            raise ModelError(f"features has {x.shape[1]} columns, the export reads {len(self.feature_names)}",
                             field="features", value=x.shape)
        return x

    def run(self, tokens: np.ndarray, dt: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        feeds = {"tokens": tokens, "dt": dt}
        if self.kind == "fusion":
            feeds["features"] = self._features(features, tokens.shape[0])
        return self.session.run(None, feeds)[0]

    def score_windows(self, tokens: np.ndarray, dt: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        """One score per window (B,) (embeddings: (B, D)); ``session`` aggregates the per-slot NLL;
        ``fusion`` needs the windows' ``features`` (B, K)."""
        out = self.run(tokens, dt, features)
        if self.session_spec is not None:
            return session_scores(out, tokens, dt, self.session_spec)
        return out

    def score(self, batch: SequenceBatch, batch_size: int = 1024, features: np.ndarray | None = None) -> np.ndarray:
        x = self._features(features, len(batch)) if self.kind == "fusion" else None
        outs = [self.score_windows(batch.tokens[s:s + batch_size], batch.dt[s:s + batch_size],
                                   None if x is None else x[s:s + batch_size])
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

    def _history(self, record: dict[str, Any]) -> _UserHistory:
        key = record.get("user_id") or f"evt:{record.get('event_id')}"
        h = self.users.get(key)
        if h is None:
            if len(self.users) >= self.max_users:
                self.users.pop(next(iter(self.users)))  # drop the oldest-inserted user: bounded memory
            h = self.users[key] = _UserHistory(self.length)
        return h

    def score_one(self, record: dict[str, Any], *, learn: bool = True, features: Any = None) -> float:
        """Score of one event (a store record with a datetime ``ts``) given its user's cached history.

        A ``fusion`` export also needs the event's ``features``: its engineered feature values in the
        export's ``features`` order (a sequence or array, NaN where missing), or a dict by name.
        """
        tokens, dts = self.windows([record], [learn])
        if isinstance(features, dict) and self.scorer.feature_names is not None:
            features = [features.get(c) for c in self.scorer.feature_names]
        x = None
        if features is not None:
            vals = features if isinstance(features, np.ndarray) else [np.nan if v is None else v for v in features]
            x = np.asarray(vals, dtype=np.float32).reshape(1, -1)
        out = self.scorer.score_windows(tokens, dts, x)
        return float(np.asarray(out).reshape(-1)[0]) if self.scorer.kind != "embedding" else out

    def score_windows(self, tokens: np.ndarray, dt: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        """Scores (B,) of windows stacked by the caller (``api.scoring.sequence_scores``): one ONNX run."""
        return self.scorer.score_windows(tokens, dt, features)

    def windows(self, records: Sequence[dict[str, Any]], learn: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
        """(tokens (B, L, 13), dt (B, L)) of each record's window, in order, for one stacked model run.

        Each window is its user's history as it stands after the records before it that are learnt
        (``learn[i]``), exactly the window ``score_one`` would read one by one, so several events of one
        user in a pass see each other.
        """
        n = len(records)
        tokens = np.empty((n, self.length, len(FIELDS)), dtype=np.int64)
        dts = np.empty((n, self.length), dtype=np.float32)
        for i, (rec, ln) in enumerate(zip(records, learn, strict=True)):
            h = self._history(rec)
            row, dt = self.tokenizer.encode_one(rec, h.state)
            tokens[i, :-1] = h.tokens[1:]
            tokens[i, -1] = row
            dts[i, :-1] = h.dt[1:]
            dts[i, -1] = dt
            if ln:
                h.tokens[:] = tokens[i]
                h.dt[:] = dts[i]
                self.tokenizer.state_update(rec, h.state)
        return tokens, dts

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
