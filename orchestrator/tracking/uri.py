"""Tracking URIs: the default one, and the one reader of ``sqlite:///`` URIs.

Several places need the database file behind a SQLite URI (to check it is writable before any
compute, to refuse opening a missing one, which would create it, to make it absolute before
trials run in other working directories); they all read it here, the way SQLAlchemy (which MLflow
hands the URI to) does: percent-escapes decoded, the ``?query`` dropped, relative to the working
directory. Imports nothing heavy.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote

__all__ = [
    "DEFAULT_TRACKING_URI",
    "SQLITE_PREFIX",
    "absolute_tracking_uri",
    "sqlite_artifact_root",
    "sqlite_file",
    "sqlite_path",
]

DEFAULT_TRACKING_URI = "sqlite:///./trilevel-mlflow.db"  # every command's default; relative to where it runs
SQLITE_PREFIX = "sqlite:///"


def sqlite_path(tracking_uri: str) -> str | None:
    """The database path of a ``sqlite:///`` URI as written (maybe relative); None for other URIs and in-memory."""
    if not tracking_uri.startswith(SQLITE_PREFIX):
        return None
    path = unquote(tracking_uri[len(SQLITE_PREFIX) :].split("?", 1)[0])
    return None if path in ("", ":memory:") else path


def sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, absolute; None for other URIs and in-memory stores."""
    path = sqlite_path(tracking_uri)
    return None if path is None else Path(path).expanduser().absolute()


def absolute_tracking_uri(tracking_uri: str) -> str:
    """`sqlite:///relative.db` → `sqlite:////abs/relative.db` (and `~` expanded): trials run in other
    working directories, and nothing expands `~` inside a URI for us."""
    path = sqlite_path(tracking_uri)
    if path is None or os.path.isabs(path):
        return tracking_uri
    raw, sep, query = tracking_uri[len(SQLITE_PREFIX) :].partition("?")
    return SQLITE_PREFIX + os.path.abspath(os.path.expanduser(raw)) + sep + query


def sqlite_artifact_root(tracking_uri: str) -> str | None:
    """`mlartifacts/` beside a SQLite database (None for other stores).

    MLflow's own default is `./mlruns` of whichever directory the first run happened to start in,
    which scatters one store's artifacts across working directories.
    """
    database = sqlite_file(tracking_uri)
    return None if database is None else (database.parent / "mlartifacts").as_uri()
