"""Attacks on the host's files: through the files APIs (native and envd) and from code inside.

Every path a caller names must resolve inside the sandbox (the agent resolves it in the sandbox's
mount namespace); a sandbox must never read or write a host file, nor change the template layers
it shares with other sandboxes. Each test plants host files the sandbox must not reach and checks
them afterwards, and has an "allowed" twin showing the same path form works for sandbox files.
"""

from __future__ import annotations

import itertools
import os
import secrets
import stat
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sandbox_probe import (
    digest,
    disk_mount,
    e2b_sandbox,
    envd,
    host_absent,
    host_file,
    host_pids,
    probe_json,
    put,
    run_python,
    sandbox_dir,
    sandboxes,
)

from conftest import TEMPLATES, TEST_BACKEND, Server, run_command

HOST_SECRET = "host secret " + secrets.token_hex(8)
GVISOR = TEST_BACKEND == "gvisor"  # where gVisor differs by design, each backend's side is asserted (docs/gvisor.md)
AGENT = 1 if GVISOR else 2  # the agent's pid (under bwrap, bwrap's init is 1)
# Ways of spelling "the host path P" that a careless join, a /proc magic link or a symlink could
# resolve on the host; each is suffixed with the absolute host path.
PREFIXES = (
    "", "/../../../..", "/proc/self/root", "/proc/1/root", f"/proc/{AGENT}/root", f"/proc/{AGENT}/cwd/../../..",
    "/proc/self/fd/../../1/root", "/.corral/rt/../..", "/.corral/rt", "/home/user/l-root", "/home/user/l-proc",
    "/home/user/l-rel",
)
LINKS = (
    "ln -sfn / /home/user/l-root; ln -sfn /proc/1/root /home/user/l-proc; ln -sfn ../../../../../.. /home/user/l-rel"
)


@pytest.fixture
def e2b_box(api: httpx.Client) -> Iterator[tuple[str, str]]:
    """A second sandbox, made through the E2B control plane: (id, envd access token)."""
    sandbox_id, token = e2b_sandbox(api)
    yield sandbox_id, token
    api.delete(f"/v1/sandboxes/{sandbox_id}")


def _files(api: httpx.Client, sandbox_id: str, path: str, user: str) -> httpx.Response:
    return api.get(f"/v1/sandboxes/{sandbox_id}/files", params={"path": path, "user": user})


def test_reads_of_host_paths_resolve_inside_the_sandbox(api: httpx.Client, server: Server, sandbox: str,
                                                       e2b_box: tuple[str, str]) -> None:
    """Attack: read a host file (/root/<secret>, a file in the server's data dir) through the native
    files API (read, stat, list) and envd's GET /files, spelled with `..`, /proc/<pid>/root and cwd
    magic links, the agent's runtime bind, and symlinks planted inside. Every spelling must answer
    "no such file" (or permission denied) and never the host bytes. Twin: the same spellings reach a
    file the sandbox made at that path."""
    sid_envd, token = e2b_box
    with host_file("/root", HOST_SECRET) as secret, envd(server, sid_envd, **{"X-Access-Token": token}) as e:
        for sid in (sandbox, sid_envd):
            assert run_command(api, sid, LINKS, user="root").exit_code == 0
        data_file = server.data_dir / "corral.db"
        for prefix in PREFIXES:
            for target in (secret, data_file):
                path = f"{prefix}{target}"
                for user in ("user", "root"):
                    r = _files(api, sandbox, path, user)
                    assert r.status_code in (400, 404), (path, user, r.status_code)
                    assert HOST_SECRET not in r.text and "SQLite" not in r.text
                    st = api.get(f"/v1/sandboxes/{sandbox}/files/stat", params={"path": path, "user": user})
                    assert st.status_code in (400, 404), (path, st.text)
                    listed = api.get(f"/v1/sandboxes/{sandbox}/files/list",
                                     params={"path": f"{prefix}/root", "user": user})
                    assert secret.name not in listed.text
                    got = e.get("/files", params={"path": path, "username": user})
                    assert got.status_code in (400, 403, 404), (path, user, got.status_code)
                    assert HOST_SECRET not in got.text and "SQLite" not in got.text
        # Twin: the sandbox puts its own file at the secret's path; every spelling now finds it.
        for sid in (sandbox, sid_envd):
            put(api, sid, str(secret), "inside", user="root")
        for prefix in PREFIXES:
            if prefix == "/.corral/rt":
                continue  # the template's rootfs, read-only: the file is not there
            assert _files(api, sandbox, f"{prefix}{secret}", "root").text == "inside", prefix
            assert e.get("/files", params={"path": f"{prefix}{secret}", "username": "root"}).text == "inside"
        assert secret.read_text() == HOST_SECRET


