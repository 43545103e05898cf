"""Detectors: every one has ``fit(...)`` and ``score(...)`` where a higher score means riskier.

The names below load on first use (PEP 562), so importing one submodule (``shopguard.models.text.
finetune`` on a GPU box without LightGBM or PyOD, say) does not import every detector's library.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shopguard.models.base import Detector, load_detector
    from shopguard.models.baseline import UserBaselineDetector
    from shopguard.models.gbm import LightGBMDetector
    from shopguard.models.unsupervised import ECODDetector, HBOSDetector, IsolationForestDetector

_LAZY = {
    "Detector": "shopguard.models.base",
    "load_detector": "shopguard.models.base",
    "UserBaselineDetector": "shopguard.models.baseline",
    "LightGBMDetector": "shopguard.models.gbm",
    "ECODDetector": "shopguard.models.unsupervised",
    "HBOSDetector": "shopguard.models.unsupervised",
    "IsolationForestDetector": "shopguard.models.unsupervised",
}


def _detectors() -> dict[str, type]:
    classes = [getattr(import_module(_LAZY[n]), n) for n in
               ("LightGBMDetector", "IsolationForestDetector", "ECODDetector", "HBOSDetector", "UserBaselineDetector")]
    return {cls.name: cls for cls in classes}


def __getattr__(name: str) -> Any:
    if name == "DETECTORS":
        value: Any = _detectors()
    elif name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'shopguard.models' has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip __getattr__
    return value


__all__ = [
    "DETECTORS",
    "Detector",
    "ECODDetector",
    "HBOSDetector",
    "IsolationForestDetector",
    "LightGBMDetector",
    "UserBaselineDetector",
    "load_detector",
]
