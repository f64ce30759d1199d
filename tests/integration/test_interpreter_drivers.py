"""The in-sandbox interpreter drivers (docs/interpreter-protocol.md), driven over the real commands API.

Each language gets one code-interpreter sandbox and one driver process for the module; a cell is a JSON
line on the driver's stdin and its events are the JSON lines on its stdout (reassembled from the
command's stdout events, which may split or merge them). Interrupts are SIGINT to the process group.
"""

from __future__ import annotations

import base64
import json
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from conftest import Server, run_command

DRIVERS = "/.corral/lib/corral_interp"
PYTHON = ["/usr/bin/python3", "-u", f"{DRIVERS}/py_driver.py", "--cwd", "/home/user"]
NODE = ["/usr/bin/node", f"{DRIVERS}/js_driver.js", "--cwd", "/home/user"]
BASH = ["/usr/bin/python3", "-u", f"{DRIVERS}/bash_driver.py", "--cwd", "/home/user"]
MAX_TEXT = 64 * 1024


@dataclass
class Cell:
    """The events of one cell, with the monotonic time each arrived."""

    events: list[dict[str, Any]] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    @property
    def stdout(self) -> str:
        return "".join(e["text"] for e in self.of("stdout"))

    @property
    def stderr(self) -> str:
        return "".join(e["text"] for e in self.of("stderr"))

    @property
    def error(self) -> dict[str, Any] | None:
        errors = self.of("error")
        assert len(errors) <= 1, errors
        return errors[0] if errors else None

    @property
    def main(self) -> dict[str, Any] | None:
        return next((e for e in self.of("result") if e["is_main_result"]), None)

    @property
    def text(self) -> str | None:
        return self.main["text"] if self.main else None


class Driver:
    """A driver started through ``POST /commands`` with stdin open; runs cells one at a time."""

    def __init__(self, client: httpx.Client, sandbox_id: str, argv: list[str]) -> None:
        self.client, self.sandbox_id = client, sandbox_id
        self.base = f"/v1/sandboxes/{sandbox_id}/commands"
        self._stream = client.stream("POST", self.base, json={"cmd": shlex.join(argv), "stdin": True, "timeout": 0})
        response = self._stream.__enter__()
        assert response.status_code == 200, response.read()
        self._raw = response.iter_lines()
        start = json.loads(next(self._raw))
        assert start["type"] == "start", start
        self.pid = int(start["pid"])
        self.exit: dict[str, Any] | None = None
        self.diagnostics = ""  # the driver's stderr
        self._events = self._lines()
        self._count = 0
        assert next(self._events, self.exit) == {"type": "ready"}, self.diagnostics

    def _lines(self) -> Iterator[dict[str, Any]]:
        buffer = ""
        for raw in self._raw:
            if not raw:
                continue
            event = json.loads(raw)
            if event["type"] == "exit":
                self.exit = event
                return
            if event["type"] == "stderr":
                self.diagnostics += str(event["data"])
                continue
            buffer += str(event["data"])
            while "\n" in buffer:
                line, buffer = buffer.split("\n", 1)
                yield json.loads(line)  # every stdout line of a driver is one JSON object

    def next_event(self) -> dict[str, Any]:
        event = next(self._events, None)
        assert event is not None, f"the driver exited: {self.exit}\n{self.diagnostics[-3000:]}"
        return event

    def send(self, code: str, envs: dict[str, str] | None = None, language: str | None = None) -> str:
        self._count += 1
        cell_id = f"cell-{self._count}"
        request = {"op": "execute", "id": cell_id, "code": code, "envs": envs or {}, "language": language}
        r = self.client.post(f"{self.base}/{self.pid}/stdin", json={"data": json.dumps(request) + "\n"})
        assert r.status_code == 204, r.text
        return cell_id

    def collect(self, cell_id: str, until: str | None = None) -> Cell:
        """Events of the cell up to `end_of_execution` (or up to the first stdout containing `until`)."""
        cell = Cell()
        while True:
            event = self.next_event()
            assert event.get("id") == cell_id, event
            cell.events.append(event)
            cell.arrivals.append(time.monotonic())
            if event["type"] == "end_of_execution":
                return cell
            if until is not None and event["type"] == "stdout" and until in event["text"]:
                return cell

    def run(self, code: str, **kwargs: Any) -> Cell:
        cell = self.collect(self.send(code, **kwargs))
        assert cell.events[-1]["type"] == "end_of_execution"
        assert cell.of("end_of_execution") == [cell.events[-1]]
        for event in cell.of("stdout") + cell.of("stderr"):
            assert len(event["text"].encode()) <= MAX_TEXT and event["timestamp"].endswith("Z")
        return cell

    def interrupted(self, code: str, started: str, **kwargs: Any) -> Cell:
        """Run `code`, send SIGINT to the driver's process group once it printed `started`."""
        cell_id = self.send(code, **kwargs)
        first = self.collect(cell_id, until=started)
        assert first.events[-1]["type"] == "stdout", first.events
        r = self.client.post(f"{self.base}/{self.pid}/signal", json={"signal": "SIGINT"})
        assert r.status_code == 204, r.text
        rest = self.collect(cell_id)
        return Cell(first.events + rest.events, first.arrivals + rest.arrivals)

    def close(self) -> int | None:
        """Close stdin: the driver stops its runtime and exits; its exit code."""
        self.client.post(f"{self.base}/{self.pid}/stdin", json={"eof": True})
        for _ in self._events:
            pass
        self._stream.__exit__(None, None, None)
        return int(self.exit["exit_code"]) if self.exit else None


