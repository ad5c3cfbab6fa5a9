"""The daemon's HTTP proxy: a registry mirror and a rule-driven forward proxy.

As a registry mirror (``/v2/…``), blob GETs go through the swarm — one task per digest, so
the same blob from two registries is stored once — and everything else (``/v2/``,
manifests, HEADs) goes to the upstream registry chosen by the ``X-Dragonfly-Registry``
header, then containerd's ``ns`` query parameter, then the configured default. Manifests
are kept (``manifests.py``): one asked for by digest is answered from the cache when it
holds it; one asked for by tag, and the ``/v2/`` ping, are answered from it (marked
``X-Damselfly-Stale: 1``) only when the upstream cannot be reached or answers 5xx. As a
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
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Final

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from anyio import to_thread
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from damselfly.events.secrets import sensitive_headers
from damselfly.services.peer.downloads import Downloads
from damselfly.services.peer.manifests import MAX_MANIFEST, CachedManifest, ManifestCache
from damselfly.services.peer.oci import (
    DOCKER_HUB,
    ERROR_CODES,
    REGISTRY_HEADER,
    BlobRef,
    ManifestRef,
    blob_task_id,
    blob_url,
    choose_upstream,
    is_sha256,
    parse_blob_path,
    parse_manifest_path,
    registry_error,
    registry_url,
)
from damselfly.services.peer.proxy_intercept import InterceptCA, intercept
from damselfly.services.peer.proxy_stream import TaskUnavailable, shaped_task, stream_task
from damselfly.services.peer.proxy_tunnel import parse_authority, tunnel
from damselfly.services.peer.request import DownloadRequest

log = logging.getLogger("damselfly.proxy")

HOP_BY_HOP: Final = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade", "host", REGISTRY_HEADER.lower()})
# A client's Authorization is for the origin: a seed peer fetching on its behalf would not
# have it, so such a download goes back to source itself (Dragonfly's priority 3).
PRIORITY_WITH_CREDENTIALS: Final = 3
STALE_HEADER: Final = "X-Damselfly-Stale"
"""On an answer the mirror gave from its cache because the upstream could not."""
DOWN_FOR: Final = 30.0
"""Seconds after an upstream failed to answer during which cached manifests answer first."""


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
    return {k: v for k, v in sensitive_headers(request.headers).items()
            if k.lower() not in HOP_BY_HOP}


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
            manifests = ManifestCache(downloads.ctx.storage.root / "manifests")
            app[_proxy_key] = Proxy(downloads, config, s, manifests)
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
    """What every request needs: the daemon's downloads, the settings, one HTTP session,
    the manifest cache."""

    downloads: Downloads
    config: ProxyConfig
    session: aiohttp.ClientSession
    manifests: ManifestCache
    down: dict[str, float] = field(default_factory=dict)
    """Upstreams (host:port) that could not be reached, until when cached answers go first."""

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
        if request.method not in ("GET", "HEAD"):
            return await self._forward(request, target)
        manifest = parse_manifest_path(request.path)
        if manifest is not None:
            return await self._manifest(request, upstream, manifest, target)
        if request.path == "/v2/":
            return await self._forward(request, target, stale=partial(self._ping, upstream))
        return await self._forward(request, target)

    async def _manifest(self, request: web.BaseRequest, upstream: str, ref: ManifestRef,
                        target: URL) -> web.StreamResponse:
        """By digest from the cache when it holds it, else from the upstream and kept; by
        tag from the upstream (tags move), from the cache only when the upstream cannot
        answer."""
        keep = partial(self._keep, upstream, ref)
        if ref.by_digest:
            cached = await to_thread.run_sync(self.manifests.get, ref.reference)
            if cached is not None:
                return _cached(cached)
            return await self._forward(request, target, keep=keep)
        return await self._forward(request, target, keep=keep,
                                   stale=partial(self._stale_tag, upstream, ref))

    async def _keep(self, upstream: str, ref: ManifestRef, headers: CIMultiDictProxy[str],
                    body: bytes | None) -> None:
        """Keep a manifest the upstream sent (``body`` None: a HEAD, or too large), and
        which digest a tag points at; a cache that cannot write never fails the answer."""
        announced = headers.get("Docker-Content-Digest", "")
        try:
            if body is None:
                digest = announced if is_sha256(announced) else ""
            else:
                expected = ref.reference if ref.by_digest else announced
                digest = await to_thread.run_sync(self.manifests.put, body,
                                                  headers.get("Content-Type", ""), expected)
                if not digest:
                    log.warning("manifest %s:%s not cached: its body is not %s", ref.name,
                                ref.reference, expected)
            if digest and not ref.by_digest:
                await to_thread.run_sync(self.manifests.set_tag, upstream, ref.name,
                                         ref.reference, digest)
        except OSError as exc:
            log.warning("manifest %s:%s not cached: %s", ref.name, ref.reference, exc)

    async def _stale_tag(self, upstream: str, ref: ManifestRef, reason: str
                         ) -> web.StreamResponse | None:
        cached = await to_thread.run_sync(self.manifests.tagged, upstream, ref.name,
                                          ref.reference)
        if cached is None:
            return None
        log.warning("%s:%s served from the cache as %s: %s", ref.name, ref.reference,
                    cached.digest, reason)
        return _cached(cached, {STALE_HEADER: "1"})

    async def _ping(self, upstream: str, reason: str) -> web.StreamResponse | None:
        """The mirror speaks for an upstream it holds manifests of, so clients go on to ask
        for them."""
        if not await to_thread.run_sync(self.manifests.knows, upstream):
            return None
        log.warning("/v2/ of %s answered by the mirror: %s", upstream, reason)
        return web.json_response({}, headers={STALE_HEADER: "1"})

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

    async def _forward(self, request: web.BaseRequest, target: URL, *,
                       keep: Keep | None = None, stale: Stale | None = None
                       ) -> web.StreamResponse:
        """Pass the request to ``target`` and stream the answer back unchanged (no
        redirects followed, no decompression); an unreachable upstream is a 503. When the
        upstream cannot be reached or answers 5xx, ``stale`` may answer instead; a 200 is
        handed to ``keep`` before the client has it (so what a client got is kept), with
        the body of a GET up to ``MAX_MANIFEST`` bytes."""
        upstream = f"{target.host}:{target.port}"
        if stale is not None and self.down.get(upstream, 0.0) > time.monotonic():
            # it failed moments ago: a hung upstream would cost every request its timeout
            served = await stale(f"upstream {upstream} unreachable moments ago")
            if served is not None:
                return served
        try:
            answer = await self.session.request(
                request.method, target, headers=_end_to_end(request.headers),
                data=request.content if request.body_exists else None, allow_redirects=False)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.down[upstream] = time.monotonic() + DOWN_FOR
            reason = f"upstream {upstream} unreachable: {exc.__class__.__name__}"
            served = await stale(reason) if stale is not None else None
            return served or _error(503, "UNAVAILABLE", reason)
        self.down.pop(upstream, None)
        try:
            if stale is not None and answer.status >= 500:
                served = await stale(f"upstream {target.host}:{target.port} answered "
                                     f"{answer.status}")
                if served is not None:
                    return served
            head = bytearray()
            if keep is not None:
                while len(head) <= MAX_MANIFEST and (
                        chunk := await answer.content.read(MAX_MANIFEST + 1 - len(head))):
                    head += chunk
                if answer.status == 200:
                    whole = request.method == "GET" and len(head) <= MAX_MANIFEST
                    await keep(answer.headers, bytes(head) if whole else None)
            response = web.StreamResponse(status=answer.status, reason=answer.reason,
                                          headers=_end_to_end(answer.headers))
            await response.prepare(request)
            await response.write(head)
            async for chunk in answer.content.iter_chunked(1 << 16):
                await response.write(chunk)
            await response.write_eof()
            return response
        finally:
            answer.release()


Keep = Callable[[CIMultiDictProxy[str], bytes | None], Awaitable[None]]
Stale = Callable[[str], Awaitable[web.StreamResponse | None]]


def _cached(manifest: CachedManifest, headers: dict[str, str] | None = None) -> web.Response:
    """A manifest from the cache, as a registry answers it (HEAD: the headers alone)."""
    return web.Response(body=manifest.body, headers={
        "Docker-Content-Digest": manifest.digest, "Content-Type": manifest.content_type,
        **(headers or {})})


_proxy_key: Final = web.AppKey("proxy", Proxy)
