"""Load nftables rules (privileged: changes the host's packet filter).

Calls libnftables (Debian ``libnftables1``, pulled in by ``nftables``) in-process through ctypes:
one batch per call, applied atomically by the kernel, no ``nft`` process spawned (~1 ms, not ~5).
Thread-safe: calls are serialised by a lock (a libnftables context is not thread-safe).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import threading

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_ctx: int | None = None
NFT_CTX_OUTPUT_JSON = 1 << 4


class NftError(RuntimeError):
    """nftables refused a batch; the message carries nft's own explanation."""


def _context() -> tuple[ctypes.CDLL, int]:
    global _lib, _ctx
    if _lib is None or _ctx is None:
        name = ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            raise NftError(f"libnftables not found ({exc}): install the Debian package nftables") from exc
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        before = _open_files()
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            raise NftError("nft_ctx_new failed")
        for fd, target in _open_files().items():  # its netlink socket, which it opens inheritable
            if before.get(fd) != target:
                with contextlib.suppress(OSError):
                    os.set_inheritable(fd, False)
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        _lib, _ctx = lib, ctx
    return _lib, _ctx


def _open_files() -> dict[int, str]:
    found = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return found


def run(commands: str) -> str:
    """Apply one batch (nft syntax, several lines); returns nft's output. Raises ``NftError``."""
    with _lock:
        lib, ctx = _context()
        rc = lib.nft_run_cmd_from_buffer(ctx, commands.encode())
        out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
        err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
    if rc != 0:
        raise NftError(f"nftables refused the batch: {err.strip() or 'no reason given'}")
    return out


def tables() -> list[str]:
    """Names of the host's ``inet`` tables."""
    out = run("list tables inet")
    return [line.split()[2] for line in out.splitlines() if line.startswith("table inet ")]


def delete_table(name: str) -> None:
    if name in tables():
        run(f"delete table inet {name}")