def kill_between_cells(driver: Driver, pid_code: str, state_code: str, lost_text: str | None,
                       reaped: bool = False) -> None:
    """SIGKILL the runtime while no cell runs: the next cell runs in a fresh one and says so on stderr.

    SIGKILL lands asynchronously, so first wait until the runtime is dead: a zombie with no threads
    left, until its driver reaps it when asked (Python, bash), or gone (node reaps at once, then knows).
    """
    shown = driver.run(pid_code)
    pid = int((shown.text or shown.stdout).strip())
    dead = f"[ ! -e /proc/{pid} ]"
    if not reaped:
        dead += (f" || {{ [ \"$(sed 's/.*) //' /proc/{pid}/stat | cut -c1)\" = Z ] && "
                 f"set -- /proc/{pid}/task/* && [ $# = 1 ]; }}")  # a zombie with one thread left
    killed = run_command(driver.client, driver.sandbox_id, f"kill -9 {pid}; until {dead}; do sleep 0.01; done")
    assert killed.exit_code == 0, killed.stderr
    cell = driver.run(state_code)
    assert cell.error is None and "after the previous cell" in cell.stderr and "SIGKILL" in cell.stderr
    assert cell.text == lost_text if lost_text is not None else cell.stdout == "\n"


def start_driver(server: Server, argv: list[str]) -> Iterator[Driver]:
    with server.client(timeout=120) as client:
        r = client.post("/v1/sandboxes", json={"template": "code-interpreter", "timeout": 300})
        assert r.status_code == 201, r.text
        sandbox_id = r.json()["id"]
        try:
            driver = Driver(client, sandbox_id, argv)
            yield driver
            assert driver.close() == 0
        finally:
            client.delete(f"/v1/sandboxes/{sandbox_id}")


@pytest.fixture(scope="module")
def py(server: Server) -> Iterator[Driver]:
    yield from start_driver(server, PYTHON)


@pytest.fixture(scope="module")
def js(server: Server) -> Iterator[Driver]:
    yield from start_driver(server, NODE)


@pytest.fixture(scope="module")
def sh(server: Server) -> Iterator[Driver]:
    yield from start_driver(server, BASH)


# -- python -------------------------------------------------------------------------------------------


def test_python_state_print_and_main_result(py: Driver) -> None:
    assert py.run("x = 41").events[-1]["type"] == "end_of_execution"
    cell = py.run("print('hello'); x + 1")
    assert cell.stdout == "hello\n"
    assert cell.text == "42" and cell.error is None
    count = cell.of("number_of_executions")[0]["execution_count"]
    assert py.run("'a string'").text == "a string"  # one pair of quotes stripped, as E2B does
    assert py.run("pass").of("number_of_executions")[0]["execution_count"] == count + 2


