"""``damselfly init containerd``: point containerd at the daemon's registry mirror by writing
a ``hosts.toml`` per registry (or ``_default`` for all of them) under its certs.d folder.

containerd tries each ``[host]`` in order and falls back to ``server``. The mirror learns
which registry a request is for from the ``X-Dragonfly-Registry`` header the file sets for
a named registry, else from the ``ns`` query parameter containerd adds."""

from __future__ import annotations

import argparse
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from damselfly.services.peer.oci import DOCKER_HUB, REGISTRY_HEADER, registry_url

DEFAULT_CERTS_DIR: Final = Path("/etc/containerd/certs.d")
DEFAULT_MIRROR: Final = "http://127.0.0.1:4001"
ALL_REGISTRIES: Final = "_default"


@dataclass(frozen=True)
class HostsFile:
    path: Path
    text: str


def registry_server(registry: str) -> tuple[str, str]:
    """A registry as a user names it → (its certs.d folder name, its server URL).
    Raises ``ValueError``."""
    if registry == "docker.io":
        return registry, DOCKER_HUB
    url = registry_url(registry)
    return urlsplit(url).netloc, url


def hosts_toml(mirror: str, server: str = "") -> str:
    """One ``hosts.toml``: pull and resolve through ``mirror``, else from ``server``. A named
    server also travels to the mirror in ``X-Dragonfly-Registry``, scheme and all."""
    text = ("# Written by damselfly init containerd: pulls go through the peer daemon's mirror.\n"
            + (f'server = "{server}"\n\n' if server else "")
            + f'[host."{mirror}"]\n  capabilities = ["pull", "resolve"]\n')
    if server:
        text += f'  [host."{mirror}".header]\n    {REGISTRY_HEADER} = ["{server}"]\n'
    return text


def plan(certs_dir: Path, mirror: str, registries: list[str]) -> list[HostsFile]:
    """The files to write: one per registry, or ``_default`` for all when none is named.
    Raises ``ValueError`` for a malformed registry or mirror."""
    mirror = registry_url(mirror)
    if not registries:
        return [HostsFile(certs_dir / ALL_REGISTRIES / "hosts.toml", hosts_toml(mirror))]
    files = []
    for registry in registries:
        name, server = registry_server(registry)
        files.append(HostsFile(certs_dir / name / "hosts.toml", hosts_toml(mirror, server)))
    return files


def apply(files: list[HostsFile]) -> list[str]:
    """Write each file atomically, keeping a different previous one as ``hosts.toml.bak``;
    returns one line per file saying what changed. Raises ``OSError``."""
    changes = []
    for f in files:
        old = f.path.read_text() if f.path.exists() else None
        if old == f.text:
            changes.append(f"unchanged {f.path}")
            continue
        f.path.parent.mkdir(parents=True, exist_ok=True)
        if old is not None:
            f.path.with_suffix(".toml.bak").write_text(old)
        tmp = f.path.with_name(f".hosts.toml.{secrets.token_hex(4)}")
        tmp.write_text(f.text)
        os.replace(tmp, f.path)
        changes.append(f"created {f.path}" if old is None else
                       f"updated {f.path} (previous kept as {f.path.name}.bak)")
    return changes


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``damselfly init containerd`` to the ``damselfly`` parser."""
    init = sub.add_parser("init", help="configure a container runtime to pull through the "
                                       "daemon's registry mirror")
    runtimes = init.add_subparsers(dest="runtime", required=True)
    c = runtimes.add_parser("containerd", help="write containerd hosts.toml files")
    c.add_argument("--registry", action="append", default=[],
                   help="a registry to mirror, host[:port] or URL (repeat; default: all)")
    c.add_argument("--mirror", default=DEFAULT_MIRROR,
                   help=f"the daemon's proxy URL (default {DEFAULT_MIRROR})")
    c.add_argument("--certs-dir", type=Path, default=DEFAULT_CERTS_DIR,
                   help=f"containerd's registry config_path (default {DEFAULT_CERTS_DIR})")
    c.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    for line in apply(plan(args.certs_dir, args.mirror, args.registry)):
        print(line)
    print(f"containerd reads these when its CRI registry config_path is {args.certs_dir} "
          f"(ctr: --hosts-dir {args.certs_dir})")
    return 0
