"""``netns_priv.plug``/``unplug``: the links, addresses, routes and sysctls a sandbox's netns is given,
checked with ``ip`` (not with our own netlink code), concurrent plugs, and the netlink socket's errors;
``NetnsMaker``: who owns a namespace made for a bwrap sandbox, and who may enter it; spares of them.

Each test uses fresh namespaces (``new_netns``) and veth names with a random prefix, and deletes
what it made; the ``no_leftovers`` fixture checks that no veth of that prefix stays on the host.
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import json
import os
import secrets
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import corral.agent
from corral.runtime import netns_priv, static_tools
from corral.runtime.netpolicy import NetworkPolicy
from corral.runtime.netspares import NetSpares
from corral.runtime.network import NetConfig, Network

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="netns, veths and netlink changes need root")

GATEWAY = ipaddress.IPv4Address("172.31.255.1")  # never routed: the test's links carry no traffic


@pytest.fixture
def prefix() -> Iterator[str]:
    tag = f"crlt{secrets.token_hex(3)}"
    yield tag
    left = netns_priv.links(tag)
    for veth in left:
        netns_priv.unplug(veth)
    assert left == [], f"leaked veths {left}"


@pytest.fixture
def netns() -> Iterator[list[int]]:
    fds: list[int] = []
    yield fds
    for fd in fds:
        os.close(fd)


def fresh(fds: list[int]) -> str:
    fd = netns_priv.new_netns()
    fds.append(fd)
    return f"/proc/{os.getpid()}/fd/{fd}"


def ip(*args: str, ns: str | None = None) -> list[dict[str, object]]:
    cmd = ["ip", "-j", "-d", *args]
    if ns is not None:
        cmd = ["nsenter", f"--net={ns}", *cmd]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout or "[]")


def read(path: str, ns: str | None = None) -> str:
    cmd = ["cat", path] if ns is None else ["nsenter", f"--net={ns}", "cat", path]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()


def test_plug_gives_both_ends_their_address_routes_and_no_ipv6_and_unplug_removes_them(
    prefix: str, netns: list[int]
) -> None:
    ns, veth, address = fresh(netns), f"{prefix}a", GATEWAY + 5
    netns_priv.plug(ns, veth, GATEWAY, address)
    assert netns_priv.links(prefix) == [veth]

    (host,) = ip("addr", "show", "dev", veth)
    assert "UP" in host["flags"] and host["linkinfo"]["info_kind"] == "veth"  # type: ignore[index,operator]
    assert [(a["family"], a["local"], a["prefixlen"], a["scope"]) for a in host["addr_info"]] == [  # type: ignore[attr-defined]
        ("inet", str(GATEWAY), 32, "global")
    ]
    routes = ip("route", "show", "dev", veth)
    assert [(r["dst"], r["protocol"], r["scope"], r.get("prefsrc")) for r in routes] == [
        (str(address), "static", "link", str(GATEWAY))
    ]
    assert read(f"/proc/sys/net/ipv6/conf/{veth}/addr_gen_mode") == "1"  # none: no fe80:: when it went up

    inside = {link["ifname"]: link for link in ip("addr", "show", ns=ns)}
    assert set(inside) == {"lo", "eth0"}
    assert "UP" in inside["lo"]["flags"]  # type: ignore[operator]  # new_netns brings lo up (runsc needs it)
    eth0 = inside["eth0"]
    assert "UP" in eth0["flags"] and eth0["link_index"] == host["ifindex"]  # type: ignore[operator]  # its peer
    assert [(a["family"], a["local"], a["prefixlen"]) for a in eth0["addr_info"]] == [("inet", str(address), 32)]  # type: ignore[attr-defined]
    main = ip("route", "show", "table", "main", ns=ns)
    assert [(r["dst"], r.get("gateway"), r["dev"], r["protocol"], r["scope"]) for r in main] == [
        ("default", str(GATEWAY), "eth0", "static", "global"),
        (str(GATEWAY), None, "eth0", "static", "link"),
    ]
    for conf in ("all", "default", "eth0", "lo"):
        assert read(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6", ns) == "1", conf

    netns_priv.unplug(veth)
    assert netns_priv.links(prefix) == []
    assert [link["ifname"] for link in ip("link", "show", ns=ns)] == ["lo"]  # the peer went with it
    netns_priv.unplug(veth)  # idempotent


def test_a_new_netns_is_prepared_so_that_its_plug_leaves_lo_its_ipv6_loopback(prefix: str, netns: list[int]) -> None:
    """gVisor's namespaces (``new_netns``): IPv6 off for links made later and any port bindable, set
    before ``eth0`` exists, so ``lo`` keeps ``::1`` (runsc copies it into its netstack) as bwrap's does."""
    ns = fresh(netns)
    assert read("/proc/sys/net/ipv6/conf/default/disable_ipv6", ns) == "1"
    assert read("/proc/sys/net/ipv4/ip_unprivileged_port_start", ns) == "0"
    netns_priv.plug(ns, f"{prefix}p", GATEWAY, GATEWAY + 6, prepared=True)
    inside = {link["ifname"]: link for link in ip("addr", "show", ns=ns)}
    assert [a["local"] for a in inside["lo"]["addr_info"]] == ["127.0.0.1", "::1"]  # type: ignore[index]
    assert [a["family"] for a in inside["eth0"]["addr_info"]] == ["inet"]  # type: ignore[index]  # no link-local fe80::
    assert read("/proc/sys/net/ipv6/conf/eth0/disable_ipv6", ns) == "1"
    netns_priv.unplug(f"{prefix}p")


