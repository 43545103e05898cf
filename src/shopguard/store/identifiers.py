"""How one store keeps personal identifiers, decided once and then kept: keyed hashes or raw values.

Features link events through identifiers (the same device, IP or card). If a store's history held raw
IPs and new events arrived hashed (or hashed with another key), nothing would link any more and every
"new device" feature would fire. So the first writer records the store's mode in its ``settings``
(``identifiers``: ``pseudonymised:<key id>`` or ``raw``) and every later writer (ingest, the service)
follows it:

- a fresh store is pseudonymised with the key file beside it (``events.privacy.pseudonymiser_for_store``:
  created once, mode 0600), unless a key is configured or raw identifiers are asked for;
- a store filled with raw identifiers (``--allow-raw-identifiers``, simulated shops, or stores from
  before pseudonymisation was the default) stays raw, and says so;
- a store hashed with one key refuses another key, naming both key ids.
"""

from __future__ import annotations

from shopguard.errors import ConfigError
from shopguard.events.privacy import Pseudonymiser, key_file_for, pseudonymiser_for_store
from shopguard.store.duckdb import EventStore

SETTING = "identifiers"
RAW = "raw"


def store_pseudonymiser(store: EventStore, *, key: str | Pseudonymiser | None = None, allow_raw: bool = False,
                        simulated: bool = False) -> tuple[Pseudonymiser | None, str | None]:
    """The pseudonymiser writers of ``store`` must use (``None``: raw), and a note to show once.

    ``key``: a configured key (text, or a ``Pseudonymiser`` built from it); else the store's key file.

    ``simulated``: the writer is the shop simulator, whose identifiers are synthetic: a fresh store keeps
    them raw, so replays of simulated traffic link to their history.
    """
    mode = store.setting(SETTING)
    if isinstance(key, Pseudonymiser):
        given: Pseudonymiser | None = key
        key = "configured"  # only its truth value is read below
    else:
        given = Pseudonymiser(key) if key else None
    if mode is None:
        has_events = store.count_events() > 0
        if key is None and (allow_raw or simulated or (has_events and not key_file_for(store.path).exists())):
            store.set_setting(SETTING, RAW)
            note = None
            if has_events and not (allow_raw or simulated):
                note = ("this store already holds events with identifiers as given (written before identifiers "
                        "were pseudonymised by default): new events keep them as given so they still link; "
                        "ingest into a new store to pseudonymise")
            return None, note
        pseudo, note = (given, None) if given else pseudonymiser_for_store(store.path, allow_raw=False)
        assert pseudo is not None
        store.set_setting(SETTING, f"pseudonymised:{pseudo.key_id}")
        return pseudo, note
    if mode == RAW:
        if key:
            raise ConfigError("this store keeps identifiers as given (raw); a pseudonym key would stop new events "
                              "from linking to its history: unset the key, or ingest into a new store",
                              field="pseudonym_key")
        return None, None
    expected = mode.removeprefix("pseudonymised:")
    if allow_raw and not key:
        raise ConfigError(f"this store's identifiers are hashed with key {expected}: raw identifiers would not link "
                          "to them (drop --allow-raw-identifiers)", field="allow_raw_identifiers")
    pseudo, note = (given, None) if given else pseudonymiser_for_store(store.path, allow_raw=False)
    assert pseudo is not None
    if pseudo.key_id != expected:
        raise ConfigError(f"this store's identifiers were hashed with key {expected}, but the key in use is "
                          f"{pseudo.key_id}: restore {key_file_for(store.path)} or set the original key "
                          "(SHOPGUARD_PSEUDONYM_KEY)", field="pseudonym_key", value=pseudo.key_id)
    return pseudo, note
