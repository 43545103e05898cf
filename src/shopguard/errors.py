"""One exception root for shopguard.

Every subclass carries the HTTP status the API answers with, and messages name the field and echo the
bad value, so the CLI can print them as they are and the API can map them in one handler.
"""

from __future__ import annotations

from typing import Any


class ShopguardError(Exception):
    """Root of every error shopguard raises on purpose."""

    status_code: int = 500

    def __init__(self, message: str, *, field: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.value = value

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": type(self).__name__, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        if self.value is not None:
            out["value"] = repr(self.value)[:200]
        return out


class ValidationFailed(ShopguardError):
    """Input that breaks a rule of the event schema, a mapping file, a rule file or a config."""

    status_code = 422


class ConfigError(ShopguardError):
    """A configuration or mapping file that cannot be used."""

    status_code = 400


class NotFound(ShopguardError):
    status_code = 404


class Conflict(ShopguardError):
    status_code = 409


class Unauthorized(ShopguardError):
    status_code = 401


class Forbidden(ShopguardError):
    status_code = 403


class RateLimited(ShopguardError):
    status_code = 429


class ModelError(ShopguardError):
    """A model artifact that is missing, corrupted or incompatible with this data."""

    status_code = 409


class DataError(ShopguardError):
    """The store holds too little or the wrong data for what was asked (e.g. no labels to train on)."""

    status_code = 400
