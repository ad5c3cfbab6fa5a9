"""``damselfly init docker`` and ``damselfly init podman``: point Docker, or podman, skopeo,
buildah and CRI-O, at the daemon's registry mirror (Dragonfly's ``dfinit`` does the same).

Docker mirrors Docker Hub only: ``registry-mirrors`` in its ``daemon.json``. The others read
``registries.conf`` (TOML, v2): a ``[[registry]]`` with the mirror among its ``mirror``
entries. These clients do not say which registry they pull from, so the daemon forwards them
to its ``--registry-mirror``: name that same registry here. Both files keep every other
setting; a changed one is kept as ``<name>.bak`` (``registries.conf``'s comments live on only
there: the file is rewritten from its parsed form).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from damselfly.services.peer.configfiles import ConfigFile, apply
from damselfly.services.peer.containerd import DEFAULT_MIRROR
from damselfly.services.peer.oci import registry_url

DAEMON_JSON: Final = Path("/etc/docker/daemon.json")
REGISTRIES_CONF: Final = Path("/etc/containers/registries.conf")


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
    import tomllib  # only here: `damselfly get` loads this module's parser too

    import tomli_w

    config = _parsed(current, tomllib.loads, "TOML")
    mirror_url, server = registry_url(mirror), registry_url(registry)
    location = urlsplit(server).netloc
    if location == "registry-1.docker.io":
        location = "docker.io"
    entries = config.setdefault("registry", [])
    entry = next((e for e in entries if e.get("location", e.get("prefix")) == location), None)
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


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def register(runtimes: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``docker`` and ``podman`` to ``damselfly init``."""
    d = runtimes.add_parser("docker", help="add the mirror to Docker's registry-mirrors "
                                           "(Docker Hub only)")
    d.add_argument("--mirror", default=DEFAULT_MIRROR,
                   help=f"the daemon's proxy URL (default {DEFAULT_MIRROR})")
    d.add_argument("--daemon-json", type=Path, default=DAEMON_JSON,
                   help=f"Docker's daemon.json (default {DAEMON_JSON})")
    d.set_defaults(run=_run_docker)
    p = runtimes.add_parser("podman", help="add the mirror to registries.conf (podman, "
                                           "skopeo, buildah, CRI-O)")
    p.add_argument("--registry", default="docker.io",
                   help="the registry the daemon's --registry-mirror fronts (default docker.io)")
    p.add_argument("--mirror", default=DEFAULT_MIRROR,
                   help=f"the daemon's proxy URL (default {DEFAULT_MIRROR})")
    p.add_argument("--registries-conf", type=Path, default=REGISTRIES_CONF,
                   help=f"the registries.conf to edit (default {REGISTRIES_CONF})")
    p.set_defaults(run=_run_podman)


def _run_docker(args: argparse.Namespace) -> int:
    try:
        text = docker_config(_read(args.daemon_json), args.mirror)
    except ValueError as exc:
        raise ValueError(f"{args.daemon_json}: {exc}") from None
    for line in apply([ConfigFile(args.daemon_json, text)]):
        print(line)
    print("Docker reads it when it starts: systemctl restart docker")
    return 0


def _run_podman(args: argparse.Namespace) -> int:
    try:
        text = podman_config(_read(args.registries_conf), args.mirror, args.registry)
    except ValueError as exc:
        raise ValueError(f"{args.registries_conf}: {exc}") from None
    for line in apply([ConfigFile(args.registries_conf, text)]):
        print(line)
    print(f"pulls of {args.registry} images now go through {args.mirror}; the daemon must "
          f"front that registry (--registry-mirror)")
    return 0
