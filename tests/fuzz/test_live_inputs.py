"""Fuzzing a real server's file and envd inputs with hypothesis (one sandbox, many hostile requests).

- Paths and upload filenames (`..`, NUL, `~`, very long names and components, odd Unicode, bytes
  that are not UTF-8, CR/LF and quotes in multipart headers) through envd's ``POST /files``
  (multipart and raw), and the native files API: the answer is a 4xx JSON ``{code, message}`` or a
  200 whose file is inside the sandbox — read back through the sandbox's root mount on the host,
  byte for byte, at the path the answer named — never a 5xx.
- Connect RPC calls of the envd emulation with arbitrary bodies, envelopes, content types and
  ``Connect-Timeout-Ms``/``Authorization`` headers: a unary call answers 200 or a Connect error
  ``{code, message}`` with the code's status (never 500); a stream answers 200 with envelopes ending
  in an end-of-stream envelope, whose error (if any) is a Connect code other than internal/unknown.
"""

from __future__ import annotations

import base64
import json
import os
import posixpath
import secrets
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import Server, sandbox_files
from corral.api.e2b.envd import SERVICES
from corral.api.e2b.envd.connect import STATUS, STREAM_TYPE, UNARY_TYPE

ENVD = "49983"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COMPONENTS = st.sampled_from(
    ["..", ".", "", "~", "a", "b.txt", "é", "日本", "\0", "x" * 255, "y" * 256, "%2e%2e", "\\..", " ", "-", "\t",
     "\n", "\r\n", '"', "'", ";", "*", "?", "\ud7ff", "\U0001f600", "proc", "etc", "home", "user", "tmp", "dev"]
) | st.text(max_size=12)
PATHS = (
    st.lists(COMPONENTS, min_size=1, max_size=8).map("/".join)
    | st.tuples(st.sampled_from(["", "/", "~/", "./", "../../", "/home/user/"]), st.text(min_size=1, max_size=40))
    .map("".join)
    | st.integers(1, 40).map(lambda n: "/".join(["d" * 200] * n))  # past PATH_MAX
)


@pytest.fixture(scope="module")
def fuzz_sandbox(server: Server) -> Iterator[str]:
    with server.client() as api:
        r = api.post("/v1/sandboxes", json={"timeout": 600})
        assert r.status_code == 201, r.text
        sandbox_id = r.json()["id"]
        yield sandbox_id
        assert api.delete(f"/v1/sandboxes/{sandbox_id}").status_code == 204


@pytest.fixture(scope="module")
def envd(server: Server, fuzz_sandbox: str) -> Iterator[httpx.Client]:
    headers = {"X-API-Key": server.api_key, "E2b-Sandbox-Id": fuzz_sandbox, "E2b-Sandbox-Port": ENVD}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        yield client


def json_error(r: httpx.Response) -> dict[str, Any]:
    """A 4xx answer of the HTTP APIs: JSON {code: its status, message: text}."""
    assert 400 <= r.status_code < 500, f"{r.status_code}: {r.text[:500]}"
    body = r.json()
    assert body.get("code") == r.status_code and isinstance(body.get("message"), str) and body["message"], body
    return body


def assert_inside(root: Path, path: str, data: bytes) -> None:
    """The sandbox path an answer named holds `data`, read through the sandbox's root one
    component at a time (so no host PATH_MAX applies and no symlink or `..` can lead out of it)."""
    assert path.startswith("/"), path
    parts = [p for p in posixpath.normpath(path).split("/") if p]  # answers may say "/home/user/./x"
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            step = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = step
        with os.fdopen(os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd), "rb") as f:
            assert f.read() == data, f"{path}: not the uploaded bytes"
    finally:
        os.close(fd)


def quoted(name: bytes) -> bytes:
    return b'"' + name.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


