"""Sandbox networking of one server instance: addresses, veths, the nftables table, the DNS forwarder.

Each networked sandbox gets a slot in the instance's address block: address ``block[slot + 1]``
(/32), a veth ``crl<instance8><slot>`` whose host end carries the instance gateway ``block[1]``,
and, when its policy filters packets, a chain and two DNS sets in the instance's nftables table.
The block is claimed host-wide with an ``flock`` under ``/run/corral-net`` so servers sharing a
host never share addresses.

Used from the server's event loop except ``plug`` (runs in ``launch_priv.admit``'s thread, before
the sandbox starts). Privileged work is in ``netns_priv`` and ``nft_priv``. See docs/network.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import logging
import os
import shutil
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.config import Settings
from corral.runtime import netns_priv, netrules, nft_priv
from corral.runtime.dnsforward import Client, Forwarder, upstream_from_resolv_conf
from corral.runtime.netpolicy import INTERNET, NetworkPolicy, OperatorRanges
from corral.runtime.threads import to_the_end

log = logging.getLogger("corral.network")
LOCK_DIR = Path("/run/corral-net")
CA_INSIDE = "/.corral/certs"
CA_FILE = f"{CA_INSIDE}/ca-certificates.crt"
CA_ENV = ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")


class NetworkUnavailable(RuntimeError):
    """The host cannot give sandboxes a network (no free address block, nftables refused, ...)."""


@dataclass(frozen=True)
class NetConfig:
    instance: str
    state_dir: Path  # resolv.conf and the CA bundle for sandboxes (readable by sandbox ids)
    pool: ipaddress.IPv4Network = field(default_factory=lambda: ipaddress.IPv4Network("172.16.0.0/12"))
    block_prefix: int = 20
    operator: OperatorRanges = field(default_factory=OperatorRanges)
    upstream: tuple[str, int] = ("127.0.0.1", 53)
    ca_bundle: Path | None = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass
class Attachment:
    sandbox_id: str
    slot: int
    address: ipaddress.IPv4Address
    veth: str
    client: Client
    # held by a policy change and by the release: a detach always sees the policy the table has
    changing: asyncio.Lock = field(default_factory=asyncio.Lock)


class Network:
    def __init__(self, config: NetConfig) -> None:
        self.config = config
        self.names = netrules.Names(config.instance)
        self.block: ipaddress.IPv4Network | None = None
        self.gateway: ipaddress.IPv4Address | None = None
        self._lock_fd: int | None = None
        # Free slots, the longest free first: an address a sandbox gave up is taken again last, so late
        # packets of its flows (and conntrack's memory of them) never meet its next holder.
        self._free: deque[int] = deque()
        self._by_id: dict[str, Attachment] = {}
        self._spares: dict[int, Attachment] = {}  # by slot: plugged into a namespace made ahead, no sandbox's yet
        self._unplugging: set[asyncio.Task[None]] = set()  # released sandboxes' links and rules going
        self.forwarder = Forwarder(config.upstream, self._learn)

    # lifecycle
    async def start(self) -> None:
        await asyncio.to_thread(self._start_host)
        assert self.gateway is not None
        await self.forwarder.start(str(self.gateway))

    def _start_host(self) -> None:
        self._claim_block()
        assert self.block is not None and self.gateway is not None
        netns_priv.enable_forwarding()
        for veth in netns_priv.links(self.names.veth_prefix):  # a crashed run's sandboxes
            netns_priv.unplug(veth)
        nft_priv.run(netrules.table(self.names, self.block, self.gateway, self.config.operator.nets))
        d = self.config.state_dir
        d.mkdir(mode=0o711, parents=True, exist_ok=True)
        os.chmod(d, 0o711)
        (d / "resolv.conf").write_text(f"nameserver {self.gateway}\noptions timeout:2 attempts:2\n")
        os.chmod(d / "resolv.conf", 0o644)
        certs = d / "certs"
        certs.mkdir(mode=0o755, exist_ok=True)
        if self.config.ca_bundle is not None and self.config.ca_bundle.is_file():
            shutil.copyfile(self.config.ca_bundle, certs / "ca-certificates.crt")
            os.chmod(certs / "ca-certificates.crt", 0o644)

    def _claim_block(self) -> None:
        pool, prefix = self.config.pool, self.config.block_prefix
        blocks = list(pool.subnets(new_prefix=prefix)) if prefix >= pool.prefixlen else []
        if not blocks:
            raise NetworkUnavailable(f"address pool {pool} has no /{prefix} blocks")
        LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
        first = int(self.config.instance, 16) % len(blocks)
        for i in range(len(blocks)):
            block = blocks[(first + i) % len(blocks)]
            fd = os.open(LOCK_DIR / f"{block.network_address}-{prefix}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                         0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._lock_fd, self.block = fd, block
            self.gateway = block.network_address + 1
            self._free = deque(range(1, block.num_addresses - 2))  # slot s → address network + 1 + s
            return
        raise NetworkUnavailable(f"every /{prefix} block of {pool} is used by another Corral server")

    async def close(self) -> None:
        for sandbox_id in list(self._by_id):
            self.release(sandbox_id)
        for att in list(self._spares.values()):
            await self.release_spare(att)
        await self.unplugged()
        self.forwarder.close()
        await asyncio.to_thread(self._close_host)

    def _close_host(self) -> None:
        with contextlib.suppress(nft_priv.NftError):
            nft_priv.delete_table(self.names.table)
        shutil.rmtree(self.config.state_dir, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # per sandbox
    def reserve(self, sandbox_id: str, policy: NetworkPolicy) -> Attachment | None:
        """Pick the sandbox's address (None for ``none``: loopback only)."""
        if not policy.networked:
            return None
        att = self._attachment(sandbox_id, policy)
        self._by_id[sandbox_id] = att
        return att

    def _attachment(self, sandbox_id: str, policy: NetworkPolicy) -> Attachment:
        if not self._free or self.block is None:
            raise NetworkUnavailable("no free sandbox address left in this server's block")
        slot = self._free.popleft()
        address = self.block.network_address + 1 + slot
        return Attachment(sandbox_id, slot, address, self.names.veth(slot), Client(sandbox_id, slot, policy))

    def reserve_spare(self) -> Attachment:
        """An address for a namespace made ahead (``netspares``): plugged with the default policy,
        it becomes a sandbox's with ``claim``."""
        att = self._attachment("", INTERNET)
        self._spares[att.slot] = att
        return att

    async def claim(self, att: Attachment, sandbox_id: str, policy: NetworkPolicy) -> None:
        """A spare's attachment becomes ``sandbox_id``'s, with its policy (one nftables batch if it is
        not the default's)."""
        del self._spares[att.slot]
        change = netrules.update(self.names, att.slot, att.client.policy, policy)
        att.sandbox_id, att.client = sandbox_id, Client(sandbox_id, att.slot, policy)
        self._by_id[sandbox_id] = att
        self.forwarder.clients[str(att.address)] = att.client
        if change:  # to its end even if cancelled: a late change must not land after the release
            await to_the_end(nft_priv.run, change)

    async def release_spare(self, att: Attachment) -> None:
        """A spare never claimed: its link, rules and address go."""
        if self._spares.pop(att.slot, None) is None:
            return
        self.forwarder.clients.pop(str(att.address), None)
        await asyncio.to_thread(self._unplug, att)
        self._free.append(att.slot)

    def plug(self, att: Attachment, ns: netns_priv.NetNs, prepared: bool = False) -> None:
        """Thread: give the sandbox's netns (that of pid ``ns``, or at path ``ns``) its link, routes
        and filter rules; ``prepared``: its sysctls set by its maker (``netns_priv.plug``)."""
        assert self.gateway is not None
        netns_priv.plug(ns, att.veth, self.gateway, att.address, prepared)
        nft_priv.run(netrules.attach(self.names, att.slot, att.address, att.client.policy))
        self.forwarder.clients[str(att.address)] = att.client

    async def update(self, sandbox_id: str, policy: NetworkPolicy) -> None:
        att = self._by_id[sandbox_id]
        async with att.changing:
            if self._by_id.get(sandbox_id) is not att:
                return  # released meanwhile: nothing of it is left to change
            change = netrules.update(self.names, att.slot, att.client.policy, policy)
            if change:
                await asyncio.to_thread(nft_priv.run, change)
            att.client.policy = policy
        await asyncio.to_thread(netns_priv.forget_connections, att.address)

    def release(self, sandbox_id: str) -> asyncio.Task[None] | None:
        """Give up the sandbox's attachment (its processes are gone). Its link and rules are removed
        in the background (the task returned, None if it had none): deleting a veth waits for the
        kernel (~25 ms, an RCU grace period); the slot is free again once they are gone, ``close``
        waits for them."""
        att = self._by_id.pop(sandbox_id, None)
        if att is None:
            return None
        self.forwarder.clients.pop(str(att.address), None)
        task = asyncio.get_running_loop().create_task(self._unplug_released(att))
        self._unplugging.add(task)
        task.add_done_callback(self._unplugging.discard)
        return task

    async def unplugged(self) -> None:
        """Wait until the links and rules of every sandbox released so far are gone."""
        if self._unplugging:
            await asyncio.wait(set(self._unplugging))

    async def _unplug_released(self, att: Attachment) -> None:
        try:
            async with att.changing:
                await asyncio.to_thread(self._unplug, att)
        except Exception:  # its veth, if any is left, goes at the next start's reconcile
            log.exception("removing the network of a released sandbox (%s) failed", att.veth)
            return
        self._free.append(att.slot)

    def _unplug(self, att: Attachment) -> None:
        netns_priv.unplug(att.veth)
        with contextlib.suppress(nft_priv.NftError):  # never attached if the create failed early
            nft_priv.run(netrules.detach(self.names, att.slot, att.address, att.client.policy))

    async def _learn(self, client: Client, addresses: list[str], ports: list[tuple[int, int] | None],
                     ttl: int) -> None:
        text = netrules.learn(self.names, client.slot, addresses, ports, ttl)
        if text:
            await asyncio.to_thread(nft_priv.run, text)

    async def reconcile(self) -> list[str]:
        """Remove this instance's veths that belong to no live sandbox."""
        live = {att.veth for att in [*self._by_id.values(), *self._spares.values()]}
        stale = [v for v in await asyncio.to_thread(netns_priv.links, self.names.veth_prefix) if v not in live]
        for veth in stale:
            await asyncio.to_thread(netns_priv.unplug, veth)
        return stale

    # what sandboxes are given
    def attachment(self, sandbox_id: str) -> Attachment | None:
        return self._by_id.get(sandbox_id)

    def describe(self, sandbox_id: str) -> dict[str, Any]:
        att = self._by_id.get(sandbox_id)
        if att is None:
            return {"mode": "none", "allow_out": [], "deny_out": [], "address": None, "dns_queries": []}
        return {**att.client.policy.describe(), "address": str(att.address), "dns_queries": list(att.client.queries)}

    def dirs(self) -> list[tuple[Path, str]]:
        """Host dirs bound read-only into a networked sandbox's root."""
        return [(self.config.state_dir / "certs", CA_INSIDE)]

    def files(self) -> list[tuple[Path, str]]:
        """Host files bwrap binds read-only over paths of a networked sandbox."""
        return [(self.config.state_dir / "resolv.conf", "/etc/resolv.conf")]

    def env(self) -> dict[str, str]:
        """Default environment of a networked sandbox's processes: the host's CA bundle."""
        if self.config.ca_bundle is None or not self.config.ca_bundle.is_file():
            return {}
        return dict.fromkeys(CA_ENV, CA_FILE)


async def start_network(settings: Settings) -> Network | None:
    """The instance's network from the server settings (None when CORRAL_NETWORK=off)."""
    if not settings.network:
        return None
    try:
        upstream = _host_port(settings.net_dns) if settings.net_dns else upstream_from_resolv_conf()
        config = NetConfig(
            instance=settings.instance, state_dir=settings.net_dir,
            pool=ipaddress.IPv4Network(settings.net_pool), block_prefix=settings.net_block_prefix,
            operator=OperatorRanges.parse(settings.net_allow_private), upstream=upstream,
            ca_bundle=Path(settings.ca_bundle) if settings.ca_bundle else None,
        )
    except ValueError as exc:
        raise NetworkUnavailable(f"network settings: {exc}") from exc
    network = Network(config)
    try:
        await network.start()
    except (OSError, nft_priv.NftError) as exc:
        await network.close()
        raise NetworkUnavailable(f"sandbox networking could not start: {exc}") from exc
    return network


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        return str(ipaddress.IPv4Address(text)), 53
    return str(ipaddress.IPv4Address(host)), int(port)
