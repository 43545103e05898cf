"""Pseudonymisation of personal identifiers at ingestion (keyed hash, HMAC-SHA256).

IP addresses, e-mails, phones, device ids, addresses and payment instruments (``schema.PERSONAL_FIELDS``)
are replaced by ``p_`` + the first 24 hex digits (96 bits) of HMAC-SHA256(key, value) before they reach
the store. The same value always maps to the same pseudonym under one key, so every link the detectors
need (accounts sharing a device, cards reused across users) survives, while the raw value cannot be
recovered without the key, and without the key nobody can test a guessed value against the store (which
an unkeyed hash would allow for small spaces such as IPv4 addresses or phone numbers).

E-mails are lower-cased and every value is trimmed first, so ``A@x.com `` and ``a@x.com`` link.

>>> p = Pseudonymiser("a-secret-key-of-32-characters!!!")
>>> p.pseudonym("10.0.0.1") == p.pseudonym(" 10.0.0.1 ")
True
>>> p.pseudonym("10.0.0.1").startswith("p_"), len(p.pseudonym("10.0.0.1"))
(True, 26)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

import polars as pl

from shopguard.errors import ConfigError
from shopguard.events.schema import PERSONAL_FIELDS

PREFIX = "p_"
DIGEST_HEX = 24  # 96 bits: no collisions in practice for billions of distinct values
MIN_KEY_CHARS = 16
DEFAULT_KEY_ENV = "SHOPGUARD_PSEUDONYM_KEY"
_LOWERCASE = frozenset({"email"})


class Pseudonymiser:
    """Keyed hashing of the personal fields of events (one record or a whole frame).

    The key is a secret string of at least 16 characters. Rotating it changes every pseudonym: events
    ingested under the new key do not link to those ingested under the old one (see docs/ingest.md).
    """

    def __init__(self, key: str | bytes, fields: tuple[str, ...] = PERSONAL_FIELDS) -> None:
        raw = key.encode() if isinstance(key, str) else bytes(key)
        if len(raw) < MIN_KEY_CHARS:
            raise ConfigError(
                f"pseudonym key too short ({len(raw)} characters; use at least {MIN_KEY_CHARS}, e.g. "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)", field="pseudonym_key",
            )
        self._key = raw
        self.fields = tuple(fields)

    @classmethod
    def from_env(cls, var: str = DEFAULT_KEY_ENV, *, required: bool = False) -> Pseudonymiser | None:
        """The pseudonymiser for the key in environment variable ``var``; None when unset (unless required)."""
        key = os.environ.get(var)
        if not key:
            if required:
                raise ConfigError(f"environment variable {var} is not set (it should hold the pseudonym key)",
                                  field="pseudonym_key", value=var)
            return None
        return cls(key)

    @classmethod
    def from_settings(cls) -> Pseudonymiser | None:
        """From ``config.Settings.pseudonym_key`` (env ``SHOPGUARD_PSEUDONYM_KEY``); None when not configured."""
        from shopguard.config import get_settings

        key = get_settings().pseudonym_key
        return cls(key) if key else None

    @property
    def key_id(self) -> str:
        """A short public fingerprint of the key, to tell which key a store was written with."""
        return hmac.new(self._key, b"shopguard-key-id", hashlib.sha256).hexdigest()[:12]

    def pseudonym(self, value: Any, field: str = "") -> str:
        """The pseudonym of one value (trimmed; e-mails lower-cased)."""
        text = str(value).strip()
        if field in _LOWERCASE:
            text = text.lower()
        return PREFIX + hmac.digest(self._key, text.encode(), "sha256").hex()[:DIGEST_HEX]

    def apply_record(self, record: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``record`` with its personal fields pseudonymised (empty values stay empty)."""
        out = dict(record)
        for name in self.fields:
            v = out.get(name)
            if v is not None and str(v).strip() != "":
                out[name] = self.pseudonym(v, name)
        return out

    def apply_series(self, s: pl.Series, field: str = "") -> pl.Series:
        """Pseudonymise a column, hashing each distinct value once (columns repeat values a lot)."""
        if s.dtype != pl.Utf8:
            s = s.cast(pl.Utf8)
        uniques = s.drop_nulls().unique()
        if uniques.len() == 0:
            return s
        key, lower = self._key, field in _LOWERCASE
        # hmac.digest is the one-shot C path: several times faster than hmac.new per value.
        mapping = {
            v: PREFIX + hmac.digest(key, (v.strip().lower() if lower else v.strip()).encode(), "sha256").hex()[:DIGEST_HEX]
            for v in uniques.to_list() if v.strip() != ""
        }
        return s.replace(mapping).alias(s.name)

    def apply_frame(self, df: pl.DataFrame) -> pl.DataFrame:
        """``df`` with every personal field it has pseudonymised."""
        cols = [self.apply_series(df[name], name) for name in self.fields if name in df.columns]
        return df.with_columns(cols) if cols else df


# ---------------------------------------------------------------------------------------------------
# Safe by default: a key file next to the store
# ---------------------------------------------------------------------------------------------------
KEY_FILE_SUFFIX = ".pseudonym-key"


def key_file_for(db: str | os.PathLike[str]) -> Path:
    """Where the store's pseudonym key lives: ``<store>.pseudonym-key`` beside it (mode 0600)."""
    p = Path(db)
    return p.with_name(p.name + KEY_FILE_SUFFIX)


def pseudonymiser_for_store(db: str | os.PathLike[str] | None, *, key: str | None = None,
                            allow_raw: bool = False) -> tuple[Pseudonymiser | None, str | None]:
    """The pseudonymiser ingestion and the service use for store ``db``, and a note to show once.

    In order: an explicit ``key`` (``SHOPGUARD_PSEUDONYM_KEY``); ``allow_raw`` (``--allow-raw-identifiers``:
    identifiers stored as given, None); the key file beside the store; else a new random key is written to
    that file (mode 0600, never overwritten) and the note says so. The note is None when nothing was created.
    """
    if key:
        return Pseudonymiser(key), None
    if allow_raw:
        return None, None
    if db is None or str(db) == ":memory:":
        return Pseudonymiser(secrets.token_urlsafe(32)), None  # a throw-away store: a throw-away key
    path = key_file_for(db)
    if path.exists():
        return Pseudonymiser(_read_key_file(path)), None
    path.parent.mkdir(parents=True, exist_ok=True)
    new = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return Pseudonymiser(_read_key_file(path)), None
    with os.fdopen(fd, "w") as fh:
        fh.write(new + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    note = (f"created pseudonym key {path} (mode 0600): IPs, devices, cards, addresses, e-mails and phones are "
            f"stored as keyed hashes. Keep this file with the store and back it up (losing it means new events no "
            f"longer link to old ones); set ${DEFAULT_KEY_ENV} to use your own key, or pass "
            "--allow-raw-identifiers to store raw values.")
    return Pseudonymiser(new), note


def _read_key_file(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            os.chmod(path, 0o600)  # a key readable by others protects nothing
        key = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"pseudonym key file {path} cannot be read: {exc}", field="pseudonym_key",
                          value=str(path)) from None
    if len(key) < MIN_KEY_CHARS:
        raise ConfigError(f"pseudonym key file {path} holds a key shorter than {MIN_KEY_CHARS} characters",
                          field="pseudonym_key", value=str(path))
    return key
