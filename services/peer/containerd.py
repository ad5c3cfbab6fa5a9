"""``damselfly init containerd``: point containerd at the daemon's registry mirror by writing
a ``hosts.toml`` per registry (or ``_default`` for all of them) under its certs.d folder.

containerd tries each ``[host]`` in order and falls back to ``server``. The mirror learns
which registry a request is for from the ``X-Dragonfly-Registry`` header the file sets for
a named registry, else from the ``ns`` query parameter containerd adds."""

from __future__ import annotations

from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from damselfly.services.peer.configfiles import ConfigFile
from damselfly.services.peer.oci import DOCKER_HUB, REGISTRY_HEADER, registry_url

ALL_REGISTRIES: Final = "_default"


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


def plan(certs_dir: Path, mirror: str, registries: list[str]) -> list[ConfigFile]:
    """The files to write: one per registry, or ``_default`` for all when none is named.
    Raises ``ValueError`` for a malformed registry or mirror."""
    mirror = registry_url(mirror)
    if not registries:
        return [ConfigFile(certs_dir / ALL_REGISTRIES / "hosts.toml", hosts_toml(mirror))]
    files = []
    for registry in registries:
        name, server = registry_server(registry)
        files.append(ConfigFile(certs_dir / name / "hosts.toml", hosts_toml(mirror, server)))
    return files
