"""The agent zygote: one pre-imported agent per server that forks every bwrap sandbox's agent.

Started once by the host (``corral.runtime.zygote``) through bwrap in a mount namespace that holds
only the agent's runtime at the paths a sandbox sees (``/.corral/rt``, ``/.corral/lib``); it drops
to the sandboxes' host uid (``--uid``), which owns every sandbox's user namespace, and imports the
agent. Forking it instead of starting python per sandbox saves the interpreter's start and imports
(~50 ms and most of an idle agent's private memory, which stays shared copy-on-write).

Per sandbox the host sends, over the control socket (SOCK_SEQPACKET), ``spawn <dev> <ino>`` with three
fds: the agent's listening socket, the runtime log, and a ``go`` socket; it does so while bwrap still
sets the sandbox up. The zygote forks a *joiner*, answers ``pid <joiner>`` with a pidfd of it on the
``go`` socket (so the host need not wait for the fork) and forgets it. The joiner waits for ``go``
with a pidfd of the sandbox's pid 1 on its socket (once bwrap made the namespaces the host writes
their id maps and moves the joiner into the sandbox's cgroups), joins every namespace of pid 1 but
the mount namespace at once, forks the agent into the pid namespace, sends
``agent <pid>`` with a pidfd of it on the ``go`` socket and exits: all while bwrap still mounts. The
agent waits for ``mount`` (the host sends it once pid 1 runs: bwrap has finished its mounts, and only
then may anything join that namespace), joins the mount namespace, checks that ``/`` is the sandbox
root the host named (device and inode) and answers ``joined``. Then it keeps the capabilities
``--caps`` names (bounding, permitted, effective, inheritable, ambient: what bwrap gives its
command), installs the seccomp program read from ``--seccomp-fd`` (with no_new_privs) and serves.

The zygote is a subreaper, so agents are reparented to it and reaped here. It exits when the host
closes the control socket (and dies with it: bwrap's --die-with-parent).
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
import sys

from . import libc
from .log import log
from .protocol import recv_fds
from .server import serve_listening
from .spawner import exited_children

USAGE = "usage: corral-agent-zygote --control-fd N --seccomp-fd N --uid N --caps MASK"
# linux/sched.h: the joiner joins CLONE_NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET, the
# agent CLONE_NEWNS
CLONE_NEWNS = 0x00020000
JOIN = 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
GO_TIMEOUT = 60.0  # seconds a joiner waits for the host's go (and its agent for mount) before giving up


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        opts = dict(zip(args[::2], (int(v, 0) for v in args[1::2]), strict=True))
        control, seccomp_fd, uid, caps = (opts[k] for k in ("--control-fd", "--seccomp-fd", "--uid", "--caps"))
    except (KeyError, ValueError):
        print(f"{USAGE}\ncorral-agent-zygote: error: bad arguments: {' '.join(args)[:200]}", file=sys.stderr)
        return 2
    with os.fdopen(seccomp_fd, "rb") as f:
        program = f.read()
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # leaves no capabilities in the host's namespaces
    # The uid change cleared bwrap's --die-with-parent: arm it again (bwrap, our parent, dies with
    # the server), and make sure it was not already gone in between.
    libc.set_parent_death_signal(signal.SIGKILL)
    if os.getppid() == 1:
        return 1
    libc.set_not_dumpable()
    libc.set_child_subreaper()
    libc.set_name("corral-zygote")  # its forks keep its command line; the name tells them apart
    # Agents share the zygote's heap copy-on-write: a collection in an agent would write to every
    # object header (and copy its page), so the imported objects move out of the collector's view,
    # and free heap goes back to the kernel before any fork.
    gc.collect()
    gc.freeze()
    libc.malloc_trim()
    sock = socket.socket(fileno=control)
    os.set_inheritable(control, False)
    _serve(sock, program, caps)
    return 0


def _serve(sock: socket.socket, program: bytes, caps: int) -> None:
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, _note_signal)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd == wake_r:
                os.read(wake_r, 512)
                _reap()
                continue
            try:
                msg, fds = recv_fds(sock, 256, 8)
            except InterruptedError:
                continue
            if not msg:
                return  # the host closed the control socket
            # The answer goes on the joiner's go socket (the host reads it when it places the joiner).
            try:
                pid = _fork_joiner(sock, msg, fds, program, caps, (wake_r, wake_w))
                joiner = os.pidfd_open(pid)  # the host moves it by pid: this tells it the pid is still its
                go = socket.socket(fileno=fds[2])
                try:
                    socket.send_fds(go, [f"pid {pid}".encode()], [joiner])
                finally:
                    go.detach()  # closed with the other received fds
                    os.close(joiner)
            except Exception as exc:  # reported to the host; the zygote keeps serving
                if len(fds) == 3:
                    _report(fds[2], f"error {exc}")
            finally:
                for received in fds:
                    os.close(received)


def _note_signal(signum: int, frame: object) -> None:
    """Present so the wakeup fd sees SIGCHLD; the loop reaps."""


def _reap() -> None:
    for _ in exited_children():
        pass


def _fork_joiner(
    sock: socket.socket, msg: bytes, fds: list[int], program: bytes, caps: int, wake: tuple[int, int],
) -> int:
    words = msg.split()
    if len(words) != 3 or words[0] != b"spawn" or len(fds) != 3:
        raise ValueError(f"expected 'spawn <dev> <ino>' with 3 fds, got {msg[:100]!r} with {len(fds)}")
    root = (int(words[1]), int(words[2]))
    pid = libc.fork_bare()  # the zygote has one thread
    if pid:
        return pid
    # The joiner. Nothing here may return into the zygote's loop.
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in (sock.detach(), *wake):
            os.close(fd)
        code = _join(*fds, root=root, program=program, caps=caps)
    except BaseException as exc:  # the host reads why on the go socket
        _report(fds[2], f"error {type(exc).__name__}: {exc}")
    finally:
        os._exit(code)


def _join(listen: int, log_fd: int, go: int, *, root: tuple[int, int], program: bytes, caps: int) -> int:
    os.dup2(log_fd, 2)  # not the server's stderr, which the zygote inherited
    # A session (and process group) per sandbox, led by this short-lived joiner: the agent shares
    # none with the zygote or other sandboxes' agents (kill(0, ...) reaches only its own), and as
    # no session leader it can never acquire a controlling terminal.
    os.setsid()
    msg, pidfds = _receive(go, with_fd=True)
    if msg != b"go" or len(pidfds) != 1:
        for fd in pidfds:
            os.close(fd)
        return 1  # the host gave up on this sandbox (its end closed) or sent something else
    init = pidfds[0]
    libc.setns(init, JOIN)  # all but the mount namespace, which bwrap may still be setting up
    agent = libc.fork_bare()  # so has the joiner
    if agent == 0:
        _become_agent(listen, log_fd, go, init, root, program, caps)  # never returns
    os.close(listen)
    agent_fd = os.pidfd_open(agent)
    socket.send_fds(socket.socket(fileno=go), [f"agent {agent}".encode()], [agent_fd])
    return 0


def _receive(go: int, with_fd: bool = False) -> tuple[bytes, list[int]]:
    """The host's next message on ``go`` (and the fd it carries); ``b""`` if it gave up or closed."""
    poller = select.poll()
    poller.register(go, select.POLLIN)
    if not poller.poll(GO_TIMEOUT * 1000):
        return b"", []
    channel = socket.socket(fileno=go)
    try:
        msg, fds = recv_fds(channel, 16, 1 if with_fd else 0)
    finally:
        channel.detach()  # stays fd ``go``
    return msg, fds


