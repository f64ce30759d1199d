"""Commands through the REST API: output, exit codes, streaming, env, users, stdin, signals, timeouts."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import httpx

from conftest import run_command


def test_stdout_stderr_and_exit_code(run, sandbox: str) -> None:  # type: ignore[no-untyped-def]
    r = run(sandbox, "echo out; echo err >&2; exit 3")
    assert (r.stdout, r.stderr, r.exit_code, r.error) == ("out\n", "err\n", 3, None)
    assert r.events[0]["type"] == "start" and isinstance(r.events[0]["pid"], int)


def test_the_everyday_file_tools_work(run, sandbox: str) -> None:  # type: ignore[no-untyped-def]
    """ls, stat, cp, mv: coreutils passes AT_NO_AUTOMOUNT to statx, which Debian 12's runsc refused
    (EINVAL) until gVisor sandboxes got the stat fix-up (docs/gvisor.md)."""
    r = run(sandbox, "ls / && ls -la /home/user > /dev/null && stat -c '%F %U' /home/user "
                     "&& cp /etc/hostname /tmp/h && mv /tmp/h /tmp/h2 && ls -l /tmp/h2 | cut -c1")
    assert r.exit_code == 0, r.stderr
    listing = r.stdout.splitlines()
    assert {"etc", "home", "tmp", "usr"} <= set(listing) and listing[-2:] == ["directory user", "-"]
    r = run(sandbox, "stat -c %s /", user="root")
    assert r.exit_code == 0 and r.stdout.strip().isdigit(), r.stderr


def test_envs_cwd_and_user(api: httpx.Client, run) -> None:  # type: ignore[no-untyped-def]
    sid = api.post("/v1/sandboxes", json={"envs": {"A": "1", "B": "sandbox"}, "timeout": 60}).json()["id"]
    try:
        r = run(sid, 'echo "$A $B $C"; pwd; whoami; echo $HOME', envs={"B": "call", "C": "3"})
        assert r.stdout.splitlines() == ["1 call 3", "/home/user", "user", "/home/user"]
        r = run(sid, "whoami; pwd", user="root", cwd="/tmp")
        assert r.stdout.splitlines() == ["root", "/tmp"]
        r = api.post(f"/v1/sandboxes/{sid}/commands", json={"cmd": "pwd", "cwd": "/nonexistent"})
        assert r.status_code == 400 and "/nonexistent" in r.json()["message"]
        r = api.post(f"/v1/sandboxes/{sid}/commands", json={"cmd": "pwd", "user": "nobody-here"})
        assert r.status_code == 400 and "nobody-here" in r.json()["message"]
    finally:
        api.delete(f"/v1/sandboxes/{sid}")


def test_a_cwd_the_user_cannot_enter_is_refused_on_every_call(api: httpx.Client, run) -> None:  # type: ignore[no-untyped-def]
    """The cwd is entered as the command's user (as E2B's envd enters it): a sandbox's first command as
    a user (started by corral-tools exec-as) and its later ones (from the user's spawner) agree."""
    sid = api.post("/v1/sandboxes", json={"timeout": 60}).json()["id"]
    try:
        for _ in range(2):
            r = api.post(f"/v1/sandboxes/{sid}/commands", json={"cmd": "pwd", "cwd": "/root"})
            assert r.status_code == 400 and "Permission denied: /root" in r.json()["message"], r.text
            assert run(sid, "pwd", cwd="/tmp").stdout == "/tmp\n"
        assert run(sid, "pwd", cwd="/root", user="root").stdout == "/root\n"
    finally:
        api.delete(f"/v1/sandboxes/{sid}")


def test_accounts_changed_inside_the_sandbox_apply_to_the_next_call(api: httpx.Client, run) -> None:  # type: ignore[no-untyped-def]
    """The agent remembers resolved users, but only while /etc/passwd and /etc/group stay as they were."""
    sid = api.post("/v1/sandboxes", json={"timeout": 120}).json()["id"]
    try:
        r = api.post(f"/v1/sandboxes/{sid}/commands", json={"cmd": "id", "user": "bob"})
        assert r.status_code == 400 and "bob" in r.json()["message"]
        assert run(sid, "useradd -m -s /bin/bash bob", user="root").exit_code == 0
        assert run(sid, "id -un; pwd", user="bob").stdout.splitlines() == ["bob", "/home/bob"]
        assert run(sid, "groupadd team && usermod -aG team bob && usermod -d /tmp bob", user="root").exit_code == 0
        assert run(sid, "id -Gn; pwd; touch made", user="bob").stdout.splitlines() == ["bob team", "/tmp"]
        made = api.get(f"/v1/sandboxes/{sid}/files/stat", params={"path": "made", "user": "bob"}).json()
        assert made["path"] == "/tmp/made" and made["owner"] == "bob", made
        assert run(sid, "userdel bob", user="root").exit_code == 0
        r = api.post(f"/v1/sandboxes/{sid}/commands", json={"cmd": "id", "user": "bob"})
        assert r.status_code == 400 and "bob" in r.json()["message"]
    finally:
        api.delete(f"/v1/sandboxes/{sid}")


def test_the_login_shell_sets_each_users_path_without_forking(run, sandbox: str) -> None:  # type: ignore[no-untyped-def]
    """Commands run in a login shell; /etc/profile picks root's PATH by bash's EUID instead of forking
    `id -u` (half the shell's start-up), root's ~/.profile forks no `mesg n`, and a plain sh login
    still gets the right PATH."""
    login = "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"
    root = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert run(sandbox, "echo $PATH").stdout.strip().endswith(login)
    assert run(sandbox, "echo $PATH", user="root").stdout.strip().endswith(root)
    assert run(sandbox, "env -i sh -lc 'echo $PATH'", user="root").stdout.strip() == root
    assert run(sandbox, "env -i sh -lc 'echo $PATH'").stdout.strip() == login
    traced = run(sandbox, "env -i bash -lxc true 2>&1")
    assert traced.exit_code == 0 and "id -u" not in traced.stdout, traced.stdout
    as_root = run(sandbox, "env -i HOME=/root bash -lxc true 2>&1", user="root")
    assert as_root.exit_code == 0 and ".bashrc" in as_root.stdout, as_root.stdout  # it read root's ~/.profile
    assert "mesg" not in as_root.stdout and "id -u" not in as_root.stdout, as_root.stdout


def test_output_is_streamed_as_produced(api: httpx.Client, sandbox: str) -> None:
    arrivals: list[tuple[float, str]] = []
    cmd = "for i in 1 2 3 4 5; do echo line$i; sleep 0.1; done"
    with api.stream("POST", f"/v1/sandboxes/{sandbox}/commands", json={"cmd": cmd}) as r:
        for line in r.iter_lines():
            event = json.loads(line)
            arrivals.append((time.monotonic(), event["type"]))
    stdout_times = [t for t, kind in arrivals if kind == "stdout"]
    exit_time = next(t for t, kind in arrivals if kind == "exit")
    assert len(stdout_times) == 5
    # each line arrives while the command is still running, ~100 ms apart
    assert exit_time - stdout_times[0] > 0.3
    assert all(b - a > 0.05 for a, b in itertools.pairwise(stdout_times))


def test_sse_when_asked(api: httpx.Client, sandbox: str) -> None:
    r = api.post(f"/v1/sandboxes/{sandbox}/commands", json={"cmd": "echo hi"},
                 headers={"Accept": "text/event-stream"})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events] == ["start", "stdout", "exit"]


