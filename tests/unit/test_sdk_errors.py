"""Status → exception mapping; every message names the sandbox and carries the server's message."""

import pickle

import httpx
import pytest

from corral import (
    AuthenticationException,
    CommandExitException,
    ConflictException,
    InvalidArgumentException,
    NotEnoughSpaceException,
    NotFoundException,
    RateLimitException,
    SandboxException,
    ServerException,
    TimeoutException,
)
from corral.sdk._errors import error_for_status, mapped_transport_errors


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, InvalidArgumentException),
        (401, AuthenticationException),
        (403, AuthenticationException),
        (404, NotFoundException),
        (409, ConflictException),
        (413, NotEnoughSpaceException),
        (422, InvalidArgumentException),
        (429, RateLimitException),
        (500, ServerException),
        (503, ServerException),
        (504, TimeoutException),
        (507, NotEnoughSpaceException),
        (418, SandboxException),
    ],
)
def test_status_maps_to_exception(status: int, cls: type[SandboxException]) -> None:
    exc = error_for_status(status, b'{"code": 1, "message": "boom"}', sandbox_id="sbx_9", operation="get info")
    assert type(exc) is cls
    assert str(exc) == f"sandbox sbx_9: get info: boom (HTTP {status})"
    assert exc.sandbox_id == "sbx_9" and exc.status == status


def test_message_without_sandbox_and_odd_bodies() -> None:
    exc = error_for_status(401, b"", sandbox_id=None, operation="list sandboxes")
    assert str(exc) == "list sandboxes: HTTP 401 with an empty body (HTTP 401)"
    exc = error_for_status(502, b"Bad gateway\n", sandbox_id="s", operation="kill")
    assert isinstance(exc, ServerException) and "Bad gateway" in str(exc)
    # FastAPI's default validation body is {"detail": [...]}: keep it readable
    exc = error_for_status(422, b'{"detail": [{"loc": ["body", "timeout"]}]}', sandbox_id="s", operation="x")
    assert isinstance(exc, InvalidArgumentException) and "timeout" in str(exc)
    long = error_for_status(500, b"x" * 1000, sandbox_id="s", operation="x")
    assert len(str(long)) < 400


def test_transport_errors_are_mapped_with_the_url() -> None:
    request = httpx.Request("GET", "http://h/")
    with (
        pytest.raises(ServerException, match=r"sandbox s: kill: cannot talk to the Corral server at http://h") as ei,
        mapped_transport_errors("http://h", sandbox_id="s", operation="kill"),
    ):
        raise httpx.ConnectError("refused", request=request)
    assert isinstance(ei.value.__cause__, httpx.ConnectError)
    with (
        pytest.raises(TimeoutException, match=r"sandbox s: kill: no answer from http://h in time"),
        mapped_transport_errors("http://h", sandbox_id="s", operation="kill"),
    ):
        raise httpx.ReadTimeout("slow", request=request)


def test_exceptions_pickle_with_their_attributes() -> None:
    exc = CommandExitException("m", sandbox_id="s", exit_code=2, stdout="o", stderr="e", error=None)
    copy = pickle.loads(pickle.dumps(exc))
    assert (type(copy), str(copy), copy.exit_code, copy.stdout, copy.sandbox_id) == (
        CommandExitException,
        "m",
        2,
        "o",
        "s",
    )
    nf = pickle.loads(pickle.dumps(NotFoundException("gone", sandbox_id="s", status=404)))
    assert nf.status == 404 and nf.sandbox_id == "s"
