"""Per-sandbox links and namespace entry (privileged: netlink as root, setns, sysctls, conntrack).

A networked bwrap sandbox's netns is made by ``corral-tools netns`` (``NetnsMaker``: owned by a user
namespace of the sandbox uid, made ahead as a spare or just before the sandbox, entered by
bubblewrap's start, ``entered``); a ``none`` sandbox's, and every sandbox's on a server without
corral-tools, by bubblewrap; a gVisor sandbox's by ``new_netns``. One the server makes is held by an
fd of it until the sandbox's processes live in it. Before the sandbox runs anything the server plugs a veth
pair into it: the host end ``crl<instance><slot>`` carries the instance's
gateway address, the sandbox end ``eth0`` the sandbox's /32; routes on both sides; IPv6 off inside,
no IPv6 address on the host end.

Links, addresses and routes are made with rtnetlink messages packed here (``_Rtnl``), not with
pyroute2's ``IPRoute``: each of its calls cost ~1 ms of Python (its socket core, message classes),
13–18 % of the server's CPU while creating sandboxes, and the messages are few and fixed. The host
side borrows long-lived sockets from a pool (``_host``); the inside uses one socket per plug, made
in the sandbox's netns. pyroute2 is kept for conntrack (``forget_connections``, off the create path).

``setns`` changes only the calling thread's namespace, so every entry happens on one dedicated
thread (``_NS``) that always returns to the host namespace before it takes the next job; a failed
return would leave that thread in a sandbox, so it ends the server instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import ipaddress
import os
import select
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from pyroute2.conntrack import Conntrack, NFCTAttrTuple
from pyroute2.netlink.exceptions import NetlinkError as _ConntrackError

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_NS = ThreadPoolExecutor(1, thread_name_prefix="corral-netns")
LOOPBACK_INDEX = 1  # lo's index in every network namespace
# Every port bindable by any sandbox user, as Docker sets it: the sandbox's root holds no capability
# over a namespace of ``NetnsMaker`` (the kernel asks its owner's CAP_NET_BIND_SERVICE below 1024).
UNPRIVILEGED_PORTS = "net/ipv4/ip_unprivileged_port_start"


class NetSetupError(RuntimeError):
    """Plugging a sandbox's network failed; the message names the step."""


class NetlinkError(OSError):
    """The kernel refused a netlink request: ``errno``, ``strerror`` and, when the kernel gave one,
    its reason (extended ack)."""


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), f"setns: {os.strerror(ctypes.get_errno())}")


NetNs = int | str  # a process whose netns is meant (pid), or a path to the netns itself


def _ns_path(ns: NetNs) -> str:
    return f"/proc/{ns}/ns/net" if isinstance(ns, int) else ns


