"""Review, chat and search text in English and Chinese.

Genuine reviews are assembled from openers, aspect remarks and closers with category nouns and
varied wording, so no two look alike; paid, brushing and attack reviews come from their own narrow,
repetitive pools, as real review farms do. Customer-service chats follow common intents.
"""

from __future__ import annotations

import numpy as np

# English / Chinese nouns per category (same order as catalog.CATEGORIES).
NOUNS_EN: tuple[tuple[str, ...], ...] = (
    ("headphones", "speaker", "charger", "smartwatch", "camera", "power bank"),
    ("phone", "phone case", "smartphone", "screen protector"),
    ("laptop", "keyboard", "monitor", "mouse", "tablet"),
    ("dress", "jacket", "t-shirt", "jeans", "sweater", "coat"),
    ("sneakers", "boots", "sandals", "running shoes"),
    ("lipstick", "moisturizer", "serum", "sunscreen", "perfume"),
    ("pillow", "lamp", "blanket", "pan", "storage box", "kettle"),
    ("coffee", "tea", "snacks", "rice", "olive oil", "nuts"),
    ("novel", "cookbook", "notebook", "textbook"),
    ("lego set", "puzzle", "doll", "toy car", "board game"),
    ("yoga mat", "dumbbells", "tent", "bike helmet", "water bottle"),
    ("necklace", "ring", "bracelet", "earrings", "watch"),
    ("gift card", "voucher", "e-card"),
)
NOUNS_ZH: tuple[tuple[str, ...], ...] = (
    ("耳机", "音箱", "充电器", "智能手表", "相机", "充电宝"),
    ("手机", "手机壳", "钢化膜"),
    ("笔记本电脑", "键盘", "显示器", "鼠标", "平板"),
    ("连衣裙", "外套", "T恤", "牛仔裤", "毛衣"),
    ("运动鞋", "靴子", "凉鞋", "跑鞋"),
    ("口红", "面霜", "精华", "防晒霜", "香水"),
    ("枕头", "台灯", "毯子", "锅", "收纳盒", "水壶"),
    ("咖啡", "茶叶", "零食", "大米", "橄榄油", "坚果"),
    ("小说", "菜谱", "笔记本", "教材"),
    ("积木", "拼图", "娃娃", "玩具车", "桌游"),
    ("瑜伽垫", "哑铃", "帐篷", "头盔", "水杯"),
    ("项链", "戒指", "手链", "耳环", "手表"),
    ("礼品卡", "代金券", "电子卡"),
)

_EN_POS_OPEN = (
    "Really happy with this {n}.",
    "Great {n}, exactly as described.",
    "Love the {n}!",
    "The {n} is better than I expected.",
    "Second time buying this {n}.",
    "Solid {n} for the price.",
    "Bought the {n} as a gift and they loved it.",
    "Very nice {n}.",
    "This {n} does the job well.",
)
_EN_NEU_OPEN = (
    "The {n} is okay.",
    "Decent {n}, nothing special.",
    "The {n} is fine for daily use.",
    "Mixed feelings about this {n}.",
    "Average {n}.",
    "It's an alright {n}.",
)
_EN_NEG_OPEN = (
    "Disappointed with the {n}.",
    "The {n} stopped working after a week.",
    "Not worth it, this {n}.",
    "The {n} looks nothing like the photos.",
    "Poor quality {n}.",
    "Would not buy this {n} again.",
)
_EN_ASPECT_POS = (
    "Delivery was {fast}.",
    "Packaging was neat.",
    "Quality feels {good}.",
    "Fits {well}.",
    "Battery lasts {long}.",
    "Colour is true to the pictures.",
    "Seller answered my questions quickly.",
    "Easy to set up.",
    "Good value for money.",
    "Material is {good}.",
)
_EN_ASPECT_NEG = (
    "Delivery took {slow}.",
    "The box arrived damaged.",
    "Quality is {bad}.",
    "Size runs small.",
    "Customer service never replied.",
    "It smells of plastic.",
    "Missing parts in the box.",
    "Much cheaper elsewhere.",
)
_EN_CLOSE_POS = (
    "Recommended.",
    "Will buy again.",
    "Five stars from me.",
    "",
    "",
    "Thanks!",
    "Happy customer.",
)
_EN_CLOSE_NEU = ("", "It works, I guess.", "Might return it.", "Okay for the money.")
_EN_CLOSE_NEG = ("Avoid.", "Returning it.", "Very disappointed.", "", "Not recommended.")
_EN_SLOTS = {
    "fast": ("fast", "quick", "super fast", "faster than promised", "two days"),
    "good": ("good", "great", "premium", "sturdy", "excellent"),
    "well": ("well", "perfectly", "as expected", "nicely"),
    "long": ("long", "all day", "for days"),
    "slow": ("forever", "two weeks", "much longer than promised", "ages"),
    "bad": ("bad", "terrible", "cheap", "flimsy"),
}
_ZH_POS_OPEN = (
    "这个{n}很满意。",
    "{n}质量很好，和描述一致。",
    "非常喜欢这款{n}！",
    "{n}比预期的好。",
    "第二次买这个{n}了。",
    "{n}性价比很高。",
    "买来送人的{n}，对方很喜欢。",
    "{n}很不错。",
)
_ZH_NEU_OPEN = ("{n}还行吧。", "{n}一般般，没什么特别的。", "{n}日常用够了。", "这个{n}中规中矩。")
_ZH_NEG_OPEN = (
    "{n}很失望。",
    "{n}用了一周就坏了。",
    "{n}和图片完全不一样。",
    "{n}质量太差了。",
    "不会再买这个{n}了。",
)
_ZH_ASPECT_POS = (
    "物流{fast}。",
    "包装很用心。",
    "做工{good}。",
    "尺码合适。",
    "续航{long}。",
    "颜色和图片一样。",
    "客服回复很及时。",
    "安装很简单。",
    "物超所值。",
)
_ZH_ASPECT_NEG = (
    "物流{slow}。",
    "收到时盒子破了。",
    "做工{bad}。",
    "尺码偏小。",
    "客服不回消息。",
    "有股塑料味。",
    "少了配件。",
    "别家更便宜。",
)
_ZH_CLOSE_POS = ("推荐购买。", "会回购的。", "五星好评。", "", "", "谢谢卖家！")
_ZH_CLOSE_NEU = ("", "凑合用吧。", "考虑退货。")
_ZH_CLOSE_NEG = ("大家别买。", "已申请退货。", "非常失望。", "")
_ZH_SLOTS = {
    "fast": ("很快", "超快", "比承诺的快", "两天就到了"),
    "good": ("不错", "很好", "精致", "结实"),
    "long": ("很久", "一整天", "好几天"),
    "slow": ("太慢了", "等了两周", "比承诺的慢很多"),
    "bad": ("很差", "粗糙", "廉价"),
}

