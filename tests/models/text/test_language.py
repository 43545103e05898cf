from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shopguard.models.text.language import LANGUAGES, cjk_share, detect_language, detect_languages


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The room was clean and the staff were friendly.", "en"),
        ("great!", "en"),
        ("Best kettle ever!!! Highly recommend!!!", "en"),
        ("房间很干净，服务也很好。", "zh"),
        ("这个iPhone壳质量不错", "zh"),
        ("我没有收到包裹，物流显示已签收。", "zh"),
        ("Отличный отель, всем советую", "other"),
        ("Das Zimmer war sauber und das Personal freundlich.", "other"),
        ("この商品はとても良いです", "other"),
        ("", "other"),
        (None, "other"),
        ("12345 !!!", "other"),
    ],
)
def test_detect_language(text: str | None, expected: str) -> None:
    assert detect_language(text) == expected


def test_cjk_share_and_batch() -> None:
    assert cjk_share("abc") == 0.0
    assert cjk_share("好的") == 1.0
    assert detect_languages(["hello there, how are you", "你好"]) == ["en", "zh"]


@given(st.text(max_size=200))
def test_detect_language_total(text: str) -> None:
    assert detect_language(text) in LANGUAGES
