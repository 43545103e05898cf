"""A fusion model (behaviour transformer + engineered features, ``train --detector fusion``) served online.

The batch path scores a fusion bundle from a feature frame *and* the users' event histories
(``pipeline.bind_events``). Online, the same two inputs come from the service's state: the event's
online features (same definitions as the batch engine) and a per-user cache of tokenised history
(``models.sequence.export.IncrementalScorer`` over the model's ONNX export, ``kind="fusion"``). A pass
of events is one ONNX run on the stacked windows; the bundle's own calibrator and policy then give the
probability, risk level and action, and the linear head's exact per-feature contributions the reasons,
as ``ModelBundle.decide(explain="flagged")`` does.

The history cache must hold every earlier event of each user before the model decides: the engine warms
it from the store at start-up, and before a hot swap to a fusion model (``DecisionEngine``).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shopguard.errors import ModelError, ShopguardError

log = logging.getLogger("shopguard.service")

ONNX_DIR = "onnx"  # where ``shopguard train --detector fusion`` writes the export, inside the model folder


class FusionServing:
    """One fusion bundle's online scorer: history cache + ONNX graph + the bundle's calibration and policy.

    ``path`` is the model folder; its ``onnx/`` export is used (fp32: the policy thresholds were set on
    the unquantised model's probabilities). A folder without one (trained through ``pipeline.train``, or
    with ``--no-export``) is exported into a temporary folder on load, off the request path.
    """

    def __init__(self, bundle: Any, path: Path, *, threads: int = 1) -> None:
        from shopguard.models.sequence.export import IncrementalScorer, export_onnx

        self.bundle = bundle
        self.detector = bundle.detector
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        folder = path / ONNX_DIR
        try:
            if not (folder / "export.json").exists():
                log.warning("fusion model %s has no %s/ export: exporting it now (train writes one unless "
                            "--no-export)", path, ONNX_DIR)
                self._tmp = tempfile.TemporaryDirectory(prefix="shopguard-fusion-")
                folder = Path(self._tmp.name)
                export_onnx(self.detector, folder, quantize=False)
            self.history = IncrementalScorer(folder, int8=False, threads=threads)
        except ShopguardError as exc:
            raise ModelError(f"fusion model at {path} cannot be served: {exc.message}", field="model",
                             value=str(path)) from None
        except Exception as exc:  # a damaged graph and the like: refuse, the current model keeps serving
            raise ModelError(f"fusion model at {path} cannot be served: its ONNX export does not load ({exc})",
                             field="model", value=str(path)) from None
        net = self.history.scorer
        if net.kind != "fusion":
            raise ModelError(f"{folder} holds a {net.kind!r} export, not the fusion model's (kind 'fusion'): "
                             f"re-export it with shopguard.models.sequence.export.export_onnx(model_dir, dir)",
                             field="model", value=str(folder))
        self.columns: list[str] = list(net.feature_names or [])
        want = list(self.detector.feature_columns)
        if self.columns != want:
            raise ModelError(f"the ONNX export at {folder} reads features {self.columns[:3]}…, the model "
                             f"{want[:3]}…: the export is from another model", field="model", value=str(folder))
        self._lin = self._explainer()  # the linear head's explanation terms (None for an MLP head)

    # -- history ----------------------------------------------------------------------------------------
    def warm(self, events: Any) -> int:
        """Learn past events (a store frame or records, any order for a frame: sorted by time here)."""
        return self.history.warm(events)

    def learn_one(self, record: dict[str, Any]) -> None:
        self.history.learn_one(record)

    # -- deciding ---------------------------------------------------------------------------------------
    def feature_matrix(self, rows: Sequence[dict[str, Any]]) -> np.ndarray:
        """(B, K) float32 of the model's feature columns from online feature dicts (missing -> NaN)."""
        x = np.full((len(rows), len(self.columns)), np.nan, dtype=np.float32)
        for i, row in enumerate(rows):
            for j, c in enumerate(self.columns):
                v = row.get(c)
                if v is None:
                    continue
                try:
                    f = float(v)
                except (TypeError, ValueError):
                    continue  # a non-numeric value where a number is expected counts as missing
                x[i, j] = f  # inf stays inf, as the batch path's cast keeps it
        return x

    def decide(self, records: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]], learn: Sequence[bool],
               *, top_reasons: int = 3) -> list[Any]:
        """``ModelOutput`` per event: one ONNX run for the pass, then calibration, policy and reasons.

        ``records`` are the events (their windows, learnt into the history where ``learn``), ``rows``
        their feature dicts (the online features, plus ``event_id``).
        """
        from shopguard.api.scoring import ModelOutput
        from shopguard.decision.policy import Action

        if not records:
            return []
        tokens, dts = self.history.windows(records, learn)
        x = self.feature_matrix(rows)
        scores = np.asarray(self.history.score_windows(tokens, dts, x), dtype=np.float64).reshape(-1)
        bundle = self.bundle
        probs = bundle.calibrator.transform(scores)
        levels = bundle.policy.levels(probs)
        actions = [bundle.policy.action_for(lv) for lv in levels]
        reasons: list[list[dict[str, Any]]] = [[] for _ in records]
        flagged = [i for i, a in enumerate(actions) if a != Action.ALLOW]
        if top_reasons > 0 and flagged:
            try:
                reasons_for = self._reasons(x[flagged], [rows[i] for i in flagged], top_reasons)
                for i, r in zip(flagged, reasons_for, strict=True):
                    reasons[i] = r
            except Exception:  # reasons explain a decision; they never block it
                log.exception("fusion reasons failed on %d events", len(flagged))
        return [ModelOutput(float(scores[i]), float(probs[i]), levels[i].value, actions[i].value, reasons[i])
                for i in range(len(records))]

    def _explainer(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """(weight, head mean, head scale, feature mean, feature scale) of ``columns``, for the linear head."""
        lin = self.detector._linear()
        if lin is None:  # an MLP head: no exact contributions to quote
            return None
        w, mu, sigma = lin
        fused = list(self.detector.features_.columns or [])
        pos = [fused.index(c) for c in self.columns]
        ff = self.detector.features_
        return w[pos], mu[pos], sigma[pos], ff.mean_[pos], ff.scale_[pos]

    def _reasons(self, x: np.ndarray, rows: Sequence[dict[str, Any]], top: int) -> list[list[dict[str, Any]]]:
        """The linear head's exact per-feature contributions as reason codes (flagged rows only).

        The numbers of ``FusionClassifierDetector.explain`` (weight x standardised value, vs the training
        mean), computed from the pass's feature matrix ``x``: no frame on the request path. ``rows`` give
        the values the texts quote.
        """
        from shopguard.decision.reasons import reasons_from_weights
        from shopguard.models.sequence.fusion import _CLIP, _signed_log

        if self._lin is None:
            return [[] for _ in rows]
        w, mu, sigma, mean, scale = self._lin
        with np.errstate(all="ignore"):
            z = (_signed_log(x.astype(np.float64)) - mean) / scale
        z = np.clip(np.where(np.isfinite(z), z, 0.0), -_CLIP, _CLIP).astype(np.float32).astype(np.float64)
        contrib = w[None, :] * (z - mu[None, :]) / sigma[None, :]
        found = reasons_from_weights(contrib, self.columns, lambda r, name: _number(rows[r].get(name)),
                                     self.bundle.feature_set, top=top)
        return [[{"code": r.code, "text": r.text, "source": "model"} for r in rs] for rs in found]


def _number(v: Any) -> Any:
    """The value a reason text quotes: text where a number belongs is missing, as in the batch path's
    Float64 frame (``reasons_from_weights`` treats NaN as missing itself)."""
    return None if isinstance(v, str) else v


__all__ = ["FusionServing"]
