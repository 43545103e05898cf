"""Small seeded review and chat data (English + Chinese) for the text-model tests."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

GENUINE_EN = [
    "The {n} arrived on time and works well, battery could be better.",
    "Decent {n} for the price, the strap feels a bit cheap though.",
    "My daughter uses the {n} every day, no complaints so far.",
    "Returned the first {n} because of a scratch, the replacement is fine.",
    "Solid {n}, setup took ten minutes and the manual was clear.",
    "The {n} is smaller than I thought but does the job.",
]
GENUINE_ZH = [
    "{n}收到了，用了一周还不错，就是包装有点简单。",
    "{n}比想象中小一点，不过质量还可以。",
    "第二次买这个{n}了，物流慢了两天。",
    "{n}颜色和图片有点色差，整体满意。",
]
FAKE_EN = [
    "Best {n} ever!!! Highly recommend!!! Five stars!!!",
    "Amazing {n}, must buy, perfect perfect perfect!",
    "Top quality {n}, recommend to everyone, super seller!!!",
]
FAKE_ZH = ["最好的{n}！！！强烈推荐！！！五星好评！", "{n}太棒了，必买，完美完美！", "{n}质量一流，推荐给大家，超级好卖家！！！"]
# Genuine reviews in the shop fixture: opener x aspect x closer, each combination used once, so no two
# accounts write near-identical text (as real customers don't).
OPEN_EN = ["Bought the {n} for my brother's birthday", "Our old {n} broke so we ordered this one",
           "I was unsure about the {n} at first", "Picked the {n} after reading the specs twice",
           "The {n} replaced a cheaper model I had for years"]
ASPECT_EN = ["the hinge squeaks a little when it is cold", "shipping took nine days to reach Leeds",
             "the manual was only in German and Polish", "it runs warm after an hour of use",
             "the colour is darker than the photos suggested", "customer service swapped a faulty cable quickly"]
CLOSE_EN = ["overall fair for what I paid", "would maybe look at other brands next time",
            "my kids use it every morning now", "not perfect but it does the job"]
OPEN_ZH = ["给我爸买的{n}", "之前的{n}坏了所以又买了一个", "犹豫了很久才下单这个{n}", "朋友推荐的{n}"]
ASPECT_ZH = ["快递送了九天才到", "说明书只有英文", "用久了会有点发热", "颜色比图片深一些", "客服换了一根坏掉的线"]
CLOSE_ZH = ["整体对得起这个价格", "下次可能会试试别的牌子", "孩子每天早上都在用", "不完美但够用"]


def genuine_texts(rng: np.random.Generator, n: int, zh: bool) -> list[str]:
    opens, aspects, closes = (OPEN_ZH, ASPECT_ZH, CLOSE_ZH) if zh else (OPEN_EN, ASPECT_EN, CLOSE_EN)
    combos = [(o, a, c) for o in opens for a in aspects for c in closes]
    pick = rng.permutation(len(combos))[:n]
    nouns = NOUNS_ZH if zh else NOUNS_EN
    sep = "，" if zh else ", "
    return [sep.join(combos[k]).format(n=nouns[i % len(nouns)]) + ("。" if zh else ".") for i, k in enumerate(pick)]


NOUNS_EN = ["headphones", "kettle", "jacket", "lamp", "phone case", "backpack", "monitor"]
NOUNS_ZH = ["耳机", "水壶", "外套", "台灯", "手机壳", "背包", "显示器"]


def make_reviews(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """``n`` reviews, half fake, half Chinese, from templates with random nouns."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        fake = i % 2
        zh = (i // 2) % 2
        pool = (FAKE_ZH if zh else FAKE_EN) if fake else (GENUINE_ZH if zh else GENUINE_EN)
        noun = rng.choice(NOUNS_ZH if zh else NOUNS_EN)
        texts.append(str(rng.choice(pool)).format(n=noun))
        labels.append(fake)
    return texts, np.array(labels)


@pytest.fixture
def reviews() -> tuple[list[str], np.ndarray]:
    return make_reviews(80, seed=1)


T0 = datetime(2024, 5, 1)


def event(eid: str, ts: datetime, etype: str, user: str, **kw: object) -> dict[str, object]:
    base: dict[str, object] = {"event_id": eid, "ts": ts, "type": etype, "user_id": user, "item_id": None,
                               "order_id": None, "text": None, "rating": None}
    base.update(kw)
    return base


def make_shop_events(seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A small shop: old accounts buy and review item i1 over weeks; on day 20 nine fresh accounts post
    the same template on i2 with 5 stars against its 2-star history; chats include refund scripts."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    labels: list[dict[str, object]] = []
    pool = {False: genuine_texts(rng, 30, False), True: genuine_texts(rng, 30, True)}
    for u in range(30):
        user = f"old{u}"
        rows.append(event(f"s_{user}", T0 + timedelta(hours=u), "signup", user))
        for k, item in enumerate(("i1", "i2")):
            t = T0 + timedelta(days=2 + u % 10, hours=k)
            rows.append(event(f"o_{user}_{item}", t, "order", user, item_id=item, order_id=f"ord_{user}_{item}",
                              amount=20.0))
            text = pool[bool(u % 2)].pop()
            rating = int(rng.integers(4, 6)) if item == "i1" else int(rng.integers(1, 3))
            rows.append(event(f"r_{user}_{item}", t + timedelta(days=3), "review", user, item_id=item,
                              text=text, rating=rating, order_id=f"ord_{user}_{item}"))
    for u in range(9):
        user = f"new{u}"
        t = T0 + timedelta(days=20, hours=u)
        rows.append(event(f"s_{user}", t - timedelta(hours=2), "signup", user))
        eid = f"r_{user}"
        rows.append(event(eid, t, "review", user, item_id="i2", rating=5,
                          text="Best kettle ever!!! Highly recommend!!! Five stars!!!"))
        labels.append({"entity_kind": "event", "entity_id": eid, "label": 1, "scenario": "fake_review",
                       "labeled_at": t + timedelta(days=2), "source": "test"})
    chats = [
        ("Hi, where is my order? It has not arrived yet.", 0),
        ("Is this jacket available in blue?", 0),
        ("I never received my package. Tracking says delivered but nothing arrived. I want a full refund.", 1),
        ("我没有收到包裹，物流显示已签收但是我没收到，要求全额退款。", 1),
        ("可以修改订单的收货地址吗？", 0),
        ("Package not received!! Says delivered but it's not here. Refund me now.", 1),
        ("这个耳机有保修吗？", 0),
        ("How do I return this lamp? It doesn't fit my desk.", 0),
    ]
    for k, (text, lab) in enumerate(chats * 2):
        eid = f"c{k}"
        t = T0 + timedelta(days=5 + k)
        rows.append(event(eid, t, "chat", f"old{k}", text=text))
        if lab:
            labels.append({"entity_kind": "event", "entity_id": eid, "label": 1, "scenario": "refund_abuse",
                           "labeled_at": t + timedelta(days=1), "source": "test"})
    schema = {"event_id": pl.Utf8, "ts": pl.Datetime("us"), "type": pl.Utf8, "user_id": pl.Utf8,
              "item_id": pl.Utf8, "order_id": pl.Utf8, "text": pl.Utf8, "rating": pl.Int32, "amount": pl.Float64}
    events = pl.DataFrame([{k: r.get(k) for k in schema} for r in rows], schema=schema).sort("ts", "event_id")
    return events, pl.DataFrame(labels)


@pytest.fixture
def shop() -> tuple[pl.DataFrame, pl.DataFrame]:
    return make_shop_events()
