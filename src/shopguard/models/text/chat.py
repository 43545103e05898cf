"""Chat risk: refund-abuse scripts, threats and abuse, and social-engineering attempts (en + zh).

Customer-service chats carry three kinds of abuse a risk team acts on:

- ``refund_abuse``: scripted "never received / box was empty / refund now or I dispute" claims;
- ``threat_abuse``: insults, threats and review extortion ("refund or I leave 1 star");
- ``social_engineering``: asking for codes or passwords, moving the talk off-platform, fake staff,
  phishing links, account-change pretexts.

Two signals per category work without labels and explain themselves:

1. a lexicon of regular expressions in English and Chinese (``LEXICON``), each with a weight, whose
   matches are quoted in the reasons;
2. embedding prototypes: a few example messages per category in both languages (``PROTOTYPES``),
   embedded with the multilingual USE encoder; the cosine to the nearest prototype catches paraphrases
   the lexicon misses, in either language.

``ChatRiskDetector.fit(X)`` without labels scores ``max`` over categories of ``1 - (1 - lexicon)(1 -
prototype)``. With labels (``fit(X, y)``, e.g. the simulator's ``refund_abuse`` chats) a logistic
regression learns from the embedding, the lexicon and the prototype scores together; the score is the
larger of its probability and the unlabelled score, because labels rarely cover every kind of abuse.
The category signals provide the reasons either way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression

from shopguard.errors import DataError
from shopguard.models.base import Detector
from shopguard.models.text.encoders import shared_encoder
from shopguard.models.text.inputs import as_labels, as_texts

CATEGORIES = ("refund_abuse", "threat_abuse", "social_engineering")
CATEGORY_TEXT = {
    "refund_abuse": "refund-abuse script",
    "threat_abuse": "threat or abuse",
    "social_engineering": "social-engineering attempt",
}


@dataclass(frozen=True)
class Pattern:
    """One lexicon entry: a case-insensitive regular expression and how strongly it alone indicates risk."""

    category: str
    regex: str
    weight: float


LEXICON: tuple[Pattern, ...] = (
    # refund abuse: "not received" despite tracking, empty box, demands with a chargeback threat
    # "not arrived yet" is an ordinary where-is-my-order question; a claim says it never came at all
    Pattern("refund_abuse", r"\b(never|not|didn'?t|did not|haven'?t) (receive[d]?|got (it|anything))|never arrived"
            r"|nothing (arrived|was delivered)", 0.45),
    Pattern("refund_abuse", r"(says|shows|marked( as)?) delivered but", 0.55),
    Pattern("refund_abuse", r"\b(box|package|parcel) was empty|empty (box|package|parcel)", 0.5),
    Pattern("refund_abuse", r"\bfull refund|refund (me )?(now|immediately|right now)|want my money back", 0.35),
    Pattern("refund_abuse", r"dispute the charge|charge ?back|file a dispute|call my bank", 0.45),
    # "还没收到" (not here *yet*) is a where-is-my-order question, not a claim
    Pattern("refund_abuse", r"(?<!还)没(有)?收到|(?<!还)未收到|根本没(有)?(到|送到)|什么都没送到", 0.45),
    Pattern("refund_abuse", r"显示(已)?签收|签收了但", 0.55),
    Pattern("refund_abuse", r"空盒|空包裹", 0.5),
    Pattern("refund_abuse", r"全额退款|马上退款|立即退款|立刻退款", 0.35),
    Pattern("refund_abuse", r"拒付|信用卡争议|找银行", 0.45),
    # threats and abuse, including review extortion
    Pattern("threat_abuse", r"\b(kill|hurt|destroy|find) you\b|you('ll| will) (regret|pay for)|i know where you live", 0.8),
    Pattern("threat_abuse", r"\b(idiots?|stupid|morons?|scum|bastards?|f+u+c+k\w*|shit\w*|scammers?|thie(f|ves))\b", 0.45),
    Pattern("threat_abuse", r"(1|one)[- ]star (review )?unless|(bad|negative|1[- ]star) reviews? (unless|if you don'?t)", 0.7),
    Pattern("threat_abuse", r"\b(sue|report) you\b|my lawyer|see you in court", 0.4),
    Pattern("threat_abuse", r"弄死你|去死|找你算账|你等着|让你好看|知道你住(在)?哪", 0.8),
    Pattern("threat_abuse", r"傻[逼瓜子]|蠢货|混蛋|垃圾商家|骗子|滚", 0.45),
    Pattern("threat_abuse", r"不(退|给)(款|钱)?就(给)?差评|差评(警告|伺候)|刷差评", 0.7),
    Pattern("threat_abuse", r"起诉你|告你|投诉到", 0.4),
    # social engineering: codes, passwords, off-platform payment, fake staff, links, account changes
    Pattern("social_engineering", r"verification code|one[- ]time (pass)?code|\botp\b|security code|sms code", 0.6),
    Pattern("social_engineering", r"\b(your|the) password\b|send (me )?(your )?(login|password|credentials)", 0.6),
    Pattern("social_engineering", r"gift ?cards?|wire transfer|western union|pay (me )?(outside|off)[- ]?(the )?(platform|site)", 0.5),
    Pattern("social_engineering", r"\b(whatsapp|telegram|wechat|signal) me\b|contact me (on|via) (whatsapp|telegram|wechat)", 0.5),
    Pattern("social_engineering", r"(click|open|visit) (this|the|my) link|https?://\S+|bit\.ly", 0.4),
    Pattern("social_engineering", r"(i am|i'm|this is) (from )?(the )?(platform|support|security|admin|staff) (team)?", 0.4),
    Pattern("social_engineering", r"account (will be|is|has been) (suspended|locked|frozen|closed)|verify your account", 0.55),
    Pattern("social_engineering", r"change (the )?(email|phone( number)?|password) (on|of|for) (the|this|my|your) account", 0.4),
    Pattern("social_engineering", r"验证码|动态码|短信码", 0.6),
    Pattern("social_engineering", r"(你的|告诉我|发我)(登录)?密码|账号密码", 0.6),
    Pattern("social_engineering", r"礼品卡|私下(交易|转账)|线下(交易|转账)|转账给我|绕过平台", 0.5),
    Pattern("social_engineering", r"加(我)?(微信|qq|QQ)|微信联系|电报联系", 0.5),
    Pattern("social_engineering", r"点击(这个)?链接|点(这个)?链接", 0.4),
    Pattern("social_engineering", r"我是(平台|官方)?客服|我是(平台|官方)(人员|工作人员)", 0.4),
    Pattern("social_engineering", r"账(户|号)(将被|已被|被)?(冻结|封|异常)|验证(你的)?账(户|号)", 0.55),
    Pattern("social_engineering", r"(修改|更换)(绑定)?(手机|邮箱|密码)", 0.4),
)

PROTOTYPES: dict[str, tuple[str, ...]] = {
    "refund_abuse": (
        "I never received my package even though tracking says delivered, refund me now.",
        "The box was empty when it arrived, I want a full refund.",
        "Refund me immediately or I will dispute the charge with my bank.",
        "我没有收到包裹，物流显示已签收，要求全额退款。",
        "收到的是空盒子，马上退款。",
        "不退款我就申请拒付。",
    ),
    "threat_abuse": (
        "You stupid scammers, I will make you regret this.",
        "Give me a refund or I will leave a one star review everywhere.",
        "I know where your shop is and I will come for you.",
        "你们这些骗子，等着瞧。",
        "不退款就给差评，让你们好看。",
        "再不处理我弄死你。",
    ),
    "social_engineering": (
        "Please send me the verification code you just received.",
        "I am from the platform support team, your account will be suspended unless you confirm your password.",
        "Let's continue on WhatsApp and you can pay me with gift cards outside the platform.",
        "请把刚收到的验证码发给我。",
        "我是平台客服，你的账户将被冻结，请提供密码。",
        "加我微信，私下转账更便宜。",
    ),
}


def lexicon_matches(text: str) -> dict[str, list[str]]:
    """Matched phrases per category (only categories with matches)."""
    found: dict[str, list[str]] = {}
    for p in LEXICON:
        m = re.search(p.regex, text, flags=re.IGNORECASE)
        if m:
            found.setdefault(p.category, []).append(m.group(0))
    return found


def lexicon_scores(texts: list[str]) -> np.ndarray:
    """Per text and category: ``1 - prod(1 - weight)`` over the patterns that match (rows x categories)."""
    out = np.zeros((len(texts), len(CATEGORIES)))
    compiled = [(CATEGORIES.index(p.category), re.compile(p.regex, re.IGNORECASE), p.weight) for p in LEXICON]
    for i, t in enumerate(texts):
        keep = np.ones(len(CATEGORIES))
        for c, rx, w in compiled:
            if rx.search(t):
                keep[c] *= 1 - w
        out[i] = 1 - keep
    return out


class ChatRiskDetector(Detector):
    """Chat-message risk (higher = riskier) from a lexicon, embedding prototypes and, given labels, a
    logistic regression. ``X``: texts or a frame with a ``text`` column."""

    name: ClassVar[str] = "chat_text"
    supervised: ClassVar[bool] = False  # works without labels; learns from them when given

    def __init__(self, encoder: str = "use", proto_low: float = 0.5, proto_high: float = 0.8,
                 C: float = 1.0, seed: int = 0) -> None:
        self.encoder = encoder
        self.proto_low = proto_low
        self.proto_high = proto_high
        self.C = C
        self.seed = seed

    def _signals(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Embeddings, lexicon scores and prototype scores (rows x categories)."""
        enc = shared_encoder(self.encoder)
        emb = enc.encode(texts)
        protos = np.column_stack([(emb @ self.prototypes_[c].T).max(axis=1) for c in CATEGORIES])
        proto = np.clip((protos - self.proto_low) / (self.proto_high - self.proto_low), 0, 1)
        return emb, lexicon_scores(texts), proto

    def fit(self, X: Any, y: Any = None) -> Self:
        texts, _ = as_texts(X)
        enc = shared_encoder(self.encoder)
        self.prototypes_ = {c: enc.encode(list(PROTOTYPES[c])) for c in CATEGORIES}
        self.model_: LogisticRegression | None = None
        has_labels = y is not None or (isinstance(X, pl.DataFrame) and "label" in X.columns)
        if has_labels:
            labels = as_labels(y, len(texts), X)
            if len(np.unique(labels)) < 2:
                raise DataError("y: chat labels hold one class only; pass y=None for the unsupervised score",
                                field="y", value=int(labels[0]) if len(labels) else None)
            self.model_ = LogisticRegression(C=self.C, max_iter=2000, class_weight="balanced",
                                             random_state=self.seed)
            self.model_.fit(self._features(*self._signals(texts)), labels)
        return self

    @staticmethod
    def _features(emb: np.ndarray, lex: np.ndarray, proto: np.ndarray) -> np.ndarray:
        return np.hstack([emb, lex * 3, proto * 3])

    def category_scores(self, X: Any) -> pl.DataFrame:
        """Unsupervised score per category in [0, 1]: ``1 - (1 - lexicon)(1 - prototype)``."""
        self.check_fitted()
        texts, _ = as_texts(X)
        _, lex, proto = self._signals(texts)
        both = 1 - (1 - lex) * (1 - proto)
        return pl.DataFrame({c: both[:, j] for j, c in enumerate(CATEGORIES)})

    def score(self, X: Any) -> np.ndarray:
        """Risk per message: the learned probability when fitted with labels, else the top category score."""
        self.check_fitted()
        texts, _ = as_texts(X)
        emb, lex, proto = self._signals(texts)
        unsupervised = (1 - (1 - lex) * (1 - proto)).max(axis=1)
        if self.model_ is None:
            return unsupervised
        # Labels usually cover one kind of abuse (the simulator's: refund scripts); the maximum keeps the
        # lexicon and prototypes in charge of the kinds the labels never showed.
        return np.maximum(self.model_.predict_proba(self._features(emb, lex, proto))[:, 1], unsupervised)

    def explain(self, X: Any) -> pl.DataFrame:
        return self.category_scores(X)

    def reasons(self, X: Any, min_score: float = 0.3) -> list[list[str]]:
        """Sentences naming the category and quoting what matched, e.g. 'refund-abuse script: "says
        delivered but", "full refund"'; a paraphrase without lexicon hits names the nearest prototype."""
        texts, _ = as_texts(X)
        cats = self.category_scores(texts)
        out: list[list[str]] = []
        for i, t in enumerate(texts):
            hits = lexicon_matches(t)
            rs: list[str] = []
            for c in CATEGORIES:
                s = float(cats[c][i])
                if s < min_score:
                    continue
                quoted = ", ".join(f'"{h}"' for h in hits.get(c, [])[:3])
                rs.append(f"{CATEGORY_TEXT[c]} ({s:.2f}): {quoted}" if quoted
                          else f"{CATEGORY_TEXT[c]} ({s:.2f}): reads like known {c.replace('_', ' ')} messages")
            out.append(rs)
        return out
