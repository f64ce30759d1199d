"""``Template`` and ``AsyncTemplate``: build templates from Dockerfiles, list, inspect and delete them.

Both are thin shells over ``_calls`` (what to send), ``_archive`` (the upload) and ``_builds`` (the
log's fold); they differ only in ``await``. Every method is a class method taking the same
connection options as ``Sandbox.create`` (``api_key``, ``api_url``, ``request_timeout``); each call
uses its own short-lived connection pool, so both classes are safe to use from any thread (the
async one from any event loop). ``on_progress`` runs in the calling thread (or event loop).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping
from typing import Any

from . import _calls
from ._archive import PathLike, Upload, context_dir, dockerfile_text, pack
from ._builds import BuildEvent, BuildFollower, BuildInfo, TemplateInfo, parse_build_event
from ._config import ConnectionConfig
from ._core import STREAM_MARGIN
from ._http import AsyncHTTP, AsyncStream, SyncHTTP, SyncStream
from ._sandbox import _aonce, _once
from ._stream import EventDecoder, aevents, events

__all__ = ["AsyncTemplate", "Template"]

DEFAULT_BUILD_TIMEOUT = 1800.0
"""Seconds the server gives a build that sets no ``timeout``."""

ProgressHandler = Callable[[BuildEvent], None]
AsyncProgressHandler = Callable[[BuildEvent], Awaitable[None] | None]


def _prepare(
    dockerfile: PathLike, name: str, context: PathLike | None, settings: dict[str, Any]
) -> tuple[dict[str, Any], Upload | None]:
    """The build's JSON options and, with a context, the packed upload (blocking: reads local files)."""
    options = _calls.build_options(name, dockerfile_text(dockerfile), **settings)
    return options, pack(context_dir(context), options) if context is not None else None


def _log_timeout(timeout: float | None) -> float:
    """HTTP read timeout of a build's log: a step may stay silent until the build's own deadline."""
    return (timeout or DEFAULT_BUILD_TIMEOUT) + STREAM_MARGIN


def _decoder(stream: SyncStream | AsyncStream) -> EventDecoder:
    return EventDecoder(sse=stream.is_sse, parse=parse_build_event)


