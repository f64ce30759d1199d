"""Template root filesystems: build the Debian base with mmdebstrap, shift its ids, cache it.

A template's rootfs is built once and never written again: sandboxes mount it as a read-only
overlay lower. Its files are owned by *shifted* ids (``subid_base + id``) so that uid 0..65535 in
a sandbox's user namespace own them and root inside a sandbox can modify its own copy-on-write
view (``apt-get install`` works), while no id in a sandbox is a real host id.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

BASE_PACKAGES = (
    "python3", "nodejs", "bash", "coreutils", "git", "curl", "ca-certificates",
    "procps", "iproute2", "less", "xz-utils", "findutils", "grep", "sed",
)
SANDBOX_USER = "user"
SANDBOX_UID = 1000
MARKER = ".corral-template"

_SETUP_HOOK = (
    'chroot "$1" useradd --create-home --uid 1000 --user-group --shell /bin/bash user && '
    'mkdir -p "$1/.corral/rt" "$1/.corral/lib/corral_agent" && '
    'echo "127.0.0.1 localhost" > "$1/etc/hosts" && '
    'rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*'
)


class RootfsError(RuntimeError):
    """Building a template rootfs failed; the message carries the tool's last output."""


def host_mirror(default: str = "http://deb.debian.org/debian") -> str:
    """The first Debian mirror the host's apt is configured with (so builds use the same one)."""
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            text = path.read_text()
        except OSError:
            continue
        for match in re.finditer(r"(?:^URIs:\s*|^deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text, re.M):
            uri = match.group(1)
            if "security" not in uri and uri.startswith(("http://", "https://")):
                return uri.rstrip("/")
    return default


def apt_sources(mirror: str, suite: str = "bookworm") -> list[str]:
    security = re.sub(r"/debian$", "/debian-security", mirror)
    lines = [f"deb {mirror} {suite} main", f"deb {mirror} {suite}-updates main"]
    if security != mirror:
        lines.append(f"deb {security} {suite}-security main")
    return lines


def build_base(
    dest: Path,
    mirror: str,
    id_offset: int,
    packages: tuple[str, ...] = BASE_PACKAGES,
    log: Callable[[str], None] = print,
) -> None:
    """Build the Debian bookworm base rootfs into ``dest`` (atomically: built aside, then renamed)."""
    if (dest / MARKER).exists():
        return
    work = dest.with_name(dest.name + ".building")
    if work.exists():
        shutil.rmtree(work)
    work.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        "mmdebstrap", "--variant=minbase", "--mode=root", "--format=directory",
        f"--include={','.join(packages)}",
        "--customize-hook", _SETUP_HOOK,
        "bookworm", str(work), *apt_sources(mirror),
    ]
    log(f"building base template with mmdebstrap from {mirror} (once; ~1 minute)")
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise RootfsError(f"mmdebstrap failed ({proc.returncode}):\n{tail}")
    shift_ids(work, id_offset)
    (work / MARKER).write_text("base\n")
    if dest.exists():
        shutil.rmtree(dest)
    work.rename(dest)


def shift_ids(root: Path, offset: int) -> None:
    """Add ``offset`` to the owner and group of every file under ``root`` (keeping set-id bits)."""

    def shift(path: str) -> None:
        st = os.lstat(path)
        if st.st_uid >= offset:
            return
        os.lchown(path, st.st_uid + offset, st.st_gid + offset)
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(path, stat.S_IMODE(st.st_mode))  # chown clears set-id bits; restore them

    shift(str(root))
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            shift(os.path.join(dirpath, name))


def is_built(path: Path) -> bool:
    return (path / MARKER).exists()
