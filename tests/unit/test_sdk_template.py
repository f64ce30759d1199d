"""Template builds in the SDK without a server: the Dockerfile rule, context packing, the log's fold."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from corral import BuildException, InvalidArgumentException, ServerException
from corral.sdk import _calls
from corral.sdk._archive import Upload, dockerfile_text, is_dockerfile_text, pack
from corral.sdk._builds import TAIL_LINES, BuildEvent, BuildFollower, parse_build, parse_build_event
from corral.templates.upload_priv import unpack_context

# -- the Dockerfile: text or path -------------------------------------------------------------------


@pytest.mark.parametrize("text", ["FROM base\n", "FROM base", "  from base", "# syntax\nFROM base", "RUN a\nRUN b"])
def test_dockerfile_text_is_taken_as_is(text: str) -> None:
    assert is_dockerfile_text(text)
    assert dockerfile_text(text) == text


@pytest.mark.parametrize("value", ["Dockerfile", "./docker/Dockerfile.dev", "fromage/Dockerfile", "FROMAGE"])
def test_other_strings_are_paths(value: str) -> None:
    assert not is_dockerfile_text(value)


def test_paths_are_read(tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"
    path.write_text("FROM base\nRUN true\n")
    assert dockerfile_text(str(path)) == "FROM base\nRUN true\n"
    assert dockerfile_text(path) == "FROM base\nRUN true\n"


def test_a_path_object_is_never_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidArgumentException, match="'FROM base' not found"):
        dockerfile_text(Path("FROM base"))


def test_missing_or_wrong_dockerfile_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "Dockerfile"
    with pytest.raises(InvalidArgumentException, match=f"Dockerfile '{missing}' not found"):
        dockerfile_text(str(missing))
    with pytest.raises(InvalidArgumentException, match="is a directory"):
        dockerfile_text(tmp_path)
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InvalidArgumentException, match="not UTF-8"):
        dockerfile_text(tmp_path / "bin")


# -- the context ------------------------------------------------------------------------------------


def tree(root: Path, files: dict[str, str]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


def parts(upload: Upload) -> dict[str, tuple[str, bytes]]:
    """The multipart body's parts by name: (headers, data). Checks the framing on the way."""
    body = upload.file.read()
    assert len(body) == upload.size == os.fstat(upload.file.fileno()).st_size
    boundary = upload.content_type.split("boundary=", 1)[1].encode()
    assert body.startswith(b"--" + boundary + b"\r\n") and body.endswith(b"--" + boundary + b"--\r\n")
    found = {}
    for chunk in body.split(b"--" + boundary)[1:-1]:
        head, _, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        name = head.decode().split('name="', 1)[1].split('"', 1)[0]
        found[name] = (head.decode(), data.removesuffix(b"\r\n"))
    return found


def packed(root: Path | None, options: dict[str, object] | None = None) -> tuple[dict[str, object], tarfile.TarFile]:
    upload = pack(root, options or {"name": "t", "dockerfile": "FROM base\n"})
    try:
        found = parts(upload)
    finally:
        upload.close()
    head, archive = found["context"]
    assert 'filename="context.tar.gz"' in head and "application/gzip" in head
    assert archive[:2] == b"\x1f\x8b"  # gzip
    return json.loads(found["build"][1]), tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz")


def test_build_options_go_first_as_json(tmp_path: Path) -> None:
    options = {"name": "t", "dockerfile": "FROM base\nCOPY . /x\n", "build_args": {"A": "1"}}
    sent, _ = packed(tree(tmp_path / "ctx", {"a": "1"}), options)
    assert sent == options


def test_without_a_context_there_is_only_the_build_field() -> None:
    upload = pack(None, {"name": "t", "dockerfile": "FROM base\n"})
    with upload:
        assert list(parts(upload)) == ["build"] and upload.entries == 0


