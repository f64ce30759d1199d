"""The exec-as helper: how the agent starts a command as another user (or on a terminal) without
forking itself.

``exec_as.c`` (this package) is compiled static by the server into this package's ``__pycache__``
under a name made from the source's checksum (``corral.runtime.exec_helper``), so an agent only ever
runs the helper built from the source it ships with. The agent starts it with vfork (``Popen`` with
no id change and no ``preexec_fn``); it sets the ids, takes the terminal if asked, and execs the
command. Without the helper (no compiler on the host, a failed build) the agent forks as before.
"""

from __future__ import annotations

import binascii
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

SOURCE = "exec_as.c"
_ERRNO_SIZE = 4  # the helper writes one native int
START_TIMEOUT = 5.0  # seconds from the helper's start to its command's exec (or its report)


def file_name(source: bytes) -> str:
    """The helper's file name in ``__pycache__`` for this source (a version stamp, not a security
    check: only the host writes there; CRC-32 because the agent already has ``binascii``, where
    ``hashlib`` would load OpenSSL into every agent)."""
    return f"exec-as-{binascii.crc32(source):08x}"


def find(package_dir: str) -> str | None:
    """The built helper for this package's source, if it is there and executable."""
    try:
        with open(os.path.join(package_dir, SOURCE), "rb") as f:
            name = file_name(f.read())
    except OSError:
        return None
    path = os.path.join(package_dir, "__pycache__", name)
    return path if os.access(path, os.X_OK) else None


def start(
    helper: str, user: User, cmd: list[str], tty: bool, popen: Callable[..., subprocess.Popen[bytes]], **kwargs: Any,
) -> subprocess.Popen[bytes]:
    """``popen(cmd, **kwargs)`` as ``user`` through ``helper``. Raises OSError if the command cannot
    start (not found, not executable, a bad cwd), as ``Popen(user=...)`` does, and AgentError if the
    helper neither ran it nor said why within ``START_TIMEOUT`` (stopped by a signal from the
    sandbox between its id change and its exec: it is killed)."""
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        argv = [helper, str(err_w), str(user.uid), str(user.gid), ",".join(str(g) for g in user.groups),
                *(["--tty"] if tty else []), "--", *cmd]
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
    process.wait()  # the helper exits 127 after reporting
    code = int.from_bytes(report, sys.byteorder) if len(report) == _ERRNO_SIZE else 0
    code = code if 0 < code < 4096 else errno.EIO  # a short or odd report
    raise OSError(code, os.strerror(code), cmd[0])


def _report(fd: int) -> bytes | None:
    """What the helper wrote before the pipe closed (b"": nothing, the command runs), or None if
    the pipe stayed open for START_TIMEOUT."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + START_TIMEOUT
    data = b""
    while len(data) < _ERRNO_SIZE:
        if not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
            return None
        chunk = os.read(fd, _ERRNO_SIZE - len(data))
        if not chunk:
            break
        data += chunk
    return data