@FUZZ
@given(name=PATHS, raw_bytes=st.booleans(), escape=st.booleans(), with_query=st.booleans())
def test_envd_multipart_upload_filenames(
    envd: httpx.Client, server: Server, fuzz_sandbox: str, name: str, raw_bytes: bool, escape: bool, with_query: bool
) -> None:
    data = secrets.token_bytes(32)
    encoded = name.encode("utf-8", "surrogatepass")
    if raw_bytes:  # not UTF-8: latin-1 bytes as some clients send them
        encoded = name.encode("latin-1", "replace")
    # A header line cannot carry CR or LF (they would end it, or the part's headers, early): clients
    # encode them in a filename as browsers do.
    encoded = encoded.replace(b"\r", b"%0D").replace(b"\n", b"%0A")
    filename = quoted(encoded) if escape else encoded
    boundary = secrets.token_hex(8)
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=".encode() + filename
            + b"\r\nContent-Type: application/octet-stream\r\n\r\n" + data + f"\r\n--{boundary}--\r\n".encode())
    params = {"path": name, "username": "user"} if with_query else {"username": "user"}
    r = envd.post("/files", params=params, content=body,
                  headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    event(f"status {r.status_code}")
    if r.status_code != 200:
        json_error(r)
        return
    entries = r.json()
    assert len(entries) == 1 and entries[0]["type"] == "file", entries
    assert_inside(sandbox_files(server.data_dir, fuzz_sandbox), entries[0]["path"], data)


@FUZZ
@given(path=PATHS, gzip=st.booleans())
def test_envd_raw_upload_and_download_paths(
    envd: httpx.Client, server: Server, fuzz_sandbox: str, path: str, gzip: bool
) -> None:
    data = secrets.token_bytes(48)
    body, headers = data, {"Content-Type": "application/octet-stream"}
    if gzip:
        body, headers["Content-Encoding"] = data[::-1], "gzip"  # not gzip at all: must be refused as such
    r = envd.post("/files", params={"path": path}, content=body, headers=headers)
    event(f"status {r.status_code}")
    if r.status_code != 200:
        json_error(r)
    else:
        assert not gzip, "a body that is not gzip was accepted as gzip"
        assert_inside(sandbox_files(server.data_dir, fuzz_sandbox), r.json()[0]["path"], data)
    got = envd.get("/files", params={"path": path})
    if got.status_code != 200:
        json_error(got)


@settings(FUZZ, max_examples=80)
@given(path=PATHS, dst=PATHS, user=st.sampled_from(["user", "user", "root", "nobody", "", "no such", "\0"]))
def test_native_files_api_paths(
    server: Server, fuzz_sandbox: str, path: str, dst: str, user: str
) -> None:
    data = secrets.token_bytes(40)
    base = f"/v1/sandboxes/{fuzz_sandbox}/files"
    root = sandbox_files(server.data_dir, fuzz_sandbox)
    with server.client() as api:
        r = api.put(base, params={"path": path, "user": user}, content=data)
        event(f"status {r.status_code}")
        if r.status_code == 200:
            assert_inside(root, r.json()["path"], data)
            back = api.get(base, params={"path": path, "user": user})
            assert back.status_code == 200 and back.content == data, back.text[:300]
        else:
            json_error(r)
        for method, url, kwargs in (
            ("GET", "/stat", {"params": {"path": path, "user": user}}),
            ("GET", "/list", {"params": {"path": path, "user": user, "depth": 2}}),
            ("POST", "/mkdir", {"json": {"path": dst, "user": user}}),
            ("POST", "/move", {"json": {"src": path, "dst": dst, "user": user}}),
            ("DELETE", "", {"params": {"path": dst, "user": user}}),
        ):
            r = api.request(method, base + url, **kwargs)
            if r.status_code >= 300:
                json_error(r)


# -- Connect RPC ----------------------------------------------------------------------------------

CALLS = [(service, method, spec.kind) for service, methods in SERVICES.items() for service_method in [methods]
         for method, spec in service_method.items()] + [("process.Process", "Nope", "unary"), ("x", "y", "unary")]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | PATHS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
FIELDS = st.sampled_from(["path", "pid", "depth", "tag", "process", "input", "signal", "watcherId", "source",
                          "destination", "recursive", "stdin", "pty", "selector", "cmd", "args"])
PROCESS = st.fixed_dictionaries(
    {"cmd": st.sampled_from(["true", "/bin/echo", "", "nonexistent", "\0", "x" * 5000])},
    optional={"args": st.lists(st.text(max_size=8), max_size=3), "cwd": PATHS,
              "envs": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2)},
)
MESSAGES = (
    st.dictionaries(FIELDS, JSON_VALUES, max_size=4)
    | st.fixed_dictionaries({"process": PROCESS}, optional={"tag": st.text(max_size=5), "stdin": st.booleans()})
    | st.fixed_dictionaries({"path": PATHS}, optional={"depth": st.integers(-2, 40), "recursive": st.booleans()})
)


