"""The stat fix-up of gVisor sandboxes: a tiny library every process there preloads.

Only for a runsc that needs it (``runsc_needs_it``: the 2024 runsc ``make serve`` installs does not).
Debian 12's own runsc (2022) rejects ``AT_NO_AUTOMOUNT`` in ``statx``/``newfstatat`` (EINVAL), which coreutils
passes on every ``ls`` and ``stat``: without the fix-up ``ls /`` fails in every gVisor sandbox.
``gvisor_statx.c`` clears the flag (meaningless there: the sentry has no automount points). The
backend compiles it at its first gVisor create into a dir of its own, binds that dir read-only at
``/.corral/preload`` and a one-line list naming it over the sandbox's ``/etc/ld.so.preload``, which
glibc's loader reads for every dynamically linked program (setuid ones too). A template with an
``/etc/ld.so.preload`` of its own keeps it (and the EINVAL). docs/gvisor.md, "The stat fix-up".
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from corral.runtime import static_tools

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("gvisor_statx.c")
INSIDE_DIR = "/.corral/preload"
PRELOAD_LIST = "/etc/ld.so.preload"  # where glibc's loader looks, whatever the program
LIBRARY = "statx.so"
LIST_FILE = "ld.so.preload"  # the list's name in the host dir
NAME_INSIDE = Path(PRELOAD_LIST).name  # the list's name in the sandbox's /etc
CC_FLAGS = ["-shared", "-fPIC", "-O2", "-nostdlib", "-ffreestanding"]
FIXED_IN = 20240729  # the first runsc release seen taking the flag (bookworm-backports'); 2022's refuses it


@dataclass(frozen=True)
class Preload:
    """The built fix-up: a host dir holding the library and the list that names it inside."""

    dir: Path

    @property
    def list_file(self) -> Path:
        return self.dir / LIST_FILE


def needed(version: str) -> bool:
    """Whether a runsc whose ``--version`` printed ``version`` needs the fix-up: a release before
    ``FIXED_IN``, or one whose date is not found (then it is kept: it costs only time)."""
    found = re.search(r"(\d{8})\.\d+", version)
    return found is None or int(found.group(1)) < FIXED_IN


def runsc_needs_it(runsc: str = "runsc") -> bool:
    """``needed`` for the runsc on this host's PATH."""
    try:
        done = subprocess.run([runsc, "--version"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.SubprocessError):
        return True
    return needed(done.stdout)


def build(dest: Path) -> Preload | None:
    """Compile the fix-up into ``dest`` (made world-readable: runsc's gofer reads it as a mapped
    id). None, with a warning, when this host has no C compiler or the build fails: gVisor sandboxes
    then run without it."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        log.warning("no C compiler (install gcc): gVisor sandboxes start without the stat fix-up, "
                    "so `ls` and `stat` fail there with EINVAL (docs/gvisor.md)")
        return None
    listing = dest / f".{LIST_FILE}.{os.getpid()}"
    try:
        dest.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(dest, 0o755)
        static_tools.compile_c(cc, SOURCE, dest / LIBRARY, CC_FLAGS, 0o644)
        listing.write_text(f"{INSIDE_DIR}/{LIBRARY}\n")
        os.chmod(listing, 0o644)
        os.replace(listing, dest / LIST_FILE)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("building the gVisor stat fix-up failed (%s): gVisor sandboxes start without it", exc)
        with contextlib.suppress(OSError):
            listing.unlink()
        return None
    return Preload(dest)


def remove(dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)


def template_has_own(root: Path) -> bool:
    """Whether the sandbox's root (a mounted overlay of untrusted layers, read without following any
    link) has a non-empty ``/etc/ld.so.preload`` of its own, or anything there but a plain file, or an
    ``/etc`` that is not a plain dir: then the sandbox keeps what its template has. An empty list
    names nothing (and may be a fix-up's mount point a crash left in a layer): it is covered."""
    try:
        etc = _open_etc(root)
    except FileNotFoundError:
        return False
    except OSError:  # a link, or not a dir
        return True
    try:
        return _empty_list(etc) is False
    finally:
        os.close(etc)


def drop_mount_point(layer: Path) -> None:
    """Remove the empty file runsc made in the sandbox's upper dir to bind the list over, from a
    layer captured of it (``layer`` is untrusted content: nothing is followed)."""
    try:
        etc = _open_etc(layer)
    except OSError:
        return
    try:
        if _empty_list(etc):
            os.unlink(NAME_INSIDE, dir_fd=etc)
    finally:
        os.close(etc)


def _open_etc(root: Path) -> int:
    """An ``O_PATH`` fd of ``root/etc`` reached without following a link (OSError: missing, a link,
    not a dir)."""
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        return os.open("etc", os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root_fd)
    finally:
        os.close(root_fd)


def _empty_list(etc: int) -> bool | None:
    """Whether the ``ld.so.preload`` in ``etc`` is an empty regular file (None: there is none)."""
    try:
        st = os.stat(NAME_INSIDE, dir_fd=etc, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return stat.S_ISREG(st.st_mode) and st.st_size == 0
