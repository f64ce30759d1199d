"""One row of the benchmark table (ours, the same run's baseline, ratio, target, pass/fail), the table
itself, percentiles, and a throwaway server for a block of measurements.

Every figure is measured against a baseline taken in the same run (ground truth moves with the
machine and with whatever else the host runs); the ratio is ``ours / baseline``. A figure whose target
is a ratio passes on the ratio, one whose target is absolute passes on ``ours``; ``check`` says which.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import TEMPLATES, Server, corral_cgroups, make_data_dir, remove_data_dir, start_server
from corral.config import Settings
from corral.runtime.cgroups_priv import detect

TEMPLATES_ROOT = TEMPLATES / "base" / "rootfs"  # the base template's root, shared by every baseline


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def p50(values: list[float]) -> float:
    return statistics.median(values)


@dataclass
class Figure:
    """One measured figure. ``check(ours, ratio)`` decides pass/fail; None means informational."""

    name: str
    unit: str
    ours: float
    baseline: float | None
    baseline_name: str
    target: str
    check: Callable[[float, float | None], bool] | None = None
    note: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return self.ours / self.baseline if self.baseline else None

    @property
    def passed(self) -> bool | None:
        return None if self.check is None else self.check(self.ours, self.ratio)

    def as_json(self) -> dict[str, object]:
        data = {k: v for k, v in asdict(self).items() if k != "check"}
        return {**data, "ratio": self.ratio, "passed": self.passed}


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(figures: list[Figure]) -> str:
    """The one table: figure, ours, baseline, ratio, target, pass/fail (Markdown, readable as text)."""
    head = ("figure", "ours", "baseline", "ratio", "target", "result")
    rows = []
    for f in figures:
        result = {True: "PASS", False: "FAIL", None: "info"}[f.passed]
        baseline = f"{fmt(f.baseline)} ({f.baseline_name})" if f.baseline is not None else f.baseline_name or "-"
        rows.append((f"{f.name} [{f.unit}]", fmt(f.ours), baseline, fmt(f.ratio), f.target, result))
    widths = [max(len(str(r[i])) for r in (head, *rows)) for i in range(len(head))]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in (head, *rows)]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def save(figures: list[Figure], path: Path, context: dict[str, object]) -> None:
    path.write_text(json.dumps({"context": context, "figures": [f.as_json() for f in figures]}, indent=2) + "\n")


@contextlib.contextmanager
def server(**env: str) -> Iterator[Server]:
    """A fresh Corral server (own data dir, pool off unless ``CORRAL_POOL`` is given); removed after."""
    data = make_data_dir()
    try:
        srv = start_server(data, **env)
    except BaseException:  # its log was printed in the failure
        remove_data_dir(data)
        raise
    try:
        yield srv
    finally:
        srv.stop()
        _remove_leftover_cgroups(data)
        remove_data_dir(data)


def _remove_leftover_cgroups(data: Path) -> None:
    """Sandbox cgroups a stopped server left (a restart on its data dir would remove them; this one's
    dir goes): removed, and said on stderr — a server should leave none (the tests assert it)."""
    left = corral_cgroups(data)
    if not left:
        return
    ids = sorted({Path(path).name for path in left})
    print(f"bench: the server left the cgroups of {len(ids)} sandbox(es) after its stop, removed now: "
          f"{ids[:5]} ({len(left)} groups)", file=sys.stderr, flush=True)
    cgroups = detect(instance=Settings(data_dir=data).instance)
    for sandbox_id in ids:
        cgroups.remove(sandbox_id)
    cgroups.close()


def load() -> str:
    """``uptime``'s load averages: other sessions may share this host, so every result says what it was."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"
