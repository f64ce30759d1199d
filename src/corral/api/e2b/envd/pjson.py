"""Reading and writing proto3 JSON by hand, for the messages of ``proto/`` (JSON codec only).

Reading follows the proto3 JSON rules a parser must accept: a field under its lowerCamelCase JSON
name or its proto name; ``null`` means the default; integers as numbers or strings; enums by name
or number; bytes as standard or URL-safe base64, padded or not. A value of the wrong shape is an
``invalid_argument`` ConnectError naming the field. Unknown fields are ignored.

Writing uses what protobuf's own printers emit: JSON names, enums by name, int64 as strings,
bytes as padded standard base64, Timestamps as RFC 3339 with a ``Z``.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any

from .connect import ConnectError

MAX_UINT32 = (1 << 32) - 1


def json_name(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def raw(message: dict[str, Any], name: str) -> Any:
    """The value of proto field `name` (snake_case) or None when absent or null."""
    value = message.get(json_name(name))
    return message.get(name) if value is None else value


def _bad(name: str, what: str) -> ConnectError:
    return ConnectError("invalid_argument", f"field {json_name(name)!r} must be {what}")


def has(message: dict[str, Any], name: str) -> bool:
    return raw(message, name) is not None


def sub(message: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = raw(message, name)
    if value is not None and not isinstance(value, dict):
        raise _bad(name, "an object")
    return value


def text(message: dict[str, Any], name: str, default: str = "") -> str:
    value = raw(message, name)
    if value is None:
        return default
    if not isinstance(value, str) or "\0" in value:
        raise _bad(name, "a string without NUL bytes")
    return value


def optional_text(message: dict[str, Any], name: str) -> str | None:
    return text(message, name) if has(message, name) else None


def flag(message: dict[str, Any], name: str, default: bool = False) -> bool:
    value = raw(message, name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(name, "true or false")
    return value


def uint32(message: dict[str, Any], name: str, default: int = 0) -> int:
    value = raw(message, name)
    if value is None:
        return default
    digits = isinstance(value, str) and value.isascii() and value.isdigit()  # int() refuses "²"
    if digits or (isinstance(value, float) and value.is_integer()):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_UINT32:
        raise _bad(name, "an unsigned 32-bit integer")
    return value


def texts(message: dict[str, Any], name: str) -> list[str]:
    value = raw(message, name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and "\0" not in v for v in value):
        raise _bad(name, "a list of strings without NUL bytes")
    return value


def text_map(message: dict[str, Any], name: str) -> dict[str, str]:
    value = raw(message, name)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and "\0" not in k + v for k, v in value.items()
    ):
        raise _bad(name, "an object of strings")
    return value


def bytes_field(message: dict[str, Any], name: str) -> bytes:
    value = raw(message, name)
    if value is None:
        return b""
    if not isinstance(value, str):
        raise _bad(name, "base64 text")
    try:
        return base64.urlsafe_b64decode(value.replace("+", "-").replace("/", "_") + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise _bad(name, "base64 text") from None


def enum(message: dict[str, Any], name: str, values: dict[str, int]) -> int:
    """An enum given by name or number; a number outside `values` is kept (proto3 enums are open)."""
    value = raw(message, name)
    if value is None:
        return 0
    if isinstance(value, str) and value in values:
        return values[value]
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _bad(name, "one of " + ", ".join(values))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def timestamp(unix: float) -> str:
    """RFC 3339 in UTC with a Z, as protobuf writes google.protobuf.Timestamp."""
    moment = datetime.fromtimestamp(unix, UTC)
    text_form = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond % 1000:
        text_form += f".{moment.microsecond:06d}"
    elif moment.microsecond:
        text_form += f".{moment.microsecond // 1000:03d}"
    return text_form + "Z"
