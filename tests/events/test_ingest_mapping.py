"""Mapping files: the shipped examples parse, and every mistake is an error naming its key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from shopguard.errors import ConfigError, NotFound, ValidationFailed
from shopguard.events.ingest import ingest_source
from shopguard.events.mapping import load_mapping, mapping_from_dict, parse_duration
from shopguard.store import EventStore

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BASE: dict[str, Any] = {"path": "x.csv", "event_type": "pay",
                        "columns": {"user_id": "u", "amount": "a", "ts": "t"}, "constants": {"status": "success"}}


def _mapping_files() -> list[Path]:
    """Example YAMLs that are source mappings (examples/ also holds rules and configs)."""
    return [p for p in sorted(EXAMPLES.glob("*.yaml"))
            if isinstance(d := yaml.safe_load(p.read_text()), dict) and "path" in d and ("columns" in d or "events" in d)]


@pytest.mark.parametrize("path", _mapping_files(), ids=lambda p: p.name)
def test_example_mappings_parse(path: Path) -> None:
    m = load_mapping(path)
    assert m.resolved_events() and m.source_format() in ("csv", "parquet", "jsonl")
    assert m.resolved_path().is_absolute()


def test_examples_include_the_shared_data_mappings() -> None:
    names = {p.name for p in _mapping_files()}
    assert {"handbook.yaml", "op_spam.yaml", "shop_orders.yaml"} <= names


def test_shop_orders_example_ingests_with_its_two_broken_rows(tmp_path: Path) -> None:
    with EventStore(tmp_path / "s.duckdb") as store:
        report = ingest_source(load_mapping(EXAMPLES / "shop_orders.yaml"), store)
        assert report.rows_rejected == 2 and report.events_added == 2 * 40 + 1
        assert set(store.events()["type"]) == {"signup", "order"}
    assert Path(report.rejects_path or "").parent == tmp_path


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"colour": "red"}, "colour"),
        ({"label": {"column": "f", "positve": [1]}}, "label.positve"),
        ({"columns": {"user_id": "u", "ts": "t", "amont": "a"}}, "columns"),
        ({"columns": {"user_id": "u", "ts": "t", "type": "k"}}, "columns"),
        ({"event_type": "purchase"}, "event_type"),
        ({"columns": {"user_id": "u", "amount": "a"}}, "columns.ts"),
        ({"type_column": "k"}, "event_type"),
        ({"time": {"format": "yyyy-mm-dd"}}, "time.format"),
        ({"time": {"timezone": "Mars/Olympus"}}, "time.timezone"),
        ({"time": {"unit": "s", "format": "%Y"}}, "time"),
        ({"time": {"unit": "weeks"}}, "time.unit"),
        ({"label": {"column": "f", "delay": "a week"}}, "label.delay"),
        ({"label": {"column": "f", "positive": [1], "negative": [1]}}, "label"),
        ({"label": {"column": "f", "scenario": "x", "scenario_column": "s"}}, "label"),
        ({"label": {"column": "f", "entity": "planet"}}, "label.entity"),
        ({"label": {"column": "u"}}, "columns/attrs"),
        ({"attrs": ["f"], "label": {"column": "f"}}, "columns/attrs"),
        ({"dedupe": "sometimes"}, "dedupe"),
        ({"csv": {"delimiter": ";;"}}, "csv.delimiter"),
        ({"values": {"colour": {"a": "b"}}}, "values"),
    ],
)
def test_mapping_errors_name_the_key(change: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        mapping_from_dict(BASE | change, origin="m.yaml")
    assert err.value.field == key, err.value.message
    assert err.value.message.startswith(f"m.yaml: {key}: ")


def test_multi_event_label_must_name_its_event() -> None:
    spec = {"path": "x.csv", "columns": {"user_id": "u"}, "label": {"column": "f"},
            "events": [{"event_type": "signup", "columns": {"ts": "a"}},
                       {"event_type": "order", "columns": {"ts": "b", "amount": "c"}}]}
    with pytest.raises(ConfigError, match="label.event"):
        mapping_from_dict(spec)
    with pytest.raises(ConfigError, match="label.event: 'refund' is not an event"):
        mapping_from_dict(spec | {"label": {"column": "f", "event": "refund"}})
    m = mapping_from_dict(spec | {"label": {"column": "f", "event": "order"}})
    order = m.resolved_events()[1]
    assert order.columns == {"user_id": "u", "ts": "b", "amount": "c"}  # inherits top-level columns


def test_event_names_must_differ() -> None:
    spec = {"path": "x.csv", "columns": {"user_id": "u", "ts": "t"},
            "events": [{"event_type": "view"}, {"event_type": "view"}]}
    with pytest.raises(ConfigError, match="names must differ"):
        mapping_from_dict(spec)
    assert len(mapping_from_dict(spec | {"events": [{"event_type": "view"}, {"event_type": "view", "name": "v2"}]})
               .resolved_events()) == 2


def test_format_from_extension_or_explicit() -> None:
    assert mapping_from_dict(BASE | {"path": "a.parquet"}).source_format() == "parquet"
    assert mapping_from_dict(BASE | {"path": "a.ndjson"}).source_format() == "jsonl"
    assert mapping_from_dict(BASE | {"path": "a.dat", "format": "csv"}).source_format() == "csv"
    with pytest.raises(ConfigError, match="format"):
        mapping_from_dict(BASE | {"path": "a.dat"}).source_format()


def test_paths_are_relative_to_the_yaml_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    y = tmp_path / "sub" / "m.yaml"
    y.write_text("path: ../data/x.csv\nevent_type: view\ncolumns: {user_id: u, ts: t}\n")
    assert load_mapping(y).resolved_path() == (tmp_path / "data" / "x.csv").resolve()


def test_file_problems_are_clear(tmp_path: Path, store: EventStore) -> None:
    with pytest.raises(NotFound, match="mapping file not found"):
        load_mapping(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("path: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_mapping(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="YAML object"):
        load_mapping(bad)
    m = mapping_from_dict(BASE | {"path": str(tmp_path / "missing.csv")})
    with pytest.raises(NotFound, match="source file not found"):
        ingest_source(m, store)
    (tmp_path / "x.csv").write_text("u,t,amt\nu1,2024-01-01,3\n")
    with pytest.raises(ConfigError) as err:
        ingest_source(mapping_from_dict(BASE | {"path": str(tmp_path / "x.csv")}), store)
    assert err.value.field == "columns.amount" and "'a' is not in x.csv" in err.value.message
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(ValidationFailed, match="cannot read"):
        ingest_source(mapping_from_dict(BASE | {"path": str(tmp_path / "junk.parquet")}), store)
    (tmp_path / "latin.csv").write_bytes(b"u,t,a\nu1,2024-01-01,3\n\xff\xfe,2024-01-01,4\n")
    with pytest.raises(ValidationFailed, match="encoding"):
        ingest_source(mapping_from_dict(BASE | {"path": str(tmp_path / "latin.csv")}), store)
    latin = mapping_from_dict(BASE | {"path": str(tmp_path / "latin.csv"), "csv": {"encoding": "latin-1"}})
    assert ingest_source(latin, store).events_added == 2


@pytest.mark.parametrize(("text", "hours"), [("7d", 168), ("12h", 12), ("30m", 0.5), ("2w", 336), ("90s", 0.025)])
def test_durations(text: str, hours: float) -> None:
    assert parse_duration(text).total_seconds() == pytest.approx(hours * 3600)
