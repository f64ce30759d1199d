"""Attacks on the kernel and the host from code inside a sandbox, as `user` and as sandbox root.

The probes run inside real sandboxes through the API. Each denied probe has an allowed twin that
exercises the same mechanism harmlessly, so a probe that fails for an unrelated reason (a typo, a
missing tool) shows up as a failing twin instead of a false "blocked". Cheap probes are batched in
one script per user; attacks with host-side effects (signals, sockets, disk) get their own test.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from sandbox_probe import (
    cgroup_procs,
    disk_mount,
    host_pids,
    new_sandbox,
    probe_json,
    put,
    sandbox_dir,
    sandboxes,
    settled_pids,
)

from conftest import TEST_BACKEND, Server, leftovers_of, run_command

PROBES = r"""
import ctypes, errno, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = json.loads(sys.argv[1])
AGENT = int(sys.argv[2])  # the agent's pid: 2 under bwrap (its init is 1), 1 under gVisor

def sc(name, *args):
    r = libc.syscall(ctypes.c_long(NR[name]), *(ctypes.c_long(a) for a in args))
    return r if r >= 0 else OSError(ctypes.get_errno(), name)

def c_str(text):
    return ctypes.addressof(ctypes.create_string_buffer(text))

def run(fn):
    pid = os.fork()  # each probe in a child: its side effects (a namespace, a mount) die with it
    if pid == 0:
        try:
            result = fn()
            code = result.errno if isinstance(result, OSError) else 0
        except OSError as e:
            code = e.errno
        except BaseException:
            code = 255
        os._exit(min(code, 255))
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return "ok" if code == 0 else errno.errorcode.get(code, str(code))

def own_child_mem():
    pid = os.fork()
    if pid == 0:
        os.read(os.pipe()[0], 1)
    try:
        os.close(os.open(f"/proc/{pid}/mem", os.O_RDONLY))
    finally:
        os.kill(pid, 9)

def vm_read(pid):
    # one byte, at an address that is only a guess: EFAULT means the access check let it through
    buf = ctypes.create_string_buffer(1)
    local = (ctypes.c_size_t * 2)(ctypes.addressof(buf), 1)
    remote = (ctypes.c_size_t * 2)(ctypes.addressof(buf), 1)
    r = sc("process_vm_readv", pid, ctypes.addressof(local), 1, ctypes.addressof(remote), 1, 0)
    return None if isinstance(r, OSError) and r.errno == errno.EFAULT else r

def sock(*args):
    socket.socket(*args).close()

def tcp_loopback():
    server = socket.create_server(("127.0.0.1", 0))
    socket.create_connection(server.getsockname()).close()

def read_own_cgroup():
    open("/proc/self/cgroup").read()  # gVisor: the sentry's own groups

def open_made_devices():
    for name in ("blk", "mem"):
        try:
            os.close(os.open(f"/tmp/{name}-{os.getuid()}", os.O_RDONLY))
        except FileNotFoundError:
            continue  # not made (bwrap): nothing to open
        return  # opened: the attack worked
    raise OSError(errno.ENXIO, "no device opened")

