"""The web view's guard: credentials, roles, loopback-only without credentials, the CSRF
check and the headers, on the ASGI app itself (a hand-built request, no network)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import ImproperlyConfigured
from starlette.datastructures import Headers

from celery_reliable.config import ReliableSettings
from celery_reliable.web.security import (
    ACT,
    LOOK,
    Credentials,
    Guard,
    csrf_matches,
    is_loopback,
    refuse_to_bind,
    same_origin,
)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


CREDENTIALS = Credentials(act=(("admin", "a:b"),), look=(("viewer", "v"),))


@pytest.mark.parametrize(
    ("header", "role"),
    [
        (basic("admin", "a:b"), ACT),
        (basic("viewer", "v"), LOOK),
        (basic("admin", "v"), None),
        (basic("viewer", "a:b"), None),
        (basic("admin", "a:b "), None),
        ("Basic !!!", None),
        ("Bearer x", None),
        ("", None),
        (None, None),
        ("basic " + base64.b64encode(b"admin:a:b").decode(), ACT),
        ("Basic " + base64.b64encode("ü:x".encode("latin-1")).decode(), None),
    ],
)
def test_role_of_an_authorization_header(header: str | None, role: str | None) -> None:
    assert CREDENTIALS.role_of(header) == role


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("::", False),
        ("example.com", False),
        (None, False),
    ],
)
def test_loopback_addresses(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_binding_elsewhere_needs_credentials() -> None:
    assert refuse_to_bind("127.0.0.1", Credentials()) is None
    assert refuse_to_bind("0.0.0.0", CREDENTIALS) is None
    assert refuse_to_bind("0.0.0.0", Credentials(look=(("v", "v"),))) is None
    message = refuse_to_bind("0.0.0.0", Credentials())
    assert message is not None and "\n" not in message and "reliable_web_auth" in message


def test_csrf_and_origin_checks() -> None:
    token = "t" * 43
    assert csrf_matches(token, token)
    assert not csrf_matches(token, "u" * 43)
    assert not csrf_matches(None, token)
    assert not csrf_matches(token, None)
    assert not csrf_matches("short", "short")
    assert same_origin(Headers({"host": "127.0.0.1:5580"}))
    assert same_origin(Headers({"host": "127.0.0.1:5580", "origin": "http://127.0.0.1:5580"}))
    assert not same_origin(Headers({"host": "127.0.0.1:5580", "origin": "http://evil.example"}))
    assert not same_origin(Headers({"host": "127.0.0.1:5580", "origin": "null"}))


def call(
    app: Any, client: tuple[str, int] | None, headers: list[tuple[bytes, bytes]]
) -> dict[str, Any]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    if not any(name == b"host" for name, _ in headers):
        headers = [(b"host", b"127.0.0.1:5580"), *headers]
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "root_path": "",
        "headers": headers,
        "client": client,
        "query_string": b"",
        "scheme": "http",
        "server": ("x", 80),
    }
    asyncio.run(app(scope, receive, send))
    start = sent[0]
    return {
        "status": start["status"],
        "headers": dict(start["headers"]),
        "body": b"".join(m.get("body", b"") for m in sent[1:]),
    }


async def reached(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": scope["state"]["role"].encode()})


def test_without_credentials_only_loopback_clients_are_served() -> None:
    guard = Guard(reached, Credentials())
    assert call(guard, ("127.0.0.1", 5000), [])["body"] == b"act"
    assert call(guard, ("::1", 5000), [])["status"] == 200
    for client in [("10.1.2.3", 5000), ("0.0.0.0", 1), None]:
        refused = call(guard, client, [])
        assert refused["status"] == 403
        assert b"loopback" in refused["body"]
        assert refused["headers"][b"x-frame-options"] == b"DENY"


def test_without_credentials_the_host_must_be_a_loopback_name() -> None:
    guard = Guard(reached, Credentials())
    for host in (b"localhost", b"localhost:80", b"127.0.0.1:5580", b"[::1]:5580", b"[::1]"):
        assert call(guard, ("127.0.0.1", 1), [(b"host", host)])["status"] == 200, host
    for host in (b"rebind.example:5580", b"", b"[::1", b"10.0.0.1"):
        refused = call(guard, ("127.0.0.1", 1), [(b"host", host)])
        assert refused["status"] == 403, host
        assert b"Host header" in refused["body"]


def test_an_error_no_page_handled_is_a_500_with_the_headers() -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("a bug")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 1),
    }
    with pytest.raises(RuntimeError):
        asyncio.run(Guard(broken, Credentials())(scope, receive, send))
    assert sent[0]["status"] == 500
    assert (b"x-frame-options", b"DENY") in sent[0]["headers"]


def test_websockets_are_refused() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    asyncio.run(Guard(reached, Credentials())({"type": "websocket"}, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1008}]


def test_with_credentials_every_client_needs_them() -> None:
    guard = Guard(reached, CREDENTIALS)
    refused = call(guard, ("127.0.0.1", 5000), [])
    assert refused["status"] == 401 and b"www-authenticate" in refused["headers"]
    viewer = call(guard, ("10.1.2.3", 5000), [(b"authorization", basic("viewer", "v").encode())])
    assert viewer["body"] == b"look"
    admin = call(guard, ("10.1.2.3", 5000), [(b"authorization", basic("admin", "a:b").encode())])
    assert admin["body"] == b"act"
    assert admin["headers"][b"content-security-policy"].startswith(b"default-src 'none'")
    assert admin["headers"][b"set-cookie"].startswith(b"reliable_csrf=")


@pytest.mark.parametrize(
    ("value", "pairs"),
    [
        (None, ()),
        ("", ()),
        ("admin:pw", (("admin", "pw"),)),
        ("admin:p:w", (("admin", "p:w"),)),
        (["a:1", "b:2"], (("a", "1"), ("b", "2"))),
    ],
)
def test_web_auth_settings(value: Any, pairs: Any) -> None:
    settings = ReliableSettings.from_mapping({"reliable_web_auth": value})
    assert settings.web_auth == pairs


@pytest.mark.parametrize("value", ["admin", ":pw", "admin:", ["ok:1", "bad"], 42, [42]])
def test_malformed_web_auth_is_one_line_without_the_secret(value: Any) -> None:
    with pytest.raises(ImproperlyConfigured) as raised:
        ReliableSettings.from_mapping({"reliable_web_auth": value})
    assert "reliable_web_auth" in str(raised.value) and "\n" not in str(raised.value)
    assert "pw" not in str(raised.value)


def test_an_unknown_app_setting_near_web_auth_is_named() -> None:
    app = Celery("t", set_as_current=False)
    app.conf.reliable_web_auht = "a:b"
    from celery_reliable.config import settings_for

    with pytest.raises(ImproperlyConfigured, match="reliable_web_auth"):
        settings_for(app)
