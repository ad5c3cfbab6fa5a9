"""The daemon's local API for clients (C/S mode): JSON over HTTP on a unix socket (and
optionally loopback TCP), described by the OpenAPI document at ``/openapi.json``."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import anyio
import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

from damselfly.services.peer.callers import caller_uid, may_touch_files
from damselfly.services.peer.downloader import IMPORTED
from damselfly.services.peer.downloads import Downloads
from damselfly.services.peer.metrics import TransferStats, daemon_registry, exposition
from damselfly.services.peer.request import DownloadRequest

TERMINAL: Final = ("succeeded", "failed", "cancelled")
PROGRESS_INTERVAL: Final = 0.2


class ImportRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    path: str
    tag: str = ""
    application: str = ""
    piece_length: int = 0


class ExportRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    path: str
    hard_link: bool = False  # dfget's --force-hard-link: link, or fail


def export_file(source: Path, target: Path, hard_link: bool = False) -> int:
    """Copy (or hard-link) atomically: into a hidden file beside ``target``, then rename
    over it, so a reader never sees half a file. Returns the bytes exported. Raises
    ``OSError`` (a link across file systems is ``EXDEV``)."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
    try:
        if hard_link:
            os.link(source, tmp)
        else:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target.stat().st_size


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


def _file_door_closed(request: web.Request, what: str) -> web.Response | None:
    """403 unless the caller has the daemon's own rights: an import reads and an export
    writes a file as the daemon's user (root, often), for any path the caller names."""
    uid = caller_uid(request)
    if may_touch_files(uid):
        return None
    who = "an unknown caller" if uid is None else f"uid {uid}"
    return _error(403, f"{what} reads and writes files as the daemon's user (uid "
                       f"{os.getuid()}); {who} may not ask for it (fetch the bytes with "
                       "GET /v1/tasks/<task>/data, which damselfly get does by itself)")


