"""Python driver: one IPython kernel per context, its Jupyter messages mapped to the interpreter wire.

Runs inside the sandbox on the template's python3 with Debian's ipykernel and jupyter_client:
``python3 -u py_driver.py --cwd DIR``. The kernel is our own child in our process group (not a new
session, as jupyter_client's KernelManager would make it), so the SIGINT the server sends to the group
interrupts the running cell while this driver ignores it. Kernel sockets are Unix sockets in a private
temp dir. Single-threaded apart from the stdin reader: only the main thread touches the kernel client.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the driver dir is not a package in sandboxes

import wire

START_TIMEOUT = 60.0
POLL = 0.5  # seconds between liveness checks of a silent kernel
FALLBACK_ARGV = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"

# Jupyter MIME type -> field of a `result` event (E2B's mapping); anything else goes into `extra`
MIME_FIELDS = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
}

# per-cell envs: set before the cell and restored after it, by silent executions in the kernel
PUSH_ENVS = (
    "(lambda os, e: setattr(os, '_corral_saved_envs', {{k: os.environ.get(k) for k in e}}) or os.environ.update(e))"
    "(__import__('os'), {envs!r})"
)
# the context's own envs, changed while it runs (a pooled sandbox's kernel given its claimer's): kept
SET_ENVS = "__import__('os').environ.update({envs!r})"
POP_ENVS = (
    "(lambda os: [os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)"
    " for k, v in os.__dict__.pop('_corral_saved_envs', {}).items()])(__import__('os'))"
)

# ipykernel buffers a cell's prints for 0.2 s and then sends them as one message: a tight loop can pile
# up hundreds of MB in the kernel. Flushing once the buffer holds 1 MiB hands output over in pieces.
BOUND_OUTPUT = """
def _corral_bound(stream, limit=1 << 20):
    write = stream.write
    def bounded_write(text):
        written = write(text)
        try:
            full = stream._buffer.tell() > limit
        except (AttributeError, ValueError):  # no such buffer, or just flushed and closed
            full = False
        if full:
            stream.flush()
        return written
    stream.write = bounded_write
import sys as _corral_sys
_corral_bound(_corral_sys.stdout)
_corral_bound(_corral_sys.stderr)
del _corral_bound, _corral_sys
"""


class KernelGone(Exception):
    """The kernel process exited (or never became ready)."""


def result_event(cell_id: str, data: dict[str, Any], is_main: bool) -> dict[str, Any]:
    """A ``result`` event from a Jupyter MIME bundle, mapped like E2B's code interpreter."""
    event: dict[str, Any] = {"type": "result", "id": cell_id, "is_main_result": is_main}
    extra = {}
    for mime, value in data.items():
        field = MIME_FIELDS.get(mime)
        if field is None:
            extra[mime] = value
        elif value is not None:
            event[field] = value
    text = event.get("text")
    if isinstance(text, str) and len(text) >= 2 and text[0] == text[-1] == "'":  # a repr'd str shows bare
        event["text"] = text[1:-1]
    if extra:
        event["extra"] = extra
    return event


