"""How the CLI talks to a running manager: JSON over HTTP with a bearer token.

The token is ``--token`` (or ``DAMSELFLY_TOKEN``, e.g. a personal access token); else the
CLI signs in as ``--user`` with the password in ``DAMSELFLY_PASSWORD`` (asked for on a
terminal); else, against the manager of a ``damselfly up`` data dir, as root with the
password ``up`` keeps in ``DIR/root.password``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

TOKEN_ENV = "DAMSELFLY_TOKEN"
PASSWORD_ENV = "DAMSELFLY_PASSWORD"


def root_password_file(data_dir: Path) -> Path:
    """Where ``up`` keeps the manager's first root password (when the environment gives none);
    the CLI signs in with it against this cluster's manager."""
    return data_dir / "root.password"


class ManagerError(ValueError):
    """The manager refused a request; ``status`` is its HTTP status."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"manager said {status}: {detail}")
        self.status = status


def call(base: str, method: str, path: str, body: object = None, token: str = "",
         timeout: float = 30.0) -> Any:
    """Raises ``ManagerError`` with the manager's one-line reason, ``OSError`` if unreachable."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base.rstrip("/") + path, data=data, method=method,
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read() or b"{}").get("detail", exc.reason)
        except ValueError:
            detail = exc.reason
        raise ManagerError(exc.code, str(detail)) from None


def add_login_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--token", default=os.environ.get(TOKEN_ENV, ""),
                   help=f"session or personal access token (default ${TOKEN_ENV})")
    p.add_argument("--user", default="", help=f"sign in as this user (password in "
                                               f"${PASSWORD_ENV})")


def sign_in(base: str, user: str, password: str) -> str:
    """A session token. Raises ``ManagerError`` (401 for a wrong password)."""
    return str(call(base, "POST", "/api/v1/users/signin", {"name": user, "password": password})
               ["token"])


def token_for(base: str, args: argparse.Namespace, data_dir: Path) -> str:
    """The token the command's arguments give, signing in when they name a user or when the
    data dir holds ``up``'s root password. Raises ``ValueError`` when there is none."""
    if args.token:
        return str(args.token)
    if args.user:
        password = os.environ.get(PASSWORD_ENV) or (
            getpass.getpass(f"password of {args.user}: ") if sys.stdin.isatty() else "")
        if not password:
            raise ValueError(f"no password for {args.user}: set {PASSWORD_ENV}")
        return sign_in(base, args.user, password)
    kept = root_password_file(data_dir)
    if kept.exists():
        return sign_in(base, "root", kept.read_text().strip())
    raise ValueError(f"the manager needs a login: give --token (or set {TOKEN_ENV}), or --user "
                     f"with {PASSWORD_ENV}")
