"""Sandbox traffic is recognised by E2B's headers or by a {port}-{id}.{domain} Host."""

from __future__ import annotations

from corral.api.routing import port_path, sandbox_target


def h(**headers: str) -> list[tuple[bytes, bytes]]:
    return [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]


def test_headers_route_to_a_sandbox_port() -> None:
    assert sandbox_target(h(E2b_Sandbox_Id="abc123", E2b_Sandbox_Port="49983"), None) == ("abc123", 49983)
    assert sandbox_target(h(e2b_sandbox_id="abc", e2b_sandbox_port="nope"), None) == ("abc", -1)


def test_control_plane_requests_are_not_sandbox_traffic() -> None:
    assert sandbox_target(h(host="localhost:3000", x_api_key="k"), None) is None
    assert sandbox_target(h(E2b_Sandbox_Id="only-id"), None) is None


def test_host_names_route_only_under_the_configured_domain() -> None:
    assert sandbox_target(h(host="49999-abc123.sbx.example.com"), "sbx.example.com") == ("abc123", 49999)
    assert sandbox_target(h(host="49999-abc123.sbx.example.com:443"), "sbx.example.com") == ("abc123", 49999)
    assert sandbox_target(h(host="49999-abc123.sbx.example.com"), None) is None
    assert sandbox_target(h(host="49999-abc123.evil.com"), "sbx.example.com") is None
    assert sandbox_target(h(host="api.sbx.example.com"), "sbx.example.com") is None
    assert sandbox_target(h(host="x-abc.sbx.example.com"), "sbx.example.com") is None


def test_port_paths_name_the_sandbox_port_and_the_path_inside() -> None:
    assert port_path("/v1/sandboxes/abc123/ports/8000") == ("abc123", 8000, "/")
    assert port_path("/v1/sandboxes/abc123/ports/8000/a/b") == ("abc123", 8000, "/a/b")
    assert port_path("/v1/sandboxes/abc123/ports/x/a") is None
    assert port_path("/v1/sandboxes/abc123/network") is None
    assert port_path("/v1/sandboxes/ABC/ports/80/") is None
