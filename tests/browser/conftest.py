"""Browser fixtures: Debian's headless Chromium driven by Playwright for
Python, against real server processes on loopback.

The browser is never downloaded: Playwright launches the ``chromium`` on
the PATH (``apt-get install chromium``; ``.ci/run`` installs it).  Without
it (or without the ``playwright`` package) the tests fail in CI (``CI`` set)
and are skipped, with the reason, elsewhere.

Every page records its console; a test fails if the page logged an error
or threw, except the ones the test says it provokes (:meth:`ConsoleLog.allow`).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from tests.integration.conftest import dsn, postgres  # noqa: F401  (one PostgreSQL for these tests)
from tests.servers import REPO, ServerProcess

#: Flags that let Debian's chromium run headless as root on a machine without
#: network: no sandbox, no GPU, and none of the background connections it
#: would otherwise try (and fail) at every start.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
#: Where the tests leave screenshots of every view (build/ is ignored by git);
#: EVENTBUS_SCREENSHOTS names another folder.
SCREENSHOTS = Path(os.environ.get("EVENTBUS_SCREENSHOTS") or REPO / "build" / "console-screenshots")
#: How long a test waits for the page to show something before it fails
#: (a bound for a broken page, not a speed requirement).
WAIT_MS = 10_000


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium")
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "the playwright package is not installed (pip install '.[test]')"
    if problem is None and chromium is None:
        problem = "no chromium on the PATH (apt-get install chromium)"
    if problem is not None:
        if in_ci():
            pytest.fail(f"browser tests cannot run in CI: {problem}", pytrace=False)
        pytest.skip(problem)
    playwright = sync_playwright().start()
    try:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()
    finally:
        playwright.stop()


@dataclass
class ConsoleLog:
    """What a page logged: its console messages and uncaught errors."""

    messages: list[tuple[str, str, str]] = field(default_factory=list)  # (type, text, url)
    page_errors: list[str] = field(default_factory=list)
    allowed: list[tuple[re.Pattern[str], re.Pattern[str]]] = field(default_factory=list)

    def allow(self, text: str, url: str = "") -> None:
        """An error the test provokes on purpose (matched on the message and its URL)."""
        self.allowed.append((re.compile(text), re.compile(url)))

    def errors(self) -> list[str]:
        found = [
            f"{text} ({url})" for kind, text, url in self.messages
            if kind == "error" and not any(t.search(text) and u.search(url) for t, u in self.allowed)
        ]
        return found + [f"uncaught: {e}" for e in self.page_errors]


class Browsing:
    """A browser context (its own sessionStorage) and its pages' logs."""

    def __init__(self, browser: Any) -> None:
        self.browser = browser
        self.contexts: list[Any] = []
        self.log = ConsoleLog()

    def page(self, viewport: Optional[dict[str, int]] = None, color_scheme: str = "light") -> Any:
        context = self.browser.new_context(
            viewport=viewport or DESKTOP, color_scheme=color_scheme, locale="en-US", timezone_id="UTC",
        )
        self.contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.on("console", lambda m: self.log.messages.append((m.type, m.text, m.location.get("url", ""))))
        page.on("pageerror", lambda e: self.log.page_errors.append(str(e)))
        return page

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def browsing(browser: Any) -> Iterator[Browsing]:
    b = Browsing(browser)
    yield b
    b.close()
    errors = b.log.errors()
    assert not errors, f"the browser logged errors: {errors}"


@pytest.fixture
def page(browsing: Browsing) -> Any:
    """A page at 1280×800 in light mode."""
    return browsing.page()


# -- the API, from the test's side (plain blocking HTTP: these tests have no reactor) ------
@dataclass
class Answer:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(method: str, url: str, body: Any = None, headers: Optional[dict[str, str]] = None,
         token: Optional[str] = None) -> Answer:
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Answer(response.status, response.headers, response.read())
    except urllib.error.HTTPError as e:
        return Answer(e.code, e.headers, e.read())


class Bus:
    """A server process and calls on its API."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server

    @property
    def base(self) -> str:
        return self.server.base

    def ui(self, fragment: str = "") -> str:
        return f"{self.base}/ui/{fragment}"

    def call(self, method: str, path: str, body: Any = None, token: Optional[str] = None,
             headers: Optional[dict[str, str]] = None) -> Answer:
        return http(method, self.base + path, body, headers, token)

    def publish(self, context: str, channel: str, payload: Any, issuer: str = "tests",
                token: Optional[str] = None) -> Any:
        answer = self.call("POST", f"/events/{context}/{channel}", payload, token,
                           {"X-EVENT-ISSUER": issuer})
        assert answer.status == 201, answer
        return answer.json()

    def get(self, path: str, token: Optional[str] = None) -> Any:
        answer = self.call("GET", path, token=token)
        assert answer.status == 200, (path, answer)
        return answer.json()


def start_server(dsn: str, workdir: Path, *args: str) -> ServerProcess:
    return ServerProcess(["--dsn", dsn, *args], workdir).start()


@pytest.fixture(scope="module")
def bus(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:  # noqa: F811
    """A server in the default ``local`` mode (the browser is on its machine),
    whose webhooks may call loopback and give up on a failing receiver after
    1 s, and whose pruner applies retention five times a second."""
    server = start_server(
        dsn, tmp_path_factory.mktemp("console"),
        "--webhook-allow-private", "--webhook-retry-scale", "0.05", "--webhook-disable-after", "1",
        "--retention-interval", "0.2",
    )
    yield Bus(server)
    server.stop()


class Receiver:
    """A webhook receiver on loopback, in a thread: 204, or 500 while ``failing``."""

    def __init__(self) -> None:
        self.failing = False
        self.received: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                outer.received.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                self.send_response(500 if outer.failing else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def wait_until(condition: Any, what: str, timeout: float = 30.0, every: float = 0.1) -> Any:
    """Poll ``condition`` (through the API) until it returns something true."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout} s")
        time.sleep(every)


@pytest.fixture(scope="module")
def locked_bus(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:  # noqa: F811
    """A server with ``--auth required``: every API request needs a token, loopback too."""
    server = start_server(dsn, tmp_path_factory.mktemp("console-locked"), "--auth", "required")
    yield Bus(server)
    server.stop()
