from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from shopguard.errors import ValidationFailed
from shopguard.models.base import load_detector
from shopguard.models.text.scoring import TextEventDetector, event_labels, fit_text_model, score_text_events
from shopguard.store import EventStore

from .conftest import T0


def test_scores_reviews_and_chats_with_reasons(shop: tuple[pl.DataFrame, pl.DataFrame], tmp_path: Path) -> None:
    events, labels = shop
    det = TextEventDetector(min_positives=5).fit(events, labels)
    out = det.score_events(events)
    assert set(out["type"].unique()) == {"review", "chat"}
    by_id = dict(zip(out["event_id"], out["score"], strict=True))
    fake = [by_id[f"r_new{u}"] for u in range(9)]
    genuine = [by_id[e] for e in out.filter(pl.col("event_id").str.starts_with("r_old"))["event_id"]]
    assert np.mean(fake) > np.max(genuine) - 0.3 and np.mean(fake) > np.mean(genuine) + 0.3
    reasons = out.filter(pl.col("event_id") == "r_new8")["reasons"][0].to_list()
    assert any("similar to 8 reviews from 8 accounts" in r for r in reasons)
    chat = out.filter(pl.col("event_id") == "c2").row(0, named=True)
    assert chat["score"] > 0.5 and any("refund-abuse" in r for r in chat["reasons"])
    # one score per input row, 0 for other event types
    s = det.score(events)
    assert s.shape == (events.height,) and s[(events["type"] == "signup").to_numpy()].max() == 0.0
    det.save(tmp_path / "text")
    again = load_detector(tmp_path / "text").score_events(events)
    np.testing.assert_allclose(again["score"].to_numpy(), out["score"].to_numpy())


def test_labels_known_later_are_not_used(shop: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    events, labels = shop
    reviews = events.filter(pl.col("type") == "review")
    assert event_labels(reviews, labels).sum() == 9
    assert event_labels(reviews, labels, known_before=T0 + timedelta(days=20)).sum() == 0
    det = TextEventDetector().fit(events, labels, known_before=T0 + timedelta(days=20))
    assert det.review_model_ is None  # no review labels known yet: context score only
    out = det.score_events(events, since=T0 + timedelta(days=20))
    assert out.filter(pl.col("type") == "review").height == 9


def test_store_helpers(shop: tuple[pl.DataFrame, pl.DataFrame], store: EventStore) -> None:
    events, labels = shop
    store.append_events(events)
    store.append_labels(labels)
    model = fit_text_model(store, min_positives=5)
    out = score_text_events(store, model, since=T0 + timedelta(days=20))
    assert out.height == 9 + events.filter((pl.col("type") == "chat") & (pl.col("ts") >= T0 + timedelta(days=20))).height
    assert out.filter(pl.col("type") == "review")["score"].min() > 0.5


def test_bad_input() -> None:
    with pytest.raises(ValidationFailed, match="events"):
        TextEventDetector().fit([{"text": "x"}])
    with pytest.raises(ValidationFailed, match="text"):
        TextEventDetector().fit(pl.DataFrame({"event_id": ["a"], "ts": [T0], "type": ["chat"], "user_id": ["u"]}))


def test_score_record_for_the_service(shop: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    events, labels = shop
    det = TextEventDetector(min_positives=5).fit(events, labels)
    t = T0 + timedelta(days=21)
    review = {"event_id": "r_live", "ts": t, "type": "review", "user_id": "new99", "item_id": "i2", "rating": 5,
              "text": "Best kettle ever!!! Highly recommend!!! Five stars!!!"}
    with_history = det.score_record(review, history=events)
    assert any("similar to 9 reviews from 9 accounts" in r for r in with_history["reasons"])
    text_only = det.score_record(review)
    assert text_only["text_score"] == pytest.approx(with_history["text_score"])
    chat = det.score_record({"type": "chat", "ts": t, "user_id": "u", "text": "加我微信，私下转账，发我验证码"})
    assert chat["score"] > 0.5 and chat["reasons"]
    assert det.score_record({"type": "login", "ts": t, "user_id": "u"})["score"] == 0.0
