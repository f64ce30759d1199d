"""Unpacking an uploaded build context: hostile archives are refused and write nothing outside."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from corral.templates.upload_priv import UploadError, unpack_archives, unpack_context

OWNER = os.getuid()  # unit tests may run unprivileged: chown to ourselves

def archive(*members: tuple[tarfile.TarInfo, bytes | None]) -> io.BytesIO:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    out.seek(0)
    return out

def entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    return info

def test_a_normal_context_unpacks_with_links_and_modes(tmp_path: Path) -> None:
    tar = archive(
        (entry("./app/", tarfile.DIRTYPE, mode=0o755), None),
        (entry("./app/main.py", mode=0o4755), b"print(1)\n"),
        (entry("./.dockerignore"), b"*.key\n"),
        (entry("./app/link", tarfile.SYMTYPE, "main.py"), None),
        (entry("./app/hard", tarfile.LNKTYPE, "app/main.py"), None),
    )
    assert unpack_context(tar, tmp_path / "ctx", OWNER, 1 << 20) == 5
    ctx = tmp_path / "ctx"
    assert (ctx / "app/main.py").read_text() == "print(1)\n"
    assert (ctx / ".dockerignore").is_file()
    assert os.readlink(ctx / "app/link") == "main.py"
    assert os.stat(ctx / "app/hard").st_ino == os.stat(ctx / "app/main.py").st_ino
    assert os.stat(ctx / "app/main.py").st_mode & 0o7777 == 0o755  # set-id bits dropped

@pytest.mark.parametrize("members", [
    [(entry("../escape"), b"x")],
    [(entry("/abs/escape"), b"x")],
    [(entry("a/../../escape"), b"x")],
    [(entry("dev", tarfile.CHRTYPE), None)],
    [(entry("fifo", tarfile.FIFOTYPE), None)],
    [(entry("hard", tarfile.LNKTYPE, "../outside"), None)],
    [(entry("hard", tarfile.LNKTYPE, "/etc/passwd"), None)],
])
def test_hostile_members_are_refused(tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    with pytest.raises(UploadError, match="refused entry"):
        unpack_context(archive(*members), tmp_path / "ctx", OWNER, 1 << 20)
    assert not (tmp_path / "escape").exists()

def test_nothing_is_written_through_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    tar = archive(
        (entry("dir", tarfile.SYMTYPE, str(outside)), None),
        (entry("dir/planted"), b"x"),
    )
    with pytest.raises(UploadError, match="not a directory"):
        unpack_context(tar, tmp_path / "ctx", OWNER, 1 << 20)
    assert list(outside.iterdir()) == []

def test_a_file_replaces_a_symlink_instead_of_following_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("safe")
    tar = archive(
        (entry("f", tarfile.SYMTYPE, str(victim)), None),
        (entry("f"), b"overwritten"),
    )
    unpack_context(tar, tmp_path / "ctx", OWNER, 1 << 20)
    assert victim.read_text() == "safe"
    assert (tmp_path / "ctx/f").read_text() == "overwritten" and not (tmp_path / "ctx/f").is_symlink()

def test_hard_link_to_a_symlink_is_refused(tmp_path: Path) -> None:
    tar = archive(
        (entry("s", tarfile.SYMTYPE, "/etc/passwd"), None),
        (entry("h", tarfile.LNKTYPE, "s"), None),
    )
    with pytest.raises(UploadError, match="hard link"):
        unpack_context(tar, tmp_path / "ctx", OWNER, 1 << 20)

def test_size_and_count_caps(tmp_path: Path) -> None:
    with pytest.raises(UploadError, match="larger than"):
        unpack_context(archive((entry("big"), b"x" * 4096)), tmp_path / "a", OWNER, 1024)
    many = [(entry(f"f{i}"), b"") for i in range(5)]
    with pytest.raises(UploadError, match="more than 3 entries"):
        unpack_context(archive(*many), tmp_path / "b", OWNER, 1 << 20, max_entries=3)
    assert not (tmp_path / "a/big").exists()

def test_garbage_is_not_an_archive(tmp_path: Path) -> None:
    with pytest.raises(UploadError, match="not a readable tar"):
        unpack_context(io.BytesIO(b"definitely not a tar" * 40), tmp_path / "ctx", OWNER, 1 << 20)

def saved(tmp_path: Path, name: str, tar: io.BytesIO) -> Path:
    path = tmp_path / name
    path.write_bytes(tar.getvalue())
    return path

def test_archives_unpacked_in_turn_never_write_through_an_earlier_ones_links(tmp_path: Path) -> None:
    """Several archives (the E2B SDK's one per COPY) into one context: a symlink the first plants is
    neither followed by the second's entries nor written through; a later file replaces an earlier one."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("kept\n")
    first = saved(tmp_path, "1.tar", archive(
        (entry("d", tarfile.SYMTYPE, str(outside)), None),
        (entry("f", tarfile.SYMTYPE, str(outside / "victim")), None),
        (entry("same.txt"), b"old\n"),
    ))
    second = saved(tmp_path, "2.tar", archive((entry("f"), b"new file\n"), (entry("same.txt"), b"new\n")))
    third = saved(tmp_path, "3.tar", archive((entry("d/x"), b"through the link\n"),))

    unpack_archives([first, second], tmp_path / "ctx", OWNER, 1 << 20)
    ctx = tmp_path / "ctx"
    assert not (ctx / "f").is_symlink() and (ctx / "f").read_text() == "new file\n"
    assert (ctx / "same.txt").read_text() == "new\n" and (outside / "victim").read_text() == "kept\n"
    with pytest.raises(UploadError, match="not a directory"):
        unpack_archives([first, third], tmp_path / "ctx2", OWNER, 1 << 20)
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]

def test_the_caps_hold_for_all_archives_together_and_a_corrupt_stream_is_refused(tmp_path: Path) -> None:

    one = saved(tmp_path, "one.tar", archive((entry("a"), b"x" * 600),))
    two = saved(tmp_path, "two.tar", archive((entry("b"), b"y" * 600),))
    unpack_archives([one], tmp_path / "fits", OWNER, 1000)
    with pytest.raises(UploadError, match="larger than"):
        unpack_archives([one, two], tmp_path / "both", OWNER, 1000)
    with pytest.raises(UploadError, match="more than 1 entries"):
        unpack_archives([one, two], tmp_path / "count", OWNER, 1 << 20, max_entries=1)
    corrupt = tmp_path / "corrupt.tar.xz"
    corrupt.write_bytes(b"\xfd7zXZ\x00" + b"garbage" * 100)
    with pytest.raises(UploadError, match="not a readable tar"):
        unpack_archives([corrupt], tmp_path / "xz", OWNER, 1 << 20)
