"""``damselfly get -r``: the files under an http(s) directory listing (an index page's
links below the base URL, recursively), as dfget lists a directory to download."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from urllib.parse import unquote, urljoin, urlsplit


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.extend(v for k, v in attrs if k == "href" and v)


def list_directory(url: str, headers: dict[str, str]) -> Iterator[tuple[str, str]]:
    """``(file URL, relative path)`` for every file under a directory listing, recursively.
    Only links below ``url`` count (no parents, no sort links). Raises ``OSError``."""
    base = url if url.endswith("/") else url + "/"
    request = urllib.request.Request(base, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        parser = _Links()
        parser.feed(response.read().decode(errors="replace"))
    for href in dict.fromkeys(parser.hrefs):
        target = urljoin(base, href)
        if not target.startswith(base) or target == base or urlsplit(target).query:
            continue
        relative = unquote(target[len(base):])
        if target.endswith("/"):
            for child, child_path in list_directory(target, headers):
                yield child, f"{relative}{child_path}"
        else:
            yield target, relative
