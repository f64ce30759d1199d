"""API key administration (``/v1/keys``, admin key only), used by ``corral keys``.

Not part of the public SDK: E2B has no equivalent, and the shape may still change.
"""

from __future__ import annotations

from . import _calls
from ._config import ConnectionConfig
from ._http import SyncHTTP
from ._models import KeyInfo

__all__ = ["ApiKeys"]


class ApiKeys:
    """Create, list and revoke API keys. Thread-safe; ``close()`` releases the connections."""

    def __init__(
        self, api_key: str | None = None, api_url: str | None = None, request_timeout: float | None = None
    ) -> None:
        self._http = SyncHTTP(ConnectionConfig.resolve(api_key, api_url, request_timeout))

    def create(self, name: str) -> KeyInfo:
        """A new key; its secret (``key``) is in this answer only."""
        return self._http.call(_calls.create_key(name))

    def list(self) -> list[KeyInfo]:
        return self._http.call(_calls.list_keys())

    def revoke(self, key_id: str) -> None:
        self._http.call(_calls.revoke_key(key_id))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiKeys:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
