"""The public face of the SDK is pinned: adding or removing a name is a deliberate change here."""

import inspect
import subprocess
import sys
import typing

import corral
import corral.sdk

PUBLIC = [
    "AsyncCommandHandle",
    "AsyncSandbox",
    "AsyncTemplate",
    "AuthenticationException",
    "BuildEvent",
    "BuildException",
    "BuildInfo",
    "BuildStep",
    "CommandExitException",
    "CommandHandle",
    "CommandResult",
    "ConflictException",
    "Context",
    "EntryInfo",
    "Execution",
    "ExecutionError",
    "FileType",
    "InvalidArgumentException",
    "Logs",
    "NetworkInfo",
    "NotEnoughSpaceException",
    "NotFoundException",
    "OutputMessage",
    "ProcessInfo",
    "RateLimitException",
    "Result",
    "Sandbox",
    "SandboxException",
    "SandboxInfo",
    "SandboxMetrics",
    "ServerException",
    "Template",
    "TemplateConfig",
    "TemplateInfo",
    "TimeoutException",
    "WriteEntry",
]


def test_all_is_pinned() -> None:
    assert corral.__all__ == PUBLIC
    assert corral.sdk.__all__ == PUBLIC


def test_every_public_name_resolves_from_both_homes() -> None:
    for name in PUBLIC:
        assert getattr(corral, name) is getattr(corral.sdk, name)
        if issubclass(getattr(corral, name), BaseException):
            assert getattr(corral, name).__module__ == "corral", name


def test_type_hints_of_public_classes_resolve() -> None:
    # e.g. pydantic.TypeAdapter(SandboxInfo) needs this
    for name in PUBLIC:
        typing.get_type_hints(getattr(corral, name))


def test_public_module_names_exclude_private_modules() -> None:
    public_attrs = {n for n in dir(corral.sdk) if not n.startswith("_")}
    assert public_attrs == set(PUBLIC)


def test_unknown_attribute_raises_attribute_error() -> None:
    try:
        corral.DoesNotExist  # noqa: B018
    except AttributeError as exc:
        assert "DoesNotExist" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_importing_corral_does_not_import_httpx() -> None:
    # corral.agent runs inside sandboxes with the standard library only.
    code = "import sys, corral; assert 'httpx' not in sys.modules, 'httpx imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_exception_derives_from_sandbox_exception() -> None:
    for name in PUBLIC:
        value = getattr(corral, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert issubclass(value, corral.SandboxException), name


def _public_callables(cls: type) -> list[tuple[str, object]]:
    out = []
    for name, _ in inspect.getmembers(cls):
        if name.startswith("_"):
            continue
        out.append((name, inspect.getattr_static(cls, name)))
    return out


def test_no_httpx_type_in_public_signatures() -> None:
    classes = [corral.Sandbox, corral.AsyncSandbox, corral.CommandHandle, corral.AsyncCommandHandle,
               corral.Template, corral.AsyncTemplate]
    from corral.sdk._commands import AsyncCommands, Commands
    from corral.sdk._files import AsyncFilesystem, Filesystem

    classes += [Commands, AsyncCommands, Filesystem, AsyncFilesystem]
    for cls in classes:
        for name, member in inspect.getmembers(cls):
            if name.startswith("_") or not callable(member):
                continue
            assert "httpx" not in str(inspect.signature(member)), f"{cls.__name__}.{name}"
