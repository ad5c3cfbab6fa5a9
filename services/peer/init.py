"""``damselfly init containerd|docker|podman``: configure a container runtime to pull
through the daemon's registry mirror."""

from __future__ import annotations

import argparse

from damselfly.services.peer import containerd, runtimes


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    init = sub.add_parser("init", help="configure a container runtime to pull through the "
                                       "daemon's registry mirror")
    chosen = init.add_subparsers(dest="runtime", required=True)
    containerd.register(chosen)
    runtimes.register(chosen)
