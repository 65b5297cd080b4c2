"""The web view as its users run it (``celery -A app reliable web`` in a process of its
own), an HTTP client that keeps its cookies, and a headless Chromium driven by Selenium."""

from __future__ import annotations

import base64
import contextlib
import http.cookiejar
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.servers import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
#: Where the browser tests leave their screenshots (docs/web.md shows copies).
SCREENSHOTS = Path(os.environ.get("WEB_SCREENSHOTS", ROOT / ".cache" / "web-screenshots"))


def web_env(redis_url: str, folder: Path) -> dict[str, str]:
    """The environment ``tests.support.apps.web`` reads: a Redis database of its own,
    a SQLite store in ``folder``, no credentials."""
    from tests.support.celery_apps import new_redis_db

    return {
        "RELIABLE_TEST_BROKER": new_redis_db(redis_url),
        "RELIABLE_TEST_STORE": f"sqlite:///{folder}/store.sqlite3",
        "WEB_TEST_AUTH": "",
        "WEB_TEST_READ_ONLY_AUTH": "",
    }


@dataclass
class WebServer:
    url: str
    proc: subprocess.Popen[bytes]


@contextlib.contextmanager
def web_server(
    app: str,
    env: dict[str, str],
    host: str = "127.0.0.1",
    port: int | None = None,
    cwd: Path = ROOT,
    *,
    python: str = sys.executable,
) -> Iterator[WebServer]:
    """``celery -A app reliable web --host HOST --port PORT``, until the block ends."""
    port = port or free_port()
    proc = subprocess.Popen(
        [
            python,
            "-m",
            "celery",
            "-A",
            app,
            "reliable",
            "web",
            "--host",
            host,
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, 30, proc, "celery reliable web")
        yield WebServer(f"http://127.0.0.1:{port}", proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Answer:
    status: int
    headers: Any
    text: str


class Client:
    """urllib with a cookie jar, no redirect following (a test sees the 303), and
    optional basic credentials."""

    def __init__(self, base: str, auth: tuple[str, str] | None = None) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.auth = auth
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect()
        )

    def request(
        self,
        method: str,
        path: str,
        form: dict[str, Any] | list[tuple[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> Answer:
        data = urllib.parse.urlencode(form, doseq=True).encode() if form is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        credentials = auth or self.auth
        if credentials:
            token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with self.opener.open(request, timeout=30) as response:
                return Answer(response.status, response.headers, response.read().decode())
        except urllib.error.HTTPError as error:
            return Answer(error.code, error.headers, error.read().decode())

    def get(self, path: str, **kwargs: Any) -> Answer:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, form: Any, **kwargs: Any) -> Answer:
        return self.request("POST", path, form=form, **kwargs)

    def csrf(self) -> str:
        for cookie in self.jar:
            if cookie.name == "reliable_csrf":
                return str(cookie.value)
        raise AssertionError("no CSRF cookie: GET a page first")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def form_token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def chromium() -> Any:
    """Debian's headless Chromium under Selenium, with its own empty profile and no
    background traffic (this machine's network is closed)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        if not Path(path).exists():
            raise RuntimeError(f"{path} is missing: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1366,900",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def screenshot(driver: Any, name: str, folder: Path = SCREENSHOTS, max_height: int = 2400) -> Path:
    """The page at laptop width (1366 px), as a PNG under ``folder``: all of it, up to
    ``max_height`` pixels. Taken through the DevTools protocol, beyond the viewport:
    resizing the window instead left chromedriver clicking nodes of a stale layout."""
    folder.mkdir(parents=True, exist_ok=True)
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": 1366, "height": min(size["height"], max_height), "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path = folder / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return path
