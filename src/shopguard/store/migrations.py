"""Schema migrations of the store, applied in order and recorded in ``schema_migrations``.

Never edit a released migration: append a new one. Each is idempotent SQL.
"""

from __future__ import annotations

from shopguard.events.schema import COLUMNS


def _events_table() -> str:
    cols = ",\n  ".join(
        f"{c.name} {c.sql_type}" + (" PRIMARY KEY" if c.name == "event_id" else "")
        + (" NOT NULL" if c.name in ("ts", "type") else "")
        for c in COLUMNS
    )
    return f"CREATE TABLE IF NOT EXISTS events (\n  {cols},\n  ingested_at TIMESTAMP DEFAULT current_timestamp\n)"


MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "events, labels, decisions",
        [
            _events_table(),
            # One label per (entity, scenario). labeled_at is when the label became known: features and
            # evaluation only use labels known before the moment they look at (label delay).
            """CREATE TABLE IF NOT EXISTS labels (
                entity_kind VARCHAR NOT NULL,
                entity_id VARCHAR NOT NULL,
                label INTEGER NOT NULL,
                scenario VARCHAR NOT NULL DEFAULT '',
                labeled_at TIMESTAMP NOT NULL,
                source VARCHAR NOT NULL DEFAULT 'ingest',
                PRIMARY KEY (entity_kind, entity_id, scenario)
            )""",
            """CREATE TABLE IF NOT EXISTS decisions (
                event_id VARCHAR PRIMARY KEY,
                decided_at TIMESTAMP NOT NULL,
                score DOUBLE,
                probability DOUBLE,
                risk_level VARCHAR,
                action VARCHAR,
                reasons JSON,
                rule_hits JSON,
                model_version VARCHAR,
                latency_ms DOUBLE
            )""",
            "CREATE INDEX IF NOT EXISTS events_user_ts ON events (user_id, ts)",
        ],
    ),
]

LATEST_VERSION = MIGRATIONS[-1][0]

# Migration 2 (service): API keys (only a hash of each key is kept), the review queue of cases.
MIGRATIONS.append(
    (
        2,
        "api_keys, cases",
        [
            """CREATE TABLE IF NOT EXISTS api_keys (
                key_id VARCHAR PRIMARY KEY,
                key_hash VARCHAR NOT NULL,
                scopes VARCHAR NOT NULL,
                name VARCHAR NOT NULL DEFAULT '',
                created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
                revoked_at TIMESTAMP
            )""",
            """CREATE TABLE IF NOT EXISTS cases (
                case_id VARCHAR PRIMARY KEY,
                event_id VARCHAR NOT NULL,
                user_id VARCHAR,
                opened_at TIMESTAMP NOT NULL,
                status VARCHAR NOT NULL DEFAULT 'open',
                risk_level VARCHAR,
                action VARCHAR,
                score DOUBLE,
                scenario VARCHAR,
                reasons JSON,
                rule_hits JSON,
                resolved_at TIMESTAMP,
                resolution_label INTEGER,
                resolved_by VARCHAR,
                note VARCHAR
            )""",
            "CREATE INDEX IF NOT EXISTS cases_status ON cases (status, opened_at)",
        ],
    )
)

# Migration 3: what a source's mapping says about the whole store (e.g. `label.unlabeled`).
MIGRATIONS.append(
    (
        3,
        "settings",
        ["CREATE TABLE IF NOT EXISTS settings (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL, "
         "updated_at TIMESTAMP NOT NULL DEFAULT current_timestamp)"],
    )
)
LATEST_VERSION = MIGRATIONS[-1][0]

# Migration 4 (erasure): tombstones of erased users (a keyed hash of the user id, never the id itself), so
# re-ingesting a source or the service leaves them out, and the audit trail of erasures (who, when, which
# tombstone, what was removed).
MIGRATIONS.append(
    (
        4,
        "tombstones, erasure_audit",
        [
            """CREATE TABLE IF NOT EXISTS tombstones (
                tombstone_id VARCHAR PRIMARY KEY,
                erased_at TIMESTAMP NOT NULL,
                key_ref VARCHAR NOT NULL
            )""",
            """CREATE TABLE IF NOT EXISTS erasure_audit (
                audited_at TIMESTAMP NOT NULL,
                action VARCHAR NOT NULL,
                tombstone_id VARCHAR NOT NULL,
                by_key VARCHAR,
                detail VARCHAR
            )""",
        ],
    )
)
LATEST_VERSION = MIGRATIONS[-1][0]
