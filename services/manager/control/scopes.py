"""Which scheduler cluster a host belongs to, from the clusters' scopes. Pure.

Each cluster is scored on the host's affinity to its scopes, weighted as Dragonfly's
manager does: CIDR, then hostname pattern, then IDC and location (``a|b|c`` prefixes).
The best positive score wins (ties go to the smaller id); with no match, the default
cluster; with no default, none.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from damselfly.events.admin import ClusterScopes

WEIGHTS: Final = {"cidr": 0.4, "hostname": 0.3, "idc": 0.15, "location": 0.15}
LOCATION_DEPTH: Final = 5


@dataclass(frozen=True)
class HostFacts:
    hostname: str = ""
    ip: str = ""
    idc: str = ""
    location: str = ""


@dataclass(frozen=True)
class Candidate:
    cluster: str
    scopes: ClusterScopes
    is_default: bool = False


def _in_cidrs(ip: str, cidrs: Iterable[str]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    for cidr in cidrs:
        try:
            if address in ipaddress.ip_network(cidr, strict=False):
                return True
        except ValueError:
            continue  # a bad scope entry never matches, and never hides the others
    return False


def _hostname_matches(hostname: str, patterns: Iterable[str]) -> bool:
    for pattern in patterns:
        try:
            if hostname and re.fullmatch(pattern, hostname):
                return True
        except re.error:
            continue
    return False


def _location_affinity(location: str, scopes: Iterable[str]) -> float:
    mine = [p for p in location.split("|") if p]
    best = 0
    for scope in scopes:
        theirs = [p for p in scope.split("|") if p]
        if not theirs or len(theirs) > len(mine) or mine[:len(theirs)] != theirs:
            continue
        best = max(best, len(theirs))
    return min(best, LOCATION_DEPTH) / LOCATION_DEPTH


def affinity(host: HostFacts, scopes: ClusterScopes) -> float:
    """How well a host fits a cluster's scopes, 0 (not at all) to 1."""
    return (WEIGHTS["cidr"] * _in_cidrs(host.ip, scopes.cidrs)
            + WEIGHTS["hostname"] * _hostname_matches(host.hostname, scopes.hostnames)
            + WEIGHTS["idc"] * bool(host.idc and host.idc in scopes.idc)
            + WEIGHTS["location"] * _location_affinity(host.location, scopes.location))


def find_cluster(candidates: Iterable[Candidate], host: HostFacts) -> str | None:
    """The cluster ``host`` belongs to, or ``None`` when nothing matches and none is default."""
    chosen = sorted(candidates, key=lambda c: c.cluster)
    scored = [(affinity(host, c.scopes), c.cluster) for c in chosen]
    best = max(scored, key=lambda s: s[0], default=(0.0, ""))
    if best[0] > 0:
        return next(cluster for score, cluster in scored if score == best[0])
    return next((c.cluster for c in chosen if c.is_default), None)


def valid_scopes(scopes: ClusterScopes) -> list[str]:
    """One-line problems with a cluster's scopes (bad CIDRs, bad patterns); empty if fine."""
    problems = []
    for cidr in scopes.cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            problems.append(f"not a CIDR: {cidr!r}")
    for pattern in scopes.hostnames:
        try:
            re.compile(pattern)
        except re.error as exc:
            problems.append(f"not a hostname pattern: {pattern!r} ({exc})")
    return problems