PROBES = {
    # denied (each with its twin below)
    "mknod_block": lambda: os.mknod(f"/tmp/blk-{os.getuid()}", 0o600 | 0o060000, os.makedev(8, 0)),
    "mknod_char_mem": lambda: os.mknod(f"/tmp/mem-{os.getuid()}", 0o600 | 0o020000, os.makedev(1, 1)),
    "open_made_devices": open_made_devices,
    "mount_tmpfs": lambda: sc("mount", c_str(b"none"), c_str(b"/mnt"), c_str(b"tmpfs"), 0, 0),
    "mount_cgroup": lambda: sc("mount", c_str(b"none"), c_str(b"/mnt"), c_str(b"cgroup"), 0, c_str(b"memory")),
    "fsopen_tmpfs": lambda: sc("fsopen", c_str(b"tmpfs"), 0),
    "umount_proc": lambda: sc("umount2", c_str(b"/proc"), 2),
    "keyctl_session": lambda: sc("keyctl", 0, -3, 1),  # KEYCTL_GET_KEYRING_ID, create
    "add_key": lambda: sc("add_key", c_str(b"user"), c_str(b"k"), c_str(b"v"), 1, -3),
    "bpf_map_create": lambda: sc("bpf", 0, 0, 0),
    "perf_event_open": lambda: sc("perf_event_open", c_str(bytes(128)), 0, -1, -1, 0),
    "userfaultfd": lambda: sc("userfaultfd", 0),
    "io_uring_setup": lambda: sc("io_uring_setup", 1, c_str(bytes(120))),
    "unshare_user": lambda: sc("unshare", 0x10000000),
    "unshare_net": lambda: sc("unshare", 0x40000000),
    "unshare_mount": lambda: sc("unshare", 0x00020000),
    "setns_init_mnt": lambda: sc("setns", os.open("/proc/1/ns/mnt", os.O_RDONLY), 0),
    "ptrace_attach_init": lambda: sc("ptrace", 16, 1, 0, 0),
    "ptrace_attach_agent": lambda: sc("ptrace", 16, AGENT, 0, 0),
    "process_vm_readv_agent": lambda: vm_read(AGENT),
    "open_agent_mem": lambda: os.close(os.open(f"/proc/{AGENT}/mem", os.O_RDONLY)),
    "readlink_agent_fd": lambda: os.readlink(f"/proc/{AGENT}/fd/0"),
    "open_agent_fd": lambda: os.close(os.open(f"/proc/{AGENT}/fd/0", os.O_RDWR)),
    "raw_socket": lambda: sock(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    "packet_socket": lambda: sock(socket.AF_PACKET, socket.SOCK_RAW, 0),
    "syslog_read": lambda: sc("syslog", 3, c_str(bytes(64)), 64),
    "kcore": lambda: os.close(os.open("/proc/kcore", os.O_RDONLY)),
    "sysctl_write": lambda: open("/proc/sys/vm/drop_caches", "w").write("3"),
    "open_by_handle_at": lambda: sc("open_by_handle_at", -100, c_str(bytes(64)), 0),
    "init_module": lambda: sc("init_module", 0, 0, c_str(b"")),
    "clock_settime": lambda: sc("clock_settime", 0, c_str(bytes(16))),
    "sethostname": lambda: sc("sethostname", c_str(b"x"), 1),
    # allowed twins
    "mkfifo": lambda: os.mkfifo(f"/tmp/fifo-{os.getpid()}"),
    "eventfd": lambda: os.close(os.eventfd(0)),
    "memfd": lambda: os.close(os.memfd_create("x")),
    "fork": lambda: os.waitpid(os.fork() or os._exit(0), 0),
    "own_child_mem": own_child_mem,
    "own_mem": lambda: os.close(os.open("/proc/self/mem", os.O_RDONLY)),
    "own_ns": lambda: os.close(os.open("/proc/self/ns/net", os.O_RDONLY)),
    "udp_socket": lambda: sock(socket.AF_INET, socket.SOCK_DGRAM),
    "netlink_route": lambda: sock(socket.AF_NETLINK, socket.SOCK_RAW, 0),
    "tcp_loopback": tcp_loopback,
    "read_own_cgroup": read_own_cgroup,
    "sysctl_read": lambda: open("/proc/sys/vm/overcommit_memory").read(),
}
print(json.dumps({name: run(fn) for name, fn in PROBES.items()}))
"""

SYSCALLS = {  # x86_64, aarch64
    "mount": (165, 40), "umount2": (166, 39), "fsopen": (430, 430), "keyctl": (250, 219), "add_key": (248, 217),
    "bpf": (321, 280), "perf_event_open": (298, 241), "userfaultfd": (323, 282), "io_uring_setup": (425, 425),
    "unshare": (272, 97), "setns": (308, 268), "ptrace": (101, 117), "process_vm_readv": (310, 270),
    "syslog": (103, 116), "open_by_handle_at": (304, 265), "init_module": (175, 105), "clock_settime": (227, 112),
    "sethostname": (170, 161),
}
DENIED = [
    "mknod_block", "mknod_char_mem", "open_made_devices", "mount_tmpfs", "mount_cgroup", "fsopen_tmpfs",
    "umount_proc", "keyctl_session",
    "add_key", "bpf_map_create", "perf_event_open", "userfaultfd", "io_uring_setup", "unshare_user", "unshare_net",
    "unshare_mount", "setns_init_mnt", "ptrace_attach_init", "ptrace_attach_agent", "process_vm_readv_agent",
    "open_agent_mem", "readlink_agent_fd", "open_agent_fd", "raw_socket", "packet_socket", "syslog_read", "kcore",
    "sysctl_write", "open_by_handle_at", "init_module", "clock_settime", "sethostname",
]
GVISOR = TEST_BACKEND == "gvisor"
AGENT_PID = 1 if GVISOR else 2
# What gVisor's sentry serves by design where bwrap's seccomp or the host kernel refuses, and for
# whom (docs/gvisor.md): the call succeeds inside the user-space kernel and reaches nothing on the
# host. Its user namespaces, session keyrings, kernel log and device nodes are the sentry's own (a
# node made there opens nothing: `open_made_devices` stays denied). gVisor's /proc shows the agent's
# fd names (not the fds: `open_agent_fd` stays denied) to every sandbox user. (runsc 2024 refuses
# io_uring and a new mount namespace, which the 2022 one served.)
SENTRY_SERVES = {
    "mknod_block": {"user", "root"}, "mknod_char_mem": {"user", "root"}, "keyctl_session": {"user", "root"},
    "unshare_user": {"user", "root"}, "syslog_read": {"user", "root"}, "readlink_agent_fd": {"user", "root"},
}
ALLOWED = [
    "mkfifo", "eventfd", "memfd", "fork", "own_child_mem", "own_mem", "own_ns", "udp_socket", "netlink_route",
    "tcp_loopback", "read_own_cgroup", "sysctl_read",
]


# The agent's processes in a sandbox, by name: none of them may run with the sandbox user's uid (which
# that user's code could ptrace or signal). A spawner (agent/spawner.py) would, and runs only where
# corral-tools could not be built: the server always builds it here.
AGENT_PROCESSES = """for p in /proc/[0-9]*; do
  case "$(cat $p/comm 2>/dev/null)" in corral-*) echo "$(cat $p/comm) $(awk '/^Uid:/ {print $2}' $p/status)";; esac
