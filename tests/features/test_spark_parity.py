"""The Spark engine gives the DuckDB batch engine's numbers, event by event, on a small seeded shop.

Every non-graph feature is checked: the defaults, the generated per-key features (smoothed fraud rates,
counts, user shares, accounts per key, an ``attr:`` entity) and the attrs features. Skips with the
reason when pyspark or Java is missing. One SparkSession (``local[2]``) for the module.
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from tests.features.conftest import make_log
from typer.testing import CliRunner

from shopguard.cli.main import app
from shopguard.features import compute_features
from shopguard.features.batch import feature_set
from shopguard.features.definitions import KEY_COLUMNS, FeatureSet
from shopguard.features.spark import java_problem
from shopguard.store import EventStore
from shopguard.store.parquet import export_parquet

_PROBLEM = java_problem()
pytestmark = pytest.mark.skipif(_PROBLEM is not None, reason=f"Spark engine not testable here: {_PROBLEM}")


@pytest.fixture(scope="module")
def spark() -> Any:
    from shopguard.features.spark import spark_session

    session = spark_session("local[2]", app_name="shopguard-parity",
                            conf={"spark.sql.shuffle.partitions": "4", "spark.default.parallelism": "2"})
    yield session
    session.stop()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("spark")
    events, labels = make_log(seed=3, bursts=120, days=40)
    with EventStore(root / "shop.duckdb") as store:
        store.append_events(events)
        store.append_labels(pl.DataFrame(labels))
        export_parquet(store, root / "parquet")
    return root / "shop.duckdb", root / "parquet"


def _compare(batch: pl.DataFrame, spark_rows: pl.DataFrame, columns: list[str]) -> None:
    assert spark_rows.height == batch.height
    b = batch.sort("event_id")
    s = spark_rows.sort("event_id")
    assert b["event_id"].to_list() == s["event_id"].to_list()
    assert b["type"].to_list() == s["type"].to_list()
    bad: list[str] = []
    for c in columns:
        bv, sv = b[c].to_list(), s[c].to_list()
        for eid, x, y in zip(b["event_id"], bv, sv, strict=True):
            if x is None or y is None:
                ok = x is None and y is None
            elif isinstance(x, str) or isinstance(y, str):
                ok = str(x) == str(y)
            else:
                ok = math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-6)
            if not ok:
                bad.append(f"{c} @ {eid}: duckdb={x!r} spark={y!r}")
                break
    assert not bad, "\n".join(bad)


def _spark_frame(spark: Any, root: Path, fs: Any, **kw: Any) -> pl.DataFrame:
    from shopguard.features.spark import spark_features

    table = spark_features(spark, root, fs, **kw).toArrow()
    return pl.from_arrow(table)  # type: ignore[return-value]


def test_every_feature_matches_duckdb(spark: Any, exported: tuple[Path, Path], tmp_path: Path) -> None:
    """Through the CLI: `shopguard features --engine duckdb` and `--engine spark` write the same table."""
    db, root = exported
    with EventStore(db, read_only=True) as store:
        fs = feature_set(store, rings=False)
    assert not fs.graph_definitions
    kinds = {d.aggregate for d in fs.definitions}
    # The check covers what it claims: generated features, an attrs entity, every attrs kind.
    assert {"smoothed_label_rate", "user_share", "label_rate", "is_new", "zscore", "distinct"} <= kinds
    assert any(d.entity and d.entity.startswith("attr:") for d in fs.definitions)
    assert {a.kind for a in fs.attrs} == {"numeric", "categorical", "timestamp"}
    runner = CliRunner()
    for engine in ("duckdb", "spark"):
        res = runner.invoke(app, ["features", "--db", str(db), "--engine", engine, "--spark-master", "local[2]",
                                  "--parquet", str(root), "--out", str(tmp_path / f"{engine}.parquet")])
        assert res.exit_code == 0, res.output
        assert f"960 rows x {len(fs.columns)} features ({engine})" in " ".join(res.output.split())
    batch = pl.read_parquet(tmp_path / "duckdb.parquet")
    out = pl.read_parquet(tmp_path / "spark.parquet")
    assert out.columns == batch.columns == [*KEY_COLUMNS, *fs.columns]
    assert out.schema == batch.schema
    _compare(batch, out, fs.columns)
    # Not vacuous: most features take several values.
    assert sum(batch[c].n_unique() > 2 for c in fs.numeric) > len(fs.numeric) // 2


def test_export_layout(exported: tuple[Path, Path], tmp_path: Path) -> None:
    db, _root = exported
    res = CliRunner().invoke(app, ["export", "--db", str(db), "--parquet", str(tmp_path / "x")])
    assert res.exit_code == 0, res.output
    days = sorted(p.name for p in (tmp_path / "x" / "events").iterdir())
    assert days[0] == "day=2024-01-01" and len(days) > 30
    assert pl.read_parquet(tmp_path / "x" / "events" / "**" / "*.parquet").height == 960
    assert (tmp_path / "x" / "labels").is_dir()
    res = CliRunner().invoke(app, ["export", "--db", str(db), "--parquet", str(tmp_path / "x")])
    assert res.exit_code != 0 and "overwrite" in res.output


def test_since_until_types_match_duckdb(spark: Any, exported: tuple[Path, Path]) -> None:
    db, root = exported
    since, until = datetime(2024, 1, 20), datetime(2024, 2, 3)
    with EventStore(db, read_only=True) as store:
        full = feature_set(store, rings=False, generated=True, until=until)
        # A slice of the set (every kind that reads labels or history differently), to keep the test short.
        wanted = {"label_rate", "smoothed_label_rate", "user_share", "is_new", "since_last", "count", "zscore"}
        keep, seen = [], set()
        for d in full.definitions:  # the first of each kind, and the delayed merchant features
            if d.kind != "derived" and (d.aggregate in wanted - seen or d.name in ("merchant_risk_7d",
                                                                                  "merchant_tx_delayed_7d")):
                seen.add(d.aggregate)
                keep.append(d)
        fs = FeatureSet(tuple(keep), full.attrs)
        assert {d.aggregate for d in fs.definitions} == wanted
        batch = compute_features(store, definitions=fs, since=since, until=until, types=["pay", "order"])
    out = _spark_frame(spark, root, fs, since=since, until=until, types=["pay", "order"])
    assert batch.height > 50
    _compare(batch, out, fs.columns)


def test_ring_features_are_refused(spark: Any, exported: tuple[Path, Path]) -> None:
    from shopguard.errors import ConfigError
    from shopguard.features.spark import spark_features

    with pytest.raises(ConfigError, match="ring"):
        spark_features(spark, exported[1], FeatureSet())


def test_missing_export_names_the_command(spark: Any, tmp_path: Path) -> None:
    from shopguard.errors import DataError
    from shopguard.features.definitions import DEFAULT_FEATURES
    from shopguard.features.spark import spark_features

    with pytest.raises(DataError, match="shopguard export --parquet"):
        spark_features(spark, tmp_path / "nothing", FeatureSet(DEFAULT_FEATURES).without_graph())
