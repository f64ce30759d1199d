"""Fuzzing the envd emulation's parsers without a server (hypothesis).

The Connect envelope reader (`connect.EnvelopeReader`), the deadline and Basic-user headers, the
multipart header parsers of uploads (`uploads.disposition`, `boundary_of`) and the proto3 JSON
readers (`pjson`): any input gives a value of the promised shape or the module's own error type
(`ConnectError`, `UploadError`) — never another exception. The envelope reader also gives the same
messages however the body is cut into chunks, and refuses an oversized length before buffering it.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from corral.api.e2b.envd import connect, pjson
from corral.api.e2b.envd.connect import MAX_MESSAGE, STATUS, ConnectError, EnvelopeReader
from corral.api.e2b.envd.rpc import basic_user
from corral.api.e2b.envd.uploads import UploadError, boundary_of, disposition

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
FLAGS = st.sampled_from([0, connect.END_STREAM, connect.COMPRESSED, 0x03, 0x80]) | st.integers(0, 255)


def envelope(flags: int, payload: bytes, length: int | None = None) -> bytes:
    return struct.pack(">BI", flags, len(payload) if length is None else length) + payload


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def feed_all(chunks: list[bytes]) -> tuple[list[dict[str, Any]], ConnectError | None, bool]:
    reader = EnvelopeReader()
    messages: list[dict[str, Any]] = []
    try:
        for chunk in chunks:
            messages += reader.feed(chunk)
        reader.finish()
    except ConnectError as exc:
        assert exc.code in STATUS
        return messages, exc, reader.ended
    return messages, None, reader.ended


def bodies() -> st.SearchStrategy[bytes]:
    payloads = JSON_VALUES.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=64)
    lying = st.none() | st.integers(0, 80) | st.sampled_from([MAX_MESSAGE, MAX_MESSAGE + 1, 2**32 - 1])
    envelopes = st.builds(envelope, FLAGS, payloads, lying)
    return st.lists(envelopes, max_size=5).map(b"".join) | st.binary(max_size=256)


@settings(max_examples=300, deadline=None)
@given(bodies(), st.lists(st.integers(0, 10_000), max_size=6))
# found: a valid envelope and a malformed one in one chunk lost the valid message
@example(b'\x00\x00\x00\x00\x07{"a":1}\x00\x00\x00\x00\x03xyz', [12])
def test_envelope_reader_gives_objects_or_a_connect_error_whatever_the_chunking(body: bytes, cuts: list[int]) -> None:
    whole = feed_all([body])
    pieces = feed_all(cut(body, cuts))
    for messages, _, _ in (whole, pieces):
        assert all(isinstance(m, dict) for m in messages)
    assert pieces[0] == whole[0][: len(pieces[0])]  # chunking never changes what was read
    assert (pieces[1] is None) == (whole[1] is None)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=3), max_size=4),
       st.lists(st.integers(0, 10_000), max_size=8))
def test_valid_envelopes_come_out_as_sent(messages: list[dict[str, Any]], cuts: list[int]) -> None:
    body = b"".join(connect.envelope(m) for m in messages) + connect.end_of_stream()
    got, error, ended = feed_all(cut(body, cuts))
    assert error is None and ended and got == json.loads(json.dumps(messages))


@settings(max_examples=50, deadline=None)
@given(st.integers(MAX_MESSAGE + 1, 2**32 - 1), FLAGS)
def test_an_oversized_envelope_is_refused_from_its_header(length: int, flags: int) -> None:
    reader = EnvelopeReader()
    with pytest.raises(ConnectError) as caught:
        reader.feed(struct.pack(">BI", flags, length))
    assert caught.value.code in ("resource_exhausted", "internal")


@settings(max_examples=300, deadline=None)
@given(st.none() | st.text(max_size=16) | st.integers(0, 10**12).map(str) | st.text(alphabet="0129²³¹٣", max_size=4))
def test_connect_timeout_header(value: str | None) -> None:
    """Found: "²" passed str.isdigit() and then failed int(), a 500 on every envd call carrying it."""
    try:
        seconds = connect.parse_timeout(value)
    except ConnectError as exc:
        assert exc.code == "invalid_argument"
    else:
        assert seconds is None or 0 <= seconds <= 9_999_999.999


@settings(max_examples=300, deadline=None)
@given(st.none() | st.text(max_size=40) | st.binary(max_size=30).map(lambda b: "Basic " + b.hex())
       | st.binary(max_size=30).map(lambda b: "Basic " + base64.b64encode(b).decode()))
def test_basic_user_header(value: str | None) -> None:
    try:
        user = basic_user(value)
    except ConnectError as exc:
        assert exc.code == "unauthenticated"
    else:
        assert isinstance(user, str) and user


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120) | st.builds(
    lambda name, filename, quote: f'form-data; name="{name}"; filename={quote}{filename}{quote}',
    st.text(max_size=10), st.text(max_size=60), st.sampled_from(['"', "", "'"])))
def test_multipart_header_parsers(value: str) -> None:
    params = disposition(value)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items())
    try:
        boundary = boundary_of(value)
    except UploadError:
        return
    assert 0 < len(boundary) <= 200 * 4


READERS = {
    "sub": (pjson.sub, lambda v: v is None or isinstance(v, dict)),
    "text": (pjson.text, lambda v: isinstance(v, str) and "\0" not in v),
    "optional_text": (pjson.optional_text, lambda v: v is None or isinstance(v, str)),
    "flag": (pjson.flag, lambda v: isinstance(v, bool)),
    "uint32": (pjson.uint32, lambda v: isinstance(v, int) and 0 <= v <= pjson.MAX_UINT32),
    "texts": (pjson.texts, lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v)),
    "text_map": (pjson.text_map, lambda v: isinstance(v, dict)),
    "bytes_field": (pjson.bytes_field, lambda v: isinstance(v, bytes)),
    "enum": (lambda m, n: pjson.enum(m, n, {"A": 0, "B": 1}), lambda v: isinstance(v, int)),
}


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["path", "pid", "depth", "tag", "cols", "data", "signal", "x"]),
                       JSON_VALUES | st.text(alphabet="0123456789-+=/_eE.²٣", max_size=24), max_size=4))
def test_proto3_json_readers(message: dict[str, Any]) -> None:
    for name in [*message, "absent"]:
        for label, (read, check) in READERS.items():
            try:
                value = read(message, name)
            except ConnectError as exc:
                assert exc.code == "invalid_argument", exc
            else:
                assert check(value), (label, name, value)
