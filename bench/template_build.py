"""Template builds: cold build of a 3-step template, warm rebuild, and sandbox start on a derived
template vs its base — all through the real HTTP API, in one run.

The derived template is ``FROM code-interpreter`` plus a package install (``--pip PKG`` installs that
package from the configured index when the sandbox network allows it; the default writes ~2,000 files
locally so it needs no network), so its root is a stack of layers over the base: its start time should
match the base's (ratio ~1.0), since layers are overlay lower dirs, never copied.

    sudo .venv/bin/python bench/template_build.py [--samples 20] [--pip scikit-learn]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from create_latency import ours as start_times

from conftest import make_data_dir, remove_data_dir, start_server

THREE_STEPS = """\
FROM base
RUN mkdir -p /opt/app && seq 1 20000 > /opt/app/numbers.txt
COPY <<EOF /opt/app/config.ini
[app]
name = bench
EOF
RUN sha256sum /opt/app/numbers.txt > /opt/app/numbers.sha256
"""


def build(client: httpx.Client, name: str, dockerfile: str, **options: object) -> float:
    started = time.perf_counter()
    r = client.post("/v1/templates", json={"name": name, "dockerfile": dockerfile, **options})
    r.raise_for_status()
    build_id = r.json()["id"]
    with client.stream("GET", f"/v1/builds/{build_id}/logs") as s:
        for line in s.iter_lines():
            event = json.loads(line)
            if event["type"] == "status":
                if event["state"] != "ready":
                    raise SystemExit(f"build of {name} failed: {event['error']}")
                break
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--pip", default=None, help="a PyPI package for the derived template (needs network)")
    args = parser.parse_args()
    install = (f"RUN pip install --break-system-packages --no-cache-dir {args.pip}" if args.pip else
               "RUN mkdir -p /usr/local/lib/python3.11/dist-packages/fakepkg && cd $_ && "
               "for i in $(seq 1 2000); do echo \"X = $i\" > m$i.py; done")
    derived = f"FROM code-interpreter\n{install}\n"
    data = make_data_dir()
    server = start_server(data)
    rows = []
    try:
        with server.client(timeout=1800) as client:
            cold = build(client, "bench-three", THREE_STEPS)
            warm = [build(client, "bench-three", THREE_STEPS) for _ in range(5)]
            build(client, "bench-derived", derived)
            start_times(client, 3, "code-interpreter")
            base = start_times(client, args.samples, "code-interpreter")
            mine = start_times(client, args.samples, "bench-derived")
    finally:
        server.stop()
        remove_data_dir(data)
    warm_p50 = statistics.median(warm)
    rows.append(("3-step template, cold build (s)", cold, None, None, "-"))
    rows.append(("same, rebuild, nothing changed (s)", warm_p50, cold, warm_p50 / cold, "< 1 s"))
    b50, d50 = statistics.median(base), statistics.median(mine)
    rows.append(("start code-interpreter + 1st output (ms)", b50 * 1000, None, None, "-"))
    rows.append((f"start derived ({args.pip or '2,000 files'}) (ms)", d50 * 1000, b50 * 1000, d50 / b50, "~1.0"))
    print(f"{'figure':<46}{'ours':>10}{'baseline':>10}{'ratio':>8}  target")
    for name, value, baseline, ratio, target in rows:
        base_text = f"{baseline:>10.3f}" if baseline is not None else f"{'':>10}"
        ratio_text = f"{ratio:>8.3f}" if ratio is not None else f"{'':>8}"
        print(f"{name:<46}{value:>10.3f}{base_text}{ratio_text}  {target}")
    passed = warm_p50 < 1.0 and d50 / b50 < 1.25
    print("PASS" if passed else "FAIL")


if __name__ == "__main__":
    main()
