"""The host side of the agent zygote waits on fds with poll(2): a server at density holds far more
than select(2)'s FD_SETSIZE (1024) fds, and select refused them ("filedescriptor out of range",
found by the density benchmark at ~330 sandboxes)."""

from __future__ import annotations

import io
import os
import resource
from collections.abc import Iterator

import pytest

from corral.runtime.zygote import ZygoteError, _exited, _wait_ready

HIGH_FD = 1500


@pytest.fixture(autouse=True)
def fd_limit() -> Iterator[None]:
    """Room for fd 1500 (raised if needed: tests run as root)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft <= HIGH_FD:
        resource.setrlimit(resource.RLIMIT_NOFILE, (HIGH_FD + 1, max(hard, HIGH_FD + 1)))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _high(fd: int) -> int:
    """``fd`` moved to HIGH_FD."""
    os.dup2(fd, HIGH_FD)
    os.close(fd)
    return HIGH_FD


def test_pid_1_readiness_is_seen_on_a_high_fd() -> None:
    r, w = os.pipe()
    os.write(w, b".")
    os.close(w)
    with io.FileIO(_high(r), "rb") as ready:
        _wait_ready(ready, 5)  # returns: the byte is there


def test_pid_1_gone_before_ready_is_an_error_on_a_high_fd() -> None:
    r, w = os.pipe()
    os.close(w)  # its only writer gone, nothing written
    with io.FileIO(_high(r), "rb") as ready, pytest.raises(ZygoteError, match="exited before it was ready"):
        _wait_ready(ready, 5)


def test_a_live_process_is_not_reported_exited_on_a_high_fd() -> None:
    pidfd = _high(os.pidfd_open(os.getpid()))
    try:
        assert _exited(pidfd) is False
    finally:
        os.close(pidfd)
