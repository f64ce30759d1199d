"""Network namespaces made ahead for networked bwrap sandboxes: making one and plugging its veth
(addresses, routes, the default policy's nftables rules) cost ~3–4 ms of a cold create
(docs/performance.md, "Network namespaces made ahead"), so a few wait, each held by an fd of the
server. A create takes one, claims its address with its own policy, and bubblewrap starts in it
instead of making a namespace; a refill follows once the create is done (``Spares.refill``). None
left: the create makes its own the same way, on the spot.

Each namespace is made by ``corral-tools netns`` (``netns_priv.NetnsMaker``): owned by a user
namespace of the sandbox uid that no sandbox is in, so the sandbox uid's processes on the host
(bubblewrap, the agent's joiner) may enter it, and the sandbox's own user namespace, a sibling, has
no capability over it (its root cannot reconfigure its network, nor write its sysctls). A spare never
held a sandbox: each is new. Used from one event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

from corral.runtime import netns_priv
from corral.runtime.network import Attachment, Network, NetworkUnavailable
from corral.runtime.spares import Spares

log = logging.getLogger(__name__)


@dataclass
class NetSpare:
    fd: int  # holds the namespace until the sandbox's processes do
    att: Attachment


def make(network: Network, att: Attachment, maker: netns_priv.NetnsMaker) -> int:
    """Thread: a new namespace for ``att``, plugged; an fd that holds it."""
    fd = maker.make()
    try:
        network.plug(att, netns_priv.fd_path(fd), prepared=True)
    except BaseException:
        os.close(fd)
        raise
    return fd


class NetSpares(Spares[NetSpare]):
    def __init__(self, network: Network, maker: netns_priv.NetnsMaker, count: int) -> None:
        super().__init__(count)
        self.network = network
        self.maker = maker

    def take(self) -> NetSpare | None:
        """A spare (its attachment still to ``Network.claim``), or None. The caller calls ``refill``
        once its create is done: a refill made meanwhile would compete with it for the cores."""
        return self._ready.pop() if self._ready else None

    def start(self) -> None:
        """Start filling (after the network's start-up reconcile removed a previous run's links)."""
        if not self._started and not self._closed:
            self._started = True
            self._refill()

    async def _make(self) -> NetSpare | None:
        try:
            att = self.network.reserve_spare()
        except NetworkUnavailable as exc:  # no address left: creates make their own (and fail)
            log.warning("no spare network namespace: %s", exc)
            return None
        try:
            fd = await asyncio.to_thread(make, self.network, att, self.maker)
        except (OSError, RuntimeError) as exc:  # creates make their own meanwhile
            await self.network.release_spare(att)
            log.warning("making a spare network namespace failed: %s", exc)
            return None
        return NetSpare(fd, att)

    async def _destroy(self, spare: NetSpare) -> None:
        """A spare no sandbox will use (its namespace goes with the fd)."""
        os.close(spare.fd)
        await self.network.release_spare(spare.att)
