"""Access policy: called-AE check, calling-AE whitelist with hosts, limits, reload."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from fastscp.access import (
    CALLED_AE_NOT_RECOGNIZED,
    CALLING_AE_NOT_RECOGNIZED,
    LOCAL_LIMIT_EXCEEDED,
    AccessPolicy,
    AssociationLimiter,
    parse_peer_ip,
)
from fastscp.app import access_policy, association_limits, load_access_policy
from fastscp.config import Config, ConfigError, parse_config_text

HOSTS = {"ct1.example.org": ["10.1.2.3"], "dual.example.org": ["10.1.2.4", "2001:db8::4"]}


def limiter_from(cfg: Config) -> AssociationLimiter:
    return AssociationLimiter(*association_limits(cfg))


def fake_resolve(name: str) -> Iterable[str]:
    if name not in HOSTS:
        raise OSError(f"unknown host {name}")
    return HOSTS[name]


def policy(yaml_text: str) -> AccessPolicy:
    return access_policy(parse_config_text(yaml_text), resolve=fake_resolve)


WHITELIST = """\
server:
  ae_title: MY_PACS
access:
  allowed_calling_aes:
    - STORESCU
    - ae_title: CT1
      hosts: [ct1.example.org, 192.168.10.0/24]
    - ae_title: MR1
      hosts: [10.5.0.7, 2001:db8:1::/48]
    - ae_title: DUAL
      hosts: [dual.example.org]
