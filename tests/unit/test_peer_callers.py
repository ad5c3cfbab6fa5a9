"""The local API's caller: the owner of a loopback TCP socket, read from the kernel's
socket tables the way /proc/net/tcp and tcp6 write them."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from damselfly.services.peer.callers import may_touch_files, tcp_owner

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:C350 0100007F:0050 06 00000000:00000000 00:00000000 00000000     0        0 0 1
   2: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 2 1
   3: 0100007F:C351 0100007F:1F90 06 00000000:00000000 00:00000000 00000000     0        0 0 1
"""
TCP6 = ("  sl  local_address                         remote_address"
        "                        st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
        "   0: 00000000000000000000000001000000:D431 00000000000000000000000001000000:1F90"
        " 01 00000000:00000000 00:00000000 00000000 65534        0 3 1\n")


def test_the_owner_of_a_loopback_socket_comes_from_the_tables(tmp_path: Path) -> None:
    (tmp_path / "tcp").write_text(TCP)
    (tmp_path / "tcp6").write_text(TCP6)
    tables = (tmp_path / "tcp", tmp_path / "tcp6")
    daemon = ("127.0.0.1", 8080)
    # port 50000's TIME_WAIT socket to port 80 (shown as root's) lends nobody its uid
    assert tcp_owner(("127.0.0.1", 50000), daemon, tables) == 1000
    assert tcp_owner(("::1", 54321), ("::1", 8080), tables) == 65534
    assert tcp_owner(("127.0.0.1", 50001), daemon, tables) is None  # not established
    assert tcp_owner(("127.0.0.1", 50002), daemon, tables) is None


def test_a_real_socket_is_found_with_this_process_as_its_owner() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()) as client:
        assert tcp_owner(client.getsockname(), client.getpeername()) == os.getuid()


def test_only_root_and_the_daemons_own_user_may_touch_files() -> None:
    assert may_touch_files(0) and may_touch_files(os.getuid())
    assert not may_touch_files(None) and not may_touch_files(65534 if os.getuid() != 65534
                                                             else 65533)
