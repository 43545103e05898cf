"""The user population: personas with their rhythm, and each user's devices, IPs, place and cards.

A persona sets how often someone shops and how a session unfolds (browse depth, cart and order
propensity, coupon and return habits). Households share a device, a home IP and sometimes a card, so
shared identifiers alone do not mean fraud.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shopguard.events.simulate.catalog import CATEGORIES


@dataclass(frozen=True)
class Persona:
    name: str
    share: float
    sessions_per_day: float
    views_per_session: float
    cart_rate: float  # sessions with an add-to-cart
    order_rate: float  # carts that become orders
    coupon_rate: float  # orders paid with a coupon
    return_rate: float  # delivered orders returned
    review_rate: float  # delivered orders reviewed
    chat_rate: float  # orders with a customer-service chat
    quantity_mean: float


PERSONAS: tuple[Persona, ...] = (
    Persona("browser", 0.30, 0.45, 9.0, 0.10, 0.25, 0.10, 0.03, 0.10, 0.04, 1.05),
    Persona("regular_buyer", 0.30, 0.35, 5.0, 0.35, 0.60, 0.15, 0.04, 0.25, 0.06, 1.2),
    Persona("bargain_hunter", 0.17, 0.60, 11.0, 0.25, 0.45, 0.60, 0.06, 0.15, 0.08, 1.3),
    Persona("heavy_buyer", 0.08, 1.20, 6.0, 0.45, 0.70, 0.20, 0.05, 0.30, 0.07, 1.6),
    Persona("dormant", 0.15, 0.03, 3.0, 0.20, 0.50, 0.10, 0.03, 0.10, 0.05, 1.0),
)
PERSONA_NAMES: tuple[str, ...] = tuple(p.name for p in PERSONAS)

# geo code, share of users, main language (1 = zh), /16 prefixes for its IPs
GEOS: tuple[tuple[str, float, int, tuple[int, ...]], ...] = (
    ("CN-SH", 0.14, 1, (0x7A00, 0x7A01, 0xB4A0)),
    ("CN-BJ", 0.12, 1, (0x7B70, 0xDA1E)),
    ("CN-GD", 0.12, 1, (0x710A, 0x7110, 0xB710)),
    ("CN-ZJ", 0.07, 1, (0x7306, 0xB65C)),
    ("CN-SC", 0.05, 1, (0x7601, 0xAF99)),
    ("HK", 0.03, 1, (0x6EA8, 0xCB5A)),
    ("US-CA", 0.09, 0, (0x4C67, 0x6210)),
    ("US-NY", 0.07, 0, (0x4811, 0x6C1E)),
    ("US-TX", 0.05, 0, (0x4B34, 0x6328)),
    ("GB-LND", 0.05, 0, (0x5101, 0x5650)),
    ("DE-BE", 0.04, 0, (0x5D80, 0x5C4B)),
    ("SG", 0.05, 0, (0x7620, 0xAF9C)),
    ("JP-TK", 0.04, 0, (0x7A64, 0x7E14)),
    ("AU-SYD", 0.03, 0, (0x7C94, 0x3A6C)),
    ("BR-SP", 0.02, 0, (0xB10C, 0xBD28)),
    ("VN-HN", 0.015, 0, (0x7105, 0xDE3C)),
    ("RU-MOW", 0.01, 0, (0x5F18, 0xB28C)),
    ("NG-LA", 0.005, 0, (0x6637, 0xC5D2)),
)
GEO_NAMES: tuple[str, ...] = tuple(g[0] for g in GEOS)
# Places account takeovers and card testers tend to come from (legit users live there too).
RISKY_GEOS: tuple[int, ...] = tuple(GEO_NAMES.index(g) for g in ("BR-SP", "VN-HN", "RU-MOW", "NG-LA"))
# Hosting providers' ranges: bots and proxies use them, and so do a few ordinary users on VPNs.
DATACENTER_PREFIXES: tuple[int, ...] = (0x2D4C, 0x6817, 0xB96B, 0x8F6E, 0xA7AC, 0x33D2)
DATACENTER_GEOS: tuple[int, ...] = tuple(GEO_NAMES.index(g) for g in ("US-CA", "DE-BE", "SG"))

CHANNELS: tuple[str, ...] = ("app", "web", "mini_program")
EMAIL_DOMAINS: tuple[str, ...] = (
    "gmail.com",
    "qq.com",
    "163.com",
    "outlook.com",
    "yahoo.com",
    "icloud.com",
    "126.com",
    "hotmail.com",
    "sina.com",
    "proton.me",
)
FIRST_NAMES: tuple[str, ...] = (
    "wei",
    "fang",
    "li",
    "na",
    "jun",
    "min",
    "lei",
    "yan",
    "jie",
    "tao",
    "xiu",
    "hui",
    "chen",
    "ying",
    "qiang",
    "emma",
    "liam",
    "olivia",
    "noah",
    "ava",
    "lucas",
    "mia",
    "ethan",
    "sofia",
    "james",
    "amelia",
    "ben",
    "chloe",
    "daniel",
    "grace",
    "hiro",
    "yuki",
    "anna",
    "max",
    "lena",
    "ivan",
    "tom",
    "kate",
    "sam",
    "zoe",
)


def geo_ips(rng: np.random.Generator, geo: np.ndarray) -> np.ndarray:
    """A random IPv4 (as an integer) inside one of each geo's prefixes."""
    n_pref = np.array([len(g[3]) for g in GEOS])
    pref_table = np.zeros((len(GEOS), n_pref.max()), dtype=np.int64)
    for i, g in enumerate(GEOS):
        pref_table[i, : len(g[3])] = g[3]
    pick = (rng.random(geo.size) * n_pref[geo]).astype(np.int64)
    return (pref_table[geo, pick] << 16) | rng.integers(256, 65_534, geo.size)