def envelope(flags: int, payload: bytes, length: int | None = None) -> bytes:
    return struct.pack(">BI", flags, len(payload) if length is None else length) + payload


def rpc_bodies(kind: str) -> st.SearchStrategy[bytes]:
    payloads = MESSAGES.map(lambda m: json.dumps(m).encode()) | st.binary(max_size=40)
    if kind == "unary":
        return payloads
    flags = st.sampled_from([0, 0, 0, 1, 2, 3, 0x80])
    envelopes = st.builds(envelope, flags, payloads, st.none() | st.integers(0, 64) | st.just(2**32 - 1))
    return st.lists(envelopes, max_size=3).map(b"".join) | st.binary(max_size=64)


def read_envelopes(body: bytes) -> list[tuple[int, dict[str, Any]]]:
    out = []
    while body:
        assert len(body) >= 5, body
        flags, length = struct.unpack(">BI", body[:5])
        out.append((flags, json.loads(body[5 : 5 + length])))
        body = body[5 + length :]
    return out


@st.composite
def rpc_calls(draw: st.DrawFn) -> tuple[str, str, str, bytes, dict[str, str]]:
    service, method, kind = draw(st.sampled_from(CALLS))
    body = draw(rpc_bodies(kind))
    expected = UNARY_TYPE if kind == "unary" else STREAM_TYPE
    headers = {"Content-Type": draw(st.sampled_from([expected] * 4 + [
        UNARY_TYPE, STREAM_TYPE, "application/proto", "application/connect+proto", "text/plain", ""]))}
    # a stream's deadline is always short or invalid, so one that would run on (a watch) ends
    invalid = ["abc", "-1", "1e3", "99999999999", "+5", "0x10", "1.5"]
    headers["Connect-Timeout-Ms"] = draw(st.sampled_from(invalid + ([""] if kind == "unary" else []))
                                         | st.integers(1, 1500).map(str))
    who = draw(st.none() | st.sampled_from(["user", "root", "nobody-here", ""]) | st.text(max_size=6))
    if who is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{who}:".encode()).decode()
    if draw(st.booleans()):
        headers["Keepalive-Ping-Interval"] = draw(st.sampled_from(["1", "0", "-3", "x", "100000"]))
    return service, method, kind, body, headers


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(call=rpc_calls())
def test_connect_rpc_answers_connect_errors(envd: httpx.Client, call: tuple[str, str, str, bytes, dict[str, str]]) \
        -> None:
    service, method, _, body, headers = call
    r = envd.post(f"/{service}/{method}", content=body, headers=headers)
    event(f"status {r.status_code}")
    assert r.status_code not in (500, 502, 503), f"{service}/{method}: {r.status_code} {r.text[:500]}"
    if r.headers.get("content-type", "").startswith(STREAM_TYPE):
        assert r.status_code == 200
        envelopes = read_envelopes(r.content)
        assert envelopes and envelopes[-1][0] & 0x02, envelopes
        assert all(flags == 0 for flags, _ in envelopes[:-1]), envelopes
        error = envelopes[-1][1].get("error")
        if error is not None:
            assert error["code"] in STATUS and error["message"], error
            assert error["code"] not in ("internal", "unknown") or "compressed" in error["message"], error
    elif r.status_code != 200:
        error = r.json()
        if error.get("code") == 401:  # the router's own authentication answer
            return
        assert error["code"] in STATUS and STATUS[error["code"]] == r.status_code and error["message"], error
        assert error["code"] not in ("internal", "unknown"), error


# -- JSON strings that are not Unicode, and bad stdin encodings (found by fuzzing) --------------

SURROGATE = "\ud800"


