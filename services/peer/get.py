"""``damselfly get URL -O PATH``: download through the local daemon, dfget-style.

The client asks a daemon's local API (``--endpoint``, else the default socket, else a
daemon it starts) to download, draws its progress, and has it export the result to the
output path atomically. Any failure is a non-zero exit with a one-line reason.
"""

from __future__ import annotations

import fnmatch
import http.client
import os
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Final, NoReturn, TextIO
from urllib.parse import urlsplit

import anyio
import msgspec
from anyio import to_thread

from damselfly.services.peer.digests import parse_digest
from damselfly.services.peer.request import DownloadRequest

CALL_TIMEOUT: Final = 60.0  # an export of a large file copies or links it before answering


def damselfly_home() -> Path:
    return Path(os.environ.get("DAMSELFLY_HOME", Path.home() / ".local/share/damselfly"))


def default_endpoint() -> str:
    return os.environ.get("DAMSELFLY_ENDPOINT", str(damselfly_home() / "daemon" / "api.sock"))


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("daemon", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class ApiError(RuntimeError):
    """The daemon refused a call; the message is its one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _refusal(response: http.client.HTTPResponse) -> ApiError:
    """The daemon's reason for refusing a call whose answer is read as it streams."""
    payload = msgspec.json.decode(response.read() or b"{}")
    return ApiError(response.status, payload.get("error") or response.reason)


class ApiClient:
    """The daemon's local API over a unix socket path or an ``http://`` URL.

    Plain ``http.client`` in worker threads, so ``damselfly get`` starts without loading an
    HTTP framework: one kept-alive connection for the calls (one at a time), one more per
    progress stream; ``close()`` ends the kept one. Calls raise ``RuntimeError`` with the
    daemon's reason, or ``OSError`` when it cannot be reached."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._kept: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    async def close(self) -> None:
        with self._lock:
            if self._kept is not None:
                self._kept.close()
                self._kept = None

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self.endpoint.startswith("http://"):
            parts = urlsplit(self.endpoint)
            return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port,
                                              timeout=timeout)
        return _UnixConnection(self.endpoint, timeout)

    def _exchange(self, conn: http.client.HTTPConnection, method: str, path: str,
                  body: bytes | None) -> http.client.HTTPResponse:
        """Send one request and read the answer's head; the connection is closed on any
        failure. Raises ``RuntimeError`` for a garbled answer, else ``OSError``."""
        headers = {"Content-Type": "application/json"} if body else {}
        try:
            conn.request(method, path, body=body, headers=headers)
            return conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            self._broken(conn, exc)

    def _broken(self, conn: http.client.HTTPConnection,
                exc: OSError | http.client.HTTPException) -> NoReturn:
        conn.close()
        if isinstance(exc, OSError):  # http.client's RemoteDisconnected is one too
            raise exc
        raise RuntimeError(f"the daemon at {self.endpoint} answered badly: {exc!r}") from None

    def _open(self, method: str, path: str, timeout: float
              ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """A connection of its own, for a response read as it arrives."""
        conn = self._connect(timeout)
        return conn, self._exchange(conn, method, path, None)

    def _call(self, method: str, path: str, body: bytes | None, timeout: float
              ) -> tuple[int, bytes]:
        with self._lock:
            kept, self._kept = self._kept, None
            if kept is not None:
                kept.timeout = timeout
                if kept.sock is not None:
                    kept.sock.settimeout(timeout)
                try:
                    return self._answer(kept, self._exchange(kept, method, path, body))
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the daemon closed the kept connection: one new try
            conn = self._connect(timeout)
            return self._answer(conn, self._exchange(conn, method, path, body))

    def _answer(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse
                ) -> tuple[int, bytes]:
        """Read the body, keeping the connection for the next call when it stays open."""
        try:
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._broken(conn, exc)
        self._kept = None if response.will_close else conn
        return response.status, data

    async def healthy(self) -> bool:
        try:
            status, _ = await to_thread.run_sync(self._call, "GET", "/healthz", None, 5.0)
        except (OSError, RuntimeError):
            return False
        return status == 200

    async def _json(self, method: str, path: str, body: object = None) -> dict[str, Any]:
        data = None if body is None else msgspec.json.encode(body)
        status, raw = await to_thread.run_sync(self._call, method, path, data, CALL_TIMEOUT)
        try:
            payload = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            payload = {}
        if status >= 400 or not isinstance(payload, dict):
            reason = payload.get("error") if isinstance(payload, dict) else None
            raise ApiError(status, reason or f"daemon answered {status}")
        return payload

    async def start(self, request: DownloadRequest) -> dict[str, Any]:
        return await self._json("POST", "/v1/tasks", request)

    async def export(self, task_id: str, path: Path, hard_link: bool = False
                     ) -> dict[str, Any]:
        return await self._json("POST", f"/v1/tasks/{task_id}/export",
                                {"path": str(path), "hard_link": hard_link})

    async def save(self, task_id: str, path: Path) -> int:
        """Write a finished task's bytes to ``path`` with this process's own rights (a
        temporary file beside it, renamed when whole); returns the bytes written."""
        return await to_thread.run_sync(self._save, task_id, path)

    def _save(self, task_id: str, path: Path) -> int:
        conn, response = self._open("GET", f"/v1/tasks/{task_id}/data", CALL_TIMEOUT)
        part = path.with_name(f".{path.name}.{os.getpid()}.part")
        try:
            if response.status >= 400:
                raise _refusal(response)
            written = 0
            with open(part, "wb") as out:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    written += len(chunk)
            part.replace(path)
            return written
        finally:
            part.unlink(missing_ok=True)
            conn.close()

    async def deliver(self, task_id: str, path: Path, hard_link: bool = False) -> None:
        """Export, or (when the daemon may not write files for this user) save."""
        try:
            await self.export(task_id, path, hard_link)
        except ApiError as exc:
            if exc.status != 403:
                raise
            await self.save(task_id, path)

    async def finish(self, task_id: str,
                     on_status: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Follow a task's progress to its end; returns the last status."""
        last: dict[str, Any] = {}
        async for last in self.progress(task_id):
            if on_status is not None:
                on_status(last)
        return last

    async def download(self, request: DownloadRequest) -> dict[str, Any]:
        """Start (or join) a download and wait for its end; returns the last status."""
        return await self.finish((await self.start(request))["task_id"])

    async def progress(self, task_id: str) -> AsyncIterator[dict[str, Any]]:
        """The task's status lines as the daemon writes them (one at least every 0.2 s)."""
        conn, response = await to_thread.run_sync(
            self._open, "GET", f"/v1/tasks/{task_id}/progress", CALL_TIMEOUT)
        try:
            if response.status >= 400:
                raise _refusal(response)
            while line := await to_thread.run_sync(response.readline, abandon_on_cancel=True):
                if line.strip():
                    yield msgspec.json.decode(line)
        finally:
            conn.close()


def start_daemon(home: Path) -> str:
    """Start a daemon in its own session (it outlives this command); returns its socket.
    Raises ``RuntimeError`` naming its log when it does not come up."""
    import subprocess  # only when no daemon runs: a get that finds one never loads these

    from damselfly.services.runtime.procs import DAMSELFLY, wait_ready

    data_dir = home / "daemon"
    data_dir.mkdir(parents=True, exist_ok=True)
    ready = data_dir / "ready.json"
    ready.unlink(missing_ok=True)
    log_path = data_dir / "daemon.log"
    argv = [*DAMSELFLY, "daemon", "--data-dir", str(data_dir),
            "--nats", os.environ.get("DAMSELFLY_NATS_URL", "nats://127.0.0.1:4222"),
            "--ready-file", str(ready)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    (data_dir / "daemon.pid").write_text(str(proc.pid))
    try:
        endpoints = wait_ready(ready, proc)
    except RuntimeError as exc:
        raise RuntimeError(f"no daemon answered and starting one failed ({exc}); "
                           f"see {log_path}") from None
    return str(endpoints["api_socket"])


class ProgressBar:
    """One line on a terminal: percentage, bytes, rate and ETA."""

    def __init__(self, name: str, out: TextIO, enabled: bool) -> None:
        self.name, self.out, self.enabled = name, out, enabled
        self._started = time.monotonic()

    def update(self, status: dict[str, Any]) -> None:
        if not self.enabled:
            return
        total, done = int(status.get("content_length", -1)), int(status.get("completed_length", 0))
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = done / elapsed
        if total > 0:
            width = 24
            filled = width * done // total
            eta = (total - done) / rate if rate > 0 else 0.0
            line = (f"\r{self.name[:30]:<30} [{'#' * filled}{'-' * (width - filled)}] "
                    f"{100 * done // total:3d}% {_size(done)}/{_size(total)} "
                    f"{_size(rate)}/s ETA {eta:4.0f}s")
        else:
            line = f"\r{self.name[:30]:<30} {status.get('state', '')} {_size(done)}"
        self.out.write(line)
        self.out.flush()

    def close(self) -> None:
        if self.enabled:
            self.out.write("\n")
            self.out.flush()


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:6.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


async def fetch_one(client: ApiClient, request: DownloadRequest, output: Path,
                    show_progress: bool, hard_link: bool = False) -> dict[str, Any]:
    """Download one URL to ``output``. Raises ``RuntimeError`` with the daemon's reason."""
    bar = ProgressBar(output.name, sys.stderr, show_progress)
    try:
        status = await client.finish((await client.start(request))["task_id"], bar.update)
    finally:
        bar.close()
    if status.get("state") != "succeeded":
        raise RuntimeError(f"{request.url}: {status.get('error') or status.get('state')}")
    await client.deliver(status["task_id"], output, hard_link)
    return status


def parse_headers(values: list[str]) -> dict[str, str]:
    headers = {}
    for value in values:
        name, sep, content = value.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"bad header {value!r}: want 'Name: value'")
        headers[name.strip()] = content.strip()
    return headers


def chosen_files(listing: list[tuple[str, str]], include: list[str], max_files: int
                 ) -> list[tuple[str, str]]:
    """The listed ``(URL, relative path)`` pairs ``-I`` globs keep (all without any).
    Raises ``ValueError`` beyond ``--max-files``."""
    kept = [(url, rel) for url, rel in listing
            if not include or any(fnmatch.fnmatchcase(rel, g) for g in include)]
    if len(kept) > max_files:
        raise ValueError(f"{len(kept)} files to download, more than --max-files {max_files}")
    return kept


def _listing(url: str, headers: dict[str, str]) -> Iterator[tuple[str, str]]:
    """The files ``-r`` downloads: an http(s) index page's, or an hf:// repository's (with
    this process's ``HF_TOKEN``). Loaded only for ``-r``."""
    if urlsplit(url).scheme == "hf":
        from damselfly.services.peer.hf import hf_config, list_repo

        return list_repo(url, hf_config(os.environ))
    from damselfly.services.peer.listing import list_directory

    return list_directory(url, headers)


async def run(args: Any) -> int:
    if args.digest:
        parse_digest(args.digest)
    filtered = [p for value in args.filtered_query_param for p in value.split("&") if p]
    headers = parse_headers(args.header)
    base = DownloadRequest(url=args.url, headers=headers, tag=args.tag,
                           application=args.application, priority=args.priority,
                           piece_length=args.piece_length, filtered_query_params=filtered,
                           disable_back_to_source=args.disable_back_to_source,
                           digest=args.digest,
                           content_for_calculating_task_id=args.content_for_calculating_task_id)
    output = Path(args.output).resolve()
    jobs = [(base, output)]
    if args.recursive:
        if args.digest or args.content_for_calculating_task_id:
            raise ValueError("--digest and --content-for-calculating-task-id name one file: "
                             "not with --recursive")
        listing = await anyio.to_thread.run_sync(lambda: list(_listing(args.url, headers)))
        jobs = [(msgspec.structs.replace(base, url=url), output / relative)
                for url, relative in chosen_files(listing, args.include_files, args.max_files)]
    elif output.is_dir():
        output = output / (Path(urlsplit(args.url).path).name or "index.html")
        jobs = [(base, output)]
    taken = [str(t) for _, t in jobs if t.exists()]
    if taken and not args.overwrite:
        raise ValueError(f"{taken[0]} exists: give --overwrite to replace it")
    client = ApiClient(args.endpoint or default_endpoint())
    try:
        if not await client.healthy():
            if args.endpoint:
                raise RuntimeError(f"no daemon answers at {args.endpoint}")
            await client.close()
            client = ApiClient(await anyio.to_thread.run_sync(start_daemon, damselfly_home()))
        show = not args.no_progress and sys.stderr.isatty() and len(jobs) == 1
        limiter = anyio.Semaphore(max(1, args.max_concurrent_requests))
        failures: list[Exception] = []

        async def one(request: DownloadRequest, target: Path) -> None:
            async with limiter:
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    await fetch_one(client, request, target, show, args.force_hard_link)
                except (RuntimeError, OSError) as exc:  # the first one stops the others
                    failures.append(exc)
                    tg.cancel_scope.cancel()

        with anyio.fail_after(args.timeout or None):
            async with anyio.create_task_group() as tg:
                for request, target in jobs:
                    tg.start_soon(one, request, target)
            if failures:
                raise failures[0]
    except TimeoutError:
        raise RuntimeError(f"timed out after {args.timeout:g}s") from None
    except OSError as exc:
        raise RuntimeError(f"the daemon at {client.endpoint} failed: {exc}") from None
    finally:
        await client.close()
    return 0
