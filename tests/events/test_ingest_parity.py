"""Batch validation applies exactly the rules of ``schema.parse_event``: same rows kept, same values."""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shopguard.errors import ValidationFailed
from shopguard.events.ingest import ingest_source
from shopguard.events.mapping import mapping_from_dict
from shopguard.events.schema import parse_event
from shopguard.store import EventStore

# Values chosen to hit every rule: types with different required fields, bad statuses, ranges, numbers
# that do not parse, non-finite numbers, times out of bounds, and empty cells (= missing in a CSV).
FIELDS = {
    "type": ["pay", "login", "review", "order", "add_to_cart", "shipment", "price_change", "bogus", ""],
    "ts": ["2024-05-01T10:00:00Z", "2024-05-01 10:00:00", "2024-05-01T12:00:00+02:00", "2024-05-01",
           "1985-01-01T00:00:00", "2150-01-01T00:00:00", "not-a-time", ""],
    "user_id": ["u1", "u2", ""],
    "item_id": ["i1", ""],
    "order_id": ["o1", ""],
    "merchant_id": ["m1", ""],
    "amount": ["12.5", "0", "-1", "1e10", "abc", "nan", "inf", "7", ""],
    "status": ["success", "failure", "delivered", "maybe", ""],
    "rating": ["1", "5", "0", "6", "x", ""],
    "quantity": ["1", "100001", "3", ""],
    "new_price": ["9.99", "-2", ""],
    "currency": ["EUR", "TOOLONGCODE", ""],
}
# Optional fields are mostly empty, so that a fair share of rows is valid and both paths are exercised.
OPTIONAL = {"rating", "quantity", "new_price", "currency", "order_id", "item_id"}
row_strategy = st.fixed_dictionaries({
    k: st.one_of(st.just(""), st.sampled_from(v)) if k in OPTIONAL else st.sampled_from(v) for k, v in FIELDS.items()
})
VALID = {"type": "pay", "ts": "2024-05-01T10:00:00Z", "user_id": "u1", "item_id": "", "order_id": "",
         "merchant_id": "m1", "amount": "12.5", "status": "success", "rating": "", "quantity": "3", "new_price": "",
         "currency": "EUR"}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(row_strategy, min_size=1, max_size=25))
@example([VALID, dict(VALID, amount="-1"), dict(VALID, type="review", rating="5"), dict(VALID, ts="1985-01-01")])
def test_batch_and_single_event_validation_agree(rows: list[dict[str, str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "events.csv"
        with open(src, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(FIELDS))
            w.writeheader()
            w.writerows(rows)
        mapping = mapping_from_dict({
            "path": str(src), "type_column": "type", "dedupe": "row",
            "columns": {k: k for k in FIELDS if k != "type"},
        })
        with EventStore(":memory:") as store:
            report = ingest_source(mapping, store, rejects_path=Path(tmp) / "rejects.csv")
            stored = store.events().sort("event_id")
    expected = []
    for row in rows:
        # An empty CSV cell is a missing value.
        try:
            expected.append(parse_event({k: v for k, v in row.items() if v != ""}))
        except ValidationFailed:
            continue
    assert report.events_added == len(expected)
    assert report.rows_rejected == len(rows) - len(expected)
    got = sorted((r["type"], r["ts"], r["amount"], r["rating"], r["status"]) for r in stored.iter_rows(named=True))
    want = sorted((e.type, e.ts, e.amount, e.rating, e.status) for e in expected)
    assert got == want
