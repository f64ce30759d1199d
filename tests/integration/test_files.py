"""Files through the REST API: streamed up/download, list, stat, mkdir, move, remove, errors."""

from __future__ import annotations

import hashlib
import os

import httpx


def test_write_read_roundtrip_large_binary(api: httpx.Client, sandbox: str, run) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(20 * 1024 * 1024)
    base = f"/v1/sandboxes/{sandbox}/files"
    chunks = [data[i:i + 65536] for i in range(0, len(data), 65536)]
    r = api.put(base, params={"path": "/home/user/data/blob.bin"}, content=iter(chunks))
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["size"] == len(data) and info["type"] == "file" and info["owner"] == "user"
    with api.stream("GET", base, params={"path": "/home/user/data/blob.bin"}) as r:
        digest = hashlib.sha256()
        for chunk in r.iter_bytes():
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert run(sandbox, "sha256sum data/blob.bin | cut -d' ' -f1").stdout.strip() == digest.hexdigest()


def test_download_length_is_exact_and_a_shrinking_file_ends_the_body_cleanly(  # type: ignore[no-untyped-def]
        api: httpx.Client, sandbox: str, run) -> None:
    """A small file goes out with its exact Content-Length; a large one streams chunked, so when the
    sandbox truncates it mid-download the body ends early and well-formed (a prefix of the file)
    instead of breaking a promised length. Twin: the truncation really landed mid-stream."""
    base = f"/v1/sandboxes/{sandbox}/files"
    api.put(base, params={"path": "/tmp/small"}, content=b"s" * 5000)
    r = api.get(base, params={"path": "/tmp/small"})
    assert r.headers["content-length"] == "5000" and r.content == b"s" * 5000
    size = 64 * 1024 * 1024
    pattern = b"0123456789abcdef\n"
    assert run(sandbox, f"yes 0123456789abcdef | head -c {size} > /tmp/big").exit_code == 0
    got = bytearray()
    with api.stream("GET", base, params={"path": "/tmp/big"}) as r:
        assert r.status_code == 200 and "content-length" not in r.headers
        chunks = r.iter_bytes()
        got += next(chunks)
        assert run(sandbox, "truncate -s 0 /tmp/big").exit_code == 0
        for chunk in chunks:
            got += chunk
    assert 0 < len(got) < size  # ended early, no transport error
    assert bytes(got) == (pattern * (len(got) // len(pattern) + 1))[:len(got)]


def test_relative_paths_resolve_in_home(api: httpx.Client, sandbox: str, run) -> None:  # type: ignore[no-untyped-def]
    api.put(f"/v1/sandboxes/{sandbox}/files", params={"path": "notes.txt"}, content=b"hi")
    assert run(sandbox, "cat /home/user/notes.txt").stdout == "hi"


def test_list_stat_mkdir_move_remove(api: httpx.Client, sandbox: str) -> None:
    base = f"/v1/sandboxes/{sandbox}/files"
    assert api.post(f"{base}/mkdir", json={"path": "/home/user/a/b"}).json() == {"created": True}
    assert api.post(f"{base}/mkdir", json={"path": "/home/user/a/b"}).json() == {"created": False}
    api.put(base, params={"path": "/home/user/a/b/f.txt"}, content=b"12345")
    names = {e["path"] for e in api.get(f"{base}/list", params={"path": "/home/user/a", "depth": 2}).json()}
    assert names == {"/home/user/a/b", "/home/user/a/b/f.txt"}
    st = api.get(f"{base}/stat", params={"path": "/home/user/a/b/f.txt"}).json()
    assert st["size"] == 5 and st["type"] == "file" and st["modified"].endswith("Z")
    moved = api.post(f"{base}/move", json={"src": "/home/user/a/b/f.txt", "dst": "/home/user/g.txt"}).json()
    assert moved["path"] == "/home/user/g.txt"
    assert api.delete(base, params={"path": "/home/user/a"}).status_code == 204
    assert api.get(f"{base}/stat", params={"path": "/home/user/a"}).status_code == 404


def test_file_errors_are_clear(api: httpx.Client, sandbox: str) -> None:
    base = f"/v1/sandboxes/{sandbox}/files"
    r = api.get(base, params={"path": "/nope/missing"})
    assert r.status_code == 404 and sandbox in r.json()["message"]
    assert api.get(f"{base}/list", params={"path": "/etc/hostname"}).status_code == 400
    assert api.get(base, params={"path": "/home"}).status_code == 400
    assert api.get(f"{base}/list", params={"path": "/", "depth": 0}).status_code == 400
    assert api.get(base, params={"path": ""}).status_code == 400
    r = api.put(base, params={"path": "/etc/shadow-new"}, content=b"x")  # as user: permission denied
    assert r.status_code == 400 and "permission" in r.json()["message"]


def test_upload_beyond_the_disk_limit_fails_and_sandbox_lives(api: httpx.Client, run) -> None:  # type: ignore[no-untyped-def]
    sid = api.post("/v1/sandboxes", json={"disk_mb": 64, "timeout": 60}).json()["id"]
    try:
        chunk = b"\0" * (1 << 20)
        r = api.put(f"/v1/sandboxes/{sid}/files", params={"path": "big.bin"}, content=iter([chunk] * 100))
        assert r.status_code == 507, r.text
        r = api.put(f"/v1/sandboxes/{sid}/files", params={"path": "big2.bin"}, content=chunk * 100)
        assert r.status_code == 413
        assert run(sid, "echo still alive").stdout == "still alive\n"
        assert run(sid, "ls big.bin 2>&1; df -m / | tail -1").exit_code == 0
    finally:
        api.delete(f"/v1/sandboxes/{sid}")