def test_writes_to_host_paths_land_inside_the_sandbox(api: httpx.Client, server: Server, sandbox: str,
                                                      e2b_box: tuple[str, str]) -> None:
    """Attack: create, overwrite, move onto and delete host files through the files APIs (PUT,
    mkdir, move, DELETE, envd's POST /files raw and multipart with a `../` filename), spelled every
    way of PREFIXES, as root. The host files must be unchanged and no new host path may appear.
    Twin: each write is found inside the sandbox at the path it named."""
    run_command(api, sandbox, LINKS, user="root")
    sid_envd, token = e2b_box
    run_command(api, sid_envd, LINKS, user="root")
    base = f"/v1/sandboxes/{sandbox}/files"
    with host_file("/tmp", HOST_SECRET) as victim, host_absent("/tmp") as fresh, host_absent("/tmp") as fresh_dir:
        before = (victim.stat().st_mtime_ns, victim.read_text())
        for prefix in PREFIXES:
            if prefix == "/.corral/rt":
                continue
            for path, body in ((f"{prefix}{victim}", b"owned"), (f"{prefix}{fresh}", b"new")):
                assert api.put(base, params={"path": path, "user": "root"}, content=body).status_code == 200
            r = api.post(f"{base}/mkdir", json={"path": f"{prefix}{fresh_dir}/sub", "user": "root"})
            assert r.status_code == 200, r.text
            put(api, sandbox, "/tmp/to-move", "moved", user="root")
            r = api.post(f"{base}/move", json={"src": "/tmp/to-move", "dst": f"{prefix}{fresh}.moved", "user": "root"})
            assert r.status_code == 200, r.text
            with envd(server, sid_envd, **{"X-Access-Token": token}) as e:
                raw = e.post("/files", params={"path": f"{prefix}{victim}", "username": "root"}, content=b"owned",
                             headers={"Content-Type": "application/octet-stream"})
                assert raw.status_code == 200, raw.text
                part = {"file": (f"../../../../..{fresh}", b"multipart", "application/octet-stream")}
                assert e.post("/files", params={"username": "root"}, files=part).status_code == 200
            # Twin: all of it is inside the sandbox.
            assert _files(api, sandbox, str(victim), "root").text == "owned"
            assert _files(api, sandbox, f"{fresh}.moved", "root").text == "moved"
            assert api.get(f"{base}/stat", params={"path": f"{fresh_dir}/sub", "user": "root"}).json()["type"] == "dir"
            assert api.delete(base, params={"path": f"{prefix}{victim}", "user": "root"}).status_code == 204
            assert (victim.stat().st_mtime_ns, victim.read_text()) == before
        assert _files(api, sid_envd, str(fresh), "root").text == "multipart"
        assert not fresh.exists() and not fresh_dir.exists() and not Path(f"{fresh}.moved").exists()


