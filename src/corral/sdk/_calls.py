"""Every request the SDK makes, as a ``Call`` built without I/O (see ``_core``).

One function per REST endpoint of ``docs/api.md``; each names the sandbox and the operation so
errors can say what failed where.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

from ._builds import BuildInfo, TemplateInfo, parse_build, parse_template
from ._core import NDJSON, Call, decode_json
from ._errors import InvalidArgumentException, ServerException, prefix
from ._execution import DEFAULT_CODE_TIMEOUT, Context, parse_context
from ._models import (
    EntryInfo,
    KeyInfo,
    NetworkInfo,
    ProcessInfo,
    SandboxInfo,
    SandboxMetrics,
    parse_entry,
    parse_key,
    parse_metrics,
    parse_network,
    parse_process,
    parse_sandbox,
)

T = TypeVar("T")


def _sbx(sandbox_id: str, *rest: str) -> str:
    return "/".join(("/v1/sandboxes", quote(sandbox_id, safe=""), *rest))


def _json_call(
    method: str, path: str, operation: str, sandbox_id: str | None, convert: Callable[[Any], T], **kwargs: Any
) -> Call[T]:
    def parse(_status: int, body: bytes) -> T:
        return convert(decode_json(body, sandbox_id, operation))

    return Call(method, path, operation, sandbox_id, parse, **kwargs)


def _list_of(item: Callable[[Any], T], what: str, sandbox_id: str | None) -> Callable[[Any], list[T]]:
    def convert(data: Any) -> list[T]:
        if not isinstance(data, list):
            raise ServerException(f"{prefix(sandbox_id)}expected a list of {what}", sandbox_id=sandbox_id)
        return [item(x) for x in data]

    return convert


def _none(_status: int, _body: bytes) -> None:
    return None


def _drop_none(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _params(**fields: Any) -> tuple[tuple[str, str], ...]:
    return tuple((k, str(v)) for k, v in fields.items() if v is not None)


# --- sandboxes -------------------------------------------------------------------------------------


def create_sandbox(
    *,
    template: str | None,
    timeout: int | None,
    envs: Mapping[str, str] | None,
    metadata: Mapping[str, str] | None,
    cpu: float | None,
    memory_mb: int | None,
    disk_mb: int | None,
    network: str | None = None,
    allow_out: Sequence[str] | None = None,
    deny_out: Sequence[str] | None = None,
) -> Call[SandboxInfo]:
    body = _drop_none(
        template=template,
        timeout=timeout,
        envs=dict(envs) if envs else None,
        metadata=dict(metadata) if metadata else None,
        cpu=cpu,
        memory_mb=memory_mb,
        disk_mb=disk_mb,
        network=network,
        allow_out=None if allow_out is None else list(allow_out),
        deny_out=None if deny_out is None else list(deny_out),
    )
    return _json_call(
        "POST",
        "/v1/sandboxes",
        f"create a sandbox from template {template!r}",
        None,
        parse_sandbox,
        json=body,
    )


def list_sandboxes(state: str = "running", metadata: Mapping[str, str] | None = None) -> Call[list[SandboxInfo]]:
    params = [("state", state)] + [("metadata", f"{k}={v}") for k, v in (metadata or {}).items()]
    return _json_call(
        "GET",
        "/v1/sandboxes",
        "list sandboxes",
        None,
        _list_of(parse_sandbox, "sandboxes", None),
        params=tuple(params),
    )


def get_sandbox(sandbox_id: str) -> Call[SandboxInfo]:
    return _json_call("GET", _sbx(sandbox_id), "get info", sandbox_id, lambda d: parse_sandbox(d, sandbox_id))


def is_running(sandbox_id: str) -> Call[bool]:
    def parse(status: int, body: bytes) -> bool:
        if status == 404:
            return False
        return parse_sandbox(decode_json(body, sandbox_id, "check state"), sandbox_id).state == "running"

    return Call("GET", _sbx(sandbox_id), "check state", sandbox_id, parse, accept=frozenset({200, 404}))


def kill_sandbox(sandbox_id: str) -> Call[bool]:
    """True if the sandbox was killed (or had already ended); False if it never existed."""
    return Call(
        "DELETE",
        _sbx(sandbox_id),
        "kill",
        sandbox_id,
        lambda status, _b: status != 404,
        accept=frozenset({200, 204, 404}),
    )


def set_timeout(sandbox_id: str, timeout: int) -> Call[None]:
    return Call(
        "POST",
        _sbx(sandbox_id, "timeout"),
        f"set timeout to {timeout}s",
        sandbox_id,
        _none,
        json={"timeout": timeout},
    )


def get_network(sandbox_id: str) -> Call[NetworkInfo]:
    return _json_call(
        "GET", _sbx(sandbox_id, "network"), "get network", sandbox_id, lambda d: parse_network(d, sandbox_id)
    )


def update_network(
    sandbox_id: str, network: str | None, allow_out: Sequence[str] | None, deny_out: Sequence[str] | None
) -> Call[NetworkInfo]:
    body = _drop_none(
        network=network,
        allow_out=None if allow_out is None else list(allow_out),
        deny_out=None if deny_out is None else list(deny_out),
    )
    return _json_call(
        "PUT", _sbx(sandbox_id, "network"), "update network", sandbox_id,
        lambda d: parse_network(d, sandbox_id), json=body,
    )


def get_metrics(sandbox_id: str) -> Call[SandboxMetrics]:
    return _json_call(
        "GET", _sbx(sandbox_id, "metrics"), "get metrics", sandbox_id, lambda d: parse_metrics(d, sandbox_id)
    )


# --- commands --------------------------------------------------------------------------------------


def run_command(
    sandbox_id: str,
    cmd: str,
    *,
    envs: Mapping[str, str] | None = None,
    user: str | None = None,
    cwd: str | None = None,
    timeout: float | None = 60,
    stdin: bool = False,
    tag: str | None = None,
) -> Call[None]:
    """Start a command; the answer is an NDJSON event stream (read by the faces, not parsed here)."""
    body = _drop_none(
        cmd=cmd,
        envs=dict(envs) if envs else None,
        user=user,
        cwd=cwd,
        timeout=timeout or 0,
        stdin=stdin,
        tag=tag,
    )
    return Call(
        "POST",
        _sbx(sandbox_id, "commands"),
        f"run command {cmd!r:.120}",
        sandbox_id,
        _none,
        json=body,
        headers={"Accept": NDJSON},
        accept=frozenset({200}),
    )


def attach_command(sandbox_id: str, pid: int) -> Call[None]:
    return Call(
        "GET",
        _sbx(sandbox_id, "commands", str(pid), "stream"),
        f"connect to pid {pid}",
        sandbox_id,
        _none,
        headers={"Accept": NDJSON},
        accept=frozenset({200}),
    )


def list_commands(sandbox_id: str) -> Call[list[ProcessInfo]]:
    return _json_call(
        "GET",
        _sbx(sandbox_id, "commands"),
        "list commands",
        sandbox_id,
        _list_of(lambda d: parse_process(d, sandbox_id), "processes", sandbox_id),
    )


def send_stdin(sandbox_id: str, pid: int, data: str | bytes, *, eof: bool = False) -> Call[None]:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes | bytearray) else data
    operation = f"close stdin of pid {pid}" if eof else f"send stdin to pid {pid}"
    return Call(
        "POST",
        _sbx(sandbox_id, "commands", str(pid), "stdin"),
        operation,
        sandbox_id,
        _none,
        json={"data": text, "eof": eof},
    )


def signal_command(sandbox_id: str, pid: int, signal: str | int = "SIGKILL") -> Call[bool]:
    """True if the signal was delivered, False if no such process."""
    return Call(
        "POST",
        _sbx(sandbox_id, "commands", str(pid), "signal"),
        f"send {signal} to pid {pid}",
        sandbox_id,
        lambda status, _b: status != 404,
        json={"signal": signal},
        accept=frozenset({200, 204, 404}),
    )


# --- files -----------------------------------------------------------------------------------------


def _files(sandbox_id: str, *rest: str) -> str:
    return _sbx(sandbox_id, "files", *rest)


def read_file(sandbox_id: str, path: str, user: str | None = None) -> Call[bytes]:
    return Call(
        "GET",
        _files(sandbox_id),
        f"read {path!r}",
        sandbox_id,
        lambda _s, body: body,
        params=_params(path=path, user=user),
        accept=frozenset({200}),
    )


def write_file(sandbox_id: str, path: str, user: str | None = None, size: int | None = None) -> Call[EntryInfo]:
    """The body (bytes or a stream of chunks) is supplied by the face; see ``content``.

    ``size``, when known, is sent as Content-Length so the server can refuse an upload too big for
    the sandbox's disk before it is sent; otherwise the body goes chunked.
    """
    headers = {"Content-Type": "application/octet-stream"}
    if size is not None:
        headers["Content-Length"] = str(size)
    return _json_call(
        "PUT",
        _files(sandbox_id),
        f"write {path!r}",
        sandbox_id,
        lambda d: parse_entry(d, sandbox_id),
        params=_params(path=path, user=user),
        headers=headers,
    )


def remove_file(sandbox_id: str, path: str, user: str | None = None) -> Call[None]:
    return Call(
        "DELETE",
        _files(sandbox_id),
        f"remove {path!r}",
        sandbox_id,
        _none,
        params=_params(path=path, user=user),
    )


def list_dir(sandbox_id: str, path: str, depth: int = 1, user: str | None = None) -> Call[list[EntryInfo]]:
    return _json_call(
        "GET",
        _files(sandbox_id, "list"),
        f"list {path!r}",
        sandbox_id,
        _list_of(lambda d: parse_entry(d, sandbox_id), "entries", sandbox_id),
        params=_params(path=path, depth=depth, user=user),
    )


def stat(sandbox_id: str, path: str, user: str | None = None) -> Call[EntryInfo]:
    return _json_call(
        "GET",
        _files(sandbox_id, "stat"),
        f"stat {path!r}",
        sandbox_id,
        lambda d: parse_entry(d, sandbox_id),
        params=_params(path=path, user=user),
    )


def exists(sandbox_id: str, path: str, user: str | None = None) -> Call[bool]:
    return Call(
        "GET",
        _files(sandbox_id, "stat"),
        f"check {path!r}",
        sandbox_id,
        lambda status, _b: status == 200,
        params=_params(path=path, user=user),
        accept=frozenset({200, 404}),
    )


def make_dir(sandbox_id: str, path: str, user: str | None = None) -> Call[bool]:
    def convert(data: Any) -> bool:
        return bool(data.get("created")) if isinstance(data, dict) else bool(data)

    return _json_call(
        "POST",
        _files(sandbox_id, "mkdir"),
        f"make directory {path!r}",
        sandbox_id,
        convert,
        json=_drop_none(path=path, user=user),
    )


def rename(sandbox_id: str, old_path: str, new_path: str, user: str | None = None) -> Call[EntryInfo]:
    return _json_call(
        "POST",
        _files(sandbox_id, "move"),
        f"rename {old_path!r} to {new_path!r}",
        sandbox_id,
        lambda d: parse_entry(d, sandbox_id),
        json=_drop_none(src=old_path, dst=new_path, user=user),
    )


# --- code interpreter ------------------------------------------------------------------------------


def _context_path(sandbox_id: str, context_id: str, *rest: str) -> str:
    return _sbx(sandbox_id, "contexts", quote(context_id, safe=""), *rest)


def run_code(
    sandbox_id: str,
    code: str,
    *,
    language: str | None = None,
    context_id: str | None = None,
    envs: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> Call[None]:
    """Run a cell; the answer is an NDJSON event stream (read by the faces, not parsed here).

    ``timeout`` ``None`` means ``DEFAULT_CODE_TIMEOUT``, ``0`` no limit. Giving both a language and
    a context is refused here, as E2B's SDK does, before anything is sent.
    """
    if language and context_id:
        raise InvalidArgumentException(
            f"{prefix(sandbox_id)}run code: give either language or context, not both",
            sandbox_id=sandbox_id,
        )
    body = {
        "code": code,
        "language": language or None,
        "context_id": context_id or None,
        "envs": dict(envs or {}),
        "timeout": DEFAULT_CODE_TIMEOUT if timeout is None else timeout,
    }
    where = f" in context {context_id!r}" if context_id else f" ({language})" if language else ""
    return Call(
        "POST",
        _sbx(sandbox_id, "code"),
        f"run code{where}",
        sandbox_id,
        _none,
        json=body,
        headers={"Accept": NDJSON},
        accept=frozenset({200}),
    )


def create_context(sandbox_id: str, *, language: str | None = None, cwd: str | None = None) -> Call[Context]:
    return _json_call(
        "POST",
        _sbx(sandbox_id, "contexts"),
        f"create a {language or 'python'} code context",
        sandbox_id,
        lambda d: parse_context(d, sandbox_id),
        json=_drop_none(language=language, cwd=cwd),
    )


def list_contexts(sandbox_id: str) -> Call[list[Context]]:
    return _json_call(
        "GET",
        _sbx(sandbox_id, "contexts"),
        "list code contexts",
        sandbox_id,
        _list_of(lambda d: parse_context(d, sandbox_id), "contexts", sandbox_id),
    )


def restart_context(sandbox_id: str, context_id: str) -> Call[None]:
    return Call(
        "POST", _context_path(sandbox_id, context_id, "restart"), f"restart context {context_id!r}", sandbox_id, _none
    )


def remove_context(sandbox_id: str, context_id: str) -> Call[None]:
    return Call("DELETE", _context_path(sandbox_id, context_id), f"remove context {context_id!r}", sandbox_id, _none)


# --- templates and builds -------------------------------------------------------------------------


def _template(name: str) -> str:
    return f"/v1/templates/{quote(name, safe='')}"


def _build(build_id: str, *rest: str) -> str:
    return "/".join((f"/v1/builds/{quote(build_id, safe='')}", *rest))


def build_options(
    name: str,
    dockerfile: str,
    *,
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
) -> dict[str, Any]:
    """The JSON options of ``POST /v1/templates`` (unset ones take the server's defaults)."""
    return _drop_none(
        name=name,
        dockerfile=dockerfile,
        build_args=dict(build_args or {}),
        cpu=cpu,
        memory_mb=memory_mb,
        disk_mb=disk_mb,
        no_cache=no_cache,
        timeout=timeout,
        start_cmd=start_cmd,
        ready_cmd=ready_cmd,
        ready_port=ready_port,
        public=public,
        isolation=isolation,
    )


def start_build(options: Mapping[str, Any], upload: tuple[str, int] | None = None) -> Call[BuildInfo]:
    """Submit a build; with ``upload`` (content type, size) the face sends that multipart body, else JSON."""
    headers = {"Content-Type": upload[0], "Content-Length": str(upload[1])} if upload else {}
    return _json_call(
        "POST",
        "/v1/templates",
        f"build template {options['name']!r}",
        None,
        parse_build,
        json=None if upload else dict(options),
        headers=headers,
        accept=frozenset({200, 201, 202}),
    )


def get_build(build_id: str) -> Call[BuildInfo]:
    return _json_call("GET", _build(build_id), f"get build {build_id}", None, parse_build)


def build_logs(build_id: str, follow: bool = True) -> Call[None]:
    """A build's log; the answer is an NDJSON event stream (read by the faces, not parsed here)."""
    return Call(
        "GET",
        _build(build_id, "logs"),
        f"read the log of build {build_id}",
        None,
        _none,
        params=(("follow", "true" if follow else "false"),),
        headers={"Accept": NDJSON},
        accept=frozenset({200}),
    )


def list_templates() -> Call[list[TemplateInfo]]:
    return _json_call("GET", "/v1/templates", "list templates", None, _list_of(parse_template, "templates", None))


def get_template(name: str) -> Call[TemplateInfo]:
    return _json_call("GET", _template(name), f"get template {name!r}", None, parse_template)


def delete_template(name: str) -> Call[None]:
    return Call("DELETE", _template(name), f"delete template {name!r}", None, _none)


# --- API keys (admin) ------------------------------------------------------------------------------


def create_key(name: str) -> Call[KeyInfo]:
    return _json_call("POST", "/v1/keys", f"create API key {name!r}", None, parse_key, json={"name": name})


def list_keys() -> Call[list[KeyInfo]]:
    return _json_call("GET", "/v1/keys", "list API keys", None, _list_of(parse_key, "API keys", None))


def revoke_key(key_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/keys/{quote(key_id, safe='')}", f"revoke API key {key_id!r}", None, _none)
