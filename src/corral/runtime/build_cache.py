"""What the server builds into the agent package's ``__pycache__`` (the start-up bundle, corral-tools):
each named by its content or source, so servers of other versions sharing the dir keep theirs. A
build in use is touched at every server start; others are removed a week after their last use.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

KEEP_SECONDS = 7 * 86400  # builds not used by any server start for this long are removed


def prune(keep: Path, pattern: str) -> None:
    """Remove the files of ``keep``'s dir matching ``pattern`` (``keep`` aside) unused for ``KEEP_SECONDS``."""
    cutoff = time.time() - KEEP_SECONDS
    for old in keep.parent.glob(pattern):
        with contextlib.suppress(OSError):  # another server may prune the same file
            if old != keep and old.stat().st_mtime < cutoff:
                old.unlink()
