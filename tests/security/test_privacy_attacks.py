"""D2, D3: pseudonymisation that could be undone, and raw identifiers stored by default."""

from __future__ import annotations

import hashlib
import io
import json
import stat
from pathlib import Path

from tests.security.conftest import auth, event, running

from shopguard.events.privacy import Pseudonymiser, key_file_for, pseudonymiser_for_store
from shopguard.events.schema import derive_event_id, parse_event

KEY = "a-secret-key-of-32-characters!!!"


def _stored(client, eid: str) -> dict:  # type: ignore[no-untyped-def]
    state = client.app.state
    state.engine.flush()
    return state.store.query("SELECT * FROM events WHERE event_id = ?", [eid]).row(0, named=True)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_d2_event_ids_are_derived_from_pseudonymised_values_only(tmp_path: Path) -> None:
    payload = event(None, type="login", status="success", ip="203.0.113.77")
    for k in ("amount", "payment_instrument"):
        payload.pop(k)
    with running(tmp_path, pseudonym_key=KEY) as (c, keys):
        r = c.post("/v1/events", json=payload, headers=auth(keys["ingest"]))
        assert r.status_code == 200, r.text
        eid = r.json()["event_id"]
        row = _stored(c, eid)
        assert row["ip"].startswith("p_")
    # The attack: hash candidate IPs with the (public, unkeyed) id recipe until one matches the stored id.
    raw = parse_event(payload).to_record()
    candidates = [f"203.0.113.{i}" for i in range(256)]
    assert all(derive_event_id({**raw, "ip": ip}) != eid for ip in candidates)
    # ...and the id is the one ingestion gives the same event under the same key.
    from shopguard.events.ingest import ingest_jsonl
    from shopguard.store import EventStore

    with EventStore(tmp_path / "ingest.duckdb") as store:
        ingest_jsonl(io.BytesIO((json.dumps(payload) + "\n").encode()), store, pseudonymiser=Pseudonymiser(KEY))
        ids = store.query("SELECT event_id FROM events")["event_id"].to_list()
    assert ids == [eid]


def test_d2_a_client_supplied_event_id_is_kept(tmp_path: Path) -> None:
    with running(tmp_path, pseudonym_key=KEY) as (c, keys):
        r = c.post("/v1/events", json=event("mine-1"), headers=auth(keys["ingest"]))
        assert r.json()["event_id"] == "mine-1"


def test_d3_safe_by_default_key_file_created_once_and_identifiers_hashed(tmp_path: Path) -> None:
    db = tmp_path / "shop.duckdb"
    with running(tmp_path) as (c, keys):
        r = c.post("/v1/events", json=event("e1", ip="198.51.100.9"), headers=auth(keys["ingest"]))
        assert r.status_code == 200
        row = _stored(c, "e1")
        for f in ("ip", "device_id", "payment_instrument"):
            assert row[f].startswith("p_"), (f, row[f])
    kf = key_file_for(db)
    assert kf.exists() and _mode(kf) == 0o600
    assert _mode(db) == 0o600
    key = kf.read_text().strip()
    assert row["ip"] == Pseudonymiser(key).pseudonym("198.51.100.9")
    # Said once: a second start finds the file and creates nothing.
    p, note = pseudonymiser_for_store(db)
    assert note is None and p is not None and p.key_id == Pseudonymiser(key).key_id
    assert kf.read_text().strip() == key


def test_d3_first_use_says_so(tmp_path: Path) -> None:
    p, note = pseudonymiser_for_store(tmp_path / "new" / "shop.duckdb")
    assert p is not None and note and "pseudonym key" in note and "0600" in note
    assert pseudonymiser_for_store(tmp_path / "new" / "shop.duckdb")[1] is None


def test_d3_allow_raw_identifiers_is_an_explicit_opt_out(tmp_path: Path) -> None:
    with running(tmp_path, allow_raw_identifiers=True) as (c, keys):
        c.post("/v1/events", json=event("e1", ip="198.51.100.9"), headers=auth(keys["ingest"]))
        assert _stored(c, "e1")["ip"] == "198.51.100.9"
    assert not key_file_for(tmp_path / "shop.duckdb").exists()


def test_d3_deny_lists_of_raw_values_still_match_pseudonymised_events(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\nlists:\n  deny: {ips: [192.0.2.66], devices: [dev_evil]}\n")
    with running(tmp_path, rules=rules) as (c, keys):
        r = c.post("/v1/events", json=event("e1", ip="192.0.2.66"), headers=auth(keys["ingest"]))
        assert r.json()["action"] == "block"
        r = c.post("/v1/events", json=event("e2", user="u2", device_id="dev_evil", ip="10.1.1.1"),
                   headers=auth(keys["ingest"]))
        assert r.json()["action"] == "block"
        r = c.post("/v1/events", json=event("e3", user="u3", ip="10.1.1.2"), headers=auth(keys["ingest"]))
        assert r.json()["action"] != "block"


def test_d3_unkeyed_hash_is_not_what_is_stored(tmp_path: Path) -> None:
    # Guard against a regression to an unkeyed digest of the raw value.
    with running(tmp_path) as (c, keys):
        c.post("/v1/events", json=event("e1", ip="198.51.100.10"), headers=auth(keys["ingest"]))
        ip = _stored(c, "e1")["ip"]
    assert hashlib.sha256(b"198.51.100.10").hexdigest()[:24] not in ip
