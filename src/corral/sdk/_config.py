"""Where the server is and how to authenticate: explicit arguments, then environment, then defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["DEFAULT_API_URL", "DEFAULT_REQUEST_TIMEOUT", "ConnectionConfig"]

DEFAULT_API_URL = "http://127.0.0.1:3000"
DEFAULT_REQUEST_TIMEOUT = 60.0

try:
    from importlib.metadata import version as _dist_version

    _VERSION = _dist_version("corral")
except Exception:  # not installed (e.g. run from a source tree)
    _VERSION = "0"


@dataclass(frozen=True)
class ConnectionConfig:
    """How to reach one Corral server. Immutable; shared freely between threads.

    ``request_timeout`` is in seconds for each HTTP request; ``0`` or ``None`` means no limit.
    """

    api_url: str
    api_key: str | None
    request_timeout: float | None

    @classmethod
    def resolve(
        cls,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> ConnectionConfig:
        """Fill what the caller left out from ``CORRAL_API_URL`` / ``CORRAL_API_KEY`` or the defaults."""
        url = api_url or os.environ.get("CORRAL_API_URL") or DEFAULT_API_URL
        key = api_key or os.environ.get("CORRAL_API_KEY") or None
        timeout = DEFAULT_REQUEST_TIMEOUT if request_timeout is None else request_timeout
        return cls(api_url=url.rstrip("/"), api_key=key, request_timeout=timeout or None)

    def headers(self) -> dict[str, str]:
        """Headers sent with every request."""
        headers = {"User-Agent": f"corral-python/{_VERSION}"}
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        return headers

    def timeout(self, request_timeout: float | None = None) -> float | None:
        """The per-call timeout: the call's own if given (``0`` = none), else the configured one."""
        if request_timeout is None:
            return self.request_timeout
        return request_timeout or None