def in_netns(ns: NetNs, fn: Callable[[], T]) -> T:
    """Run ``fn`` in the network namespace ``ns`` (on the namespace thread) and return."""

    def job() -> T:
        target = os.open(_ns_path(ns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            with entered(target):
                return fn()
        finally:
            os.close(target)

    return _NS.submit(job).result()


@contextlib.contextmanager
def entered(fd: int) -> Iterator[None]:
    """Run the block with this thread in the network namespace ``fd`` (children started there stay
    in it), then return to the host's."""
    with _returning():
        _setns(fd)
        yield


@contextlib.contextmanager
def _returning() -> Iterator[None]:
    """The block may move this thread to another network namespace: afterwards it is back in the
    one it was in (the host's)."""
    host = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield
    finally:
        try:
            _setns(host)
        except OSError:  # the thread is stuck in a sandbox: nothing it runs later is safe
            os._exit(70)
        finally:
            os.close(host)


# rtnetlink: the few messages this module sends (linux/netlink.h, rtnetlink.h, if_link.h, veth.h)
NETLINK_ROUTE, SOL_NETLINK, NETLINK_CAP_ACK, NETLINK_EXT_ACK = 0, 270, 10, 11
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
NLM_F_CAPPED, NLM_F_ACK_TLVS, NLMSGERR_ATTR_MSG = 0x100, 0x200, 1
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 17, 18, 20, 24
IFLA_IFNAME, IFLA_LINK, IFLA_LINKINFO, IFLA_AF_SPEC, IFLA_NET_NS_FD = 3, 5, 18, 26, 28
IFLA_INET6_ADDR_GEN_MODE, IN6_ADDR_GEN_MODE_NONE = 8, 1
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PREFSRC = 1, 4, 5, 7
RT_TABLE_MAIN, RTPROT_STATIC, RTN_UNICAST, RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 254, 4, 1, 0, 253
IFF_UP = 0x1
_HDR = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, port
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefix length, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst len, src len, tos, table, protocol, scope, type, flags
_ATTR = struct.Struct("=HH")  # rtattr: length, type

Message = tuple[int, int, bytes]  # type, extra flags (beyond REQUEST|ACK), body


def _attr(kind: int, payload: bytes) -> bytes:
    size = _ATTR.size + len(payload)
    return _ATTR.pack(size, kind) + payload + b"\0" * (-size % 4)


def _attrs(data: bytes, offset: int) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    while offset + _ATTR.size <= len(data):
        size, kind = _ATTR.unpack_from(data, offset)
        if size < _ATTR.size:
            break
        found.setdefault(kind & 0x3FFF, data[offset + _ATTR.size : offset + size])  # without NLA_F_NESTED
        offset += (size + 3) & ~3
    return found


def _name(name: str) -> bytes:
    return _attr(IFLA_IFNAME, name.encode() + b"\0")


class _Rtnl:
    """A NETLINK_ROUTE socket of the network namespace of the thread that made it (a socket keeps
    its netns for life, whichever thread uses it later). Not thread-safe: one thread at a time
    (host sockets are lent by ``_HostSockets``). ``clean`` is False while answers to a request are
    unread (an exception between send and the last answer); answers to such an abandoned request
    are recognised by their sequence number and dropped, answers not from the kernel too."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        try:
            self._sock.bind((0, 0))
            for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):  # short error acks, with the kernel's reason
                with contextlib.suppress(OSError):
                    self._sock.setsockopt(SOL_NETLINK, option, 1)
        except BaseException:
            self._sock.close()
            raise
        self._seq = 0
        self.clean = True  # False from a send until every answer to it was read

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> _Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, *messages: Message) -> list[list[bytes]]:
        """Send ``messages`` in one datagram (the kernel handles them in order) and wait for every
        answer. Returns each message's replies (payloads after the header; a dump's parts). Raises
        ``NetlinkError`` for the first message the kernel refused (the others were still handled)."""
        first = self._seq + 1 if self._seq + len(messages) < 0xFFFF_FFFF else 1  # a u32 in the header
        out = bytearray()
        for i, (kind, flags, body) in enumerate(messages):
            out += _HDR.pack(_HDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags, first + i, 0)
            out += body
        self._seq = first + len(messages) - 1
        self.clean = False
        self._sock.send(out)
        replies: list[list[bytes]] = [[] for _ in messages]
        errors: dict[int, NetlinkError] = {}
        open_ = set(range(len(messages)))
        while open_:
            data, _, msg_flags, sender = self._sock.recvmsg(1 << 16)
            if msg_flags & socket.MSG_TRUNC:
                raise NetlinkError(errno.EMSGSIZE, "netlink answer larger than 64 KiB")
            if sender[0] != 0:
                continue  # not from the kernel
            offset = 0
            while offset + _HDR.size <= len(data):
                size, kind, flags, seq, _ = _HDR.unpack_from(data, offset)
                payload = data[offset + _HDR.size : offset + size]
                offset += max((size + 3) & ~3, _HDR.size)
                i = seq - first
                if i not in open_:
                    continue  # an answer to an earlier request that was abandoned
                if kind in (NLMSG_ERROR, NLMSG_DONE):  # the end of an answer: an ack, an error or a dump's end
                    code = -struct.unpack_from("=i", payload)[0] if len(payload) >= 4 else 0
                    if code:
                        errors[i] = _error(code, flags if kind == NLMSG_ERROR else 0, payload)
                    open_.discard(i)
                else:
                    replies[i].append(payload)
        self.clean = True
        if errors:
            raise errors[min(errors)]
        return replies


def _error(code: int, flags: int, payload: bytes) -> NetlinkError:
    why = ""
    if flags & NLM_F_ACK_TLVS:  # after the error code: the request's header, or all of it if not capped
        skip = _HDR.size if flags & NLM_F_CAPPED else _HDR.unpack_from(payload, 4)[0]
        text = _attrs(payload, 4 + skip).get(NLMSGERR_ATTR_MSG, b"")
        why = text.rstrip(b"\0").decode(errors="replace")
    return NetlinkError(code, os.strerror(code) + (f" ({why})" if why else ""))


class _HostSockets:
    """Long-lived netlink sockets in the host netns, lent to one thread at a time. A pool, not one
    shared socket: deleting a veth blocks its request ~25–30 ms in the kernel (RCU grace periods after
    the unregister), and a plug must not queue behind that. Thread-safe."""

    def __init__(self, keep: int = 8) -> None:
        self._idle: list[_Rtnl] = []
        self._keep = keep
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def lend(self) -> Iterator[_Rtnl]:
        with self._lock:
            rtnl = self._idle.pop() if self._idle else None
        if rtnl is None:
            if os.stat("/proc/thread-self/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino:
                raise NetSetupError("host netlink sockets must be made in the host netns")
            rtnl = _Rtnl()
        try:
            yield rtnl
        finally:
            self._give_back(rtnl)

    def _give_back(self, rtnl: _Rtnl) -> None:
        if rtnl.clean:  # not left mid-request (by an exception between send and the last answer)
            with self._lock:
                if len(self._idle) < self._keep:
                    self._idle.append(rtnl)
                    return
        rtnl.close()


_host = _HostSockets()


def _link(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return _IFINFO.pack(socket.AF_UNSPEC, 0, index, flags, change)


def _get_link(rtnl: _Rtnl, name: str) -> tuple[int, dict[int, bytes]] | None:
    """The index and attributes of link ``name``; None if there is no such link."""
    try:
        (reply,) = rtnl.request((RTM_GETLINK, 0, _link() + _name(name)))[0]
    except NetlinkError as exc:
        if exc.errno == errno.ENODEV:
            return None
        raise
    return _IFINFO.unpack_from(reply)[2], _attrs(reply, _IFINFO.size)


def _add_address(index: int, address: ipaddress.IPv4Address) -> Message:
    body = _IFADDR.pack(socket.AF_INET, 32, 0, RT_SCOPE_UNIVERSE, index)
    return (
        RTM_NEWADDR,
        NLM_F_CREATE | NLM_F_EXCL,
        body + _attr(IFA_ADDRESS, address.packed) + _attr(IFA_LOCAL, address.packed),
    )


def _set_up(index: int) -> Message:
    return RTM_NEWLINK, 0, _link(index, IFF_UP, IFF_UP)


def _no_ipv6_address(index: int) -> Message:
    """No IPv6 address of its own once up (not even a link-local), set before it is: what the
    ``disable_ipv6`` sysctl did for a host veth, in the same datagram, waiting for the rtnl lock
    rather than spinning on it (the sysctl retries a trylock while namespaces are torn down)."""
    mode = _attr(IFLA_INET6_ADDR_GEN_MODE, bytes([IN6_ADDR_GEN_MODE_NONE]))
    return RTM_NEWLINK, 0, _link(index) + _attr(IFLA_AF_SPEC, _attr(socket.AF_INET6, mode))


def _add_route(dst_len: int, scope: int, *attrs: bytes) -> Message:
    body = _RTMSG.pack(socket.AF_INET, dst_len, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, scope, RTN_UNICAST, 0)
    return RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body + b"".join(attrs)


def _u32(value: int) -> bytes:
    return struct.pack("=I", value)


def new_netns() -> int:
    """A fresh, empty network namespace (only ``lo``, up), its sysctls set as ``corral-tools netns``
    sets them (IPv6 off for links added later, any port bindable), so that ``plug(prepared=True)``
    leaves ``lo``'s ``::1``; returns an fd that holds it. The caller closes the fd once a process
    lives in the namespace (then the process holds it)."""

    def job() -> int:
        with _returning():
            if _libc.unshare(CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"unshare: {os.strerror(ctypes.get_errno())}")
            with _Rtnl() as rtnl:  # runsc gives netstack a loopback only if the netns' lo is up
                lo = _get_link(rtnl, "lo")
                if lo is None:
                    raise NetSetupError("a new netns has no lo")
                rtnl.request(_set_up(lo[0]))
            _sysctl("net/ipv6/conf/default/disable_ipv6", "1")
            _sysctl(UNPRIVILEGED_PORTS, "0")
            return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    return _NS.submit(job).result()


MAKE_TIMEOUT = 30.0  # seconds for one network namespace (a loaded host's netns clean-up can take ~1 s)


class NetnsMaker:
    """``corral-tools netns``: one process of the sandbox uid, in a user namespace of its own, that makes
    a network namespace (owned by that user namespace, with ``lo`` down and nothing else) each time it is
    asked; started on first use and again if it died. The uid's processes on the host may enter these
    namespaces (bubblewrap, the agent's joiner); a sandbox's own user namespace holds no capability over
    them. Thread-safe."""

    def __init__(self, tools: str, uid: int) -> None:
        self.tools = tools
        self.uid = uid
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None

    def make(self) -> int:
        """A new network namespace: an fd that holds it."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._stop()
                self._proc = subprocess.Popen([self.tools, "netns", str(self.uid)], bufsize=0, stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            proc = self._proc
            assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
            try:
                proc.stdin.write(b"n")
                waiting = select.poll()  # not select(): the server's fds go far past 1024
                waiting.register(proc.stdout.fileno(), select.POLLIN)
                answered = bool(waiting.poll(MAKE_TIMEOUT * 1000))
                made = answered and proc.stdout.read(1) == b"."
            except BrokenPipeError:
                made = answered = False
            if made:
                return os.open(f"/proc/{proc.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            stuck = not answered and proc.poll() is None
            if stuck:  # a create (and a server's stop waiting for it) must not wait for ever
                proc.kill()
            proc.stdin.close()
            why = proc.stderr.read().decode(errors="replace").strip()
            self._stop()
            if stuck:
                why = f"no answer within {MAKE_TIMEOUT:g} s"
            raise NetSetupError(f"making a network namespace failed: {why or f'corral-tools exited {proc.returncode}'}")

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            proc.wait()


def fd_path(fd: int) -> str:
    """``fd`` (of a network namespace) as a ``NetNs``."""
    return f"/proc/self/fd/{fd}"


def _sysctl(path: str, value: str) -> None:
    fd = os.open(f"/proc/sys/{path}", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def plug(ns: NetNs, veth: str, gateway: ipaddress.IPv4Address, address: ipaddress.IPv4Address,
         prepared: bool = False) -> None:
    """Create and configure the veth pair of the sandbox whose netns is ``ns``.

    The pair is made with its peer already in ``ns`` (``IFLA_NET_NS_FD``), named ``eth0`` there.
    Host side: create, read the indexes of both ends, then no IPv6 address (nftables drops IPv6 from
    sandbox veths), address, up and route in one datagram; inside (one ``setns`` hop): IPv6 off and
    any port bindable, then address, up and both routes in one datagram. ``prepared``: a namespace
    whose sysctls were set before ``eth0`` existed (a ``NetnsMaker``'s, whose ``lo`` is still down,
    or ``new_netns``'): ``lo`` goes up in that datagram too and keeps ``::1``; otherwise (one
    bubblewrap made) IPv6 goes off for ``all``, ``lo`` included. Thread-safe (callable from several
    worker threads at once)."""
    with _host.lend() as rtnl:
        inside = _plug_host(rtnl, ns, veth, gateway, address)
    in_netns(ns, lambda: _configure_inside(inside, gateway, address, prepared))


def open_ports(ns: NetNs) -> None:
    """Any port bindable by any sandbox user in ``ns`` (a sandbox without a network: ``plug`` does
    it in a networked one)."""
    in_netns(ns, lambda: _sysctl(UNPRIVILEGED_PORTS, "0"))


def _plug_host(
    rtnl: _Rtnl, ns: NetNs, veth: str, gateway: ipaddress.IPv4Address, address: ipaddress.IPv4Address
) -> int:
    """The host half of ``plug``; returns the index of the peer (``eth0``) in the sandbox's netns."""
    netns = os.open(_ns_path(ns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        peer = _attr(VETH_INFO_PEER, _link() + _name("eth0") + _attr(IFLA_NET_NS_FD, _u32(netns)))
        info = _attr(IFLA_INFO_KIND, b"veth\0") + _attr(IFLA_INFO_DATA, peer)
        try:
            rtnl.request((RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, _link() + _name(veth) + _attr(IFLA_LINKINFO, info)))
        except NetlinkError as exc:
            raise NetSetupError(f"creating veth {veth} failed: {exc}") from exc
    finally:
        os.close(netns)
    link = _get_link(rtnl, veth)
    if link is None or IFLA_LINK not in link[1]:
        raise NetSetupError(f"veth {veth} vanished after it was created")
    index = link[0]
    rtnl.request(
        _no_ipv6_address(index),
        _add_address(index, gateway),
        _set_up(index),
        _add_route(
            32,
            RT_SCOPE_LINK,
            _attr(RTA_DST, address.packed),
            _attr(RTA_OIF, _u32(index)),
            _attr(RTA_PREFSRC, gateway.packed),
        ),
    )
    return struct.unpack("=i", link[1][IFLA_LINK])[0]  # a veth's IFLA_LINK: its peer's index (in the peer's netns)


def _configure_inside(index: int, gateway: ipaddress.IPv4Address, address: ipaddress.IPv4Address,
                      prepared: bool) -> None:
    if not prepared:
        _sysctl("net/ipv6/conf/all/disable_ipv6", "1")
        _sysctl("net/ipv6/conf/default/disable_ipv6", "1")
        _sysctl(UNPRIVILEGED_PORTS, "0")
    with _Rtnl() as rtnl:  # made here, so in the sandbox's netns
        rtnl.request(
            *([_set_up(LOOPBACK_INDEX)] if prepared else []),
            _add_address(index, address),
            _set_up(index),
            _add_route(32, RT_SCOPE_LINK, _attr(RTA_DST, gateway.packed), _attr(RTA_OIF, _u32(index))),
            _add_route(0, RT_SCOPE_UNIVERSE, _attr(RTA_GATEWAY, gateway.packed), _attr(RTA_OIF, _u32(index))),
        )


def unplug(veth: str) -> None:
    """Delete the host end (the sandbox end goes with it). Idempotent."""
    with _host.lend() as rtnl, contextlib.suppress(NetlinkError):  # ENODEV: already gone
        rtnl.request((RTM_DELLINK, 0, _link() + _name(veth)))


def links(prefix: str) -> list[str]:
    """Host links whose name starts with ``prefix`` (to find leftovers)."""
    with _host.lend() as rtnl:
        (parts,) = rtnl.request((RTM_GETLINK, NLM_F_DUMP, _link()))
    names = [_attrs(part, _IFINFO.size).get(IFLA_IFNAME, b"").rstrip(b"\0").decode() for part in parts]
    return [n for n in names if n and n.startswith(prefix)]


def forget_connections(address: ipaddress.IPv4Address) -> int:
    """Drop the conntrack entries of flows a sandbox started, so a new policy applies to them too."""
    count = 0
    with Conntrack() as ct:
        for entry in list(ct.dump_entries(tuple_orig=NFCTAttrTuple(saddr=str(address)))):
            with contextlib.suppress(_ConntrackError):
                ct.delete(entry)
                count += 1
    return count


def enable_forwarding() -> None:
    """Sandboxes' traffic is routed by the host: IPv4 forwarding must be on (host-wide)."""
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        if f.read().strip() == "1":
            return
    _sysctl("net/ipv4/ip_forward", "1")


def connect_inside(pidfd: int, port: int) -> socket.socket:
    """A non-blocking TCP socket made in the netns of the process ``pidfd`` is of (the sandbox's pid
    1: a pidfd, not a pid, so a pid reused after it died never names another netns), for
    ``127.0.0.1:port`` there; the caller connects it. Works for every network mode, ``none``
    included, and needs no host route."""

    def make() -> socket.socket:
        with entered(pidfd):  # setns takes a pidfd and enters that process's netns
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    sock = _NS.submit(make).result()
    sock.setblocking(False)
    return sock