def test_python_rich_results(py: Driver) -> None:
    cell = py.run("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': [3, 4]})")
    assert "<table" in cell.main["html"] and "a  b" in cell.text  # type: ignore[index]

    cell = py.run("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()")
    (figure,) = cell.of("result")
    assert figure["is_main_result"] is False
    assert base64.b64decode(figure["png"]).startswith(b"\x89PNG")
    assert figure["text"].startswith("<Figure")

    cell = py.run("class Bold:\n    def _repr_html_(self):\n        return '<b>hi</b>'\n"
                  "display(Bold())\n"
                  "from IPython.display import JSON, Markdown\ndisplay(Markdown('**m**'))\nJSON({'k': 1})")
    shown, markdown, main = cell.of("result")
    assert (shown["html"], shown["is_main_result"]) == ("<b>hi</b>", False)
    assert markdown["markdown"] == "**m**"
    assert main["json"] == {"k": 1} and main["is_main_result"] is True


def test_python_errors_are_data(py: Driver) -> None:
    error = py.run("1/0").error
    assert error is not None and (error["name"], error["value"]) == ("ZeroDivisionError", "division by zero")
    assert "----> 1 1/0" in error["traceback"] and "\x1b[" not in error["traceback"]

    error = py.run("def f(:\n    pass").error
    assert error is not None and error["name"] == "SyntaxError"
    assert py.run("21 * 2").text == "42"  # the kernel survived both


def test_python_a_cell_right_after_a_failing_one_runs(py: Driver) -> None:
    """ipykernel aborts the requests that reach it within `stop_on_error_timeout` of an error when
    they ask for it (0 s by default: until its loop turns, which a busy host delays); the window is
    widened here so the next cell surely arrives inside it."""
    py.run("get_ipython().kernel.stop_on_error_timeout = 3.0")
    try:
        assert py.run("1/0").error is not None
        cell = py.run("'ran'")
        assert cell.error is None and cell.text == "ran", cell.events
    finally:
        py.run("get_ipython().kernel.stop_on_error_timeout = 0.0")


def test_python_magics_and_shell(py: Driver) -> None:
    assert "hi" in py.run("!echo hi").stdout
    assert py.run("%pwd").text == "/home/user"
    assert py.run("import os\nos.getcwd()").text == "/home/user"


def test_python_interrupt_keeps_state(py: Driver) -> None:
    py.run("kept = 'yes'")
    cell = py.interrupted("print('looping', flush=True)\nwhile True:\n    pass", started="looping")
    assert cell.error is not None and cell.error["name"] == "KeyboardInterrupt"
    assert py.run("kept").text == "yes"


def test_python_cell_envs_are_restored(py: Driver) -> None:
    code = "import os\n(os.environ.get('CELL_ONLY'), os.environ['HOME'])"
    assert py.run(code, envs={"CELL_ONLY": "1", "HOME": "/elsewhere"}).text == "('1', '/elsewhere')"
    assert py.run(code.replace("os.environ['HOME']", "os.environ.get('HOME')")).text == "(None, '/home/user')"
    # also after a failing cell
    assert py.run("1/0", envs={"CELL_ONLY": "2"}).error is not None
    assert py.run("import os\nos.environ.get('CELL_ONLY')").text is None


def test_python_large_output_is_chunked(py: Driver) -> None:
    cell = py.run("import sys\nfor _ in range(4):\n    sys.stdout.write('x' * 5_000_000)")
    assert len(cell.stdout) == 20_000_000 and set(cell.stdout) == {"x"}
    assert len(cell.of("stdout")) >= 20_000_000 // MAX_TEXT  # run() checked each is at most 64 KiB


def test_python_kernel_death_is_reported_and_recovered(py: Driver) -> None:
    py.run("before = 1")
    error = py.run("import os\nos._exit(1)").error
    assert error is not None and error["name"] == "KernelDied" and "lost" in error["value"]
    cell = py.run("print('alive'); 'before' in globals()")
    assert cell.stdout == "alive\n" and cell.text == "False"


