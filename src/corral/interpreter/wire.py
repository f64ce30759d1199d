"""The driver side of the interpreter wire (docs/interpreter-protocol.md), shared by the Python drivers.

Runs inside sandboxes on the template's python3 (stdlib only) and is imported by ``py_driver.py`` and
``bash_driver.py`` from their own directory, which is not a package there. ``emit`` is thread-safe:
it writes one JSON object per line to stdout, the driver's only output channel.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

MAX_TEXT = 64 * 1024  # UTF-8 bytes of text per stdout/stderr event

_write_lock = threading.Lock()


def now() -> str:
    """The current time as ISO 8601 UTC, e.g. ``2026-11-29T08:48:00.123456Z``."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def emit(event: dict[str, Any]) -> None:
    line = json.dumps(event, ensure_ascii=False) + "\n"
    data = line.encode("utf-8", "replace")  # a lone surrogate must not kill the driver
    with _write_lock:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


def chunks(text: str, limit: int = MAX_TEXT) -> Iterator[str]:
    """Split text into pieces of at most `limit` UTF-8 bytes, never inside a character."""
    if len(text) * 4 <= limit:
        yield text
        return
    if text.isascii():  # one byte per character: slice without encoding it all
        for start in range(0, len(text), limit):
            yield text[start:start + limit]
        return
    data = text.encode("utf-8", "surrogatepass")
    start = 0
    while start < len(data):
        end = min(start + limit, len(data))
        while end < len(data) and end > start and (data[end] & 0xC0) == 0x80:  # a continuation byte
            end -= 1
        yield data[start:end].decode("utf-8", "surrogatepass")
        start = end


def emit_stream(cell_id: str, name: str, text: str, timestamp: str | None = None) -> None:
    """One or more ``stdout``/``stderr`` events for `text`, each at most MAX_TEXT bytes."""
    stamp = timestamp or now()
    for piece in chunks(text):
        emit({"type": name, "text": piece, "timestamp": stamp, "id": cell_id})


def emit_error(cell_id: str, name: str, value: str, traceback: str | None = None) -> None:
    """The cell's ``error``; a synthetic one (no traceback given) shows as ``name: value``."""
    text = f"{name}: {value}" if traceback is None else traceback
    emit({"type": "error", "id": cell_id, "name": name, "value": value, "traceback": text})


def death_reason(status: int | None) -> str:
    """How a process ended, from its Popen return code, e.g. ``was killed by SIGKILL (out of memory?)``."""
    if status is None:
        return "stopped responding"
    if status < 0:
        name = signal.Signals(-status).name
        return f"was killed by {name}" + (" (out of memory?)" if status == -signal.SIGKILL else "")
    return f"exited with status {status}"


def diag(message: str) -> None:
    """A diagnostic for whoever reads the driver's stderr (never the caller's output)."""
    print(f"corral driver[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


def ignore_sigint(callback: Callable[[], None] | None = None) -> None:
    """Survive the SIGINT the server sends to the whole process group to interrupt a cell.

    A handler (calling `callback`, if any), not SIG_IGN: a handler is reset by exec, so the runtimes
    and commands we start still receive the interrupt, while an ignored signal would stay ignored.
    """
    signal.signal(signal.SIGINT, lambda _sig, _frame: callback() if callback else None)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Corral code-interpreter driver")
    parser.add_argument("--cwd", default=os.environ.get("HOME", "/"))
    return parser.parse_args(argv)


def start_request_reader(ops: tuple[str, ...] = ("execute",)) -> queue.Queue[dict[str, Any] | None]:
    """Read requests from stdin on a daemon thread, so reading never blocks output.

    The queue yields the requests whose ``op`` is one of ``ops`` (one ``execute`` per cell), in
    order, and ``None`` when stdin closes.
    """
    requests: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def read() -> None:
        for raw in sys.stdin.buffer:
            try:
                request = json.loads(raw)
            except ValueError:
                diag(f"ignoring a line that is not JSON: {raw[:200]!r}")
                continue
            if not isinstance(request, dict) or request.get("op") not in ops:
                diag(f"ignoring an unknown request: {str(request)[:200]}")
                continue
            requests.put(request)
        requests.put(None)

    threading.Thread(target=read, name="stdin", daemon=True).start()
    return requests


def cell_envs(request: dict[str, Any]) -> dict[str, str]:
    envs = request.get("envs") or {}
    return {str(k): str(v) for k, v in envs.items()} if isinstance(envs, dict) else {}
