"""Template builds through the REST API: every instruction, the layer cache, failures, readiness.

Builds here start FROM base and need no network; each step is a real sandbox, each layer a real
overlay upper dir. The module's server is its own, so its layer cache starts empty.
"""

from __future__ import annotations

import io
import json
import os
import signal
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import (
    TEST_BACKEND,
    Server,
    corral_cgroups,
    make_data_dir,
    mounts_under,
    remove_data_dir,
    run_command,
    sandbox_init,
    sandbox_mounts,
    sandbox_processes,
    spare_dirs,
    start_server,
)


@pytest.fixture(scope="module")
def srv() -> Iterator[Server]:
    data = make_data_dir()
    server = start_server(data)
    yield server
    server.stop()
    assert mounts_under(data) == [] and corral_cgroups(data) == [] and sandbox_processes(data) == []
    remove_data_dir(data)


@pytest.fixture
def api(srv: Server) -> Iterator[httpx.Client]:
    with srv.client(timeout=120) as client:
        yield client


def context_tar(files: dict[str, str | bytes | tuple[str, str]]) -> bytes:
    """A gzip tar of ``files``: path → content, or ("symlink", target)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for path, content in files.items():
            info = tarfile.TarInfo(path)
            if isinstance(content, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, content[1]
                tar.addfile(info)
                continue
            data = content.encode() if isinstance(content, str) else content
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def submit(api: httpx.Client, name: str, dockerfile: str, files: dict[str, Any] | None = None,
           **options: Any) -> httpx.Response:
    body = {"name": name, "dockerfile": dockerfile, **options}
    if files is None:
        return api.post("/v1/templates", json=body)
    return api.post("/v1/templates", data={"build": json.dumps(body)},
                    files={"context": ("context.tar.gz", context_tar(files), "application/gzip")})


def follow(api: httpx.Client, build_id: str) -> list[dict[str, Any]]:
    with api.stream("GET", f"/v1/builds/{build_id}/logs") as r:
        assert r.status_code == 200
        return [json.loads(line) for line in r.iter_lines() if line]


def build(api: httpx.Client, name: str, dockerfile: str, files: dict[str, Any] | None = None,
          **options: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    r = submit(api, name, dockerfile, files, **options)
    assert r.status_code == 202, r.text
    events = follow(api, r.json()["id"])
    record = api.get(f"/v1/builds/{r.json()['id']}").json()
    return record, events


def ready(api: httpx.Client, name: str, dockerfile: str, files: dict[str, Any] | None = None,
          **options: Any) -> dict[str, Any]:
    record, events = build(api, name, dockerfile, files, **options)
    assert record["state"] == "ready", (record, events[-5:])
    return record


def sandbox(api: httpx.Client, template: str, **fields: Any) -> str:
    r = api.post("/v1/sandboxes", json={"template": template, "timeout": 120, **fields})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


# `stat -c '%U:%G %a %n'` of each path, in python
OWNERS = """
import grp, os, pwd, sys
for name in sys.argv[1:]:
    st = os.stat(name)
    print(f"{pwd.getpwuid(st.st_uid).pw_name}:{grp.getgrgid(st.st_gid).gr_name} {st.st_mode & 0o7777:o} {name}")
"""


def sh(api: httpx.Client, sandbox_id: str, cmd: str, **fields: Any) -> str:
    ran = run_command(api, sandbox_id, cmd, **fields)
    assert ran.exit_code == 0, (ran.stdout, ran.stderr)
    return ran.stdout


def kill(api: httpx.Client, sandbox_id: str) -> None:
    assert api.delete(f"/v1/sandboxes/{sandbox_id}").status_code == 204


# --- instructions ----------------------------------------------------------------------------------

def test_every_instruction_shapes_the_template(api: httpx.Client) -> None:
    dockerfile = """\
# a comment
FROM base
ARG FLAVOUR=plain
ARG WHO
ENV GREETING="hello world" \\
    FLAVOUR_SEEN=${FLAVOUR}