def test_timeout_kills_a_process_that_ignores_sigterm(run, sandbox: str) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    r = run(sandbox, "trap '' TERM; sleep 30", timeout=1)
    assert time.monotonic() - started < 10
    assert r.exit_code == 137 and "timed out" in (r.error or "")


def test_background_process_stdin_list_and_signal(api: httpx.Client, sandbox: str) -> None:
    base = f"/v1/sandboxes/{sandbox}/commands"
    with api.stream("POST", base, json={"cmd": "cat", "stdin": True, "tag": "cat", "timeout": 0}) as r:
        lines = r.iter_lines()
        pid = json.loads(next(lines))["pid"]
        procs = api.get(base).json()
        assert any(p["pid"] == pid and p["tag"] == "cat" for p in procs)
        assert api.post(f"{base}/{pid}/stdin", json={"data": "hello\n"}).status_code == 204
        assert json.loads(next(lines)) == {"type": "stdout", "data": "hello\n"}
        assert api.post(f"{base}/{pid}/signal", json={"signal": "SIGTERM"}).status_code == 204
        exit_event = json.loads(next(lines))
    assert exit_event["type"] == "exit" and exit_event["exit_code"] == 128 + 15
    assert api.post(f"{base}/999999/signal", json={"signal": "KILL"}).status_code == 404
    assert api.post(f"{base}/1/signal", json={"signal": "NOPE"}).status_code == 400


