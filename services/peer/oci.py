"""OCI distribution client bits shared by the registry mirror and preheat: which upstream a
request is for, blob and manifest paths, blob URLs and task ids, registry-style errors, byte
ranges and bearer-token auth. Everything but ``bearer_token`` is pure."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import urlencode, urlsplit

from damselfly.events.taskid import task_id

if TYPE_CHECKING:  # only the session's type: `damselfly init` and `get` never load aiohttp
    import aiohttp

REGISTRY_HEADER: Final = "X-Dragonfly-Registry"
DOCKER_HUB: Final = "https://registry-1.docker.io"
_SHA256: Final = r"sha256:[0-9a-f]{64}"
_BLOB_PATH: Final = re.compile(rf"^/v2/(?P<name>.+)/blobs/(?P<digest>{_SHA256})$")
_MANIFEST_PATH: Final = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)$")
_DIGEST: Final = re.compile(rf"^{_SHA256}$")
_TAG: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_CHALLENGE_PARAM: Final = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class BlobRef:
    name: str
    digest: str


def parse_blob_path(path: str) -> BlobRef | None:
    """``/v2/<name>/blobs/sha256:<hex>`` → its repository and digest; None for other paths."""
    match = _BLOB_PATH.match(path)
    return BlobRef(match["name"], match["digest"]) if match else None


def is_sha256(value: str) -> bool:
    """Whether ``value`` is a ``sha256:<hex>`` digest in the form registries write it."""
    return _DIGEST.match(value) is not None


@dataclass(frozen=True)
class ManifestRef:
    name: str
    reference: str
    """A sha256 digest or a tag."""

    @property
    def by_digest(self) -> bool:
        return is_sha256(self.reference)


def parse_manifest_path(path: str) -> ManifestRef | None:
    """``/v2/<name>/manifests/<tag or sha256 digest>`` → its repository and reference; None
    for other paths and for digests of other algorithms."""
    match = _MANIFEST_PATH.match(path)
    if match is None or not (is_sha256(match["reference"]) or _TAG.match(match["reference"])):
        return None
    return ManifestRef(match["name"], match["reference"])


def registry_url(value: str) -> str:
    """A registry given as ``host[:port]`` or a URL → its base URL (https unless given).
    Raises ``ValueError`` for something that is not one."""
    url = value.strip()
    if "://" not in url:
        url = f"https://{url}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname \
            or parts.path not in ("", "/") or parts.query:
        raise ValueError(f"bad registry {value!r}: want host[:port] or http(s)://host[:port]")
    return f"{parts.scheme}://{parts.netloc}"


def choose_upstream(header: str, ns: str, default: str, known: tuple[str, ...] = ()) -> str:
    """The registry a request is for: the ``X-Dragonfly-Registry`` header, then containerd's
    ``ns`` query parameter, then ``default``. A namespace naming a registry in ``known`` (or
    the default) keeps that registry's scheme; ``docker.io`` means Docker Hub's API host.
    Raises ``ValueError`` when none is given or one is malformed."""
    if header:
        return registry_url(header)
    if ns:
        if ns == "docker.io":
            return DOCKER_HUB
        for url in (default, *known):
            if url and urlsplit(url).netloc == ns:
                return url
        return registry_url(ns)
    if default:
        return default
    raise ValueError(f"no upstream registry: send {REGISTRY_HEADER}, or ?ns=, or configure "
                     "a default mirror")


def blob_url(upstream: str, blob: BlobRef) -> str:
    return f"{upstream}/v2/{blob.name}/blobs/{blob.digest}"


def blob_task_id(digest: str, piece_length: int = 0) -> str:
    """A blob's task id comes from its digest alone (Dragonfly's TaskIDV2 with a digest), so
    the same blob pulled from two registries or repositories is one task, stored once."""
    return task_id(digest, piece_length=piece_length)


def registry_error(code: str, message: str) -> dict[str, object]:
    """The error body the distribution spec defines, which every registry client reads."""
    return {"errors": [{"code": code, "message": message, "detail": None}]}


ERROR_CODES: Final = {401: "UNAUTHORIZED", 403: "DENIED", 404: "BLOB_UNKNOWN",
                      429: "TOOMANYREQUESTS"}


class RangeError(ValueError):
    """A Range header that cannot be satisfied (answer 416)."""


def parse_range(header: str, length: int) -> tuple[int, int] | None:
    """``Range: bytes=a-b`` (or ``a-``, ``-n``) against a ``length``-byte blob →
    ``(start, stop)``, half-open; None without a header. Raises ``RangeError``."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip() != "bytes" or not dash or "," in spec:
        raise RangeError(f"unsupported range {header!r}: want one bytes=a-b range")
    try:
        if not first:
            start, stop = max(length - int(last), 0), length
        else:
            start, stop = int(first), min(int(last) + 1, length) if last else length
    except ValueError:
        raise RangeError(f"bad range {header!r}") from None
    if start >= stop or start >= length:
        raise RangeError(f"range {header!r} outside the {length}-byte blob")
    return start, stop


@dataclass(frozen=True)
class Challenge:
    scheme: str
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge:
    """``WWW-Authenticate: Bearer realm="…",service="…",scope="…"`` → its parts."""
    scheme, _, rest = header.strip().partition(" ")
    return Challenge(scheme.lower(), dict(_CHALLENGE_PARAM.findall(rest)))


def token_url(challenge: Challenge, scope: str) -> str:
    """Where to ask for a bearer token for ``scope`` (``repository:<name>:pull``).
    Raises ``ValueError`` for a challenge without a realm."""
    realm = challenge.params.get("realm", "")
    if challenge.scheme != "bearer" or not realm:
        raise ValueError(f"not a bearer challenge with a realm: {challenge.scheme}")
    query = {k: v for k, v in (("service", challenge.params.get("service", "")),
                               ("scope", scope)) if v}
    return f"{realm}?{urlencode(query)}"


def basic_auth(user: str, password: str) -> str:
    """An ``Authorization`` value for a registry login."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def bearer_token(session: aiohttp.ClientSession, upstream: str, name: str,
                       login: str = "") -> str:
    """An ``Authorization`` value for pulling ``name`` from ``upstream``: "" when the
    registry asks for none, else a bearer token from the realm its challenge names, asked
    with ``login`` (a ``basic_auth`` value) when given. Raises ``aiohttp.ClientError`` or
    ``ValueError``."""
    async with session.get(f"{upstream}/v2/") as probe:
        if probe.status != 401:
            return ""
        challenge = parse_challenge(probe.headers.get("WWW-Authenticate", ""))
    if challenge.scheme == "basic":
        if not login:
            raise ValueError(f"{upstream} wants a login")
        return login
    async with session.get(token_url(challenge, f"repository:{name}:pull"),
                           headers={"Authorization": login} if login else None) as answer:
        answer.raise_for_status()
        body = await answer.json(content_type=None)
    token = body.get("token") or body.get("access_token")
    if not isinstance(token, str) or not token:
        raise ValueError(f"the token service of {upstream} returned no token")
    return f"Bearer {token}"
