"""Preheat as a user does it: ``damselfly up``, ``damselfly preheat URL`` to every peer,
then ``damselfly get`` of the same URL takes nothing from the origin; a ``delete_task`` job
through the REST API removes it from every peer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, AnyStr

from damselfly.services.runtime.procs import DAMSELFLY
from tests.support.wait import eventually_sync

if TYPE_CHECKING:
    from _typeshed import SupportsRead, SupportsWrite


@contextmanager
def origin(root: Path) -> Iterator[tuple[str, list[int]]]:
    """A file server on loopback; the list counts the body bytes it sent."""
    sent = [0]

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def copyfile(self, source: SupportsRead[AnyStr],
                     outputfile: SupportsWrite[AnyStr]) -> None:
            data = source.read()
            sent[0] += len(data)
            outputfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", sent
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def cluster(data: Path) -> Iterator[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAMSELFLY_")}
    proc = subprocess.Popen([*DAMSELFLY, "up", "--data-dir", str(data), "--peers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        def written() -> bool:
            assert proc.poll() is None, "damselfly up failed"
            return (data / "cluster.json").exists()

        eventually_sync(written, timeout=90)
        yield json.loads((data / "cluster.json").read_text())
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _call(base: str, method: str, path: str, body: object = None, token: str = "") -> Any:
    """The JSON body of a 2xx answer; raises ``urllib.error.HTTPError`` for another."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


def test_preheat_to_every_peer_then_get_and_delete(tmp_path: Path) -> None:
    files = tmp_path / "origin"
    files.mkdir()
    content = os.urandom(1_500_000)
    (files / "dataset.bin").write_bytes(content)
    data = tmp_path / "cluster"
    with origin(files) as (base, sent), cluster(data) as endpoints:
        services = endpoints["services"]
        assert isinstance(services, dict)
        manager = str(services["manager"]["url"])
        url = f"{base}/dataset.bin"
        root_password = (data / "root.password").read_text()  # made by `up`
        token = eventually_sync(lambda: _call(manager, "POST", "/api/v1/users/signin", {
            "name": "root", "password": root_password})["token"], timeout=60, ignore=(OSError,))
        # Every daemon must be announced before a job for all of them is asked for.
        eventually_sync(lambda: len(_call(manager, "GET", "/api/v1/hosts", token=token)) >= 2,
                        timeout=60, ignore=(OSError,))

        # no login given: the CLI signs in as root with the password `up` keeps
        preheat = subprocess.run(
            [*DAMSELFLY, "preheat", url, "--scope", "all_peers", "--data-dir", str(data),
             "--timeout", "120"], capture_output=True, text=True, timeout=180, check=False)
        assert preheat.returncode == 0, preheat.stderr
        lines = [line.split("\t") for line in preheat.stdout.splitlines()]
        assert len(lines) == 2 and all(state == "succeeded" for _, _, state, _ in lines)
        fetched = sent[0]
        assert len(content) <= fetched < 2 * len(content)  # the swarm fetched it about once

        out = tmp_path / "out.bin"
        got = subprocess.run([*DAMSELFLY, "get", url, "-O", str(out), "--endpoint",
                              str(services["peer-1"]["api_url"])], capture_output=True,
                             text=True, timeout=120, check=False)
        assert got.returncode == 0, got.stderr
        assert out.read_bytes() == content and sent[0] == fetched  # nothing more from origin

        job = _call(manager, "POST", "/api/v1/jobs", {"type": "delete_task", "args":
                    {"url": url}}, token)
        assert isinstance(job, dict)
        done = eventually_sync(lambda: _finished(manager, token, str(job["id"])), timeout=60,
                               ignore=(OSError,))
        assert done["job"]["state"] == "succeeded"
        assert {h["reason"] for h in done["hosts"]} == {"deleted"} and len(done["hosts"]) == 2


def _finished(manager: str, token: str, job_id: str) -> dict[str, Any] | None:
    try:
        status = _call(manager, "GET", f"/oapi/v1/jobs/{job_id}", token=token)
    except urllib.error.HTTPError:
        return None
    assert isinstance(status, dict)
    return status if status["job"]["state"] in ("succeeded", "failed") else None
