"""The agent's reused threads: every job runs once, a waiting thread is reused, idle ones end."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from corral.agent.workers import Workers, start_thread

WAIT = 10.0  # seconds a test waits for what must happen at once


def until(condition: Callable[[], bool]) -> bool:
    """Poll `condition` (a thread's state, which has no event to wait on) for up to WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            return False
        threading.Event().wait(0.001)
    return True


def tids() -> set[int]:
    """This process's threads, as the kernel lists them (the workers' are not ``threading`` objects)."""
    return {int(t) for t in os.listdir("/proc/self/task")}


def gone(tid: int) -> bool:
    return not os.path.exists(f"/proc/self/task/{tid}")


def test_a_thread_that_finished_its_job_runs_the_next() -> None:
    workers = Workers("test")
    threads: list[int] = []
    for _ in range(3):
        done = threading.Event()
        workers.run(lambda done=done: (threads.append(threading.get_native_id()), done.set()))
        assert done.wait(WAIT)
        assert until(lambda: workers.waiting() == 1)  # it is back in the list right after the job returns
    assert threads[0] != threading.get_native_id()
    assert threads[1] == threads[0] and threads[2] == threads[0]


def test_jobs_that_wait_for_each_other_run_at_once() -> None:
    workers = Workers("test")
    meet = threading.Barrier(4, timeout=WAIT)
    ran = threading.Semaphore(0)
    for _ in range(3):
        workers.run(lambda: (meet.wait(), ran.release()))
    meet.wait()  # would time out (BrokenBarrierError) if the jobs ran one after another
    assert all(ran.acquire(timeout=WAIT) for _ in range(3))


def test_a_failing_job_leaves_its_thread_serving() -> None:
    workers = Workers("test")
    seen: list[int] = []
    failed = threading.Event()

    def fail() -> None:
        seen.append(threading.get_native_id())
        failed.set()
        raise RuntimeError("job failed")

    workers.run(fail)
    assert failed.wait(WAIT)
    assert until(lambda: workers.waiting() == 1)
    done = threading.Event()
    workers.run(lambda: (seen.append(threading.get_native_id()), done.set()))
    assert done.wait(WAIT) and seen[1] == seen[0]


def test_an_idle_thread_ends() -> None:
    workers = Workers("test", idle=0.05)
    started: list[int] = []
    done = threading.Event()
    workers.run(lambda: (started.append(threading.get_native_id()), done.set()))
    assert done.wait(WAIT)
    assert until(lambda: gone(started[0])) and workers.waiting() == 0


def test_every_job_runs_once_while_threads_time_out_and_are_taken() -> None:
    """Jobs handed out from several threads while idle threads end: none lost, none run twice."""
    workers = Workers("test", idle=0.0005)
    runs = 2000
    counts = [0] * runs
    lock = threading.Lock()
    all_ran = threading.Event()
    total = [0]

    def job(n: int) -> None:
        with lock:
            counts[n] += 1
            total[0] += 1
            if total[0] == runs:
                all_ran.set()

    def submit(part: range) -> None:
        for n in part:
            workers.run(lambda n=n: job(n))

    submitters = [threading.Thread(target=submit, args=(range(k, runs, 4),)) for k in range(4)]
    for t in submitters:
        t.start()
    for t in submitters:
        t.join()
    assert all_ran.wait(WAIT)
    assert counts == [1] * runs


def test_a_job_can_retire_its_thread() -> None:
    workers = Workers("test")
    seen: list[int] = []

    def job(retire: bool) -> None:
        seen.append(threading.get_native_id())
        if retire:
            workers.retire()

    for count, retire in ((1, True), (2, False)):
        workers.run(lambda retire=retire: job(retire))
        assert until(lambda count=count: len(seen) == count)
    assert until(lambda: gone(seen[0])) and seen[1] != seen[0]


def test_one_thread_can_be_kept_waiting_ahead_of_the_next_job() -> None:
    workers = Workers("test")
    before = tids()
    workers.keep_one_waiting()
    assert until(lambda: workers.waiting() == 1)
    workers.keep_one_waiting()  # one waits already: none more
    assert workers.waiting() == 1
    ahead = tids() - before
    ran: list[int] = []
    done = threading.Event()
    workers.run(lambda: (ran.append(threading.get_native_id()), done.set()))
    assert done.wait(WAIT) and ran[0] in ahead


def test_start_thread_runs_the_function_with_its_arguments_on_a_new_thread() -> None:
    got: list[tuple[int, tuple[object, ...]]] = []
    done = threading.Event()
    ident = start_thread(lambda *args: (got.append((threading.get_ident(), args)), done.set()), 1, "two")
    assert done.wait(WAIT)
    assert got == [(ident, (1, "two"))] and ident != threading.get_ident()
