"""Commands as another user (or on a terminal) without forking the agent: ``corral-tools exec-as``
(``tools.c``, found by ``tools.find``), started with vfork (``Popen`` with no id change and no
``preexec_fn``), sets the ids, takes the terminal if asked, and execs the command. Without the
program (no compiler on the host, a failed build) the agent forks as before.
"""

from __future__ import annotations

import errno
import os
import select
import subprocess
import sys
import time

from .protocol import AgentError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .users import User

_INT_SIZE = 4
_REPORT_SIZE = 2 * _INT_SIZE  # the program writes two native ints: the failed step (1: entering the cwd) and the errno
START_TIMEOUT = 5.0  # seconds from its start to its command's exec (or its report)


def start(
    tools: str, user: User, cmd: list[str], tty: bool, popen: Callable[..., subprocess.Popen[bytes]], **kwargs: Any,
) -> subprocess.Popen[bytes]:
    """``popen(cmd, **kwargs)`` as ``user`` through ``tools`` (the program's path). Raises OSError if
    the command cannot start (not found, not executable, a cwd the user cannot enter, as the user's
    spawner and E2B's envd enter it), as ``Popen(user=...)`` does, and AgentError if the program
    neither ran it nor said why within ``START_TIMEOUT`` (stopped by a signal from the sandbox between
    its id change and its exec: it is killed)."""
    cwd = kwargs.pop("cwd", None)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        argv = [tools, "exec-as", str(err_w), str(user.uid), str(user.gid), ",".join(str(g) for g in user.groups),
                *(["--tty"] if tty else []), *(["--cwd", cwd] if cwd is not None else []), "--", *cmd]
        process = popen(argv, pass_fds=(err_w,), **kwargs)
    except BaseException:
        os.close(err_r)
        raise
    finally:
        os.close(err_w)
    try:
        report = _report(err_r)
    finally:
        os.close(err_r)
    if report == b"":
        return process  # the command runs: the pipe closed on its exec
    if report is None:
        process.kill()
        process.wait()
        raise AgentError("internal", f"could not start {cmd[0]!r}: it did not start within {START_TIMEOUT:g} s")
    process.wait()  # it exits 127 after reporting
    step, code = (int.from_bytes(report[i:i + _INT_SIZE], sys.byteorder) for i in (0, _INT_SIZE))
    code = code if len(report) == _REPORT_SIZE and 0 < code < 4096 else errno.EIO  # a short or odd report
    raise OSError(code, os.strerror(code), cwd if step == 1 and cwd is not None else cmd[0])


def _report(fd: int) -> bytes | None:
    """What the program wrote before the pipe closed (b"": nothing, the command runs), or None if
    the pipe stayed open for START_TIMEOUT."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + START_TIMEOUT
    data = b""
    while len(data) < _REPORT_SIZE:
        if not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
            return None
        chunk = os.read(fd, _REPORT_SIZE - len(data))
        if not chunk:
            break
        data += chunk
    return data