def test_a_taken_name_is_a_setup_error_naming_the_veth_and_the_first_pair_survives(
    prefix: str, netns: list[int]
) -> None:
    veth = f"{prefix}b"
    netns_priv.plug(fresh(netns), veth, GATEWAY, GATEWAY + 6)
    with pytest.raises(netns_priv.NetSetupError, match=rf"creating veth {veth} failed: .*File exists"):
        netns_priv.plug(fresh(netns), veth, GATEWAY, GATEWAY + 7)
    (host,) = ip("addr", "show", "dev", veth)
    assert [a["local"] for a in host["addr_info"]] == [str(GATEWAY)]  # type: ignore[attr-defined]
    netns_priv.unplug(veth)


def test_a_dead_netns_path_fails_before_any_link_is_made(prefix: str) -> None:
    with pytest.raises(FileNotFoundError):
        netns_priv.plug("/proc/self/fd/999999", f"{prefix}c", GATEWAY, GATEWAY + 8)
    assert netns_priv.links(prefix) == []


def test_concurrent_plugs_and_unplugs_from_worker_threads(prefix: str, netns: list[int]) -> None:
    spaces = [fresh(netns) for _ in range(8)]
    errors: list[BaseException] = []

    def cycle(i: int) -> None:
        try:
            for round_ in range(3):
                veth = f"{prefix}{i}{round_}"
                netns_priv.plug(spaces[i], veth, GATEWAY, GATEWAY + 10 + i)
                assert ip("addr", "show", ns=spaces[i])[1]["addr_info"][0]["local"] == str(GATEWAY + 10 + i)  # type: ignore[index]
                netns_priv.unplug(veth)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=cycle, args=(i,)) for i in range(len(spaces))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert netns_priv.links(prefix) == []


def test_a_refused_request_raises_its_errno_and_the_socket_stays_usable() -> None:
    with netns_priv._Rtnl() as rtnl:
        missing = netns_priv._link() + netns_priv._name("crl-no-such")
        with pytest.raises(netns_priv.NetlinkError) as caught:
            rtnl.request((netns_priv.RTM_DELLINK, 0, missing))
        assert caught.value.errno == 19  # ENODEV
        found = netns_priv._get_link(rtnl, "lo")
        assert found is not None and found[0] == 1


def test_answers_to_an_abandoned_request_are_skipped() -> None:
    with netns_priv._Rtnl() as rtnl:
        # as if a request had been sent and its caller interrupted before reading its (error) answer
        stale = netns_priv._link() + netns_priv._name("crl-no-such")
        header = netns_priv._HDR.pack(netns_priv._HDR.size + len(stale), netns_priv.RTM_GETLINK, 0x5, rtnl._seq + 1, 0)
        rtnl._sock.send(header + stale)
        rtnl._seq += 1
        found = netns_priv._get_link(rtnl, "lo")
        assert found is not None and found[0] == 1


def test_host_sockets_are_reused_one_thread_at_a_time_and_dropped_when_left_mid_request() -> None:
    pool = netns_priv._HostSockets(keep=2)
    with pool.lend() as a, pool.lend() as b:
        assert a is not b  # lent to one user at a time
    with pool.lend() as again:
        assert again in (a, b)
    with pytest.raises(netns_priv.NetlinkError), pool.lend() as c:  # a refusal leaves it clean
        c.request((netns_priv.RTM_DELLINK, 0, netns_priv._link() + netns_priv._name("crl-no-such")))
    with pool.lend() as d:
        assert d is c
        d.clean = False  # as if interrupted between send and the last answer
    with pool.lend() as e:
        assert e is not d
    assert d._sock.fileno() == -1  # closed, not lent again


# ioctls on namespace fds (linux/nsfs.h)
NS_GET_USERNS, NS_GET_PARENT, NS_GET_OWNER_UID = 0xB701, 0xB702, 0xB704
SANDBOX_UID = 1_700_000  # a host uid nothing else uses, as a server's sandbox uid