"""


def test_reason_codes_are_ps38_values() -> None:
    assert (CALLING_AE_NOT_RECOGNIZED.result, CALLING_AE_NOT_RECOGNIZED.source, CALLING_AE_NOT_RECOGNIZED.reason) == (1, 1, 3)
    assert (CALLED_AE_NOT_RECOGNIZED.result, CALLED_AE_NOT_RECOGNIZED.source, CALLED_AE_NOT_RECOGNIZED.reason) == (1, 1, 7)
    assert (LOCAL_LIMIT_EXCEEDED.result, LOCAL_LIMIT_EXCEEDED.source, LOCAL_LIMIT_EXCEEDED.reason) == (2, 3, 2)


def test_open_policy_admits_anyone_addressing_us() -> None:
    p = policy("server:\n  ae_title: MY_PACS\n")
    assert p.check("ANYONE", "MY_PACS", "203.0.113.9") is None
    assert p.check("ANYONE", "MY_PACS        ", "203.0.113.9") is None  # PDU padding


def test_wrong_called_ae_is_rejected_with_reason_7() -> None:
    p = policy("server:\n  ae_title: MY_PACS\n")
    reason = p.check("STORESCU", "OTHER_PACS", "10.0.0.1")
    assert reason == CALLED_AE_NOT_RECOGNIZED
    assert "OTHER_PACS" in reason.detail and "10.0.0.1" in reason.detail
    assert p.check("STORESCU", "my_pacs", "10.0.0.1") == CALLED_AE_NOT_RECOGNIZED  # strict


def test_called_ae_case_insensitive_and_check_off() -> None:
    p = policy("server:\n  ae_title: MY_PACS\n  called_ae_comparison: case-insensitive\n")
    assert p.check("X", " my_pacs ", "10.0.0.1") is None
    assert p.check("X", "MY_PACS2", "10.0.0.1") == CALLED_AE_NOT_RECOGNIZED
    p = policy("server:\n  ae_title: MY_PACS\n  check_called_ae: false\n")
    assert p.check("X", "WHATEVER", "10.0.0.1") is None


def test_whitelisted_ae_without_hosts_is_allowed_from_anywhere() -> None:
    p = policy(WHITELIST)
    assert p.check("STORESCU", "MY_PACS", "203.0.113.50") is None
    assert p.check("STORESCU  ", "MY_PACS", "::1") is None


def test_unknown_calling_ae_is_rejected_with_reason_3() -> None:
    p = policy(WHITELIST)
    reason = p.check("INTRUDER", "MY_PACS", "10.1.2.3")
    assert reason == CALLING_AE_NOT_RECOGNIZED
    assert "INTRUDER" in reason.detail and "10.1.2.3" in reason.detail
    assert p.check("storescu", "MY_PACS", "10.1.2.3") == CALLING_AE_NOT_RECOGNIZED  # strict


def test_host_bound_ae_from_resolved_name_ok_and_wrong_host_rejected() -> None:
    p = policy(WHITELIST)
    assert p.check("CT1", "MY_PACS", "10.1.2.3") is None  # ct1.example.org
    reason = p.check("CT1", "MY_PACS", "10.1.2.99")
    assert reason == CALLING_AE_NOT_RECOGNIZED and "not allowed from 10.1.2.99" in reason.detail


def test_cidr_match_ipv4_ipv6_and_mapped_addresses() -> None:
    p = policy(WHITELIST)
    assert p.check("CT1", "MY_PACS", "192.168.10.200") is None
    assert p.check("CT1", "MY_PACS", "192.168.11.1") == CALLING_AE_NOT_RECOGNIZED
    assert p.check("CT1", "MY_PACS", "::ffff:192.168.10.5") is None  # dual-stack listener
    assert p.check("MR1", "MY_PACS", "10.5.0.7") is None
    assert p.check("MR1", "MY_PACS", "2001:db8:1:ffff::1") is None
    assert p.check("MR1", "MY_PACS", "2001:db8:2::1") == CALLING_AE_NOT_RECOGNIZED
    assert p.check("DUAL", "MY_PACS", "2001:db8::4") is None
    assert p.check("DUAL", "MY_PACS", "not-an-ip") == CALLING_AE_NOT_RECOGNIZED


def test_called_ae_is_checked_before_calling_ae() -> None:
    assert policy(WHITELIST).check("INTRUDER", "ELSEWHERE", "10.0.0.1") == CALLED_AE_NOT_RECOGNIZED


def test_wildcard_ae_entry_admits_any_title_from_its_hosts() -> None:
    p = policy("""\
        server: {ae_title: MY_PACS}
        access:
          allowed_calling_aes:
            - ae_title: "*"
              hosts: [10.9.0.0/16]
    """.replace("        ", ""))
    assert p.check("WHOEVER", "MY_PACS", "10.9.1.1") is None
    assert p.check("WHOEVER", "MY_PACS", "10.8.1.1") == CALLING_AE_NOT_RECOGNIZED


def test_calling_ae_case_insensitive() -> None:
    p = policy(WHITELIST + "  calling_ae_comparison: case-insensitive\n")
    assert p.check("storescu", "MY_PACS", "10.0.0.1") is None


def test_unresolvable_host_admits_nobody_and_is_reported() -> None:
    p = policy("""\
server: {ae_title: MY_PACS}
access:
  allowed_calling_aes:
    - ae_title: GONE
      hosts: [gone.example.org]