LABEL org.example.team=data version=1
EXPOSE 8080/tcp
WORKDIR /srv/app
COPY --chown=user:user --chmod=640 conf/*.ini ./conf/
COPY src/ ./src/
ADD bundle.tar ./bundle/
COPY <<EOF /etc/motd
made by $WHO
EOF
RUN ["/bin/sh", "-c", "echo exec-form > /srv/app/exec.txt"]
RUN <<SCRIPT
set -e
echo "$GREETING $WHO" > heredoc.txt
echo "$FLAVOUR" > flavour.txt
SCRIPT
USER user
ENTRYPOINT ["sleep"]
CMD ["300"]
"""
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w") as tar:
        data = b"inside the archive\n"
        info = tarfile.TarInfo("packed/readme.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    files = {
        "conf/a.ini": "a=1\n", "conf/b.ini": "b=2\n", "conf/skip.txt": "no\n", "src/main.py": "print('hi')\n",
        "src/secret.key": "hidden\n", ".dockerignore": "src/*.key\n", "bundle.tar": inner.getvalue(),
    }
    record = ready(api, "every-instruction", dockerfile, files, build_args={"FLAVOUR": "spicy", "WHO": "corral"})
    assert [s["state"] for s in record["steps"]] == ["done"] * len(record["steps"])
    info = api.get("/v1/templates/every-instruction").json()
    config = info["config"]
    assert config["env"]["GREETING"] == "hello world" and config["env"]["FLAVOUR_SEEN"] == "spicy"
    assert config["workdir"] == "/srv/app" and config["user"] == "user"
    assert config["labels"] == {"org.example.team": "data", "version": "1"}
    assert config["exposed_ports"] == ["8080/tcp"]
    assert config["start_cmd"] == ["sleep", "300"]
    assert info["builds"][0]["id"] == record["id"]

    sid = sandbox(api, "every-instruction")
    try:
        out = sh(api, sid, "pwd; whoami; echo $GREETING; cat heredoc.txt flavour.txt exec.txt /etc/motd; "
                           "python3 -c \"$OWNERS\" conf/*; (cd src && printf '%s\\n' *); cat bundle/packed/readme.txt; "
                           "pgrep -a sleep", envs={"OWNERS": OWNERS})
        lines = out.splitlines()
        assert lines[:5] == ["/srv/app", "user", "hello world", "hello world corral", "spicy"]
        assert "exec-form" in lines and "made by corral" in lines
        assert "user:user 640 conf/a.ini" in lines and "user:user 640 conf/b.ini" in lines
        assert not any("skip.txt" in line for line in lines)
        assert "main.py" in lines and "secret.key" not in out  # .dockerignore held it back
        assert "inside the archive" in lines  # ADD unpacked the local tar
        assert any(line.endswith("sleep 300") for line in lines)  # ENTRYPOINT + CMD started with the sandbox
    finally:
        kill(api, sid)


def test_templates_stack_layers_and_derive(api: httpx.Client, srv: Server) -> None:
    ready(api, "stack-parent", "FROM base\nRUN echo parent > /parent.txt\nRUN rm /etc/debian_version\n")
    ready(api, "stack-child", "FROM stack-parent\nRUN echo child > /child.txt && mkdir -p /opt/x\n")
    info = api.get("/v1/templates/stack-child").json()
    assert info["layers"] == 4  # base + two parent layers + its own: a stack, not a copy
    sid = sandbox(api, "stack-child")
    try:
        assert sh(api, sid, "cat /parent.txt /child.txt; test -e /etc/debian_version || echo deleted") == \
            "parent\nchild\ndeleted\n"
        if TEST_BACKEND == "gvisor":
            mountinfo, is_root = "/proc/self/mountinfo", lambda point: point.endswith(f"/{sid}")
        else:  # bwrap's root is mounted in the sandbox's own namespace only
            mountinfo, is_root = f"/proc/{sandbox_init(sid)}/mountinfo", lambda point: point == "/"
        with open(mountinfo) as f:
            root = next(line for line in f if is_root(line.split()[4]) and " overlay " in line)
        assert root.count(str(srv.data_dir / "layers")) == 3  # three layer dirs as lower dirs
    finally:
        kill(api, sid)


def test_rebuild_hits_the_cache_and_a_changed_line_rebuilds_from_there(api: httpx.Client) -> None:
    steps = ["RUN echo one > /one.txt", "RUN echo two > /two.txt", "RUN date +%s%N > /three.txt"]
    first = ready(api, "cached", "FROM base\n" + "\n".join(steps) + "\n")
    assert [s["state"] for s in first["steps"]] == ["done", "done", "done"]
    stamp = read_built(api, "cached", "/three.txt")
    again = ready(api, "cached", "FROM base\n" + "\n".join(steps) + "\n")
    assert [s["state"] for s in again["steps"]] == ["cached", "cached", "cached"]
    assert read_built(api, "cached", "/three.txt") == stamp  # the cached layers, no step ran again
    steps[1] = "RUN echo TWO > /two.txt"
    changed = ready(api, "cached", "FROM base\n" + "\n".join(steps) + "\n")
    assert [s["state"] for s in changed["steps"]] == ["cached", "done", "done"]
    assert read_built(api, "cached", "/three.txt") != stamp  # the steps after the change ran again
    before = read_built(api, "cached", "/three.txt")
    live = sandbox(api, "cached")  # runs on the layers the forced build below makes again
    try:
        forced = ready(api, "cached", "FROM base\n" + "\n".join(steps) + "\n", no_cache=True)
        assert [s["state"] for s in forced["steps"]] == ["done", "done", "done"]
        assert sh(api, live, "cat /one.txt /three.txt") == "one\n" + before  # its layers were left alone
    finally:
        kill(api, live)
    refreshed = read_built(api, "cached", "/three.txt")
    assert refreshed != before
    later = ready(api, "cached", "FROM base\n" + "\n".join(steps) + "\n")  # without no_cache again
    assert [s["state"] for s in later["steps"]] == ["cached", "cached", "cached"]
    assert read_built(api, "cached", "/three.txt") == refreshed  # the forced build's layers are the cache now
    sid = sandbox(api, "cached")
    try:
        assert sh(api, sid, "cat /one.txt /two.txt") == "one\nTWO\n"
    finally:
        kill(api, sid)


def read_built(api: httpx.Client, template: str, path: str) -> str:
    """`path` as a new sandbox of `template` sees it."""
    sid = sandbox(api, template)
    try:
        return sh(api, sid, f"cat {path}")
    finally:
        kill(api, sid)


def test_copy_cache_follows_file_content_and_build_args(api: httpx.Client) -> None:
    dockerfile = "FROM base\nARG V=1\nCOPY app.txt /app.txt\nRUN echo $V > /v.txt\n"
    assert [s["state"] for s in ready(api, "copycache", dockerfile, {"app.txt": "a"})["steps"]] == \
        ["done", "done", "done"]
    same = ready(api, "copycache", dockerfile, {"app.txt": "a"})
    assert [s["state"] for s in same["steps"]][1:] == ["cached", "cached"]
    edited = ready(api, "copycache", dockerfile, {"app.txt": "b"})
    assert [s["state"] for s in edited["steps"]][1:] == ["done", "done"]
    arg = ready(api, "copycache", dockerfile, {"app.txt": "b"}, build_args={"V": "2"})
    assert [s["state"] for s in arg["steps"]][2] == "done"


def test_build_log_streams_step_output_with_timestamps(api: httpx.Client) -> None:
    record, events = build(api, "logged", "FROM base\nRUN echo out-line; echo err-line >&2\n")
    assert record["state"] == "ready"
    logs = [e for e in events if e["type"] == "log" and e["step"] == 0]
    assert {"stdout", "stderr"} <= {e["stream"] for e in logs}
    assert "out-line" in "".join(e["text"] for e in logs if e["stream"] == "stdout")
    assert all(isinstance(e["ts"], float) for e in events)
    assert events[-1] == {**events[-1], "type": "status", "state": "ready"}
    kinds = [(e["type"], e.get("state")) for e in events if e["type"] == "step"]
    assert kinds == [("step", "running"), ("step", "done")]


# --- readiness and start commands --------------------------------------------------------------------

def test_ready_port_waits_for_the_start_command(api: httpx.Client) -> None:
    ready(api, "web", "FROM base\nWORKDIR /site\nRUN echo served > index.html\n",
          start_cmd="sleep 0.5; exec python3 -m http.server 8000", ready_port=8000)
    sid = sandbox(api, "web")
    try:  # create returned only once the server listens: the first request succeeds
        assert sh(api, sid, "python3 -c \"import urllib.request as u; "
                            "print(u.urlopen('http://127.0.0.1:8000/index.html').read().decode())\"") == "served\n\n"
    finally:
        kill(api, sid)


def test_failing_readiness_fails_the_create_and_leaves_nothing(api: httpx.Client, srv: Server) -> None:
    ready(api, "never-ready", "FROM base\n", start_cmd="echo starting; exit 3", ready_cmd="test -e /nope")
    before = sandbox_mounts(srv.data_dir)
    r = api.post("/v1/sandboxes", json={"template": "never-ready"})
    assert r.status_code == 503
    assert "exited with code 3" in r.json()["message"] and "starting" in r.json()["message"]
    assert sandbox_mounts(srv.data_dir) == before


# --- bad input and failures ---------------------------------------------------------------------------

def test_failed_step_reports_exit_code_and_output(api: httpx.Client) -> None:
    record, events = build(api, "broken", "FROM base\nRUN echo fine\nRUN echo about to fail; exit 7\nRUN echo never\n")
    assert record["state"] == "failed"
    assert "exit code 7" in record["error"] and "line 3" in record["error"]
    detail = record["error_detail"]
    assert detail["line"] == 3 and detail["exit_code"] == 7 and "about to fail" in detail["output_tail"]
    assert [s["state"] for s in record["steps"]] == ["done", "failed", "pending"]
    assert events[-1]["type"] == "status" and events[-1]["state"] == "failed"
    assert api.get("/v1/templates/broken").status_code == 404  # no half-built template


@pytest.mark.parametrize(("dockerfile", "files", "fragment"), [
    ("FROM base\nCOPY ../outside /x\n", {"a": "1"}, "outside the build context"),
    ("FROM base\nCOPY /etc/passwd /x\n", {"a": "1"}, "absolute source path"),
    ("FROM base\nCOPY link /x\n", {"link": ("symlink", "/etc/shadow")}, "outside the build context"),
    ("FROM base\nCOPY dir/ /x/\n", {"dir/escape": ("symlink", "../../../../etc")}, "outside the build context"),
    ("FROM base\nCOPY missing.txt /x\n", {"a": "1"}, "not found"),
    ("FROM base\nCOPY a /x\n", None, "needs a build context"),
])
def test_copy_outside_the_context_is_refused(api: httpx.Client, dockerfile: str, files: dict[str, Any] | None,
                                             fragment: str) -> None:
    record, _ = build(api, "escape", dockerfile, files)
    assert record["state"] == "failed" and fragment in record["error"], record["error"]


@pytest.mark.parametrize(("dockerfile", "status", "fragment"), [
    ("FROM base\nHEALTHCHECK CMD true\n", 400, "Dockerfile:2"),
    ("FROM base\nRUN true\nVOLUME /data\n", 400, "Dockerfile:3"),
    ("RUN true\n", 400, "FROM"),
    ("", 400, "empty"),
    ("FROM no-such-template\n", 404, "no-such-template"),
    ("FROM ubuntu:22.04\n", 400, "ubuntu:22.04"),
])
def test_bad_dockerfiles_are_rejected_with_the_line(api: httpx.Client, dockerfile: str, status: int,
                                                   fragment: str) -> None:
    r = submit(api, "bad", dockerfile)
    assert r.status_code == status, r.text
    assert fragment in r.json()["message"]


def test_bad_requests_get_clear_errors(api: httpx.Client) -> None:
    assert submit(api, "Bad Name", "FROM base\n").status_code == 400
    r = submit(api, "base", "FROM base\n")
    assert r.status_code == 400 and "built-in" in r.json()["message"]
    assert submit(api, "ok", "FROM base\n", memory_mb=1).status_code == 400
    r = submit(api, "ok", "FROM base\n", isolation="firecracker")
    assert r.status_code == 400 and "isolation" in r.json()["message"]
    r = api.post("/v1/templates", content=b"FROM base", headers={"Content-Type": "text/plain"})
    assert r.status_code == 400
    r = api.post("/v1/templates", data={"build": "{not json"}, files={"context": ("c", b"x")})
    assert r.status_code == 400 and "JSON" in r.json()["message"]
    r = api.post("/v1/templates", data={"build": json.dumps({"name": "t", "dockerfile": "FROM base\n"})},
                 files={"context": ("c.tar", b"this is not a tar archive")})
    assert r.status_code == 400 and "tar" in r.json()["message"]


def test_a_template_chooses_its_sandboxes_isolation(api: httpx.Client) -> None:
    """Built with isolation=gvisor, a template's sandboxes run under gVisor's kernel unless a create
    asks for another isolation; the template's info shows the choice."""
    ready(api, "strong", "FROM base\nRUN echo built > /opt/mark\n", isolation="gvisor")
    assert api.get("/v1/templates/strong").json()["config"]["isolation"] == "gvisor"
    strong, weak = sandbox(api, "strong"), sandbox(api, "strong", isolation="bwrap")
    try:
        host_kernel = os.uname().release
        assert sh(api, strong, "cat /opt/mark; uname -r") != f"built\n{host_kernel}\n"  # gVisor's own kernel
        assert sh(api, strong, "cat /opt/mark") == "built\n"
        assert sh(api, weak, "cat /opt/mark; uname -r") == f"built\n{host_kernel}\n"
    finally:
        kill(api, strong)
        kill(api, weak)


def test_hostile_context_archive_is_refused(api: httpx.Client, srv: Server) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("../../../../tmp/corral-escaped")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    r = api.post("/v1/templates", data={"build": json.dumps({"name": "t", "dockerfile": "FROM base\n"})},
                 files={"context": ("c.tar", out.getvalue())})
    assert r.status_code == 400 and "refused" in r.json()["message"]
    assert not Path("/tmp/corral-escaped").exists()


def test_timeout_stops_a_build(api: httpx.Client) -> None:
    record, _ = build(api, "slow", "FROM base\nRUN sleep 60\n", timeout=2)
    assert record["state"] == "failed" and "timed out" in record["error"]
    assert api.get("/v1/templates/slow").status_code == 404


def test_disk_limit_of_a_step(api: httpx.Client) -> None:
    record, _ = build(api, "fat", "FROM base\nRUN head -c 200M /dev/zero > /big\n", disk_mb=100)
    assert record["state"] == "failed"
    assert "disk limit" in record["error"] and "No space left" in record["error_detail"]["output_tail"]


def test_same_name_builds_one_at_a_time(api: httpx.Client) -> None:
    first = submit(api, "busy", "FROM base\nRUN sleep 2\n")
    assert first.status_code == 202
    second = submit(api, "busy", "FROM base\nRUN true\n")
    assert second.status_code == 409 and first.json()["id"] in second.json()["message"]
    follow(api, first.json()["id"])
    assert submit(api, "busy", "FROM base\nRUN sleep 2\n").status_code == 202  # cached now: fine again


def test_delete_refuses_templates_in_use_and_built_ins(api: httpx.Client) -> None:
    ready(api, "in-use", "FROM base\nRUN echo x > /x\n")
    sid = sandbox(api, "in-use")
    try:
        r = api.delete("/v1/templates/in-use")
        assert r.status_code == 409 and sid in r.json()["message"]
    finally:
        kill(api, sid)
    assert api.delete("/v1/templates/in-use").status_code == 204
    assert api.get("/v1/templates/in-use").status_code == 404
    assert api.post("/v1/sandboxes", json={"template": "in-use"}).status_code == 404
    assert api.delete("/v1/templates/base").status_code == 409
    assert api.delete("/v1/templates/nothing-here").status_code == 404


def test_templates_list_has_builtins_and_builds(api: httpx.Client) -> None:
    ready(api, "listed", "FROM base\nRUN true\n")
    names = {t["name"]: t for t in api.get("/v1/templates").json()}
    assert names["base"]["builtin"] is True and names["listed"]["builtin"] is False


def test_server_killed_mid_build_leaves_no_template_and_a_consistent_cache() -> None:
    data = make_data_dir()
    server = start_server(data)
    try:
        with server.client() as api:
            r = submit(api, "interrupted", "FROM base\nRUN echo a > /a\nRUN touch /started; sleep 60\n")
            build_id = r.json()["id"]
            with api.stream("GET", f"/v1/builds/{build_id}/logs") as s:  # wait until the second step runs
                for line in s.iter_lines():
                    event = json.loads(line)
                    if event["type"] == "step" and event["index"] == 1 and event["state"] == "running":
                        break
        server.stop(signal.SIGKILL)
        server = start_server(data)
        with server.client() as api:
            record = api.get(f"/v1/builds/{build_id}").json()
            assert record["state"] == "failed" and "stopped during the build" in record["error"]
            assert api.get("/v1/templates/interrupted").status_code == 404
            assert not [p for p in (data / "layers").iterdir() if p.name.startswith(".tmp-")]
            assert sandbox_processes(data) == [] and not [m for m in sandbox_mounts(data) if "/sandboxes/" in m]
            again = ready(api, "interrupted", "FROM base\nRUN echo a > /a\nRUN true\n")
            assert [s["state"] for s in again["steps"]] == ["cached", "done"]  # the finished layer survived
    finally:
        server.stop()
        assert mounts_under(data) == [] and corral_cgroups(data) == [] and sandbox_processes(data) == []
        remove_data_dir(data)


def test_a_finished_builds_files_left_by_a_crash_are_removed_at_start() -> None:
    """A crash between a build's final record and the removal of its working files left them: the
    next start removes them (the record and the template stay)."""
    data = make_data_dir()
    server = start_server(data)
    try:
        with server.client() as api:
            done = ready(api, "finished-then-crashed", "FROM base\nRUN echo kept > /kept\n")
        server.stop(signal.SIGKILL)
        files = data / "builds" / done["id"] / "files"
        (files / "context").mkdir(parents=True)  # what the crash window leaves
        (files / "context" / "big.bin").write_bytes(b"x" * 4096)
        server = start_server(data)
        assert not files.exists()
        assert (data / "builds" / done["id"]).is_dir()  # its log stays
        with server.client() as api:
            assert api.get(f"/v1/builds/{done['id']}").json()["state"] == "ready"
            sid = sandbox(api, "finished-then-crashed")
            assert sh(api, sid, "cat /kept") == "kept\n"
            kill(api, sid)
    finally:
        server.stop()
        assert mounts_under(data) == [] and corral_cgroups(data) == [] and sandbox_processes(data) == []
        remove_data_dir(data)


def test_build_sandboxes_do_not_leak(srv: Server) -> None:
    sandboxes = srv.data_dir / "sandboxes"
    leftovers = [p for p in sandboxes.iterdir() if p not in spare_dirs(srv.data_dir)] if sandboxes.exists() else []
    live = {json.loads(json.dumps(x))["id"] for x in httpx.get(
        f"{srv.url}/v1/sandboxes", headers={"X-API-Key": srv.api_key}).json()}
    assert {p.name for p in leftovers} <= live
    assert not [b for b in (srv.data_dir / "builds").glob("*/files")]  # contexts removed after each build
    assert os.stat(srv.data_dir / "layers").st_mode & 0o077 == 0


