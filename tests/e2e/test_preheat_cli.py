"""Preheat as a user does it: ``damselfly up``, ``damselfly preheat URL`` to every peer,
then ``damselfly get`` of the same URL takes nothing from the origin; a ``delete_task`` job
through the REST API removes it from every peer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from damselfly.services.runtime.procs import DAMSELFLY


@contextmanager
def origin(root: Path) -> Iterator[tuple[str, list[int]]]:
    """A file server on loopback; the list counts the body bytes it sent."""
    sent = [0]

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*args, directory=str(root), **kwargs)

        def copyfile(self, source, outputfile) -> None:  # type: ignore[no-untyped-def]
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
def cluster(data: Path) -> Iterator[dict[str, object]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAMSELFLY_")}
    proc = subprocess.Popen([*DAMSELFLY, "up", "--data-dir", str(data), "--peers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 90
        while not (data / "cluster.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "damselfly up failed"
            time.sleep(0.2)
        yield json.loads((data / "cluster.json").read_text())
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _call(base: str, method: str, path: str, body: object = None, token: str = "") -> object:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


def _until(check, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.3)


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
        token = _until(lambda: _call(manager, "POST", "/api/v1/users/signin",
                                     {"name": "root", "password": root_password})["token"])
        # Every daemon must be announced before a job for all of them is asked for.
        _until(lambda: len(_call(manager, "GET", "/api/v1/hosts", token=token)) >= 2)

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
        done = _until(lambda: _finished(manager, token, str(job["id"])))
        assert done["job"]["state"] == "succeeded"
        assert {h["reason"] for h in done["hosts"]} == {"deleted"} and len(done["hosts"]) == 2


def _finished(manager: str, token: str, job_id: str) -> dict[str, object] | None:
    try:
        status = _call(manager, "GET", f"/oapi/v1/jobs/{job_id}", token=token)
    except urllib.error.HTTPError:
        return None
    assert isinstance(status, dict)
    return status if status["job"]["state"] in ("succeeded", "failed") else None
