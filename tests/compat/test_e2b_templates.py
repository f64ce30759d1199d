"""E2B template builds: the unmodified official Python SDK's ``Template.build()`` against a real server.

Every step kind the SDK sends (RUN with and without its own user, COPY with files uploaded through
the link we answer, ENV, WORKDIR, USER), a start command with its readiness check, the cache on a
rebuild, a failing step, ``Template.exists()``, and the upload links and bad requests by hand.
"""

from __future__ import annotations

import http.client
import io
import os
import secrets
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2b import BuildException, LogEntry, Sandbox, Template, TemplateBuildStatus, wait_for_file

from conftest import Server


@pytest.fixture
def api(e2b_env: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=e2b_env.url, headers={"X-API-KEY": e2b_env.api_key}, timeout=60) as client:
        yield client


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_a_template_built_with_the_sdk_runs_each_step_and_starts_sandboxes(e2b_env: Server, tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print('from main')\n")
    (tmp_path / "tool.sh").write_text("#!/bin/sh\necho tool\n")
    template = (
        Template(file_context_path=str(tmp_path)).from_base_image()
        .set_envs({"GREETING": "hello $HOME", "LEVEL": "2"})
        .copy("app", "/home/user/app")
        .copy("tool.sh", "/usr/local/bin/tool", user="root", mode=0o755)
        .run_cmd(["python3 /home/user/app/main.py > /home/user/out.txt", "id -un >> /home/user/out.txt",
                  "[[ $LEVEL == 2 ]] && echo bash >> /home/user/out.txt"])
        .run_cmd("id -un > /root/who && stat -c %U /usr/local/bin/tool >> /root/who", user="root")
        .set_workdir("/home/user/app")
        .set_start_cmd("touch /tmp/started && exec sleep infinity", wait_for_file("/tmp/started"))
    )
    name = unique("sdk-app")
    logs: list[LogEntry] = []
    info = Template.build(template, name, on_build_logs=logs.append)
    assert info.template_id == name and info.name == name
    messages = [e.message for e in logs]
    assert any("RUN id -un > /root/who" in m for m in messages), messages
    assert any(f"template '{name}' is ready" in m for m in messages), messages

    sandbox = Sandbox.create(name, timeout=60)
    try:
        assert sandbox.commands.run("cat /home/user/out.txt").stdout == "from main\nuser\nbash\n"
        run = sandbox.commands.run("echo $GREETING $LEVEL; pwd; whoami; tool")
        assert run.stdout == "hello $HOME 2\n/home/user/app\nuser\ntool\n"  # ENV values are literal
        assert sandbox.commands.run("cat /root/who", user="root").stdout == "root\nroot\n"
        assert sandbox.files.exists("/tmp/started")  # the start command ran before create returned
    finally:
        sandbox.kill()

    again: list[LogEntry] = []
    Template.build(template, name, on_build_logs=again.append)
    texts = [e.message for e in again]
    assert any("Skipping upload of 'app', already cached" in t for t in texts), texts
    assert sum(t.startswith("CACHED ") for t in texts) == 4, texts  # two COPYs, two RUNs
    assert Template.exists(name) and Template.exists("base") and not Template.exists(unique("nope"))


def test_e2bs_base_image_pattern_works_node_and_npm_included(e2b_env: Server) -> None:
    """E2B's documented ``FROM e2bdev/base`` + ``RUN npm …``: our base has node and npm too."""
    name = unique("sdk-npm")
    template = Template().from_image("e2bdev/base").run_cmd("mkdir -p /home/user/code && cd /home/user/code && "
                                                            "npm init -y >/dev/null && node -e 'console.log(6*7)'")
    Template.build(template, name)
    sandbox = Sandbox.create(name, timeout=30)
    try:
        assert sandbox.files.exists("/home/user/code/package.json")
        assert sandbox.commands.run("npm --version").exit_code == 0
    finally:
        sandbox.kill()


def test_a_failing_step_raises_build_exception_naming_the_step_and_its_output(e2b_env: Server) -> None:
    template = Template().from_template("base").run_cmd("true").run_cmd("echo the-reason >&2; exit 3")
    name = unique("sdk-bad")
    with pytest.raises(BuildException) as caught:
        Template.build(template, name)
    message = str(caught.value)
    assert "exit code 3 (step 2)" in message and "the-reason" in message
    assert not Template.exists(name)  # a failed build leaves no template
    with pytest.raises(BuildException, match="invalid image"):
        Template.build(Template().from_image("Ubuntu:24.04").run_cmd("true"), unique("sdk-bad-image"))


def test_a_background_build_reports_its_status_and_its_options_reach_the_template(
        e2b_env: Server, api: httpx.Client) -> None:
    template = Template().from_template("base").run_cmd("echo bg > /home/user/bg")
    name = unique("sdk-bg")
    info = Template.build_in_background(template, name, cpu_count=64, memory_mb=768)
    api.get(f"/v1/builds/{info.build_id}/logs", params={"follow": True}).raise_for_status()  # ends with the build
    status = Template.get_build_status(info, logs_offset=0)
    assert status.status == TemplateBuildStatus.READY and status.log_entries and status.reason is None
    assert Template.get_build_status(info, logs_offset=len(status.log_entries)).log_entries == []
    config = api.get(f"/v1/templates/{name}").json()["config"]
    assert config["memory_mb"] == 768 and config["cpu"] == min(64, os.cpu_count() or 1)  # at most the host's cores
    logs: list[LogEntry] = []
    Template.build(template, name, skip_cache=True, on_build_logs=logs.append)
    assert not any(e.message.startswith("CACHED") for e in logs) and any("RUN echo bg" in e.message for e in logs)


def requested(api: httpx.Client, name: str) -> str:
    answer = api.post("/v3/templates", json={"name": name})
    assert answer.status_code == 202 and answer.json()["templateID"] == name, answer.text
    return answer.json()["buildID"]


def upload(api: httpx.Client, name: str, files: dict[str, bytes] | bytes) -> str:
    """Upload a tar of ``files`` (or raw bytes) for a build of ``name`` as the SDK does; its hash."""
    files_hash = secrets.token_hex(32)
    link = api.get(f"/templates/{name}/files/{files_hash}")
    assert link.status_code == 201 and link.json()["present"] is False, link.text
    body = files if isinstance(files, bytes) else tar_of(files)
    assert httpx.put(link.json()["url"], content=body).status_code == 200  # no API key: the link is the credential
    return files_hash


def finished(api: httpx.Client, name: str, build_id: str, offset: int = 0) -> dict[str, object]:
    api.get(f"/v1/builds/{build_id}/logs", params={"follow": True}).raise_for_status()  # ends with the build
    return api.get(f"/templates/{name}/builds/{build_id}/status", params={"logsOffset": offset}).json()


def copy_step(source: str, files_hash: str) -> dict[str, object]:
    return {"type": "COPY", "args": [source, "/home/user/", "", ""], "filesHash": files_hash}


def test_upload_links_are_signed_per_key_and_the_build_needs_its_files(e2b_env: Server, api: httpx.Client) -> None:
    name = unique("up")
    build_id = requested(api, name)
    files_hash = secrets.token_hex(32)
    copy = copy_step("hello.txt", files_hash)
    missing = api.post(f"/v2/templates/{name}/builds/{build_id}", json={"fromTemplate": "base", "steps": [copy]})
    assert missing.status_code == 400 and "were not uploaded" in missing.json()["message"]

    link = api.get(f"/templates/{name}/files/{files_hash}")
    assert link.status_code == 201 and link.json()["present"] is False
    url = link.json()["url"]
    body = tar_of({"hello.txt": b"hi\n"})
    assert httpx.put(url, content=tar_of({"hello.txt": b"first\n"})).status_code == 200
    assert httpx.put(url, content=body).status_code == 200  # again (the SDK's force_upload): replaced
    base, expires, signature = url.rsplit("/", 2)
    assert httpx.put(f"{base}/{int(expires) + 3600}/{signature}", content=body).status_code == 404  # longer life
    assert httpx.put(f"{base}/{expires}/{'0' * 64}", content=body).status_code == 404
    other_hash_url = url.replace(files_hash, secrets.token_hex(32))
    assert httpx.put(other_hash_url, content=body).status_code == 404  # a link is for one hash
    assert api.get(f"/templates/{name}/files/{files_hash}").json()["present"] is True

    created = api.post("/v1/keys", json={"name": unique("other")}).json()["key"]
    with httpx.Client(base_url=e2b_env.url, headers={"X-API-KEY": created}) as other:
        other_name = unique("up-other")
        other_build = requested(other, other_name)
        # another key's uploads never serve this one (a hash is only the SDK's claim about a tar)
        assert other.get(f"/templates/{other_name}/files/{files_hash}").json()["present"] is False
        stolen = other.post(f"/v2/templates/{other_name}/builds/{other_build}",
                            json={"fromTemplate": "base", "steps": [copy]})
        assert stolen.status_code == 400 and "were not uploaded" in stolen.json()["message"]
        assert other.get(f"/templates/{name}/files/{files_hash}").status_code == 404  # not its build
        assert other.post(f"/v2/templates/{name}/builds/{build_id}", json={"fromTemplate": "base"}).status_code == 404
        assert other.get(f"/templates/aliases/{name}").status_code == 404  # not built yet

    started = api.post(f"/v2/templates/{name}/builds/{build_id}", json={"fromTemplate": "base", "steps": [copy]})
    assert started.status_code == 202, started.text
    assert api.post(f"/v2/templates/{name}/builds/{build_id}", json={"fromTemplate": "base"}).status_code == 404
    status = finished(api, name, build_id)
    assert status["status"] == "ready", status
    entries = status["logEntries"]
    assert isinstance(entries, list) and all({"timestamp", "level", "message"} <= set(e) for e in entries)
    assert finished(api, name, build_id, offset=len(entries))["logEntries"] == []
    with httpx.Client(base_url=e2b_env.url, headers={"X-API-KEY": created}) as other:
        assert other.get(f"/templates/aliases/{name}").status_code == 403  # exists, another key's
        assert other.get(f"/templates/{name}/builds/{build_id}/status").status_code == 404
        assert name not in {t["templateID"] for t in other.get("/templates").json()}
        assert other.delete(f"/templates/{name}").status_code == 404
    sandbox = Sandbox.create(name, timeout=30)
    try:
        assert sandbox.files.read("/home/user/hello.txt") == "hi\n"
    finally:
        sandbox.kill()


def test_an_upload_past_the_limit_is_refused_before_its_body(api: httpx.Client) -> None:
    name = unique("big")
    requested(api, name)
    url = httpx.URL(api.get(f"/templates/{name}/files/{secrets.token_hex(32)}").json()["url"])
    conn = http.client.HTTPConnection(url.host, url.port, timeout=30)
    try:
        conn.putrequest("PUT", url.raw_path.decode())
        conn.putheader("Content-Length", str(3 << 30))  # 3 GiB announced, nothing sent
        conn.endheaders()
        answer = conn.getresponse()
        assert answer.status == 413 and b"larger than" in answer.read()
    finally:
        conn.close()


def test_broken_files_and_failing_steps_are_reported_with_their_e2b_step(api: httpx.Client) -> None:
    name = unique("broken")
    build_id = requested(api, name)
    garbage = upload(api, name, b"\xfd7zXZ\x00" + b"not xz at all" * 50)  # an xz header, then garbage
    assert api.post(f"/v2/templates/{name}/builds/{build_id}",
                    json={"fromTemplate": "base", "steps": [copy_step("a.txt", garbage)]}).status_code == 202
    status = finished(api, name, build_id)
    assert status["status"] == "error" and "not a readable tar" in status["reason"]["message"], status

    build_id = requested(api, name)  # the same name again: a failed build leaves no template
    files = upload(api, name, {"a.txt": b"a\n"})
    steps = [{"type": "RUN", "args": [f"seq 1 250  # {name}"]}, copy_step("no-such-file", files)]  # not cached
    assert api.post(f"/v2/templates/{name}/builds/{build_id}",
                    json={"fromTemplate": "base", "steps": steps}).status_code == 202
    status = finished(api, name, build_id)
    reason = status["reason"]
    assert status["status"] == "error" and reason["step"] == "2" and "step 2" in reason["message"], status
    assert len(status["logEntries"]) == 100  # a page
    page2 = finished(api, name, build_id, offset=100)["logEntries"]
    page3 = finished(api, name, build_id, offset=200)["logEntries"]
    lines = [e["message"] for e in status["logEntries"] + page2 + page3]
    assert [str(n) for n in range(1, 251)] == [m for m in lines if m.isdigit()]
    assert all(e.get("step") == "1" for e in status["logEntries"] if e["message"].isdigit())


def test_a_failing_run_as_its_own_user_names_its_step_and_a_forced_step_rebuilds_from_there(e2b_env: Server) -> None:
    name = unique("sdk-user")
    with pytest.raises(BuildException, match=r"exit code 5 \(step 2\)"):
        Template.build(Template().from_template("base").run_cmd("true").run_cmd("exit 5", user="root"), name)
    first = Template().from_template("base").run_cmd("echo one")
    Template.build(first.run_cmd("echo two"), name)
    logs: list[LogEntry] = []
    Template.build(Template().from_template("base").run_cmd("echo one").skip_cache().run_cmd("echo two"), name,
                   on_build_logs=logs.append)
    cached = [e.message for e in logs if e.message.startswith("CACHED ")]
    assert any("RUN echo one" in m for m in cached) and not any("RUN echo two" in m for m in cached), cached


@pytest.mark.parametrize(("body", "message"), [
    ({"fromTemplate": "base", "steps": [{"type": "HEALTHCHECK", "args": []}]}, "not supported"),
    ({"fromImage": "e2bdev/base", "fromImageRegistry": {"type": "registry", "username": "u", "password": "p"}},
     "registry credentials"),
    ({"fromTemplate": "base", "fromImage": "e2bdev/base"}, "one of fromImage and fromTemplate"),
    ({"fromTemplate": "base", "steps": [{"type": "ENV", "args": ["A"]}]}, "pairs"),
    ({"fromTemplate": "base", "steps": [{"type": "RUN", "args": [" "]}]}, "needs a command"),
    ({"fromTemplate": "base", "steps": [{"type": "COPY", "args": ["a", "/b", "", "9z"], "filesHash": "x" * 64}]},
     "octal"),
    ({"fromTemplate": "base", "steps": "RUN true"}, "must be a list"),
    ({"fromTemplate": "../etc"}, "fromTemplate"),
])
def test_bad_build_steps_get_clear_errors(api: httpx.Client, body: dict[str, object], message: str) -> None:
    name = unique("bad")
    build_id = api.post("/v3/templates", json={"name": name}).json()["buildID"]
    answer = api.post(f"/v2/templates/{name}/builds/{build_id}", json=body)
    assert answer.status_code == 400 and message in answer.json()["message"], answer.text


@pytest.mark.parametrize(("body", "message"), [
    ({"name": "Upper"}, "not a valid template name"),
    ({"name": "team/app"}, "not a valid template name"),
    ({"name": "base"}, "built-in"),
    ({"name": "code-interpreter-v1"}, "built-in"),
    ({"name": "app", "tags": ["v2"]}, "tags"),
    ({"name": "app", "cpuCount": "2"}, "cpuCount"),
    ({}, "name"),
])
def test_bad_build_requests_get_clear_errors(api: httpx.Client, body: dict[str, object], message: str) -> None:
    answer = api.post("/v3/templates", json=body)
    assert answer.status_code == 400 and message in answer.json()["message"], answer.text


@pytest.mark.parametrize(("raw", "status", "message"), [
    (b'{"name": "a", "cpuCount": ' + b"9" * 5000 + b"}", 400, "not valid JSON"),  # past int's digit limit
    (b"[" * 100_000 + b"]" * 100_000, 400, "not valid JSON"),  # nesting past the recursion limit
    (b'{"name": "a:default", "tags": 5}', 400, "tags"),
    (b"[1, 2]", 400, "JSON object"),
    (b'{"name": "' + b"a" * (5 << 20) + b'"}', 413, "larger than"),
])
def test_hostile_request_bodies_get_clear_errors(api: httpx.Client, raw: bytes, status: int, message: str) -> None:
    answer = api.post("/v3/templates", content=raw, headers={"Content-Type": "application/json"})
    assert answer.status_code == status and message in answer.json()["message"], answer.text[:300]


def test_templates_are_listed_and_deleted_as_e2b_lists_and_deletes_them(e2b_env: Server, api: httpx.Client) -> None:
    name = unique("sdk-del")
    Template.build(Template().from_template("base").set_envs({"A": "1"}), name, memory_mb=640)
    listed = {t["templateID"]: t for t in api.get("/templates").json()}
    assert listed[name]["memoryMB"] == 640 and listed[name]["public"] is False and not listed[name]["isDefault"]
    assert listed["base"]["isDefault"] and listed["code-interpreter-v1"]["isDefault"]
    assert api.delete("/templates/base").status_code == 409  # built in
    sandbox = Sandbox.create(name, timeout=30)
    try:
        assert api.delete(f"/templates/{name}").status_code == 409  # in use
    finally:
        sandbox.kill()
    assert Sandbox.delete_snapshot(name) is True  # E2B's snapshots are templates: the same DELETE
    assert Sandbox.delete_snapshot(name) is False and not Template.exists(name)


def test_builds_need_the_key(e2b_env: Server) -> None:
    for method, path in [("POST", "/v3/templates"), ("GET", "/templates/aliases/base"), ("GET", "/templates"),
                         ("DELETE", "/templates/x"),
                         ("GET", "/templates/x/files/" + "a" * 64), ("POST", "/v2/templates/x/builds/b"),
                         ("GET", "/templates/x/builds/b/status")]:
        answer = httpx.request(method, e2b_env.url + path, json={"name": "x"})
        assert answer.status_code == 401 and answer.json()["code"] == 401, (path, answer.text)
