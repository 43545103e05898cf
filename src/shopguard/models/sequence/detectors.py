"""The behaviour foundation model behind the ``Detector`` interface.

Inputs (``X``) for every sequence detector, one score per *target* event, in order:

- a Polars frame of store events: every row is a target (scores follow row order) and the frame must
  also hold the users' earlier events the windows read (later events are ignored);
- ``SequenceInput(events, target_event_ids)``: score only the listed events, in that order, with
  ``events`` supplying their histories;
- a ``SequenceBatch`` already built with this detector's model (``det.model_.build(...)``).

``SequenceSurpriseDetector`` (unsupervised): negative log-likelihood of the event given its history
(all token fields, or the ``fields`` given, e.g. ``BEHAVIOUR_FIELDS``), standardised per event type on
the fit events (``normalize=True``).
``SequenceClassifierDetector`` (supervised): pretrain (or load a pretrained model), then fine-tune
(``full`` / ``lora`` / ``frozen``). ``surprise_features`` and ``sequence_embeddings`` give hybrid
features for LightGBM, keyed by ``event_id``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import polars as pl

from shopguard.errors import DataError, ModelError
from shopguard.models.base import Detector
from shopguard.models.sequence.config import FinetuneConfig, PretrainConfig, preset
from shopguard.models.sequence.finetune import FineTunedModel, finetune
from shopguard.models.sequence.network import FoundationModel
from shopguard.models.sequence.pretrain import pretrain
from shopguard.models.sequence.sequences import SequenceBatch

MODEL_DIR = "model"
# How the user acts rather than what they browse: a surprise over these ignores catalogue choices.
BEHAVIOUR_FIELDS = ["type", "amount", "dt", "device_new", "ip_new", "geo_new", "instrument_new", "status"]


@dataclass
class SequenceInput:
    """Events (targets and their histories) and which of them to score, in order."""

    events: pl.DataFrame
    target_event_ids: Sequence[str] | None = None


def _events_of(X: Any) -> pl.DataFrame | None:
    if isinstance(X, SequenceInput):
        return X.events
    if isinstance(X, pl.DataFrame):
        return X
    return None


def as_batch(model: FoundationModel, X: Any) -> SequenceBatch:
    """Turn any accepted detector input into windows built with ``model``'s tokenizer."""
    if isinstance(X, SequenceBatch):
        if X.tokens.ndim != 3 or X.tokens.shape[1] != model.max_len + 1:
            raise DataError(f"SequenceBatch windows have length {X.tokens.shape[1]}, this model needs "
                            f"{model.max_len + 1}", field="X", value=X.tokens.shape)
        return X
    if isinstance(X, SequenceInput):
        return model.build(X.events, X.target_event_ids)
    if isinstance(X, pl.DataFrame):
        if "event_id" not in X.columns:
            raise DataError("events need column 'event_id'", field="event_id")
        return model.build(X, X["event_id"].to_list())
    raise DataError(f"sequence detectors take a Polars frame of events, a SequenceInput or a SequenceBatch, "
                    f"got {type(X).__name__}", field="X")


def load_model(path: str | Path) -> FoundationModel:
    """A fine-tuned model when the folder holds a head, else the pretrained encoder."""
    try:
        return FineTunedModel.load(path)
    except ModelError:
        return FoundationModel.load(path)


def sequence_embeddings(model: FoundationModel | str | Path, events_frame: pl.DataFrame,
                        event_ids: Sequence[str] | pl.Series | None = None, *, prefix: str = "seq_emb_") -> pl.DataFrame:
    """Sequence embeddings (hidden state of each target event) as a frame keyed by ``event_id``.

    Join the result onto a feature frame on ``event_id`` for a hybrid LightGBM. Point-in-time: each
    embedding reads only the event and its user's earlier events.
    """
    m = load_model(model) if isinstance(model, str | Path) else model
    ids = list(events_frame["event_id"]) if event_ids is None else list(event_ids)
    batch = m.build(events_frame, ids)
    emb = m.embeddings(batch)
    data: dict[str, Any] = {"event_id": pl.Series("event_id", [str(e) for e in batch.event_ids], dtype=pl.Utf8)}
    for j in range(emb.shape[1]):
        data[f"{prefix}{j}"] = emb[:, j].astype(np.float32)
    return pl.DataFrame(data)


def surprise_features(model: FoundationModel | str | Path, events_frame: pl.DataFrame,
                      event_ids: Sequence[str] | pl.Series | None = None, *, prefix: str = "surprise_") -> pl.DataFrame:
    """Per-field surprise of each event given its history (one column per token field, plus ``total``),
    keyed by ``event_id``: unsupervised hybrid features for LightGBM (no label ever touched them).

    In the benchmark this hybrid beats LightGBM alone on the simulator's sequence scenarios.
    """
    from shopguard.models.sequence.tokenizer import FIELDS

    m = load_model(model) if isinstance(model, str | Path) else model
    ids = list(events_frame["event_id"]) if event_ids is None else list(event_ids)
    batch = m.build(events_frame, ids)
    fs = m.field_surprise(batch)
    data: dict[str, Any] = {"event_id": pl.Series("event_id", [str(e) for e in batch.event_ids], dtype=pl.Utf8),
                            f"{prefix}total": fs.sum(axis=1).astype(np.float32)}
    for j, f in enumerate(FIELDS):
        data[f"{prefix}{f}"] = fs[:, j].astype(np.float32)
    return pl.DataFrame(data)


