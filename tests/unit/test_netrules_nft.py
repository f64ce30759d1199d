"""The per-sandbox nftables batches (``netrules``) loaded into a real table of a random instance:
which objects each policy leaves in the table, through attach, policy changes and detach.

Read back with the ``nft`` command (not our own libnftables calls); the table is deleted after.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.runtime import netrules, nft_priv
from corral.runtime.netpolicy import INTERNET, NetworkPolicy, from_e2b, parse_policy
from corral.runtime.network import NetConfig, Network

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loading nftables rules needs root")

BLOCK = ipaddress.IPv4Network("172.31.240.0/20")  # never routed: no link carries these addresses
GATEWAY = BLOCK.network_address + 1


@pytest.fixture
def names() -> Iterator[netrules.Names]:
    names = netrules.Names(secrets.token_hex(6))
    nft_priv.run(netrules.table(names, BLOCK, GATEWAY, ()))
    yield names
    nft_priv.delete_table(names.table)
    assert names.table not in nft_priv.tables()


def table(names: netrules.Names) -> dict[str, Any]:
    """Chains, sets (named ones, with their elements) and the policies map of the table, from ``nft -j``."""
    out = subprocess.run(["nft", "-j", "list", "table", "inet", names.table], capture_output=True, text=True,
                         check=True).stdout
    found: dict[str, Any] = {"chains": set(), "sets": {}, "verdicts": {}, "sandboxes": []}
    for item in json.loads(out)["nftables"]:
        if "chain" in item:
            found["chains"].add(item["chain"]["name"])
        elif "set" in item:
            found["sets"][item["set"]["name"]] = item["set"].get("elem", [])
        elif "map" in item and item["map"]["name"] == "policies":
            for key, verdict in item["map"].get("elem", []):
                found["verdicts"][key] = next(iter(verdict))
    found["sandboxes"] = found["sets"].pop("sandboxes")
    return found


BASE_CHAINS = {"input", "to_host", "forward", "egress", "postrouting"}
BASE_SETS = {"always_deny", "private", "operator", "tcp_udp"}


def test_a_sandbox_whose_policy_filters_nothing_gets_a_verdict_and_no_objects(names: netrules.Names) -> None:
    open_ones = [INTERNET, from_e2b(None, ["10.9.0.0/16:443"], None),  # E2B: allowOut alone opens nothing more
                 parse_policy("internet", None, ["bad.example.com"])]  # names are refused by the DNS forwarder
    for slot, policy in enumerate(open_ones, start=1):
        assert not policy.filters_packets
        nft_priv.run(netrules.attach(names, slot, BLOCK.network_address + 1 + slot, policy))
    found = table(names)
    assert found["chains"] == BASE_CHAINS and set(found["sets"]) == BASE_SETS
    assert found["verdicts"] == {names.veth(slot): "accept" for slot in (1, 2, 3)}
    assert len(found["sandboxes"]) == 3
    for slot, policy in enumerate(open_ones, start=1):
        nft_priv.run(netrules.detach(names, slot, BLOCK.network_address + 1 + slot, policy))
    found = table(names)
    assert found["verdicts"] == {} and found["sandboxes"] == []


def test_filtering_policies_get_their_chain_and_sets_and_changes_move_between_the_two(
    names: netrules.Names,
) -> None:
    allow = parse_policy(None, ["10.1.0.0/16:443", "files.example.com"], None)
    deny = parse_policy("internet", None, ["10.2.0.0/16"])
    capped = NetworkPolicy(mode="internet", max_connections=10)
    assert allow.filters_packets and deny.filters_packets and capped.filters_packets
    slot, address = 7, BLOCK.network_address + 8
    chain, sets = names.chain(slot), {names.dns_set(slot), names.dns_port_set(slot)}

    nft_priv.run(netrules.attach(names, slot, address, allow))
    found = table(names)
    assert found["chains"] == BASE_CHAINS | {chain} and set(found["sets"]) == BASE_SETS | sets
    assert found["verdicts"] == {names.veth(slot): "goto"}
    nft_priv.run(netrules.learn(names, slot, ["1.2.3.4"], [None], 300))
    assert len(table(names)["sets"][names.dns_set(slot)]) == 1

    nft_priv.run(netrules.update(names, slot, allow, deny))  # filtering to filtering: learnt addresses go
    found = table(names)
    assert found["chains"] == BASE_CHAINS | {chain} and found["sets"][names.dns_set(slot)] == []
    nft_priv.run(netrules.update(names, slot, deny, INTERNET))  # to open: the chain and sets go
    found = table(names)
    assert (found["chains"], set(found["sets"])) == (BASE_CHAINS, BASE_SETS)
    assert found["verdicts"] == {names.veth(slot): "accept"}
    assert netrules.update(names, slot, INTERNET, INTERNET) == ""
    nft_priv.run(netrules.update(names, slot, INTERNET, capped))  # and back
    found = table(names)
    assert found["chains"] == BASE_CHAINS | {chain} and found["verdicts"] == {names.veth(slot): "goto"}

    nft_priv.run(netrules.detach(names, slot, address, capped))
    found = table(names)
    assert (found["chains"], set(found["sets"])) == (BASE_CHAINS, BASE_SETS)
    assert found["verdicts"] == {} and found["sandboxes"] == []


def test_a_filtering_attach_starts_from_empty_chain_and_sets_whatever_the_slot_held(names: netrules.Names) -> None:
    """A detach computed for the old policy while an update to a filtering one was in flight leaves
    that chain and those sets behind; the slot's next holder must not inherit their rules or addresses."""
    slot, address = 9, BLOCK.network_address + 10
    earlier = parse_policy(None, ["10.7.0.0/16"], None)
    nft_priv.run(netrules.update(names, slot, INTERNET, earlier).replace(  # the update, minus the map change
        f'delete element inet {names.table} policies {{ "{names.veth(slot)}" }}\n', "").replace(
        f'add element inet {names.table} policies {{ "{names.veth(slot)}" : goto {names.chain(slot)} }}\n', ""))
    nft_priv.run(netrules.learn(names, slot, ["1.2.3.4"], [None, (443, 443)], 300))
    later = parse_policy(None, ["10.8.0.0/16"], None)
    nft_priv.run(netrules.attach(names, slot, address, later))
    out = subprocess.run(["nft", "list", "chain", "inet", names.table, names.chain(slot)], capture_output=True,
                         text=True, check=True).stdout
    assert "10.8.0.0/16" in out and "10.7.0.0/16" not in out
    found = table(names)
    assert found["sets"][names.dns_set(slot)] == [] and found["sets"][names.dns_port_set(slot)] == []
    nft_priv.run(netrules.detach(names, slot, address, later))


def test_a_release_during_a_policy_change_leaves_nothing_of_the_sandbox(tmp_path: Path) -> None:
    async def body() -> None:
        net = Network(NetConfig(instance=secrets.token_hex(4), state_dir=tmp_path / "net"))
        await net.start()
        try:
            att = net.reserve("sbx", INTERNET)
            assert att is not None
            nft_priv.run(netrules.attach(net.names, att.slot, att.address, INTERNET))  # what plug loads
            change = asyncio.create_task(net.update("sbx", parse_policy(None, ["10.1.0.0/16"], None)))
            await asyncio.sleep(0)  # the change's batch is on its way
            net.release("sbx")  # its rules go once the change is done
            await change
            await net.unplugged()
            found = table(net.names)
            assert (found["chains"], set(found["sets"])) == (BASE_CHAINS, BASE_SETS)
            assert found["verdicts"] == {} and found["sandboxes"] == []
        finally:
            await net.close()

    asyncio.run(body())
