"""Per-text language detection for the languages shopguard's text models handle: ``en``, ``zh``, ``other``.

Reviews and chats arrive with an optional ``language`` field that sources often leave empty or get
wrong, and the n-gram tokenizer and the English-only fine-tuned encoder need to know which texts are
Chinese. Script share decides: a text whose letters are mostly CJK ideographs is Chinese, one whose
letters are mostly Latin and that uses common English function words is English, anything else
(Cyrillic, Arabic, German, ...) is ``other``. No model is needed, so this is fast and deterministic.

>>> detect_language("The room was clean and the staff friendly.")
'en'
>>> detect_language("房间很干净，服务也很好")
'zh'
>>> detect_language("Отличный отель")
'other'
"""

from __future__ import annotations

import re
from collections.abc import Iterable

LANGUAGES = ("en", "zh", "other")

# CJK Unified Ideographs (+ extension A and compatibility block): Chinese text is mostly these.
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]")
_LETTER = re.compile(r"[^\W\d_]", re.UNICODE)
_WORD = re.compile(r"[A-Za-z']+")
# Short texts ("ok", "great!") carry no function words; accept plain ASCII words there.
_EN_FUNCTION_WORDS = frozenset(
    "the a an and or but to of in on at for with is was are were be been it this that i you we they "
    "my your our not no very so have has had do did will would can could me us he she his her them "
    "from as by if all just please".split()
)
# Function words of other Latin-script languages (de, fr, es, it, nl, pt): plain-ASCII text that uses
# these more than English ones is not English.
_OTHER_FUNCTION_WORDS = frozenset(
    "der die das und ist nicht ein eine mit war sehr le la les et est une pas avec tres el los las y es "
    "muy con una il di che non per con sono het een van niet zijn o os um uma com muito".split()
)
# Japanese kana: CJK ideographs plus kana is Japanese, which we report as "other".
_KANA = re.compile(r"[\u3040-\u30ff]")


def cjk_share(text: str) -> float:
    """Share of letters in ``text`` that are CJK ideographs (0 when there are no letters)."""
    letters = len(_LETTER.findall(text))
    return len(_CJK.findall(text)) / letters if letters else 0.0


def detect_language(text: str | None, *, cjk_threshold: float = 0.3) -> str:
    """``'zh'`` when at least ``cjk_threshold`` of the letters are CJK ideographs, ``'en'`` for
    Latin-script English, otherwise ``'other'`` (also for empty or missing text)."""
    if not text:
        return "other"
    letters = len(_LETTER.findall(text))
    if letters == 0:
        return "other"
    cjk = len(_CJK.findall(text))
    if cjk / letters >= cjk_threshold:
        return "other" if len(_KANA.findall(text)) > 0.1 * cjk else "zh"
    latin = len(_LATIN.findall(text))
    if latin / letters < 0.7:
        return "other"
    words = [w.lower() for w in _WORD.findall(text)]
    if not words:
        return "other"
    hits = sum(w in _EN_FUNCTION_WORDS for w in words)
    other = sum(w in _OTHER_FUNCTION_WORDS for w in words)
    ascii_only = all(ord(ch) < 128 for ch in text if _LATIN.match(ch))
    if hits / len(words) >= 0.08 and hits > other:
        return "en"
    # Short or telegraphic English ("Best kettle ever!!!") has few function words: plain ASCII will do.
    if ascii_only and other == 0:
        return "en"
    return "other"


def detect_languages(texts: Iterable[str | None]) -> list[str]:
    """``detect_language`` for each text."""
    return [detect_language(t) for t in texts]
