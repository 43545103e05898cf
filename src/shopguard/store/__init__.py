"""The event store: the only part of shopguard that talks to DuckDB."""

from shopguard.store.duckdb import EventStore, open_store

__all__ = ["EventStore", "open_store"]
