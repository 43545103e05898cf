"""``shopguard features``: the point-in-time feature table of every event, from DuckDB or from Spark.

Both engines interpret the same feature set (the defaults, the generated per-key features and the attrs
keys, decided from the store's data before ``--until``) and write the same columns, keyed by
``event_id``: ``event_id, ts, type, user_id`` then one column per feature (numbers as doubles,
categoricals as text). Ring (account-graph) features are left out: Spark cannot compute them (a
time-ordered replay of the whole graph; see docs/scale.md).
"""

from __future__ import annotations

import tempfile
import time
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from shopguard.cli.common import DbOption, handle_errors, open_store, out, progress
from shopguard.errors import ConfigError


class Engine(StrEnum):
    duckdb = "duckdb"
    spark = "spark"


def register(app: typer.Typer) -> None:
    app.command("features")(features)


@handle_errors
def features(
    out_path: Annotated[Path, typer.Option("--out", help="Parquet file to write the feature table to.")],
    db: DbOption = None,
    engine: Annotated[Engine, typer.Option("--engine", help="duckdb (one process) or spark.")] = Engine.duckdb,
    spark_master: Annotated[str, typer.Option("--spark-master", help="Spark master URL: local[2], yarn, "
                                              "spark://host:7077, k8s://… (local masters bind to 127.0.0.1).")
                            ] = "local[*]",
    parquet: Annotated[Path | None, typer.Option("--parquet", help="Spark: read this `shopguard export` folder "
                                                 "instead of exporting the store to a temporary one.")] = None,
    since: Annotated[datetime | None, typer.Option("--since", help="Rows from this time (ISO); history "
                                                   "before it still counts.")] = None,
    until: Annotated[datetime | None, typer.Option("--until", help="Up to this time (exclusive).")] = None,
) -> None:
    """Write the feature table of every event (keyed by event_id) with DuckDB or Spark: same columns."""
    import polars as pl

    from shopguard.features.batch import compute_features, feature_set

    if since is not None and until is not None and since >= until:
        raise ConfigError(f"--since {since} is not before --until {until}", field="since", value=str(since))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open_store(db, read_only=True) as store, progress(transient=True) as prog:
        task = prog.add_task("feature set", total=None)
        fs = feature_set(store, rings=False, until=until)
        if engine == Engine.duckdb:
            frame = compute_features(store, definitions=fs, since=since, until=until,
                                     on_step=lambda m: prog.update(task, description=m))
            cats = [c for c in frame.columns if frame.schema[c] == pl.Categorical]
            frame = frame.with_columns(pl.col(c).cast(pl.Utf8) for c in cats)
            frame.write_parquet(out_path)
            rows = frame.height
        else:
            from shopguard.features.spark import spark_features, spark_session, write_features
            from shopguard.store.parquet import export_parquet

            with tempfile.TemporaryDirectory(prefix="shopguard-export-") as tmp:
                root = parquet
                if root is None:
                    prog.update(task, description="exporting the store to Parquet")
                    root = Path(tmp) / "export"
                    export_parquet(store, root)
                prog.update(task, description=f"Spark ({spark_master})")
                from pyspark.sql import SparkSession

                ours = SparkSession.getActiveSession() is None  # a caller's session (tests, notebooks) stays up
                spark = spark_session(spark_master)
                try:
                    rows = write_features(spark_features(spark, root, fs, since=since, until=until), out_path)
                finally:
                    if ours:
                        spark.stop()
    out.print(f"wrote {rows:,} rows x {len(fs.columns)} features ({engine.value}) to {out_path} "
              f"in {time.perf_counter() - started:.1f} s")