SWAPPER = """
    import os, sys
    link, targets, stop = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
    keep = sys.argv[4] if len(sys.argv) > 4 else ""  # the link's target: an API write through the link
    tmp = link + ".swap"                               # replaces it, so it is planted again (atomically)
    swaps = 0
    while not os.path.exists(stop):
        if keep:
            try:
                with open(keep) as f:
                    stale = f.read() != "inside"
                if stale:
                    with open(keep + ".plant", "w") as f:
                        f.write("inside")
                    os.rename(keep + ".plant", keep)
            except OSError:
                pass
        for target in targets:
            if target == "FILE":
                with open(tmp, "w") as f:
                    f.write("plain")
            else:
                os.symlink(target, tmp)
            os.rename(tmp, link)
            swaps += 1
    print(swaps)
"""


def test_symlink_swaps_racing_file_calls_never_reach_the_host(api: httpx.Client, server: Server,
                                                              e2b_box: tuple[str, str]) -> None:
    """Attack: a process inside swaps a path between a plain file and a symlink to a host path
    (and a parent directory between two symlinks, one to /tmp) as fast as it can, while the API
    reads and writes that path in a loop (native API and envd), hoping a check-then-use on the
    host side follows the link outside. No read may ever return the host file's bytes, the host
    file must be untouched. Twin: both outcomes of the race (the plain file, and the file the link
    names inside the sandbox) are observed, so the race was real."""
    sandbox, token = e2b_box
    with host_file("/tmp", HOST_SECRET) as victim:
        before = (victim.stat().st_mtime_ns, victim.read_text())
        put(api, sandbox, str(victim), "inside", user="root")  # the sandbox's own file at the host path
        run_command(api, sandbox, f"chmod 666 {victim}; mkdir -p /home/user/real; echo -n plain-dir > "
                    f"/home/user/real/{victim.name}; chown -R user /home/user/real", user="root")
        put(api, sandbox, "/tmp/swapper.py", textwrap.dedent(SWAPPER), user="root")
        swappers = (("/home/user/race", f"FILE,{victim}", str(victim)), ("/home/user/rdir", "/home/user/real,/tmp", ""))
        for link, targets, keep in swappers:
            started = run_command(api, sandbox, f"nohup python3 /tmp/swapper.py {link} {targets} /tmp/stop {keep} "
                                  ">/dev/null 2>&1 &", user="user")
            assert started.exit_code == 0
        file_path, dir_path = "/home/user/race", f"/home/user/rdir/{victim.name}"
        seen: dict[str, set[str]] = {file_path: set(), dir_path: set()}
        # each path's two sides: what only the plain side holds, and what only the linked side can hold
        # (the sandbox's file at the host path, planted again after a write through the link replaced
        # it, or the api-write that a write through the directory link put there)
        sides = {file_path: ({"plain"}, {"inside"}), dir_path: ({"plain-dir"}, {"inside", "api-write"})}

        def both_sides_seen() -> bool:
            return all(plain & seen[p] and linked & seen[p] for p, (plain, linked) in sides.items())

        with envd(server, sandbox, **{"X-Access-Token": token}) as e:
            give_up = time.monotonic() + 120  # the race's outcomes are random: slower hosts need more rounds
            for i in itertools.count():
                if time.monotonic() > give_up:
                    break
                for path in (file_path, dir_path):
                    native = _files(api, sandbox, path, "user")
                    remote = e.get("/files", params={"path": path, "username": "user"})
                    for r in (native, remote):
                        assert HOST_SECRET not in r.text
                        if r.status_code == 200:
                            seen[path].add(r.text)
                if i % 4 == 0:  # writes race too (only the file: the directory's content stays as planted)
                    api.put(f"/v1/sandboxes/{sandbox}/files", params={"path": file_path, "user": "user"},
                            content=b"api-write")
                    e.post("/files", params={"path": file_path, "username": "user"}, content=b"api-write",
                           headers={"Content-Type": "application/octet-stream"})
                if i >= 50 and both_sides_seen():
                    break
        put(api, sandbox, "/tmp/stop", "")
        assert (victim.stat().st_mtime_ns, victim.read_text()) == before
        assert both_sides_seen(), seen


