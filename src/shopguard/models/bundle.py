"""A model directory: everything needed to score and decide, pinned together and checksummed.

::

    MODEL_DIR/
      manifest.json      format, model version, detector, feature set (+ version), training window,
                         calibration, metrics, sha256 of every other file
      detector/          the fitted detector (``Detector.save``)
      calibrator.json    score -> probability (plain numbers: loading it runs no code)
      policy.json        thresholds and actions (``decision.Policy``)

``ModelBundle.load`` refuses a directory whose files changed since it was written, whose format is
newer than this code, or whose feature set the current feature engine cannot reproduce. A manifest's
checksums sit beside the files, so they catch corruption, not an attacker who re-seals a folder: nothing
in a model folder may therefore run code when loaded, and nothing in it is a pickle: the calibrator is
JSON, the detector's state is JSON, npz (read with ``allow_pickle=False``), LightGBM text models, Arrow
frames and safetensors / weights-only tensors (``shopguard.models.state``). A folder holding any
``.joblib``, ``.pkl`` or ``.pickle`` file (the ``calibrator.joblib`` or ``detector/state.joblib`` of
older versions) is refused before anything is read, with the advice to retrain; the detector class must
be a shopguard one.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from shopguard.decision.policy import Action, Decision, Policy
from shopguard.decision.reasons import Reason, reasons_from_contributions
from shopguard.errors import ConfigError, ModelError, ValidationFailed
from shopguard.events.schema import SCHEMA_VERSION
from shopguard.models.base import Detector, load_detector
from shopguard.models.calibration import Calibrator
from shopguard.models.state import refuse_pickles
from shopguard.models.tabular import as_polars, check_columns

FORMAT = "shopguard-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DETECTOR_DIR = "detector"
CALIBRATOR_FILE = "calibrator.json"
LEGACY_CALIBRATOR_FILE = "calibrator.joblib"  # a pickle: refused on load
DETECTOR_MODULES = ("shopguard.models.",)  # a detector class must live here (no foreign imports at load)
POLICY_FILE = "policy.json"


@dataclass
class ModelBundle:
    """A fitted detector with its feature set, calibrator, policy, training window and metrics."""

    detector: Detector
    calibrator: Calibrator
    policy: Policy
    feature_set: Any | None = None  # shopguard.features.FeatureSet
    columns: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    split: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    model_version: str = ""
    created_at: str = ""
    path: Path | None = None

    # -- using ------------------------------------------------------------------------------------------
    def _frame(self, features: Any) -> pl.DataFrame:
        frame = as_polars(features)
        check_columns(frame, self.columns, f"model {self.model_version or self.detector.name}")
        return frame

    def score(self, features: Any) -> np.ndarray:
        """Detector scores (higher = riskier) for a feature frame with this model's columns."""
        return self.detector.score(self._frame(features))

    def probability(self, features: Any) -> np.ndarray:
        return self.calibrator.transform(self.score(features))

    def decide(
        self,
        features: Any,
        *,
        top_reasons: int = 3,
        rule_hits: list[list[str]] | None = None,
        explain: str = "all",
    ) -> list[Decision]:
        """One ``Decision`` per row (needs ``event_id``): probability, risk level, action and reasons.

        ``explain="flagged"`` computes reasons only for rows whose action is not ``allow``: the
        per-feature contributions cost several times the score, and the real-time path needs them
        only where an analyst or the customer will see them.
        """
        if explain not in ("all", "flagged"):
            raise ValidationFailed(f"explain must be 'all' or 'flagged', got {explain!r}", field="explain",
                                   value=explain)
        frame = self._frame(features)
        if "event_id" not in frame.columns:
            raise ModelError("decide() needs the event_id column in the feature frame", field="event_id")
        t0 = time.perf_counter()
        contrib = None
        both = getattr(self.detector, "score_and_explain", None)
        if top_reasons > 0 and frame.height and both is not None and explain == "all":
            scores, contrib = both(frame)
        else:
            scores = self.detector.score(frame)
        probs = self.calibrator.transform(scores)
        levels = self.policy.levels(probs)
        reasons: list[list[Reason]] = [[] for _ in range(frame.height)]
        if top_reasons > 0 and frame.height:
            rows = np.arange(frame.height)
            if explain == "flagged":
                rows = np.flatnonzero([self.policy.action_for(lv) != Action.ALLOW for lv in levels])
            if contrib is None and rows.size:
                contrib = self.detector.explain(frame[rows] if rows.size < frame.height else frame)
                if contrib is not None and rows.size < frame.height:
                    found = reasons_from_contributions(contrib, frame[rows], self.feature_set, top=top_reasons)
                    for i, r in zip(rows.tolist(), found, strict=True):
                        reasons[i] = r
                    contrib = None
            if contrib is not None:
                reasons = reasons_from_contributions(contrib, frame, self.feature_set, top=top_reasons)
        latency = (time.perf_counter() - t0) * 1000 / max(frame.height, 1)
        ids = frame.get_column("event_id").cast(pl.Utf8).to_list()
        return [
            Decision(
                event_id=ids[i], score=float(scores[i]), probability=float(probs[i]), risk_level=levels[i],
                action=self.policy.action_for(levels[i]), reasons=reasons[i],
                rule_hits=list(rule_hits[i]) if rule_hits else [], model_version=self.model_version,
                latency_ms=round(latency, 4),
            )
            for i in range(frame.height)
        ]

    # -- persistence ------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the bundle into ``path`` (created); the manifest is written last, with checksums."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MANIFEST).unlink(missing_ok=True)  # a half-written dir must never look valid
        self.created_at = self.created_at or datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="seconds")
        fs_dict = self.feature_set.to_dict() if self.feature_set is not None else None
        self.detector.save(folder / DETECTOR_DIR, metadata={
            "feature_version": fs_dict["version"] if fs_dict else None, "columns": self.columns})
        (folder / LEGACY_CALIBRATOR_FILE).unlink(missing_ok=True)
        self.calibrator.save_json(folder / CALIBRATOR_FILE)
        (folder / POLICY_FILE).write_text(self.policy.model_dump_json(indent=2))
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
        checksums = {str(p.relative_to(folder)): _sha256(p) for p in files}
        if not self.model_version:
            digest = hashlib.sha256("".join(checksums.values()).encode()).hexdigest()[:8]
            self.model_version = f"{self.detector.name}-{self.created_at.replace(':', '').replace('-', '')}-{digest}"
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_version": self.model_version,
            "created_at": self.created_at,
            "version": self.model_version,
            "schema_version": SCHEMA_VERSION,
            "detector": self.detector.name,
            "detector_class": f"{type(self.detector).__module__}.{type(self.detector).__qualname__}",
            "supervised": self.detector.supervised,
            "feature_set": fs_dict,
            "feature_set_version": fs_dict["version"] if fs_dict else None,
            "training_window": {"start": self.split.get("train_start"), "end": self.split.get("train_end")},
            "columns": self.columns,
            "categorical": self.categorical,
            "calibration": getattr(self.calibrator, "kind_", None),
            "policy": json.loads(self.policy.model_dump_json()),
            "split": self.split,
            "metrics": _jsonable(self.metrics),
            "info": _jsonable(self.info),
            "files": checksums,
        }
        _write_manifest(folder, manifest)
        self.path = folder
        return folder

    @classmethod
    def load(cls, path: str | Path) -> ModelBundle:
        """Load and verify a model directory; ``ModelError`` naming what is wrong otherwise."""
        folder = Path(path)
        mfile = folder / MANIFEST
        if not mfile.exists():
            raise ModelError(f"{folder} is not a shopguard model directory ({MANIFEST} missing): "
                             "train one with `shopguard train --out DIR`", field="model", value=str(folder))
        try:
            manifest = json.loads(mfile.read_text())
        except json.JSONDecodeError as exc:
            raise ModelError(f"{mfile} is corrupted: {exc}", field="model", value=str(folder)) from exc
        if manifest.get("format") != FORMAT:
            raise ModelError(f"{folder} holds {manifest.get('format')!r}, not a {FORMAT}", field="model")
        from shopguard.models.registry import check_signature

        check_signature(manifest, str(folder))
        version = manifest.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ModelError(f"model format version {version!r} is newer than this shopguard reads "
                             f"({FORMAT_VERSION}): upgrade shopguard", field="format_version", value=version)
        if manifest.get("schema_version") not in (None, SCHEMA_VERSION):
            raise ModelError(f"model at {folder} was trained on event schema {manifest['schema_version']}, this "
                             f"shopguard uses {SCHEMA_VERSION}: retrain it", field="schema_version",
                             value=manifest["schema_version"])
        for rel, digest in manifest.get("files", {}).items():
            f = folder / rel
            if not f.exists():
                raise ModelError(f"model file {rel} is missing from {folder}", field=rel, value=str(f))
            if _sha256(f) != digest:
                raise ModelError(f"model file {rel} in {folder} does not match its checksum: the directory is "
                                 "corrupted or was edited; retrain or restore it", field=rel, value=str(f))
        feature_set = None
        if manifest.get("feature_set"):
            try:
                from shopguard.features import FeatureSet

                feature_set = FeatureSet.from_dict(manifest["feature_set"])
            except (ConfigError, TypeError, KeyError, ValueError) as exc:
                raise ModelError(f"the model's feature set cannot be reproduced by this shopguard ({exc}); retrain "
                                 "the model", field="feature_set", value=manifest.get("feature_set_version")) from exc
        if (folder / LEGACY_CALIBRATOR_FILE).exists() or not (folder / CALIBRATOR_FILE).exists():
            raise ModelError(f"model at {folder} keeps its calibrator as a pickle ({LEGACY_CALIBRATOR_FILE}), which "
                             "could run code when loaded, or has none: retrain it with this shopguard "
                             "(`shopguard train --out DIR`)", field="calibrator", value=str(folder))
        refuse_pickles(folder)  # anywhere in the folder: pickles are never read, whatever their name says
        check_detector_folder(folder / DETECTOR_DIR)
        detector = load_detector(folder / DETECTOR_DIR)
        calibrator = Calibrator.load_json(folder / CALIBRATOR_FILE)
        try:
            policy = Policy.model_validate_json((folder / POLICY_FILE).read_text())
        except Exception as exc:
            raise ModelError(f"model at {folder}: {POLICY_FILE} is invalid: {str(exc)[:300]}", field="policy",
                             value=str(folder)) from None
        return cls(
            detector=detector, calibrator=calibrator, policy=policy, feature_set=feature_set,
            columns=list(manifest.get("columns", [])), categorical=list(manifest.get("categorical", [])),
            split=manifest.get("split", {}), metrics=manifest.get("metrics", {}), info=manifest.get("info", {}),
            model_version=manifest.get("model_version", ""), created_at=manifest.get("created_at", ""), path=folder,
        )


