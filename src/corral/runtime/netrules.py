"""nftables text for one server's sandbox network: the per-instance table and per-sandbox batches.

Pure (no I/O, unit-tested); ``nft_priv`` loads the text. One table ``inet corral_<instance>`` per
server, so servers sharing a host never touch each other's rules. The evaluation order, for a
packet from a sandbox (docs/network.md):

    to the host itself (input hook)   → only DNS to the gateway, from the sandbox's own address,
                                        and replies on connections the host opened from the gateway
                                        (the server reaching a gVisor sandbox's port over its veth)
    forwarded (forward hook)          → spoofed source / IPv6 / to any sandbox: drop
                                      → established flows: accept
                                      → always-denied ranges, private ranges not opened by the operator: drop
                                      → the sandbox's own chain (its policy) or, when its policy
                                        filters nothing more, accept; an unknown veth: drop
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from corral.runtime.netpolicy import ALWAYS_DENIED, PRIVATE, NetworkPolicy, Rule

VETH_PREFIX = "crl"  # every Corral host-side veth; +8 hex of the instance +4 hex of the slot = 15 chars


@dataclass(frozen=True)
class Names:
    """Host-wide names of one server instance."""

    instance: str

    @property
    def table(self) -> str:
        return f"corral_{self.instance}"

    @property
    def veth_prefix(self) -> str:
        return f"{VETH_PREFIX}{self.instance[:8]}"

    def veth(self, slot: int) -> str:
        return f"{self.veth_prefix}{slot:04x}"

    def chain(self, slot: int) -> str:
        return f"sb_{slot:04x}"

    def dns_set(self, slot: int) -> str:
        return f"dns_{slot:04x}"

    def dns_port_set(self, slot: int) -> str:
        return f"dnsp_{slot:04x}"


def _elements(nets: list[str]) -> str:
    return f" elements = {{ {', '.join(nets)} }};" if nets else ""


def table(names: Names, block: ipaddress.IPv4Network, gateway: ipaddress.IPv4Address,
          operator: tuple[ipaddress.IPv4Network, ...]) -> str:
    """The whole per-instance table (replaces an older one of the same name in the same batch)."""
    t = names.table
    mine = f'"{names.veth_prefix}*"'
    return f"""
table inet {t}
delete table inet {t}
table inet {t} {{
  set always_deny {{ type ipv4_addr; flags interval;{_elements([n for n, _ in ALWAYS_DENIED])} }}
  set private {{ type ipv4_addr; flags interval;{_elements([n for n, _ in PRIVATE])} }}
  set operator {{ type ipv4_addr; flags interval;{_elements([str(n) for n in operator])} }}
  set sandboxes {{ type ifname . ipv4_addr; }}
  set tcp_udp {{ type inet_proto; elements = {{ tcp, udp }}; }}
  map policies {{ type ifname : verdict; }}
  chain input {{
    type filter hook input priority filter - 5; policy accept;
    iifname {mine} jump to_host
  }}
  chain to_host {{
    meta nfproto ipv4 iifname . ip saddr @sandboxes ip daddr {gateway} udp dport 53 accept
    drop
  }}
  chain forward {{
    type filter hook forward priority filter - 5; policy accept;
    iifname {mine} jump egress
    oifname {mine} ct state established,related accept
    oifname {mine} drop
  }}
  chain egress {{
    meta nfproto != ipv4 drop
    iifname . ip saddr != @sandboxes drop
    oifname "{VETH_PREFIX}*" drop
    ct state established,related accept
    ip daddr @always_deny drop
    ip daddr @private ip daddr != @operator drop
    iifname vmap @policies
    drop
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {block} oifname != "{VETH_PREFIX}*" masquerade
  }}
}}
"""


def _ports(rule: Rule) -> str:
    if rule.ports is None:
        return ""
    lo, hi = rule.ports
    return f"meta l4proto @tcp_udp th dport {lo if lo == hi else f'{lo}-{hi}'} "


def policy_rules(names: Names, slot: int, policy: NetworkPolicy) -> list[str]:
    """The rules of a sandbox's own chain, in order (domains are enforced through the DNS sets)."""
    rules: list[str] = []
    if policy.max_connections:
        rules.append(f"ct state new ct count over {policy.max_connections} drop")
    deny = [f"ip daddr {r.net} {_ports(r)}drop" for r in policy.deny if r.net is not None]
    allow = [f"ip daddr {r.net} {_ports(r)}accept" for r in policy.allow if r.net is not None]
    allow += [
        f"ip daddr @{names.dns_set(slot)} accept",
        f"meta l4proto @tcp_udp ip daddr . th dport @{names.dns_port_set(slot)} accept",
    ]
    rules += [*allow, *deny] if policy.allow_wins else [*deny, *allow]
    rules.append("accept" if policy.mode == "internet" else "drop")
    return rules


