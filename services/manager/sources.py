"""Where ``damselfly sql`` and ``damselfly dashboards`` read from.

DuckDB lets one process open a file for writing and no one else while it does, so a
running manager is asked over HTTP (``POST /api/v1/sql``, read-only statements only) and a
stopped one's file is opened read-only. With neither ``--db`` nor ``--manager``, the
cluster directory's ``cluster.json`` (written by ``damselfly up``) names the manager; if
it does not answer, its file is read directly. The SQL door is root's: the CLI signs in as
``client.token_for`` says.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Protocol

import duckdb

from damselfly.projections import store
from damselfly.projections.store import Result
from damselfly.services.manager.client import call, token_for

DB_NAME = "damselfly.duckdb"


class Source(Protocol):
    def query(self, sql: str) -> Result: ...


class FileSource:
    """A projection file read directly (the manager must not be running on it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def query(self, sql: str) -> Result:
        """Raises ``ValueError`` for a missing/locked file or a bad query."""
        if not self.path.exists():
            raise ValueError(f"no projection database at {self.path}")
        try:
            con = store.connect(self.path, read_only=True)
        except duckdb.IOException as exc:
            raise ValueError(f"{self.path} is held by a running manager; use --manager URL "
                             f"({str(exc).splitlines()[0]})") from None
        try:
            store.check_read_only(sql)
            return store.query(con, sql)
        except duckdb.Error as exc:
            raise ValueError(str(exc).splitlines()[0]) from None
        finally:
            con.close()


class ManagerSource:
    """A running manager's live projections, over its HTTP API, as the caller the login
    arguments name."""

    def __init__(self, url: str, login: argparse.Namespace, data_dir: Path) -> None:
        self.url = url.rstrip("/")
        self.login = login
        self.data_dir = data_dir
        self._token = ""

    def call(self, method: str, path: str, body: object | None = None) -> object:
        """Raises ``ValueError`` with the manager's reason, ``OSError`` when unreachable."""
        if not self._token:
            self._token = token_for(self.url, self.login, self.data_dir)
        return call(self.url, method, path, body, self._token)

    def answers(self) -> bool:
        try:
            call(self.url, "GET", "/healthz")
            return True
        except (OSError, ValueError):
            return False

    def query(self, sql: str) -> Result:
        reply = self.call("POST", "/api/v1/sql", {"sql": sql})
        assert isinstance(reply, dict)
        return Result(reply["columns"], [tuple(r) for r in reply["rows"]], reply["truncated"])


def manager_url(data_dir: Path) -> str | None:
    """The manager's URL recorded in ``DIR/cluster.json``, if any."""
    path = data_dir / "cluster.json"
    if not path.exists():
        return None
    manager = json.loads(path.read_text()).get("services", {}).get("manager", {})
    url = manager.get("url")
    return str(url) if url else None


def resolve(db: Path | None, manager: str | None, data_dir: Path,
            login: argparse.Namespace) -> Source:
    """Pick the source the user asked for, else the cluster's manager, else its file."""
    if db is not None:
        return FileSource(db)
    if manager is not None:
        return ManagerSource(manager, login, data_dir)
    url = manager_url(data_dir)
    if url is not None:
        live = ManagerSource(url, login, data_dir)
        if live.answers():
            return live
    return FileSource(data_dir / "manager" / DB_NAME)