def test_a_deep_template_mounts_past_the_mount_option_page(api: httpx.Client) -> None:
    """45 layers' paths overflow mount(2)'s one page of options; the new mount API takes them all."""
    steps = "".join(f"RUN echo {i} > /step{i}\n" for i in range(45))
    ready(api, "deep", "FROM base\n" + steps)
    sid = sandbox(api, "deep")
    try:
        assert sh(api, sid, "cat /step0 /step44") == "0\n44\n"
    finally:
        kill(api, sid)


def test_templates_are_private_to_their_key_unless_public(api: httpx.Client, srv: Server) -> None:
    """A template carries what its Dockerfile put in it: another key must not list, read, use or build
    on it, unless it was built public. Built-in templates are everyone's."""
    keys = [api.post("/v1/keys", json={"name": f"tenant-{i}"}).json() for i in range(2)]
    alice, bob = (srv.client(key=k["key"]) for k in keys)
    try:
        for name, public in (("alice-private", False), ("alice-public", True)):
            r = submit(alice, name, "FROM base\nRUN echo secret > /secret\n", public=public)
            assert r.status_code == 202, r.text
            assert follow(alice, r.json()["id"])[-1]["state"] == "ready"
        seen = {t["name"] for t in bob.get("/v1/templates").json()}
        assert "alice-public" in seen and "base" in seen and "alice-private" not in seen
        assert bob.get("/v1/templates/alice-private").status_code == 404
        assert bob.post("/v1/sandboxes", json={"template": "alice-private"}).status_code == 404
        assert submit(bob, "bob-derived", "FROM alice-private\n").status_code == 404
        assert submit(bob, "alice-private", "FROM base\n").status_code == 409  # the name stays Alice's
        assert bob.delete("/v1/templates/alice-private").status_code == 404
        assert bob.delete("/v1/templates/alice-public").status_code == 403
        sid = sandbox(bob, "alice-public")
        try:
            assert sh(bob, sid, "cat /secret") == "secret\n"
        finally:
            kill(bob, sid)
        assert {"alice-private", "alice-public"} <= {t["name"] for t in api.get("/v1/templates").json()}
    finally:
        alice.close()
        bob.close()
        for k in keys:
            api.delete(f"/v1/keys/{k['id']}")


def test_a_build_installs_a_package_from_pypi(api: httpx.Client) -> None:
    """Build steps have egress (package registries, through the host's CA bundle): pip installs a
    small package from the configured index, and sandboxes from the template import it."""
    ready(api, "with-pypi", "FROM base\nRUN pip install --no-cache-dir --no-deps tabulate==0.9.0\n")
    sid = sandbox(api, "with-pypi", network="none")  # installed in the template: no network needed now
    try:
        assert sh(api, sid, "python3 -c 'import tabulate; print(tabulate.__version__)'") == "0.9.0\n"
    finally:
        kill(api, sid)


def test_text_that_is_not_unicode_is_refused(api: httpx.Client) -> None:
    body = '{"name": "t", "dockerfile": "FROM base\\nRUN echo \\ud800\\n"}'
    r = api.post("/v1/templates", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "Unicode" in r.json()["message"]
    r = api.post("/v1/sandboxes", json={"allow_out": ["1.2.3.4:\u00b2"], "network": "internet"})
    assert r.status_code == 400
