"""A sandbox's nftables batches (``netrules.attach`` then ``detach``) against the number of live
sandboxes in the table, for the default policy (a verdict, nothing of its own) and a filtering one
(its own chain and DNS sets). libnftables reads every set of the table before each batch, so what
the live sandboxes own is what each batch pays for (docs/network.md, docs/performance.md).

Loads a table of a random instance (no veth, no traffic: the rules only) and deletes it after.

    sudo .venv/bin/python bench/nft_scale.py [--live 0,50,200,500] [--samples 30]
"""

from __future__ import annotations

import argparse
import ipaddress
import secrets
import statistics
import time

from corral.runtime import netrules, nft_priv
from corral.runtime.netpolicy import INTERNET, NetworkPolicy, parse_policy

BLOCK = ipaddress.IPv4Network("172.31.240.0/20")  # never routed: no link carries these addresses
FILTERING = parse_policy(None, ["10.1.0.0/16:443", "files.example.com"], None)


def address(slot: int) -> ipaddress.IPv4Address:
    return BLOCK.network_address + 1 + slot


def attach_detach_ms(names: netrules.Names, policy: NetworkPolicy, first_slot: int, samples: int) -> float:
    times = []
    for slot in range(first_slot, first_slot + samples):
        started = time.perf_counter()
        nft_priv.run(netrules.attach(names, slot, address(slot), policy))
        nft_priv.run(netrules.detach(names, slot, address(slot), policy))
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--live", default="0,50,200,500")
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()
    levels = [int(n) for n in args.live.split(",")]
    print("live sandboxes (all of one kind) | attach + detach, default policy [ms] | same, filtering policy [ms]")
    for level in levels:
        row = []
        for live_policy in (INTERNET, FILTERING):
            names = netrules.Names(secrets.token_hex(6))
            nft_priv.run(netrules.table(names, BLOCK, BLOCK.network_address + 1, ()))
            try:
                for slot in range(1, level + 1):
                    nft_priv.run(netrules.attach(names, slot, address(slot), live_policy))
                row.append(attach_detach_ms(names, live_policy, level + 1, args.samples))
            finally:
                nft_priv.delete_table(names.table)
        print(f"{level:>5} | {row[0]:.2f} | {row[1]:.2f}")


if __name__ == "__main__":
    main()
