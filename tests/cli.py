"""Running the ``eventbus`` command line in a subprocess, with or without a terminal."""
from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from typing import Optional

from tests.servers import REPO

TIMEOUT_S = 300.0


def environment(url: Optional[str], token: Optional[str] = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTBUS_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "200"
    if url is not None:
        env["EVENTBUS_URL"] = url
    if token is not None:
        env["EVENTBUS_TOKEN"] = token
    return env


def eventbus(*args: str, url: Optional[str] = None, input: Optional[bytes] = None,
             token: Optional[str] = None, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """``python -m eventbus ARGS`` with pipes (no terminal), ``EVENTBUS_URL=url``."""
    return subprocess.run([sys.executable, "-m", "eventbus", *args], cwd=str(REPO), input=input,
                          capture_output=True, timeout=timeout, env=environment(url, token),
                          stdin=None if input is not None else subprocess.DEVNULL)


def start(*args: str, url: Optional[str] = None) -> subprocess.Popen:
    """A long-running command (``tail``) with pipes."""
    return subprocess.Popen([sys.executable, "-m", "eventbus", *args], cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env=environment(url))


def on_terminal(*args: str, url: Optional[str] = None, input: Optional[bytes] = None,
                stdout_tty: bool = True, stderr_tty: bool = True,
                timeout: float = TIMEOUT_S) -> tuple[int, bytes, bytes]:
    """Run with standard output and/or error on a pseudo-terminal; (status,
    what the terminal showed, what went to the pipe)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventbus", *args], cwd=str(REPO), env=environment(url),
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=slave if stdout_tty else subprocess.PIPE,
        stderr=slave if stderr_tty else subprocess.PIPE,
    )
    os.close(slave)
    piped = proc.stdout if not stdout_tty else proc.stderr
    if input is not None:
        assert proc.stdin is not None
        proc.stdin.write(input)
        proc.stdin.close()
    shown = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal's last user closed it
                break
            if not chunk:
                break
            shown += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    rest = piped.read() if piped is not None else b""
    return proc.wait(timeout), shown, rest