def test_links_cannot_reach_host_or_template_files(api: httpx.Client, server: Server, sandbox: str) -> None:
    """Attack: as sandbox root, hard-link the agent's runtime (the base template's rootfs on the
    host, bound read-only) and template files, write through the links, chmod/chown/truncate
    template files, and write into /.corral. The host's template files must keep their bytes and
    modes, and a second sandbox from the same template must see the originals. Twin: hard links
    of the sandbox's own files work, and the sandbox sees its own changed copies."""
    rootfs = TEMPLATES / "base" / "rootfs"
    victims = {p: (digest(rootfs / p), (rootfs / p).stat().st_mode) for p in ("usr/bin/env", "etc/passwd")}
    result = probe_json(api, sandbox, """
        import errno, json, os
        out = {}
        def attempt(name, fn):
            try:
                fn(); out[name] = "ok"
            except OSError as e:
                out[name] = errno.errorcode[e.errno]
        attempt("link_runtime", lambda: os.link("/.corral/rt/usr/bin/env", "/tmp/rt-env"))
        attempt("write_runtime", lambda: open("/.corral/rt/usr/bin/env", "ab").write(b"x"))
        attempt("create_in_runtime", lambda: open("/.corral/rt/owned", "w").write("x"))
        attempt("write_agent_code", lambda: open("/.corral/lib/corral_agent/server.py", "a").write("#"))
        attempt("link_template", lambda: os.link("/usr/bin/env", "/tmp/env-link"))
        # gVisor's gofer refuses a hard link to a lower (template) file: EXDEV; then write it directly
        link = "/tmp/env-link" if out["link_template"] == "ok" else "/usr/bin/env"
        attempt("write_via_link", lambda: open(link, "ab").write(b"appended"))
        attempt("truncate_template", lambda: os.truncate("/etc/passwd", 0))
        attempt("chmod_template", lambda: os.chmod("/usr/bin/env", 0o4777))
        attempt("chown_template", lambda: os.chown("/usr/bin/env", 1000, 1000))
        open("/tmp/mine", "w").write("mine")
        attempt("link_own", lambda: os.link("/tmp/mine", "/tmp/mine-2"))
        out["own_copy_changed"] = open("/usr/bin/env", "rb").read().endswith(b"appended")
        out["passwd_size"] = os.path.getsize("/etc/passwd")
        print(json.dumps(out))
    """, user="root")
    assert result["link_runtime"] == "EXDEV"  # another mount: no link into the host's rootfs
    assert result["write_runtime"] == result["create_in_runtime"] == "EROFS"
    assert result["write_agent_code"] in ("EROFS", "EACCES")  # host root's file: not even the permission
    # Twin: the overlay copies template files up first; the sandbox changes only its own copy.
    assert result["link_template"] == ("EXDEV" if GVISOR else "ok")
    assert result["write_via_link"] == result["link_own"] == "ok"
    assert result["truncate_template"] == result["chmod_template"] == result["chown_template"] == "ok"
    assert result["own_copy_changed"] and result["passwd_size"] == 0
    for path, (sha, mode) in victims.items():
        assert (digest(rootfs / path), (rootfs / path).stat().st_mode) == (sha, mode), path
    with sandboxes(api, 1) as (other,):
        mode = "python3 -c 'import os; print(oct(os.stat(\"/usr/bin/env\").st_mode & 0o7777)[2:])'"
        r = run_command(api, other, f"{mode}; wc -c < /etc/passwd; tail -c 8 /usr/bin/env")
        assert r.stdout.split("\n")[0] == "755" and int(r.stdout.split("\n")[1]) > 0
        assert "appended" not in r.stdout


