"""``filesystem.Filesystem``: Stat, MakeDir, Move, ListDir, Remove, WatchDir and polling watchers.

Every path goes to the sandbox's agent, which resolves it inside the sandbox and acts with the
calling user's permissions (relative and ``~/`` paths start at that user's home). Message shapes:
``proto/filesystem/filesystem.proto``.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import AsyncIterator
from typing import Any

from corral.agent.protocol import AgentError

from . import pjson
from .connect import ConnectError
from .process import home_relative
from .rpc import Call, Message, Method

MAX_DEPTH = 64
FILE_TYPES = {"file": "FILE_TYPE_FILE", "dir": "FILE_TYPE_DIRECTORY", "symlink": "FILE_TYPE_SYMLINK"}
EVENT_TYPES = {
    "create": "EVENT_TYPE_CREATE",
    "write": "EVENT_TYPE_WRITE",
    "remove": "EVENT_TYPE_REMOVE",
    "rename": "EVENT_TYPE_RENAME",
    "chmod": "EVENT_TYPE_CHMOD",
}
PING: Message = {"keepalive": {}}


def entry_info(entry: dict[str, Any]) -> Message:
    """EntryInfo from the agent's Entry. A symlink is FILE_TYPE_SYMLINK with ``isSymlink`` set (the
    newer SDKs read the flag, older ones the type); other non-regular files are UNSPECIFIED."""
    info: Message = {
        "name": entry["name"],
        "type": FILE_TYPES.get(entry["type"], "FILE_TYPE_UNSPECIFIED"),
        "path": entry["path"],
        "size": str(entry["size"]),
        "mode": entry["mode"],
        "permissions": entry["permissions"],
        "owner": entry["owner"],
        "group": entry["group"],
        "modifiedTime": pjson.timestamp(entry["modified"]),
    }
    if entry.get("symlink_target") is not None:
        info["symlinkTarget"] = entry["symlink_target"]
    if entry["type"] == "symlink":
        info["isSymlink"] = True
    return info


def _path(message: Message, name: str = "path") -> str:
    path = pjson.text(message, name)
    if not path:
        raise ConnectError("invalid_argument", f"field {name!r} must not be empty")
    return home_relative(path)


async def stat(call: Call, message: Message) -> Message:
    return {"entry": entry_info(await call.agent.stat(_path(message), user=call.user))}


async def make_dir(call: Call, message: Message) -> Message:
    path = _path(message)
    if not await call.agent.mkdir(path, user=call.user):
        raise ConnectError("already_exists", f"sandbox {call.sandbox_id}: directory {path!r} already exists")
    return {"entry": entry_info(await call.agent.stat(path, user=call.user))}


async def move(call: Call, message: Message) -> Message:
    source, destination = _path(message, "source"), _path(message, "destination")
    return {"entry": entry_info(await call.agent.rename(source, destination, user=call.user))}


async def list_dir(call: Call, message: Message) -> Message:
    depth = min(max(pjson.uint32(message, "depth"), 1), MAX_DEPTH)  # 0 means 1, like envd
    entries = await call.agent.list(_path(message), depth=depth, user=call.user)
    return {"entries": [entry_info(e) for e in entries]}


async def remove(call: Call, message: Message) -> Message:
    await call.agent.remove(_path(message), user=call.user)
    return {}


def _event_converter(call: Call, root: str, include_entry: bool):  # type: ignore[no-untyped-def]
    async def convert(event: dict[str, Any]) -> Message:
        converted: Message = {"name": event["name"], "type": EVENT_TYPES.get(event["op"], "EVENT_TYPE_UNSPECIFIED")}
        if include_entry and event["op"] in ("create", "write", "chmod"):
            with contextlib.suppress(AgentError):  # gone again already: no entry
                converted["entry"] = entry_info(await call.agent.stat(posixpath.join(root, event["name"]), call.user))
        return converted

    return convert


def _watch_args(message: Message) -> tuple[str, bool, bool]:
    return _path(message), pjson.flag(message, "recursive"), pjson.flag(message, "include_entry")


async def watch_dir(call: Call, message: Message) -> AsyncIterator[Message]:
    path, recursive, include_entry = _watch_args(message)
    convert = _event_converter(call, path, include_entry)
    async with call.agent.watch(path, recursive=recursive, user=call.user) as watch:
        yield {"start": {}}
        async for event in watch:
            yield {"filesystem": await convert(event)}


async def create_watcher(call: Call, message: Message) -> Message:
    path, recursive, include_entry = _watch_args(message)
    watch = call.agent.watch(path, recursive=recursive, user=call.user)
    await watch.__aenter__()  # the watch is set up (or failed) before we answer
    try:
        watcher_id = call.state.watchers.add(call.sandbox_id, watch, _event_converter(call, path, include_entry))
    except BaseException:
        await watch.__aexit__(None, None, None)
        raise
    return {"watcherId": watcher_id}


async def get_watcher_events(call: Call, message: Message) -> Message:
    watcher = call.state.watchers.get(call.sandbox_id, pjson.text(message, "watcher_id"))
    return {"events": watcher.take()}


async def remove_watcher(call: Call, message: Message) -> Message:
    await call.state.watchers.remove(call.sandbox_id, pjson.text(message, "watcher_id"))
    return {}


METHODS: dict[str, Method] = {
    "Stat": Method("unary", stat),
    "MakeDir": Method("unary", make_dir),
    "Move": Method("unary", move),
    "ListDir": Method("unary", list_dir),
    "Remove": Method("unary", remove),
    "WatchDir": Method("server_stream", watch_dir, PING),
    "CreateWatcher": Method("unary", create_watcher),
    "GetWatcherEvents": Method("unary", get_watcher_events),
    "RemoveWatcher": Method("unary", remove_watcher),
}
