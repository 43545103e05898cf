"""``shopguard erase``: a user gone from every table, kept out of re-ingests, audited, idempotent."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import orjson
from typer.testing import CliRunner

from shopguard.cli.main import app
from shopguard.store import EventStore

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "examples" / "shop_orders.yaml"


def _ingest(db: Path, tmp: Path) -> dict:
    res = runner.invoke(app, ["ingest", "--source", str(SOURCE), "--db", str(db), "--json",
                              "--rejects", str(tmp / "rejects.csv")])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def _holds(db: Path, needle: str) -> list[str]:
    hits = []
    with EventStore(db) as store:
        for t in store.query("SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'")[
                "table_name"].to_list():
            for c in store.query("SELECT column_name FROM information_schema.columns WHERE table_name = ?",
                                 [t])["column_name"].to_list():
                n = store.query(f'SELECT count(*) AS n FROM "{t}" WHERE CAST("{c}" AS VARCHAR) LIKE ?',
                                [f"%{needle}%"])["n"][0]
                if n:
                    hits.append(f"{t}.{c}")
    return hits


def test_erase_cli(tmp_path: Path) -> None:
    db = tmp_path / "shop.duckdb"
    first = _ingest(db, tmp_path)
    assert first["pseudonymised"]
    with EventStore(db) as store:
        others = store.query("SELECT count(*) AS n FROM events WHERE user_id <> 'u1005'")["n"][0]
    assert _holds(db, "u1005")

    res = runner.invoke(app, ["erase", "--db", str(db), "--user", "u1005", "--json", "--by", "dpo@shop"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["found"] and not got["already_erased"] and got["tombstone_id"].startswith("t_")
    assert got["removed"]["events"] == 2 and got["removed"]["labels"] == 1
    assert _holds(db, "u1005") == []
    with EventStore(db) as store:
        assert store.query("SELECT count(*) AS n FROM events")["n"][0] == others
        audit = store.query("SELECT * FROM erasure_audit")
        assert audit["by_key"].to_list() == ["dpo@shop"] and audit["tombstone_id"][0] == got["tombstone_id"]

    again = _ingest(db, tmp_path)  # the same file: the user stays out, counted as erased
    assert again["erased"] == 2 and again["events_added"] == 0 and again["rows_rejected"] == first["rows_rejected"]
    assert _holds(db, "u1005") == []

    assert db.read_bytes().count(b"u1005")  # deleted rows: bytes still in the file's freed blocks
    res = runner.invoke(app, ["erase", "--db", str(db), "--user", "u1004", "--compact"])
    assert res.exit_code == 0 and "store rewritten" in res.output, res.output
    assert db.read_bytes().count(b"u1005") == 0 and db.read_bytes().count(b"u1004") == 0
    assert db.stat().st_mode & 0o777 == 0o600
    with EventStore(db) as store:  # still a whole store: keys, tombstones, settings, audit
        assert store.query("SELECT count(*) AS n FROM tombstones")["n"][0] == 2
        assert store.setting("erasure_key") is not None and store.query("SELECT * FROM erasure_audit").height == 2
    again = _ingest(db, tmp_path)
    assert again["erased"] == 4 and again["events_added"] == 0
    res = runner.invoke(app, ["erase", "--db", str(db), "--user", "u1005"])  # idempotent
    assert res.exit_code == 0 and "already erased" in res.output
    res = runner.invoke(app, ["erase", "--db", str(db), "--user", "nobody"])  # unknown: said, exit 0
    assert res.exit_code == 0 and "no user 'nobody'" in res.output
    res = runner.invoke(app, ["erase", "--db", str(tmp_path / "missing.duckdb"), "--user", "u1"])
    assert res.exit_code == 2


def test_erase_applies_a_left_journal_first(tmp_path: Path) -> None:
    """Events a stopped service acknowledged but never applied (journal segments) are erased too."""
    db = tmp_path / "shop.duckdb"
    _ingest(db, tmp_path)
    ev = {"event_id": "j1", "type": "login", "ts": datetime(2025, 4, 1, 10).isoformat(), "user_id": "u1000",
          "status": "success"}
    dec = {"event_id": "j1", "decided_at": datetime(2025, 4, 1, 10).isoformat(), "risk_level": "low", "action": "allow",
           "reasons": "[]", "rule_hits": "[]"}
    Path(f"{db}.journal.7").write_bytes(orjson.dumps({"events": [ev], "decisions": [dec], "cases": []}) + b"\n")
    res = runner.invoke(app, ["erase", "--db", str(db), "--user", "u1000", "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["journal_events_applied"] == 1 and got["removed"]["events"] == 3 and got["removed"]["decisions"] == 1
    assert not Path(f"{db}.journal.7").exists() and _holds(db, "u1000") == []