@pytest.fixture(scope="module")
def tools() -> str:
    built = static_tools.build(Path(corral.agent.__file__).parent)
    assert built is not None, "corral-tools did not build (gcc and libc6-dev are make serve's packages)"
    return str(built)


@pytest.fixture
def maker(tools: str) -> Iterator[netns_priv.NetnsMaker]:
    made = netns_priv.NetnsMaker(tools, SANDBOX_UID)
    yield made
    made.close()


def owner(netns_fd: int) -> tuple[int, int, int]:
    """(inode of the netns' owning user namespace, that namespace's owner uid, inode of its parent)."""
    userns = fcntl.ioctl(netns_fd, NS_GET_USERNS)
    try:
        uid = struct.unpack("=I", fcntl.ioctl(userns, NS_GET_OWNER_UID, bytes(4)))[0]
        parent = fcntl.ioctl(userns, NS_GET_PARENT)
        try:
            return os.fstat(userns).st_ino, uid, os.fstat(parent).st_ino
        finally:
            os.close(parent)
    finally:
        os.close(userns)


def test_a_made_netns_belongs_to_a_new_user_namespace_of_the_uid_and_is_plugged_like_any(
    maker: netns_priv.NetnsMaker, prefix: str, netns: list[int]
) -> None:
    fd = maker.make()
    netns.append(fd)
    userns, uid, parent = owner(fd)
    host = os.stat("/proc/self/ns/user").st_ino
    assert (uid, parent) == (SANDBOX_UID, host) and userns != host  # a child of the host's, the uid's
    ns = f"/proc/{os.getpid()}/fd/{fd}"  # a path other processes (ip, nsenter) can open too
    assert os.stat(ns).st_ino != os.stat("/proc/self/ns/net").st_ino
    assert [(link["ifname"], "UP" in link["flags"]) for link in ip("link", "show", ns=ns)] == [("lo", False)]  # type: ignore[operator]
    # set by the maker: IPv6 off for links added later (default), any user binds any port
    assert read("/proc/sys/net/ipv6/conf/default/disable_ipv6", ns) == "1"
    assert read("/proc/sys/net/ipv4/ip_unprivileged_port_start", ns) == "0"

    netns_priv.plug(ns, f"{prefix}o", GATEWAY, GATEWAY + 9, prepared=True)
    inside = {link["ifname"]: link for link in ip("addr", "show", ns=ns)}
    assert set(inside) == {"lo", "eth0"} and all("UP" in link["flags"] for link in inside.values())  # type: ignore[operator]
    assert [a["local"] for a in inside["lo"]["addr_info"]] == ["127.0.0.1", "::1"]  # type: ignore[index]  # as bwrap's own
    assert [a["family"] for a in inside["eth0"]["addr_info"]] == ["inet"]  # type: ignore[index]  # no link-local fe80::
    assert read("/proc/sys/net/ipv6/conf/eth0/disable_ipv6", ns) == "1"
    netns_priv.unplug(f"{prefix}o")


def test_only_the_uid_through_the_owning_user_namespace_may_enter_a_made_netns(
    maker: netns_priv.NetnsMaker, netns: list[int]
) -> None:
    fd = maker.make()
    netns.append(fd)
    userns = fcntl.ioctl(fd, NS_GET_USERNS)
    netns.append(userns)

    def enter(uid: int, *how: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *how, "nsenter", "--preserve-credentials",
             f"--user=/proc/self/fd/{userns}", f"--net=/proc/self/fd/{fd}", "cat",
             "/proc/sys/net/ipv4/ip_unprivileged_port_start"],
            pass_fds=(fd, userns), capture_output=True, text=True,
        )

    # the uid on the host, as the agent's joiner is, holds every capability in that user namespace
    assert enter(SANDBOX_UID).returncode == 0
    # another uid; the uid from a user namespace of its own (as a sandbox's processes are)
    for refused in (enter(SANDBOX_UID + 1), enter(SANDBOX_UID, "unshare", "--user", "--map-root-user")):
        assert refused.returncode != 0 and "Operation not permitted" in refused.stderr


def test_each_namespace_is_new_and_a_maker_that_died_is_started_again(
    maker: netns_priv.NetnsMaker, netns: list[int]
) -> None:
    netns += [maker.make(), maker.make()]
    assert os.fstat(netns[0]).st_ino != os.fstat(netns[1]).st_ino
    assert owner(netns[0])[0] == owner(netns[1])[0]  # one process, one user namespace
    assert maker._proc is not None
    maker._proc.kill()  # as any end of it would
    maker._proc.wait()
    netns.append(maker.make())
    assert owner(netns[2])[1] == SANDBOX_UID and owner(netns[2])[0] != owner(netns[0])[0]


