"""What ``damselfly init docker`` and ``damselfly init podman`` write: Docker's, or podman's,
skopeo's, buildah's and CRI-O's configuration pointed at the daemon's registry mirror
(Dragonfly's ``dfinit`` does the same).

Docker mirrors Docker Hub only: ``registry-mirrors`` in its ``daemon.json``. The others read
``registries.conf`` (TOML, v2): a ``[[registry]]`` with the mirror among its ``mirror``
entries. These clients do not say which registry they pull from, so the daemon forwards them
to its ``--registry-mirror``: name that same registry here. Both files keep every other
setting; a changed one is kept as ``<name>.bak`` (``registries.conf``'s comments live on only
there: the file is rewritten from its parsed form).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from damselfly.services.peer.oci import registry_url


def docker_config(current: str | None, mirror: str) -> str:
    """``daemon.json`` with ``mirror`` among its ``registry-mirrors`` (first when added).
    Raises ``ValueError`` for a file that is not a JSON object."""
    config = _parsed(current, json.loads, "JSON")
    mirrors = config.setdefault("registry-mirrors", [])
    if not isinstance(mirrors, list):
        raise ValueError("registry-mirrors in daemon.json is not a list")
    mirror = registry_url(mirror)
    if mirror not in mirrors:
        mirrors.insert(0, mirror)
    return json.dumps(config, indent=2) + "\n"


def podman_config(current: str | None, mirror: str, registry: str) -> str:
    """``registries.conf`` whose ``[[registry]]`` for ``registry`` has ``mirror`` as its
    first mirror (plain http ones are ``insecure``). Raises ``ValueError`` for a file that is
    not TOML or a ``registry`` that is not a registry."""
    import tomllib

    import tomli_w

    config = _parsed(current, tomllib.loads, "TOML")
    if "registries" in config:
        raise ValueError("it is a version 1 registries.conf ([registries.search] and the "
                         "like), which cannot take mirrors; move it to version 2 "
                         "([[registry]] tables) first")
    mirror_url, server = registry_url(mirror), registry_url(registry)
    location = urlsplit(server).netloc
    if location == "registry-1.docker.io":
        location = "docker.io"
    entries = config.setdefault("registry", [])
    entry = next((e for e in entries if e.get("prefix", e.get("location")) == location), None)
    if entry is None:
        entry = {"location": location}
        if server.startswith("http://"):
            entry["insecure"] = True
        entries.append(entry)
    wanted = {"location": urlsplit(mirror_url).netloc,
              **({"insecure": True} if mirror_url.startswith("http://") else {})}
    mirrors = [m for m in entry.get("mirror", []) if m.get("location") != wanted["location"]]
    entry["mirror"] = [wanted, *mirrors]
    return tomli_w.dumps(config)


def _parsed(current: str | None, parse: Any, kind: str) -> dict[str, Any]:
    if not current or not current.strip():
        return {}
    try:
        config = parse(current)
    except ValueError as exc:  # json.JSONDecodeError and tomllib.TOMLDecodeError are
        raise ValueError(f"the file is not valid {kind} ({exc}); fix it or move it away, "
                         "then run this again") from None
    if not isinstance(config, dict):
        raise ValueError(f"the file is {kind} but not an object")
    return config