class _SequenceDetector(Detector):
    def _save_state(self, folder: Path) -> None:
        self.model_.save(folder / MODEL_DIR)  # type: ignore[attr-defined]

    def _load_state(self, folder: Path) -> None:
        self.model_ = load_model(folder / MODEL_DIR)

    def _pretrained_or_new(self, X: Any) -> FoundationModel:
        if self.pretrained:  # type: ignore[attr-defined]
            return load_model(self.pretrained)  # type: ignore[attr-defined]
        events = _events_of(X)
        if events is None:
            raise DataError("without a pretrained model, fit needs events (a frame or SequenceInput) to pretrain on",
                            field="X")
        net = preset(self.config, **({"max_len": self.max_len} if self.max_len else {}))  # type: ignore[attr-defined]
        cfg = PretrainConfig(epochs=self.pretrain_epochs, seed=self.seed,  # type: ignore[attr-defined]
                             num_threads=self.num_threads)  # type: ignore[attr-defined]
        return pretrain(events, network=net, config=cfg).model


class SequenceSurpriseDetector(_SequenceDetector):
    """Unsupervised: how unlikely the event is given the user's history (NLL summed over fields)."""

    name = "sequence_surprise"
    supervised = False

    def __init__(self, pretrained: str | None = None, config: str = "tiny", max_len: int | None = None,
                 pretrain_epochs: int = 3, fields: list[str] | None = None, normalize: bool = True, seed: int = 7,
                 num_threads: int | None = None) -> None:
        self.pretrained = pretrained
        self.fields = fields
        self.normalize = normalize
        self.config = config
        self.max_len = max_len
        self.pretrain_epochs = pretrain_epochs
        self.seed = seed
        self.num_threads = num_threads

    def fit(self, X: Any, y: Any = None) -> Self:
        self.model_ = self._pretrained_or_new(X)
        self.type_stats_: dict[int, tuple[float, float]] = {}
        if self.normalize:
            batch = as_batch(self.model_, X)
            self.type_stats_ = fit_type_stats(self.model_.surprise(batch, fields=self.fields), batch)
        return self

    def score(self, X: Any) -> np.ndarray:
        self.check_fitted()
        batch = as_batch(self.model_, X)
        s = self.model_.surprise(batch, fields=self.fields).astype(np.float64)
        return apply_type_stats(s, batch, self.type_stats_) if self.normalize else s

    def _save_state(self, folder: Path) -> None:
        super()._save_state(folder)
        (folder / "type_stats.json").write_text(json.dumps({str(k): v for k, v in self.type_stats_.items()}))

    def _load_state(self, folder: Path) -> None:
        super()._load_state(folder)
        path = folder / "type_stats.json"
        raw = json.loads(path.read_text()) if path.exists() else {}
        self.type_stats_ = {int(k): (float(v[0]), float(v[1])) for k, v in raw.items()}


GLOBAL = -1


def fit_type_stats(scores: np.ndarray, batch: SequenceBatch) -> dict[int, tuple[float, float]]:
    """Mean and spread of the surprise per event type (and overall, key -1) on unlabeled events.

    Some kinds of event are always less predictable than others (an add-to-cart names one item of a
    whole catalogue, a login names nothing): standardising per type makes "unusual for a login" and
    "unusual for a payment" comparable. No label is used.
    """
    types = batch.tokens[:, -1, 0]
    stats = {GLOBAL: (float(np.mean(scores)), float(np.std(scores)) or 1.0)}
    for t in np.unique(types):
        v = scores[types == t]
        if v.size >= 20:
            stats[int(t)] = (float(np.mean(v)), max(float(np.std(v)), 1e-6))
    return stats


def apply_type_stats(scores: np.ndarray, batch: SequenceBatch, stats: dict[int, tuple[float, float]]) -> np.ndarray:
    types = batch.tokens[:, -1, 0]
    mu = np.array([stats.get(int(t), stats[GLOBAL])[0] for t in types])
    sd = np.array([stats.get(int(t), stats[GLOBAL])[1] for t in types])
    return (scores - mu) / sd


class SequenceClassifierDetector(_SequenceDetector):
    """Supervised: the pretrained encoder fine-tuned on event labels (``full``, ``lora`` or ``frozen``)."""

    name = "sequence_classifier"
    supervised = True

    def __init__(self, pretrained: str | None = None, method: str = "full", config: str = "tiny",
                 max_len: int | None = None, pretrain_epochs: int = 3, epochs: int = 10, lr: float = 1e-3,
                 encoder_lr: float = 3e-4, patience: int = 3, seed: int = 7, num_threads: int | None = None) -> None:
        self.pretrained = pretrained
        self.method = method
        self.config = config
        self.max_len = max_len
        self.pretrain_epochs = pretrain_epochs
        self.epochs = epochs
        self.lr = lr
        self.encoder_lr = encoder_lr
        self.patience = patience
        self.seed = seed
        self.num_threads = num_threads

    def fit(self, X: Any, y: Any = None) -> Self:
        if y is None:
            raise DataError("sequence_classifier is supervised: fit(X, y) needs labels", field="y")
        base = self._pretrained_or_new(X)
        batch = as_batch(base, X)
        cfg = FinetuneConfig(method=self.method, epochs=self.epochs, lr=self.lr, encoder_lr=self.encoder_lr,
                             patience=self.patience, seed=self.seed, num_threads=self.num_threads)
        result = finetune(base, batch, np.asarray(y), config=cfg)
        self.model_ = result.model
        self.finetune_ = result.model.finetune
        return self

    def score(self, X: Any) -> np.ndarray:
        self.check_fitted()
        if not isinstance(self.model_, FineTunedModel):
            raise ModelError("sequence_classifier holds no fine-tuned head", field="model")
        return self.model_.predict_proba(as_batch(self.model_, X)).astype(np.float64)


SEQUENCE_DETECTORS: dict[str, type[Detector]] = {
    SequenceSurpriseDetector.name: SequenceSurpriseDetector,
    SequenceClassifierDetector.name: SequenceClassifierDetector,
}
