"""Who is calling the local API: the user id of the process at the other end of a request.

On the unix socket the kernel says it (``SO_PEERCRED``). On the loopback TCP port the
caller's socket is in this network namespace's ``/proc/net/tcp`` (and ``tcp6``), with the
user id that owns it (identd's way). Anything else is unknown (None).

An import reads a file and an export writes one with the daemon's own rights, so only a
caller with those rights may ask for them (``may_touch_files``): root, or the daemon's own
user. Anyone else gets the task's bytes through ``GET /v1/tasks/<task>/data`` and writes
them with their own rights (``damselfly get`` does that by itself).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from pathlib import Path
from typing import Final

from aiohttp import web

_UCRED: Final = struct.Struct("3i")  # pid, uid, gid
PROC_TCP: Final = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
ESTABLISHED: Final = "01"  # the state column of /proc/net/tcp


def caller_uid(request: web.Request) -> int | None:
    transport = request.transport
    sock: socket.socket | None = transport.get_extra_info("socket") if transport else None
    if sock is None:
        return None
    if sock.family == socket.AF_UNIX:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        return int(_UCRED.unpack(raw)[1])
    peer = transport.get_extra_info("peername") if transport else None
    own = transport.get_extra_info("sockname") if transport else None
    if (sock.family in (socket.AF_INET, socket.AF_INET6) and peer and own
            and ipaddress.ip_address(peer[0]).is_loopback):
        return tcp_owner((peer[0], peer[1]), (own[0], own[1]))
    return None


def tcp_owner(caller: tuple[str, int], daemon: tuple[str, int],
              tables: tuple[Path, ...] = PROC_TCP) -> int | None:
    """The user id owning the caller's end of the established connection ``caller`` →
    ``daemon``, from the kernel's socket tables (None when no table lists it). Only that
    exact connection counts: another socket on the caller's port (a closed one in
    TIME_WAIT, which the table shows as root's) would lend its owner to anyone."""
    local, remote = _proc_address(*caller), _proc_address(*daemon)
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 7 and fields[1].upper() == local \
                    and fields[2].upper() == remote and fields[3] == ESTABLISHED:
                return int(fields[7])
    return None


def _proc_address(host: str, port: int) -> str:
    """``host:port`` as /proc/net/tcp writes it: the address's 32-bit words in host byte
    order, hex, then the port in hex."""
    packed = ipaddress.ip_address(host).packed
    words = [packed[i:i + 4] for i in range(0, len(packed), 4)]
    order = "<" if struct.pack("=I", 1)[0] == 1 else ">"
    address = "".join(f"{struct.unpack(order + 'I', w)[0]:08X}" for w in words)
    return f"{address}:{port:04X}"


def may_touch_files(uid: int | None) -> bool:
    """Whether a caller may have the daemon read or write a file for it."""
    return uid is not None and uid in (0, os.getuid())
