"""The stat fix-up of gVisor sandboxes: a tiny library every process there preloads.

Debian 12's runsc rejects ``AT_NO_AUTOMOUNT`` in ``statx``/``newfstatat`` (EINVAL), which coreutils
passes on every ``ls`` and ``stat``: without the fix-up ``ls /`` fails in every gVisor sandbox.
``gvisor_statx.c`` clears the flag (meaningless there: the sentry has no automount points). The
backend compiles it once at start into a dir of its own, binds that dir read-only at
``/.corral/preload`` and a one-line list naming it over the sandbox's ``/etc/ld.so.preload``, which
glibc's loader reads for every dynamically linked program (setuid ones too). A template with an
``/etc/ld.so.preload`` of its own keeps it (and the EINVAL). docs/gvisor.md, "The stat fix-up".
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("gvisor_statx.c")
INSIDE_DIR = "/.corral/preload"
PRELOAD_LIST = "/etc/ld.so.preload"  # where glibc's loader looks, whatever the program
LIBRARY = "statx.so"
LIST = "ld.so.preload"
COMPILE_TIMEOUT = 60.0
CC_FLAGS = ["-shared", "-fPIC", "-O2", "-nostdlib", "-ffreestanding", "-Wall", "-Werror"]


@dataclass(frozen=True)
class Preload:
    """The built fix-up: a host dir holding the library and the list that names it inside."""

    dir: Path

    @property
    def list_file(self) -> Path:
        return self.dir / LIST


def build(dest: Path) -> Preload | None:
    """Compile the fix-up into ``dest`` (made world-readable: runsc's gofer reads it as a mapped
    id). None, with a warning, when this host has no C compiler or the build fails: gVisor sandboxes
    then run without it."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        log.warning("no C compiler (install gcc): gVisor sandboxes start without the stat fix-up, "
                    "so `ls` and `stat` fail there with EINVAL (docs/gvisor.md)")
        return None
    dest.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(dest, 0o755)
    partial = dest / f".{LIBRARY}.{os.getpid()}"
    try:
        done = subprocess.run(
            [cc, *CC_FLAGS, "-o", str(partial), str(SOURCE)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=COMPILE_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("building the gVisor stat fix-up failed (%s): gVisor sandboxes start without it", exc)
        return None
    if done.returncode != 0:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        log.warning("building the gVisor stat fix-up failed (%s): gVisor sandboxes start without it",
                    done.stderr.strip()[-500:])
        return None
    os.chmod(partial, 0o644)
    os.replace(partial, dest / LIBRARY)
    listing = dest / f".{LIST}.{os.getpid()}"
    listing.write_text(f"{INSIDE_DIR}/{LIBRARY}\n")
    os.chmod(listing, 0o644)
    os.replace(listing, dest / LIST)
    return Preload(dest)


def remove(dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)


def template_has_own(root: Path) -> bool:
    """Whether the sandbox's root (a mounted overlay of untrusted layers, read without following any
    link) has an ``/etc/ld.so.preload`` of its own, or an ``/etc`` that is not a plain dir: then the
    sandbox keeps what its template has."""
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        try:
            etc = os.open("etc", os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root_fd)
        except FileNotFoundError:
            return False
        except OSError:  # a link, or not a dir
            return True
        try:
            os.stat(LIST, dir_fd=etc, follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False
        finally:
            os.close(etc)
    finally:
        os.close(root_fd)


def drop_mount_point(layer: Path) -> None:
    """Remove the empty file runsc made in the sandbox's upper dir to bind the list over, from a
    layer captured of it (``layer`` is untrusted content: nothing is followed)."""
    layer_fd = os.open(layer, os.O_PATH | os.O_DIRECTORY)
    try:
        try:
            etc = os.open("etc", os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=layer_fd)
        except OSError:
            return
        try:
            st = os.stat(LIST, dir_fd=etc, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_size == 0:
                os.unlink(LIST, dir_fd=etc)
        except FileNotFoundError:
            pass
        finally:
            os.close(etc)
    finally:
        os.close(layer_fd)
