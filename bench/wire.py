"""A minimal HTTP/1.1 keep-alive client on asyncio streams, for load bursts where the client must cost
next to nothing: at 50 concurrent requests httpx's own pool work on this 2-core host takes longer
than the server's answer (50 concurrent calls to a bare uvicorn app: p50 ~1.2 s through one
``httpx.AsyncClient``, ~15 ms on these connections). One ``Conn`` is one TCP connection, one request
at a time; only ``Content-Length`` answers (what the JSON API sends). Not for streaming routes.
"""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlsplit


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, key: str | None) -> None:
        self._reader = reader
        self._writer = writer
        self._head = f"Host: {host}\r\n" + (f"X-API-Key: {key}\r\n" if key else "")

    @classmethod
    async def open(cls, url: str, key: str | None = None) -> Conn:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        return cls(reader, writer, parts.netloc, key)

    async def request(self, method: str, path: str, body: object | None = None) -> tuple[int, bytes]:
        payload = b"" if body is None else json.dumps(body).encode()
        extra = f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n" if body is not None else ""
        self._writer.write(f"{method} {path} HTTP/1.1\r\n{self._head}{extra}\r\n".encode() + payload)
        status_line = await self._reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self._reader.readexactly(length) if length else b""

    async def timed(self, method: str, path: str, body: object | None = None) -> tuple[float, int, bytes]:
        started = time.perf_counter()
        status, data = await self.request(method, path, body)
        return time.perf_counter() - started, status, data

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()


async def connections(url: str, key: str | None, n: int) -> list[Conn]:
    conns = list(await asyncio.gather(*(Conn.open(url, key) for _ in range(n))))
    for conn in conns:  # one request each first: the server's side of the connection is set up
        await conn.request("GET", "/health")
    return conns


async def burst(url: str, key: str | None, n: int, method: str, path: str,
                body: object | None = None) -> list[tuple[float, int, bytes]]:
    """``n`` concurrent requests, one per already-open connection: (seconds, status, body) each."""
    conns = await connections(url, key, n)
    try:
        return list(await asyncio.gather(*(c.timed(method, path, body) for c in conns)))
    finally:
        for conn in conns:
            await conn.close()


async def each(url: str, key: str | None, method: str, paths: list[str], parallel: int = 8) -> list[int]:
    """``method`` on every path, ``parallel`` at a time (e.g. deleting what a burst made): the statuses."""
    conns = await connections(url, key, min(parallel, max(1, len(paths))))
    todo = iter(paths)
    statuses: list[int] = []

    async def worker(conn: Conn) -> None:
        for path in todo:
            statuses.append((await conn.request(method, path))[0])

    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        for conn in conns:
            await conn.close()
    return statuses
