"""Running the API under gunicorn with settings suited to the engine."""

from __future__ import annotations

import os
from typing import Any

from gunicorn.app.base import BaseApplication

from .config import Settings
from .db import make_engine, spatial_extension_version


def default_workers(settings: Settings) -> int:
    """Return the worker count: 2 × cores + 1 on PostGIS (at most 9); cores on SQLite.

    SQLite serialises writers, so more processes only add lock waits.
    """
    cores = os.cpu_count() or 1
    if settings.engine_name == "sqlite":
        return max(1, min(cores, 4))
    return min(2 * cores + 1, 9)


class _Gunicorn(BaseApplication):
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):  # type: ignore[no-untyped-def]
        from .app import create_app

        return create_app(self.settings)


def _post_worker_init(worker: Any) -> None:
    # Build the routing index before the first request, not during it.
    app = worker.wsgi
    with app.app_context():
        app.extensions["gridapi"].routing.snapshot()


def run(settings: Settings, *, host: str, port: int, workers: int = 0) -> None:
    """Serve until interrupted. Raises SpatialExtensionMissing before starting."""
    engine = make_engine(settings.database_url, spatialite_path=settings.spatialite_path)
    spatial_extension_version(engine)
    engine.dispose()
    options = {
        "bind": f"{host}:{port}",
        "workers": workers or default_workers(settings),
        "worker_class": "sync",
        "timeout": 120,
        "graceful_timeout": 20,
        "keepalive": 5,
        "accesslog": "-",
        "errorlog": "-",
        "loglevel": settings.log_level.lower(),
        "post_worker_init": _post_worker_init,
    }
    _Gunicorn(settings, options).run()
