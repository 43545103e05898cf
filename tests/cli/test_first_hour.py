"""What a new user meets in their first hour: the demo's store and hints, score's output, ``users``,
80-column tables, quiet libraries, a ``--db`` that is not a store, ingest's exit code and summary,
progress with real counts."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest
from rich.console import Console
from typer.testing import CliRunner

import shopguard.cli.demo as demo_cli
import shopguard.cli.rings as rings_cli
import shopguard.cli.score as score_cli
from shopguard.cli.main import app
from shopguard.store import EventStore

runner = CliRunner()


def _width_ok(text: str, width: int = 80) -> None:
    too_long = [line for line in text.splitlines() if len(line.rstrip()) > width]
    assert not too_long, "\n".join(too_long)


# -- a small simulated store with a trained model, shared by the score / users tests -------------------
@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shop")
    db, model = root / "shop.duckdb", root / "model"
    res = runner.invoke(app, ["simulate", "--users", "150", "--days", "14", "--seed", "5", "--db", str(db)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["train", "--db", str(db), "--out", str(model), "--detector", "lightgbm"])
    assert res.exit_code == 0, res.output
    with EventStore(db, read_only=True) as st:
        last = st.time_range()[1]
    return {"db": db, "model": model, "since": Path(f"{last:%Y-%m-%d}")}


# 1. the demo writes the store every command opens by default, and its hints run as printed ------------
def test_next_commands_use_the_default_store_and_real_paths() -> None:
    report = {"window": {"start": "2024-03-22T00:00:00"}}
    default = demo_cli.next_commands(Path("shopguard-data/shop.duckdb"), Path("shopguard-data/models/lightgbm"),
                                     report)
    cmds = [c for c, _ in default]
    assert "shopguard stats" in cmds and not any("--db" in c for c in cmds if "ingest" not in c)
    assert any("--since 2024-03-22" in c and "shopguard-data/models/lightgbm" in c for c in cmds)
    assert not any("YOUR" in c or "DIR" in c for c in cmds)
    other = demo_cli.next_commands(Path("/x/my store.duckdb"), Path("/x/models/lightgbm"), report)
    assert all("--db '/x/my store.duckdb'" in c for c, _ in other if "ingest" not in c)


@pytest.mark.slow
def test_demo_store_is_found_by_stats_and_every_hint_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SHOPGUARD_DB", raising=False)
    monkeypatch.delenv("SHOPGUARD_HOME", raising=False)
    (tmp_path / "examples").symlink_to(Path(__file__).resolve().parents[2] / "examples")
    res = runner.invoke(app, ["demo", "--users", "150", "--days", "14", "--delay-days", "2", "--test-days", "3",
                              "--seed", "3", "--no-foundation"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "shopguard-data" / "shop.duckdb").exists()
    _width_ok(res.stdout.split("Next (")[0])  # the hinted commands stay on one line each, to copy them whole
    stats = runner.invoke(app, ["stats"])
    assert stats.exit_code == 0 and "no store" not in stats.output, stats.output
    hints = [line.strip() for line in res.stdout.split("Next (after `source .venv/bin/activate`):")[1].splitlines()
             if line.strip().startswith("shopguard ")]
    assert len(hints) >= 6, res.stdout
    for hint in hints:
        argv = shlex.split(hint)[1:]
        if argv[0] == "serve":  # runs until stopped: check it parses its options
            argv.append("--help")
        ran = runner.invoke(app, argv)
        assert ran.exit_code == 0, f"{hint}\n{ran.output}"


def test_demo_scenario_table_fits_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    console = Console(width=80, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    monkeypatch.setattr(demo_cli, "out", console)
    names = ["lightgbm", "iforest", "ecod", "baseline", "sequence_fusion", "foundation_surprise"]
    scen = {s: {"positives": 12, "recall_at_1pct_fpr": 0.5} for s in
            ("account_takeover", "bot_ordering", "brushing", "card_testing", "coupon_abuse", "fake_review")}
    report = {"models": [{"detector": n, "supervised": n in ("lightgbm", "sequence_fusion"),
                          "metrics": {"scenarios": scen, "roc_auc": 0.9, "average_precision": 0.4,
                                      "recall_at_1pct_fpr": 0.3}} for n in names]}
    demo_cli._print_scenarios(report)
    text = console.export_text()
    _width_ok(text)
    for label in ("LightGBM", "IForest", "UserBase", "FM+feat", "account_takeover", "0.500"):
        assert label in text  # nothing cut to "Light…"


def test_demo_steps_count_up() -> None:
    class Prog:
        def __init__(self) -> None:
            self.advanced, self.descriptions = 0, []

        def update(self, task: int, description: str) -> None:
            self.descriptions.append(description)

        def advance(self, task: int) -> None:
            self.advanced += 1

    steps = demo_cli.Steps(3)
    steps.prog, steps.task = Prog(), 0
    steps.start("training lightgbm")
    steps.step_fn("lightgbm")("features")
    steps.done()
    steps.done("foundation model skipped")
    assert steps.prog.descriptions[:2] == ["step 1/3: training lightgbm", "step 1/3: lightgbm: features"]
    assert steps.prog.descriptions[-1] == "step 2/3: foundation model skipped" and steps.prog.advanced == 2


# 2. score: the riskiest new decisions, where they went, and an honest re-run -------------------------
def test_score_prints_riskiest_and_says_when_nothing_is_new(shop: dict[str, Path]) -> None:
    args = ["score", "--db", str(shop["db"]), "--model", str(shop["model"]), "--since", str(shop["since"])]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    out = first.stdout
    assert "new decisions" in out and "top reasons" in out and "Riskiest" in out
    assert "decisions table" in out and "shopguard decisions" in out
    _width_ok(out.split("All decisions are in")[0])
    with EventStore(shop["db"], read_only=True) as st:
        n = st.query("SELECT count(*) AS n FROM decisions")["n"][0]
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert f"{n:,} events since" in again.stdout and "already decided by this model; nothing new written" in again.stdout
    assert "new decisions" not in again.stdout
    hint = again.stdout.split("list them with:")[1].strip()
    listed = runner.invoke(app, [*shlex.split(hint)[1:], "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert len(rows) == min(50, n) and rows[0]["probability"] >= rows[-1]["probability"]


def test_score_progress_counts_chunks() -> None:
    assert score_cli._DECIDING.search("deciding 50,000/120,000").groups() == ("50,000", "120,000")


# 3. users: ids that exist -------------------------------------------------------------------------
def test_users_lists_existing_accounts(shop: dict[str, Path]) -> None:
    res = runner.invoke(app, ["users", "--db", str(shop["db"]), "--top", "3", "--json"])
    assert res.exit_code == 0, res.output
    found = json.loads(res.stdout)
    assert len(found["most_events"]) == 3 and found["most_fraud"]
    counts = [r["events"] for r in found["most_events"]]
    assert counts == sorted(counts, reverse=True)
    ids = [r["user_id"] for section in found.values() for r in section]
    with EventStore(shop["db"], read_only=True) as st:
        known = set(st.query("SELECT DISTINCT user_id FROM events")["user_id"].to_list())
    assert set(ids) <= known
    table = runner.invoke(app, ["users", "--db", str(shop["db"]), "--top", "5"])
    assert table.exit_code == 0 and "Most active accounts" in table.stdout
    _width_ok(table.stdout)
    assert runner.invoke(app, ["users", "--db", str(shop["db"]), "--top", "0"]).exit_code == 2


# 4. rings at 80 columns ----------------------------------------------------------------------------
def test_rings_table_fits_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    console = Console(width=80, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    monkeypatch.setattr(rings_cli, "out", console)
    ring = {"risk": 24.12, "size": 11, "known_fraud": 11,
            "link_kinds": {"device": 55, "instrument": 55, "ip": 55, "address": 55, "item": 2},
            "shared_values": {"device": ["d1237841810"], "ip": ["167.172.195.165", "10.0.0.1"],
                              "address": ["addr3739966268"]},
            "members": [f"u{i:010d}" for i in range(11)]}
    rings_cli.print_rings([ring, ring], total=18, users=311)
    text = console.export_text()
    _width_ok(text)
    assert "u0000000000, u0000000001" in text and "(+5)" in text and "167.172.195.165" in text


# 5. library warnings stay off the terminal ---------------------------------------------------------
def test_cli_silences_library_warnings_but_keeps_shopguard_logs(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import logging, warnings
        from shopguard.cli.main import app

        @app.command("chatter")
        def chatter() -> None:
            warnings.warn("tracer says hi", UserWarning)
            logging.warning("root logger says hi")
            logging.getLogger("onnxruntime").warning("ort says hi")
            logging.getLogger("shopguard.service").warning("shopguard speaks")

        app(["chatter"])
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "SHOPGUARD_WARNINGS")}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert "says hi" not in res.stderr and "says hi" not in res.stdout
    assert "shopguard speaks" in res.stderr


# 6. --db that is not a store ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["text", "parquet"])
@pytest.mark.parametrize("command", [["stats"], ["users"], ["rings"], ["ingest", "--jsonl", "-"],
                                     ["score", "--model", "nowhere"], ["decisions"]])
def test_db_that_is_not_a_store_is_one_clear_line(tmp_path: Path, kind: str, command: list[str]) -> None:
    bad = tmp_path / ("notes.txt" if kind == "text" else "events.parquet")
    if kind == "text":
        bad.write_text("hello\n")
    else:
        pl.DataFrame({"a": [1, 2]}).write_parquet(bad)
    before = bad.read_bytes()
    res = runner.invoke(app, [*command, "--db", str(bad)], input="")
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "db:" in errors[0] and "not a shopguard store" in errors[0], res.output
    assert bad.read_bytes() == before  # nothing written into it


# 7. ingest: all rejected exits non-zero; every field counted; repeats vs already stored ------------
def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_ingest_exits_1_when_every_row_is_rejected(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "bad.jsonl", [{"ts": "not a time", "type": "login"}, {"type": "order"}])
    res = runner.invoke(app, ["ingest", "--jsonl", str(src), "--db", str(tmp_path / "s.duckdb")])
    assert res.exit_code == 1, res.output
    assert "every row was rejected" in res.output
    ok = _jsonl(tmp_path / "ok.jsonl", [{"event_id": "a", "ts": "2024-03-01T10:00:00", "type": "login",
                                         "user_id": "u1", "status": "success"}, {"type": "order"}])
    assert runner.invoke(app, ["ingest", "--jsonl", str(ok), "--db", str(tmp_path / "s.duckdb")]).exit_code == 0


def test_ingest_reject_summary_counts_every_field(tmp_path: Path) -> None:
    (tmp_path / "o.csv").write_text(
        "u,t,amount,qty,currency,rating,status,old,new,promised\n"
        ",2024-01-01 10:00:00,x,y,toolongcurrencyvalue,zz,weird,a,b,c\n"
        "2,nope,-1,0,EUR,9,success,1,2,2024-01-02\n")
    (tmp_path / "o.yaml").write_text(textwrap.dedent("""\
        name: o
        path: o.csv
        columns: {user_id: u}
        events:
          - {event_type: order, columns: {ts: t, amount: amount, quantity: qty, currency: currency, status: status}}
          - {event_type: review, columns: {ts: t, rating: rating}}
          - {event_type: price_change, columns: {ts: t, old_price: old, new_price: new}}
          - {event_type: shipment, columns: {ts: t, promised_ts: promised}}
    """))
    res = runner.invoke(app, ["ingest", "--source", str(tmp_path / "o.yaml"), "--db", str(tmp_path / "s.duckdb"),
                              "--json"])
    rep = json.loads(res.stdout)
    fields = rep["rejects_by_field"]
    assert len(fields) > 6, fields  # more than the summary used to show
    human = runner.invoke(app, ["ingest", "--source", str(tmp_path / "o.yaml"), "--db", str(tmp_path / "t.duckdb")])
    summary = " ".join(human.stdout.split())
    for name, n in fields.items():
        assert f"{name} {n:,}" in summary, (name, summary)


def test_ingest_tells_repeats_in_the_input_from_already_stored(tmp_path: Path) -> None:
    rec = {"event_id": "a1", "ts": "2024-03-01T10:00:00", "type": "login", "user_id": "u1", "status": "success"}
    other = {**rec, "event_id": "a2", "user_id": "u2"}
    src = _jsonl(tmp_path / "d.jsonl", [rec, rec, other])
    db = str(tmp_path / "s.duckdb")
    first = json.loads(runner.invoke(app, ["ingest", "--jsonl", str(src), "--db", db, "--json"]).stdout)
    assert (first["events_added"], first["already_stored"], first["duplicates_in_input"]) == (2, 0, 1)
    human = runner.invoke(app, ["ingest", "--jsonl", str(src), "--db", str(tmp_path / "h.duckdb")])
    lines = {" ".join(line.split()) for line in human.stdout.splitlines()}
    assert "│ skipped: already stored │ 0 │" in lines and "│ skipped: repeated in this input │ 1 │" in lines
    again = json.loads(runner.invoke(app, ["ingest", "--jsonl", str(src), "--db", db, "--json"]).stdout)
    assert (again["events_added"], again["already_stored"], again["duplicates_in_input"]) == (0, 2, 1)


# 8. progress shows counts, not 0/? -------------------------------------------------------------------
def test_ingest_progress_counts_rows(tmp_path: Path) -> None:
    recs = [{"event_id": f"e{i}", "ts": f"2024-03-01T10:00:{i:02d}", "type": "login", "user_id": "u1",
             "status": "success"} for i in range(7)]
    src = _jsonl(tmp_path / "p.jsonl", recs)
    res = runner.invoke(app, ["ingest", "--jsonl", str(src), "--db", str(tmp_path / "s.duckdb")],
                        env={"SHOPGUARD_PROGRESS": "1"})
    assert res.exit_code == 0, res.output
    assert "7/7" in res.stderr and "0/?" not in res.stderr