class Template:
    """Templates on a Corral server. All methods are class methods: ``Template.build(...)``."""

    @classmethod
    def build(
        cls,
        dockerfile: PathLike,
        name: str,
        *,
        context: PathLike | None = None,
        build_args: Mapping[str, str] | None = None,
        cpu: float | None = None,
        memory_mb: int | None = None,
        disk_mb: int | None = None,
        no_cache: bool = False,
        timeout: float | None = None,
        start_cmd: str | None = None,
        ready_cmd: str | None = None,
        ready_port: int | None = None,
        public: bool = False,
        isolation: str | None = None,
        on_progress: ProgressHandler | None = None,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> TemplateInfo:
        """Build (or rebuild) template ``name`` from a Dockerfile and return it once it is ready.

        ``dockerfile`` is a path, or the Dockerfile's text (a ``str`` with a newline, or starting with
        ``FROM`` or ``#``). ``context`` is the directory COPY reads from, packed here honouring its
        ``.dockerignore`` (symlinks stay symlinks); without it the Dockerfile can't COPY files.
        ``build_args`` fill ``ARG``s; ``cpu``/``memory_mb`` apply to the build and become the
        template's defaults, ``disk_mb`` limits each step, ``timeout`` (seconds) bounds the whole build;
        ``no_cache`` rebuilds every step. ``start_cmd`` runs when a sandbox starts (instead of CMD);
        sandbox creation waits until ``ready_cmd`` exits 0 or ``ready_port`` accepts connections.
        ``public`` makes the template visible to every API key (default: only this key and the admin's).
        ``isolation`` (``"bwrap"`` or ``"gvisor"``) is the default isolation of the template's sandboxes.
        ``on_progress`` receives every ``BuildEvent`` of the build's log, in order, as it happens.

        Raises ``BuildException`` (with the failed line, exit code and output tail) if the build
        fails, ``InvalidArgumentException`` for a missing Dockerfile or context or a Dockerfile the
        server refuses, and ``ConflictException`` if ``name`` is already being built.
        """
        settings = dict(
            build_args=build_args, cpu=cpu, memory_mb=memory_mb, disk_mb=disk_mb, no_cache=no_cache,
            timeout=timeout, start_cmd=start_cmd, ready_cmd=ready_cmd, ready_port=ready_port, public=public,
            isolation=isolation,
        )
        options, upload = _prepare(dockerfile, name, context, settings)
        http = SyncHTTP(ConnectionConfig.resolve(api_key, api_url, request_timeout))
        try:
            sized = (upload.content_type, upload.size) if upload else None
            try:
                build = http.call(_calls.start_build(options, sized), content=upload.file if upload else None)
            finally:
                if upload is not None:
                    upload.close()
            follower = BuildFollower(build.build_id, name)
            while True:
                stream = http.open(_calls.build_logs(build.build_id), read_timeout=_log_timeout(timeout))
                try:
                    for event in events(stream.chunks(), _decoder(stream)):
                        if follower.feed(event) and on_progress is not None:
                            on_progress(event)
                finally:
                    stream.close()
                if follower.finished:
                    break
                follower.reopen()
            failure = follower.outcome()
            if failure is not None:
                raise failure
            return http.call(_calls.get_template(name))
        finally:
            http.close()

    @classmethod
    def list(
        cls, api_key: str | None = None, api_url: str | None = None, request_timeout: float | None = None
    ) -> list[TemplateInfo]:
        """Every template this key can use, built-in ones included (without their ``builds``)."""
        return _once(api_key, api_url, request_timeout, _calls.list_templates())

    @classmethod
    def get(
        cls, name: str, api_key: str | None = None, api_url: str | None = None, request_timeout: float | None = None
    ) -> TemplateInfo:
        """Template ``name`` with its recent ``builds``; ``NotFoundException`` if there is none."""
        return _once(api_key, api_url, request_timeout, _calls.get_template(name))

    @classmethod
    def delete(
        cls, name: str, api_key: str | None = None, api_url: str | None = None, request_timeout: float | None = None
    ) -> None:
        """Delete template ``name``; ``ConflictException`` while running sandboxes use it or it is built in."""
        _once(api_key, api_url, request_timeout, _calls.delete_template(name))

    @classmethod
    def get_build(
        cls,
        build_id: str,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> BuildInfo:
        """The record of one build: its state, steps and (if it failed) why."""
        return _once(api_key, api_url, request_timeout, _calls.get_build(build_id))

    @classmethod
    def build_logs(
        cls,
        build_id: str,
        follow: bool = True,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> Iterator[BuildEvent]:
        """The events of a build's log from its start; with ``follow``, new ones until the build ends.

        The stream is opened before this returns (an unknown build raises ``NotFoundException`` here);
        close the iterator (``.close()``) to stop reading early.
        """
        http = SyncHTTP(ConnectionConfig.resolve(api_key, api_url, request_timeout))
        try:
            stream = http.open(_calls.build_logs(build_id, follow), read_timeout=None if follow else False)
        except BaseException:
            http.close()
            raise
        return _read(stream, http)


def _read(stream: SyncStream, http: SyncHTTP) -> Generator[BuildEvent, None, None]:
    try:
        yield from events(stream.chunks(), _decoder(stream))
    finally:
        stream.close()
        http.close()


async def _aread(stream: AsyncStream, http: AsyncHTTP) -> AsyncGenerator[BuildEvent, None]:
    try:
        async for event in aevents(stream.chunks(), _decoder(stream)):
            yield event
    finally:
        await stream.close()
        await http.close()


class AsyncTemplate:
    """Templates on a Corral server, for asyncio: ``await AsyncTemplate.build(...)``. See ``Template``."""

    @classmethod
    async def build(
        cls,
        dockerfile: PathLike,
        name: str,
        *,
        context: PathLike | None = None,
        build_args: Mapping[str, str] | None = None,
        cpu: float | None = None,
        memory_mb: int | None = None,
        disk_mb: int | None = None,
        no_cache: bool = False,
        timeout: float | None = None,
        start_cmd: str | None = None,
        ready_cmd: str | None = None,
        ready_port: int | None = None,
        public: bool = False,
        isolation: str | None = None,
        on_progress: AsyncProgressHandler | None = None,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> TemplateInfo:
        """Build template ``name`` and return it once ready; see ``Template.build``.

        Reading the Dockerfile and packing the context run in a worker thread; ``on_progress`` may be
        a coroutine function.
        """
        settings = dict(
            build_args=build_args, cpu=cpu, memory_mb=memory_mb, disk_mb=disk_mb, no_cache=no_cache,
            timeout=timeout, start_cmd=start_cmd, ready_cmd=ready_cmd, ready_port=ready_port, public=public,
            isolation=isolation,
        )
        options, upload = await asyncio.to_thread(_prepare, dockerfile, name, context, settings)
        http = AsyncHTTP(ConnectionConfig.resolve(api_key, api_url, request_timeout))
        try:
            sized = (upload.content_type, upload.size) if upload else None
            try:
                build = await http.call(_calls.start_build(options, sized), content=upload.file if upload else None)
            finally:
                if upload is not None:
                    upload.close()
            follower = BuildFollower(build.build_id, name)
            while True:
                stream = await http.open(_calls.build_logs(build.build_id), read_timeout=_log_timeout(timeout))
                try:
                    async for event in aevents(stream.chunks(), _decoder(stream)):
                        if follower.feed(event) and on_progress is not None:
                            outcome = on_progress(event)
                            if inspect.isawaitable(outcome):
                                await outcome
                finally:
                    await stream.close()
                if follower.finished:
                    break
                follower.reopen()
            failure = follower.outcome()
            if failure is not None:
                raise failure
            return await http.call(_calls.get_template(name))
        finally:
            await http.close()

    @classmethod
    async def list(
        cls, api_key: str | None = None, api_url: str | None = None, request_timeout: float | None = None
    ) -> list[TemplateInfo]:
        """Every template this key can use, built-in ones included (without their ``builds``)."""
        return await _aonce(api_key, api_url, request_timeout, _calls.list_templates())

    @classmethod
    async def get(
        cls, name: str, api_key: str | None = None, api_url: str | None = None, request_timeout: float | None = None
    ) -> TemplateInfo:
        """Template ``name`` with its recent ``builds``; ``NotFoundException`` if there is none."""
        return await _aonce(api_key, api_url, request_timeout, _calls.get_template(name))

    @classmethod
    async def delete(
        cls, name: str, api_key: str | None = None, api_url: str | None = None, request_timeout: float | None = None
    ) -> None:
        """Delete template ``name``; ``ConflictException`` while running sandboxes use it or it is built in."""
        await _aonce(api_key, api_url, request_timeout, _calls.delete_template(name))

    @classmethod
    async def get_build(
        cls,
        build_id: str,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> BuildInfo:
        """The record of one build: its state, steps and (if it failed) why."""
        return await _aonce(api_key, api_url, request_timeout, _calls.get_build(build_id))

    @classmethod
    async def build_logs(
        cls,
        build_id: str,
        follow: bool = True,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> AsyncIterator[BuildEvent]:
        """The events of a build's log (``async for e in await AsyncTemplate.build_logs(id)``).

        See ``Template.build_logs``; close the iterator (``await it.aclose()``) to stop early.
        """
        http = AsyncHTTP(ConnectionConfig.resolve(api_key, api_url, request_timeout))
        try:
            stream = await http.open(_calls.build_logs(build_id, follow), read_timeout=None if follow else False)
        except BaseException:
            await http.close()
            raise
        return _aread(stream, http)