def test_python_kernel_killed_between_cells(py: Driver) -> None:
    py.run("lost = 1")
    kill_between_cells(py, "import os\nos.getpid()", "'lost' in globals()", "False")


# -- javascript / typescript --------------------------------------------------------------------------


def test_js_state_and_results(js: Driver) -> None:
    js.run("let a = [1, 2, 3]")
    assert js.run("a.map(x => x * 2)").text == "[ 2, 4, 6 ]"
    # top-level let/const/class/function persist and may be declared again, as in a REPL
    js.run("let a = 5; const b = 'str'; class K { hi() { return 'k' } }; function f(n) { return n + 1 }")
    assert js.run("[a, b, new K().hi(), f(1)]").text == "[ 5, 'str', 'k', 2 ]"
    assert js.run("'plain'").text == "plain"
    assert js.run("undefined").of("result") == []
    assert js.run("require('path').join('x', 'y')").text == "x/y"


def test_js_top_level_await(js: Driver) -> None:
    cell = js.run("const r = await new Promise(res => setTimeout(() => res(40), 50))\n"
                  "const {p, q: [z]} = {p: 1, q: [1]}")
    assert cell.error is None and cell.of("result") == []
    assert js.run("await Promise.resolve(r + p + z)").text == "42"


def test_js_console_output_streams_while_the_cell_runs(js: Driver) -> None:
    sent = time.monotonic()
    cell = js.run("console.log('first'); console.error('oops');\n"
                  "await new Promise(res => setTimeout(res, 500)); console.log('second')")
    assert (cell.stdout, cell.stderr) == ("first\nsecond\n", "oops\n")
    first, second = cell.of("stdout")
    end = cell.arrivals[-1]
    assert end - cell.arrivals[cell.events.index(first)] > 0.4  # arrived long before the cell ended
    # each piece is stamped when it was written: half a second apart, both within the cell's run
    gap = time_of(second["timestamp"]) - time_of(first["timestamp"])
    assert 0.4 < gap < end - sent + 0.05


