"""examples/handbook.yaml on a slice of the shared Handbook parquet (skipped when ../shared is absent)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from shopguard.events.ingest import ingest_source
from shopguard.events.mapping import load_mapping
from shopguard.store import EventStore

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCENARIOS = {1: "high_amount", 2: "compromised_terminal", 3: "compromised_card"}


@pytest.fixture
def handbook_slice(shared_data: Path, tmp_path: Path) -> tuple[Path, pl.DataFrame]:
    """5,000 transactions with frauds of every scenario in them, written to a small parquet file."""
    src = shared_data / "card_transactions_handbook" / "transactions.parquet"
    if not src.exists():
        pytest.skip(f"{src} not found")
    table = pq.ParquetFile(src).read_row_group(0).slice(300_000, 5_000)
    out = tmp_path / "slice.parquet"
    pq.write_table(table, out)
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    return out, df


def test_handbook_mapping_points_at_shared_data(shared_data: Path) -> None:
    m = load_mapping(EXAMPLES / "handbook.yaml")
    assert m.resolved_path() == (shared_data / "card_transactions_handbook" / "transactions.parquet").resolve()


def test_handbook_slice_loads_every_row_with_its_label(handbook_slice: tuple[Path, pl.DataFrame],
                                                       store: EventStore) -> None:
    path, df = handbook_slice
    m = load_mapping(EXAMPLES / "handbook.yaml").model_copy(update={"path": path})
    report = ingest_source(m, store, chunk_rows=1_500)
    assert (report.rows_read, report.events_added, report.rows_rejected) == (5_000, 5_000, 0)
    assert report.labels_added == 5_000 and report.labels_positive == int(df["TX_FRAUD"].sum())

    ev = store.events()
    assert set(ev["event_id"]) == {f"hb-{i}" for i in df["TRANSACTION_ID"]}
    assert set(ev["type"]) == {"pay"} and set(ev["status"]) == {"success"}
    # The scenario is a label only: no attribute carries it (nor the fraud flag).
    assert set(ev["attrs"]) == {"{}"}
    assert not any("SCENARIO" in json.dumps(a) for a in ev["attrs"])

    joined = (df.with_columns(("hb-" + pl.col("TRANSACTION_ID").cast(pl.Utf8)).alias("event_id"))
              .join(store.labels(), left_on="event_id", right_on="entity_id"))
    assert joined.height == 5_000
    assert (joined["label"] == joined["TX_FRAUD"].cast(pl.Int32)).all()
    want = joined["TX_FRAUD_SCENARIO"].cast(pl.Int64).replace_strict({0: "", **SCENARIOS}, return_dtype=pl.Utf8)
    assert (joined["scenario"] == want).all()
    assert ((joined["labeled_at"] - joined["TX_DATETIME"]) == timedelta(days=7)).all()
    amounts = ev.join(joined.select("event_id", "TX_AMOUNT", "CUSTOMER_ID"), on="event_id")
    assert (amounts["amount"] == amounts["TX_AMOUNT"]).all()
    assert (amounts["user_id"] == amounts["CUSTOMER_ID"].cast(pl.Utf8)).all()

    again = ingest_source(m, store)
    assert (again.events_added, again.labels_added) == (0, 0)
