"""Pseudonymisation of personal identifiers: keyed, deterministic, applied at ingestion on every path."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shopguard.errors import ConfigError
from shopguard.events.ingest import ingest_records, ingest_source
from shopguard.events.mapping import mapping_from_dict
from shopguard.events.privacy import PREFIX, Pseudonymiser
from shopguard.events.schema import PERSONAL_FIELDS
from shopguard.store import EventStore

KEY = "test-key-0123456789abcdef"


@pytest.fixture
def pseudo() -> Pseudonymiser:
    return Pseudonymiser(KEY)


def test_personal_fields_are_the_schema_ones() -> None:
    assert set(PERSONAL_FIELDS) == {"device_id", "ip", "payment_instrument", "address", "email", "phone"}


@given(st.text(min_size=1, max_size=40).filter(lambda s: s.strip()))
def test_pseudonyms_are_deterministic_keyed_and_hide_the_value(value: str) -> None:
    a, b = Pseudonymiser(KEY), Pseudonymiser(KEY + "-rotated")
    p = a.pseudonym(value)
    assert p == a.pseudonym(value) and p.startswith(PREFIX) and len(p) == len(PREFIX) + 24
    assert p != b.pseudonym(value)  # a new key gives new pseudonyms: old and new do not join
    assert value.strip() not in p[len(PREFIX):] or len(value.strip()) < 3


def test_emails_are_normalised_before_hashing(pseudo: Pseudonymiser) -> None:
    assert pseudo.pseudonym(" Alice@Example.com ", "email") == pseudo.pseudonym("alice@example.com", "email")
    assert pseudo.pseudonym("X", "device_id") != pseudo.pseudonym("x", "device_id")


def test_apply_record_touches_only_personal_fields(pseudo: Pseudonymiser) -> None:
    rec = {"user_id": "u1", "ip": "10.0.0.1", "email": None, "phone": "", "amount": 3.0}
    out = pseudo.apply_record(rec)
    assert out["user_id"] == "u1" and out["amount"] == 3.0
    assert out["ip"] == pseudo.pseudonym("10.0.0.1") and out["email"] is None and out["phone"] == ""
    assert rec["ip"] == "10.0.0.1"  # the input is not modified


@given(st.lists(st.one_of(st.none(), st.sampled_from(["1.1.1.1", "2.2.2.2", " 1.1.1.1", "", "dev-9"])), max_size=30))
def test_frame_and_record_paths_agree(values: list) -> None:
    p = Pseudonymiser(KEY)
    df = pl.DataFrame({"ip": values, "user_id": ["u"] * len(values)}, schema={"ip": pl.Utf8, "user_id": pl.Utf8})
    framed = p.apply_frame(df)["ip"].to_list()
    assert framed == [p.apply_record({"ip": v})["ip"] for v in values]


def test_short_or_missing_keys_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="too short"):
        Pseudonymiser("short")
    monkeypatch.delenv("MY_KEY", raising=False)
    assert Pseudonymiser.from_env("MY_KEY") is None
    with pytest.raises(ConfigError, match="MY_KEY"):
        Pseudonymiser.from_env("MY_KEY", required=True)
    monkeypatch.setenv("MY_KEY", KEY)
    assert Pseudonymiser.from_env("MY_KEY").key_id == Pseudonymiser(KEY).key_id  # type: ignore[union-attr]


def test_settings_key_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOPGUARD_PSEUDONYM_KEY", KEY)
    p = Pseudonymiser.from_settings()
    assert p is not None and p.key_id == Pseudonymiser(KEY).key_id


def test_batch_ingestion_stores_no_raw_identifier(tmp_path: Path, pseudo: Pseudonymiser) -> None:
    src = tmp_path / "signups.csv"
    src.write_text(
        "user,when,ip,mail,device\n"
        "u1,2024-01-01 10:00:00,10.0.0.1,a@x.com,dev-one\n"
        "u2,2024-01-01 11:00:00,10.0.0.1,B@x.com,dev-one\n"
        "u3,2024-01-01 12:00:00,10.0.0.2,,dev-two\n"
    )
    m = mapping_from_dict({"path": str(src), "event_type": "signup",
                           "columns": {"user_id": "user", "ts": "when", "ip": "ip", "email": "mail", "device_id": "device"}})
    with EventStore(tmp_path / "s.duckdb") as store:
        report = ingest_source(m, store, pseudonymiser=pseudo, rejects_path=tmp_path / "r.csv")
        ev = store.events().sort("user_id")
    assert report.pseudonymised and report.key_id == pseudo.key_id
    dump = ev.write_csv()
    for raw in ("10.0.0.1", "10.0.0.2", "a@x.com", "B@x.com", "dev-one", "dev-two"):
        assert raw not in dump
    # Links survive: u1 and u2 share an IP and a device.
    assert ev["ip"][0] == ev["ip"][1] != ev["ip"][2]
    assert ev["device_id"][0] == ev["device_id"][1] == pseudo.pseudonym("dev-one")
    assert ev["email"].to_list() == [pseudo.pseudonym("a@x.com", "email"), pseudo.pseudonym("b@x.com", "email"), None]
    assert ev["user_id"].to_list() == ["u1", "u2", "u3"]


def test_record_ingestion_pseudonymises_and_ids_do_not_hash_raw_values(tmp_path: Path, pseudo: Pseudonymiser) -> None:
    rec = {"type": "login", "ts": "2024-01-01T00:00:00Z", "user_id": "u1", "status": "success", "ip": "10.9.8.7",
           "attrs": {"k": 1}}
    with EventStore(":memory:") as plain, EventStore(":memory:") as keyed:
        ingest_records([rec], plain, rejects_path=tmp_path / "r.csv")
        ingest_records([rec], keyed, pseudonymiser=pseudo, rejects_path=tmp_path / "r.csv")
        a, b = plain.events().row(0, named=True), keyed.events().row(0, named=True)
        assert ingest_records([rec], keyed, pseudonymiser=pseudo, rejects_path=tmp_path / "r.csv").events_added == 0
    assert a["ip"] == "10.9.8.7" and b["ip"] == pseudo.pseudonym("10.9.8.7")
    assert a["event_id"] != b["event_id"]  # the id is derived from the pseudonymised record
    assert json.loads(b["attrs"]) == {"k": 1}
