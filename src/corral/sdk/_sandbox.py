"""``Sandbox`` and ``AsyncSandbox``: one sandbox on a Corral server, with E2B's method names.

Both are thin shells over ``_core`` (what to send, how to read the answer) and ``_http`` (sending
it); ``run_code`` and the code-context methods come from their bases in ``_code``. ``kill``,
``set_timeout``, ``get_info`` and ``get_metrics`` work on an instance (``sbx.kill()``) and on the
class (``Sandbox.kill(sandbox_id)``), as in E2B.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from types import TracebackType

from . import _calls, _core
from ._code import AsyncCodeInterpreter, CodeInterpreter
from ._commands import AsyncCommands, Commands
from ._config import ConnectionConfig
from ._core import dualmethod
from ._files import AsyncFilesystem, Filesystem
from ._http import AsyncHTTP, SyncHTTP
from ._models import NetworkInfo, SandboxInfo, SandboxMetrics

__all__ = ["AsyncSandbox", "Sandbox"]


class Sandbox(CodeInterpreter):
    """A sandbox on a Corral server: ``Sandbox.create()`` makes one, ``Sandbox.connect(id)`` attaches.

    ``sbx.commands`` runs commands, ``sbx.files`` moves files, ``sbx.run_code`` runs stateful code
    (in sandboxes from the ``code-interpreter`` template). Thread-safe. The object holds an HTTP
    connection pool: ``with Sandbox.create() as sbx:`` kills the sandbox and releases the pool on
    exit; ``close()`` releases the pool and leaves the sandbox running until its timeout.
    """

    def __init__(self, *, sandbox_id: str, http: SyncHTTP) -> None:
        """Internal: use ``Sandbox.create`` or ``Sandbox.connect``."""
        self._sandbox_id = sandbox_id
        self._http = http
        self.commands = Commands(sandbox_id, http)
        self.files = Filesystem(sandbox_id, http)

    @property
    def sandbox_id(self) -> str:
        """The sandbox's ID."""
        return self._sandbox_id

    @classmethod
    def create(
        cls,
        template: str = "base",
        timeout: int = 300,
        envs: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        cpu: float | None = None,
        memory_mb: int | None = None,
        disk_mb: int | None = None,
        network: str | None = None,
        allow_out: Sequence[str] | None = None,
        deny_out: Sequence[str] | None = None,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> Sandbox:
        """Create a sandbox from ``template`` that lives ``timeout`` seconds unless extended or killed.

        ``envs`` apply to every command; unset limits take the server's defaults. ``network`` is
        ``"internet"`` (default) or ``"none"`` (loopback only); an ``allow_out`` list (IPv4, CIDR,
        ``domain`` or ``*.domain``, each with an optional ``:port``) allows only those; ``deny_out``
        entries are always denied (deny beats allow). See docs/network.md. ``api_url`` and
        ``api_key`` default to ``CORRAL_API_URL`` (else http://127.0.0.1:3000) and ``CORRAL_API_KEY``.
        """
        http = SyncHTTP(ConnectionConfig.resolve(api_key, api_url, request_timeout))
        try:
            info = http.call(
                _calls.create_sandbox(
                    template=template,
                    timeout=timeout,
                    envs=envs,
                    metadata=metadata,
                    cpu=cpu,
                    memory_mb=memory_mb,
                    disk_mb=disk_mb,
                    network=network,
                    allow_out=allow_out,
                    deny_out=deny_out,
                )
            )
        except BaseException:
            http.close()
            raise
        return cls(sandbox_id=info.sandbox_id, http=http)

    @classmethod
    def connect(
        cls,
        sandbox_id: str,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> Sandbox:
        """Attach to a running sandbox; ``NotFoundException`` if it is unknown or has ended."""
        http = SyncHTTP(ConnectionConfig.resolve(api_key, api_url, request_timeout))
        try:
            http.call(replace(_calls.get_sandbox(sandbox_id), operation="connect"))
        except BaseException:
            http.close()
            raise
        return cls(sandbox_id=sandbox_id, http=http)

    @classmethod
    def list(
        cls,
        state: str = "running",
        metadata: Mapping[str, str] | None = None,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> list[SandboxInfo]:
        """Sandboxes in ``state`` (``"running"`` or ``"all"``) whose metadata contains ``metadata``."""
        return _once(api_key, api_url, request_timeout, _calls.list_sandboxes(state, metadata))

    @dualmethod
    def kill(self, request_timeout: float | None = None) -> bool:
        """Kill the sandbox. True if it was killed (or had already ended), False if it never existed."""
        return self._http.call(_calls.kill_sandbox(self._sandbox_id), request_timeout)

    @kill.classvariant
    def kill(
        cls,
        sandbox_id: str,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> bool:
        return _once(api_key, api_url, request_timeout, _calls.kill_sandbox(sandbox_id))

    @dualmethod
    def set_timeout(self, timeout: int, request_timeout: float | None = None) -> None:
        """Make the sandbox end ``timeout`` seconds from now (shorter or longer than before)."""
        self._http.call(_calls.set_timeout(self._sandbox_id, timeout), request_timeout)

    @set_timeout.classvariant
    def set_timeout(
        cls,
        sandbox_id: str,
        timeout: int,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> None:
        _once(api_key, api_url, request_timeout, _calls.set_timeout(sandbox_id, timeout))

    @dualmethod
    def get_info(self, request_timeout: float | None = None) -> SandboxInfo:
        """The sandbox's description; ``NotFoundException`` once it has ended."""
        return self._http.call(_calls.get_sandbox(self._sandbox_id), request_timeout)

    @get_info.classvariant
    def get_info(
        cls,
        sandbox_id: str,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> SandboxInfo:
        return _once(api_key, api_url, request_timeout, _calls.get_sandbox(sandbox_id))

    @dualmethod
    def get_metrics(self, request_timeout: float | None = None) -> SandboxMetrics:
        """The sandbox's current resource use."""
        return self._http.call(_calls.get_metrics(self._sandbox_id), request_timeout)

    @get_metrics.classvariant
    def get_metrics(
        cls,
        sandbox_id: str,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> SandboxMetrics:
        return _once(api_key, api_url, request_timeout, _calls.get_metrics(sandbox_id))

    def is_running(self, request_timeout: float | None = None) -> bool:
        """Whether the sandbox is still running."""
        return self._http.call(_calls.is_running(self._sandbox_id), request_timeout)

    def get_network(self, request_timeout: float | None = None) -> NetworkInfo:
        """The sandbox's egress policy, address and recent DNS questions."""
        return self._http.call(_calls.get_network(self._sandbox_id), request_timeout)

    def update_network(
        self,
        network: str | None = None,
        allow_out: Sequence[str] | None = None,
        deny_out: Sequence[str] | None = None,
        request_timeout: float | None = None,
    ) -> NetworkInfo:
        """Replace the egress policy of the running sandbox (same fields as ``create``)."""
        call = _calls.update_network(self._sandbox_id, network, allow_out, deny_out)
        return self._http.call(call, request_timeout)

    def close(self) -> None:
        """Release the HTTP connections; the sandbox keeps running until its timeout."""
        self._http.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.kill()
        finally:
            self.close()

    def __repr__(self) -> str:
        return f"<Sandbox {self._sandbox_id} at {self._http.config.api_url}>"


def _once(
    api_key: str | None, api_url: str | None, request_timeout: float | None, call: _core.Call[_core.T]
) -> _core.T:
    """Send one call with a short-lived client (class-level calls)."""
    http = SyncHTTP(ConnectionConfig.resolve(api_key, api_url, request_timeout))
    try:
        return http.call(call)
    finally:
        http.close()


async def _aonce(
    api_key: str | None, api_url: str | None, request_timeout: float | None, call: _core.Call[_core.T]
) -> _core.T:
    http = AsyncHTTP(ConnectionConfig.resolve(api_key, api_url, request_timeout))
    try:
        return await http.call(call)
    finally:
        await http.close()


class AsyncSandbox(AsyncCodeInterpreter):
    """A sandbox on a Corral server, for asyncio: ``await AsyncSandbox.create()``.

    Same methods as ``Sandbox``, all coroutines. Use from one event loop. ``async with await
    AsyncSandbox.create() as sbx:`` kills the sandbox and releases the pool on exit.
    """

    def __init__(self, *, sandbox_id: str, http: AsyncHTTP) -> None:
        """Internal: use ``AsyncSandbox.create`` or ``AsyncSandbox.connect``."""
        self._sandbox_id = sandbox_id
        self._http = http
        self.commands = AsyncCommands(sandbox_id, http)
        self.files = AsyncFilesystem(sandbox_id, http)

    @property
    def sandbox_id(self) -> str:
        """The sandbox's ID."""
        return self._sandbox_id

    @classmethod
    async def create(
        cls,
        template: str = "base",
        timeout: int = 300,
        envs: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        cpu: float | None = None,
        memory_mb: int | None = None,
        disk_mb: int | None = None,
        network: str | None = None,
        allow_out: Sequence[str] | None = None,
        deny_out: Sequence[str] | None = None,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> AsyncSandbox:
        """Create a sandbox; see ``Sandbox.create``."""
        http = AsyncHTTP(ConnectionConfig.resolve(api_key, api_url, request_timeout))
        try:
            info = await http.call(
                _calls.create_sandbox(
                    template=template,
                    timeout=timeout,
                    envs=envs,
                    metadata=metadata,
                    cpu=cpu,
                    memory_mb=memory_mb,
                    disk_mb=disk_mb,
                    network=network,
                    allow_out=allow_out,
                    deny_out=deny_out,
                )
            )
        except BaseException:
            await http.close()
            raise
        return cls(sandbox_id=info.sandbox_id, http=http)

    @classmethod
    async def connect(
        cls,
        sandbox_id: str,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> AsyncSandbox:
        """Attach to a running sandbox; ``NotFoundException`` if it is unknown or has ended."""
        http = AsyncHTTP(ConnectionConfig.resolve(api_key, api_url, request_timeout))
        try:
            await http.call(replace(_calls.get_sandbox(sandbox_id), operation="connect"))
        except BaseException:
            await http.close()
            raise
        return cls(sandbox_id=sandbox_id, http=http)

    @classmethod
    async def list(
        cls,
        state: str = "running",
        metadata: Mapping[str, str] | None = None,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> list[SandboxInfo]:
        """Sandboxes in ``state`` (``"running"`` or ``"all"``) whose metadata contains ``metadata``."""
        return await _aonce(api_key, api_url, request_timeout, _calls.list_sandboxes(state, metadata))

    @dualmethod
    async def kill(self, request_timeout: float | None = None) -> bool:
        """Kill the sandbox. True if it was killed (or had already ended), False if it never existed."""
        return await self._http.call(_calls.kill_sandbox(self._sandbox_id), request_timeout)

    @kill.classvariant
    async def kill(
        cls,
        sandbox_id: str,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> bool:
        return await _aonce(api_key, api_url, request_timeout, _calls.kill_sandbox(sandbox_id))

    @dualmethod
    async def set_timeout(self, timeout: int, request_timeout: float | None = None) -> None:
        """Make the sandbox end ``timeout`` seconds from now (shorter or longer than before)."""
        await self._http.call(_calls.set_timeout(self._sandbox_id, timeout), request_timeout)

    @set_timeout.classvariant
    async def set_timeout(
        cls,
        sandbox_id: str,
        timeout: int,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> None:
        await _aonce(api_key, api_url, request_timeout, _calls.set_timeout(sandbox_id, timeout))

    @dualmethod
    async def get_info(self, request_timeout: float | None = None) -> SandboxInfo:
        """The sandbox's description; ``NotFoundException`` once it has ended."""
        return await self._http.call(_calls.get_sandbox(self._sandbox_id), request_timeout)

    @get_info.classvariant
    async def get_info(
        cls,
        sandbox_id: str,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> SandboxInfo:
        return await _aonce(api_key, api_url, request_timeout, _calls.get_sandbox(sandbox_id))

    @dualmethod
    async def get_metrics(self, request_timeout: float | None = None) -> SandboxMetrics:
        """The sandbox's current resource use."""
        return await self._http.call(_calls.get_metrics(self._sandbox_id), request_timeout)

    @get_metrics.classvariant
    async def get_metrics(
        cls,
        sandbox_id: str,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> SandboxMetrics:
        return await _aonce(api_key, api_url, request_timeout, _calls.get_metrics(sandbox_id))

    async def get_network(self, request_timeout: float | None = None) -> NetworkInfo:
        """The sandbox's egress policy, address and recent DNS questions."""
        return await self._http.call(_calls.get_network(self._sandbox_id), request_timeout)

    async def update_network(
        self,
        network: str | None = None,
        allow_out: Sequence[str] | None = None,
        deny_out: Sequence[str] | None = None,
        request_timeout: float | None = None,
    ) -> NetworkInfo:
        """Replace the egress policy of the running sandbox (same fields as ``create``)."""
        call = _calls.update_network(self._sandbox_id, network, allow_out, deny_out)
        return await self._http.call(call, request_timeout)

    async def is_running(self, request_timeout: float | None = None) -> bool:
        """Whether the sandbox is still running."""
        return await self._http.call(_calls.is_running(self._sandbox_id), request_timeout)

    async def close(self) -> None:
        """Release the HTTP connections; the sandbox keeps running until its timeout."""
        await self._http.close()

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.kill()
        finally:
            await self.close()

    def __repr__(self) -> str:
        return f"<AsyncSandbox {self._sandbox_id} at {self._http.config.api_url}>"