# Review farms reuse a handful of lines with tiny variations.
_PAID_EN = (
    "Best {n} ever!!! Highly recommend!!!",
    "Amazing {n}, 5 stars, must buy!",
    "Perfect {n}! Super fast shipping! Great seller!",
    "Excellent {n}!!! Love it love it!",
    "Top quality {n}, recommend to everyone!",
)
_PAID_ZH = (
    "最好的{n}！！！强烈推荐！！！",
    "{n}太棒了，五星，必买！",
    "完美的{n}！发货超快！好卖家！",
    "{n}质量一流，推荐给大家！",
)
_ATTACK_EN = (
    "Fake {n}! Scam seller, do not buy!!!",
    "Terrible {n}, broke on day one. SCAM.",
    "Worst {n} ever, total waste of money!!!",
    "Counterfeit {n}. Reported. Avoid this shop!",
)
_ATTACK_ZH = (
    "假货{n}！骗子商家，千万别买！！！",
    "{n}第一天就坏了，骗人的。",
    "最差的{n}，浪费钱！！！",
    "{n}是假的，已举报，大家避雷！",
)
_BRUSH_EN = (
    "Good {n}. Fast delivery. 5 stars.",
    "Good product, good seller, 5 stars.",
    "Very good {n}, recommend.",
)
_BRUSH_ZH = ("{n}很好，发货快，五星。", "好评，好卖家，五星。", "{n}非常好，推荐。")

_CHAT = {
    "where": (
        (
            "Hi, where is my order? It has not arrived yet.",
            "Can you check the status of my parcel?",
            "My package is late, any update?",
            "Tracking has not moved for days, please help.",
        ),
        (
            "你好，我的订单到哪了？还没收到。",
            "帮我查一下物流好吗？",
            "快递延迟了，有更新吗？",
            "物流好几天没动了，请帮忙看看。",
        ),
    ),
    "product": (
        (
            "Is this {n} in stock in another colour?",
            "Does the {n} come with a warranty?",
            "What size should I pick for the {n}?",
            "Is the {n} original?",
        ),
        ("这个{n}还有别的颜色吗？", "{n}有保修吗？", "{n}选什么尺码合适？", "{n}是正品吗？"),
    ),
    "return": (
        (
            "I want to return the {n}, it doesn't fit.",
            "How do I return this {n}?",
            "The {n} arrived damaged, I'd like a replacement.",
        ),
        ("{n}不合适，我想退货。", "这个{n}怎么退货？", "{n}收到时坏了，想换一个。"),
    ),
    "address": (
        ("Can I change the delivery address of my order?", "Please update my shipping address."),
        ("可以修改订单的收货地址吗？", "请帮我更新收货地址。"),
    ),
    "unauthorized": (
        (
            "I did not place this order! Someone got into my account.",
            "There are orders on my account that I never made, please cancel them.",
            "My password was changed and I can't log in. These orders are not mine.",
        ),
        (
            "这个订单不是我下的！我的账号被盗了。",
            "我的账户里有我没下过的订单，请帮我取消。",
            "我的密码被改了，登录不了，这些订单不是我的。",
        ),
    ),
}
# Scripted refund claims: the same story every time, whatever the tracking says.
_NOT_RECEIVED = (
    (
        "I never received my package. Tracking says delivered but nothing arrived. I want a full refund.",
        "Package not received!! Says delivered but it's not here. Refund me now.",
        "Nothing was delivered to me. I need a refund immediately or I will dispute the charge.",
        "The box was empty when it arrived. Refund please.",
    ),
    (
        "我没有收到包裹，物流显示已签收但是我没收到，要求全额退款。",
        "包裹没收到！显示签收了但根本没有，马上退款。",
        "什么都没送到，立即退款，不然我就申请拒付。",
        "收到的是空盒子，请退款。",
    ),
)

