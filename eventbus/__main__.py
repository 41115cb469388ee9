"""``eventbus`` and ``python -m eventbus``: the server, or a command.

* no arguments, ``serve [options]``, or server options alone (a first
  argument starting with ``-``, e.g. ``eventbus --dsn ...``): the server, the
  same as ``twistd -n eventbus [options]`` (the documented way to run it
  without twistd; the server's start imports no click);
* ``-h``/``--help``, a command (:data:`eventbus.cli.COMMANDS`) or any other
  word: :mod:`eventbus.cli` (an unknown word is a usage error, exit 2).

Layer rule: the entry point; imports only :mod:`eventbus.service` and
:mod:`eventbus.cli` (and twistd).
"""

from __future__ import annotations

import sys
from typing import Any

#: First arguments that ask for the command line's help rather than the server's.
HELP = ("-h", "--help")


def main(argv: list[str]) -> int:
    if argv and argv[0] == "serve":
        return serve(argv[1:])
    if argv and (argv[0] in HELP or not argv[0].startswith("-")):
        from eventbus import cli

        cli.run(argv)
    return serve(argv)


def serve(argv: list[str]) -> int:
    """Run the server with twistd's options for the ``eventbus`` plugin; its exit status."""
    from twisted.application import app
    from twisted.scripts import twistd

    from eventbus import service

    def run_app(config: Any) -> None:
        # Like twistd.runApp, minus its re-raising of the signal that stopped
        # the reactor: a SIGTERM shutdown that went cleanly exits with 0.
        # A private class of twistd's (tests/unit/test_private_apis.py fails
        # if it changes).
        twistd._SomeApplicationRunner(config).run()  # type: ignore[attr-defined]

    # No pidfile: several server processes may run from one directory.
    sys.argv = [sys.argv[0], "--nodaemon", "--pidfile=", "eventbus", *argv]
    app.run(run_app, twistd.ServerOptions)  # type: ignore[attr-defined]
    return 1 if service.startup_failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def cli() -> None:
    sys.exit(main(sys.argv[1:]))