""")
    assert p.check("GONE", "MY_PACS", "10.1.2.3") == CALLING_AE_NOT_RECOGNIZED
    assert p.problems and "gone.example.org" in p.problems[0]


def test_real_resolver_resolves_localhost() -> None:
    cfg = parse_config_text(
        "server: {ae_title: MY_PACS}\naccess:\n  allowed_calling_aes:\n"
        "    - {ae_title: LOCAL, hosts: [localhost]}\n")
    p = access_policy(cfg)
    assert p.check("LOCAL", "MY_PACS", "127.0.0.1") is None
    assert p.check("LOCAL", "MY_PACS", "192.0.2.1") == CALLING_AE_NOT_RECOGNIZED


def test_reload_builds_a_new_policy_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server: {ae_title: MY_PACS}\naccess:\n  allowed_calling_aes: [OLD]\n")
    first = load_access_policy(path, resolve=fake_resolve)
    assert first.check("OLD", "MY_PACS", "10.0.0.1") is None
    assert first.check("NEW", "MY_PACS", "10.0.0.1") == CALLING_AE_NOT_RECOGNIZED
    path.write_text("server: {ae_title: MY_PACS}\naccess:\n  allowed_calling_aes: [NEW]\n")
    second = load_access_policy(path, resolve=fake_resolve)
    assert second.check("NEW", "MY_PACS", "10.0.0.1") is None
    assert second.check("OLD", "MY_PACS", "10.0.0.1") == CALLING_AE_NOT_RECOGNIZED
    assert first.check("OLD", "MY_PACS", "10.0.0.1") is None  # the old one is untouched
    path.write_text("access:\n  allowed_calling_aes: [{hosts: [x]}]\n")
    with pytest.raises(ConfigError):
        load_access_policy(path, resolve=fake_resolve)


def test_parse_peer_ip() -> None:
    assert str(parse_peer_ip("::ffff:10.0.0.1")) == "10.0.0.1"
    assert str(parse_peer_ip("fe80::1%eth0")) == "fe80::1"
    assert parse_peer_ip("example.org") is None


# --- association limits ---------------------------------------------------------------

def test_per_ae_limit() -> None:
    limiter = AssociationLimiter(max_total=10, max_per_ae=2)
    assert limiter.acquire("CT1") is None
    assert limiter.acquire("CT1 ") is None  # same AE, padded
    reason = limiter.acquire("CT1")
    assert reason == LOCAL_LIMIT_EXCEEDED and "'CT1'" in reason.detail and "limit is 2" in reason.detail
    assert (reason.result, reason.source, reason.reason) == (2, 3, 2)
    assert limiter.acquire("MR1") is None  # another AE is unaffected
    limiter.release("CT1")
    assert limiter.acquire("CT1") is None
    assert limiter.active("CT1") == 2 and limiter.total == 3


def test_total_limit_and_release_accounting() -> None:
    limiter = AssociationLimiter(max_total=2)
    assert limiter.acquire("A") is None and limiter.acquire("B") is None
    assert limiter.acquire("C") == LOCAL_LIMIT_EXCEEDED
    limiter.release("A")
    assert limiter.acquire("C") is None
    assert limiter.snapshot() == {"B": 1, "C": 1}
    with pytest.raises(ValueError):
        limiter.release("A")
    assert limiter.total == 2


def test_limits_from_config_and_lowered_on_reload() -> None:
    limiter = limiter_from(
        parse_config_text("server:\n  max_associations: 3\n  max_associations_per_ae: 1\n"))
    assert limiter.acquire("A") is None
    assert limiter.acquire("A") == LOCAL_LIMIT_EXCEEDED
    assert limiter.acquire("B") is None
    limiter.set_limits(1, None)  # running ones stay, new ones wait
    assert limiter.total == 2
    assert limiter.acquire("C") == LOCAL_LIMIT_EXCEEDED


def test_share_and_slot_kept_for_a_calling_ae_holding_none() -> None:
    """The defaults' rule: half the total per calling AE, the last slot only
    for a calling AE holding none."""
    limiter = limiter_from(parse_config_text("server:\n  max_associations: 4\n"))
    assert (limiter.max_total, limiter.max_per_ae, limiter.reserved_for_new) == (4, 2, 1)
    assert limiter.acquire("A") is None and limiter.acquire("A") is None
    assert limiter.acquire("A") == LOCAL_LIMIT_EXCEEDED  # its share
    assert limiter.acquire("B") is None  # 3 running: the last slot is kept
    reason = limiter.acquire("B")
    assert reason == LOCAL_LIMIT_EXCEEDED and "kept for a calling AE holding none" in reason.detail
    assert limiter.acquire("C") is None  # a newcomer takes it
    assert limiter.acquire("D") == LOCAL_LIMIT_EXCEEDED and limiter.total == 4
    limiter.set_limits(*association_limits(parse_config_text(
        "server:\n  max_associations: 6\n  max_associations_per_ae: 6\n  reserved_for_new_ae: 0\n")))
    assert limiter.acquire("A") is None and limiter.acquire("A") is None and limiter.total == 6