def test_dockerignore_is_honoured(tmp_path: Path) -> None:
    root = tree(tmp_path / "ctx", {
        ".dockerignore": "# comment\n*.log\nbuild\n!build/keep.txt\nsecret.txt\nnode_modules/\n.dockerignore\n",
        "app.py": "print(1)\n",
        "debug.log": "x",
        "src/nested.log": "not matched: * stops at /",
        "build/out.bin": "x",
        "build/keep.txt": "kept",
        "secret.txt": "s",
        "node_modules/pkg/index.js": "x",
        "src/main.py": "main",
    })
    _, tar = packed(root)
    names = tar.getnames()
    assert names == [".dockerignore", "app.py", "build/keep.txt", "src", "src/main.py", "src/nested.log"]
    assert tar.extractfile("build/keep.txt").read() == b"kept"  # type: ignore[union-attr]


def test_symlinks_stay_symlinks(tmp_path: Path) -> None:
    root = tree(tmp_path / "ctx", {"data/file.txt": "content", "ignored/x": "x", ".dockerignore": "ignored\n"})
    os.symlink("data/file.txt", root / "link")
    os.symlink("../data", root / "data" / "self")
    os.symlink("/etc/passwd", root / "ignored" / "outside")  # excluded: never checked, never sent
    _, tar = packed(root)
    link = tar.getmember("link")
    assert link.issym() and link.linkname == "data/file.txt"
    assert tar.getmember("data/self").issym()
    assert "ignored/outside" not in tar.getnames()


@pytest.mark.parametrize("target", ["/etc/passwd", "../../outside", "../../ctx/sub/a", "x/../../../y"])
def test_a_symlink_leaving_the_context_is_refused_and_named(tmp_path: Path, target: str) -> None:
    root = tree(tmp_path / "ctx", {"sub/a": "a"})
    os.symlink(target, root / "sub" / "link")
    with pytest.raises(InvalidArgumentException, match=r"symlink 'sub/link' points outside the context"):
        pack(root, {"name": "t"})


def test_special_files_are_skipped_and_owners_not_sent(tmp_path: Path) -> None:
    root = tree(tmp_path / "ctx", {"a.txt": "a"})
    os.mkfifo(root / "pipe")
    os.chmod(root / "a.txt", 0o751)
    _, tar = packed(root)
    assert tar.getnames() == ["a.txt"]
    member = tar.getmember("a.txt")
    assert (member.uid, member.gid, member.uname, member.gname, member.mode) == (0, 0, "", "", 0o751)


def test_the_servers_unpacker_accepts_the_archive(tmp_path: Path) -> None:
    root = tree(tmp_path / "ctx", {"a/b/c.txt": "c", "top.txt": "t"})
    os.symlink("a/b/c.txt", root / "alias")
    upload = pack(root, {"name": "t"})
    with upload:
        archive = parts(upload)["context"][1]
    dest = tmp_path / "unpacked"
    assert unpack_context(io.BytesIO(archive), dest, os.getuid(), 1 << 20) == 5
    assert (dest / "a/b/c.txt").read_text() == "c" and os.readlink(dest / "alias") == "a/b/c.txt"


# -- requests ---------------------------------------------------------------------------------------


def test_build_requests_are_json_without_a_context_and_sized_multipart_with_one() -> None:
    options = _calls.build_options("t", "FROM base\n", cpu=None, no_cache=True, build_args={"A": "1"})
    assert options == {"name": "t", "dockerfile": "FROM base\n", "build_args": {"A": "1"}, "no_cache": True,
                       "public": False}
    plain = _calls.start_build(options)
    assert (plain.method, plain.path, plain.json, dict(plain.headers)) == ("POST", "/v1/templates", options, {})
    multi = _calls.start_build(options, ("multipart/form-data; boundary=x", 123))
    assert multi.json is None
    assert dict(multi.headers) == {"Content-Type": "multipart/form-data; boundary=x", "Content-Length": "123"}
    assert _calls.build_logs("b1").params == (("follow", "true"),)
    assert _calls.get_template("a/b").path == "/v1/templates/a%2Fb"


