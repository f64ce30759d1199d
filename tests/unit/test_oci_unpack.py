"""Layer unpacking: normal tars come out shifted and overlay-ready; hostile tars are refused or defused.

Needs root (chown to shifted ids, mknod, trusted xattrs), like the runtime's privileged modules.
"""

from __future__ import annotations

import asyncio
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from corral.templates.oci import ImageConfig, PullError, _Ref, pull
from corral.templates.oci_unpack_priv import UnpackError, unpack_layer

OFFSET = 1_000_000

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking chowns to shifted ids: needs root")


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", *, mode: int = 0o644, uid: int = 0,
          gid: int = 0, link: str = "", mtime: int = 1_600_000_000, dev: tuple[int, int] = (0, 0)) -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.linkname, info.mtime = kind, mode, uid, gid, link, mtime
    info.devmajor, info.devminor = dev
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def make_tar(*entries: tuple) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    buf.seek(0)
    return buf


def unpack(tmp_path: Path, *entries: tuple) -> Path:
    dest = tmp_path / "fs"
    dest.mkdir()
    unpack_layer(make_tar(*entries), dest, id_offset=OFFSET)
    return dest


def test_files_dirs_links_keep_modes_and_shift_owners(tmp_path: Path) -> None:
    fs = unpack(
        tmp_path,
        entry("./", tarfile.DIRTYPE, mode=0o755),
        entry("./bin/", tarfile.DIRTYPE, mode=0o755, mtime=1_500_000_000),
        entry("./bin/tool", data=b"#!/bin/sh\n", mode=0o4755),
        entry("./bin/sh", tarfile.SYMTYPE, link="tool"),
        entry("./bin/alias", tarfile.LNKTYPE, link="./bin/tool"),
        entry("home/user/notes", data=b"hi", mode=0o600, uid=1000, gid=1000),
        entry("run/fifo", tarfile.FIFOTYPE, mode=0o620),
    )
    tool = (fs / "bin/tool").stat()
    assert stat.S_IMODE(tool.st_mode) == 0o4755, "setuid survives (it is inert in the sandbox's userns)"
    assert (tool.st_uid, tool.st_gid) == (OFFSET, OFFSET)
    assert tool.st_mtime == 1_600_000_000
    assert os.readlink(fs / "bin/sh") == "tool"
    assert os.lstat(fs / "bin/sh").st_uid == OFFSET
    assert (fs / "bin/alias").stat().st_ino == tool.st_ino
    notes = (fs / "home/user/notes").stat()
    assert (notes.st_uid, notes.st_gid, stat.S_IMODE(notes.st_mode)) == (OFFSET + 1000, OFFSET + 1000, 0o600)
    # a parent missing from the tar is made as sandbox root, 0755
    home = (fs / "home").stat()
    assert (home.st_uid, stat.S_IMODE(home.st_mode)) == (OFFSET, 0o755)
    assert (fs / "bin").stat().st_mtime == 1_500_000_000, "dir mtimes are set after their contents"
    assert stat.S_ISFIFO((fs / "run/fifo").lstat().st_mode)
    assert fs.stat().st_uid == OFFSET


def test_whiteouts_become_overlay_whiteouts(tmp_path: Path) -> None:
    fs = unpack(
        tmp_path,
        entry("etc/.wh.motd"),
        entry("opt/app/", tarfile.DIRTYPE),
        entry("opt/app/.wh..wh..opq"),
        entry("opt/app/new", data=b"x"),
        entry("tmp/.wh..wh.plnk/123"),
    )
    wh = (fs / "etc/motd").lstat()
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == os.makedev(0, 0)
    assert not (fs / "etc/.wh.motd").exists()
    assert os.getxattr(fs / "opt/app", "trusted.overlay.opaque") == b"y"
    assert not (fs / "opt/app/.wh..wh..opq").exists()
    assert (fs / "opt/app/new").read_bytes() == b"x"
    assert not (fs / "tmp").exists(), "aufs metadata is skipped"


def test_device_nodes_are_dropped(tmp_path: Path) -> None:
    fs = unpack(
        tmp_path,
        entry("dev/", tarfile.DIRTYPE),
        entry("dev/sda", tarfile.BLKTYPE, mode=0o4666, dev=(8, 0)),
        entry("dev/mem", tarfile.CHRTYPE, mode=0o666, dev=(1, 1)),
        entry("dev/ok", data=b"kept"),
    )
    assert sorted(p.name for p in (fs / "dev").iterdir()) == ["ok"]


