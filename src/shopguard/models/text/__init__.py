"""Review and chat text risk (English and Chinese) with pretrained encoders shipped in PyPI packages.

- ``language``: per-text language (en / zh / other).
- ``encoders``: frozen multilingual USE v3 and MiniLM sentence encoders, offline.
- ``ngrams``: TF-IDF word (jieba for Chinese) and character n-grams.
- ``finetune``: MiniLM fine-tuned fully or with LoRA.
- ``review``: ``ReviewRiskDetector``, the stacked fake-review text detector.
- ``context``: near duplicates, bursts, rating deviation, account age, verification (point in time).
- ``chat``: ``ChatRiskDetector`` for refund-abuse scripts, threats and social engineering.
- ``scoring``: ``TextEventDetector``, scoring review and chat events with reasons.

Heavy imports (torch, transformers) happen only when a model that needs them is built.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {  # loaded on first use, so ``finetune`` or ``encoders`` alone need no Polars
    "ChatRiskDetector": "shopguard.models.text.chat",
    "ReviewContextConfig": "shopguard.models.text.context",
    "review_context": "shopguard.models.text.context",
    "detect_language": "shopguard.models.text.language",
    "ReviewRiskDetector": "shopguard.models.text.review",
    "TextEventDetector": "shopguard.models.text.scoring",
    "fit_text_model": "shopguard.models.text.scoring",
    "score_text_events": "shopguard.models.text.scoring",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'shopguard.models.text' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "ChatRiskDetector", "ReviewContextConfig", "ReviewRiskDetector", "TextEventDetector", "detect_language",
    "fit_text_model", "review_context", "score_text_events",
]