def test_a_failed_build_record_is_read() -> None:
    info = parse_build({
        "id": "b1", "template": "t", "state": "failed", "created_at": "2026-01-01T00:00:00Z", "finished_at": None,
        "error": "RUN failed", "error_detail": {"step": 0, "line": 2, "exit_code": 3, "output_tail": "oops"},
        "steps": [{"index": 0, "line": 2, "instruction": "RUN x", "state": "failed", "seconds": 0.2,
                   "exit_code": 3}],
        "options": {"cpu": 1.0}, "future_field": 1,
    })
    assert (info.failed_line, info.exit_code, info.output_tail, info.steps[0].instruction) == (2, 3, "oops", "RUN x")


# -- the log's fold ---------------------------------------------------------------------------------


def step(index: int, state: str, **more: object) -> BuildEvent:
    return parse_build_event({"type": "step", "index": index, "line": index + 2, "instruction": f"RUN s{index}",
                              "state": state, **more})


def log(index: int | None, text: str, stream: str = "stdout") -> BuildEvent:
    return parse_build_event({"type": "log", "step": index, "stream": stream, "text": text})


def status(state: str, error: str | None = None) -> BuildEvent:
    return parse_build_event({"type": "status", "state": state, "error": error})


def test_events_are_typed_and_unknown_ones_kept() -> None:
    assert step(1, "done", seconds=0.5, exit_code=0) == BuildEvent(
        type="step", step=1, line=3, instruction="RUN s1", state="done", seconds=0.5, exit_code=0)
    assert log(None, "note\n", "system").step is None
    assert parse_build_event({"type": "progress", "ts": 1}).type == "progress"
    with pytest.raises(ServerException, match="malformed"):
        parse_build_event({"type": "step"})


def test_a_failure_names_line_exit_code_and_output_tail() -> None:
    follower = BuildFollower("b1", "t")
    for event in (step(0, "running"), step(0, "cached"), step(1, "running"), log(1, "a\nb"), log(1, "c\n"),
                  log(1, "err\n", "stderr"), log(1, "cached layer x\n", "system"), step(1, "failed", exit_code=3),
                  status("failed", "RUN failed with exit code 3 (line 3)")):
        assert follower.feed(event)
    failure = follower.outcome()
    assert isinstance(failure, BuildException)
    assert (failure.build_id, failure.step, failure.line, failure.exit_code) == ("b1", 1, 3, 3)
    assert failure.output_tail == "a\nbc\nerr"
    assert str(failure) == "template 't': build b1 failed at line 3 (RUN s1) with exit code 3\n  | a\n  | bc\n  | err"


def test_the_tail_is_bounded_and_a_failure_outside_steps_says_why() -> None:
    follower = BuildFollower("b1", "t")
    follower.feed(step(0, "running"))
    follower.feed(log(0, "".join(f"line {i}\n" for i in range(100))))
    assert follower.output_tail(0).split("\n") == [f"line {i}" for i in range(100 - TAIL_LINES, 100)]
    follower.feed(status("failed", "FROM nothing: no such template"))
    failure = follower.outcome()
    assert failure is not None and failure.step is None
    assert str(failure) == "template 't': build b1 failed: FROM nothing: no such template"
    ready = BuildFollower("b2", "t")
    ready.feed(status("ready"))
    assert ready.outcome() is None


def test_a_reopened_log_skips_what_was_seen() -> None:
    follower = BuildFollower("b1", "t")
    first = [step(0, "running"), log(0, "x\n")]
    assert [follower.feed(e) for e in first] == [True, True]
    assert not follower.finished
    follower.reopen()
    replay = [*first, step(0, "done"), status("ready")]
    assert [follower.feed(e) for e in replay] == [False, False, True, True]
    assert follower.finished and follower.output_tail(0) == "x"


def test_a_log_that_keeps_ending_early_gives_up() -> None:
    follower = BuildFollower("b1", "t")
    for _ in range(3):
        follower.reopen()
    with pytest.raises(ServerException, match="ended 4 times"):
        follower.reopen()
