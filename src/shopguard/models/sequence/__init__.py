"""The behaviour foundation model: a transformer pretrained on unlabeled event sequences.

See ``docs/foundation-model.md``. Heavy dependencies (torch, peft, onnxruntime) load on first use of
the submodules, not on ``import shopguard.models.sequence``.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "NetworkConfig": "config", "PretrainConfig": "config", "FinetuneConfig": "config", "TokenizerConfig": "config",
    "preset": "config",
    "EventTokenizer": "tokenizer", "FIELDS": "tokenizer",
    "SequenceBatch": "sequences", "build_sequences": "sequences",
    "BehaviourTransformer": "network", "FoundationModel": "network",
    "pretrain": "pretrain", "PretrainResult": "pretrain",
    "finetune": "finetune", "FineTunedModel": "finetune", "FinetuneResult": "finetune",
    "SequenceInput": "detectors", "SequenceSurpriseDetector": "detectors", "SequenceClassifierDetector": "detectors",
    "sequence_embeddings": "detectors", "surprise_features": "detectors", "SEQUENCE_DETECTORS": "detectors", "BEHAVIOUR_FIELDS": "detectors",
    "export_onnx": "export", "OnnxScorer": "export", "IncrementalScorer": "export",
    "user_windows": "cutoffs", "UserWindows": "cutoffs",
    "NextInterest": "interest", "PopularInterest": "interest", "UserFrequentInterest": "interest",
    "UserRecentInterest": "interest", "InterestScores": "interest",
    "ChurnRiskDetector": "churn", "ChurnInput": "churn",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(name)
