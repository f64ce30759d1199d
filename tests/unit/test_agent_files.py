"""The agent's file operations and watches, driven through AgentClient against a real agent."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_agent_harness import USER_UID, RunningAgent, agent, needs_root, run, shared, user_gid, wait_until

from corral.agent.protocol import AgentError

__all__ = ["agent", "shared"]  # the fixtures, imported from the harness

MiB = 1 << 20


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_write_then_read_5_mib_of_binary_data(agent: RunningAgent, tmp_path: Path) -> None:
    data = os.urandom(5 * MiB)
    target = tmp_path / "blob.bin"

    async def main() -> None:
        entry = await agent.client.write(str(target), chunked(data, 700_001), user="root", mode=0o640)
        assert entry["type"] == "file" and entry["size"] == len(data) and entry["path"] == str(target)
        assert entry["mode"] == 0o640 and entry["permissions"] == "-rw-r-----"
        assert target.read_bytes() == data
        async with agent.client.read(str(target), user="root") as reader:
            assert reader.entry["size"] == len(data)
            digest, chunks = hashlib.sha256(), 0
            async for chunk in reader:
                digest.update(chunk)
                chunks += 1
        assert digest.digest() == hashlib.sha256(data).digest() and chunks > 1

    run(main())


@needs_root
def test_write_replaces_atomically_and_the_user_owns_what_it_creates(agent: RunningAgent, shared: Path) -> None:
    home = shared / "home"
    home.mkdir()
    os.chown(home, USER_UID, user_gid())
    target = home / "new" / "deeper" / "file.txt"

    async def main() -> None:
        await agent.client.write(str(target), b"first", user="user")
        entry = await agent.client.write(str(target), b"second version", user="user")
        assert target.read_bytes() == b"second version" and entry["size"] == 14
        assert entry["owner"] == (pwd.getpwuid(USER_UID).pw_name if _has_uid(USER_UID) else str(USER_UID))
        for path in (target, target.parent, target.parent.parent):
            assert (path.stat().st_uid, path.stat().st_gid) == (USER_UID, user_gid())
        assert (shared.stat().st_uid, home.stat().st_uid) == (0, USER_UID)  # existing parents are left alone
        assert os.listdir(target.parent) == ["file.txt"]  # no temp file left behind
        assert stat.S_IMODE(target.stat().st_mode) == 0o644

    run(main())


def test_write_errors_arrive_early_and_leave_nothing(agent: RunningAgent, tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    (tmp_path / "dir").mkdir()

    async def main() -> None:
        big = chunked(os.urandom(8 * MiB), MiB)
        with pytest.raises(AgentError) as err:
            await agent.client.write(str(tmp_path / "dir"), big, user="root")
        assert err.value.kind == "is_dir"
        with pytest.raises(AgentError) as err:
            await agent.client.write(str(tmp_path / "plain" / "child"), b"data", user="root")
        assert err.value.kind == "not_dir"

        async def failing() -> AsyncIterator[bytes]:
            yield b"partial"
            raise RuntimeError("caller gave up")

        with pytest.raises(RuntimeError):
            await agent.client.write(str(tmp_path / "aborted"), failing(), user="root")
        await wait_until(lambda: sorted(os.listdir(tmp_path)) == ["dir", "plain"], "the temp file is gone")
        assert (await agent.client.ping())["ok"]

    run(main())


def test_list_respects_depth_and_does_not_follow_symlinks(agent: RunningAgent, tmp_path: Path) -> None:
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "deep.txt").write_text("deep")
    (tmp_path / "top.txt").write_text("top")
    (tmp_path / "link").symlink_to(tmp_path / "a")

    async def names(depth: int) -> list[str]:
        entries = await agent.client.list(str(tmp_path), depth=depth, user="root")
        return [os.path.relpath(e["path"], tmp_path) for e in entries]

    async def main() -> None:
        assert await names(1) == ["a", "link", "top.txt"]
        assert await names(2) == ["a", "a/b", "link", "top.txt"]
        assert await names(4) == ["a", "a/b", "a/b/c", "a/b/c/deep.txt", "link", "top.txt"]
        with pytest.raises(AgentError) as err:
            await agent.client.list(str(tmp_path), depth=0, user="root")
        assert err.value.kind == "invalid"

    run(main())


def test_stat_reports_symlinks_and_files(agent: RunningAgent, tmp_path: Path) -> None:
    (tmp_path / "target.txt").write_text("hello")
    (tmp_path / "link").symlink_to("target.txt")

    async def main() -> None:
        link = await agent.client.stat(str(tmp_path / "link"), user="root")
        assert (link["type"], link["symlink_target"], link["name"]) == ("symlink", "target.txt", "link")
        file = await agent.client.stat(str(tmp_path / "target.txt"), user="root")
        expected = {
            "name": "target.txt",
            "type": "file",
            "size": 5,
            "owner": "root",
            "group": "root",
            "symlink_target": None,
        }
        assert {k: file[k] for k in expected} == expected
        assert file["permissions"] == stat.filemode((tmp_path / "target.txt").stat().st_mode)
        assert abs(file["modified"] - (tmp_path / "target.txt").stat().st_mtime) < 1e-3
        home = await agent.client.stat(".", user="root")  # relative paths start at the user's home
        assert home["type"] == "dir" and os.path.samefile(home["path"], pwd.getpwuid(0).pw_dir)

    run(main())


def test_mkdir_reports_whether_it_created(agent: RunningAgent, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")

    async def main() -> None:
        assert await agent.client.mkdir(str(tmp_path / "x" / "y" / "z"), user="root") is True
        assert (tmp_path / "x" / "y" / "z").is_dir()
        assert await agent.client.mkdir(str(tmp_path / "x" / "y"), user="root") is False
        with pytest.raises(AgentError) as err:
            await agent.client.mkdir(str(tmp_path / "file"), user="root")
        assert err.value.kind == "exists"

    run(main())


def test_remove_files_trees_and_symlinks_without_following(agent: RunningAgent, tmp_path: Path) -> None:
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "f").write_text("x")
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "precious").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "keep")
    (tmp_path / "single").write_text("x")

    async def main() -> None:
        for name in ("tree", "link", "single"):
            await agent.client.remove(str(tmp_path / name), user="root")
        assert sorted(os.listdir(tmp_path)) == ["keep"]
        assert (tmp_path / "keep" / "precious").exists()
        with pytest.raises(AgentError) as err:
            await agent.client.remove(str(tmp_path / "single"), user="root")
        assert err.value.kind == "not_found"

    run(main())


def test_rename_moves_into_new_parents(agent: RunningAgent, tmp_path: Path) -> None:
    (tmp_path / "src.txt").write_text("payload")

    async def main() -> None:
        dst = tmp_path / "new" / "dst.txt"
        entry = await agent.client.rename(str(tmp_path / "src.txt"), str(dst), user="root")
        assert entry["path"] == str(dst) and entry["size"] == 7
        assert dst.read_text() == "payload" and not (tmp_path / "src.txt").exists()
        with pytest.raises(AgentError) as err:
            await agent.client.rename(str(tmp_path / "src.txt"), str(dst), user="root")
        assert err.value.kind == "not_found"

    run(main())


def test_errors_name_their_kind(agent: RunningAgent, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()

    async def main() -> None:
        cases: list[tuple[Any, str]] = [
            (agent.client.stat(str(tmp_path / "missing"), user="root"), "not_found"),
            (agent.client.stat(str(tmp_path / "file" / "x"), user="root"), "not_dir"),
            (agent.client.list(str(tmp_path / "file"), user="root"), "not_dir"),
            (agent.client.list(str(tmp_path / "missing"), user="root"), "not_found"),
            (agent.client.read(str(tmp_path / "dir"), user="root").__aenter__(), "is_dir"),
            (agent.client.read(str(tmp_path / "missing"), user="root").__aenter__(), "not_found"),
            (agent.client.stat("", user="root"), "invalid"),
        ]
        for call, kind in cases:
            with pytest.raises(AgentError) as err:
                await call
            assert err.value.kind == kind, err.value
            assert err.value.message

    run(main())


def test_watch_reports_create_write_remove_recursively(agent: RunningAgent, tmp_path: Path) -> None:
    async def main() -> None:
        async with agent.client.watch(str(tmp_path), recursive=True, user="root") as watcher:
            events = aiter(watcher)

            async def expect(op: str, name: str) -> None:
                async for event in events:
                    if (event["op"], event["name"]) == (op, name):
                        return
                raise AssertionError(f"watch ended before {op} {name}")

            (tmp_path / "a.txt").write_bytes(b"")
            await expect("create", "a.txt")
            with open(tmp_path / "a.txt", "ab") as f:
                f.write(b"more")
            await expect("write", "a.txt")
            (tmp_path / "a.txt").unlink()
            await expect("remove", "a.txt")
            (tmp_path / "sub").mkdir()
            await expect("create", "sub")
            (tmp_path / "sub" / "inner.txt").write_text("x")  # the new subdirectory is watched
            await expect("create", "sub/inner.txt")
            await agent.client.write(str(tmp_path / "sub" / "via-agent"), b"x", user="root")
            seen = []
            async for event in events:
                seen.append(event["name"])
                if event == {"event": "fs", "op": "create", "name": "sub/via-agent"}:
                    break
            assert not [n for n in seen if ".corral-write-" in n]  # the agent's temp files are hidden

        with pytest.raises(AgentError) as err:
            async with agent.client.watch(str(tmp_path / "nope"), user="root"):
                pass
        assert err.value.kind == "not_found"

    run(main())


def test_watch_ends_when_the_directory_goes_away(agent: RunningAgent, tmp_path: Path) -> None:
    (tmp_path / "gone").mkdir()

    async def main() -> None:
        async with agent.client.watch(str(tmp_path / "gone"), user="root") as watcher:
            await asyncio.to_thread((tmp_path / "gone").rmdir)
            assert [event async for event in watcher] == []

    run(main())


def _has_uid(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True