def test_a_netns_the_tool_cannot_make_is_a_setup_error_with_its_reason(tools: str) -> None:
    bad = netns_priv.NetnsMaker(tools, -1)
    for _ in range(2):  # and again: a new process each time, which fails the same way
        with pytest.raises(netns_priv.NetSetupError, match=r"making a network namespace failed: .*bad arguments"):
            bad.make()
    bad.close()


def test_spare_namespaces_are_made_ahead_claimed_once_and_released(
    maker: netns_priv.NetnsMaker, tmp_path: Path
) -> None:
    async def body() -> None:
        net = Network(NetConfig(instance=secrets.token_hex(4), state_dir=tmp_path / "net"))
        await net.start()
        prefix = net.names.veth_prefix
        try:
            spares = NetSpares(net, maker, 2)
            assert spares.take() is None  # not started: nothing made yet
            spares.start()
            while spares.ready < 2:
                await asyncio.sleep(0.01)  # waits for the background fill, asserted next (not a timing)
            assert len(netns_priv.links(prefix)) == 2
            assert await net.reconcile() == []  # a spare's link is no leftover
            taken = spares.take()
            assert taken is not None and spares.ready == 1  # no refill until the create asks (``refill``)
            assert owner(taken.fd)[1] == SANDBOX_UID
            allow = NetworkPolicy(mode="allowlist")
            await net.claim(taken.att, "sbx1", allow)
            assert net.attachment("sbx1") is taken.att and net.describe("sbx1")["mode"] == "allowlist"
            table = subprocess.run(["nft", "list", "chain", "inet", net.names.table, net.names.chain(taken.att.slot)],
                                   capture_output=True, text=True, check=True).stdout
            rules = [line.strip() for line in table.splitlines()
                     if line.strip().split(" ")[0] not in ("table", "chain", "}")]
            assert rules[-1] == "drop"  # the claimed policy's last rule, not the spare's "accept"
            spares.refill()
            while spares.ready < 2:
                await asyncio.sleep(0.01)
            other = spares.take()
            assert other is not None and other.att.address != taken.att.address
            assert os.fstat(other.fd).st_ino != os.fstat(taken.fd).st_ino  # each one new, never reused
            await spares.close()  # the one left is removed; taken ones are their sandboxes'
            assert sorted(netns_priv.links(prefix)) == sorted([taken.att.veth, other.att.veth])
            assert spares.take() is None
            spares.refill()  # closed: makes nothing
            await asyncio.sleep(0)
            assert spares.ready == 0
            for spare in (taken, other):
                os.close(spare.fd)
            net.release("sbx1")
            await net.release_spare(other.att)
            await net.unplugged()
            assert netns_priv.links(prefix) == []
        finally:
            await net.close()
        assert netns_priv.links(prefix) == []

    asyncio.run(body())


def test_an_address_given_up_is_handed_out_again_last(tmp_path: Path) -> None:
    """Late packets of a sandbox's flows (and conntrack's memory of them) must not meet the next
    holder of its address: a released slot goes to the back of the free ones."""
    async def body() -> None:
        net = Network(NetConfig(instance=secrets.token_hex(4), state_dir=tmp_path / "net"))
        await net.start()
        try:
            first = net.reserve("sbx-a", NetworkPolicy())
            second = net.reserve("sbx-b", NetworkPolicy())
            assert first is not None and second is not None and first.address != second.address
            net.release("sbx-a")  # its slot is free again once its link is gone
            await net.unplugged()
            third = net.reserve("sbx-c", NetworkPolicy())
            assert third is not None and third.address not in (first.address, second.address)
            net.release("sbx-b")
            net.release("sbx-c")
        finally:
            await net.close()

    asyncio.run(body())


def test_a_netns_maker_that_never_answers_fails_the_make_instead_of_hanging_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A create waits for its network namespace to the end (a cancelled one too: runtime/threads.py),
    so a helper that stops answering must not hold it, nor a server's stop, for ever: the make fails
    after ``MAKE_TIMEOUT`` and the helper is gone; the next make starts a new one."""
    stuck = tmp_path / "stuck-tools"
    stuck.write_text("#!/bin/sh\nexec sleep 600\n")
    stuck.chmod(0o755)
    monkeypatch.setattr(netns_priv, "MAKE_TIMEOUT", 0.2)
    maker = netns_priv.NetnsMaker(str(stuck), SANDBOX_UID)
    try:
        with pytest.raises(netns_priv.NetSetupError, match=r"no answer within 0\.2 s"):
            maker.make()
        assert maker._proc is None  # killed and reaped
    finally:
        maker.close()
