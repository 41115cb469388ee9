"""``python -m eventbus [options]``: the same as ``twistd -n eventbus [options]``;
``python -m eventbus token ...``: the subcommands of :mod:`eventbus.cli`.

Layer rule: the entry point; imports only :mod:`eventbus.service` and
:mod:`eventbus.cli` (and twistd).
"""

from __future__ import annotations

import sys
from typing import Any

#: First arguments that name a subcommand rather than a server option
#: (:data:`eventbus.cli.COMMANDS`; repeated so the server's start imports no click).
SUBCOMMANDS = ("token",)


def main(argv: list[str]) -> int:
    if argv and argv[0] in SUBCOMMANDS:
        from eventbus import cli

        cli.run(argv)
        return 0
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
