"""The daemon's HTTP proxy: a registry mirror and a rule-driven forward proxy.

As a registry mirror (``/v2/…``), blob GETs go through the swarm — one task per digest, so
the same blob from two registries is stored once — and everything else (``/v2/``,
manifests, HEADs) goes to the upstream registry chosen by the ``X-Dragonfly-Registry``
header, then containerd's ``ns`` query parameter, then the configured default. As a
forward proxy (absolute request URLs, ``HTTP_PROXY``), a GET whose URL matches a ``swarm``
rule goes through the swarm, and so does a registry blob unless a ``direct`` rule matches;
everything else goes straight to the origin. CONNECT is passed through as a tunnel, or,
with a configured CA, intercepted so that the HTTPS requests inside follow the same rules.
The client's ``Authorization`` reaches the origin only: never an event, never a log line.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Final

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict
from yarl import URL

from services.peer.oci import (
    DOCKER_HUB,
    ERROR_CODES,
    REGISTRY_HEADER,
    BlobRef,
    blob_task_id,
    blob_url,
    choose_upstream,
    parse_blob_path,
    registry_error,
    registry_url,
)
from services.peer.proxy_intercept import InterceptCA, intercept
from services.peer.proxy_stream import TaskUnavailable, shaped_task, stream_task
from services.peer.proxy_tunnel import parse_authority, tunnel
from services.peer.request import DownloadRequest

if TYPE_CHECKING:
    from services.peer.daemon import Downloads

log = logging.getLogger("damselfly.proxy")

HOP_BY_HOP: Final = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade", "host", REGISTRY_HEADER.lower()})
CREDENTIALS: Final = ("Authorization", "Cookie")
# A client's Authorization is for the origin: a seed peer fetching on its behalf would not
# have it, so such a download goes back to source itself (Dragonfly's priority 3).
PRIORITY_WITH_CREDENTIALS: Final = 3


@dataclass(frozen=True)
class ProxyRule:
    """URLs matching ``pattern`` go through the swarm (``swarm``) or straight to the origin;
    ``filtered_query_params`` are left out of the task id (signatures, expiry times)."""

    pattern: re.Pattern[str]
    swarm: bool
    filtered_query_params: tuple[str, ...] = ()


def parse_rule(text: str) -> ProxyRule:
    """``REGEX=swarm``, ``REGEX=direct`` or ``REGEX=swarm:param,param`` (filtered query
    parameters). Raises ``ValueError`` with a one-line reason."""
    pattern, sep, action = text.rpartition("=")
    action, _, params = action.partition(":")
    if not sep or not pattern or action not in ("swarm", "direct"):
        raise ValueError(f"bad proxy rule {text!r}: want REGEX=swarm|direct[:param,…]")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"bad proxy rule {text!r}: {exc}") from None
    return ProxyRule(compiled, action == "swarm", tuple(p for p in params.split(",") if p))


def match_rule(rules: tuple[ProxyRule, ...], url: str) -> ProxyRule | None:
    """The first rule whose pattern is found in ``url``."""
    return next((r for r in rules if r.pattern.search(url)), None)


@dataclass(frozen=True)
class ProxyConfig:
    registry: str = DOCKER_HUB
    """The default upstream registry (a base URL), Docker Hub as for Docker's
    ``registry-mirrors``; "" means clients must name one."""
    rules: tuple[ProxyRule, ...] = ()
    piece_length: int = 0
    timeout: float = 30.0
    """Seconds to connect to, or wait for bytes from, an upstream."""
    ca: InterceptCA | None = None
    """Intercept CONNECT with certificates from this CA; None: tunnel it untouched."""


def proxy_config(registry: str, rules: list[str], ca: Path | None = None) -> ProxyConfig:
    """The proxy's settings from ``--registry-mirror`` (default Docker Hub), ``--proxy-rule``
    and ``--proxy-ca`` values. Raises ``ValueError`` (or ``OSError``) with a one-line reason."""
    return ProxyConfig(registry=registry_url(registry) if registry else DOCKER_HUB,
                       rules=tuple(parse_rule(r) for r in rules),
                       ca=InterceptCA.load(ca) if ca is not None else None)


def _error(status: int, code: str, message: str,
           headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(registry_error(code, message), status=status, headers=headers)


def _credentials(request: web.BaseRequest) -> dict[str, str]:
    return {k: request.headers[k] for k in CREDENTIALS if k in request.headers}


def _end_to_end(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """Headers meant for the other end (every value of a repeated one kept)."""
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP)


def proxy_app(downloads: Downloads, config: ProxyConfig) -> web.Application:
    """The proxy as an aiohttp app around the daemon's ``Downloads``."""
    app = web.Application()

    async def session(app: web.Application) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.timeout,
                                        sock_read=config.timeout)
        # A context made now, not aiohttp's made at import: SSL_CERT_FILE is honoured.
        connector = aiohttp.TCPConnector(ssl=ssl.create_default_context())
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False,
                                         connector=connector) as s:
            app[_proxy_key] = Proxy(downloads, config, s)
            yield

    async def route(request: web.Request) -> web.StreamResponse:
        return await request.app[_proxy_key].route(request)

    @web.middleware
    async def connect(request: web.Request, handler: Handler) -> web.StreamResponse:
        """CONNECT targets are ``host:port``, which no route matches."""
        if request.method != "CONNECT":
            return await handler(request)
        return await request.app[_proxy_key].connect(request)

    app.middlewares.append(connect)
    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", route)
    return app