def test_later_entries_replace_earlier_ones(tmp_path: Path) -> None:
    fs = unpack(
        tmp_path,
        entry("a", data=b"old"),
        entry("a", data=b"new"),
        entry("d/x", data=b"1"),
        entry("d", tarfile.SYMTYPE, link="/etc"),
    )
    assert (fs / "a").read_bytes() == b"new"
    assert os.readlink(fs / "d") == "/etc"


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        ([entry("/etc/passwd", data=b"x")], "absolute"),
        ([entry("../escape", data=b"x")], "'..'"),
        ([entry("a/../../escape", data=b"x")], "'..'"),
        ([entry("evil", tarfile.SYMTYPE, link="/etc"), entry("evil/passwd", data=b"x")], "symlink"),
        ([entry("up", tarfile.SYMTYPE, link=".."), entry("up/x", data=b"x")], "symlink"),
        ([entry("h", tarfile.LNKTYPE, link="/etc/shadow")], "absolute"),
        ([entry("h", tarfile.LNKTYPE, link="../outside")], "'..'"),
        ([entry("h", tarfile.LNKTYPE, link="not-here")], "not a file of this layer"),
        ([entry("d/", tarfile.DIRTYPE), entry("h", tarfile.LNKTYPE, link="d")], "not a file of this layer"),
        ([entry("s", tarfile.SYMTYPE, link="/etc/passwd"), entry("h", tarfile.LNKTYPE, link="s")],
         "not a file of this layer"),
        ([entry("big", data=b"x", uid=65536)], "outside"),
        ([entry("big", data=b"x", gid=2**31)], "outside"),
        ([entry(".wh..", data=b"")], "bad whiteout"),
    ],
)
def test_hostile_entries_are_rejected(tmp_path: Path, entries: list[tuple], why: str) -> None:
    outside = tmp_path / "outside"
    dest = tmp_path / "fs"
    dest.mkdir()
    with pytest.raises(UnpackError, match=why):
        unpack_layer(make_tar(*entries), dest, id_offset=OFFSET)
    assert not outside.exists() and not (tmp_path / "escape").exists()


def test_symlinked_parent_never_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    dest = tmp_path / "fs"
    dest.mkdir()
    tar = make_tar(entry("a", tarfile.SYMTYPE, link=str(victim)), entry("a/owned", data=b"pwned"))
    with pytest.raises(UnpackError, match="symlink"):
        unpack_layer(tar, dest, id_offset=OFFSET)
    assert list(victim.iterdir()) == []


def test_whiteout_through_symlink_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("x")
    dest = tmp_path / "fs"
    dest.mkdir()
    tar = make_tar(entry("a", tarfile.SYMTYPE, link=str(victim)), entry("a/.wh.keep"))
    with pytest.raises(UnpackError, match="symlink"):
        unpack_layer(tar, dest, id_offset=OFFSET)
    assert (victim / "keep").read_text() == "x"


def test_destination_must_be_empty(tmp_path: Path) -> None:
    (tmp_path / "left").write_text("x")
    with pytest.raises(UnpackError, match="not empty"):
        unpack_layer(make_tar(entry("a", data=b"x")), tmp_path, id_offset=OFFSET)


def test_garbage_is_a_bad_tar(tmp_path: Path) -> None:
    dest = tmp_path / "fs"
    dest.mkdir()
    with pytest.raises(UnpackError, match="bad tar"):
        unpack_layer(io.BytesIO(b"\x01" * 1024), dest, id_offset=OFFSET)


def test_image_config_parsed() -> None:
    raw = (b'{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/bin","EMPTY=","A=b=c"],'
           b'"WorkingDir":"/app","User":"1000:1000","Cmd":["sh","-c","run"],"Entrypoint":null,'
           b'"Labels":{"org.x":"y"},"ExposedPorts":{"8080/tcp":{},"53/udp":{}}},"rootfs":{"diff_ids":[]}}')
    config = ImageConfig.from_json(raw)
    assert config == ImageConfig(
        env=(("PATH", "/usr/bin"), ("EMPTY", ""), ("A", "b=c")), workdir="/app", user="1000:1000",
        cmd=("sh", "-c", "run"), entrypoint=None, labels={"org.x": "y"}, exposed_ports=("53/udp", "8080/tcp"),
    )
    assert ImageConfig.from_json(b"{}") == ImageConfig((), None, None, None, None, {}, ())


@pytest.mark.parametrize("raw", [b"[]", b'{"config":{"Cmd":"sh"}}', b'{"config":{"Env":[1]}}', b"\xff",
                                 b'{"config":{"Labels":{"a":1}}}'])
def test_image_config_rejects_bad_shapes(raw: bytes) -> None:
    with pytest.raises(ValueError):
        ImageConfig.from_json(raw)


def test_references_pick_host_and_scheme() -> None:
    hub = _Ref.parse("docker.io/library/alpine:3.20")
    assert (hub.host, hub.repository, hub.tag, hub.digest) == ("registry-1.docker.io", "library/alpine", "3.20", None)
    assert not hub.plain_http(())
    pinned = _Ref.parse("registry.example:5000/team/img:v1@sha256:" + "a" * 64)
    assert (pinned.host, pinned.tag, pinned.digest) == ("registry.example:5000", "v1", "sha256:" + "a" * 64)
    assert not pinned.plain_http(())
    assert pinned.plain_http(["registry.example:5000"]) and pinned.plain_http(["registry.example"])
    assert not pinned.plain_http(["other.example"])
    for loopback in ("localhost:5000", "127.0.0.1:5000", "[::1]:5000", "localhost"):
        assert _Ref.parse(f"{loopback}/x:1").plain_http(()), loopback


@pytest.mark.parametrize("ref", ["alpine", "docker.io/../etc:1", "docker.io/Upper:1", "r.example/x@md5:abc",
                                 "r.example/x:bad/tag", "r.example/x@sha256:short"])
def test_bad_references_are_refused_without_network(ref: str, tmp_path: Path) -> None:
    with pytest.raises(PullError, match=r"invalid reference|unsupported digest") as err:
        asyncio.run(pull(ref, tmp_path / "store"))
    assert str(err.value).startswith(ref)
