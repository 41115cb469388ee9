"""The options of access control: validation, and the warning of --auth off
on a port other machines reach."""
from __future__ import annotations

import pytest
from twisted.python import usage

from eventbus.config import DEFAULTS, Options, beyond_loopback, open_warning


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def test_defaults_keep_loopback_working_without_tokens():
    settings = parse().settings()
    assert settings.auth == "local" and settings.max_held_per_client == 1000
    assert settings.cors_origin == () and settings == DEFAULTS


def test_the_access_options_reach_the_settings():
    settings = parse("--auth", "required", "--max-held-per-client", "0", "--cors-origin",
                     "https://App.example.com", "--cors-origin", "http://[::1]:8080").settings()
    assert settings.auth == "required" and settings.max_held_per_client == 0
    assert settings.cors_origin == ("https://app.example.com", "http://[::1]:8080")


@pytest.mark.parametrize("argv", [
    ("--auth", "maybe"), ("--max-held-per-client", "-1"), ("--cors-origin", "*"),
    ("--cors-origin", "https://app.example.com/path"), ("--cors-origin", "app.example.com"),
    ("--cors-origin", "ftp://x"),
])
def test_bad_access_options_are_usage_errors(argv):
    with pytest.raises(usage.UsageError):
        parse(*argv)


@pytest.mark.parametrize("endpoint, beyond", [
    ("tcp:33002", True), ("tcp:8080:interface=0.0.0.0", True), ("tcp6:8080:interface=\\:\\:", True),
    ("ssl:8443:privateKey=k.pem:certKey=c.pem", True), ("tcp:8080:interface=10.0.0.5", True),
    ("tcp:8080:interface=127.0.0.1", False), ("tcp:8080:interface=127.0.0.2", False),
    ("tcp6:8080:interface=\\:\\:1", False), ("tcp:8080:interface=localhost", False),
    ("ssl:8443:privateKey=k.pem:interface=127.0.0.1", False), ("unix:/run/eventbus.sock", False),
    ("systemd:domain=INET:index=0", True),
])
def test_which_endpoints_accept_other_machines(endpoint, beyond):
    assert beyond_loopback(endpoint) is beyond


def test_auth_off_warns_only_when_a_port_reaches_beyond_loopback():
    assert open_warning(parse("--auth", "off", "--listen", "tcp:1:interface=127.0.0.1").settings()) is None
    assert open_warning(parse("--listen", "tcp:1").settings()) is None  # local mode
    warning = open_warning(parse("--auth", "off", "--listen", "unix:/x", "--listen", "tcp:1").settings())
    assert warning is not None and "tcp:1" in warning and "unix" not in warning


def test_building_the_server_with_auth_off_on_an_open_port_logs_the_warning():
    from twisted.internet.testing import MemoryReactorClock
    from twisted.logger import globalLogPublisher

    from eventbus.tap import build

    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        build(parse("--auth", "off", "--dsn", "dbname=x", "--listen", "tcp:1").settings(), MemoryReactorClock())
        build(parse("--auth", "off", "--dsn", "dbname=x", "--listen", "tcp:1:interface=127.0.0.1").settings(),
              MemoryReactorClock())
    finally:
        globalLogPublisher.removeObserver(seen.append)
    warnings = [e for e in seen if "--auth off" in str(e.get("warning", ""))]
    assert len(warnings) == 1 and warnings[0]["log_level"].name == "warn"