def _chain_body(t: str, names: Names, slot: int, policy: NetworkPolicy) -> list[str]:
    return [f"add rule inet {t} {names.chain(slot)} {r}" for r in policy_rules(names, slot, policy)]


def _own(t: str, names: Names, slot: int, policy: NetworkPolicy) -> list[str]:
    """A filtering sandbox's own sets and chain, with its rules. Each is flushed after its ``add``
    (which keeps an existing one): a chain or set of the slot's earlier holder that a detach raced
    past (an update in flight when it was killed) must not lend it rules or addresses."""
    dns, ports, chain = names.dns_set(slot), names.dns_port_set(slot), names.chain(slot)
    return [
        f"add set inet {t} {dns} {{ type ipv4_addr; flags timeout; }}",
        f"flush set inet {t} {dns}",
        f"add set inet {t} {ports} {{ type ipv4_addr . inet_service; flags timeout; }}",
        f"flush set inet {t} {ports}",
        f"add chain inet {t} {chain}",
        f"flush chain inet {t} {chain}",
        *_chain_body(t, names, slot, policy),
    ]


def _drop_own(t: str, names: Names, slot: int) -> list[str]:
    return [
        f"delete chain inet {t} {names.chain(slot)}",
        f"delete set inet {t} {names.dns_set(slot)}",
        f"delete set inet {t} {names.dns_port_set(slot)}",
    ]


def _verdict(names: Names, slot: int, policy: NetworkPolicy) -> str:
    """The `policies` verdict of the sandbox's veth: its own chain, or accept when it filters nothing
    (no chain and no sets to add, and none to read back: libnftables fetches every set of the table
    before each batch, so per-sandbox sets made every create and kill slower by the live count)."""
    return f"goto {names.chain(slot)}" if policy.filters_packets else "accept"


def attach(names: Names, slot: int, address: ipaddress.IPv4Address, policy: NetworkPolicy) -> str:
    """One batch: the sandbox's own sets and chain if it filters, its identity and its policy verdict."""
    t, veth = names.table, names.veth(slot)
    lines = [
        *(_own(t, names, slot, policy) if policy.filters_packets else []),
        f'add element inet {t} sandboxes {{ "{veth}" . {address} }}',
        f'add element inet {t} policies {{ "{veth}" : {_verdict(names, slot, policy)} }}',
    ]
    return "\n".join(lines) + "\n"


def update(names: Names, slot: int, old: NetworkPolicy, new: NetworkPolicy) -> str:
    """One atomic batch replacing a sandbox's policy ("" if nothing changes in the table); addresses
    learnt through DNS are forgotten (``_own`` flushes the sets)."""
    if not old.filters_packets and not new.filters_packets:
        return ""
    t, veth = names.table, names.veth(slot)
    lines = _own(t, names, slot, new) if new.filters_packets else []
    if old.filters_packets != new.filters_packets:
        lines += [
            f'delete element inet {t} policies {{ "{veth}" }}',
            f'add element inet {t} policies {{ "{veth}" : {_verdict(names, slot, new)} }}',
            *(_drop_own(t, names, slot) if old.filters_packets else []),
        ]
    return "\n".join(lines) + "\n"


def detach(names: Names, slot: int, address: ipaddress.IPv4Address, policy: NetworkPolicy) -> str:
    t, veth = names.table, names.veth(slot)
    lines = [
        f'delete element inet {t} policies {{ "{veth}" }}',
        f'delete element inet {t} sandboxes {{ "{veth}" . {address} }}',
        *(_drop_own(t, names, slot) if policy.filters_packets else []),
    ]
    return "\n".join(lines) + "\n"


def learn(names: Names, slot: int, addresses: list[str], ports: list[tuple[int, int] | None], ttl: int) -> str:
    """Open the addresses an allowed name resolved to (for ``ttl`` seconds), on the rule's ports."""
    t = names.table
    lines: list[str] = []
    if addresses and any(p is None for p in ports):
        elems = ", ".join(f"{a} timeout {ttl}s" for a in addresses)
        lines.append(f"add element inet {t} {names.dns_set(slot)} {{ {elems} }}")
    for p in ports:
        if p is None or not addresses:
            continue
        elems = ", ".join(f"{a} . {p[0]} timeout {ttl}s" for a in addresses)  # domain rules have one port
        lines.append(f"add element inet {t} {names.dns_port_set(slot)} {{ {elems} }}")
    return "\n".join(lines) + ("\n" if lines else "")