def time_of(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_js_errors(js: Driver) -> None:
    error = js.run("function boom() { throw new TypeError('bad thing') }\nboom()").error
    assert error is not None and (error["name"], error["value"]) == ("TypeError", "bad thing")
    assert "boom" in error["traceback"]
    error = js.run("let broken = ;").error
    assert error is not None and error["name"] == "SyntaxError"
    js.run("Promise.reject(new Error('nobody awaits me'))")  # an unhandled rejection does not kill it
    assert js.run("1 + 1").text == "2"


def test_js_interrupt_keeps_state(js: Driver) -> None:
    js.run("let kept = 'yes'")
    cell = js.interrupted("console.log('looping'); while (true) {}", started="looping")
    assert cell.error is not None and cell.error["name"] == "Interrupted"
    cell = js.interrupted("console.log('waiting'); await new Promise(() => {})", started="waiting")
    assert cell.error is not None and cell.error["name"] == "Interrupted"
    assert js.run("kept").text == "yes"


def test_js_large_output_is_chunked(js: Driver) -> None:
    cell = js.run("const mib = 'é'.repeat(1 << 19); for (let i = 0; i < 20; i++) console.log(mib)")
    assert cell.stdout == ("é" * (1 << 19) + "\n") * 20  # run() checked each event is at most 64 KiB


def test_typescript_cells(js: Driver) -> None:
    assert js.run("const n: number = 2; n * 21", language="typescript").text == "42"
    code = ("interface P { x: number }\ntype T = P | null\nconst pt: T = { x: 7 }\n"
            "function id<V>(v: V): V { return v }\nid<P>(pt!).x")
    assert js.run(code, language="typescript").text == "7"
    assert js.run("n + pt.x").text == "9"  # shared with the JavaScript cells of the context


def test_js_runtime_exit_is_reported_and_recovered(js: Driver) -> None:
    js.run("let before = 1")
    error = js.run("process.exit(3)").error
    assert error is not None and error["name"] == "KernelDied" and "exited with code 3" in error["value"]
    assert js.run("typeof before").text == "undefined"


def test_js_runtime_killed_between_cells(js: Driver) -> None:
    js.run("let lost = 1")
    kill_between_cells(js, "process.pid", "typeof lost", "undefined", reaped=True)


# -- bash ---------------------------------------------------------------------------------------------


def test_bash_state(sh: Driver) -> None:
    sh.run("cd /tmp && X=5")
    assert sh.run("echo $X $PWD").stdout == "5 /tmp\n"
    sh.run("greet() { echo \"hello $1\"; }")
    assert sh.run("greet you; printf 'no newline'").stdout == "hello you\nno newline"
    cell = sh.run("echo out; echo err >&2")
    assert (cell.stdout, cell.stderr, cell.error) == ("out\n", "err\n", None)


def test_bash_errors(sh: Driver) -> None:
    error = sh.run("false").error
    assert error is not None and (error["name"], error["value"]) == ("BashError", "exit status 1")
    cell = sh.run("if then")
    assert cell.error is not None and "syntax error" in cell.stderr
    assert sh.run("echo still here").stdout == "still here\n"


def test_bash_interrupt(sh: Driver) -> None:
    sh.run("KEPT=yes")
    # "started" comes from the process the SIGINT must reach (a signal that lands while bash forks
    # the next command is only seen by bash once that command returns, as at a terminal)
    cell = sh.interrupted("for i in 1 2 3; do sh -c 'echo started; exec sleep 100'; done; echo not reached",
                          started="started")
    assert cell.error is not None and cell.error["name"] == "Interrupted"
    assert "not reached" not in cell.stdout
    assert sh.run("echo $KEPT").stdout == "yes\n"


def test_bash_streams_100_mb_in_chunks(sh: Driver) -> None:
    cell = sh.run("head -c 100000000 /dev/zero | tr '\\0' x; printf 'é%.0s' {1..70000}")
    texts = [e["text"] for e in cell.of("stdout")]
    assert sum(map(len, texts)) == 100_000_000 + 70_000
    assert "".join(texts)[-70_001:] == "x" + "é" * 70_000  # a character is never split between events


def test_bash_cell_envs_are_restored(sh: Driver) -> None:
    value = "it's \"quoted\" $dollar \\ back"
    assert sh.run('echo "$ONLY"', envs={"ONLY": value}).stdout == value + "\n"
    assert sh.run('echo "${ONLY-unset}"').stdout == "unset\n"


def test_bash_killed_between_cells(sh: Driver) -> None:
    sh.run("LOST=1")
    kill_between_cells(sh, "echo $$", 'echo "$LOST"', None)


# -- pure helpers of the drivers (no sandbox) ----------------------------------------------------------


def test_marker_scanner_finds_markers_split_anywhere() -> None:
    from corral.interpreter.bash_driver import Scanner

    stream = "out\x00put\x00tok:7\x00after"
    for cut in range(len(stream) + 1):
        scanner = Scanner("tok")
        before, payload, rest = scanner.feed(stream[:cut])
        if payload is None:  # not complete yet: the rest of the stream completes it
            more, payload, rest = scanner.feed(stream[cut:])
            before += more
        else:
            rest += stream[cut:]
        assert (before, payload, rest) == ("out\x00put", "7", "after"), cut


def test_text_chunks_respect_the_byte_limit() -> None:
    from corral.interpreter.wire import chunks

    for text in ["x" * 200_000, "aé€😀" * 40_000, "short"]:
        pieces = list(chunks(text))
        assert "".join(pieces) == text and all(len(p.encode()) <= MAX_TEXT for p in pieces)


def test_bash_quoting_round_trips() -> None:
    import subprocess

    from corral.interpreter.bash_driver import ansi_c

    text = "it's \"q\" $HOME `x` \\ \n\t\x01 é !!"
    out = subprocess.run(["bash", "--norc", "-c", f"printf %s {ansi_c(text)}"], capture_output=True, text=True)
    assert out.stdout == text
