"""gridapi: a REST API for grid-based community governance (网格化服务管理)."""

__version__ = "0.1.0"


def create_app(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Return the Flask application (see gridapi.app.create_app)."""
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)
