"""Reused threads for the agent's short-lived jobs (a connection, a process's output pump), and
how the agent starts any thread.

``threading.Thread.start`` waits until the new thread has run (a hand-shake): on a PVM guest that
is a wake-up of the other vCPU and back, 0.3-0.8 ms on a fresh agent's first command, which starts
three (its connection's, its pump, the timeouts'). ``start_thread`` does not wait. Handing a job to
a thread that waits for one is one wake-up (~0.05 ms). A thread that found no job for `idle`
seconds ends, so an idle sandbox keeps none. No agent code asks for ``threading.current_thread()``
(on a thread started this way it would register a dummy that is never dropped).
"""

from __future__ import annotations

import _thread
import threading

from .log import log_exception

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

IDLE_SECONDS = 10.0


def start_thread(function: Callable[..., object], *args: object) -> int:
    """Run ``function(*args)`` on a new (daemon-like) thread without waiting for it to start; its
    ident. Raises RuntimeError if no thread can be started (the sandbox's task limit). An exception
    it lets out is printed to stderr, the agent's log."""
    return _thread.start_new_thread(function, args)


class _Worker:
    __slots__ = ("job", "wake")

    def __init__(self, job: Callable[[], None] | None) -> None:
        self.job: Callable[[], None] | None = job
        self.wake = threading.Lock()  # released when a job was given; held while it waits for one
        self.wake.acquire()


class Workers:
    """Run each job on a waiting thread, or on a new one when none waits. Thread-safe."""

    def __init__(self, name: str, idle: float = IDLE_SECONDS) -> None:
        self._name = name
        self._idle_seconds = idle
        self._lock = threading.Lock()
        self._waiting: list[_Worker] = []  # the most recent last: it is taken first, the others time out
        self._retiring = threading.local()

    def run(self, job: Callable[[], None]) -> None:
        """Run `job` on another thread; raises RuntimeError if none waits and none can be started."""
        with self._lock:
            worker = self._waiting.pop() if self._waiting else None
        if worker is not None:
            worker.job = job
            worker.wake.release()
            return
        start_thread(self._serve, _Worker(job))

    def keep_one_waiting(self) -> None:
        """Start a thread that waits for a job unless one waits already: a thread started ahead (by the
        loop that accepts a connection, right after handing it over) where the next job would start one
        on its own path (a command's output pump, just after its connection's first reply)."""
        if self.waiting() == 0:
            start_thread(self._serve, _Worker(None))

    def retire(self) -> None:
        """Called from a job: its thread ends when the job returns instead of serving another."""
        self._retiring.flag = True

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def _serve(self, worker: _Worker) -> None:
        while True:
            job, worker.job = worker.job, None
            if job is not None:
                try:
                    job()
                except Exception:
                    log_exception(f"a {self._name} job")
                del job  # nothing of the job outlives it while this thread waits
            if getattr(self._retiring, "flag", False):
                return
            with self._lock:
                self._waiting.append(worker)
            if worker.wake.acquire(timeout=self._idle_seconds):
                continue
            with self._lock:
                if worker in self._waiting:
                    self._waiting.remove(worker)
                    return
            worker.wake.acquire()  # taken from the list meanwhile: its job is on the way
