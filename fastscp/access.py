"""Access policy: who may open an association, decided from the A-ASSOCIATE-RQ.

Pure logic, no sockets: the network layer calls ``AccessPolicy.check`` with
the Called and Calling AE Titles of the request and the peer's IP address, and
answers a refusal with A-ASSOCIATE-RJ carrying the returned result, source and
reason (PS3.8 9.3.4, Table 9-21):

- called AE title is not ours: result 1 (rejected-permanent), source 1
  (DICOM UL service-user), reason 7 (called-AE-title-not-recognized);
- calling AE title not on the whitelist, or not from one of its hosts: result 1,
  source 1, reason 3 (calling-AE-title-not-recognized);
- too many associations (``AssociationLimiter``: in total, for one calling AE
  title, or into the slots kept for a calling AE holding none): result 2
  (rejected-transient), source 3 (service-provider, presentation related),
  reason 2 (local-limit-exceeded).

Host names in the whitelist are resolved when the policy is built (at start
and on reload), never per association, so a check costs a dict lookup and a
few network comparisons. Building a policy may block on DNS: run it off the
event loop. Reload = build a new policy from the new configuration and swap
the reference; running associations keep whatever they were admitted with.

AE titles are compared after removing leading and trailing spaces, which are
padding in the AE VR (PS3.5 6.2); "case-insensitive" also folds case.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = [
    "CALLED_AE_NOT_RECOGNIZED",
    "CALLING_AE_NOT_RECOGNIZED",
    "LOCAL_LIMIT_EXCEEDED",
    "AccessPolicy",
    "AssociationLimiter",
    "RejectReason",
    "resolve_host",
]

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class RejectReason:
    """The three A-ASSOCIATE-RJ fields (PS3.8 9.3.4) and words for the log.

    result: 1 rejected-permanent, 2 rejected-transient.
    source: 1 service-user, 2 service-provider (ACSE), 3 service-provider
    (presentation). reason: meaning depends on the source.
    """

    result: int
    source: int
    reason: int
    description: str
    detail: str = field(default="", compare=False)  # who and why, for the log line

    def with_detail(self, detail: str) -> RejectReason:
        return RejectReason(self.result, self.source, self.reason, self.description, detail)

    def __str__(self) -> str:
        text = f"{self.description} (result {self.result}, source {self.source}, reason {self.reason})"
        return f"{text}: {self.detail}" if self.detail else text


CALLING_AE_NOT_RECOGNIZED = RejectReason(1, 1, 3, "calling AE title not recognized")
CALLED_AE_NOT_RECOGNIZED = RejectReason(1, 1, 7, "called AE title not recognized")
LOCAL_LIMIT_EXCEEDED = RejectReason(2, 3, 2, "local limit exceeded")


def _normalizer(comparison: str) -> Callable[[str], str]:
    if comparison == "case-insensitive":
        return lambda ae: ae.strip(" ").upper()
    if comparison == "strict":
        return lambda ae: ae.strip(" ")
    raise ValueError(f"unknown AE title comparison {comparison!r}")


def parse_peer_ip(peer_ip: str) -> IPAddress | None:
    """The peer address as the socket reports it, IPv4-mapped IPv6 addresses
    (``::ffff:10.0.0.1`` from a dual-stack listener) folded to IPv4 and any
    zone index (``fe80::1%eth0``) dropped. None if it is not an IP address."""
    try:
        address = ipaddress.ip_address(peer_ip.split("%", 1)[0].strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def resolve_host(name: str) -> list[str]:
    """Every address a host name resolves to (A and AAAA)."""
    infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    return sorted({str(info[4][0]) for info in infos})


def _host_networks(host: str, resolve: Callable[[str], Iterable[str]]) -> tuple[list[IPNetwork], str | None]:
    """Networks a whitelist host stands for, and an error if it has none."""
    text = host.strip()
    try:
        return [ipaddress.ip_network(text, strict=False)], None
    except ValueError:
        pass
    try:
        addresses = [parse_peer_ip(a) for a in resolve(text)]
    except OSError as exc:
        return [], f"cannot resolve {text!r}: {exc}"
    networks = [ipaddress.ip_network(a) for a in addresses if a is not None]
    return networks, None if networks else f"{text!r} resolved to no address"


@dataclass(frozen=True, slots=True)
class _Entry:
    ae_title: str  # as configured, for messages
    networks: tuple[IPNetwork, ...]
    anywhere: bool  # no hosts configured

    def admits(self, address: IPAddress | None) -> bool:
        if self.anywhere:
            return True
        return address is not None and any(address in net for net in self.networks)


class AccessPolicy:
    """Called-AE check and calling-AE whitelist, immutable once built."""

    def __init__(
        self,
        ae_title: str,
        *,
        check_called_ae: bool = True,
        called_ae_comparison: str = "strict",
        allowed: Iterable[tuple[str, Iterable[str]]] = (),
        calling_ae_comparison: str = "strict",
        resolve: Callable[[str], Iterable[str]] = resolve_host,
    ) -> None:
        """``allowed`` is (AE title or "*", hosts) pairs; empty admits anyone."""
        self._called_norm = _normalizer(called_ae_comparison)
        self._calling_norm = _normalizer(calling_ae_comparison)
        self.ae_title = ae_title
        self._our_ae = self._called_norm(ae_title)
        self.check_called_ae = check_called_ae
        by_ae: dict[str, list[_Entry]] = {}
        wildcard: list[_Entry] = []
        problems: list[str] = []
        count = 0
        for ae, hosts in allowed:
            count += 1
            networks: list[IPNetwork] = []
            hosts = list(hosts)
            for host in hosts:
                nets, problem = _host_networks(host, resolve)
                networks += nets
                if problem:
                    problems.append(f"{ae}: {problem}")
            entry = _Entry(ae, tuple(networks), anywhere=not hosts)
            if ae.strip() == "*":
                wildcard.append(entry)
            else:
                by_ae.setdefault(self._calling_norm(ae), []).append(entry)
        self._by_ae = by_ae
        self._wildcard = tuple(wildcard)
        self.whitelist_enabled = count > 0
        # Host names that did not resolve: they admit nobody (fail closed);
        # the caller should log these at start and on reload.
        self.problems: tuple[str, ...] = tuple(problems)
        for problem in problems:
            log.warning("access list: %s (entry admits no host by that name)", problem)

    def check(self, calling_ae: str, called_ae: str, peer_ip: str) -> RejectReason | None:
        """None to accept, else why to reject (with a detail for the log)."""
        if self.check_called_ae and self._called_norm(called_ae) != self._our_ae:
            return CALLED_AE_NOT_RECOGNIZED.with_detail(
                f"called AE {called_ae.strip()!r} is not {self.ae_title!r} "
                f"(calling AE {calling_ae.strip()!r}, peer {peer_ip})")
        if not self.whitelist_enabled:
            return None
        address = parse_peer_ip(peer_ip)
        entries = self._by_ae.get(self._calling_norm(calling_ae), ())
        if any(e.admits(address) for e in entries) or any(e.admits(address) for e in self._wildcard):
            return None
        if entries:
            why = f"calling AE {calling_ae.strip()!r} is not allowed from {peer_ip}"
        else:
            why = f"calling AE {calling_ae.strip()!r} is not on the whitelist (peer {peer_ip})"
        return CALLING_AE_NOT_RECOGNIZED.with_detail(why)


class AssociationLimiter:
    """Counts running associations, in total and per calling AE title.

    Three limits, so that one peer cannot hold every slot: ``max_total``;
    ``max_per_ae``, a calling AE title's share; and ``reserved_for_new``,
    the last slots of the total, which only a calling AE title holding no
    association may take (a newcomer still gets in when the others hold the
    rest).

    ``acquire`` before accepting (after the access check), ``release`` exactly
    once when an accepted association ends, however it ends. Not thread-safe:
    call it from the event loop thread only. ``set_limits`` (reload) never
    drops running associations; it only affects new ones.
    """

    def __init__(self, max_total: int, max_per_ae: int | None = None, reserved_for_new: int = 0) -> None:
        self.max_total = max_total
        self.max_per_ae = max_per_ae
        self.reserved_for_new = reserved_for_new
        self._total = 0
        self._per_ae: dict[str, int] = {}

    def set_limits(self, max_total: int, max_per_ae: int | None, reserved_for_new: int = 0) -> None:
        self.max_total = max_total
        self.max_per_ae = max_per_ae
        self.reserved_for_new = reserved_for_new

    def acquire(self, calling_ae: str) -> RejectReason | None:
        key = calling_ae.strip(" ")
        if self._total >= self.max_total:
            return LOCAL_LIMIT_EXCEEDED.with_detail(
                f"{self._total} associations running, the limit is {self.max_total}")
        held = self._per_ae.get(key, 0)
        if self.max_per_ae is not None and held >= self.max_per_ae:
            return LOCAL_LIMIT_EXCEEDED.with_detail(
                f"{held} associations running for calling AE {key!r}, the limit is {self.max_per_ae}")
        if held and self._total >= self.max_total - self.reserved_for_new:
            return LOCAL_LIMIT_EXCEEDED.with_detail(
                f"{self._total} associations running, the last {self.reserved_for_new} of {self.max_total} are kept "
                f"for a calling AE holding none, and {key!r} holds {held}")
        self._total += 1
        self._per_ae[key] = held + 1
        return None

    def release(self, calling_ae: str) -> None:
        key = calling_ae.strip(" ")
        held = self._per_ae.get(key, 0)
        if held <= 0:
            raise ValueError(f"release without acquire for calling AE {key!r}")
        self._total -= 1
        if held == 1:
            del self._per_ae[key]
        else:
            self._per_ae[key] = held - 1

    @property
    def total(self) -> int:
        return self._total

    def active(self, calling_ae: str) -> int:
        return self._per_ae.get(calling_ae.strip(" "), 0)

    def snapshot(self) -> dict[str, int]:
        """Running associations per calling AE (for the status endpoint)."""
        return dict(self._per_ae)
