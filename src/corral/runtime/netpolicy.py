"""Egress policy of a sandbox: the model, its parser, and the address ranges no policy can open.

Pure (no I/O): ``parse_policy`` turns what a caller sent into a ``NetworkPolicy``; the DNS forwarder
asks ``NetworkPolicy.name_allowed``; ``corral.runtime.netrules`` turns it into nftables rules.

A rule is one string: an IPv4 address or CIDR (``10.20.0.0/16``), a domain (``files.example.com``)
or a wildcard domain (``*.example.org``: every subdomain at any depth, not the apex), each with an
optional ``:port`` (TCP and UDP; CIDRs also take ``:low-high``). See docs/network.md.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["none", "internet", "allowlist"]
MODES: tuple[str, ...] = ("none", "internet", "allowlist")
MAX_RULES = 256

# Never reachable from a sandbox, whatever its policy or the operator says (reason per entry).
ALWAYS_DENIED: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "'this' network; 0.0.0.0 reaches local services on some stacks"),
    ("127.0.0.0/8", "loopback of the host"),
    ("169.254.0.0/16", "link-local, including the cloud metadata address 169.254.169.254"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved, and the limited broadcast address"),
)
# Denied unless the operator opens a range of them (CORRAL_NET_ALLOW_PRIVATE).
PRIVATE: tuple[tuple[str, str], ...] = (
    ("10.0.0.0/8", "RFC 1918 private network"),
    ("172.16.0.0/12", "RFC 1918 private network (also the default sandbox address pool)"),
    ("192.168.0.0/16", "RFC 1918 private network"),
    ("100.64.0.0/10", "carrier-grade NAT shared space (RFC 6598)"),
)
# IPv6 (fc00::/7 and all else) is not routed for sandboxes at all: their traffic is IPv4 only.

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class PolicyError(ValueError):
    """A rule or mode a caller sent is malformed; the message names it."""


@dataclass(frozen=True)
class Rule:
    """One allow or deny entry. Exactly one of ``net`` and ``domain`` is set."""

    text: str
    net: ipaddress.IPv4Network | None = None
    domain: str | None = None  # lower case, without a trailing dot; "*.x.y" for a wildcard
    ports: tuple[int, int] | None = None  # inclusive range; None = every port

    def matches_name(self, name: str) -> bool:
        if self.domain is None:
            return False
        if self.domain.startswith("*."):
            return name.endswith(self.domain[1:])
        return name == self.domain


@dataclass(frozen=True)
class NetworkPolicy:
    """``none``: loopback only. ``internet``: every public address except ``deny``. ``allowlist``:
    only ``allow`` (minus ``deny``). ``allow_wins`` flips the precedence (E2B's rule) — by default a
    deny entry beats an allow entry."""

    mode: Mode = "internet"
    allow: tuple[Rule, ...] = ()
    deny: tuple[Rule, ...] = ()
    allow_wins: bool = False
    max_connections: int = 0  # 0 = no limit

    @property
    def networked(self) -> bool:
        return self.mode != "none"

    @property
    def plain_internet(self) -> bool:
        """Every public address and no rules: the default network, whatever ``allow_wins`` says (it
        orders rules, and there are none). E2B's creates come with ``allow_wins`` set."""
        return self.mode == "internet" and not self.allow and not self.deny

    @property
    def filters_packets(self) -> bool:
        """Does a packet of this sandbox need rules of its own? Not in internet mode without a deny
        rule on addresses and without a connection cap: allow rules there re-open what is open, and
        rules on names act in the DNS forwarder."""
        return self.mode != "internet" or self.max_connections > 0 or any(r.net is not None for r in self.deny)

    def name_allowed(self, name: str) -> bool:
        """May the DNS forwarder answer ``name`` for this sandbox?"""
        name = name.lower().rstrip(".")
        allowed = self.mode == "internet" or any(r.matches_name(name) for r in self.allow)
        denied = any(r.matches_name(name) for r in self.deny)
        if self.allow_wins and any(r.matches_name(name) for r in self.allow):
            return True
        return allowed and not denied

    def name_ports(self, name: str) -> list[tuple[int, int] | None]:
        """Port ranges the addresses of an allowed ``name`` open (None: all ports); [] in internet mode."""
        if self.mode != "allowlist":
            return []
        name = name.lower().rstrip(".")
        return [r.ports for r in self.allow if r.matches_name(name)]

    def describe(self) -> dict[str, object]:
        return {
            "mode": self.mode, "allow_out": [r.text for r in self.allow], "deny_out": [r.text for r in self.deny],
        }


NONE = NetworkPolicy(mode="none")
INTERNET = NetworkPolicy(mode="internet")


def parse_rule(text: str) -> Rule:
    raw = text.strip().lower()
    if not raw:
        raise PolicyError("empty rule")
    host, ports = raw, None
    if raw.count(":") == 1:
        host, port_text = raw.split(":")
        ports = _ports(port_text, text)
    elif ":" in raw:
        raise PolicyError(f"{text!r}: IPv6 rules are not supported (sandboxes have IPv4 only)")
    if re.fullmatch(r"[0-9./]+", host):
        try:
            net = ipaddress.IPv4Network(host, strict=False)
        except ValueError as exc:
            raise PolicyError(f"{text!r}: not an IPv4 address or CIDR ({exc})") from exc
        return Rule(text=text.strip(), net=net, ports=ports)
    domain = host.rstrip(".")
    labels = domain[2:].split(".") if domain.startswith("*.") else domain.split(".")
    if len(domain) > 253 or len(labels) < 2 or not all(_LABEL.match(lab) for lab in labels):
        raise PolicyError(f"{text!r}: not an IPv4 address, CIDR or domain name (wildcards: '*.example.org')")
    if ports is not None and ports[0] != ports[1]:
        raise PolicyError(f"{text!r}: a domain rule takes one port, not a range")
    return Rule(text=text.strip(), domain=domain, ports=ports)


def _ports(port_text: str, text: str) -> tuple[int, int]:
    low, sep, high = port_text.partition("-")
    if not (low.isascii() and low.isdigit()) or (sep and not (high.isascii() and high.isdigit())):
        raise PolicyError(f"{text!r}: port must be a number or a range like 8000-8100")
    lo, hi = int(low), int(high) if sep else int(low)
    if not 1 <= lo <= hi <= 65535:
        raise PolicyError(f"{text!r}: ports must be within 1-65535, low before high")
    return lo, hi


def parse_rules(texts: Iterable[str] | None, what: str) -> tuple[Rule, ...]:
    items = list(texts or ())
    if len(items) > MAX_RULES:
        raise PolicyError(f"{what}: at most {MAX_RULES} rules")
    try:
        return tuple(parse_rule(t) for t in items)
    except PolicyError as exc:
        raise PolicyError(f"{what}: {exc}") from None


def parse_policy(
    network: str | None = None, allow_out: Sequence[str] | None = None, deny_out: Sequence[str] | None = None,
    *, max_connections: int = 0,
) -> NetworkPolicy:
    """The native API's model: ``network`` is ``none`` or ``internet`` (default); an ``allow_out``
    list (even empty) makes it an allow-list; ``deny_out`` always applies and beats ``allow_out``."""
    mode = network or "internet"
    if mode not in MODES:
        raise PolicyError(f"network: must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "none":
        if allow_out or deny_out:
            raise PolicyError("network: 'none' takes no allow_out/deny_out rules")
        return NONE
    allow = parse_rules(allow_out, "allow_out")
    deny = parse_rules(deny_out, "deny_out")
    if allow_out is not None:
        mode = "allowlist"
    return NetworkPolicy(mode=mode, allow=allow, deny=deny, max_connections=max_connections)  # type: ignore[arg-type]


ALL_TRAFFIC = ("0.0.0.0/0", "0.0.0.0", "*")


def from_e2b(
    allow_internet_access: bool | None, allow_out: Sequence[str] | None, deny_out: Sequence[str] | None,
    *, max_connections: int = 0,
) -> NetworkPolicy:
    """E2B's fields: ``denyOut`` containing 0.0.0.0/0 (or ``allow_internet_access=false``) makes an
    allow-list of ``allowOut``; other ``denyOut`` entries are deny rules; allow entries win over
    deny entries, as E2B documents."""
    deny_texts = [d for d in deny_out or () if d.strip() not in ALL_TRAFFIC]
    closed = allow_internet_access is False or len(deny_texts) != len(list(deny_out or ()))
    allow = parse_rules(allow_out, "allowOut")
    deny = parse_rules(deny_texts, "denyOut")
    if any(r.domain for r in deny):
        raise PolicyError("denyOut: domain names are not supported for deny rules (as in E2B)")
    mode: Mode = "allowlist" if closed else "internet"
    return NetworkPolicy(mode=mode, allow=allow, deny=deny, allow_wins=True, max_connections=max_connections)


@dataclass(frozen=True)
class OperatorRanges:
    """Private ranges the operator opened to sandboxes (still subject to each sandbox's policy)."""

    nets: tuple[ipaddress.IPv4Network, ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, text: str | None) -> OperatorRanges:
        nets = []
        for item in (text or "").replace(",", " ").split():
            try:
                nets.append(ipaddress.IPv4Network(item, strict=False))
            except ValueError as exc:
                raise PolicyError(f"CORRAL_NET_ALLOW_PRIVATE: {item!r} is not an IPv4 CIDR") from exc
        for net in nets:
            for denied, _ in ALWAYS_DENIED:
                if net.overlaps(ipaddress.IPv4Network(denied)):
                    raise PolicyError(f"CORRAL_NET_ALLOW_PRIVATE: {net} overlaps the always-denied {denied}")
        return cls(tuple(nets))
