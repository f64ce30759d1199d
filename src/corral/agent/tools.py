"""Where the agent finds ``corral-tools`` (``tools.c``): its static helper programs, built by the
server into this package's ``__pycache__`` under a name made from the source's checksum
(``corral.runtime.static_tools``), so only the build of the source this package ships is ever run.
"""

from __future__ import annotations

import binascii
import os

SOURCE = "tools.c"


def file_name(source: bytes) -> str:
    """The built program's file name in ``__pycache__`` for this source (a version stamp, not a
    security check: only the host writes there; CRC-32 because the agent already has ``binascii``,
    where ``hashlib`` would load OpenSSL into every agent)."""
    return f"corral-tools-{binascii.crc32(source):08x}"


def find(package_dir: str) -> str | None:
    """The built program for this package's source, if it is there and executable."""
    try:
        with open(os.path.join(package_dir, SOURCE), "rb") as f:
            name = file_name(f.read())
    except OSError:
        return None
    path = os.path.join(package_dir, "__pycache__", name)
    return path if os.access(path, os.X_OK) else None