@web.middleware
async def _json_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A write must say ``Content-Type: application/json``: a web page can send a form or
    ``text/plain`` to a loopback port without asking, but not JSON (that needs a CORS
    preflight, which this API never answers), so no page a user visits drives the daemon."""
    if request.method in ("POST", "PUT", "PATCH") \
            and request.content_type != "application/json":
        return _error(415, f"Content-Type must be application/json, not "
                           f"{request.headers.get('Content-Type', 'none')}")
    if request.method == "OPTIONS":
        return _error(405, "no cross-origin requests")
    return await handler(request)


def _schema_of(struct: type[msgspec.Struct]) -> dict[str, Any]:
    return msgspec.json.schema(struct)


def openapi() -> dict[str, Any]:
    status = {"type": "object", "description": "task_id, peer_id, state (pending, running, "
              "succeeded, failed, cancelled), error, url, content_length, completed_length, "
              "bytes_from_origin, bytes_from_peers"}
    def json_body(schema: dict[str, Any]) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": schema}}}

    def ok(text: str, schema: dict[str, Any] = status) -> dict[str, Any]:
        return {"description": text, "content": {"application/json": {"schema": schema}}}

    task = {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Damselfly peer daemon local API", "version": "1"},
        "paths": {
            "/v1/tasks": {"post": {
                "summary": "Start a download (or join the running one for the same task)",
                "requestBody": json_body(_schema_of(DownloadRequest)),
                "responses": {"202": ok("the task's status"), "400": ok("bad request")}}},
            "/v1/tasks/{task_id}": {
                "get": {"summary": "Stat a task", "parameters": [task],
                        "responses": {"200": ok("the task's status"), "404": ok("unknown")}},
                "delete": {"summary": "Cancel a task and delete its files", "parameters": [task],
                           "responses": {"200": ok("cancelled"), "404": ok("unknown")}}},
            "/v1/tasks/{task_id}/progress": {"get": {
                "summary": "Stream the task's status, one JSON object a line, until it ends",
                "parameters": [task],
                "responses": {"200": {"description": "NDJSON status lines",
                                      "content": {"application/x-ndjson": {"schema": status}}}}}},
            "/v1/tasks/{task_id}/export": {"post": {
                "summary": "Copy a finished task to a path, atomically, with the daemon's "
                           "rights (only root or the daemon's own user may ask)",
                "parameters": [task],
                "requestBody": json_body(_schema_of(ExportRequest)),
                "responses": {"200": ok("path and bytes"), "403": ok("not the daemon's user"),
                              "409": ok("not finished")}}},
            "/v1/tasks/{task_id}/data": {"get": {
                "summary": "A finished task's bytes, for a caller to write with its own rights",
                "parameters": [task],
                "responses": {"200": {"description": "the content",
                                      "content": {"application/octet-stream": {}}},
                              "409": ok("not finished")}}},
            "/v1/imports": {"post": {
                "summary": "Import a local file into the swarm (this peer becomes its source); "
                           "only root or the daemon's own user may ask",
                "requestBody": json_body(_schema_of(ImportRequest)),
                "responses": {"202": ok("the task's status"),
                              "403": ok("not the daemon's user")}}},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": ok("ok", {})}}},
            "/metrics": {"get": {"summary": "Prometheus metrics",
                                 "responses": {"200": {"description": "text exposition"}}}},
        },
    }


def api_app(downloads: Downloads, stats: TransferStats) -> web.Application:
    storage = downloads.ctx.storage

    def status_of(task_id: str) -> dict[str, object] | None:
        if (download := downloads.get(task_id)) is not None:
            return download.status()
        tf = storage.get(task_id)
        if tf is None:
            return None
        return {"task_id": task_id, "peer_id": tf.meta.peer_id,
                "state": "succeeded" if tf.complete else "paused", "error": "",
                "url": tf.meta.request.url, "content_length": tf.meta.content_length,
                "completed_length": tf.completed_length(), "bytes_from_origin": 0,
                "bytes_from_peers": 0}

    async def decode_body(request: web.Request, kind: type[Any]) -> Any:
        try:
            return msgspec.json.decode(await request.read(), type=kind)
        except msgspec.DecodeError as exc:
            raise web.HTTPBadRequest(text=json.dumps({"error": str(exc)}),
                                     content_type="application/json") from None

    async def start(request: web.Request) -> web.Response:
        body: DownloadRequest = await decode_body(request, DownloadRequest)
        if urlsplit(body.url).scheme == "file":
            return _error(400, f"{body.url} is a local file: import it (POST /v1/imports)")
        try:
            downloads.ctx.sources.for_url(body.url)
        except ValueError as exc:
            return _error(400, str(exc))
        return web.json_response(downloads.start(body).status(), status=202)

    async def stat(request: web.Request) -> web.Response:
        status = status_of(request.match_info["task_id"])
        return _error(404, "unknown task") if status is None else web.json_response(status)

    async def progress(request: web.Request) -> web.StreamResponse:
        task_id = request.match_info["task_id"]
        if status_of(task_id) is None:
            return _error(404, "unknown task")
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        while True:
            status = status_of(task_id) or {"task_id": task_id, "state": "cancelled",
                                             "error": "cancelled"}
            await response.write(json.dumps(status).encode() + b"\n")
            if status["state"] in (*TERMINAL, "paused"):
                break
            download = downloads.get(task_id)
            with anyio.move_on_after(PROGRESS_INTERVAL):
                if download is not None:
                    await download.finished.wait()
                else:
                    await anyio.sleep(PROGRESS_INTERVAL)
        await response.write_eof()
        return response

    async def cancel(request: web.Request) -> web.Response:
        task_id = request.match_info["task_id"]
        if not await downloads.cancel(task_id):
            return _error(404, "unknown task")
        return web.json_response({"task_id": task_id, "state": "cancelled"})

    async def export(request: web.Request) -> web.Response:
        task_id = request.match_info["task_id"]
        if refused := _file_door_closed(request, "export"):
            return refused
        body: ExportRequest = await decode_body(request, ExportRequest)
        tf = storage.get(task_id)
        if tf is None:
            return _error(404, "unknown task")
        if not tf.complete:
            return _error(409, "the task has not finished")
        target = Path(body.path)
        if not target.is_absolute():
            return _error(400, f"export path must be absolute: {body.path}")
        try:
            size = await anyio.to_thread.run_sync(export_file, tf.data_path, target,
                                                  body.hard_link)
        except OSError as exc:
            return _error(400, f"cannot write {target}: {exc.strerror or exc}")
        tf.touch()
        return web.json_response({"task_id": task_id, "path": str(target), "bytes": size})

    async def data(request: web.Request) -> web.StreamResponse:
        tf = storage.get(request.match_info["task_id"])
        if tf is None:
            return _error(404, "unknown task")
        if not tf.complete:
            return _error(409, "the task has not finished")
        tf.touch()
        return web.FileResponse(tf.data_path,
                                headers={"Content-Type": "application/octet-stream"})

    async def import_file(request: web.Request) -> web.Response:
        if refused := _file_door_closed(request, "import"):
            return refused
        body: ImportRequest = await decode_body(request, ImportRequest)
        path = Path(body.path)
        if not path.is_absolute() or not path.is_file():
            return _error(400, f"not an absolute path to a readable file: {body.path}")
        download_request = DownloadRequest(url=path.as_uri(), tag=body.tag,
                                           application=body.application,
                                           piece_length=body.piece_length)
        download = downloads.start(download_request, straight_to_source=IMPORTED)
        return web.json_response(download.status(), status=202)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "host_id": downloads.ctx.host_id})

    registry = daemon_registry(stats, storage, downloads.ctx.publisher)

    async def metrics(request: web.Request) -> web.Response:
        return exposition(registry)

    async def openapi_doc(request: web.Request) -> web.Response:
        return web.json_response(openapi())

    app = web.Application(middlewares=[_json_only])
    app.router.add_post("/v1/tasks", start)
    app.router.add_get("/v1/tasks/{task_id}", stat)
    app.router.add_delete("/v1/tasks/{task_id}", cancel)
    app.router.add_get("/v1/tasks/{task_id}/progress", progress)
    app.router.add_post("/v1/tasks/{task_id}/export", export)
    app.router.add_get("/v1/tasks/{task_id}/data", data)
    app.router.add_post("/v1/imports", import_file)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_doc)
    return app
