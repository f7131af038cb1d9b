"""Configuration from GRIDAPI_* environment variables (documented in the README's table)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path


def _default_database_url() -> str:
    return f"sqlite:///{Path('var') / 'gridapi.sqlite3'}"


@dataclass
class Settings:
    """Every setting the application reads; each maps to GRIDAPI_<NAME>."""

    database_url: str = field(default_factory=_default_database_url)
    data_dir: str = "var"
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 0  # 0 = chosen from the engine and the number of cores
    log_level: str = "INFO"
    max_body_mb: float = 32.0
    routing_snap_meters: float = 50.0
    routing_refresh_seconds: float = 2.0
    grid_tolerance_m2: float = 1.0
    spatialite_path: str = "mod_spatialite"
    db_pool_size: int = 5
    db_statement_timeout_ms: int = 30000

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> Settings:
        """Return settings read from GRIDAPI_* variables; ``overrides`` win over the environment.

        Raises ValueError naming the variable when a value has the wrong type.
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            key = f"GRIDAPI_{f.name.upper()}"
            if key not in env or env[key] == "":
                continue
            raw = env[key]
            kind = type(f.default) if f.default is not f.default_factory else str  # type: ignore[comparison-overlap]
            try:
                if f.type in ("int", int) or kind is int:
                    values[f.name] = int(raw)
                elif f.type in ("float", float) or kind is float:
                    values[f.name] = float(raw)
                else:
                    values[f.name] = raw
            except ValueError as exc:
                raise ValueError(f"{key}={raw!r} is not a valid {f.type}") from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    @property
    def engine_name(self) -> str:
        """'sqlite' or 'postgis', from the database URL."""
        return "sqlite" if self.database_url.startswith("sqlite") else "postgis"
