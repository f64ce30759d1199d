"""Templates through the SDK (``Template``/``AsyncTemplate``) and the CLI (``corral template``), real server.

Builds use only ``FROM base`` and local steps (no network), so each takes well under a second.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Server
from corral import (
    AsyncTemplate,
    BuildEvent,
    BuildException,
    ConflictException,
    InvalidArgumentException,
    NotFoundException,
    Sandbox,
    Template,
)


@pytest.fixture
def sdk_env(server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    monkeypatch.setenv("CORRAL_API_URL", server.url)
    monkeypatch.setenv("CORRAL_API_KEY", server.api_key)
    return server


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def context(root: Path) -> Path:
    root.mkdir()
    (root / "hello.txt").write_text("hello from the context\n")
    (root / "secret.txt").write_text("never sent\n")
    (root / ".dockerignore").write_text("secret.txt\nDockerfile\n")
    os.symlink("hello.txt", root / "link")
    (root / "Dockerfile").write_text(
        "FROM base\n"
        "COPY . /opt/app/\n"
        "RUN echo building; wc -l < /opt/app/hello.txt\n"
    )
    return root


def by_step(events: list[BuildEvent]) -> dict[int, list[str]]:
    """Each step's events in order: its states, and its output (chunks joined) where it came."""
    seen: dict[int, list[str]] = {}
    for e in events:
        if e.step is not None and e.type == "step":
            seen.setdefault(e.step, []).append(e.state or "")
        elif e.step is not None and e.type == "log" and e.stream != "system":
            steps = seen.setdefault(e.step, [])
            if steps and steps[-1].startswith("output: "):
                steps[-1] += e.text
            else:
                steps.append("output: " + e.text)
    return seen


def test_build_from_a_directory_then_use_rebuild_and_delete(sdk_env: Server, tmp_path: Path) -> None:
    root = context(tmp_path / "ctx")
    name = unique("sdk-ctx")
    events: list[BuildEvent] = []
    info = Template.build(root / "Dockerfile", name, context=root, on_progress=events.append)
    assert (info.name, info.base, info.builtin) == (name, "base", False)
    assert by_step(events) == {0: ["running", "done"], 1: ["running", "output: building\n1\n", "done"]}
    assert events[-1].type == "status" and events[-1].state == "ready"
    assert [e.ts for e in events] == sorted(e.ts for e in events)  # type: ignore[type-var]

    with Sandbox.create(template=name, timeout=60) as sbx:
        assert sbx.files.read("/opt/app/hello.txt") == "hello from the context\n"
        listing = sbx.commands.run("cd /opt/app && printf '%s\\n' .[!.]* *; readlink link").stdout.split()
        assert listing == [".dockerignore", "hello.txt", "link", "hello.txt"]  # no secret.txt, no Dockerfile
        with pytest.raises(ConflictException, match=name):
            Template.delete(name)  # a running sandbox uses it

    again: list[BuildEvent] = []
    rebuilt = Template.build(root / "Dockerfile", name, context=root, on_progress=again.append)
    assert by_step(again) == {0: ["running", "cached"], 1: ["running", "cached"]}
    assert rebuilt.build_id != info.build_id

    got = Template.get(name)
    assert [b.build_id for b in got.builds][:2] == [rebuilt.build_id, info.build_id]
    assert name in [t.name for t in Template.list()]
    record = Template.get_build(info.build_id)
    assert record.state == "ready" and [s.state for s in record.steps] == ["done", "done"]
    assert list(Template.build_logs(info.build_id, follow=False)) == events  # the log replays as it was

    Template.delete(name)
    with pytest.raises(NotFoundException, match=name):
        Template.get(name)


def test_a_failing_build_raises_with_line_exit_code_and_output(sdk_env: Server) -> None:
    name = unique("sdk-fail")
    events: list[BuildEvent] = []
    with pytest.raises(BuildException) as failed:
        Template.build("FROM base\nRUN echo partial; echo broken >&2; exit 3\n", name, on_progress=events.append)
    exc = failed.value
    assert (exc.template, exc.step, exc.line, exc.exit_code) == (name, 0, 2, 3)
    assert exc.output_tail == "partial\nbroken"
    assert "at line 2 (RUN echo partial; echo broken >&2; exit 3) with exit code 3" in str(exc)
    assert str(exc).endswith("  | partial\n  | broken")
    assert events[-1].type == "status" and events[-1].state == "failed"
    with pytest.raises(NotFoundException):
        Template.get(name)  # a failed build leaves no template