done"""


@pytest.fixture(scope="module")
def probe_results(server: Server) -> dict[str, dict[str, str]]:
    arch = 0 if platform.machine() == "x86_64" else 1
    numbers = json.dumps({name: nrs[arch] for name, nrs in SYSCALLS.items()})
    with server.client() as api, sandboxes(api, 1) as (sid,):
        put(api, sid, "/tmp/probes.py", PROBES)
        for _ in range(3):  # the user's later commands start as its first did, from the agent
            assert run_command(api, sid, "true").exit_code == 0
        listed = run_command(api, sid, AGENT_PROCESSES, user="root")
        names = [line.split() for line in listed.stdout.splitlines()]
        assert [uid for _, uid in names if uid != "0"] == [], listed.stdout
        results = {}
        for user in ("user", "root"):
            ran = run_command(api, sid, f"python3 /tmp/probes.py '{numbers}' {AGENT_PID}",
                              user=user, timeout=60)
            assert ran.exit_code == 0, ran.stderr
            results[user] = json.loads(ran.stdout.strip().splitlines()[-1])
        return results


@pytest.mark.parametrize("user", ["user", "root"])
@pytest.mark.parametrize("probe", DENIED)
def test_kernel_surface_is_denied(probe_results: dict[str, dict[str, str]], user: str, probe: str) -> None:
    """Attack: from inside, as `user` and as sandbox root: make device nodes, mount (also cgroupfs),
    unmount /proc, use keyrings, bpf, perf, userfaultfd, io_uring, new namespaces or another
    namespace, ptrace or read the memory/fds of init and the agent (no process of the agent runs as
    `user`), raw and packet sockets, the
    kernel log, /proc/kcore, sysctls, file handles, modules, the clock and the hostname. Each
    must fail (seccomp, missing capabilities, the user namespace, or a non-dumpable agent).
    gVisor: what its sentry serves by design (``SENTRY_SERVES``) succeeds there, inside it."""
    if GVISOR and user in SENTRY_SERVES.get(probe, ()):
        assert probe_results[user][probe] == "ok", f"{probe} as {user}: {probe_results[user][probe]}"
    else:
        assert probe_results[user][probe] != "ok", f"{probe} succeeded as {user}"


@pytest.mark.parametrize("user", ["user", "root"])
@pytest.mark.parametrize("probe", ALLOWED)
def test_kernel_surface_twins_work(probe_results: dict[str, dict[str, str]], user: str, probe: str) -> None:
    """Twin of the denied probes: FIFOs, eventfd/memfd, fork, a process's own memory and its own
    child's, namespace files of its own, UDP, netlink, loopback TCP, its (namespaced) cgroup path
    and reading sysctls keep working, so the denied probes fail for the reason they claim."""
    assert probe_results[user][probe] == "ok", f"{probe} failed as {user}: {probe_results[user][probe]}"


def _host_process_as_sandbox_root() -> subprocess.Popen[bytes]:
    """A host process running as host uid 1000000 — the very id sandbox root maps to — outside
    any sandbox: only the pid namespace keeps a sandbox from signalling it."""
    return subprocess.Popen(["sleep", "600"], user=1_000_000, group=1_000_000, extra_groups=[])


def test_signals_cannot_reach_host_or_other_sandboxes(api: httpx.Client, server: Server) -> None:
    """Attack: sandbox root sends SIGKILL to the host pids of the server, of a host process with
    the same uid as sandbox root, and of another sandbox's agent (all guessed right: the test hands
    them in), then `kill -9 -1` (everything it can see). The pid namespace must keep all of them
    alive; the sandbox only kills its own processes. Twin: its own process dies."""
    victim = _host_process_as_sandbox_root()
    try:
        with sandboxes(api, 2) as (attacker, neighbour):
            neighbour_pids = settled_pids(api, neighbour)
            targets = [server.process.pid, victim.pid, os.getpid(), *neighbour_pids]
            result = probe_json(api, attacker, f"""
                import errno, json, os, subprocess
                out = {{}}
                for pid in {targets!r}:
                    try:
                        os.kill(pid, 9); out[pid] = "killed"
                    except OSError as e:
                        out[pid] = errno.errorcode[e.errno]
                own = subprocess.Popen(["sleep", "600"])
                os.kill(own.pid, 9)
                out["own"] = own.wait()
                print(json.dumps(out))
            """, user="root")
            assert result.pop("own") == -9
            assert set(result.values()) == {"ESRCH"}, result  # no such process in the sandbox's view
            r = api.post(f"/v1/sandboxes/{attacker}/commands", json={"cmd": "kill -9 -1", "user": "root"})
            assert r.status_code == 200  # the stream ends as the agent dies with everything else
            assert victim.poll() is None and server.process.poll() is None
            assert all(os.path.exists(f"/proc/{pid}") for pid in neighbour_pids)
            assert run_command(api, neighbour, "echo alive").stdout == "alive\n"
            assert httpx.get(f"{server.url}/health").status_code == 200
    finally:
        victim.kill()
        victim.wait()


def test_cgroup_cannot_be_left_or_changed(api: httpx.Client, server: Server, sandbox: str) -> None:
    """Attack: sandbox root looks for cgroup files to raise its limits or move itself out
    (/sys/fs/cgroup, every `cgroup.procs` it can find; mounting cgroupfs is in the denied probes)
    and writes its pid there. No cgroupfs is reachable; from the host, every sandbox process is
    still in the sandbox's cgroup, whose limits are unchanged. Twin: /proc/self/cgroup is readable."""
    procs_file = cgroup_procs(sandbox)
    root = Path("/sys/fs/cgroup")
    limits = [*root.glob(f"*/corral/*/{sandbox}/*.max"), *root.glob(f"*/corral/*/{sandbox}/*limit_in_bytes"),
              *root.glob(f"corral/*/{sandbox}/*.max")]
    before = {p: p.read_text() for p in limits}
    result = probe_json(api, sandbox, """
        import glob, json, os
        found = glob.glob("/sys/**/cgroup.procs", recursive=True) + glob.glob("/**/cgroup.procs")
        wrote = []
        for path in found + ["/sys/fs/cgroup/cgroup.procs", "/sys/fs/cgroup/pids/cgroup.procs"]:
            try:
                open(path, "w").write(str(os.getpid())); wrote.append(path)
            except OSError:
                pass
        print(json.dumps({"found": found, "wrote": wrote, "own": open("/proc/self/cgroup").read()}))
    """, user="root")
    assert result["found"] == [] and result["wrote"] == []
    assert result["own"]  # gVisor: its sentry's own groups, each at "/"
    members = set(host_pids(sandbox))
    assert members and all(int(pid) in members for pid in procs_file.read_text().split())
    assert {p: p.read_text() for p in limits} == before and before


