from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from shopguard.errors import DataError
from shopguard.models.text.chat import CATEGORIES, ChatRiskDetector, lexicon_matches

BENIGN = ["Hi, where is my order? It has not arrived yet.", "Is this jacket available in blue?",
          "可以修改订单的收货地址吗？", "这个耳机有保修吗？", "How do I return this lamp? It doesn't fit.",
          "Thanks, the replacement arrived today!"]


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("I never received my package. Tracking says delivered but nothing arrived. Full refund now.", "refund_abuse"),
        ("收到的是空盒子，马上退款，不然我就申请拒付。", "refund_abuse"),
        ("You stupid scammers, refund me or I leave a 1-star review unless you pay.", "threat_abuse"),
        ("不退款就给差评，你等着。", "threat_abuse"),
        ("Hello, I am from the platform support team, send me the verification code.", "social_engineering"),
        ("加我微信，私下转账更便宜。", "social_engineering"),
    ],
)
def test_lexicon_and_unsupervised_scores(text: str, category: str) -> None:
    det = ChatRiskDetector().fit(BENIGN)
    assert category in lexicon_matches(text)
    cats = det.category_scores([text])
    assert cats[category][0] > 0.5
    assert det.score([text])[0] > det.score(BENIGN).max()
    reasons = det.reasons([text])[0]
    assert any(r.startswith({"refund_abuse": "refund-abuse", "threat_abuse": "threat",
                             "social_engineering": "social-engineering"}[category]) for r in reasons)


def test_benign_chats_have_no_reasons() -> None:
    det = ChatRiskDetector().fit(BENIGN)
    assert all(r == [] for r in det.reasons(BENIGN))
    assert det.category_scores(BENIGN).columns == list(CATEGORIES)


def test_learns_from_labels(shop: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    events, labels = shop
    chats = events.filter(pl.col("type") == "chat")
    y = np.isin(chats["event_id"].to_numpy(), labels["entity_id"].to_numpy()).astype(int)
    det = ChatRiskDetector().fit(chats.select("text"), y)
    assert det.model_ is not None
    unseen = ["Nothing was delivered to me. I need a refund immediately or I will dispute the charge.",
              "什么都没送到，立即退款。", "My package is late, any update?", "帮我查一下物流好吗？"]
    s = det.score(unseen)
    assert roc_auc_score([1, 1, 0, 0], s) == 1.0


def test_one_class_labels_are_refused() -> None:
    with pytest.raises(DataError, match="y"):
        ChatRiskDetector().fit(BENIGN, [0] * len(BENIGN))
