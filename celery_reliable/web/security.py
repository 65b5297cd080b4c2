"""Who may see and act in the web view: basic auth or loopback only, roles, CSRF tokens
and the security headers of every response.

One ASGI middleware (:class:`Guard`) runs before any page. With credentials
(``reliable_web_auth``, ``reliable_web_read_only_auth``) every request needs them, the
static files included. Without any, only loopback clients are served: a mounted view
stays private even when the host application listens on every address.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Roles: who may act (retry, purge, release), who may only look.
ACT = "act"
LOOK = "look"

CSRF_COOKIE = "reliable_csrf"
CSRF_FIELD = "csrf_token"

#: Every page is server-rendered from this package's own files: nothing from elsewhere
#: is loaded, no inline script or style runs.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
        b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


@dataclass(frozen=True)
class Credentials:
    """The ``(user, password)`` pairs that may act, and those that may only look."""

    act: tuple[tuple[str, str], ...] = ()
    look: tuple[tuple[str, str], ...] = ()

    @property
    def required(self) -> bool:
        return bool(self.act or self.look)

    def role_of(self, authorization: str | None) -> str | None:
        """The role an ``Authorization: Basic ...`` header grants, or None."""
        if not authorization or authorization[:6].lower() != "basic ":
            return None
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, _, password = decoded.partition(":")
        # Every pair is compared, matched or not: the time taken says nothing of which.
        role = None
        if _any_matches(self.look, user, password):
            role = LOOK
        if _any_matches(self.act, user, password):
            role = ACT
        return role


def basic_user(authorization: str | None) -> str | None:
    """The user name of an ``Authorization: Basic ...`` header (the guard checked its
    password already), or None."""
    if not authorization or authorization[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0] or None


def _any_matches(pairs: Iterable[tuple[str, str]], user: str, password: str) -> bool:
    found = False
    for known_user, known_password in pairs:
        same_user = hmac.compare_digest(known_user.encode(), user.encode())
        same_password = hmac.compare_digest(known_password.encode(), password.encode())
        found |= same_user & same_password
    return found


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; False for anything else."""
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def refuse_to_bind(host: str, credentials: Credentials) -> str | None:
    """Why ``reliable web --host HOST`` must not start, in one line, or None."""
    if credentials.required or is_loopback(host):
        return None
    return (
        f"refusing to serve the web view on {host}: without credentials it binds only to a "
        "loopback address (127.0.0.1, ::1); set reliable_web_auth = 'user:password' to "
        "serve it on other addresses"
    )


class Guard:
    """Authenticates every request, refuses non-loopback clients when there are no
    credentials, hands each page its role and CSRF token (``request.state``), and adds
    the security headers and the CSRF cookie to every response."""

    def __init__(self, app: ASGIApp, credentials: Credentials) -> None:
        self.app = app
        self.credentials = credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            # No page speaks websocket: refuse rather than pass one by unguarded.
            await send({"type": "websocket.close", "code": 1008})
            return
        headers = Headers(scope=scope)
        role, refusal = self._role(scope, headers)
        if refusal is not None:
            await refusal(scope, receive, _with_headers(send, ()))
            return
        name = csrf_cookie_name(scope)
        token = _cookie(headers, name)
        extra: tuple[tuple[bytes, bytes], ...] = ()
        if token is None or len(token) != 43:
            token = secrets.token_urlsafe(32)
            extra = ((b"set-cookie", _csrf_cookie(name, token, scope)),)
        state = scope.setdefault("state", {})
        state["role"] = role
        state["csrf_token"] = token
        started = False
        sending = _with_headers(send, extra)

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await sending(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception:
            # An error no page handled: a plain 500 that still carries the headers
            # (the traceback goes to the server's log, not to the browser).
            if not started:
                await PlainTextResponse("internal error\n", status_code=500)(
                    scope, receive, sending
                )
            raise

    def _role(self, scope: Scope, headers: Headers) -> tuple[str, PlainTextResponse | None]:
        if self.credentials.required:
            role = self.credentials.role_of(headers.get("authorization"))
            if role is not None:
                return role, None
            return LOOK, PlainTextResponse(
                "credentials required (reliable_web_auth)\n",
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="celery_reliable", charset="UTF-8"'},
            )
        client = scope.get("client")
        if is_loopback(client[0] if client else None):
            if is_loopback(_host_name(headers.get("host", ""))):
                return ACT, None
            # A loopback client asking for another name: a page whose DNS now points
            # here (DNS rebinding) would be same-origin with the view.
            return LOOK, PlainTextResponse(
                "without credentials the web view answers only to localhost, 127.0.0.1 or "
                "[::1] in the Host header: set reliable_web_auth = 'user:password'\n",
                status_code=403,
            )
        return LOOK, PlainTextResponse(
            "the web view serves only loopback clients without credentials: set "
            "reliable_web_auth = 'user:password'\n",
            status_code=403,
        )


def _with_headers(send: Send, extra: tuple[tuple[bytes, bytes], ...]) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            present = {name.lower() for name, _ in headers}
            headers += [item for item in SECURITY_HEADERS if item[0] not in present]
            if b"cache-control" not in present:
                headers.append((b"cache-control", b"no-store"))
            headers += list(extra)
            message = {**message, "headers": headers}
        await send(message)

    return sending


def _host_name(host: str) -> str:
    """The name of a ``Host`` header, without its port (``[::1]:80`` -> ``::1``)."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else ""
    return host.rsplit(":", 1)[0]


def csrf_cookie_name(scope: Scope) -> str:
    """One cookie per mount point: two views on one host (served alone, and mounted
    under a prefix) keep their tokens apart."""
    root = str(scope.get("root_path") or "")
    if not root:
        return CSRF_COOKIE
    return f"{CSRF_COOKIE}_{hashlib.sha256(root.encode()).hexdigest()[:8]}"


def _cookie(headers: Headers, name: str) -> str | None:
    for header in headers.getlist("cookie"):
        for part in header.split(";"):
            key, _, value = part.strip().partition("=")
            if key == name and value:
                return value
    return None


def _csrf_cookie(name: str, token: str, scope: Scope) -> bytes:
    path = scope.get("root_path") or "/"
    secure = "; Secure" if scope.get("scheme") == "https" else ""
    return f"{name}={token}; Path={path}; HttpOnly; SameSite=Strict{secure}".encode()


def csrf_matches(form_token: Any, cookie_token: str | None) -> bool:
    """The double-submit check: the form's token is the cookie's (which another site
    can neither read nor set), as the guard read it for this request."""
    if not isinstance(form_token, str) or not cookie_token or len(form_token) != 43:
        return False
    return hmac.compare_digest(form_token.encode(), cookie_token.encode())


def same_origin(headers: Headers) -> bool:
    """A POST's ``Origin`` (when the browser sends one) names this host."""
    origin = headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = headers.get("host", "")
    return origin.split("://", 1)[-1].rstrip("/") == host
