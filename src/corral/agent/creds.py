"""File operations run as the requesting user: per-thread filesystem credentials in worker threads.

The agent is the sandbox's root (uid 0 with a few capabilities); a file operation on behalf of a user
must get exactly that user's permissions, not the agent's. Linux keeps credentials per thread, so a
worker thread of `FileRunner`'s own pool switches *its own* supplementary groups, fsgid and fsuid
(raw syscalls, see libc.py), drops its remaining effective capabilities for a non-root user (the
kernel already drops the filesystem ones when the fsuid leaves 0), runs the operation, and switches
back in a `finally`. Every switch is verified, as setfsuid/setfsgid never report failure; when a
switch did not take, the operation is not run (error kind `internal`).

Invariants: only this pool's threads ever switch, never the event loop thread (nor the main thread);
a worker checks that it holds the agent's own credentials before each operation and refuses to run
anything otherwise (a thread that failed to switch back is retired with its pool), so nothing ever
runs with an earlier caller's identity.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from . import libc
from .protocol import AgentError
from .users import User

log = logging.getLogger("corral.agent")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Creds:
    """What the kernel checks file access against, for the calling thread."""

    fsuid: int
    fsgid: int
    groups: tuple[int, ...]  # sorted, without duplicates
    effective: int  # effective capability set


def current() -> Creds:
    """The calling thread's filesystem credentials."""
    return Creds(libc.fsuid(), libc.fsgid(), _normal(libc.getgroups()), libc.capget()[0])


class FileRunner:
    """Runs blocking file operations in its worker threads with a user's filesystem credentials.

    Create it on the event loop thread (its credentials are the baseline workers return to).
    """

    def __init__(self, workers: int | None = None) -> None:
        self.baseline = current()
        self._workers = workers or min(32, (os.cpu_count() or 1) + 4)
        self._pool = self._new_pool()
        self._retire = False  # set by a worker that could not restore its credentials
        self._local = threading.local()

    async def run(self, user: User, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a worker thread, with `user`'s filesystem credentials."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor(), self._call, user, fn, args)

    def submit(self, user: User, fn: Callable[..., Any], *args: Any) -> None:
        """Like `run`, without waiting: for clean-up while being cancelled. Failures are logged."""
        try:
            self._executor().submit(self._call_logged, user, fn, args)
        except RuntimeError as exc:  # shut down
            log.warning("background file operation dropped: %s", exc)

    def shutdown(self) -> None:
        """Stop taking work; what was queued still runs (interpreter exit waits for it)."""
        self._pool.shutdown(wait=False)

    @contextlib.contextmanager
    def acting_as(self, user: User) -> Iterator[None]:
        """Switch the calling (worker) thread to `user`'s filesystem credentials for the block."""
        if threading.current_thread() is threading.main_thread() or _loop_running():
            raise AgentError("internal", "refusing to switch the credentials of the event loop thread")
        if getattr(self._local, "tainted", False) or current() != self.baseline:
            self._taint()
            raise AgentError("internal", "a file worker does not hold the agent's own credentials")
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
            log.critical("a file worker could not restore the agent's credentials; retiring its threads")
            raise AgentError("internal", "could not restore the agent's credentials after a file operation")

    def _taint(self) -> None:
        """This thread may not run operations any more; the next `run` starts a fresh pool."""
        self._local.tainted = True
        self._retire = True

    def _call(self, user: User, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        with self.acting_as(user):
            return fn(*args)

    def _call_logged(self, user: User, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self._call(user, fn, args)
        except Exception as exc:
            log.warning("background file operation failed: %s", exc)

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._retire:
            self._retire = False
            old, self._pool = self._pool, self._new_pool()
            old.shutdown(wait=False)  # its threads exit once idle; a tainted one runs nothing
        return self._pool

    def _new_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        return concurrent.futures.ThreadPoolExecutor(self._workers, thread_name_prefix="corral-fs")


def _normal(groups: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    return tuple(sorted(set(groups)))


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