def kernel_argv() -> list[str]:
    """The python3 kernelspec's argv, or ``python3 -m ipykernel_launcher`` if there is none.

    Reads kernel.json itself: jupyter_client's KernelSpecManager costs ~30 MiB of memory per context.
    """
    from jupyter_core.paths import jupyter_path

    for base in jupyter_path("kernels"):
        try:
            with open(os.path.join(base, "python3", "kernel.json")) as f:
                argv = json.load(f)["argv"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(argv, list) and argv:
            return [str(arg) for arg in argv]
    return list(FALLBACK_ARGV)


def _stamp(msg: dict[str, Any]) -> str | None:
    date = msg.get("header", {}).get("date")
    if isinstance(date, datetime):
        return date.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return None


class Kernel:
    """An ipykernel child process and a blocking client connected to it over Unix sockets."""

    def __init__(self, cwd: str) -> None:
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.client: Any = None
        self.tmp: str | None = None
        self._libc = ctypes.CDLL(None, use_errno=True)

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        from jupyter_client.blocking import BlockingKernelClient
        from jupyter_client.connect import write_connection_file

        self.tmp = tempfile.mkdtemp(prefix="corral-kernel-")
        connection_file = os.path.join(self.tmp, "kernel.json")
        write_connection_file(connection_file, transport="ipc", ip=os.path.join(self.tmp, "k"))
        argv = [arg.format(connection_file=connection_file) for arg in kernel_argv()]
        argv.append("--InteractiveShell.colors=NoColor")  # tracebacks without ANSI escapes
        env = {**os.environ, "JPY_PARENT_PID": str(os.getpid())}
        env.setdefault("MPLBACKEND", INLINE_BACKEND)
        self.process = subprocess.Popen(
            argv, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=sys.stderr.fileno(), stderr=sys.stderr.fileno(),  # fd-level echoes are diagnostics
            preexec_fn=self._die_with_driver,
        )
        self.client = BlockingKernelClient(connection_file=connection_file)
        self.client.load_connection_file()
        self.client.start_channels()
        self._wait_ready()
        self.silent(BOUND_OUTPUT)

    def _die_with_driver(self) -> None:  # in the child, between fork and exec
        self._libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: a killed driver takes its kernel along

    def _wait_ready(self) -> None:
        """Until the kernel answers a kernel_info request on both shell and iopub (no slow joiner)."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            msg_id = self.client.kernel_info()
            retry_at = time.monotonic() + 2.0
            while time.monotonic() < retry_at:
                self._check_alive()
                try:
                    msg = self.client.get_iopub_msg(timeout=0.2)
                except queue.Empty:
                    continue
                if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status":
                    self._drain_shell()
                    return
        raise KernelGone(f"the kernel did not become ready within {START_TIMEOUT:.0f}s")

    def _drain_shell(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self.client.get_shell_msg(timeout=0.05)

    def _check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise KernelGone(wire.death_reason(self.process.returncode if self.process else None))

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.stop_channels()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.process, self.client, self.tmp = None, None, None

    # -- execution --------------------------------------------------------------------------------

    def silent(self, code: str) -> None:
        """Run bookkeeping code without output, history or an execution count; wait for it."""
        msg_id = self.client.execute(code, silent=True, store_history=False, allow_stdin=False, stop_on_error=False)
        self._reply(msg_id, timeout=None)

    def _reply(self, msg_id: str, timeout: float | None) -> dict[str, Any] | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            try:
                msg = self.client.get_shell_msg(timeout=POLL)
            except queue.Empty:
                self._check_alive()
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                return dict(msg["content"])
        return None

    def run(self, cell_id: str, code: str) -> None:
        """Execute one cell, emitting its events (not ``end_of_execution``); KernelGone if it dies."""
        # stop_on_error=False: after a failing cell ipykernel would abort every execute request that
        # reaches it before its loop turns again ("aborted"), and the next cell, sent right after,
        # could be one of them on a busy host. Cells come one at a time here: there is no queue to abort.
        msg_id = self.client.execute(code, silent=False, store_history=True, allow_stdin=False, stop_on_error=False)
        while True:
            try:
                msg = self.client.get_iopub_msg(timeout=POLL)
            except queue.Empty:
                self._check_alive()
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":  # any output while the cell runs is the cell's, also from threads
                name = "stderr" if content.get("name") == "stderr" else "stdout"
                wire.emit_stream(cell_id, name, content.get("text", ""), _stamp(msg))
            elif msg["parent_header"].get("msg_id") != msg_id:
                continue
            elif kind == "execute_input":
                wire.emit({"type": "number_of_executions", "execution_count": content.get("execution_count"),
                           "id": cell_id})
            elif kind in ("execute_result", "display_data"):
                wire.emit(result_event(cell_id, dict(content.get("data", {})), kind == "execute_result"))
            elif kind == "error":
                wire.emit_error(cell_id, content.get("ename", "Error"), content.get("evalue", ""),
                                "\n".join(content.get("traceback", [])))
            elif kind == "status" and content.get("execution_state") == "idle":
                break
        reply = self._reply(msg_id, timeout=5.0)
        if reply is not None and reply.get("status") == "aborted":
            wire.emit_error(cell_id, "ExecutionAborted", "the kernel aborted this execution")

    def drain_output(self, cell_id: str) -> None:
        """Deliver output produced between cells (background threads) with this cell."""
        with contextlib.suppress(queue.Empty):
            while True:
                msg = self.client.get_iopub_msg(timeout=0)
                if msg["msg_type"] == "stream":
                    name = "stderr" if msg["content"].get("name") == "stderr" else "stdout"
                    wire.emit_stream(cell_id, name, msg["content"].get("text", ""), _stamp(msg))


class Driver:
    """Runs cells one at a time on a kernel it restarts when it dies."""

    def __init__(self, cwd: str) -> None:
        self.kernel = Kernel(cwd)

    def restart(self) -> str | None:
        """(Re)start the kernel; the reason it could not, or None."""
        self.kernel.stop()
        try:
            self.kernel.start()
        except (KernelGone, OSError) as exc:
            self.kernel.stop()
            return str(exc)
        return None

    def set_envs(self, envs: dict[str, str]) -> None:
        """Add ``envs`` to the environment of this driver and of its kernel, for good (no output)."""
        os.environ.update(envs)
        if self.kernel.alive:
            with contextlib.suppress(KernelGone):  # a dead kernel is restarted with them by the next cell
                self.kernel.silent(SET_ENVS.format(envs=envs))

    def execute(self, request: dict[str, Any]) -> None:
        cell_id = str(request.get("id", ""))
        code = str(request.get("code", ""))
        envs = wire.cell_envs(request)
        try:
            if not self.kernel.alive:
                died = self.kernel.process is not None  # between cells, e.g. killed for memory
                reason = wire.death_reason(self.kernel.process.returncode) if self.kernel.process else ""
                failure = self.restart()
                if failure is not None:
                    wire.emit_error(cell_id, "KernelDied", f"the Python kernel could not be started: {failure}")
                    return
                if died:
                    wire.emit_stream(cell_id, "stderr", f"[the Python kernel {reason} after the previous cell; "
                                     "this cell runs in a new kernel, without the earlier state]\n")
            self.kernel.drain_output(cell_id)
            if envs:
                self.kernel.silent(PUSH_ENVS.format(envs=envs))
            self.kernel.run(cell_id, code)
            if envs:
                self.kernel.silent(POP_ENVS)
        except KernelGone as exc:
            with contextlib.suppress(KernelGone, Exception):
                self.kernel.drain_output(cell_id)
            wire.emit_error(cell_id, "KernelDied", f"the Python kernel {exc} while running this cell; a new kernel "
                            "is started for the next one, so all variables, imports and state are lost")
            self.kernel.stop()
        finally:
            wire.emit({"type": "end_of_execution", "id": cell_id})
        if not self.kernel.alive:
            self.restart()  # eagerly, so the next cell does not wait; failures are reported then


def main() -> int:
    args = wire.parse_args()
    wire.ignore_sigint()
    try:
        os.chdir(args.cwd)
    except OSError as exc:
        wire.diag(f"cannot use {args.cwd} as working directory: {exc}")
        return 2
    requests = wire.start_request_reader(ops=("execute", "set_envs"))
    driver = Driver(args.cwd)
    failure = driver.restart()
    if failure is not None:
        wire.diag(f"the Python kernel could not be started: {failure}")
        return 1
    wire.emit({"type": "ready"})
    try:
        while (request := requests.get()) is not None:
            if request.get("op") == "set_envs":
                driver.set_envs(wire.cell_envs(request))
            else:
                driver.execute(request)
    finally:
        driver.kernel.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