def test_refused_before_building(sdk_env: Server, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentException, match="Dockerfile:2"):
        Template.build("FROM base\nFROB x\n", unique("sdk-bad"))
    with pytest.raises(InvalidArgumentException, match="not found"):
        Template.build(str(tmp_path / "Dockerfile"), unique("sdk-bad"))
    with pytest.raises(InvalidArgumentException, match="does not exist"):
        Template.build("FROM base\n", unique("sdk-bad"), context=tmp_path / "nope")


def test_async_template(sdk_env: Server) -> None:
    name = unique("sdk-async")

    async def main() -> list[str]:
        states: list[str] = []

        async def progress(event: BuildEvent) -> None:
            if event.type == "step":
                states.append(event.state or "")

        info = await AsyncTemplate.build("FROM base\nENV GREETING=hi\nRUN echo $GREETING > /greeting\n", name,
                                         on_progress=progress)
        assert info.config.env == {"GREETING": "hi"}
        assert name in [t.name for t in await AsyncTemplate.list()]
        build = await AsyncTemplate.get_build(info.build_id or "")
        logged = [e async for e in await AsyncTemplate.build_logs(build.build_id, follow=False)]
        assert logged[-1].state == "ready"
        await AsyncTemplate.delete(name)
        return states

    assert asyncio.run(main()) == ["running", "done", "running", "done"]


# -- the CLI ----------------------------------------------------------------------------------------


def corral(server: Server, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CORRAL_API_URL": server.url, "CORRAL_API_KEY": server.api_key}
    exe = Path(sys.executable).parent / "corral"  # the venv's entry point
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=120, cwd=cwd)


def test_cli_build_list_info_logs_delete(server: Server, tmp_path: Path) -> None:
    root = context(tmp_path / "ctx")
    (root / "Dockerfile").write_text("FROM base\nARG WHO=nobody\nCOPY hello.txt /opt/\nRUN echo hi $WHO\n")
    name = unique("cli")
    built = corral(server, "template", "build", "-f", str(root / "Dockerfile"), "--name", name,
                   "--build-arg", "WHO=cli", "--memory-mb", "256")
    assert built.returncode == 0, built.stderr
    lines = built.stdout.splitlines()
    assert "\x1b" not in built.stdout  # not a terminal: plain lines
    assert lines[:7] == [
        "#1 line 2: ARG WHO=nobody", "#1 DONE 0.00s",
        "#2 line 3: COPY hello.txt /opt/", lines[3],
        "#3 line 4: RUN echo hi $WHO", "#3 hi cli", lines[6],
    ]
    assert lines[3].startswith("#2 DONE") and lines[6].startswith("#3 DONE")
    assert lines[-1].startswith(f"ready: template {name} (build ")
    build_id = lines[-1].split("(build ")[1].split(",")[0]

    listed = corral(server, "template", "list")
    assert listed.returncode == 0 and any(line.split()[:1] == [name] for line in listed.stdout.splitlines())
    shown = corral(server, "template", "info", name)
    assert shown.returncode == 0, shown.stderr
    assert build_id in shown.stdout and "recent builds" in shown.stdout and "256 MiB" in shown.stdout
    as_json = json.loads(corral(server, "template", "info", name, "--json").stdout)
    assert as_json["config"]["memory_mb"] == 256 and as_json["builds"][0]["build_id"] == build_id
    logged = corral(server, "template", "logs", build_id, "--no-follow")
    assert logged.returncode == 0 and "#3 hi cli" in logged.stdout

    assert corral(server, "template", "delete", name).stdout == f"deleted template {name}\n"
    gone = corral(server, "template", "info", name)
    assert gone.returncode == 1 and name in gone.stderr and "Traceback" not in gone.stderr


def test_cli_build_failures(server: Server, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM base\nRUN echo partial; echo broken >&2; exit 3\n")
    failed = corral(server, "template", "build", "--name", unique("cli-fail"), cwd=tmp_path)  # -f ./Dockerfile
    assert failed.returncode == 1
    assert "#1 partial" in failed.stdout and "#1 FAILED (exit code 3)" in failed.stdout
    assert "at line 2 (RUN echo partial; echo broken >&2; exit 3) with exit code 3" in failed.stderr
    assert "| broken" in failed.stderr and "Traceback" not in failed.stderr

    missing = corral(server, "template", "build", "-f", str(tmp_path / "nope" / "Dockerfile"), "--name", "x")
    unboxed = " ".join(missing.stderr.replace("│", " ").split())  # click's panel wraps a long path's line
    assert missing.returncode == 2 and "does not exist" in unboxed
    no_context = corral(server, "template", "build", "--name", "x", "--context", str(tmp_path / "nope"),
                        cwd=tmp_path)
    assert no_context.returncode == 2 and "--context" in no_context.stderr
    refused = corral(server, "template", "build", "--name", "Bad Name", cwd=tmp_path)
    assert refused.returncode == 1 and "not a valid template name" in refused.stderr
