"""E2B template builds: the unmodified official Python SDK's ``Template.build()`` against a real server.

Every step kind the SDK sends (RUN with and without its own user, COPY with files uploaded through
the link we answer, ENV, WORKDIR, USER), a start command with its readiness check, the cache on a
rebuild, a failing step, ``Template.exists()``, and the upload links and bad requests by hand.
"""

from __future__ import annotations

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
def e2b_env(server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    monkeypatch.setenv("E2B_API_URL", server.url)
    monkeypatch.setenv("E2B_SANDBOX_URL", server.url)
    monkeypatch.setenv("E2B_API_KEY", server.api_key)
    monkeypatch.delenv("E2B_DOMAIN", raising=False)
    return server


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


def test_a_failing_step_raises_build_exception_naming_the_step_and_its_output(e2b_env: Server) -> None:
    template = Template().from_template("base").run_cmd("true").run_cmd("echo the-reason >&2; exit 3")
    name = unique("sdk-bad")
    with pytest.raises(BuildException) as caught:
        Template.build(template, name)
    message = str(caught.value)
    assert "exit code 3 (step 2)" in message and "the-reason" in message
    assert not Template.exists(name)  # a failed build leaves no template
    with pytest.raises(BuildException, match="not available"):
        Template.build(Template().from_image("ubuntu:24.04").run_cmd("true"), unique("sdk-ubuntu"))


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
    assert config["memory_mb"] == 768 and config["cpu"] == os.cpu_count()  # at most this host's cores
    logs: list[LogEntry] = []
    Template.build(template, name, skip_cache=True, on_build_logs=logs.append)
    assert not any(e.message.startswith("CACHED") for e in logs) and any("RUN echo bg" in e.message for e in logs)


def test_upload_links_are_single_use_per_key_and_the_build_needs_its_files(e2b_env: Server, api: httpx.Client) -> None:
    name = unique("up")
    requested = api.post("/v3/templates", json={"name": name})
    assert requested.status_code == 202, requested.text
    build_id = requested.json()["buildID"]
    assert requested.json()["templateID"] == name
    files_hash = secrets.token_hex(32)
    copy = {"type": "COPY", "args": ["hello.txt", "/home/user/", "", ""], "filesHash": files_hash}
    missing = api.post(f"/v2/templates/{name}/builds/{build_id}", json={"fromTemplate": "base", "steps": [copy]})
    assert missing.status_code == 400 and "were not uploaded" in missing.json()["message"]

    link = api.get(f"/templates/{name}/files/{files_hash}")
    assert link.status_code == 201 and link.json()["present"] is False
    url = link.json()["url"]
    body = tar_of({"hello.txt": b"hi\n"})
    assert httpx.put(url, content=body).status_code == 200  # no API key: the link is the credential
    assert httpx.put(url, content=body).status_code == 404  # used
    assert httpx.put(url.rsplit("/", 1)[0] + "/forged", content=body).status_code == 404
    assert api.get(f"/templates/{name}/files/{files_hash}").json() == {"present": True}

    created = api.post("/v1/keys", json={"name": unique("other")}).json()["key"]
    with httpx.Client(base_url=e2b_env.url, headers={"X-API-KEY": created}) as other:
        other_name = unique("up-other")
        assert other.post("/v3/templates", json={"name": other_name}).status_code == 202
        # another key's uploads never serve this one (a hash is only the SDK's claim about a tar)
        assert other.get(f"/templates/{other_name}/files/{files_hash}").json()["present"] is False
        assert other.get(f"/templates/{name}/files/{files_hash}").status_code == 404  # not its build
        assert other.post(f"/v2/templates/{name}/builds/{build_id}", json={"fromTemplate": "base"}).status_code == 404
        assert other.get(f"/templates/aliases/{name}").status_code == 404  # not built yet

    garbage_hash = secrets.token_hex(32)
    assert httpx.put(api.get(f"/templates/{name}/files/{garbage_hash}").json()["url"], content=b"not a tar").is_success
    garbage = {**copy, "filesHash": garbage_hash}
    refused = api.post(f"/v2/templates/{name}/builds/{build_id}", json={"fromTemplate": "base", "steps": [garbage]})
    assert refused.status_code == 400 and "not a readable tar" in refused.json()["message"], refused.text

    started = api.post(f"/v2/templates/{name}/builds/{build_id}", json={"fromTemplate": "base", "steps": [copy]})
    assert started.status_code == 202, started.text
    assert api.post(f"/v2/templates/{name}/builds/{build_id}", json={"fromTemplate": "base"}).status_code == 404
    api.get(f"/v1/builds/{build_id}/logs", params={"follow": True}).raise_for_status()  # ends with the build
    status = api.get(f"/templates/{name}/builds/{build_id}/status", params={"logsOffset": 0}).json()
    assert status["status"] == "ready", status
    assert all({"timestamp", "level", "message"} <= set(e) for e in status["logEntries"])
    offset = len(status["logEntries"])
    assert api.get(f"/templates/{name}/builds/{build_id}/status", params={"logsOffset": offset}).json()[
        "logEntries"] == []
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
