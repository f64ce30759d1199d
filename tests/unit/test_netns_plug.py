"""``netns_priv.plug``/``unplug``: the links, addresses, routes and sysctls a sandbox's netns is given,
checked with ``ip`` (not with our own netlink code), concurrent plugs, and the netlink socket's errors.

Each test uses fresh namespaces (``new_netns``) and veth names with a random prefix, and deletes
what it made; the ``no_leftovers`` fixture checks that no veth of that prefix stays on the host.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
import threading
from collections.abc import Iterator

import pytest

from corral.runtime import netns_priv

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
    assert read(f"/proc/sys/net/ipv6/conf/{veth}/disable_ipv6") == "1"

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
