"""E2B template steps → builder instructions, build events → E2B log entries, and the upload store."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from corral.service import e2b_templates
from corral.service.e2b_templates import (
    KEEP_UPLOADS_DAYS,
    E2BTemplates,
    e2b_words,
    log_entries,
    translate,
)
from corral.service.errors import InvalidRequest, TooLarge
from corral.templates.bases import BaseRef
from corral.templates.instructions import Copy, Env, From, Run, User, Workdir


def test_steps_start_as_user_in_home_and_a_runs_own_user_holds_for_that_step_only() -> None:
    plan = translate({"fromImage": "e2bdev/base:latest", "force": False, "steps": [
        {"type": "RUN", "args": ["apt-get update", "root"]},
        {"type": "RUN", "args": ["echo $HOME\nls"]},
        {"type": "COPY", "args": ["src/*.py", "app/", "user:user", "0755"], "filesHash": "h" * 64},
        {"type": "ENV", "args": ["A", "1 $B", "C", ""]},
        {"type": "USER", "args": ["root"]},
        {"type": "WORKDIR", "args": ["/srv"]},
    ]})
    first, *steps = plan.dockerfile.instructions
    assert first == From(line=1, image="base", base=BaseRef("builtin", "base"))
    assert steps == [
        User(line=2, user="user"), Workdir(line=3, path="/home/user"),
        User(line=4, user="root"),
        Run(line=5, command=("/bin/bash", "-c", "apt-get update"), shell_form=False, sh_without_bash=True),
        User(line=6, user="user"),
        Run(line=7, command=("/bin/bash", "-c", "echo $HOME\nls"), shell_form=False, sh_without_bash=True),
        Copy(line=8, sources=("src/*.py",), dest="app/", chown="user:user", chmod=0o755),
        Env(line=9, pairs=(("A", "1 $B"), ("C", ""))),
        User(line=10, user="root"), Workdir(line=11, path="/srv"),
    ]
    assert plan.origin == ("base", "base", "1", "1", "1", "2", "3", "4", "5", "6")
    assert plan.hashes == ("h" * 64,) and not plan.no_cache
    lines = plan.text.splitlines()
    assert len(lines) == 11 and lines[0] == "FROM base" and lines[6] == "RUN echo $HOME\\nls"  # one line each


@pytest.mark.parametrize(("source", "expected"), [
    ({"fromTemplate": "code-interpreter-v1"}, BaseRef("builtin", "code-interpreter")),
    ({"fromTemplate": "my-app:default"}, BaseRef("template", "my-app")),
    ({"fromImage": "python:3.11"}, BaseRef("builtin", "base")),
    ({"fromImage": "e2bdev/code-interpreter"}, BaseRef("builtin", "code-interpreter")),
    ({"fromImage": "localhost:5000/team/tool:1"}, BaseRef("oci", "localhost:5000/team/tool:1")),
    ({"fromImage": "node:20"}, BaseRef("oci", "docker.io/library/node:20")),  # from_node_image(): Docker Hub
    ({"fromImage": "alpine"}, BaseRef("oci", "docker.io/library/alpine:latest")),  # an image, never a template
    ({"fromImage": "debian:stable"}, BaseRef("oci", "docker.io/library/debian:stable")),
])
def test_bases(source: dict[str, str], expected: BaseRef) -> None:
    assert translate(source).dockerfile.base.base == expected


def test_an_image_of_its_own_first_gets_the_user_the_steps_run_as() -> None:
    steps = translate({"fromImage": "localhost:5000/team/tool:1"}).dockerfile.steps
    assert [type(s).__name__ for s in steps] == ["User", "Run", "User", "Workdir"]
    assert steps[0] == User(line=2, user="root") and steps[2] == User(line=4, user="user")
    assert [type(s).__name__ for s in translate({"fromImage": "python:3.11"}).dockerfile.steps] == ["User", "Workdir"]


def test_a_forced_step_rebuilds_from_its_first_build_step_and_a_forced_template_all() -> None:
    run = {"type": "RUN", "args": ["a"]}
    plan = translate({"fromTemplate": "base", "steps": [run, {"type": "RUN", "args": ["b", "root"], "force": True},
                                                         {**run, "force": True}]})
    assert (plan.force_from, plan.no_cache) == (3, False)  # USER user, WORKDIR, RUN a, then step 2's USER root
    assert plan.origin[3] == "2"
    assert translate({"fromTemplate": "base", "steps": [{**run, "force": "false"}]}).force_from is None
    assert translate({"fromTemplate": "base", "force": True}).no_cache


@pytest.mark.parametrize(("body", "message"), [
    ({"fromTemplate": "docker.io/library/debian:12"}, "not a template name"),
    ({"fromImage": "Ubuntu:24.04"}, "invalid image"),
    ({}, "one of fromImage and fromTemplate"),
    ({"fromTemplate": "base", "steps": [{"type": "RUN", "args": ["x", 3]}]}, "list of strings"),
    ({"fromTemplate": "base", "steps": [{"type": "COPY", "args": ["a", "/b"]}]}, "filesHash"),
    ({"fromTemplate": "base", "steps": [{"type": "COPY", "args": ["a", "/b"], "filesHash": "../../etc"}]}, "filesHash"),
    ({"fromTemplate": "base", "steps": [{"type": "ENV", "args": ["A=B", "c"]}]}, "variable name"),
    ({"fromTemplate": "base", "steps": [{"type": "WORKDIR", "args": []}]}, "one path"),
    ({"fromTemplate": "base", "steps": [None]}, "object"),
])
def test_bad_steps_are_refused_naming_what_is_wrong(body: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        translate(body)


def test_log_entries_are_lines_with_their_e2b_step() -> None:
    origin = ["base", "base", "1"]
    events = [
        {"type": "step", "ts": 1.0, "index": 2, "instruction": "RUN make", "state": "running"},
        {"type": "log", "ts": 2.0, "step": 2, "stream": "stdout", "text": "a\nb\n"},
        {"type": "step", "ts": 3.0, "index": 2, "instruction": "RUN make", "state": "failed"},
        {"type": "log", "ts": 4.0, "step": None, "stream": "system", "text": "error: RUN failed (line 4)\n"},
        {"type": "status", "ts": 5.0, "state": "failed"},
    ]
    entries = log_entries(events, origin)
    assert [(e["level"], e["message"], e.get("step")) for e in entries] == [
        ("info", "[3/3] RUN make", "1"), ("info", "a", "1"), ("info", "b", "1"),
        ("error", "FAILED [3/3] RUN make", "1"), ("error", "error: RUN failed (step 1)", None),
    ]
    assert entries[0]["timestamp"] == "1970-01-01T00:00:01Z"
    assert e2b_words("timed out (at line 3)", origin) == "timed out (at line 3)"  # the base's own steps
    assert e2b_words("line 4: COPY a: no such file", origin) == "step 1: COPY a: no such file"
    warning = {"type": "log", "ts": 1.0, "step": None, "stream": "system", "text": "warning: ARG unused\n"}
    assert [e["level"] for e in log_entries([warning], origin)] == ["warn"]


def test_prune_removes_old_and_partial_uploads_only(tmp_path: Path) -> None:
    store = E2BTemplates(tmp_path, None, None)  # type: ignore[arg-type]  # prune needs neither
    folder = tmp_path / "e2b-files" / "key1"
    folder.mkdir(parents=True)
    for name in ("fresh", "old", ".partial.ab12"):
        (folder / name).write_bytes(b"x")
    old = time.time() - (KEEP_UPLOADS_DAYS + 1) * 86400
    os.utime(folder / "old", (old, old))
    assert store.prune() == 2
    assert sorted(p.name for p in folder.iterdir()) == ["fresh"]


def _link(store: E2BTemplates, key: str, files_hash: str) -> tuple[str, str, int, str]:
    expires = int(time.time()) + 60
    return key, files_hash, expires, store._signature(key, files_hash, expires)


async def _chunks(count: int, gate: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    if gate is not None:
        await gate.wait()
    for _ in range(count):
        await asyncio.sleep(0)  # let the other uploads run between chunks
        yield b"x" * 4096


def test_concurrent_uploads_of_one_key_stay_within_its_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(e2b_templates, "KEY_UPLOAD_BYTES", 48 << 10)
    store = E2BTemplates(tmp_path, None, None)  # type: ignore[arg-type]  # uploads need neither

    async def run() -> list[BaseException | None]:
        gate = asyncio.Event()
        late = asyncio.create_task(store.receive(*_link(store, "k1", "late-file"), None, _chunks(2, gate)))
        await asyncio.sleep(0)
        results = await asyncio.gather(
            *(store.receive(*_link(store, "k1", f"file-{i:04d}"), None, _chunks(5)) for i in range(3)),
            return_exceptions=True)
        gate.set()  # the upload that waited for its first byte while the others ended
        return [*results, *(await asyncio.gather(late, return_exceptions=True))]

    results = asyncio.run(run())
    assert sum(isinstance(r, TooLarge) for r in results) >= 1 and not any(
        r is not None and not isinstance(r, TooLarge) for r in results), results
    folder = tmp_path / "e2b-files" / "k1"
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 48 << 10
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no partial file left
    assert store._uploads == {}


def test_concurrent_status_polls_convert_each_log_line_once(tmp_path: Path) -> None:
    log_file = tmp_path / "log.ndjson"
    events = [{"type": "log", "ts": 1.0, "step": 0, "stream": "stdout", "text": f"line {i}\n"} for i in range(5)]
    log_file.write_text("".join(json.dumps(e) + "\n" for e in events))
    store = E2BTemplates(tmp_path, SimpleNamespace(log_path=lambda _: log_file), None)  # type: ignore[arg-type]
    row = SimpleNamespace(id="b1", options={"e2b_steps": ["1"]})

    async def polls() -> None:
        await asyncio.gather(*(store._read(row) for _ in range(4)))  # type: ignore[arg-type]

    asyncio.run(polls())
    log = store._logs["b1"]
    assert [e["message"] for e in log.entries] == [f"line {i}" for i in range(5)]
    assert log.read == log_file.stat().st_size
