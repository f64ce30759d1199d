"""Per-sandbox links and namespace entry (privileged: netlink as root, setns, sysctls, conntrack).

A bwrap sandbox's netns is made by bubblewrap; a gVisor sandbox's by ``new_netns`` (held by an fd
of the server until runsc joined it). Before the sandbox runs anything the server plugs a veth
pair into it: the host end ``crl<instance><slot>`` carries the instance's
gateway address, the sandbox end ``eth0`` the sandbox's /32; routes on both sides; IPv6 off.

``setns`` changes only the calling thread's namespace, so every entry happens on one dedicated
thread (``_NS``) that always returns to the host namespace before it takes the next job; a failed
return would leave that thread in a sandbox, so it ends the server instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import ipaddress
import os
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from pyroute2 import IPRoute
from pyroute2.conntrack import Conntrack, NFCTAttrTuple
from pyroute2.netlink.exceptions import NetlinkError

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_NS = ThreadPoolExecutor(1, thread_name_prefix="corral-netns")


class NetSetupError(RuntimeError):
    """Plugging a sandbox's network failed; the message names the step."""


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), f"setns: {os.strerror(ctypes.get_errno())}")


NetNs = int | str  # a process whose netns is meant (pid), or a path to the netns itself


def _ns_path(ns: NetNs) -> str:
    return f"/proc/{ns}/ns/net" if isinstance(ns, int) else ns


def in_netns(ns: NetNs, fn: Callable[[], T]) -> T:
    """Run ``fn`` in the network namespace ``ns`` (on the namespace thread) and return."""

    def job() -> T:
        host = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        target = os.open(_ns_path(ns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                return fn()
            finally:
                try:
                    _setns(host)
                except OSError:  # the thread is stuck in a sandbox: nothing it runs later is safe
                    os._exit(70)
        finally:
            os.close(target)
            os.close(host)

    return _NS.submit(job).result()


def new_netns() -> int:
    """A fresh, empty network namespace (only ``lo``, down); returns an fd that holds it. The
    caller closes the fd once a process lives in the namespace (then the process holds it)."""

    def job() -> int:
        host = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _libc.unshare(CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"unshare: {os.strerror(ctypes.get_errno())}")
            try:
                with IPRoute() as ipr:  # runsc gives netstack a loopback only if the netns' lo is up
                    ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
                return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            finally:
                try:
                    _setns(host)
                except OSError:  # see in_netns
                    os._exit(70)
        finally:
            os.close(host)

    return _NS.submit(job).result()


def _sysctl(path: str, value: str) -> None:
    with open(f"/proc/sys/{path}", "w") as f:
        f.write(value)


def plug(ns: NetNs, veth: str, gateway: ipaddress.IPv4Address, address: ipaddress.IPv4Address) -> None:
    """Create and configure the veth pair of the sandbox whose netns is ``ns``."""
    netns = os.open(_ns_path(ns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        with IPRoute() as ipr:
            try:
                ipr.link("add", ifname=veth, kind="veth", peer={"ifname": "eth0", "net_ns_fd": netns})
            except NetlinkError as exc:
                raise NetSetupError(f"creating veth {veth} failed: {exc}") from exc
            index = ipr.link_lookup(ifname=veth)[0]
            _sysctl(f"net/ipv6/conf/{veth}/disable_ipv6", "1")
            ipr.addr("add", index=index, address=str(gateway), prefixlen=32)
            ipr.link("set", index=index, state="up")
            ipr.route("add", dst=f"{address}/32", oif=index, prefsrc=str(gateway), scope="link")
    finally:
        os.close(netns)
    in_netns(ns, lambda: _configure_inside(gateway, address))


def _configure_inside(gateway: ipaddress.IPv4Address, address: ipaddress.IPv4Address) -> None:
    _sysctl("net/ipv6/conf/all/disable_ipv6", "1")
    _sysctl("net/ipv6/conf/default/disable_ipv6", "1")
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname="eth0")[0]
        ipr.addr("add", index=index, address=str(address), prefixlen=32)
        ipr.link("set", index=index, state="up")
        ipr.route("add", dst=f"{gateway}/32", oif=index, scope="link")
        ipr.route("add", dst="0.0.0.0/0", gateway=str(gateway), oif=index)


def unplug(veth: str) -> None:
    """Delete the host end (the sandbox end goes with it). Idempotent."""
    with IPRoute() as ipr, contextlib.suppress(NetlinkError):
        for index in ipr.link_lookup(ifname=veth):
            ipr.link("del", index=index)


def links(prefix: str) -> list[str]:
    """Host links whose name starts with ``prefix`` (to find leftovers)."""
    with IPRoute() as ipr:
        names = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
    return [n for n in names if n and n.startswith(prefix)]


def forget_connections(address: ipaddress.IPv4Address) -> int:
    """Drop the conntrack entries of flows a sandbox started, so a new policy applies to them too."""
    count = 0
    with Conntrack() as ct:
        for entry in list(ct.dump_entries(tuple_orig=NFCTAttrTuple(saddr=str(address)))):
            with contextlib.suppress(NetlinkError):
                ct.delete(entry)
                count += 1
    return count


def enable_forwarding() -> None:
    """Sandboxes' traffic is routed by the host: IPv4 forwarding must be on (host-wide)."""
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        if f.read().strip() == "1":
            return
    _sysctl("net/ipv4/ip_forward", "1")


def connect_inside(pid: int, port: int) -> socket.socket:
    """A non-blocking TCP socket made in the sandbox's netns (for ``127.0.0.1:port`` there); the caller
    connects it. Works for every network mode, ``none`` included, and needs no host route."""

    def make() -> socket.socket:
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    sock = in_netns(pid, make)
    sock.setblocking(False)
    return sock
