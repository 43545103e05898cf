"""Batch ingestion: round trips per format, rejects, idempotency, multi-event rows, attrs, labels, time."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shopguard.events.ingest import ingest_jsonl, ingest_records, ingest_source, parse_times
from shopguard.events.mapping import SourceMapping, TimeSpec, mapping_from_dict
from shopguard.events.schema import to_utc_naive
from shopguard.store import EventStore

PAYMENTS = [
    {"tx": "1", "cust": "c1", "term": "t1", "amt": "12.50", "when": "2024-05-01 10:00:00", "fraud": "0", "channel_x": "web"},
    {"tx": "2", "cust": "c2", "term": "t1", "amt": "3", "when": "2024-05-01T11:30:00Z", "fraud": "1", "channel_x": "app"},
    {"tx": "3", "cust": "c1", "term": "t2", "amt": "99.99", "when": "2024-05-02", "fraud": "0", "channel_x": "web"},
]


def write_source(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows as CSV, Parquet or JSONL depending on the file extension."""
    if path.suffix == ".csv":
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif path.suffix == ".parquet":
        pl.DataFrame(rows).write_parquet(path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def payments_mapping(path: Path, **extra: Any) -> SourceMapping:
    spec: dict[str, Any] = {
        "path": str(path), "event_type": "pay",
        "columns": {"user_id": "cust", "merchant_id": "term", "amount": "amt", "ts": "when"},
        "constants": {"status": "success"},
        "label": {"column": "fraud", "positive": [1], "negative": [0], "scenario": "card_testing"},
    }
    spec.update(extra)
    return mapping_from_dict(spec)


@pytest.mark.parametrize("ext", [".csv", ".parquet", ".jsonl"])
def test_round_trip_each_format(tmp_path: Path, store: EventStore, ext: str) -> None:
    src = write_source(tmp_path / f"pay{ext}", PAYMENTS)
    report = ingest_source(payments_mapping(src, event_id={"column": "tx", "prefix": "p-"}), store,
                           rejects_path=tmp_path / "rej.csv")
    assert (report.rows_read, report.events_added, report.rows_rejected) == (3, 3, 0)
    ev = store.events()
    assert ev["event_id"].to_list() == ["p-1", "p-2", "p-3"]
    assert ev["amount"].to_list() == [12.5, 3.0, 99.99]
    assert ev["ts"].to_list() == [datetime(2024, 5, 1, 10), datetime(2024, 5, 1, 11, 30), datetime(2024, 5, 2)]
    assert set(ev["type"]) == {"pay"} and set(ev["status"]) == {"success"}
    labels = store.labels().sort("entity_id")
    assert labels["label"].to_list() == [0, 1, 0]
    assert labels["scenario"].to_list() == ["", "card_testing", ""]
    assert not (tmp_path / "rej.csv").exists()


def test_same_content_gives_same_ids_across_formats(tmp_path: Path) -> None:
    """Content-hash ids depend on the parsed values, not on the file format or on library printing."""
    ids = []
    for ext in (".csv", ".parquet", ".jsonl"):
        src = write_source(tmp_path / f"pay{ext}", PAYMENTS)
        with EventStore(":memory:") as mem:
            ingest_source(payments_mapping(src), mem, rejects_path=tmp_path / "r.csv")
            ids.append(sorted(mem.events()["event_id"].to_list()))
    assert ids[0] == ids[1] == ids[2]
    assert all(i.startswith("h") and len(i) == 25 for i in ids[0])


MALFORMED_CSV = """cust,term,amt,when,fraud
c1,t1,10,2024-05-01 10:00:00,0
c2,t1,abc,2024-05-01 10:01:00,0
c3,t1,5,not a time,0
c4,t1,7
c5,t1,-4,2024-05-01 10:03:00,1
,t1,8,2024-05-01 10:04:00,0
c7,t1,9,2024-05-01 10:05:00,0,extra
c8,t1,11,2024-05-01 10:06:00,7
c9,t2,12,2024-05-01 10:07:00,1
"""


def test_malformed_rows_go_to_rejects_and_good_rows_are_kept(tmp_path: Path, store: EventStore) -> None:
    src = tmp_path / "tx.csv"
    src.write_text(MALFORMED_CSV)
    rejects = tmp_path / "rejects.csv"
    report = ingest_source(payments_mapping(src), store, rejects_path=rejects)
    assert report.rows_read == 9
    assert report.events_added == 3  # c1, c9, and c8 whose label value is not listed (kept, unlabelled)
    got = {(int(r["row"]), r["field"]): r for r in csv.DictReader(open(rejects))}
    assert got[(2, "amount")]["reason"] == "not a number" and got[(2, "amount")]["value"] == "abc"
    assert got[(3, "ts")]["reason"].startswith("not a timestamp")
    assert got[(4, "row")]["reason"] == "malformed CSV row: expected 5 fields, got 3"
    assert got[(5, "amount")]["reason"] == "must be between 0.0 and 1000000000.0"
    assert got[(6, "user_id")]["reason"] == "required for 'pay' events"
    assert got[(7, "row")]["reason"] == "malformed CSV row: expected 5 fields, got 6"
    assert got[(8, "label")]["value"] == "7"
    assert report.rows_rejected == 6  # rows 2-7; row 8 only lost its label
    assert sorted(store.events()["user_id"].to_list()) == ["c1", "c8", "c9"]
    assert store.labels()["label"].sum() == 1  # c9 only: c5 was rejected, c8's label value is unknown


def test_reingest_adds_nothing(tmp_path: Path, store: EventStore) -> None:
    src = tmp_path / "tx.csv"
    src.write_text(MALFORMED_CSV)
    first = ingest_source(payments_mapping(src), store, rejects_path=tmp_path / "r.csv")
    events, labels = store.count_events(), store.labels().height
    again = ingest_source(payments_mapping(src), store, rejects_path=tmp_path / "r.csv")
    assert (again.events_added, again.labels_added) == (0, 0)
    assert again.duplicates_skipped == first.events_valid
    assert (store.count_events(), store.labels().height) == (events, labels)


def test_chunking_does_not_change_the_result(tmp_path: Path) -> None:
    rows = [{"cust": f"c{i % 7}", "term": "t", "amt": str(i), "when": f"2024-05-01 10:{i % 60:02d}:00",
             "fraud": str(int(i % 5 == 0))} for i in range(200)]
    rows[17]["amt"] = "x"
    src = write_source(tmp_path / "tx.csv", rows)
    results = []
    for chunk in (7, 1000):
        with EventStore(":memory:") as mem:
            rep = ingest_source(payments_mapping(src), mem, rejects_path=tmp_path / f"r{chunk}.csv", chunk_rows=chunk)
            results.append((rep.events_added, sorted(mem.events()["event_id"].to_list()),
                            (tmp_path / f"r{chunk}.csv").read_text()))
    assert results[0] == results[1]
    assert results[0][0] == 199 and "18,pay,amount,x,not a number" in results[0][2]


@pytest.mark.parametrize("block_bytes", [40, 100, 1 << 20])
def test_row_numbers_survive_small_csv_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block_bytes: int) -> None:
    """Malformed rows are skipped by the reader; the rows after them keep their true numbers."""
    import shopguard.events.ingest as ingest_mod

    monkeypatch.setattr(ingest_mod, "CSV_BLOCK_BYTES", block_bytes)
    src = tmp_path / "tx.csv"
    src.write_text(MALFORMED_CSV)
    rejects = tmp_path / "r.csv"
    with EventStore(":memory:") as mem:
        report = ingest_source(payments_mapping(src), mem, rejects_path=rejects, chunk_rows=2)
    assert report.rows_read == 9 and report.rows_rejected == 6
    rows = [(int(r["row"]), r["field"]) for r in csv.DictReader(open(rejects))]
    assert sorted(rows) == [(2, "amount"), (3, "ts"), (4, "row"), (5, "amount"), (6, "user_id"), (7, "row"),
                            (8, "label")]