def test_host_network_is_unreachable(api: httpx.Client, server: Server, sandbox: str) -> None:
    """Attack: reach host services from inside: the Corral API on 127.0.0.1 and ::1 (it holds the
    admin key's powers), a host UDP socket on loopback, and a host abstract unix socket (abstract
    names are per network namespace). All must fail and the host must receive nothing. Twin: a
    server the sandbox runs on its own loopback answers."""
    port = int(server.url.rsplit(":", 1)[1])
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    abstract = socket.socket(socket.AF_UNIX)
    name = f"corral-test-{os.getpid()}-{time.monotonic_ns()}"
    abstract.bind("\0" + name)
    abstract.listen(1)
    abstract.setblocking(False)
    try:
        result = probe_json(api, sandbox, f"""
            import errno, json, socket
            out = {{}}
            def attempt(key, fn):
                try:
                    fn(); out[key] = "ok"
                except OSError as e:
                    out[key] = errno.errorcode.get(e.errno, str(e))
            attempt("api_v4", lambda: socket.create_connection(("127.0.0.1", {port}), timeout=2).close())
            attempt("api_v6", lambda: socket.create_connection(("::1", {port}), timeout=2).close())
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            attempt("udp", lambda: u.sendto(b"x", ("127.0.0.1", {udp.getsockname()[1]})))
            a = socket.socket(socket.AF_UNIX)
            attempt("abstract", lambda: a.connect("\\0{name}"))
            own = socket.create_server(("127.0.0.1", {port}))
            attempt("own_server", lambda: socket.create_connection(("127.0.0.1", {port}), timeout=2).close())
            print(json.dumps(out))
        """, user="user")
        assert result["api_v4"] == "ECONNREFUSED" and result["abstract"] == "ECONNREFUSED"
        assert result["api_v6"] in ("ECONNREFUSED", "EADDRNOTAVAIL", "ENETUNREACH")
        assert result["own_server"] == "ok"
        with pytest.raises(BlockingIOError):
            udp.recv(16)  # loopback delivery is synchronous: had it been sent here, it would be queued
        with pytest.raises(BlockingIOError):
            abstract.accept()
    finally:
        udp.close()
        abstract.close()


