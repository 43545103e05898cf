"""The detector contract every model in shopguard follows (after scikit-learn and PyOD).

- ``__init__`` only stores keyword arguments (hyperparameters); nothing is validated or learned there.
- ``fit(X, y=None)`` learns and returns ``self``; learned state ends in ``_``.
- ``score(X)`` returns a float array, one per row, **higher = riskier**; it never changes the model.
- ``save(dir)`` / ``load_detector(dir)`` round-trip a fitted detector through a folder holding
  ``detector.json`` (class, params, metadata) and the learned state.
- ``explain(X)`` optionally returns per-feature contributions (rows x features) for reason codes.

Tabular detectors take a Polars frame of features (see ``shopguard.features``); sequence and text
detectors take the inputs their docstrings name, behind the same methods.
"""

from __future__ import annotations

import importlib
import inspect
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from shopguard.errors import ModelError
from shopguard.models.state import STATE_JSON, load_state, refuse_pickles, save_state

STATE_FILE = STATE_JSON  # with state.npz and any lgb_*.txt / frame_*.arrow (shopguard.models.state)
META_FILE = "detector.json"


class Detector(ABC):
    """Base class of every detector. Subclasses set ``name`` and ``supervised``."""

    name: ClassVar[str] = "detector"
    supervised: ClassVar[bool] = False

    # -- parameters (scikit-learn style) ---------------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return [p for p in sig.parameters if p != "self" and sig.parameters[p].kind in kinds]

    def get_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._param_names() if k != "self"}

    def set_params(self, **params: Any) -> Self:
        for k, v in params.items():
            if k not in self._param_names():
                raise ValueError(f"{type(self).__name__} has no parameter {k!r}")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- the contract ----------------------------------------------------------------------------------
    @abstractmethod
    def fit(self, X: Any, y: Any = None) -> Self:
        """Learn from ``X`` (and labels ``y`` if supervised); return ``self``."""

    @abstractmethod
    def score(self, X: Any) -> np.ndarray:
        """One risk score per row of ``X``; higher = riskier."""

    def explain(self, X: Any) -> Any | None:
        """Per-feature contributions to the score (rows x features), or ``None`` if not supported."""
        return None

    @property
    def is_fitted(self) -> bool:
        return any(k.endswith("_") and not k.startswith("_") for k in vars(self))

    def check_fitted(self) -> None:
        if not self.is_fitted:
            raise ModelError(f"{type(self).__name__} is not fitted: call fit() first")

    # -- persistence -----------------------------------------------------------------------------------
    def save(self, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write this detector into folder ``path`` (created)."""
        self.check_fitted()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self._save_state(folder)
        meta = {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "name": self.name,
            "supervised": self.supervised,
            "params": _jsonable(self.get_params()),
            "metadata": metadata or {},
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        return folder

    def _save_state(self, folder: Path) -> None:
        """Default: the learned attributes as JSON, npz, LightGBM text and Arrow files, never a pickle
        (``shopguard.models.state``). Deep models override to write their own formats (safetensors)."""
        save_state(folder, {k: v for k, v in vars(self).items() if k.endswith("_") and k != "metadata_"})

    def _load_state(self, folder: Path) -> None:
        for k, v in load_state(folder).items():
            setattr(self, k, v)


def needs_events(detector: Any) -> bool:
    """True for detectors that read the users' event histories at scoring time (``sequence_fusion``)."""
    return bool(getattr(detector, "needs_events", False))


def load_detector(path: str | Path) -> Detector:
    """Load a detector saved with ``Detector.save``; refuses a folder that is missing or corrupted."""
    folder = Path(path)
    meta_file = folder / META_FILE
    if not meta_file.exists():
        raise ModelError(f"no detector at {folder} ({META_FILE} missing)", field="model", value=str(folder))
    refuse_pickles(folder, "detector")  # older versions pickled their state: never read, retrain
    try:
        meta = json.loads(meta_file.read_text())
        module_name, _, cls_name = meta["class"].rpartition(".")
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (json.JSONDecodeError, KeyError, ImportError, AttributeError) as exc:
        raise ModelError(f"detector at {folder} is unreadable: {exc}", field="model", value=str(folder)) from exc
    if not (isinstance(cls, type) and issubclass(cls, Detector)):
        raise ModelError(f"{meta['class']} is not a shopguard detector", field="model")
    det = cls(**{k: v for k, v in meta.get("params", {}).items() if k in cls._param_names()})
    try:
        det._load_state(folder)
    except Exception as exc:  # corrupted state: refuse with a clear error
        raise ModelError(f"detector state at {folder} is corrupted: {exc}", field="model", value=str(folder)) from exc
    det.metadata_ = meta.get("metadata", {})  # type: ignore[attr-defined]
    return det


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        try:
            json.dumps(v)
            out[k] = v
        except TypeError:
            out[k] = repr(v)
    return out