def test_smuggled_device_nodes_cannot_be_opened(api: httpx.Client, server: Server, sandbox: str) -> None:
    """Attack: a device node in the sandbox's filesystem (as a template layer or a bug could plant
    one; sandbox root cannot mknod one itself, see test_attacks_kernel) naming the host's root
    disk, mode 0666: root inside tries to read the raw host disk through it. The root is mounted
    nodev, so opening it must fail. Twin: /dev/null works, and so does a FIFO planted the same way."""
    upper = disk_mount(server, sandbox) / "upper"
    name = f"corral-dev-{secrets.token_hex(4)}"
    host_disk = os.stat("/").st_dev
    os.mknod(upper / name, 0o666 | stat.S_IFBLK, host_disk)
    os.mknod(upper / f"{name}.chr", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mkfifo(upper / f"{name}.fifo", 0o666)
    for planted in (name, f"{name}.chr", f"{name}.fifo"):
        os.chmod(upper / planted, 0o666)  # so only the mount's nodev can refuse the open
    for user in ("root", "user"):
        result = probe_json(api, sandbox, f"""
            import errno, json, os, stat
            out = {{}}
            for path in ("/{name}", "/{name}.chr", "/{name}.fifo", "/dev/null"):
                try:
                    mode = os.stat(path).st_mode
                    out[path + ":is_device"] = stat.S_ISBLK(mode) or stat.S_ISCHR(mode)
                except OSError as e:  # gone, or refused (gVisor's gofer will not serve a device)
                    out[path + ":is_device"] = errno.errorcode[e.errno]
                try:
                    os.close(os.open(path, os.O_RDWR | os.O_NONBLOCK)); out[path] = "ok"
                except OSError as e:
                    out[path] = errno.errorcode[e.errno]
            print(json.dumps(out))
        """, user=user)
        assert result["/dev/null"] == "ok"
        if GVISOR:
            # Not seen (if the sentry cached the root dir before they were planted) or refused by the
            # gofer: the host's disk never opens. A character device is the sentry's own device of
            # that number (gVisor opens no host device node; 1:3 is its /dev/null), like the twin.
            assert result[f"/{name}"] in {"ENOENT", "EPERM"}, result
            assert result[f"/{name}.chr"] in {"ENOENT", "EPERM", "ok"}, result
            assert result[f"/{name}.fifo"] in {"ENOENT", "EPERM", "ok"}, result
            continue
        assert result[f"/{name}:is_device"] and result[f"/{name}.chr:is_device"]  # the nodes are there…
        assert result[f"/{name}"] == "EACCES" and result[f"/{name}.chr"] == "EACCES"  # …and dead (nodev)
        assert result[f"/{name}.fifo"] == "ok"


def test_setuid_binaries_give_no_root(api: httpx.Client, server: Server, sandbox: str) -> None:
    """Attack: sandbox root plants a setuid-root python and a setgid copy; `user` runs them to
    become sandbox root, and the file on the host is checked to be no host-root setuid binary.
    The sandbox root is mounted nosuid and every process has no_new_privs: `user` stays uid 1000.
    Twin: root running the same binary is root (the binary works)."""
    setup = run_command(api, sandbox, "cp /usr/bin/python3 /opt/suid-py && chmod 6755 /opt/suid-py", user="root")
    assert setup.exit_code == 0, setup.stderr
    # no_new_privs through prctl (gVisor's /proc/self/status has no NoNewPrivs line)
    code = "import ctypes, os; print(os.geteuid(), os.getegid(), ctypes.CDLL(None).prctl(39, 0, 0, 0, 0))"
    as_user = run_command(api, sandbox, f'/opt/suid-py -c "{code}"', user="user")
    assert as_user.stdout.split() == ["1000", "1000", "1"], as_user.stdout + as_user.stderr
    as_root = run_command(api, sandbox, f'/opt/suid-py -c "{code}"', user="root")
    assert as_root.stdout.split() == ["0", "0", "1"]
    on_host = (disk_mount(server, sandbox) / "upper" / "opt" / "suid-py").stat()  # not /tmp: a tmpfs on gVisor
    assert on_host.st_mode & stat.S_ISUID and on_host.st_uid == 1_000_000  # setuid to an unused host id


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def test_sandbox_processes_hold_no_host_files(api: httpx.Client, server: Server, sandbox: str) -> None:
    """Attack: look for file descriptors inherited from the host side (an open host file, directory
    or socket would be reachable through /proc/<pid>/fd by sandbox root). From the host, every fd
    of every process of the sandbox (bwrap, the agent, a user process) is checked: files must live
    on the sandbox's own overlay or disk image (the runtime log is there), devices must be the
    harmless /dev ones, and host-network sockets only the agent's listener and its connections.
    Twin: the agent's listener is found (the audit sees what it should)."""
    run_command(api, sandbox, "nohup sleep 600 >/dev/null 2>&1 &", user="user")
    if GVISOR:
        # Sandbox processes are no host processes of their own: the sentry runs them over ptrace stubs
        # that share its fd table and whose every syscall it serves. On the host: runsc (root), which
        # only waits, and its gofer and sentry, each the sandbox root's host id in the sandbox's user
        # namespace, under seccomp with no_new_privs (docs/gvisor.md).
        pids = host_pids(sandbox)
        owners = {os.stat(f"/proc/{pid}").st_uid for pid in pids}
        assert owners == {0, 1_000_000}, owners
        confined = [_status(pid) for pid in pids if os.stat(f"/proc/{pid}").st_uid == 1_000_000]
        assert confined and all(s["NoNewPrivs"] == "1" and s["Seccomp"] == "2" for s in confined), confined
        assert not [p for p in pids if Path(f"/proc/{p}/comm").read_text().strip() == "sleep"]
        return
    # the detached sleep may still be in exec (its loader holds libc open): wait until it settled
    deadline = time.monotonic() + 10
    while not any(Path(f"/proc/{p}/comm").read_text().strip() == "sleep" and len(os.listdir(f"/proc/{p}/fd")) <= 3
                  for p in host_pids(sandbox) if Path(f"/proc/{p}").exists()):
        assert time.monotonic() < deadline, "the sleep never settled"
        time.sleep(0.01)  # polling another process's exec, not synchronising with the server
    root_dev = os.stat(server.data_dir).st_dev  # the host's filesystem
    overlay = next(Path(f"{server.data_dir}.run").glob(f"*/{sandbox}"))
    allowed_devs = {os.stat(disk_mount(server, sandbox)).st_dev, os.stat(overlay).st_dev}
    agent_sock = str(sandbox_dir(server, sandbox) / "agent.sock")
    host_unix = {}
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        parts = line.split()
        host_unix[parts[6]] = parts[7] if len(parts) > 7 else ""
    harmless = {(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2)}
    listener_seen = False
    for pid in host_pids(sandbox):
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in os.listdir(fd_dir):
            try:
                link = os.readlink(fd_dir / fd)
                st = os.stat(fd_dir / fd)
            except FileNotFoundError:
                continue
            where = f"{comm}[{pid}] fd {fd} -> {link}"
            if link.startswith(("pipe:", "anon_inode:")):
                continue
            if link.startswith("socket:"):
                inode = link[len("socket:["):-1]
                if inode in host_unix:  # a socket of the host's network namespace
                    # the agent (named corral-agent when forked from the zygote)
                    agent = comm == "corral-agent" or comm.startswith("ld-linux")
                    assert agent and host_unix[inode] in (agent_sock, ""), where
                    listener_seen |= host_unix[inode] == agent_sock
                continue
            if stat.S_ISCHR(st.st_mode):
                major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
                assert (major, minor) in harmless or 136 <= major <= 143, where
                continue
            assert st.st_dev in allowed_devs and st.st_dev != root_dev, where
    assert listener_seen


def test_other_sandboxes_files_and_template_writes_stay_apart(api: httpx.Client, server: Server) -> None:
    """Attack: sandbox A guesses where B's files live (B's id, the host's sandbox and mount dirs,
    /proc/<n>/root for every pid) and reads/writes there through its own files API and its code;
    and a change A makes to a template file must not show in B. Twin: each sees its own file."""
    with sandboxes(api, 2) as (a, b):
        put(api, b, "/tmp/b-secret", "b's secret", user="root")
        put(api, a, "/tmp/a-own", "a's own", user="root")
        tries = [
            "/tmp/b-secret", f"{sandbox_dir(server, b)}/disk/upper/tmp/b-secret",
            f"{server.data_dir}.run/{b}/tmp/b-secret", *[f"/proc/{n}/root/tmp/b-secret" for n in range(1, 40)],
        ]
        for path in tries:
            r = _files(api, a, path, "root")
            assert "b's secret" not in r.text, path
        out = run_python(api, a, f"""
            import glob, os
            hits = glob.glob("/proc/*/root/tmp/b-secret") + glob.glob("/proc/*/cwd/tmp/b-secret")
            print(hits, os.path.exists({tries[1]!r}), os.path.exists({tries[2]!r}))
        """, user="root")
        assert out.stdout.split() == ["[]", "False", "False"], out.stdout + out.stderr
        assert _files(api, b, "/tmp/b-secret", "root").text == "b's secret"
        assert _files(api, a, "/tmp/a-own", "root").text == "a's own"


@pytest.mark.parametrize("user", ["user", "root"])
def test_agent_socket_is_unreachable_from_inside(api: httpx.Client, sandbox: str, user: str) -> None:
    """Attack: reach the agent's listening socket (which serves root's operations) from inside: by
    every unix socket path listed in /proc/net/unix, by reopening the agent's fds through
    /proc/<agent>/fd, or by abstract names. `user` must not reach it (it would be sandbox root
    through the agent); root gains nothing either. Twin: a socket the sandbox binds itself works."""
    result = probe_json(api, sandbox, """
        import errno, json, os, socket
        out = {"connected": [], "errors": []}
        paths = set()
        for line in open("/proc/net/unix").read().splitlines()[1:]:
            parts = line.split()
            if len(parts) > 7:
                paths.add(parts[7])
        for fd in ("18", "3", "4", "5"):
            paths.add("/proc/2/fd/" + fd)
        for path in sorted(paths):
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(path.replace("@", "\\0", 1) if path.startswith("@") else path)
                out["connected"].append(path)
            except OSError as e:
                out["errors"].append(errno.errorcode.get(e.errno, str(e.errno)))
            finally:
                s.close()
        own = socket.socket(socket.AF_UNIX)
        own.bind("/tmp/own.sock"); own.listen(1)
        c = socket.socket(socket.AF_UNIX); c.connect("/tmp/own.sock")
        out["own"] = "ok"
        print(json.dumps(out))
    """, user=user)
    assert result["connected"] == [], result
    assert result["own"] == "ok"


def test_modules_planted_in_the_sandbox_root_never_run_in_the_agent(api: httpx.Client, sandbox: str) -> None:
    """Attack: sandbox root plants `/shutil.py` and `/traceback.py` (the sandbox's `/` is the agent's
    cwd) and then makes the agent import them late: removing a directory and moving a file need
    `shutil`, a failing operation may format a traceback. The planted code must never run (it
    would write a marker as the agent). Twin: the operations work."""
    marker = f"/tmp/agent-hijacked-{secrets.token_hex(4)}"
    for module in ("shutil", "traceback"):
        put(api, sandbox, f"/{module}.py", f"open({marker!r}, 'w').write('ran')\n", user="root")
    run_command(api, sandbox, "mkdir -p /tmp/d/e && touch /tmp/d/e/f /tmp/g", user="root")
    base = f"/v1/sandboxes/{sandbox}/files"
    assert api.delete(base, params={"path": "/tmp/d", "user": "root"}).status_code == 204
    r = api.post(f"{base}/move", json={"src": "/tmp/g", "dst": "/tmp/h", "user": "root"})
    assert r.status_code == 200, r.text
    ran = run_command(api, sandbox, f"echo /tmp/*; test -e {marker} && echo hijacked || echo clean", user="root")
    assert ran.stdout.split() == ["/tmp/h", "clean"], ran.stdout
    # nor in the agent's own import dir (first on its sys.path): read-only for sandbox root
    r = api.put(f"{base}", params={"path": "/.corral/lib/shutil.py", "user": "root"}, content=b"planted")
    assert r.status_code >= 400, r.text
    ran = run_command(api, sandbox, "for d in /.corral /.corral/lib; do touch $d/shutil.py || echo refused; done; "
                      "mv /.corral /.c2 || echo refused", user="root")
    assert ran.stdout.split() == ["refused"] * 3, ran.stdout + ran.stderr


NSS_MODULE = r"""
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
__attribute__((constructor)) static void mark(void) {
    char comm[64] = {0}, path[160];
    int fd = open("/proc/self/comm", O_RDONLY);
    if (fd >= 0) { if (read(fd, comm, sizeof comm - 1) < 0) comm[0] = 0; close(fd); }
    comm[strcspn(comm, "\n")] = 0;
    snprintf(path, sizeof path, "/tmp/nss-marks/%d-%s", (int)getpid(), comm);
    fd = open(path, O_WRONLY | O_CREAT, 0666);
    if (fd >= 0) close(fd);
}
"""


def test_an_nss_module_the_sandbox_names_never_loads_in_the_agent(
    api: httpx.Client, sandbox: str, tmp_path: Path
) -> None:
    """Attack: sandbox root names a library of its own in `/etc/nsswitch.conf` (NSS loads
    `libnss_<name>.so.2` into whoever looks a user up) and then makes the agent look users and
    groups up: a changed `/etc/passwd`, a command and a file written as `user`, a listing that names
    the owners of files. The agent reads passwd and group itself, so the library must never load in
    it (it would leave a mark named by its pid). Twin: the library loads in the sandbox's own `id`."""
    source = tmp_path / "nss.c"
    source.write_text(NSS_MODULE)
    library = tmp_path / "libnss_corralx.so.2"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    put(api, sandbox, "/tmp/libnss_corralx.so.2", library.read_bytes())
    planted = run_command(api, sandbox, textwrap.dedent("""\
        set -e
        mkdir -m 1777 /tmp/nss-marks
        for d in /lib/*-linux-gnu /usr/lib/*-linux-gnu; do cp /tmp/libnss_corralx.so.2 "$d/"; done
        sed -i 's/^passwd:.*/passwd: corralx files/; s/^group:.*/group: corralx files/' /etc/nsswitch.conf
        echo 'other:x:1234:1234::/tmp:/bin/sh' >> /etc/passwd
        echo 'others:x:1234:user' >> /etc/group
        chown 1234:1234 /tmp/nss-marks
    """), user="root")
    assert planted.exit_code == 0, planted.stderr
    ran = run_command(api, sandbox, "id -G", user="user")  # the agent looks `user` up again
    assert ran.exit_code == 0 and "1234" in ran.stdout.split(), ran.stdout  # group read from the new file
    put(api, sandbox, "/home/user/note", "x", user="user")
    listed = api.get(f"/v1/sandboxes/{sandbox}/files/list", params={"path": "/tmp", "user": "user"})
    assert listed.status_code == 200, listed.text
    owners = {e["name"]: (e["owner"], e["group"]) for e in listed.json()}
    assert owners["nss-marks"] == ("other", "others")  # names from the sandbox's own files
    twin = run_command(api, sandbox, "id other >/dev/null; ls /tmp/nss-marks", user="root")
    marks = twin.stdout.split()
    assert any(m.endswith("-id") for m in marks), marks  # the planted module works in the sandbox
    assert not any(m.startswith(f"{AGENT}-") or "corral" in m for m in marks), marks