# Sandbox root opens every fd of the sandbox's pid 1 (same uid, dumpable) through /proc and writes
# 128 MiB through each that opens.
FLOOD = r"""
import errno, os
print(sorted(os.readlink(f"/proc/1/fd/{fd}") for fd in os.listdir("/proc/1/fd")))
chunk, written = b"x" * (1 << 20), 0
for fd in os.listdir("/proc/1/fd"):
    try:
        out = os.open(f"/proc/1/fd/{fd}", os.O_WRONLY | os.O_APPEND)
    except OSError as e:
        print("refused:", errno.errorcode[e.errno])
        continue
    try:
        for _ in range(128):
            written += os.write(out, chunk)
    except OSError as e:
        print("stopped:", errno.errorcode[e.errno])
print("written:", written)
"""


def test_init_hijacked_by_root_cannot_fill_the_host_disk(api: httpx.Client, server: Server) -> None:
    """Attack (found and fixed): sandbox root makes the sandbox's pid 1 (same uid, dumpable) write to
    the fds the runtime opened for it before the sandbox started. Found by rewriting bwrap's init
    through /proc/1/mem to write 128 MiB to its stdout, a log file on the host's disk then, outside
    every limit: any sandbox could fill the host's disk. Fixed by putting the log on the sandbox's
    own disk image (a flood stopped at the disk limit); since the agent zygote, pid 1 is a sleep
    that holds only /dev/null (the log is the agent's, which is not dumpable), so root finds
    nothing to hijack or reopen. Twin: the flood ran through every fd of pid 1 (128 MiB each)."""
    sid = new_sandbox(api, disk_mb=64, timeout=120)
    try:
        outside = {p: p.stat().st_size for p in sandbox_dir(server, sid).iterdir() if p.is_file()}
        log = disk_mount(server, sid) / "runtime.log"
        logged = log.stat().st_size
        put(api, sid, "/tmp/flood.py", FLOOD)
        if GVISOR:  # pid 1 is the non-dumpable agent itself: its memory stays closed, nothing is written
            r = run_command(api, sid, "python3 -c 'import os; os.open(\"/proc/1/mem\", os.O_RDWR)'", user="root")
            assert r.exit_code != 0 and "PermissionError" in r.stderr, r
            assert log.stat().st_size < 1 << 20
            assert {p: p.stat().st_size for p in outside} == outside
            assert run_command(api, sid, "echo alive").stdout == "alive\n"
            return
        r = run_command(api, sid, "python3 /tmp/flood.py", user="root", timeout=60)
        held = r.stdout.splitlines()[0]
        assert held == str(["/dev/null"] * 3), r  # stdin, stdout, stderr; nothing else
        assert f"written: {3 * 128 << 20}" in r.stdout, r
        assert log.stat().st_size == logged
        for path, size in outside.items():
            assert path.stat().st_size == size, f"{path} grew"
        assert run_command(api, sid, "echo alive").stdout == "alive\n"
    finally:
        assert api.delete(f"/v1/sandboxes/{sid}").status_code == 204
    assert leftovers_of(server, sid) == []


def test_agent_memory_is_closed_to_sandbox_root(api: httpx.Client, sandbox: str) -> None:
    """Attack (found and fixed): sandbox root opens the agent's /proc/<pid>/mem to rewrite it (it
    has the agent's uid and capabilities). The agent was dumpable until its first file operation
    as another user; now it makes itself non-dumpable at start. Checked on a fresh sandbox before
    any other file operation. Twin: root can open the memory of a process of its own."""
    ran = run_command(api, sandbox, f"exec 3</proc/{AGENT_PID}/mem && echo agent-open; sleep 60 & "
                      "exec 4</proc/$!/mem && echo own-open; kill %1", user="root")
    assert "agent-open" not in ran.stdout and "Permission denied" in ran.stderr
    assert "own-open" in ran.stdout
