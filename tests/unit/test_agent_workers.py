"""The agent's reused threads: every job runs once, a waiting thread is reused, idle ones end."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from corral.agent.workers import Workers

WAIT = 10.0  # seconds a test waits for what must happen at once


def until(condition: Callable[[], bool]) -> bool:
    """Poll `condition` (a thread's state, which has no event to wait on) for up to WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            return False
        threading.Event().wait(0.001)
    return True


def test_a_thread_that_finished_its_job_runs_the_next() -> None:
    workers = Workers("test")
    threads: list[threading.Thread] = []
    for _ in range(3):
        done = threading.Event()
        workers.run(lambda done=done: (threads.append(threading.current_thread()), done.set()))
        assert done.wait(WAIT)
        assert until(lambda: workers.waiting() == 1)  # it is back in the list right after the job returns
    assert threads[0] is not threading.current_thread()
    assert threads[1] is threads[0] and threads[2] is threads[0]


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
    seen: list[threading.Thread] = []
    failed = threading.Event()

    def fail() -> None:
        seen.append(threading.current_thread())
        failed.set()
        raise RuntimeError("job failed")

    workers.run(fail)
    assert failed.wait(WAIT)
    assert until(lambda: workers.waiting() == 1)
    done = threading.Event()
    workers.run(lambda: (seen.append(threading.current_thread()), done.set()))
    assert done.wait(WAIT) and seen[1] is seen[0]


def test_an_idle_thread_ends() -> None:
    workers = Workers("test", idle=0.05)
    started: list[threading.Thread] = []
    done = threading.Event()
    workers.run(lambda: (started.append(threading.current_thread()), done.set()))
    assert done.wait(WAIT)
    started[0].join(WAIT)
    assert not started[0].is_alive() and workers.waiting() == 0


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
    seen: list[threading.Thread] = []

    def job(retire: bool) -> None:
        seen.append(threading.current_thread())
        if retire:
            workers.retire()

    for count, retire in ((1, True), (2, False)):
        workers.run(lambda retire=retire: job(retire))
        assert until(lambda count=count: len(seen) == count)
    seen[0].join(WAIT)
    assert not seen[0].is_alive() and seen[1] is not seen[0]


def test_one_thread_can_be_kept_waiting_ahead_of_the_next_job() -> None:
    workers = Workers("test")
    workers.keep_one_waiting()
    assert until(lambda: workers.waiting() == 1)
    workers.keep_one_waiting()  # one waits already: none more
    assert workers.waiting() == 1
    ahead = [t for t in threading.enumerate() if t.name == "test"]
    ran: list[threading.Thread] = []
    done = threading.Event()
    workers.run(lambda: (ran.append(threading.current_thread()), done.set()))
    assert done.wait(WAIT) and ran[0] in ahead
