"""``damselfly init containerd|docker|podman``: configure a container runtime to pull
through the daemon's registry mirror.

Only the parsers live here: ``damselfly get`` builds this command's parser too, and loading
the writers (``containerd.py``, ``runtimes.py``, and through them the OCI helpers and every
event type) cost it about 80 ms of its start-up.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Final

DEFAULT_MIRROR: Final = "http://127.0.0.1:4001"
CERTS_DIR: Final = Path("/etc/containerd/certs.d")
DAEMON_JSON: Final = Path("/etc/docker/daemon.json")
REGISTRIES_CONF: Final = Path("/etc/containers/registries.conf")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    init = sub.add_parser("init", help="configure a container runtime to pull through the "
                                       "daemon's registry mirror")
    runtimes = init.add_subparsers(dest="runtime", required=True)
    mirror = {"default": DEFAULT_MIRROR,
              "help": f"the daemon's proxy URL (default {DEFAULT_MIRROR})"}
    c = runtimes.add_parser("containerd", help="write containerd hosts.toml files")
    c.add_argument("--registry", action="append", default=[],
                   help="a registry to mirror, host[:port] or URL (repeat; default: all)")
    c.add_argument("--mirror", **mirror)
    c.add_argument("--certs-dir", type=Path, default=CERTS_DIR,
                   help=f"containerd's registry config_path (default {CERTS_DIR})")
    c.set_defaults(run=_containerd)
    d = runtimes.add_parser("docker", help="add the mirror to Docker's registry-mirrors "
                                           "(Docker Hub only)")
    d.add_argument("--mirror", **mirror)
    d.add_argument("--daemon-json", type=Path, default=DAEMON_JSON,
                   help=f"Docker's daemon.json (default {DAEMON_JSON})")
    d.set_defaults(run=_docker)
    p = runtimes.add_parser("podman", help="add the mirror to registries.conf (podman, "
                                           "skopeo, buildah, CRI-O)")
    p.add_argument("--registry", default="docker.io",
                   help="the registry the daemon's --registry-mirror fronts (default docker.io)")
    p.add_argument("--mirror", **mirror)
    p.add_argument("--registries-conf", type=Path, default=REGISTRIES_CONF,
                   help=f"the registries.conf to edit (default {REGISTRIES_CONF})")
    p.set_defaults(run=_podman)


def _containerd(args: argparse.Namespace) -> int:
    from damselfly.services.peer.configfiles import apply
    from damselfly.services.peer.containerd import plan

    for line in apply(plan(args.certs_dir, args.mirror, args.registry)):
        print(line)
    print(f"containerd reads these when its CRI registry config_path is {args.certs_dir} "
          f"(ctr: --hosts-dir {args.certs_dir})")
    return 0


def _docker(args: argparse.Namespace) -> int:
    from damselfly.services.peer.runtimes import docker_config

    _edit(args.daemon_json, lambda current: docker_config(current, args.mirror))
    print("Docker reads it when it starts: systemctl restart docker")
    return 0


def _podman(args: argparse.Namespace) -> int:
    from damselfly.services.peer.runtimes import podman_config

    _edit(args.registries_conf,
          lambda current: podman_config(current, args.mirror, args.registry))
    print(f"pulls of {args.registry} images now go through {args.mirror}; the daemon must "
          f"front that registry (--registry-mirror)")
    return 0


def _edit(path: Path, change: Callable[[str | None], str]) -> None:
    """Write ``change(current text or None)`` to ``path``, saying what changed. Raises
    ``ValueError`` naming the file it cannot read as its format."""
    from damselfly.services.peer.configfiles import ConfigFile, apply

    try:
        text = change(path.read_text() if path.exists() else None)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    for line in apply([ConfigFile(path, text)]):
        print(line)
