"""``sbx.files``: the filesystem of a sandbox, sync and async twins.

Paths are resolved inside the sandbox (relative ones against the user's home). Uploads and
downloads stream in chunks, so memory stays constant whatever the file size.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import IO, Any, Literal, overload

from . import _calls, _core
from ._http import AsyncHTTP, SyncHTTP
from ._models import EntryInfo, WriteEntry

__all__ = ["AsyncFilesystem", "Filesystem"]

Data = str | bytes | IO[bytes] | IO[str]
LocalPath = str | os.PathLike[str]


def _decode(body: bytes) -> str:
    return body.decode("utf-8", "replace")


def _temp_beside(local_path: LocalPath) -> tuple[IO[bytes], str]:
    """A new temporary file in the target's directory (so the final rename is atomic), umask applied."""
    target = os.path.abspath(os.fspath(local_path))
    temp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.{uuid.uuid4().hex[:12]}.part")
    return open(temp, "xb"), temp


class Filesystem:
    """Filesystem of one sandbox (``sbx.files``). Thread-safe."""

    def __init__(self, sandbox_id: str, http: SyncHTTP) -> None:
        self._sandbox_id = sandbox_id
        self._http = http

    @overload
    def read(
        self,
        path: str,
        format: Literal["text"] = "text",
        user: str | None = None,
        request_timeout: float | None = None,
    ) -> str: ...

    @overload
    def read(
        self,
        path: str,
        format: Literal["bytes"],
        user: str | None = None,
        request_timeout: float | None = None,
    ) -> bytes: ...

    @overload
    def read(
        self,
        path: str,
        format: Literal["stream"],
        user: str | None = None,
        request_timeout: float | None = None,
    ) -> Iterator[bytes]: ...

    def read(
        self,
        path: str,
        format: Literal["text", "bytes", "stream"] = "text",
        user: str | None = None,
        request_timeout: float | None = None,
    ) -> str | bytes | Iterator[bytes]:
        """Read a file as text (UTF-8), bytes, or a stream of byte chunks (``"stream"``)."""
        call = _calls.read_file(self._sandbox_id, path, user)
        if format == "stream":
            return self._http.open(call, request_timeout).chunks()
        body = self._http.call(call, request_timeout)
        return _decode(body) if format == "text" else body

    def write(self, path: str, data: Data, user: str | None = None, request_timeout: float | None = None) -> EntryInfo:
        """Write a file, creating parent directories; a file object is streamed."""
        return self._http.call(
            _calls.write_file(self._sandbox_id, path, user), request_timeout, content=_core.content(data)
        )

    def write_files(
        self, files: Sequence[WriteEntry], user: str | None = None, request_timeout: float | None = None
    ) -> list[EntryInfo]:
        """Write several files, in order."""
        return [self.write(f.path, f.data, user, request_timeout) for f in files]

    def list(
        self, path: str, depth: int = 1, user: str | None = None, request_timeout: float | None = None
    ) -> list[EntryInfo]:
        """The entries of a directory, down to ``depth`` levels."""
        return self._http.call(_calls.list_dir(self._sandbox_id, path, depth, user), request_timeout)

    def exists(self, path: str, user: str | None = None, request_timeout: float | None = None) -> bool:
        """Whether ``path`` exists."""
        return self._http.call(_calls.exists(self._sandbox_id, path, user), request_timeout)

    def get_info(self, path: str, user: str | None = None, request_timeout: float | None = None) -> EntryInfo:
        """Information about one entry (not following a final symlink)."""
        return self._http.call(_calls.stat(self._sandbox_id, path, user), request_timeout)

    def remove(self, path: str, user: str | None = None, request_timeout: float | None = None) -> None:
        """Remove a file or a directory tree."""
        self._http.call(_calls.remove_file(self._sandbox_id, path, user), request_timeout)

    def rename(
        self, old_path: str, new_path: str, user: str | None = None, request_timeout: float | None = None
    ) -> EntryInfo:
        """Move or rename an entry; returns the entry at its new path."""
        return self._http.call(_calls.rename(self._sandbox_id, old_path, new_path, user), request_timeout)

    def make_dir(self, path: str, user: str | None = None, request_timeout: float | None = None) -> bool:
        """Create a directory and its parents; False if it already existed."""
        return self._http.call(_calls.make_dir(self._sandbox_id, path, user), request_timeout)

    def upload(
        self,
        local_path: LocalPath,
        remote_path: str,
        user: str | None = None,
        request_timeout: float | None = None,
    ) -> EntryInfo:
        """Copy a local file into the sandbox, streaming it."""
        with open(local_path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            return self._http.call(
                _calls.write_file(self._sandbox_id, remote_path, user, size), request_timeout, content=f
            )

    def download(
        self,
        remote_path: str,
        local_path: LocalPath,
        user: str | None = None,
        request_timeout: float | None = None,
    ) -> None:
        """Copy a sandbox file to ``local_path``, streaming it; the local file appears whole or not at all."""
        chunks = self.read(remote_path, "stream", user, request_timeout)
        try:
            out, temp = _temp_beside(local_path)
            try:
                with out:
                    for chunk in chunks:
                        out.write(chunk)
                os.replace(temp, local_path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
        finally:
            chunks.close()  # type: ignore[attr-defined]


class AsyncFilesystem:
    """Filesystem of one sandbox (``sbx.files``), for asyncio. Local file I/O runs in worker threads."""

    def __init__(self, sandbox_id: str, http: AsyncHTTP) -> None:
        self._sandbox_id = sandbox_id
        self._http = http

    @overload
    async def read(
        self,
        path: str,
        format: Literal["text"] = "text",
        user: str | None = None,
        request_timeout: float | None = None,
    ) -> str: ...

    @overload
    async def read(
        self,
        path: str,
        format: Literal["bytes"],
        user: str | None = None,
        request_timeout: float | None = None,
    ) -> bytes: ...

    @overload
    async def read(
        self,
        path: str,
        format: Literal["stream"],
        user: str | None = None,
        request_timeout: float | None = None,
    ) -> AsyncIterator[bytes]: ...

    async def read(
        self,
        path: str,
        format: Literal["text", "bytes", "stream"] = "text",
        user: str | None = None,
        request_timeout: float | None = None,
    ) -> str | bytes | AsyncIterator[bytes]:
        """Read a file as text (UTF-8), bytes, or a stream of byte chunks (``"stream"``)."""
        call = _calls.read_file(self._sandbox_id, path, user)
        if format == "stream":
            return (await self._http.open(call, request_timeout)).chunks()
        body = await self._http.call(call, request_timeout)
        return _decode(body) if format == "text" else body

    async def write(
        self, path: str, data: Data, user: str | None = None, request_timeout: float | None = None
    ) -> EntryInfo:
        """Write a file, creating parent directories; a file object is streamed."""
        return await self._http.call(
            _calls.write_file(self._sandbox_id, path, user), request_timeout, content=_core.content(data)
        )

    async def write_files(
        self, files: Sequence[WriteEntry], user: str | None = None, request_timeout: float | None = None
    ) -> list[EntryInfo]:
        """Write several files, in order."""
        return [await self.write(f.path, f.data, user, request_timeout) for f in files]

    async def list(
        self, path: str, depth: int = 1, user: str | None = None, request_timeout: float | None = None
    ) -> list[EntryInfo]:
        """The entries of a directory, down to ``depth`` levels."""
        return await self._http.call(_calls.list_dir(self._sandbox_id, path, depth, user), request_timeout)

    async def exists(self, path: str, user: str | None = None, request_timeout: float | None = None) -> bool:
        """Whether ``path`` exists."""
        return await self._http.call(_calls.exists(self._sandbox_id, path, user), request_timeout)

    async def get_info(self, path: str, user: str | None = None, request_timeout: float | None = None) -> EntryInfo:
        """Information about one entry (not following a final symlink)."""
        return await self._http.call(_calls.stat(self._sandbox_id, path, user), request_timeout)

    async def remove(self, path: str, user: str | None = None, request_timeout: float | None = None) -> None:
        """Remove a file or a directory tree."""
        await self._http.call(_calls.remove_file(self._sandbox_id, path, user), request_timeout)

    async def rename(
        self, old_path: str, new_path: str, user: str | None = None, request_timeout: float | None = None
    ) -> EntryInfo:
        """Move or rename an entry; returns the entry at its new path."""
        return await self._http.call(_calls.rename(self._sandbox_id, old_path, new_path, user), request_timeout)

    async def make_dir(self, path: str, user: str | None = None, request_timeout: float | None = None) -> bool:
        """Create a directory and its parents; False if it already existed."""
        return await self._http.call(_calls.make_dir(self._sandbox_id, path, user), request_timeout)

    async def upload(
        self,
        local_path: LocalPath,
        remote_path: str,
        user: str | None = None,
        request_timeout: float | None = None,
    ) -> EntryInfo:
        """Copy a local file into the sandbox, streaming it."""
        f: IO[Any] = await asyncio.to_thread(open, local_path, "rb")
        try:
            size = os.fstat(f.fileno()).st_size
            return await self._http.call(
                _calls.write_file(self._sandbox_id, remote_path, user, size), request_timeout, content=f
            )
        finally:
            f.close()

    async def download(
        self,
        remote_path: str,
        local_path: LocalPath,
        user: str | None = None,
        request_timeout: float | None = None,
    ) -> None:
        """Copy a sandbox file to ``local_path``, streaming it; the local file appears whole or not at all."""
        chunks = await self.read(remote_path, "stream", user, request_timeout)
        try:
            out, temp = await asyncio.to_thread(_temp_beside, local_path)
            try:
                with out:
                    async for chunk in chunks:
                        await asyncio.to_thread(out.write, chunk)
                await asyncio.to_thread(os.replace, temp, local_path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
