"""One store, one way of keeping identifiers: hashed with its key file by default, raw when its history is raw."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from shopguard.errors import ConfigError
from shopguard.events.privacy import key_file_for
from shopguard.store import EventStore
from shopguard.store.identifiers import store_pseudonymiser

EVENT = {"event_id": "e1", "type": "login", "user_id": "u", "ip": "10.0.0.1", "ts": datetime(2024, 1, 1)}


def test_a_fresh_store_is_pseudonymised_with_its_key_file(tmp_path: Path) -> None:
    with EventStore(tmp_path / "s.duckdb") as store:
        pseudo, note = store_pseudonymiser(store)
        assert pseudo is not None and note and "created pseudonym key" in note
        assert key_file_for(store.path).stat().st_mode & 0o777 == 0o600
        again, note2 = store_pseudonymiser(store)
        assert again is not None and again.key_id == pseudo.key_id and note2 is None
        with pytest.raises(ConfigError, match="hashed with key"):
            store_pseudonymiser(store, key="another-key-that-is-long-enough-0123456789")
        with pytest.raises(ConfigError, match="allow-raw"):
            store_pseudonymiser(store, allow_raw=True)


def test_a_store_with_raw_history_stays_raw(tmp_path: Path) -> None:
    with EventStore(tmp_path / "s.duckdb") as store:
        store.append_events([EVENT])  # written before any writer decided: identifiers as given
        pseudo, note = store_pseudonymiser(store)
        assert pseudo is None and note and "as given" in note
        assert not key_file_for(store.path).exists()
        assert store_pseudonymiser(store) == (None, None)
        with pytest.raises(ConfigError, match="raw"):
            store_pseudonymiser(store, key="a-key-that-is-long-enough-0123456789abcdef")


def test_simulated_and_explicitly_raw_stores(tmp_path: Path) -> None:
    with EventStore(tmp_path / "sim.duckdb") as store:
        assert store_pseudonymiser(store, simulated=True) == (None, None)
        assert store.setting("identifiers") == "raw"
    with EventStore(tmp_path / "raw.duckdb") as store:
        assert store_pseudonymiser(store, allow_raw=True) == (None, None)
        assert not key_file_for(store.path).exists()
