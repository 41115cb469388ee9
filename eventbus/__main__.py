"""``python -m eventbus [options]``: the same as ``twistd -n eventbus [options]``.

Layer rule: the entry point; imports only :mod:`eventbus.service` (and twistd).
"""
from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from twisted.application import app
    from twisted.scripts import twistd

    from eventbus import service

    def run_app(config: twistd.ServerOptions) -> None:
        # Like twistd.runApp, minus its re-raising of the signal that stopped
        # the reactor: a SIGTERM shutdown that went cleanly exits with 0.
        twistd._SomeApplicationRunner(config).run()

    # No pidfile: several server processes may run from one directory.
    sys.argv = [sys.argv[0], "--nodaemon", "--pidfile=", "eventbus", *argv]
    app.run(run_app, twistd.ServerOptions)
    return 1 if service.startup_failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def cli() -> None:
    sys.exit(main(sys.argv[1:]))
