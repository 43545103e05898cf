"""Honest evaluation: time-ordered splits with a label delay, fraud-team metrics, JSON + HTML reports."""

from shopguard.evaluation.metrics import (
    average_precision,
    card_precision_at_k,
    precision_at_k_per_day,
    recall_at_fpr,
    roc_auc,
    summary,
)
from shopguard.evaluation.splits import SplitConfig, TimeSplit, make_split, remove_known_entities

__all__ = [
    "SplitConfig",
    "TimeSplit",
    "average_precision",
    "card_precision_at_k",
    "make_split",
    "precision_at_k_per_day",
    "recall_at_fpr",
    "remove_known_entities",
    "roc_auc",
    "summary",
]
