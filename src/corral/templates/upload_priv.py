"""Unpack an uploaded build context (a tar, optionally compressed) on the host, as root (privileged).

The archive is hostile: members are checked by tarfile's ``data`` filter (no absolute paths, no ``..``
out of the destination, no links leaving it, no devices, no set-id bits), counted and sized before
anything is written, and everything unpacked is then owned by the sandbox's root id (host
``id_offset``), so build sandboxes read it as their root and it never belongs to host root.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import BinaryIO


class UploadError(ValueError):
    """The context archive can't be used; the message says why."""


def unpack_context(archive: BinaryIO, dest: Path, owner: int, max_bytes: int, max_entries: int = 100_000) -> int:
    """Unpack the tar in ``archive`` (seekable) into the new directory ``dest``; returns the entry count."""
    dest.mkdir(mode=0o755)
    try:
        with tarfile.open(fileobj=archive, mode="r:*") as tar:
            members = []
            total = 0
            for member in tar:
                members.append(member)
                total += max(member.size, 0)
                if len(members) > max_entries:
                    raise UploadError(f"the build context has more than {max_entries} entries")
                if total > max_bytes:
                    raise UploadError(f"the build context is larger than {max_bytes // (1 << 20)} MiB unpacked")
            for member in members:
                tar.extract(member, dest, filter="data", numeric_owner=True)
    except tarfile.FilterError as exc:
        raise UploadError(f"the build context archive holds a refused entry: {exc}") from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UploadError(f"the build context is not a readable tar archive: {exc}") from None
    os.lchown(dest, owner, owner)
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), owner, owner)
    return len(members)
