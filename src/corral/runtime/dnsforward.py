"""The per-node DNS forwarder sandboxes resolve through (UDP on the instance's gateway address, port 53).

It knows each sandbox by its source address (nftables drops spoofed sources), answers only names
the sandbox's policy allows (others get REFUSED), forwards allowed questions to the host's
resolver, and — for allow-list sandboxes — opens the A records it returns in that sandbox's
nftables sets *before* the answer goes back, so the connection that follows is let through.
AAAA questions get an empty answer: sandboxes have IPv4 only. Every question is recorded.

Runs on the server's event loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from corral.runtime.netpolicy import NetworkPolicy

log = logging.getLogger("corral.dns")
IP_FREEBIND = 15
LOG_SIZE = 256
MIN_PIN_SECONDS = 300  # clients cache answers longer than tiny TTLs; keep their addresses open that long
UPSTREAM_TIMEOUT = 4.0

Learn = Callable[["Client", list[str], list[tuple[int, int] | None], int], Awaitable[None]]


@dataclass
class Client:
    """A sandbox as the forwarder sees it."""

    sandbox_id: str
    slot: int
    policy: NetworkPolicy
    queries: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=LOG_SIZE))


class Forwarder(asyncio.DatagramProtocol):
    def __init__(self, upstream: tuple[str, int], learn: Learn) -> None:
        self.upstream = upstream
        self.learn = learn
        self.clients: dict[str, Client] = {}  # by sandbox address
        self.transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, address: str, port: int = 53) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)  # the gateway address appears with the first veth
        sock.setblocking(False)
        sock.bind((address, port))
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, sock=sock)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is not a subclass

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        client = self.clients.get(addr[0])
        if client is None:
            return
        task = asyncio.get_running_loop().create_task(self._answer(client, data, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, client: Client, data: bytes, addr: tuple[str, int]) -> None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return
        if not query.question:
            return
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        qtype = dns.rdatatype.to_text(question.rdtype)
        entry: dict[str, Any] = {"at": time.time(), "name": name, "type": qtype}
        client.queries.append(entry)
        if not client.policy.name_allowed(name):
            entry["answer"] = "refused"
            self._send(_reply(query, dns.rcode.REFUSED), addr)
            return
        if question.rdtype == dns.rdatatype.AAAA:
            entry["answer"] = "allowed"
            self._send(_reply(query, dns.rcode.NOERROR), addr)
            return
        try:
            response = await dns.asyncquery.udp(
                query, self.upstream[0], port=self.upstream[1], timeout=UPSTREAM_TIMEOUT
            )
        except (dns.exception.DNSException, OSError) as exc:
            entry["answer"] = f"error: {type(exc).__name__}"
            self._send(_reply(query, dns.rcode.SERVFAIL), addr)
            return
        addresses, ttl = _addresses(response)
        entry.update(answer="allowed", addresses=addresses)
        ports = client.policy.name_ports(name)
        if addresses and ports:
            try:
                await self.learn(client, addresses, ports, max(ttl, MIN_PIN_SECONDS))
            except Exception:
                log.exception("opening %s for sandbox %s failed", addresses, client.sandbox_id)
                entry["answer"] = "error: filter update failed"
                self._send(_reply(query, dns.rcode.SERVFAIL), addr)
                return
        self._send(response.to_wire(), addr)

    def _send(self, wire: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(wire, addr)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.transport is not None:
            self.transport.close()


def _reply(query: dns.message.Message, rcode: int) -> bytes:
    answer = dns.message.make_response(query)
    answer.set_rcode(rcode)
    answer.flags |= dns.flags.RA
    return answer.to_wire()


def _addresses(response: dns.message.Message) -> tuple[list[str], int]:
    """IPv4 addresses in the answer section (CNAME chains included) and their smallest TTL."""
    found: list[str] = []
    ttl = MIN_PIN_SECONDS
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.A:
            ttl = min(ttl, rrset.ttl)
            found += [r.address for r in rrset if r.address not in found]
    return found, ttl


def upstream_from_resolv_conf(path: str = "/etc/resolv.conf") -> tuple[str, int]:
    """The host's first IPv4 nameserver (the forwarder's upstream unless CORRAL_NET_DNS says otherwise)."""
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:
            words = line.split()
            if len(words) >= 2 and words[0] == "nameserver" and ":" not in words[1]:
                return words[1], 53
    return "127.0.0.1", 53
