"""Egress policies: rule parsing, name matching, E2B's fields, and the nftables text they become."""

from __future__ import annotations

import ipaddress

import pytest

from corral.runtime import netrules
from corral.runtime.netpolicy import OperatorRanges, PolicyError, from_e2b, parse_policy, parse_rule


def test_rules_parse_addresses_cidrs_domains_and_ports() -> None:
    assert parse_rule("10.20.0.0/16:443").net == ipaddress.IPv4Network("10.20.0.0/16")
    assert parse_rule("10.20.0.0/16:443").ports == (443, 443)
    assert parse_rule("1.2.3.4:8000-8100").ports == (8000, 8100)
    assert parse_rule("Files.Example.com.").domain == "files.example.com"
    assert parse_rule("*.example.org:443").domain == "*.example.org"
    for bad in ("", "localhost", "example", "1.2.3.4:0", "1.2.3.4:9-1", "::1", "a..b.com", "x.com:1-2", "*.com.*"):
        with pytest.raises(PolicyError):
            parse_rule(bad)


def test_names_allowed_by_mode_with_deny_beating_allow() -> None:
    p = parse_policy(None, ["files.example.com", "*.example.org"], ["bad.example.org"])
    assert p.mode == "allowlist"
    assert p.name_allowed("files.example.com") and p.name_allowed("a.b.example.org")
    assert not p.name_allowed("example.org")  # a wildcard is not its apex
    assert not p.name_allowed("bad.example.org") and not p.name_allowed("other.net")
    internet = parse_policy("internet", None, ["bad.example.org"])
    assert internet.name_allowed("anything.net") and not internet.name_allowed("bad.example.org")
    assert parse_policy("none").networked is False
    assert parse_policy(None, [], None).mode == "allowlist"  # an empty allow-list denies everything
    with pytest.raises(PolicyError):
        parse_policy("none", ["1.2.3.4"])
    with pytest.raises(PolicyError):
        parse_policy("wifi")


def test_e2b_fields_map_to_the_same_model() -> None:
    assert from_e2b(None, None, None).mode == "internet"
    assert from_e2b(False, None, None).mode == "allowlist"
    closed = from_e2b(None, ["1.1.1.1"], ["0.0.0.0/0", "1.0.0.0/8"])
    assert closed.mode == "allowlist" and closed.allow_wins and [r.text for r in closed.deny] == ["1.0.0.0/8"]
    with pytest.raises(PolicyError):
        from_e2b(None, None, ["example.com"])  # E2B has no domain deny rules


def test_operator_ranges_cannot_open_always_denied_ranges() -> None:
    assert OperatorRanges.parse("10.1.0.0/16, 192.168.5.0/24").nets[1] == ipaddress.IPv4Network("192.168.5.0/24")
    with pytest.raises(PolicyError):
        OperatorRanges.parse("169.254.169.0/24")
    with pytest.raises(PolicyError):
        OperatorRanges.parse("not-a-cidr")


def test_policy_rules_put_deny_first_unless_allow_wins() -> None:
    names = netrules.Names("0123456789ab")
    p = parse_policy(None, ["10.1.0.0/16:443"], ["10.1.2.0/24"])
    rules = netrules.policy_rules(names, 5, p)
    assert rules[0] == "ip daddr 10.1.2.0/24 drop"
    assert rules[1] == "ip daddr 10.1.0.0/16 meta l4proto @tcp_udp th dport 443 accept"
    assert rules[-1] == "drop"
    e2b = netrules.policy_rules(names, 5, from_e2b(None, ["10.1.2.3"], ["0.0.0.0/0", "10.1.2.0/24"]))
    assert e2b.index("ip daddr 10.1.2.3/32 accept") < e2b.index("ip daddr 10.1.2.0/24 drop")
    assert netrules.policy_rules(names, 5, parse_policy("internet"))[-1] == "accept"
    assert names.veth(5) == "crl012345670005" and len(names.veth(0xFFFF)) == 15


def test_the_table_denies_host_sandboxes_and_reserved_ranges() -> None:
    names = netrules.Names("0123456789ab")
    text = netrules.table(names, ipaddress.IPv4Network("172.16.0.0/20"), ipaddress.IPv4Address("172.16.0.1"), ())
    assert "169.254.0.0/16" in text and "127.0.0.0/8" in text and "10.0.0.0/8" in text
    assert 'iifname "crl01234567*" jump to_host' in text
    assert "ip daddr 172.16.0.1 udp dport 53 accept" in text
    # nothing else reaches the host: exposed ports are reached from inside (bwrap's netns, gVisor's agent relay)
    to_host = text[text.index("chain to_host"):text.index("chain forward")]
    assert to_host.count("accept") == 1 and "drop" in to_host
    assert 'oifname "crl*" drop' in text and "meta nfproto != ipv4 drop" in text
    learned = netrules.learn(names, 5, ["1.2.3.4"], [None, (443, 443)], 300)
    assert "dns_0005 { 1.2.3.4 timeout 300s }" in learned and "dnsp_0005 { 1.2.3.4 . 443 timeout 300s }" in learned
