"""envd emulation, without a server: our .proto files and hand-written proto3 JSON agree with the
official SDK's own message classes, and the Connect framing/pacing behaves as the protocol says."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from e2b.envd.filesystem import filesystem_pb
from e2b.envd.process import process_pb
from protobuf import Oneof

from corral.agent.protocol import Exit
from corral.api.e2b.envd import connect, pjson, process
from corral.api.e2b.envd.connect import ConnectError
from corral.api.e2b.envd.filesystem import entry_info

PROTO = Path(__file__).resolve().parents[2] / "proto"
SCALARS = {"string", "bytes", "bool", "uint32", "sint32", "int64", "int32", "uint64"}


def parse_proto(text: str) -> tuple[dict[str, dict[str, tuple]], dict[str, dict[str, int]], dict[str, tuple]]:
    """A small reader of our own .proto files: fields, enum values and rpcs, by full name."""
    text = re.sub(r"//[^\n]*", "", text)
    package = re.search(r"^package (\w+);", text, re.M).group(1)  # type: ignore[union-attr]
    fields: dict[str, dict[str, tuple]] = {}
    enums: dict[str, dict[str, int]] = {}
    rpcs: dict[str, tuple] = {}
    scope: list[tuple[str, str]] = []  # (kind, name)
    token = re.compile(
        r"(?P<open>(message|enum|service|oneof)\s+(?P<name>\w+)\s*\{)|(?P<close>\})"
        r"|(?P<rpc>rpc\s+(?P<rname>\w+)\((?P<cs>stream\s+)?(?P<inp>[\w.]+)\)\s*returns\s*\((?P<ss>stream\s+)?(?P<out>[\w.]+)\))"
        r"|(?P<value>(?P<vname>[A-Z][A-Z0-9_]*)\s*=\s*(?P<vnum>\d+);)"
        r"|(?P<field>(?P<label>optional|repeated)?\s*(?P<type>map<\w+,\s*\w+>|[\w.]+)\s+(?P<fname>\w+)\s*=\s*(?P<num>\d+);)"
    )
    for m in token.finditer(text):
        messages = [name for kind, name in scope if kind == "message"]
        owner = ".".join([package, *messages])
        if m.group("open"):
            scope.append((m.group(2), m.group("name")))
            if m.group(2) == "message":
                fields.setdefault(".".join([package, *messages, m.group("name")]), {})
            elif m.group(2) == "enum":
                enums[m.group("name")] = {}
        elif m.group("close"):
            scope.pop()
        elif m.group("rpc"):
            rpcs[m.group("rname")] = (m.group("inp"), m.group("out"), bool(m.group("cs")), bool(m.group("ss")))
        elif m.group("value"):
            enums[scope[-1][1]][m.group("vname")] = int(m.group("vnum"))
        elif m.group("field"):
            kind, label = m.group("type"), m.group("label")
            in_oneof = bool(scope) and scope[-1][0] == "oneof"
            fields[owner][m.group("fname")] = (int(m.group("num")), kind, label, in_oneof)
    return fields, enums, rpcs


def sdk_shapes(file_desc) -> tuple[dict[str, dict[str, tuple]], dict[str, dict[str, int]], dict[str, tuple]]:  # type: ignore[no-untyped-def]
    fields: dict[str, dict[str, tuple]] = {}

    def walk(messages, prefix: str) -> None:  # type: ignore[no-untyped-def]
        for msg in messages:
            name = f"{prefix}.{msg.name}"
            if msg.name.endswith("Entry") and msg.proto.options is not None and msg.proto.options.map_entry:
                continue
            fields[name] = {f.name: f for f in msg.fields}
            walk(msg.nested_messages, name)

    walk(file_desc.messages, file_desc.proto.package)
    enums = {e.name: {v.name: v.number for v in e.values} for e in file_desc.enums}
    rpcs = {
        m.name: (m.proto.input_type.rsplit(".", 1)[1], m.proto.output_type.rsplit(".", 1)[1],
                 m.proto.client_streaming, m.proto.server_streaming)
        for s in file_desc.services for m in s.methods
    }
    return fields, enums, rpcs


@pytest.mark.parametrize(
    ("path", "sdk_message"),
    [("process/process.proto", process_pb.StartRequest), ("filesystem/filesystem.proto", filesystem_pb.StatRequest)],
)
def test_our_proto_files_match_the_sdk_descriptors(path: str, sdk_message: type) -> None:
    ours, our_enums, our_rpcs = parse_proto((PROTO / path).read_text())
    theirs, their_enums, their_rpcs = sdk_shapes(sdk_message.desc().file)
    assert our_enums == their_enums
    assert our_rpcs == their_rpcs
    assert set(ours) == set(theirs)
    for message, expected in theirs.items():
        assert set(ours[message]) == set(expected), message
        for name, field in expected.items():
            number, kind, label, in_oneof = ours[message][name]
            assert number == field.number, f"{message}.{name}"
            assert (label == "optional") == bool(field.proto.proto3_optional), f"{message}.{name}"
            repeated = field.proto.label.name == "REPEATED"
            assert (label == "repeated" or kind.startswith("map<")) == repeated, f"{message}.{name}"
            assert in_oneof == (field.proto.has_field("oneof_index") and not field.proto.proto3_optional)
            if kind in SCALARS:
                assert field.proto.type.name == kind.upper(), f"{message}.{name}"
            elif not kind.startswith("map<"):
                assert field.proto.type_name.endswith("." + kind.rsplit(".", 1)[-1]), f"{message}.{name}"


# -- our JSON, read by the SDK's strict parser (unknown fields would fail) ------------------------


def test_process_events_parse_in_the_sdk() -> None:
    data = process_pb.StartResponse.from_json(json.dumps({"event": {"data": {"stdout": pjson.b64(b"\xff\x00hi")}}}))
    assert data.event.event == Oneof("data", process_pb.ProcessEvent.DataEvent(output=Oneof("stdout", b"\xff\x00hi")))
    end = process_pb.StartResponse.from_json(json.dumps(process.end_event(Exit(3, None, None)))).event.event.value
    assert (end.exit_code, end.exited, end.status, end.error) == (3, True, "exit status 3", "exit status 3")
    killed = process_pb.ConnectResponse.from_json(json.dumps(process.end_event(Exit(137, 9, None)))).event.event.value
    assert (killed.exit_code, killed.exited, killed.status) == (-1, False, "signal: killed")
    ok = process_pb.StartResponse.from_json(json.dumps(process.end_event(Exit(0, None, None)))).event.event.value
    assert ok.exit_code == 0 and not ok.has_field("error")
    for ping in (process.PING, {"event": {"start": {"pid": 7}}}):
        process_pb.StartResponse.from_json(json.dumps(ping))


def test_entry_info_parses_in_the_sdk() -> None:
    agent_entry = {
        "name": "link", "path": "/home/user/link", "type": "symlink", "size": 5_000_000_000, "mode": 0o777,
        "permissions": "lrwxrwxrwx", "owner": "user", "group": "user", "modified": 1_700_000_000.25,
        "symlink_target": "/etc/hosts",
    }
    listed = filesystem_pb.ListDirResponse.from_json(json.dumps({"entries": [entry_info(agent_entry)]}))
    entry = listed.entries[0]
    assert entry.size == 5_000_000_000 and entry.is_symlink and entry.type == filesystem_pb.FileType.SYMLINK
    assert entry.symlink_target == "/etc/hosts"
    assert entry.modified_time.to_datetime().timestamp() == 1_700_000_000.25
    other = entry_info({**agent_entry, "type": "other", "symlink_target": None})
    assert filesystem_pb.EntryInfo.from_json(json.dumps(other)).type == filesystem_pb.FileType.UNSPECIFIED


def test_sdk_requests_parse_in_our_readers() -> None:
    start = process_pb.StartRequest(
        process=process_pb.ProcessConfig(cmd="/bin/bash", args=["-i"], envs={"A": "1"}, cwd="~/work"),
        pty=process_pb.PTY(size=process_pb.PTY.Size(cols=100, rows=30)), tag="t", stdin=False,
    )
    command = process.StartCommand.from_json(json.loads(start.to_json()))
    assert command == process.StartCommand("/bin/bash", ["-i"], {"A": "1"}, "~/work", (100, 30), "t", False)
    assert process.home_relative(command.cwd or "") == "work"
    bare_request = process_pb.StartRequest(process=process_pb.ProcessConfig(cmd="x"))
    bare = process.StartCommand.from_json(json.loads(bare_request.to_json()))
    assert bare.stdin is True and bare.pty is None  # absent stdin: a pipe, as envd keeps it
    signal = json.loads(process_pb.SendSignalRequest(signal=process_pb.Signal.SIGKILL).to_json())
    assert pjson.enum(signal, "signal", process.SIGNALS) == 9
    selector = process_pb.ProcessSelector(selector=Oneof("tag", "x"))
    by_tag = json.loads(process_pb.ConnectRequest(process=selector).to_json())
    assert process.Selector.from_json(by_tag) == process.Selector(None, "x")
    given = json.loads(process_pb.ProcessInput(input=Oneof("pty", b"\x03\xff")).to_json())
    assert pjson.bytes_field(given, "pty") == b"\x03\xff"
    assert pjson.bytes_field({"stdin": "-_8"}, "stdin") == b"\xfb\xff"  # URL-safe, unpadded


def test_malformed_fields_are_invalid_arguments() -> None:
    for bad in ({"process": {"cmd": 5}}, {"process": {"cmd": "x", "args": "y"}}, {"process": {}}):
        with pytest.raises(ConnectError) as caught:
            process.StartCommand.from_json(bad)
        assert caught.value.code == "invalid_argument"


# -- Connect framing and pacing -----------------------------------------------------------------


def test_envelopes_split_anywhere_reassemble() -> None:
    body = connect.envelope({"a": 1}) + connect.envelope({"b": "x" * 1000}) + connect.end_of_stream()
    reader = connect.EnvelopeReader()
    got = []
    for i in range(0, len(body), 7):
        got += reader.feed(body[i : i + 7])
    reader.finish()
    assert got == [{"a": 1}, {"b": "x" * 1000}] and reader.ended
    error = connect.end_of_stream(ConnectError("not_found", "gone"))
    assert error[0] == connect.END_STREAM
    assert json.loads(error[5:]) == {"error": {"code": "not_found", "message": "gone"}}
    with pytest.raises(ConnectError):
        connect.EnvelopeReader().feed(b"\x01\x00\x00\x00\x02{}")  # compressed: never negotiated


def test_timeout_header() -> None:
    assert connect.parse_timeout("1500") == 1.5 and connect.parse_timeout(None) is None
    with pytest.raises(ConnectError):
        connect.parse_timeout("-1")


async def _gated(gate: asyncio.Event, closed: list[bool]) -> AsyncIterator[dict[str, int]]:
    try:
        yield {"n": 1}
        await gate.wait()
        yield {"n": 2}
    finally:
        closed.append(True)


def test_paced_sends_keepalives_while_idle_and_keeps_the_pending_message() -> None:
    async def scenario() -> list[dict[str, object]]:
        gate, closed, out = asyncio.Event(), [], []
        async for message in connect.paced(_gated(gate, closed), None, 0.01, {"ping": True}):
            out.append(message)
            if len([m for m in out if "ping" in m]) == 3:
                gate.set()
        assert closed == [True]
        return out

    out = asyncio.run(scenario())
    assert out[0] == {"n": 1} and out[-1] == {"n": 2} and out[1:-1] == [{"ping": True}] * 3


def test_paced_deadline_fails_the_stream_and_closes_the_source() -> None:
    async def scenario() -> list[bool]:
        closed: list[bool] = []
        loop = asyncio.get_running_loop()
        stream = connect.paced(_gated(asyncio.Event(), closed), loop.time() + 0.05, 10, {})
        assert await anext(stream) == {"n": 1}
        with pytest.raises(ConnectError) as caught:
            await anext(stream)
        assert caught.value.code == "deadline_exceeded"
        return closed

    assert asyncio.run(scenario()) == [True]
