"""Sync and async faces have the same public methods and signatures (modulo async)."""

import inspect
from typing import Any

import pytest

from corral import AsyncCommandHandle, AsyncSandbox, AsyncTemplate, CommandHandle, Sandbox, Template
from corral.sdk._code import AsyncCodeInterpreter, CodeInterpreter
from corral.sdk._commands import AsyncCommands, Commands
from corral.sdk._core import dualmethod
from corral.sdk._files import AsyncFilesystem, Filesystem

PAIRS = [
    (Sandbox, AsyncSandbox),
    (CodeInterpreter, AsyncCodeInterpreter),
    (Commands, AsyncCommands),
    (Filesystem, AsyncFilesystem),
    (CommandHandle, AsyncCommandHandle),
    (Template, AsyncTemplate),
]
# dunder protocols that differ by design between the faces
SYNC_ONLY = {"__enter__", "__exit__", "__iter__"}
ASYNC_ONLY = {"__aenter__", "__aexit__", "__aiter__"}


def _public(cls: type) -> set[str]:
    names = {n for n in dir(cls) if not n.startswith("_")}
    return names | {n for n in SYNC_ONLY | ASYNC_ONLY if n in vars(cls)}


def _shape(fn: Any) -> list[tuple[str, Any, Any]]:
    """Parameter names, kinds and defaults; annotations differ (sync vs async callbacks/iterators)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def _bound_instance(cls: type) -> Any:
    return object.__new__(cls)


@pytest.mark.parametrize(("sync", "asyn"), PAIRS, ids=lambda c: c.__name__)
def test_same_public_names(sync: type, asyn: type) -> None:
    assert _public(sync) - SYNC_ONLY == _public(asyn) - ASYNC_ONLY
    assert {n.replace("__", "__a", 1) for n in _public(sync) & SYNC_ONLY} == _public(asyn) & ASYNC_ONLY


@pytest.mark.parametrize(("sync", "asyn"), PAIRS, ids=lambda c: c.__name__)
def test_same_signatures_and_async_where_expected(sync: type, asyn: type) -> None:
    for name in sorted(_public(sync) - SYNC_ONLY):
        s_static, a_static = inspect.getattr_static(sync, name), inspect.getattr_static(asyn, name)
        if isinstance(s_static, property):
            assert isinstance(a_static, property), name
            continue
        variants = [(getattr(sync, name), getattr(asyn, name))]
        if isinstance(s_static, dualmethod):
            assert isinstance(a_static, dualmethod), name
            variants.append((getattr(_bound_instance(sync), name), getattr(_bound_instance(asyn), name)))
        for s_fn, a_fn in variants:
            assert _shape(s_fn) == _shape(a_fn), f"{sync.__name__}.{name}"
            assert not inspect.iscoroutinefunction(s_fn), f"{sync.__name__}.{name} must not be async"
            assert inspect.iscoroutinefunction(a_fn), f"{asyn.__name__}.{name} must be async"


def test_docstrings_on_every_public_method() -> None:
    for sync, asyn in PAIRS:
        for cls in (sync, asyn):
            for name in _public(cls) - SYNC_ONLY - ASYNC_ONLY:
                static = inspect.getattr_static(cls, name)
                docs = [static.__doc__] if isinstance(static, property) else [inspect.getdoc(getattr(cls, name))]
                if isinstance(static, dualmethod):
                    docs.append(inspect.getdoc(getattr(_bound_instance(cls), name)))
                assert all(docs), f"{cls.__name__}.{name}"


def test_dualmethod_dispatches_on_instance_or_class() -> None:
    class Thing:
        def __init__(self, ident: str) -> None:
            self.ident = ident

        @dualmethod
        def kill(self, request_timeout: float | None = None) -> str:
            return f"instance {self.ident} {request_timeout}"

        @kill.classvariant
        def kill(cls, ident: str) -> str:
            return f"class {cls.__name__} {ident}"

    assert Thing("a").kill(3) == "instance a 3"
    assert Thing.kill("b") == "class Thing b"
    assert list(inspect.signature(Thing.kill).parameters) == ["ident"]
    assert list(inspect.signature(Thing("a").kill).parameters) == ["request_timeout"]


def test_e2b_spellings_exist() -> None:
    for name in ("create", "connect", "list", "kill", "set_timeout", "get_info", "get_metrics", "is_running"):
        assert hasattr(Sandbox, name)
    for name in (
        "run_code",
        "create_code_context",
        "list_code_contexts",
        "restart_code_context",
        "remove_code_context",
    ):
        assert hasattr(Sandbox, name) and hasattr(AsyncSandbox, name)
    for name in ("run", "list", "kill", "send_stdin", "connect"):
        assert hasattr(Commands, name)
    for name in ("read", "write", "write_files", "list", "exists", "get_info", "make_dir", "remove", "rename"):
        assert hasattr(Filesystem, name)
    for name in ("pid", "wait", "kill", "disconnect"):
        assert hasattr(CommandHandle, name)


def test_run_code_has_e2b_code_interpreter_parameters() -> None:
    # the order and defaults of e2b_code_interpreter's Sandbox.run_code/create_code_context
    assert [(p.name, p.default) for p in inspect.signature(Sandbox.run_code).parameters.values()][1:] == [
        ("code", inspect.Parameter.empty),
        ("language", None),
        ("context", None),
        ("on_stdout", None),
        ("on_stderr", None),
        ("on_result", None),
        ("on_error", None),
        ("envs", None),
        ("timeout", None),
        ("request_timeout", None),
    ]
    assert list(inspect.signature(Sandbox.create_code_context).parameters)[1:] == ["cwd", "language", "request_timeout"]
