"""Bash driver: one persistent interactive bash per context, fed cells through its stdin.

Runs inside the sandbox on the template's python3 (stdlib only): ``python3 -u bash_driver.py --cwd DIR``.
The shell is ``bash --noprofile --norc --noediting -i`` without job control or history, so a SIGINT to
the process group aborts the whole running cell (as Ctrl-C at a terminal does) and the shell keeps its
cwd, variables and functions. Each cell is one ``eval`` of an ANSI-C quoted string with stdin from
/dev/null (a syntax error only fails the eval), followed by a line that prints a per-cell random
marker, with the exit status, to stdout and stderr; the driver cuts the streams at the markers.
Two reader threads own the shell's output pipes; the main thread runs cells one at a time.
"""

from __future__ import annotations

import os
import queue
import re
import secrets
import subprocess
import sys
import threading
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the driver dir is not a package in sandboxes

import wire

POLL = 0.5  # seconds between liveness checks of a silent shell
DRAIN = 0.5  # seconds to collect a dead shell's last output
START_TIMEOUT = 30.0
PENDING_MAX = 1 << 20  # characters of output between cells kept for the next cell
ARGV = ["bash", "--noprofile", "--norc", "--noediting", "-i"]
INIT = r"set +m +H +o history; unset HISTFILE MAILCHECK PROMPT_COMMAND; PS1=''; PS2=''; PS0=''"
STARTUP = "\0startup"  # the pseudo cell of the shell's start-up, whose output is noise
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ANSI_C = {ord("\\"): "\\\\", ord("'"): "\\'", ord("\n"): "\\n", 0: ""}
_ANSI_C.update({c: f"\\x{c:02x}" for c in [*range(1, 32), 127] if c != ord("\n")})


def ansi_c(text: str) -> str:
    """`text` as one bash ``$'...'`` word (NUL bytes, which bash strings cannot hold, are dropped)."""
    return "$'" + text.translate(_ANSI_C) + "'"


def cell_script(code: str, token: str, envs: dict[str, str]) -> str:
    """The three lines that run one cell: set envs and the code; eval it; restore envs and print markers.

    The eval is a line of its own, so an interrupt aborts only it and the marker line still runs.
    """
    push, pop = [], []
    for i, (name, value) in enumerate(envs.items()):
        push.append(f"__corral_set{i}=${{{name}+x}}; __corral_old{i}=${{{name}-}}; "
                    f"\\builtin export {name}={ansi_c(value)}")
        pop.append(f'if [[ -n $__corral_set{i} ]]; then \\builtin export {name}="$__corral_old{i}"; '
                   f"else \\builtin unset {name}; fi; \\builtin unset __corral_set{i} __corral_old{i}")
    first = "; ".join([*push, f"__corral_code={ansi_c(code)}"])
    last = "; ".join([
        "__corral_status=$?", "\\builtin unset __corral_code", *pop,
        f"\\builtin printf '\\000%s:%s\\000' {token} \"$__corral_status\"",
        f"\\builtin printf '\\000%s:\\000' {token} >&2",
    ])
    return f'{first}\n\\builtin eval "$__corral_code" </dev/null\n{last}\n'


class Scanner:
    """Finds a marker ``\\0<token>:<payload>\\0`` in a stream of text fed in arbitrary pieces."""

    def __init__(self, token: str) -> None:
        self.opener = f"\x00{token}:"
        self.held = ""

    def feed(self, text: str) -> tuple[str, str | None, str]:
        """(output before the marker, the marker's payload or None if not seen yet, text after it)."""
        text, self.held = self.held + text, ""
        start = text.find(self.opener)
        if start >= 0:
            end = text.find("\x00", start + len(self.opener))
            if end < 0:
                self.held = text[start:]
                return text[:start], None, ""
            return text[:start], text[start + len(self.opener):end], text[end + 1:]
        # keep back a tail that may be the beginning of the marker
        tail = text.rfind("\x00", max(0, len(text) - len(self.opener) + 1))
        if tail >= 0 and self.opener.startswith(text[tail:]):
            self.held = text[tail:]
            return text[:tail], None, ""
        return text, None, ""