@pytest.mark.parametrize(("path", "body"), [
    ("/commands", {"cmd": f"echo {SURROGATE}"}),
    ("/commands", {"cmd": "true", "envs": {"A": SURROGATE}}),
    ("/commands", {"cmd": "true", "cwd": f"/tmp/{SURROGATE}"}),
    ("/commands", {"cmd": "true", "user": SURROGATE}),
    ("/commands", {"cmd": "true", "tag": SURROGATE}),
    ("/files/mkdir", {"path": f"/tmp/{SURROGATE}"}),
    ("/files/move", {"src": f"/tmp/{SURROGATE}", "dst": "/tmp/x"}),
    ("/commands/1/stdin", {"data": SURROGATE}),
    ("/commands/1/stdin", {"data_base64": "0"}),
    ("/commands/1/stdin", {"data_base64": "\u0080"}),
    ("", {"metadata": {"k": SURROGATE}}),  # create: such a record once made every later list answer 500
    ("", {"envs": {SURROGATE: "v"}}),
])
def test_unencodable_strings_are_a_400(server: Server, fuzz_sandbox: str, path: str, body: dict[str, Any]) -> None:
    """JSON escapes can spell lone surrogates; they were 500s (create, stdin) or 503s ("agent not
    reachable" is what the agent's UnicodeEncodeError became); now they are 400s naming the field."""
    url = f"/v1/sandboxes/{fuzz_sandbox}{path}" if path else "/v1/sandboxes"
    with server.client() as api:
        r = api.post(url, content=json.dumps(body), headers={"Content-Type": "application/json"})
        assert r.status_code == 400, r.text
        json_error(r)
        assert api.get("/v1/sandboxes", params={"state": "all"}).status_code == 200


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(["cmd", "cwd", "user", "tag", "env"]),
       text=st.text(alphabet=st.characters(categories=["Cs"]) | st.sampled_from("a/é \0$"), min_size=1, max_size=6))
def test_command_fields_with_any_text(server: Server, fuzz_sandbox: str, field: str, text: str) -> None:
    body: dict[str, Any] = {"cmd": "true", "timeout": 5}
    if field == "env":
        body["envs"] = {"V": text}
    else:
        body[field] = text if field != "cmd" else f": {text}"
    with server.client() as api:
        r = api.post(f"/v1/sandboxes/{fuzz_sandbox}/commands", content=json.dumps(body),
                     headers={"Content-Type": "application/json"})
        event(f"status {r.status_code}")
        if r.status_code != 200:
            json_error(r)


# -- digits that str.isdigit() accepts and int() refuses (found by fuzzing) ------------------------

@pytest.mark.parametrize("probe", ["signal", "user", "pid", "deadline", "keepalive", "port", "expiration"])
def test_unicode_digits_are_refused_not_500(server: Server, fuzz_sandbox: str, probe: str) -> None:
    """"²" (and "³", "¹": latin-1 bytes of a header) passes str.isdigit() but not int(): each of these
    inputs answered 500 (the router's port header even with a plain-text body, for any path)."""
    envd = {"E2b-Sandbox-Id": fuzz_sandbox, "E2b-Sandbox-Port": ENVD}
    sup = "²".encode("latin-1")
    requests: dict[str, tuple[str, str, dict[str, Any]]] = {
        "signal": ("POST", f"/v1/sandboxes/{fuzz_sandbox}/commands/1/signal", {"json": {"signal": "²"}}),
        "user": ("POST", f"/v1/sandboxes/{fuzz_sandbox}/files/mkdir", {"json": {"path": "d", "user": "²"}}),
        "pid": ("POST", "/process.Process/SendSignal", {"json": {"process": {"pid": "²"}}, "headers": envd}),
        "deadline": ("POST", "/process.Process/List", {"json": {}, "headers": {**envd, "Connect-Timeout-Ms": sup}}),
        "keepalive": ("POST", "/process.Process/List",
                      {"json": {}, "headers": {**envd, "Keepalive-Ping-Interval": sup}}),
        "port": ("GET", "/health", {"headers": {"E2b-Sandbox-Id": fuzz_sandbox, "E2b-Sandbox-Port": b"4998" + sup}}),
        "expiration": ("GET", "/files", {"params": {"path": "x", "signature": "v1_x", "signature_expiration": "²"},
                                         "headers": {**envd, "X-API-Key": ""}}),
    }
    method, url, kwargs = requests[probe]
    with server.client() as api:
        r = api.request(method, url, **kwargs)
    assert r.status_code < 500 or r.status_code == 502, f"{r.status_code}: {r.text[:300]}"
    assert r.status_code == 200 or r.json().get("message"), r.text[:300]  # 200: the header is ignored