def test_multi_event_rows_and_attrs(tmp_path: Path, store: EventStore) -> None:
    rows = [
        {"uid": "u1", "signup_time": "2015-02-24 22:55:49", "purchase_time": "2015-04-18 02:47:11", "value": "34",
         "browser": "Chrome", "age": "39", "class": "0"},
        {"uid": "u2", "signup_time": "2015-01-01 18:52:44", "purchase_time": "2015-01-01 18:52:45", "value": "15",
         "browser": "Opera", "age": "53", "class": "1"},
    ]
    src = write_source(tmp_path / "shop.csv", rows)
    m = mapping_from_dict({
        "path": str(src), "columns": {"user_id": "uid"}, "attrs": "*",
        "events": [{"event_type": "signup", "columns": {"ts": "signup_time"}},
                   {"event_type": "order", "columns": {"ts": "purchase_time", "amount": "value"}}],
        "label": {"column": "class", "event": "order", "scenario": "payment_fraud", "delay": "7d"},
    })
    report = ingest_source(m, store, rejects_path=tmp_path / "r.csv")
    assert report.events_added == 4
    ev = store.events()
    assert ev.group_by("type").len().sort("type").rows() == [("order", 2), ("signup", 2)]
    attrs = [json.loads(a) for a in ev["attrs"]]
    # "*" keeps the columns no event maps, never the label: a signup does not learn its later purchase.
    assert all(set(a) == {"browser", "age"} for a in attrs)
    lab = store.labels()
    assert lab.height == 2 and lab["label"].sum() == 1
    order = ev.filter(pl.col("type") == "order").join(lab, left_on="event_id", right_on="entity_id")
    assert (order["labeled_at"] - order["ts"]).to_list() == [timedelta(days=7)] * 2


