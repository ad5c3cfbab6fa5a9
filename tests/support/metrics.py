"""A Prometheus scrape, parsed by ``prometheus_client``'s own parser."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[str, tuple[tuple[str, str], ...]]


def samples(text: str) -> dict[Sample, float]:
    """Every sample of an exposition by ``(name, sorted labels)``. Raises ``ValueError`` for
    text that is not the exposition format."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(url: str) -> str:
    """The exposition at ``url`` (blocking)."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text: str = resp.read().decode()
    return text