def _enter_root(go: int, init: int, root: tuple[int, int]) -> None:
    """Once the host says pid 1 runs: join its mount namespace (root and cwd become the sandbox's
    root), check that root and answer ``joined``."""
    msg, fds = _receive(go)
    for fd in fds:
        os.close(fd)
    if msg != b"mount":
        raise RuntimeError("the host gave up on this sandbox before its pid 1 ran")
    libc.setns(init, CLONE_NEWNS)
    os.close(init)
    st = os.stat("/")
    if (st.st_dev, st.st_ino) != root:
        raise RuntimeError(f"/ after joining is {st.st_dev}:{st.st_ino}, not the sandbox root {root[0]}:{root[1]}")
    os.write(go, b"joined")
    os.close(go)


def _become_agent(listen: int, log_fd: int, go: int, init: int, root: tuple[int, int], program: bytes,
                  caps: int) -> None:
    code = 1
    try:
        try:
            _enter_root(go, init, root)
        except BaseException as exc:  # the host reads why on the go socket
            _report(go, f"error {type(exc).__name__}: {exc}")
            raise
        null = os.open("/dev/null", os.O_RDWR)  # the sandbox's
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        for fd in (null, log_fd):
            os.close(fd)
        os.chdir("/")
        os.environ["PWD"] = "/"
        libc.set_name("corral-agent")
        libc.limit_capabilities(caps)
        libc.install_seccomp(program)
        serve_listening(listen)
        code = 0
    except BaseException as exc:  # logged to the sandbox's runtime log
        log("ERROR", f"agent failed to start: {type(exc).__name__}: {exc}")
    finally:
        os._exit(code)


def _report(go: int, text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(go, text.encode()[:1000])


if __name__ == "__main__":
    sys.exit(main())
