"""The origins a daemon can fetch from, by URL scheme: http(s), file, s3 and hf."""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from damselfly.services.peer.hf import HfSource, hf_config
from damselfly.services.peer.s3 import S3Source, s3_config
from damselfly.services.peer.sources import FileSource, HttpSource, Source


class Sources:
    """The sources this daemon knows, by URL scheme."""

    def __init__(self, by_scheme: Mapping[str, Source]) -> None:
        self._by_scheme = dict(by_scheme)

    @classmethod
    def default(cls, timeout: float = 30.0, environ: Mapping[str, str] = os.environ) -> Sources:
        """http(s), file, s3 and hf (configured from ``environ``: see ``s3.s3_config`` and
        ``hf.hf_config``). Raises ``ValueError`` for an S3 configuration that cannot work."""
        http_source = HttpSource(timeout)
        return cls({"http": http_source, "https": http_source, "file": FileSource(),
                    "s3": S3Source(s3_config(environ), timeout),
                    "hf": HfSource(hf_config(environ), timeout)})

    def register(self, scheme: str, source: Source) -> None:
        self._by_scheme[scheme] = source

    def for_url(self, url: str) -> Source:
        """Raises ``ValueError`` for a scheme nobody registered."""
        scheme = urlsplit(url).scheme
        if scheme not in self._by_scheme:
            raise ValueError(f"unsupported URL scheme {scheme!r} in {url} "
                             f"(supported: {', '.join(sorted(self._by_scheme))})")
        return self._by_scheme[scheme]