def test_attrs_list_keeps_only_listed_columns(tmp_path: Path, store: EventStore) -> None:
    src = write_source(tmp_path / "pay.csv", PAYMENTS)
    ingest_source(payments_mapping(src, attrs=["channel_x"]), store, rejects_path=tmp_path / "r.csv")
    assert sorted(json.loads(a)["channel_x"] for a in store.events()["attrs"]) == ["app", "web", "web"]
    assert all(set(json.loads(a)) == {"channel_x"} for a in store.events()["attrs"])


def test_type_column_with_value_map_and_status_values(tmp_path: Path, store: EventStore) -> None:
    rows = [
        {"u": "u1", "t": "LOGIN_OK", "s": "S", "when": "2024-01-01T00:00:00"},
        {"u": "u1", "t": "LOGIN_FAIL", "s": "F", "when": "2024-01-01T00:01:00"},
        {"u": "u1", "t": "teleport", "s": "S", "when": "2024-01-01T00:02:00"},
        {"u": "u1", "t": "LOGIN_OK", "s": "?", "when": "2024-01-01T00:03:00"},
    ]
    src = write_source(tmp_path / "log.jsonl", rows)
    m = mapping_from_dict({
        "path": str(src), "type_column": "t", "types": {"LOGIN_OK": "login", "LOGIN_FAIL": "login"},
        "columns": {"user_id": "u", "status": "s", "ts": "when"},
        "values": {"status": {"S": "success", "F": "failure"}},
    })
    rejects = tmp_path / "r.jsonl"
    report = ingest_source(m, store, rejects_path=rejects)
    assert report.events_added == 2
    bad = [orjson.loads(line) for line in rejects.read_text().splitlines()]
    assert [(b["row"], b["field"]) for b in bad] == [(3, "type"), (4, "status")]
    assert bad[1]["reason"] == "must be one of success, failure for 'login'"