class Stream:
    """One output pipe of the shell, read on its own thread."""

    def __init__(self, shell: Shell, name: str, fd: int) -> None:
        self.shell, self.name, self.fd = shell, name, fd
        self.cell: str | None = None  # the cell whose output this is, until its marker
        self.scanner: Scanner | None = None
        threading.Thread(target=self._read, name=name, daemon=True).start()

    def _read(self) -> None:
        import codecs

        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        while data := os.read(self.fd, 65536):
            self.shell.feed(self, decoder.decode(data))
        self.shell.feed(self, decoder.decode(b"", final=True))
        os.close(self.fd)
        self.shell.notices.put(("eof", self.name, None))


class Shell:
    """A bash process, its output streams, and the output kept between cells."""

    def __init__(self, cwd: str) -> None:
        env = {**os.environ, "PS1": "", "PS2": ""}
        self.process = subprocess.Popen(ARGV, cwd=cwd, env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.notices: queue.Queue[tuple[str, str, str | None]] = queue.Queue()
        self.lock = threading.Lock()
        self.pending: list[tuple[str, str]] = []
        self.pending_size = 0
        self.detached = False  # a dead shell's late output (from its orphans) is dropped
        self.eofs = 0  # output pipes seen closed
        assert self.process.stdout is not None and self.process.stderr is not None
        self.streams = [Stream(self, "stdout", os.dup(self.process.stdout.fileno())),
                        Stream(self, "stderr", os.dup(self.process.stderr.fileno()))]
        self.process.stdout.close()
        self.process.stderr.close()

    def feed(self, stream: Stream, text: str) -> None:
        with self.lock:
            if self.detached or not text:
                return
            if stream.cell is None or stream.scanner is None:
                self._keep(stream.name, text)
                return
            out, payload, rest = stream.scanner.feed(text)
            if out and stream.cell != STARTUP:
                wire.emit_stream(stream.cell, stream.name, out)
            if payload is not None:
                stream.cell, stream.scanner = None, None
                self.notices.put(("marker", stream.name, payload))
                if rest:
                    self._keep(stream.name, rest)

    def feed_between(self, name: str, text: str) -> None:
        with self.lock:
            self._keep(name, text)

    def _keep(self, name: str, text: str) -> None:
        if self.pending_size + len(text) > PENDING_MAX:
            wire.diag(f"dropping {len(text)} characters of output produced between cells")
            return
        self.pending.append((name, text))
        self.pending_size += len(text)

    def begin(self, cell_id: str, token: str) -> None:
        """Route output to `cell_id` until its markers, after delivering what came between cells."""
        with self.lock:
            for stream in self.streams:
                stream.cell, stream.scanner = cell_id, Scanner(token)
            if cell_id != STARTUP:
                for name, text in self.pending:
                    wire.emit_stream(cell_id, name, text)
            self.pending, self.pending_size = [], 0

    def send(self, script: str) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(script.encode("utf-8", "surrogatepass"))
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # it died; the wait notices

    def wait_markers(self, timeout: float | None = None) -> str | None:
        """The cell's exit status once both markers arrived; None if the shell died (or the timeout)."""
        seen: dict[str, str | None] = {}
        waited = 0.0
        while len(seen) < 2:
            try:
                kind, name, payload = self.notices.get(timeout=POLL)
            except queue.Empty:
                waited += POLL
                if self.process.poll() is not None or (timeout is not None and waited >= timeout):
                    return None
                continue
            if kind == "eof":
                self.eofs += 1
                return None
            seen[name] = payload
        return seen.get("stdout") or "0"

    def close(self) -> int | None:
        """Kill the shell (if alive) after giving its output a moment to drain; its exit status."""
        if self.process.poll() is None:
            self.process.kill()
        status = self.process.wait()
        while self.eofs < 2:  # pipes a background orphan holds open never end: bounded wait
            try:
                kind, _, _ = self.notices.get(timeout=DRAIN)
            except queue.Empty:
                break
            self.eofs += kind == "eof"
        with self.lock:
            self.detached = True
        if self.process.stdin is not None:
            self.process.stdin.close()
        return status


class Driver:
    """Runs cells one at a time in a shell it replaces when it exits."""

    def __init__(self, cwd: str) -> None:
        self.cwd = cwd
        self.shell: Shell | None = None
        self.interrupted = False
        self.executions = 0

    def on_sigint(self) -> None:
        self.interrupted = True

    def start(self, leftover: list[tuple[str, str]] | None = None) -> bool:
        """Start a shell; `leftover` is output a dead one produced between cells, for the next cell."""
        self.shell = Shell(self.cwd)
        token = secrets.token_hex(8)
        self.shell.begin(STARTUP, token)
        self.shell.send(cell_script(INIT, token, {}))
        if self.shell.wait_markers(START_TIMEOUT) is None:
            self.shell.close()
            self.shell = None
            return False
        for name, text in leftover or []:
            self.shell.feed_between(name, text)
        return True

    def execute(self, request: dict[str, Any]) -> None:
        cell_id = str(request.get("id", ""))
        try:
            self._execute(cell_id, str(request.get("code", "")), wire.cell_envs(request))
        finally:
            wire.emit({"type": "end_of_execution", "id": cell_id})
        if self.shell is None:
            self.start()  # eagerly, so the next cell does not wait; failures are reported then

    def _execute(self, cell_id: str, code: str, envs: dict[str, str]) -> None:
        bad = [name for name in envs if not ENV_NAME.fullmatch(name)]
        if bad:
            wire.emit_error(cell_id, "ValueError", f"not a valid environment variable name: {bad[0]!r}")
            return
        note, leftover = "", None
        if self.shell is not None and self.shell.process.poll() is not None:  # it died between cells
            note = (f"[bash {wire.death_reason(self.shell.close())} after the previous cell; this cell runs in "
                    "a new shell, without the earlier variables, functions and working directory]\n")
            leftover, self.shell = self.shell.pending, None
        if self.shell is None and not self.start(leftover):
            wire.emit_error(cell_id, "KernelDied", "bash could not be started")
            return
        assert self.shell is not None
        token = secrets.token_hex(8)
        self.interrupted = False
        self.shell.begin(cell_id, token)
        if note:
            wire.emit_stream(cell_id, "stderr", note)
        self.executions += 1
        wire.emit({"type": "number_of_executions", "execution_count": self.executions, "id": cell_id})
        self.shell.send(cell_script(code, token, envs))
        status = self.shell.wait_markers()
        if status is None:
            exit_status = self.shell.close()
            self.shell = None
            wire.emit_error(cell_id, "KernelDied", f"bash {wire.death_reason(exit_status)} while running this "
                            "cell; a new shell is started for the next one, so variables, functions and the "
                            "working directory are reset")
        elif self.interrupted:
            wire.emit_error(cell_id, "Interrupted", f"the cell was interrupted (exit status {status})")
        elif status != "0":
            wire.emit_error(cell_id, "BashError", f"exit status {status}")


def main() -> int:
    args = wire.parse_args()
    try:
        os.chdir(args.cwd)
    except OSError as exc:
        wire.diag(f"cannot use {args.cwd} as working directory: {exc}")
        return 2
    driver = Driver(args.cwd)
    wire.ignore_sigint(driver.on_sigint)
    requests = wire.start_request_reader()
    if not driver.start():
        wire.diag("bash could not be started")
        return 1
    wire.emit({"type": "ready"})
    while (request := requests.get()) is not None:
        driver.execute(request)
    if driver.shell is not None:
        driver.shell.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