_QUERY_MOD_EN = ("", "", "cheap ", "best ", "new ", "wireless ", "black ", "2024 ", "sale ", "mini ")
_QUERY_MOD_ZH = ("", "", "便宜", "新款", "正品", "特价", "黑色", "无线", "2024")


def _pick(rng: np.random.Generator, pool: tuple[str, ...]) -> str:
    return pool[int(rng.integers(len(pool)))]


def _fill(rng: np.random.Generator, template: str, slots: dict[str, tuple[str, ...]], noun: str) -> str:
    kw = {k: _pick(rng, v) for k, v in slots.items() if "{" + k + "}" in template}
    return template.format(n=noun, **kw)


def noun(rng: np.random.Generator, category: int, lang: int) -> str:
    return _pick(rng, (NOUNS_ZH if lang else NOUNS_EN)[category])


def genuine_review(rng: np.random.Generator, rating: int, category: int, lang: int) -> str:
    """A customer's own words: opener, one or two aspects, maybe a closer."""
    n = noun(rng, category, lang)
    if lang:
        opens, slots = (_ZH_NEG_OPEN, _ZH_NEU_OPEN, _ZH_POS_OPEN), _ZH_SLOTS
        asp_pos, asp_neg, closes = (
            _ZH_ASPECT_POS,
            _ZH_ASPECT_NEG,
            (_ZH_CLOSE_NEG, _ZH_CLOSE_NEU, _ZH_CLOSE_POS),
        )
    else:
        opens, slots = (_EN_NEG_OPEN, _EN_NEU_OPEN, _EN_POS_OPEN), _EN_SLOTS
        asp_pos, asp_neg, closes = (
            _EN_ASPECT_POS,
            _EN_ASPECT_NEG,
            (_EN_CLOSE_NEG, _EN_CLOSE_NEU, _EN_CLOSE_POS),
        )
    tone = 0 if rating <= 2 else (1 if rating == 3 else 2)
    parts = [_fill(rng, _pick(rng, opens[tone]), slots, n)]
    for _ in range(int(rng.integers(0, 3))):
        pool = asp_pos if (tone == 2 or (tone == 1 and rng.random() < 0.5)) else asp_neg
        parts.append(_fill(rng, _pick(rng, pool), slots, n))
    close = _pick(rng, closes[tone])
    if close:
        parts.append(close)
    return ("" if lang else " ").join(dict.fromkeys(parts))


def farm_review(rng: np.random.Generator, kind: str, category: int, lang: int) -> str:
    """Paid praise (``paid``), brushing boilerplate (``brushing``) or a malicious attack (``attack``)."""
    pools = {
        "paid": (_PAID_EN, _PAID_ZH),
        "brushing": (_BRUSH_EN, _BRUSH_ZH),
        "attack": (_ATTACK_EN, _ATTACK_ZH),
    }
    text = _pick(rng, pools[kind][lang]).format(n=noun(rng, category, lang))
    return text


def chat(rng: np.random.Generator, intent: str, category: int, lang: int) -> str:
    if intent == "not_received":
        return _pick(rng, _NOT_RECEIVED[lang])
    return _pick(rng, _CHAT[intent][lang]).format(n=noun(rng, category, lang))


def search_query_pool(lang: int) -> list[list[str]]:
    """Every plausible query per category (modifier + noun), to draw from by index."""
    nouns, mods = (NOUNS_ZH, _QUERY_MOD_ZH) if lang else (NOUNS_EN, _QUERY_MOD_EN)
    return [[m + n for m in dict.fromkeys(mods) for n in cat] for cat in nouns]


def search_queries(rng: np.random.Generator, category: np.ndarray, lang: np.ndarray) -> np.ndarray:
    """Vectorised: one query per (category, language) pair."""
    out = np.empty(category.size, dtype=object)
    for lg in (0, 1):
        pools = search_query_pool(lg)
        flat = np.array([q for p in pools for q in p], dtype=object)
        sizes = np.array([len(p) for p in pools])
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        m = lang == lg
        c = category[m]
        out[m] = flat[offsets[c] + (rng.random(c.size) * sizes[c]).astype(np.int64)]
    return out