def test_labeled_at_column_and_user_labels(tmp_path: Path, store: EventStore) -> None:
    rows = [
        {"u": "u1", "amt": "5", "when": "2024-01-01 00:00:00", "bad": "no", "known": "2024-02-01 00:00:00"},
        {"u": "u1", "amt": "6", "when": "2024-01-02 00:00:00", "bad": "yes", "known": "2024-01-20 00:00:00"},
        {"u": "u2", "amt": "7", "when": "2024-01-03 00:00:00", "bad": "no", "known": "2024-01-04 00:00:00"},
    ]
    src = write_source(tmp_path / "o.parquet", rows)
    m = mapping_from_dict({
        "path": str(src), "event_type": "order", "columns": {"user_id": "u", "amount": "amt", "ts": "when"},
        "label": {"column": "bad", "positive": ["yes"], "negative": ["no"], "entity": "user",
                  "labeled_at": "known", "scenario": "account_takeover"},
    })
    ingest_source(m, store, rejects_path=tmp_path / "r.csv")
    lab = store.labels(entity_kind="user").sort("entity_id")
    # u1 has a positive and a negative row: one positive user label, known when the positive row says.
    assert lab.select("entity_id", "label", "scenario", "labeled_at").rows() == [
        ("u1", 1, "account_takeover", datetime(2024, 1, 20)),
        ("u2", 0, "", datetime(2024, 1, 4)),
    ]
    assert store.labels(known_before=datetime(2024, 1, 10)).height == 1


def test_dedupe_row_keeps_identical_rows_apart(tmp_path: Path) -> None:
    rows = [PAYMENTS[0], dict(PAYMENTS[0]), PAYMENTS[1]]
    src = write_source(tmp_path / "dup.csv", rows)
    counts = {}
    for mode in ("content", "row"):
        with EventStore(":memory:") as mem:
            rep = ingest_source(payments_mapping(src, dedupe=mode), mem, rejects_path=tmp_path / "r.csv")
            again = ingest_source(payments_mapping(src, dedupe=mode), mem, rejects_path=tmp_path / "r.csv")
            counts[mode] = (rep.events_added, rep.duplicates_skipped, again.events_added)
    assert counts == {"content": (2, 1, 0), "row": (3, 0, 0)}


@pytest.mark.parametrize(
    ("values", "spec", "expected"),
    [
        (["2024-05-01T10:00:00Z", "2024-05-01 12:00:00+02:00", "2024-05-01T10:00:00.250", "2024-05-01"],
         TimeSpec(), [datetime(2024, 5, 1, 10), datetime(2024, 5, 1, 10), datetime(2024, 5, 1, 10, 0, 0, 250000),
                      datetime(2024, 5, 1)]),
        (["1714557600", "1714557600.5"], TimeSpec(),
         [datetime(2024, 5, 1, 10), datetime(2024, 5, 1, 10, 0, 0, 500000)]),
        (["01/05/2024 12:00"], TimeSpec(format="%d/%m/%Y %H:%M", timezone="Europe/Berlin"),
         [datetime(2024, 5, 1, 10)]),
        (["2024-01-15 12:00:00"], TimeSpec(timezone="America/New_York"), [datetime(2024, 1, 15, 17)]),
        (["90", "3600"], TimeSpec(unit="s", origin=datetime(2018, 4, 1)),
         [datetime(2018, 4, 1, 0, 1, 30), datetime(2018, 4, 1, 1)]),
        (["2"], TimeSpec(unit="D", origin=datetime(2018, 4, 1)), [datetime(2018, 4, 3)]),
        (["1714557600000"], TimeSpec(unit="ms"), [datetime(2024, 5, 1, 10)]),
    ],
)
def test_parse_times(values: list[str], spec: TimeSpec, expected: list[datetime]) -> None:
    parsed, failed = parse_times(pl.Series("t", values), spec)
    assert parsed.to_list() == expected
    assert not failed.any()


def test_parse_times_native_and_integer_columns() -> None:
    ints = pl.Series("t", [0, 86_400], dtype=pl.Int64)
    parsed, _ = parse_times(ints, TimeSpec(unit="s", origin=datetime(2018, 4, 1)))
    assert parsed.to_list() == [datetime(2018, 4, 1), datetime(2018, 4, 2)]
    aware = pl.Series("t", [datetime(2024, 1, 1, 12)]).dt.replace_time_zone("Asia/Tokyo")
    assert parse_times(aware, TimeSpec())[0].to_list() == [datetime(2024, 1, 1, 3)]


