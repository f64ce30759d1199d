"""File operations run as the requesting user: per-thread filesystem credentials.

The agent is the sandbox's root (uid 0 with a few capabilities); a file operation on behalf of a user
must get exactly that user's permissions, not the agent's. Linux keeps credentials per thread, so the
connection thread serving the operation switches *its own* supplementary groups, fsgid and fsuid
(raw syscalls, see libc.py), drops its remaining effective capabilities for a non-root user (the
kernel already drops the filesystem ones when the fsuid leaves 0), runs the operation, and switches
back in a `finally`. Every switch is verified, as setfsuid/setfsgid never report failure; when a
switch did not take, the operation is not run (error kind `internal`).

Invariants: only connection threads ever switch, never the main thread (which accepts connections,
reaps children and whose credentials new threads inherit); a thread checks that it holds the
agent's own credentials before each operation and refuses to run anything otherwise (a thread that
failed to switch back stays refused, ends its connection and is not reused), so nothing ever runs
with an earlier caller's identity.
"""

from __future__ import annotations

import contextlib
import threading

from . import libc
from .log import log
from .protocol import AgentError, Frozen
from .users import User

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any, TypeVar

    T = TypeVar("T")


class Creds(Frozen):
    """What the kernel checks file access against, for the calling thread."""

    __match_args__ = ("fsuid", "fsgid", "groups", "effective")
    __slots__ = __match_args__
    fsuid: int
    fsgid: int
    groups: tuple[int, ...]  # sorted, without duplicates
    effective: int  # effective capability set

    def __init__(self, fsuid: int, fsgid: int, groups: tuple[int, ...], effective: int) -> None:
        super().__init__(fsuid, fsgid, groups, effective)


def current() -> Creds:
    """The calling thread's filesystem credentials."""
    return Creds(libc.fsuid(), libc.fsgid(), _normal(libc.getgroups()), libc.capget()[0])


class FileRunner:
    """Runs blocking file operations in the calling thread with a user's filesystem credentials.

    Create it on the main thread: its credentials are the baseline every switch returns to.
    """

    def __init__(self) -> None:
        self.baseline = current()
        self._local = threading.local()

    def run(self, user: User, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in the calling thread, with `user`'s filesystem credentials."""
        with self.acting_as(user):
            return fn(*args)

    def check(self) -> None:
        """Raise unless the calling thread holds the agent's own credentials (before spawning)."""
        if self.tainted() or current() != self.baseline:
            self._taint()
            raise AgentError("internal", "this thread does not hold the agent's own credentials")

    @contextlib.contextmanager
    def acting_as(self, user: User) -> Iterator[None]:
        """Switch the calling (connection) thread to `user`'s filesystem credentials for the block."""
        if threading.get_ident() == threading.main_thread().ident:
            raise AgentError("internal", "refusing to switch the credentials of the main thread")
        self.check()
        base = self.baseline
        groups = _normal(user.groups)
        switch = (user.uid, user.gid, groups) != (base.fsuid, base.fsgid, base.groups)
        try:
            if switch:
                self._switch(user, groups)
            yield
        finally:
            if switch:
                self._restore()

    # -- internals ----------------------------------------------------------------------------

    def _switch(self, user: User, groups: tuple[int, ...]) -> None:
        """Groups, fsgid, fsuid, then (non-root) no capabilities at all; verified."""
        try:
            libc.setgroups(groups)
            libc.setfsgid(user.gid)
            libc.setfsuid(user.uid)
            if user.uid != 0:
                _, permitted, inheritable = libc.capget()
                libc.capset(0, permitted, inheritable)
        except OSError as exc:
            raise AgentError("internal", f"cannot take on the credentials of {user.name}: {exc}") from None
        want = Creds(user.uid, user.gid, groups, 0 if user.uid != 0 else self.baseline.effective)
        now = current()
        if now != want:
            raise AgentError("internal", f"cannot take on the credentials of {user.name}: {now} instead of {want}")

    def _restore(self) -> None:
        """Back to the baseline in reverse order (capabilities first: setgroups needs CAP_SETGID)."""
        base = self.baseline
        try:
            _, permitted, inheritable = libc.capget()
            libc.capset(base.effective, permitted, inheritable)
            libc.setfsuid(base.fsuid)  # raises the filesystem capabilities again when it is 0
            libc.setfsgid(base.fsgid)
            libc.setgroups(base.groups)
            libc.capset(base.effective, permitted, inheritable)  # exactly the baseline set
            restored = current() == base
        except OSError:
            restored = False
        if not restored:
            self._taint()
            log("CRITICAL", "a connection thread could not restore the agent's credentials; it runs nothing more")
            raise AgentError("internal", "could not restore the agent's credentials after a file operation")

    def tainted(self) -> bool:
        """Whether the calling thread may not run operations any more: its connection ends, and so
        does the (worker) thread."""
        return bool(getattr(self._local, "tainted", False))

    def _taint(self) -> None:
        self._local.tainted = True


def _normal(groups: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    return tuple(sorted(set(groups)))
