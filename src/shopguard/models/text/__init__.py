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

from shopguard.models.text.chat import ChatRiskDetector
from shopguard.models.text.context import ReviewContextConfig, review_context
from shopguard.models.text.language import detect_language
from shopguard.models.text.review import ReviewRiskDetector
from shopguard.models.text.scoring import TextEventDetector, fit_text_model, score_text_events

__all__ = [
    "ChatRiskDetector", "ReviewContextConfig", "ReviewRiskDetector", "TextEventDetector", "detect_language",
    "fit_text_model", "review_context", "score_text_events",
]
