"""Typed settings with defaults that work.

Values come from keyword arguments, then environment variables prefixed ``SHOPGUARD_`` (for example
``SHOPGUARD_DB=/data/shop.duckdb``), then these defaults. Unknown keys are rejected.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HOME = Path("shopguard-data")


class Settings(BaseSettings):
    """Where shopguard keeps its things, and the defaults every command starts from."""

    model_config = SettingsConfigDict(env_prefix="SHOPGUARD_", extra="forbid")

    home: Path = Field(DEFAULT_HOME, description="Folder for the store, models and reports.")
    db: Path | None = Field(None, description="DuckDB file of the event store; default HOME/shop.duckdb.")
    pseudonym_key: str | None = Field(
        None,
        description="Secret for keyed hashing of personal identifiers (IP, email, phone, device, address). "
        "Without one, identifiers are stored as given.",
    )
    seed: int = 7

    @property
    def db_path(self) -> Path:
        return self.db if self.db is not None else self.home / "shop.duckdb"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"


def get_settings(**overrides: object) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
