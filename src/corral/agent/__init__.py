"""The in-sandbox agent (stdlib only, relative imports only) and its host-side asyncio client."""

from .client import AgentClient, FileReader, ProcessStream, Watcher
from .protocol import AgentError, AgentUnavailable, Exit, Output

__all__ = [
    "AgentClient",
    "AgentError",
    "AgentUnavailable",
    "Exit",
    "FileReader",
    "Output",
    "ProcessStream",
    "Watcher",
]