def check_detector_folder(folder: Path) -> None:
    """Before ``load_detector`` runs: the detector class is a shopguard one and the folder holds no pickle."""
    meta_file = folder / "detector.json"
    try:
        meta = json.loads(meta_file.read_text())
        cls_path = str(meta["class"])
    except Exception as exc:
        raise ModelError(f"detector at {folder} is unreadable: {str(exc)[:200]}", field="model",
                         value=str(folder)) from None
    if not cls_path.startswith(DETECTOR_MODULES):
        raise ModelError(f"detector class {cls_path!r} is not a shopguard detector: refused", field="model",
                         value=cls_path)
    refuse_pickles(folder, "detector")


def seal_files(path: str | Path, subfolder: str) -> int:
    """Add the files under ``path/subfolder`` (written after the bundle, e.g. its ONNX export) to the
    manifest's checksums, so verification covers them too. Returns how many were added."""
    folder = Path(path)
    manifest = read_manifest(folder)
    files = sorted(p for p in (folder / subfolder).rglob("*") if p.is_file())
    added = {str(p.relative_to(folder)): _sha256(p) for p in files}
    manifest["files"] = {**manifest["files"], **added}
    _write_manifest(folder, manifest)
    return len(added)


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Replace the manifest atomically: a reader sees the old one or the new one, never half of either."""
    from shopguard.models.registry import sign

    manifest = sign(json.loads(json.dumps(manifest, default=str)))  # signed when a signing key is configured
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    os.replace(tmp, folder / MANIFEST)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a model directory without loading the model (for listings and registries)."""
    mfile = Path(path) / MANIFEST
    if not mfile.exists():
        raise ModelError(f"{path} is not a shopguard model directory ({MANIFEST} missing)", field="model")
    return dict(json.loads(mfile.read_text()))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _jsonable(obj: Any) -> Any:
    """NaN/inf become null so the manifest stays strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