def test_time_out_of_bounds_is_a_reject_not_a_crash(tmp_path: Path, store: EventStore) -> None:
    rows = [dict(PAYMENTS[0], when="1714557600000"), dict(PAYMENTS[1], when="1714557600")]
    src = write_source(tmp_path / "ms.csv", rows)
    rejects = tmp_path / "r.csv"
    report = ingest_source(payments_mapping(src), store, rejects_path=rejects)
    assert report.events_added == 1
    assert "timestamp outside 1990..2100" in rejects.read_text()


def test_ingest_records_validates_with_parse_event(tmp_path: Path, store: EventStore) -> None:
    records = [
        {"type": "login", "ts": "2024-01-01T00:00:00Z", "user_id": "u1", "status": "success"},
        {"type": "login", "ts": "2024-01-01T00:00:00Z", "user_id": "u1", "status": "maybe"},
        {"type": "review", "ts": "2024-01-01T00:00:00Z", "user_id": "u1", "rating": 9},
        {"type": "chat", "ts": "2024-01-01T00:00:00Z", "user_id": "u1", "text": "hi", "color": "red"},
    ]
    rejects = tmp_path / "r.csv"
    report = ingest_records(records, store, rejects_path=rejects)
    assert (report.rows_read, report.events_added, report.rows_rejected) == (4, 1, 3)
    rows = list(csv.DictReader(open(rejects)))
    assert [(r["row"], r["field"]) for r in rows] == [("2", "status"), ("3", "rating"), ("4", "color")]
    again = ingest_records(records, store)
    assert again.events_added == 0 and again.rejects_path is None
    assert [p["field"] for p in again.first_problems] == ["status", "rating", "color"]


def test_ingest_jsonl_lines_reports_bad_json(tmp_path: Path, store: EventStore) -> None:
    lines = [
        '{"type": "view", "ts": 1714557600, "user_id": "u1", "item_id": "i1"}\n',
        "\n",
        "{not json\n",
        "[1, 2]\n",
    ]
    rejects = tmp_path / "r.csv"
    report = ingest_jsonl(lines, store, rejects_path=rejects)
    assert (report.rows_read, report.events_added, report.rows_rejected) == (3, 1, 2)
    rows = list(csv.DictReader(open(rejects)))
    assert [r["row"] for r in rows] == ["3", "4"]
    assert rows[0]["reason"].startswith("not valid JSON") and "expected a JSON object" in rows[1]["reason"]
    assert store.events()["ts"].to_list() == [datetime(2024, 5, 1, 10)]


def test_default_rejects_file_sits_next_to_the_store(tmp_path: Path) -> None:
    src = tmp_path / "data" / "tx.csv"
    src.parent.mkdir()
    src.write_text(MALFORMED_CSV)
    with EventStore(tmp_path / "db" / "shop.duckdb") as st:
        report = ingest_source(payments_mapping(src, name="cards"), st)
    assert report.rejects_path == str((tmp_path / "db" / "cards.rejects.csv").resolve())
    assert Path(report.rejects_path).exists()


naive_times = st.datetimes(min_value=datetime(1990, 1, 2), max_value=datetime(2099, 12, 30))
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(naive_times, offsets, st.sampled_from(["T", " "]), st.booleans()), min_size=1, max_size=20))
def test_auto_time_parsing_agrees_with_to_utc_naive(items: list) -> None:
    texts = []
    for dt, tz, sep, as_z in items:
        if as_z:
            texts.append(dt.isoformat(sep=sep) + "Z")
        else:
            texts.append(dt.replace(tzinfo=UTC).astimezone(tz).isoformat(sep=sep))
    parsed, failed = parse_times(pl.Series("t", texts), TimeSpec())
    assert not failed.any()
    assert parsed.to_list() == [to_utc_naive(t.replace(" ", "T", 1)) for t in texts] == [i[0] for i in items]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=25), min_size=1, max_size=10))
def test_time_parsing_never_crashes_on_junk(texts: list[str]) -> None:
    parsed, failed = parse_times(pl.Series("t", texts, dtype=pl.Utf8), TimeSpec())
    assert parsed.len() == len(texts)
    # Whatever is not parsed and not empty is flagged, never silently dropped.
    assert ((parsed.is_null() & pl.Series([t.strip() != "" for t in texts])) == failed).all()