def datacenter_ips(rng: np.random.Generator, n: int, prefix: int | None = None) -> np.ndarray:
    """IPs from hosting ranges; with ``prefix`` all from one /16 (one provider's block)."""
    if prefix is None:
        prefix_arr = rng.choice(np.array(DATACENTER_PREFIXES), n)
    else:
        prefix_arr = np.full(n, prefix)
    return (prefix_arr.astype(np.int64) << 16) | rng.integers(256, 65_534, n)


@dataclass
class Population:
    """Per-user arrays (index = internal user key). ``signup_t`` is NaN for users older than the window."""

    persona: np.ndarray
    geo: np.ndarray
    lang: np.ndarray  # 0 = en, 1 = zh
    activity: np.ndarray  # personal multiplier of the persona's session rate
    fav_category: np.ndarray
    channel: np.ndarray
    device0: np.ndarray
    device1: np.ndarray  # -1 when the user has a single device
    home_ip: np.ndarray
    instrument0: np.ndarray
    instrument1: np.ndarray  # -1 when the user has a single card
    address: np.ndarray
    signup_t: np.ndarray

    @property
    def size(self) -> int:
        return int(self.persona.size)

    def attr(self, name: str) -> np.ndarray:
        return np.array([getattr(PERSONAS[p], name) for p in range(len(PERSONAS))])[self.persona]


def build_population(
    rng: np.random.Generator, n: int, horizon_s: float, new_user_share: float, alloc: dict[str, int]
) -> Population:
    """Draw ``n`` users; ``alloc`` counts keys already used per entity kind and is advanced."""
    shares = np.array([p.share for p in PERSONAS])
    persona = rng.choice(len(PERSONAS), n, p=shares / shares.sum())
    geo_w = np.array([g[1] for g in GEOS])
    geo = rng.choice(len(GEOS), n, p=geo_w / geo_w.sum())
    zh_geo = np.array([g[2] for g in GEOS])[geo]
    # Most people write in their place's language; a minority in the other one.
    lang = np.where(rng.random(n) < 0.88, zh_geo, 1 - zh_geo)
    activity = rng.lognormal(0.0, 0.5, n)
    cat_w = np.array([c[1] for c in CATEGORIES])
    fav = rng.choice(len(CATEGORIES), n, p=cat_w / cat_w.sum())
    channel = rng.choice(len(CHANNELS), n, p=[0.55, 0.3, 0.15])

    def take(kind: str, k: int) -> np.ndarray:
        start = alloc.get(kind, 0)
        alloc[kind] = start + k
        return np.arange(start, start + k)

    device0 = take("device", n)
    two_dev = rng.random(n) < 0.45
    device1 = np.full(n, -1, dtype=np.int64)
    device1[two_dev] = take("device", int(two_dev.sum()))
    home_ip = geo_ips(rng, geo)
    vpn = rng.random(n) < 0.02  # a few ordinary users browse through hosting/VPN ranges
    home_ip[vpn] = datacenter_ips(rng, int(vpn.sum()))
    instrument0 = take("instrument", n)
    two_cards = rng.random(n) < 0.4
    instrument1 = np.full(n, -1, dtype=np.int64)
    instrument1[two_cards] = take("instrument", int(two_cards.sum()))
    address = take("address", n)

    # Households: small groups living together share a device, the home IP, the address, sometimes a card.
    members = rng.permutation(n)[: int(0.12 * n)]
    size = 2 + (rng.random(members.size // 2) < 0.3)
    heads, pos = [], 0
    for s in size:
        if pos + s > members.size:
            break
        heads.append(members[pos : pos + s])
        pos += s
    for group in heads:
        head = group[0]
        rest = group[1:]
        device0[rest] = device0[head]
        home_ip[rest] = home_ip[head]
        geo[rest] = geo[head]
        address[rest] = address[head]
        if rng.random() < 0.3:
            instrument1[rest] = instrument0[head]

    signup_t = np.full(n, np.nan)
    new = rng.random(n) < new_user_share
    signup_t[new] = rng.random(int(new.sum())) * horizon_s * 0.92
    return Population(
        persona,
        geo,
        lang,
        activity,
        fav,
        channel,
        device0,
        device1,
        home_ip,
        instrument0,
        instrument1,
        address,
        signup_t,
    )