def test_detached_process_keeps_running_and_can_be_attached(api: httpx.Client, sandbox: str) -> None:
    base = f"/v1/sandboxes/{sandbox}/commands"
    with api.stream("POST", base, json={"cmd": "read x; echo got $x", "stdin": True, "timeout": 0}) as r:
        pid = json.loads(next(r.iter_lines()))["pid"]
    # the first connection is gone; the process is still there
    assert any(p["pid"] == pid for p in api.get(base).json())
    with api.stream("GET", f"{base}/{pid}/stream") as r:
        lines = r.iter_lines()
        assert json.loads(next(lines))["type"] == "start"
        api.post(f"{base}/{pid}/stdin", json={"data": "42\n"})
        assert json.loads(next(lines)) == {"type": "stdout", "data": "got 42\n"}
        assert json.loads(next(lines))["exit_code"] == 0


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_output_flood_is_streamed_with_bounded_server_memory(api: httpx.Client, server, sandbox: str) -> None:  # type: ignore[no-untyped-def]
    peak_before = peak_rss_kib(server.process.pid)
    total = 0
    cmd = "head -c 67108864 /dev/zero | tr '\\0' 'x'"
    with api.stream("POST", f"/v1/sandboxes/{sandbox}/commands", json={"cmd": cmd, "timeout": 120}) as r:
        for line in r.iter_lines():
            event = json.loads(line)
            if event["type"] == "stdout":
                total += len(event["data"])
            last = event
    assert total == 64 * 1024 * 1024 and last["exit_code"] == 0
    grown_mib = (peak_rss_kib(server.process.pid) - peak_before) / 1024
    assert grown_mib < 32, f"server peak memory grew {grown_mib:.0f} MiB while streaming 64 MiB"


def test_utf8_split_across_chunks_arrives_whole(run, sandbox: str) -> None:  # type: ignore[no-untyped-def]
    r = run(sandbox, "printf '\\xc3'; sleep 0.2; printf '\\xa9\\n'")
    assert r.stdout == "é\n"


def test_commands_on_a_killed_sandbox_are_404(api: httpx.Client) -> None:
    sid = api.post("/v1/sandboxes", json={"timeout": 30}).json()["id"]
    api.delete(f"/v1/sandboxes/{sid}")
    r = api.post(f"/v1/sandboxes/{sid}/commands", json={"cmd": "true"})
    assert r.status_code == 404 and sid in r.json()["message"]


def test_many_sandboxes_in_parallel(server) -> None:  # type: ignore[no-untyped-def]
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> str:
        with server.client() as c:
            sid = c.post("/v1/sandboxes", json={"timeout": 120}).json()["id"]
            out = run_command(c, sid, f"echo sandbox-{i}").stdout
            assert c.delete(f"/v1/sandboxes/{sid}").status_code == 204
            return out

    with ThreadPoolExecutor(20) as pool:
        outs = list(pool.map(one, range(20)))
    assert outs == [f"sandbox-{i}\n" for i in range(20)]
