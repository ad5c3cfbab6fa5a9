"""``hf://`` origins: files of Hugging Face Hub repositories (models, datasets, spaces).

``hf://[datasets/|spaces/]OWNER/REPO[@REVISION]/PATH`` is the Hub's
``{endpoint}/[datasets/|spaces/]OWNER/REPO/resolve/{REVISION, default main}/{PATH}``. The Hub
answers a large file with a redirect to its CDN; ``HttpSource`` follows it with Range, and
leaves the token behind when the redirect leaves the Hub's origin. The endpoint and token
come from the daemon's environment, once, at start: ``HF_ENDPOINT`` (default
https://huggingface.co) and ``HF_TOKEN`` (or ``HUGGING_FACE_HUB_TOKEN``; anonymous without).
The task id is that of the ``hf://`` URL, so every daemon asking for one file shares it.

``damselfly get -r hf://OWNER/REPO[@REVISION]`` lists the repository through the Hub's
tree API (``/api/{models|datasets|spaces}/OWNER/REPO/tree/{REVISION}?recursive=true``,
following its ``Link: rel="next"`` pages) with the token of the ``get`` process.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.client import responses
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit

from damselfly.services.peer.sources import (
    HttpSource,
    OriginStatusError,
    SourceError,
    SourceStream,
    origin_of,
)

DEFAULT_ENDPOINT: Final = "https://huggingface.co"
KINDS: Final = {"datasets": "datasets", "spaces": "spaces"}  # the rest are models
_NEXT: Final = re.compile(r'<([^>]+)>\s*;\s*rel="next"')


@dataclass(frozen=True)
class HfConfig:
    endpoint: str
    token: str  # "": anonymous


def hf_config(environ: Mapping[str, str]) -> HfConfig:
    token = environ.get("HF_TOKEN") or environ.get("HUGGING_FACE_HUB_TOKEN") or ""
    return HfConfig((environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"), token)


@dataclass(frozen=True)
class HfFile:
    kind: str  # models, datasets or spaces
    repo: str  # OWNER/REPO
    revision: str
    path: str  # "" for the whole repository (a listing)

    @property
    def prefix(self) -> str:
        """The repository's place in Hub URLs (models have none)."""
        return "" if self.kind == "models" else f"{self.kind}/"


def parse_hf_url(url: str, *, file: bool = True) -> HfFile:
    """Raises ``ValueError`` for a URL that names no repository (or, with ``file``, no
    file in it)."""
    parts = urlsplit(url)
    words = [parts.netloc, *parts.path.split("/")[1:]] if parts.scheme == "hf" else []
    kind = KINDS.get(words[0], "models") if words else "models"
    if words and words[0] in KINDS:
        words = words[1:]
    if len(words) < 2 or not all(words[:2]):
        raise ValueError(f"{url}: want hf://[datasets/|spaces/]OWNER/REPO[@REVISION]/PATH")
    owner, name = words[0], words[1]
    name, _, revision = name.partition("@")
    path = unquote("/".join(words[2:]).strip("/"))
    revision = unquote(revision)
    if file and not path:
        raise ValueError(f"{url}: names a repository, not a file in it (-r downloads all)")
    return HfFile(kind, f"{owner}/{name}", revision or "main", path)


def resolve_url(endpoint: str, f: HfFile) -> str:
    return (f"{endpoint}/{f.prefix}{f.repo}/resolve/{quote(f.revision, safe='')}/"
            f"{quote(f.path)}")


def hf_error(url: str, exc: OriginStatusError) -> SourceError:
    """One line from the Hub's JSON error: ``hf://o/r/f: Entry not found (404)``."""
    try:
        reason = json.loads(exc.body).get("error", "")
    except (ValueError, AttributeError):
        reason = ""
    reason = str(reason).splitlines()[0] if reason else responses.get(exc.status, "error")
    return SourceError(f"{url}: {reason} ({exc.status})", transient=exc.transient)


class HfSource:
    """``hf://`` files through an ``HttpSource``; request headers are not sent (the Hub gets
    the daemon's token only)."""

    def __init__(self, config: HfConfig, timeout: float = 30.0) -> None:
        self.config = config
        self._http = HttpSource(timeout)

    def open(self, url: str, headers: Mapping[str, str], start: int = 0,
             end: int = -1) -> SourceStream:
        try:
            target = resolve_url(self.config.endpoint, parse_hf_url(url))
        except ValueError as exc:
            raise SourceError(str(exc), transient=False) from None
        auth = {"Authorization": f"Bearer {self.config.token}"} if self.config.token else {}
        try:
            return self._http.open(target, auth, start, end)
        except OriginStatusError as exc:
            raise hf_error(url, exc) from exc


def list_repo(url: str, config: HfConfig) -> Iterator[tuple[str, str]]:
    """``(hf:// URL of each file, its path below the folder url names)`` in the repository.
    Raises ``OSError`` or ``ValueError``."""
    f = parse_hf_url(url, file=False)
    pinned = f"@{quote(f.revision, safe='')}" if "@" in url else ""
    repo_url = f"hf://{f.prefix}{f.repo}{pinned}"
    folder = f"/{quote(f.path)}" if f.path else ""
    page: str | None = (f"{config.endpoint}/api/{f.kind}/{f.repo}/tree/"
                        f"{quote(f.revision, safe='')}{folder}?recursive=true")
    hub = origin_of(config.endpoint)
    opener = urllib.request.build_opener(_HubOnlyRedirects(hub))
    while page:
        # the token only to the Hub itself: not to a page or a redirect on another origin
        auth = {"Authorization": f"Bearer {config.token}"} \
            if config.token and origin_of(page) == hub else {}
        with opener.open(urllib.request.Request(page, headers=auth), timeout=30) as resp:
            entries = json.loads(resp.read())
            link = _NEXT.search(resp.headers.get("Link", ""))
        if not isinstance(entries, list):
            raise ValueError(f"{url}: the Hub's listing is not a list")
        for entry in entries:
            if isinstance(entry, dict) and entry.get("type") == "file":
                path = str(entry["path"])
                yield f"{repo_url}/{quote(path)}", path[len(f.path):].lstrip("/")
        page = link.group(1) if link else None


class _HubOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects, dropping the token when one leaves the Hub's origin."""

    def __init__(self, hub: tuple[str, str, int | None]) -> None:
        self._hub = hub

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and origin_of(newurl) != self._hub:
            new.remove_header("Authorization")
        return new
