"""The agent's log: one line per message on stderr (not `logging`, whose import costs the agent's
start-up more than the rest of its own modules)."""

from __future__ import annotations

import sys


def log(level: str, message: str) -> None:
    """Write `corral-agent: LEVEL message`; a closed or broken stderr is ignored."""
    try:
        sys.stderr.write(f"corral-agent: {level} {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # closed, or no stderr at all
        pass


def log_exception(message: str) -> None:
    """`log` with the current exception's traceback (imported only when one happens)."""
    import traceback

    log("ERROR", f"{message}\n{traceback.format_exc().rstrip()}")
