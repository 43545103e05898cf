"""Erasure of a user: nothing of them stays in any table, a tombstone (keyed hash) keeps them out of re-ingests."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from shopguard.errors import ConfigError, ValidationFailed
from shopguard.events.ingest import ingest_records, ingest_source
from shopguard.events.mapping import load_mapping
from shopguard.events.privacy import key_file_for
from shopguard.store import EventStore
from shopguard.store.erasure import ErasedUsers, erase_user, tombstone_hasher, tombstones
from shopguard.store.identifiers import store_pseudonymiser

REPO = Path(__file__).resolve().parents[2]
VICTIM = "u1004"  # a fraudulent order in examples/shop_orders.csv: event and order labels, a user label below


def scan(store: EventStore, needle: str) -> list[str]:
    """Every table.column whose text holds ``needle`` anywhere (a scan of the whole store)."""
    hits = []
    tables = store.query("SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'")
    for t in tables["table_name"].to_list():
        cols = store.query("SELECT column_name FROM information_schema.columns WHERE table_name = ?", [t])
        for c in cols["column_name"].to_list():
            n = store.query(f'SELECT count(*) AS n FROM "{t}" WHERE CAST("{c}" AS VARCHAR) LIKE ?', [f"%{needle}%"])
            if n["n"][0]:
                hits.append(f"{t}.{c}")
    return hits


def _fill(store: EventStore, pseudonymised: bool) -> tuple[object, dict[str, int]]:
    pseudo, _ = store_pseudonymiser(store, allow_raw=not pseudonymised)
    report = ingest_source(load_mapping(REPO / "examples" / "shop_orders.yaml"), store, pseudonymiser=pseudo,
                           rejects_path=Path(store.path).with_suffix(".rejects.csv"))
    store.append_labels([{"entity_kind": "user", "entity_id": VICTIM, "label": 1, "scenario": "payment_fraud",
                          "labeled_at": datetime(2025, 4, 1)}])
    eid = store.query("SELECT event_id FROM events WHERE user_id = ? AND type = 'order'", [VICTIM])["event_id"][0]
    store.append_decisions([{"event_id": eid, "decided_at": datetime(2025, 3, 20), "score": 0.9, "action": "block"}])
    store.execute("INSERT INTO cases (case_id, event_id, user_id, opened_at) VALUES (?, ?, ?, ?)",
                  [f"case_{eid}", eid, VICTIM, datetime(2025, 3, 20)])
    return pseudo, report.to_dict()


def _counts(store: EventStore) -> dict[str, int]:
    return {t: int(store.query(f"SELECT count(*) AS n FROM {t}")["n"][0]) for t in ("events", "labels", "decisions", "cases")}


@pytest.mark.parametrize("pseudonymised", [True, False])
def test_erase_removes_everything_and_reingest_leaves_the_user_out(tmp_path: Path, pseudonymised: bool) -> None:
    with EventStore(tmp_path / "s.duckdb") as store:
        pseudo, first = _fill(store, pseudonymised)
        before = _counts(store)
        other = store.query("SELECT * FROM events WHERE user_id <> ? ORDER BY event_id", [VICTIM])
        assert scan(store, VICTIM)
        if pseudonymised:
            assert scan(store, pseudo.pseudonym("DEV77224", "device_id"))  # type: ignore[attr-defined]

        res = erase_user(store, VICTIM, by="test")
        assert res.found and not res.already_erased and res.tombstone_id.startswith("t_")
        assert res.removed == {"events": 2, "labels": 2, "decisions": 1, "cases": 1}  # event + user labels
        assert scan(store, VICTIM) == []  # no table holds the raw id, the tombstone included
        if pseudonymised:  # nor the user's own pseudonymised device and IP (no other row shares them)
            for value, fld in (("DEV77224", "device_id"), ("84.15.35.145", "ip")):
                assert scan(store, pseudo.pseudonym(value, fld)) == []  # type: ignore[attr-defined]
        assert scan(store, "DEV77224") == [] and scan(store, "84.15.35.145") == []
        after = _counts(store)
        assert {k: before[k] - after[k] for k in before} == res.removed
        assert store.query("SELECT * FROM events ORDER BY event_id").equals(other)  # others untouched
        assert tombstones(store) == {res.tombstone_id}
        audit = store.query("SELECT * FROM erasure_audit")
        assert audit.height == 1 and audit["action"][0] == "user_erased" and audit["by_key"][0] == "test"
        assert audit["tombstone_id"][0] == res.tombstone_id
        # the tombstone key: the store's pseudonym key when it has one (never kept in the store), else a salt
        assert (store.setting("erasure_key") or "").startswith("pseudonym:" if pseudonymised else "salt")
        if pseudonymised:
            assert store.setting("erasure_salt") is None

        # re-ingesting the original file does not bring the user back; the report counts them as erased
        again = ingest_source(load_mapping(REPO / "examples" / "shop_orders.yaml"), store, pseudonymiser=pseudo,
                              rejects_path=tmp_path / "rejects2.csv")
        assert again.erased == 2 and again.events_added == 0
        assert again.rows_rejected == first["rows_rejected"]  # erased events are not rejects
        assert again.duplicates_skipped == first["events_valid"] - 2
        assert scan(store, VICTIM) == []
        # and so does the records path (JSONL, Python)
        rep = ingest_records([{"type": "login", "ts": "2025-04-02T10:00:00Z", "user_id": VICTIM, "status": "success"},
                              {"type": "login", "ts": "2025-04-02T10:00:00Z", "user_id": "u1000", "status": "success"}],
                             store, pseudonymiser=pseudo)
        assert rep.erased == 1 and rep.events_added == 1 and rep.rows_rejected == 0
        assert scan(store, VICTIM) == []

        # idempotent: a second erasure finds nothing new, keeps one tombstone, and is audited as a repeat
        res2 = erase_user(store, VICTIM, by="test")
        assert res2.found and res2.already_erased and res2.total == 0 and res2.tombstone_id == res.tombstone_id
        assert tombstones(store) == {res.tombstone_id}
        assert store.query("SELECT action FROM erasure_audit ORDER BY audited_at")["action"].to_list() == [
            "user_erased", "user_erased_again"]


def test_unknown_user_is_said_and_nothing_recorded(tmp_path: Path) -> None:
    with EventStore(tmp_path / "s.duckdb") as store:
        _fill(store, True)
        before = _counts(store)
        res = erase_user(store, "nobody")
        assert not res.found and res.tombstone_id == "" and _counts(store) == before
        assert tombstones(store) == set() and store.query("SELECT * FROM erasure_audit").height == 0
        with pytest.raises(ValidationFailed):
            erase_user(store, "  ")


def test_tombstones_need_the_stores_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with EventStore(tmp_path / "s.duckdb") as store:
        pseudo, _ = _fill(store, True)
        res = erase_user(store, VICTIM)
        hasher = tombstone_hasher(store)
        assert hasher is not None and hasher.key_id == pseudo.key_id  # type: ignore[attr-defined]
        erased = ErasedUsers.load(store)
        assert erased is not None and VICTIM in erased and "u1000" not in erased
        # without the key file (and no key configured) the tombstones cannot be matched: refused, not ignored
        monkeypatch.delenv("SHOPGUARD_PSEUDONYM_KEY", raising=False)
        key_file_for(store.path).rename(tmp_path / "moved-key")
        with pytest.raises(ConfigError, match="not available"):
            ErasedUsers.load(store)
        assert res.tombstone_id
