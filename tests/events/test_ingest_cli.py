"""``shopguard ingest`` end to end: summary, exit codes, rejects, re-runs, JSONL on stdin, pseudonyms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shopguard.cli.main import app
from shopguard.store import EventStore

CSV = """user_id,signup_time,purchase_time,purchase_value,ip_address,class
u1,2024-01-01 10:00:00,2024-01-02 10:00:00,30,10.0.0.1,0
u2,2024-01-01 11:00:00,2024-01-01 11:00:05,abc,10.0.0.2,1
u3,2024-01-01 12:00:00
u4,2024-01-01 13:00:00,2024-01-01 13:00:09,120,10.0.0.1,1
"""
MAPPING = """name: orders
path: orders.csv
columns: {user_id: user_id, ip: ip_address}
events:
  - {event_type: signup, columns: {ts: signup_time}}
  - {event_type: order, columns: {ts: purchase_time, amount: purchase_value}}
label: {column: class, event: order, scenario: payment_fraud, delay: 7d}
"""


@pytest.fixture
def source(tmp_path: Path) -> Path:
    (tmp_path / "orders.csv").write_text(CSV)
    (tmp_path / "orders.yaml").write_text(MAPPING)
    return tmp_path / "orders.yaml"


def run(*args: str, input: str | None = None, env: dict | None = None):  # noqa: A002
    return CliRunner().invoke(app, list(args), input=input, env=env)


def test_ingest_with_bad_rows_exits_0_and_rerun_adds_nothing(tmp_path: Path, source: Path) -> None:
    db = tmp_path / "db" / "shop.duckdb"
    first = run("ingest", "--source", str(source), "--db", str(db), "--json")
    assert first.exit_code == 0, first.output
    rep = json.loads(first.stdout)
    assert (rep["rows_read"], rep["events_added"], rep["rows_rejected"], rep["labels_added"]) == (4, 5, 2, 2)
    rejects = Path(rep["rejects_path"])
    assert rejects == (tmp_path / "db" / "orders.rejects.csv").resolve()
    lines = rejects.read_text().splitlines()
    assert lines[0] == "row,event,field,value,reason"
    assert any(line.startswith("2,order,amount,abc,not a number") for line in lines)
    assert any(line.startswith("3,,row,") for line in lines)
    again = json.loads(run("ingest", "--source", str(source), "--db", str(db), "--json").stdout)
    assert (again["events_added"], again["labels_added"], again["duplicates_skipped"]) == (0, 0, 5)
    with EventStore(db, read_only=True) as st:
        assert st.count_events() == 5


def test_human_summary_and_rejects_option(tmp_path: Path, source: Path) -> None:
    rej = tmp_path / "bad.jsonl"
    res = run("ingest", "--source", str(source), "--db", str(tmp_path / "s.duckdb"), "--rejects", str(rej))
    assert res.exit_code == 0
    flat = " ".join(res.stdout.split())  # Rich wraps long paths at the console width
    assert "events added" in flat and "rows rejected" in flat and rej.name in flat.replace(" ", "")
    assert [json.loads(line)["row"] for line in rej.read_text().splitlines()] == [2, 3]


def test_path_override(tmp_path: Path, source: Path) -> None:
    other = tmp_path / "other.csv"
    other.write_text(CSV.splitlines()[0] + "\nu9,2024-02-01 10:00:00,2024-02-01 10:01:00,5,10.0.0.9,0\n")
    res = run("ingest", "--source", str(source), "--path", str(other), "--db", str(tmp_path / "s.duckdb"), "--json")
    assert json.loads(res.stdout)["events_added"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "missing.yaml"], "mapping file not found"),
        (["--jsonl", "missing.jsonl"], "file not found"),
    ],
)
def test_unreadable_inputs_exit_non_zero(tmp_path: Path, args: list[str], message: str) -> None:
    res = run("ingest", *args, "--db", str(tmp_path / "s.duckdb"))
    assert res.exit_code == 2
    assert message in res.output


def test_bad_mapping_names_the_key(tmp_path: Path, source: Path) -> None:
    source.write_text(MAPPING.replace("delay: 7d", "dealy: 7d"))
    res = run("ingest", "--source", str(source), "--db", str(tmp_path / "s.duckdb"))
    assert res.exit_code == 2 and "label.dealy" in res.output


def test_jsonl_on_stdin_with_pseudonym_key(tmp_path: Path) -> None:
    lines = "\n".join([
        json.dumps({"type": "login", "ts": "2024-01-01T00:00:00Z", "user_id": "u1", "status": "success",
                    "ip": "10.1.1.1"}),
        json.dumps({"type": "login", "ts": "2024-01-01T00:00:00Z", "user_id": "u1", "status": "perhaps"}),
        "{oops",
    ]) + "\n"
    db = tmp_path / "s.duckdb"
    env = {"MY_SECRET": "k" * 32}
    res = run("ingest", "--jsonl", "-", "--db", str(db), "--pseudonymise-key-env", "MY_SECRET", "--json",
              input=lines, env=env)
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert (rep["rows_read"], rep["events_added"], rep["rows_rejected"], rep["pseudonymised"]) == (3, 1, 2, True)
    with EventStore(db, read_only=True) as st:
        assert st.events()["ip"][0].startswith("p_")
    missing = run("ingest", "--jsonl", "-", "--db", str(db), "--pseudonymise-key-env", "NOT_SET_ANYWHERE",
                  input=lines)
    assert missing.exit_code == 2 and "NOT_SET_ANYWHERE" in missing.output
