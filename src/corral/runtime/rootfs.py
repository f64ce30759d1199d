"""Template root filesystems: build the Debian base with mmdebstrap, shift its ids, cache it.

A template's rootfs is built once and never written again: sandboxes mount it as a read-only
overlay lower. Its files are owned by *shifted* ids (``subid_base + id``) so that uid 0..65535 in
a sandbox's user namespace own them and root inside a sandbox can modify its own copy-on-write
view (``apt-get install`` works), while no id in a sandbox is a real host id.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

BASE_PACKAGES = (
    "python3", "python3-pip", "python3-venv", "nodejs", "bash", "coreutils", "git", "curl", "ca-certificates",
    "procps", "iproute2", "less", "xz-utils", "findutils", "grep", "sed",
)
SANDBOX_USER = "user"
SANDBOX_UID = 1000
MARKER = ".corral-template"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")

# pip installs into the sandbox's own copy-on-write system (Debian marks it externally managed).
_SETUP_HOOK = (
    'chroot "$1" useradd --create-home --uid 1000 --user-group --shell /bin/bash user && '
    'mkdir -p "$1/.corral/rt" "$1/.corral/lib/corral_agent" "$1/.corral/lib/corral_interp" && '
    'echo "127.0.0.1 localhost" > "$1/etc/hosts" && '
    'printf "[global]\\nbreak-system-packages = true\\n" > "$1/etc/pip.conf"'
)
# Every command runs in a login shell (`bash -l -c`, as E2B's envd runs it); Debian's /etc/profile
# forks `id -u` to pick PATH, ~half of the login shell's cost. Bash knows its EUID; sh falls back.
# Root's ~/.profile forks `mesg n` (closes its terminal to other users' `write`: none here): 1 ms of
# root's 2.7 ms login shell under bwrap, 11 of 29 ms under gVisor.
_PROFILE_HOOK = (
    'sed -i \'s/"$(id -u)"/"${EUID:-$(id -u)}"/\' "$1/etc/profile" && '
    'sed -i \'/^mesg n/d\' "$1/root/.profile"'
)
_CLEANUP_HOOK = 'rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/* "$1"/root/.npm "$1"/tmp/*'
# npm runs in the chroot with the host's CA bundle, so it works behind a TLS-inspecting proxy too.
_NPM_HOOK = (
    'cp /etc/resolv.conf "$1/etc/resolv.conf" && '
    f'cp {HOST_CA} "$1/tmp/host-ca.crt" && '
    'chroot "$1" env NODE_EXTRA_CA_CERTS=/tmp/host-ca.crt npm install --global --no-audit --no-fund {packages} && '
    'rm -f "$1/etc/resolv.conf"'
)


@dataclass(frozen=True)
class Recipe:
    """How to build one built-in template: Debian packages plus npm packages, all pinned by the suite."""

    name: str
    packages: tuple[str, ...]
    npm_packages: tuple[str, ...] = ()
    minutes: int = 1

    @property
    def signature(self) -> str:
        """Changes whenever what the recipe builds changes (a cached rootfs with another is rebuilt)."""
        text = "\n".join([*self.packages, "--", *self.npm_packages, "--", *self.hooks()])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def hooks(self) -> list[str]:
        hooks = [_SETUP_HOOK, _PROFILE_HOOK]
        if self.npm_packages:
            hooks.append(_NPM_HOOK.replace("{packages}", " ".join(self.npm_packages)))
        return [*hooks, _CLEANUP_HOOK]


# npm too, as E2B's base image has it (`FROM e2bdev/base` + `RUN npm i …` is their documented pattern)
BASE = Recipe("base", (*BASE_PACKAGES, "npm"), minutes=2)
CODE_INTERPRETER = Recipe(
    "code-interpreter",
    (
        *BASE_PACKAGES,
        "python3-ipykernel", "python3-jupyter-client", "python3-numpy", "python3-pandas", "python3-matplotlib",
        "npm",
    ),
    npm_packages=("typescript@5.9.3",),
    minutes=3,
)
RECIPES = {r.name: r for r in (BASE, CODE_INTERPRETER)}


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


def build(
    recipe: Recipe,
    dest: Path,
    mirror: str,
    id_offset: int,
    log: Callable[[str], None] = print,
) -> None:
    """Build a built-in template's rootfs into ``dest`` (atomically: built aside, then renamed); a rootfs
    from an older recipe is replaced. Callers serialise builds of one templates dir (``build_lock``)."""
    if is_current(recipe, dest):
        return
    work = dest.with_name(dest.name + ".building")
    if work.exists():
        shutil.rmtree(work)
    work.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        "mmdebstrap", "--variant=minbase", "--mode=root", "--format=directory",
        f"--include={','.join(recipe.packages)}",
        *[a for hook in recipe.hooks() for a in ("--customize-hook", hook)],
        "bookworm", str(work), *apt_sources(mirror),
    ]
    log(f"building the {recipe.name} template with mmdebstrap from {mirror} (once; ~{recipe.minutes} min)")
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise RootfsError(f"mmdebstrap failed ({proc.returncode}):\n{tail}")
    shift_ids(work, id_offset)
    (work / MARKER).write_text(f"{recipe.name} {recipe.signature}\n")
    old = dest.with_name(dest.name + ".old")
    if dest.exists():
        if old.exists():
            shutil.rmtree(old)
        dest.rename(old)
    work.rename(dest)
    if old.exists():
        shutil.rmtree(old)


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


def is_current(recipe: Recipe, path: Path) -> bool:
    try:
        return (path / MARKER).read_text().split() == [recipe.name, recipe.signature]
    except OSError:
        return False


@contextlib.contextmanager
def build_lock(templates_dir: Path) -> Iterator[None]:
    """One builder of built-in templates per templates dir at a time (servers may share the dir)."""
    templates_dir.mkdir(parents=True, exist_ok=True)
    with open(templates_dir / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