@dataclass(frozen=True)
class Proxy:
    """What every request needs: the daemon's downloads, the settings, one HTTP session."""

    downloads: Downloads
    config: ProxyConfig
    session: aiohttp.ClientSession

    async def connect(self, request: web.Request) -> web.StreamResponse:
        """Intercept with the configured CA, else tunnel; a target that cannot be reached
        is a registry-style 502 and the connection closes."""
        try:
            host, port = parse_authority(request.raw_path)
            if self.config.ca is not None:
                return await intercept(request, self.config.ca.context_for(host),
                                       partial(self._intercepted, request.raw_path))
            return await tunnel(request, host, port, self.config.timeout)
        except ValueError as exc:
            refused = _error(400, "UNSUPPORTED", str(exc))
        except (OSError, TimeoutError) as exc:
            refused = _error(502, "UNAVAILABLE", f"cannot reach {request.raw_path}: "
                                                 f"{exc.__class__.__name__}")
        refused.force_close()  # the connection was meant for a tunnel that never opened
        return refused

    async def _intercepted(self, authority: str, request: web.BaseRequest
                           ) -> web.StreamResponse:
        return await self._absolute(request, f"https://{authority}{request.rel_url}")

    async def route(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.raw_path.startswith(("http://", "https://")):  # absolute form: HTTP_PROXY
            return await self._absolute(request, str(request.url))
        try:
            upstream = choose_upstream(request.headers.get(REGISTRY_HEADER, ""),
                                       request.query.get("ns", ""), self.config.registry)
        except ValueError as exc:
            return _error(400, "UNSUPPORTED", str(exc))
        blob = parse_blob_path(request.path) if request.method == "GET" else None
        if blob is not None:
            return await self._blob(request, upstream, blob)
        target = URL(upstream + request.rel_url.without_query_params("ns").raw_path_qs,
                     encoded=True)
        return await self._forward(request, target)

    async def _absolute(self, request: web.BaseRequest, url: str) -> web.StreamResponse:
        """A forward-proxy request for ``url``: rules first, then registry blobs."""
        rule = match_rule(self.config.rules, url)
        if rule is not None and not rule.swarm:
            return await self._forward(request, URL(url, encoded=True))
        blob = parse_blob_path(request.path) if request.method == "GET" else None
        if blob is not None:  # a registry's blob asked for through the proxy
            return await self._blob(request, str(URL(url).origin()), blob)
        if rule is not None and request.method == "GET":
            return await self._through_swarm(request, DownloadRequest(
                url=url, headers=_credentials(request), piece_length=self.config.piece_length,
                filtered_query_params=list(rule.filtered_query_params)))
        return await self._forward(request, URL(url, encoded=True))

    async def _blob(self, request: web.BaseRequest, upstream: str,
                    blob: BlobRef) -> web.StreamResponse:
        credentials = _credentials(request)
        dl_request = DownloadRequest(
            url=blob_url(upstream, blob), headers=credentials, digest=blob.digest,
            piece_length=self.config.piece_length,
            priority=PRIORITY_WITH_CREDENTIALS if credentials else 0)
        task = blob_task_id(blob.digest, self.config.piece_length)
        return await self._through_swarm(request, dl_request, task_id=task, digest=blob.digest,
                                         headers={"Docker-Content-Digest": blob.digest})

    async def _through_swarm(self, request: web.BaseRequest, dl_request: DownloadRequest, *,
                             task_id: str = "", digest: str = "",
                             headers: dict[str, str] | None = None) -> web.StreamResponse:
        download = self.downloads.start(dl_request, task_id=task_id)
        log.info("%s via the swarm as task %s", digest or dl_request.url.split("?")[0],
                 download.task_id[:12])
        try:
            tf = await shaped_task(download)
            return await stream_task(request, download, tf, digest=digest, headers=headers)
        except TaskUnavailable as exc:
            return await self._explain_failure(dl_request, str(exc))

    async def _explain_failure(self, dl_request: DownloadRequest, reason: str) -> web.Response:
        """The swarm could not fetch it: ask the origin (headers only) why, so the client
        sees the registry's own 401/404 and can react; else a registry-style 502."""
        try:
            async with self.session.head(dl_request.url, headers=dl_request.headers) as answer:
                status = answer.status
                challenge = answer.headers.get("WWW-Authenticate")
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _error(503, "UNAVAILABLE", f"upstream {URL(dl_request.url).host} failed: "
                                              f"{exc.__class__.__name__}")
        if status >= 400:
            return _error(status, ERROR_CODES.get(status, "UNKNOWN"),
                          f"upstream answered {status}",
                          {"WWW-Authenticate": challenge} if challenge else None)
        return _error(502, "UNAVAILABLE", f"the swarm could not fetch it: {reason}")

    async def _forward(self, request: web.BaseRequest, target: URL) -> web.StreamResponse:
        """Pass the request to ``target`` and stream the answer back unchanged (no
        redirects followed, no decompression); an unreachable upstream is a 503."""
        try:
            answer = await self.session.request(
                request.method, target, headers=_end_to_end(request.headers),
                data=request.content if request.body_exists else None, allow_redirects=False)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _error(503, "UNAVAILABLE", f"upstream {target.host}:{target.port} "
                                              f"unreachable: {exc.__class__.__name__}")
        try:
            response = web.StreamResponse(status=answer.status, reason=answer.reason,
                                          headers=_end_to_end(answer.headers))
            await response.prepare(request)
            async for chunk in answer.content.iter_chunked(1 << 16):
                await response.write(chunk)
            await response.write_eof()
            return response
        finally:
            answer.release()


_proxy_key: Final = web.AppKey("proxy", Proxy)
