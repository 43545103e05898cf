"""The shop's catalogue: categories with their price levels, merchants, items and Zipf popularity.

Prices are log-normal per category (a phone costs hundreds, a snack a few dollars); item popularity
follows a Zipf law inside each category, so a few items get most views, as on any real marketplace.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# name, share of traffic, median price, log-sd of price, typical carriers' promise (days)
CATEGORIES: tuple[tuple[str, float, float, float], ...] = (
    ("electronics", 0.10, 120.0, 0.9),
    ("phones", 0.06, 420.0, 0.5),
    ("computers", 0.04, 750.0, 0.5),
    ("fashion", 0.14, 35.0, 0.6),
    ("shoes", 0.07, 65.0, 0.5),
    ("beauty", 0.10, 22.0, 0.6),
    ("home", 0.11, 40.0, 0.8),
    ("grocery", 0.10, 9.0, 0.6),
    ("books", 0.06, 16.0, 0.4),
    ("toys", 0.06, 28.0, 0.7),
    ("sports", 0.07, 48.0, 0.8),
    ("jewelry", 0.04, 95.0, 1.0),
    ("gift_cards", 0.05, 50.0, 0.4),
)
CATEGORY_NAMES: tuple[str, ...] = tuple(c[0] for c in CATEGORIES)
HIGH_VALUE_CATEGORIES: tuple[int, ...] = tuple(
    CATEGORY_NAMES.index(c) for c in ("electronics", "phones", "computers", "jewelry", "gift_cards")
)

# carrier, promised days, how punctual (log-sd of transit time relative to the promise)
CARRIERS: tuple[tuple[str, float, float], ...] = (
    ("sf_express", 2.0, 0.25),
    ("jd_logistics", 1.5, 0.2),
    ("zto", 3.0, 0.3),
    ("yto", 3.0, 0.35),
    ("ups", 4.0, 0.25),
    ("fedex", 3.0, 0.25),
    ("dhl", 5.0, 0.3),
    ("usps", 5.0, 0.35),
)
CARRIER_NAMES: tuple[str, ...] = tuple(c[0] for c in CARRIERS)

ZIPF_EXPONENT = 1.1


@dataclass
class Catalog:
    """Merchants and items as parallel arrays (index = internal key)."""

    merchant_category: np.ndarray  # main category of each merchant
    merchant_carrier: np.ndarray  # carrier each merchant ships with
    merchant_size: np.ndarray  # relative share of its category's items
    item_category: np.ndarray
    item_merchant: np.ndarray
    item_price: np.ndarray  # base price at the start of the window
    item_quality: np.ndarray  # mean genuine rating, 1..5
    item_cdf_by_category: np.ndarray  # category index + within-category CDF, for one searchsorted
    item_order: np.ndarray  # items sorted by (category, popularity rank)
    category_cdf: np.ndarray

    @property
    def n_items(self) -> int:
        return int(self.item_category.size)

    @property
    def n_merchants(self) -> int:
        return int(self.merchant_category.size)

    def sample_items(self, rng: np.random.Generator, category: np.ndarray) -> np.ndarray:
        """One item per entry of ``category``, Zipf-popular within that category."""
        u = rng.random(category.size) * 0.999999
        pos = np.searchsorted(self.item_cdf_by_category, category + u, side="right")
        return self.item_order[np.minimum(pos, self.item_order.size - 1)]

    def sample_categories(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.searchsorted(self.category_cdf, rng.random(n) * self.category_cdf[-1], side="right")

    def items_of_merchant(self, merchant: int) -> np.ndarray:
        return np.flatnonzero(self.item_merchant == merchant)


def build_catalog(rng: np.random.Generator, n_merchants: int, n_items: int) -> Catalog:
    """Draw merchants and items; every category gets at least one merchant and a few items."""
    n_cat = len(CATEGORIES)
    shares = np.array([c[1] for c in CATEGORIES])
    shares = shares / shares.sum()

    merchant_category = np.concatenate([np.arange(n_cat), rng.choice(n_cat, n_merchants - n_cat, p=shares)])
    merchant_category = rng.permutation(merchant_category)
    merchant_carrier = rng.choice(len(CARRIERS), n_merchants, p=[0.2, 0.15, 0.15, 0.12, 0.1, 0.1, 0.1, 0.08])
    merchant_size = rng.pareto(1.3, n_merchants) + 1.0  # a few big sellers, many small ones

    item_category = np.concatenate(
        [np.repeat(np.arange(n_cat), 3), rng.choice(n_cat, n_items - 3 * n_cat, p=shares)]
    )
    item_category = np.sort(item_category)
    item_merchant = np.empty(n_items, dtype=np.int64)
    for c in range(n_cat):
        idx = np.flatnonzero(item_category == c)
        ms = np.flatnonzero(merchant_category == c)
        w = merchant_size[ms] / merchant_size[ms].sum()
        item_merchant[idx] = rng.choice(ms, idx.size, p=w)

    med = np.array([c[2] for c in CATEGORIES])
    sd = np.array([c[3] for c in CATEGORIES])
    item_price = np.round(
        np.exp(np.log(med[item_category]) + sd[item_category] * rng.standard_normal(n_items)), 2
    )
    item_price = np.maximum(item_price, 0.99)
    item_quality = np.clip(rng.normal(4.2, 0.45, n_items), 2.0, 4.95)

    # Zipf within each category: a random rank per item, weight 1 / rank^s, CDF shifted by category index.
    order_parts, cdf_parts = [], []
    for c in range(n_cat):
        idx = rng.permutation(np.flatnonzero(item_category == c))
        w = 1.0 / np.arange(1, idx.size + 1) ** ZIPF_EXPONENT
        cdf = np.cumsum(w) / w.sum()
        order_parts.append(idx)
        cdf_parts.append(c + cdf)
    item_cdf = np.concatenate(cdf_parts)
    # The top of each category must equal c + 1 exactly so that c + u (u < 1) never spills over.
    item_order = np.concatenate(order_parts)
    return Catalog(
        merchant_category=merchant_category,
        merchant_carrier=merchant_carrier,
        merchant_size=merchant_size,
        item_category=item_category,
        item_merchant=item_merchant,
        item_price=item_price,
        item_quality=item_quality,
        item_cdf_by_category=item_cdf,
        item_order=item_order,
        category_cdf=np.cumsum(shares),
    )


def add_items(
    catalog: Catalog, category: np.ndarray, merchant: np.ndarray, price: np.ndarray, quality: np.ndarray
) -> np.ndarray:
    """Append items that are not part of normal browsing (e.g. limited drops); returns their keys."""
    start = catalog.n_items
    catalog.item_category = np.concatenate([catalog.item_category, category])
    catalog.item_merchant = np.concatenate([catalog.item_merchant, merchant])
    catalog.item_price = np.concatenate([catalog.item_price, price])
    catalog.item_quality = np.concatenate([catalog.item_quality, quality])
    return np.arange(start, catalog.n_items)
