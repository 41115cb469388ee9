"""``python -m eventbus [options]``: the same as ``twistd -n eventbus [options]``."""
from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from twisted.scripts import twistd

    from eventbus import service

    # No pidfile: several server processes may run from one directory.
    sys.argv = [sys.argv[0], "--nodaemon", "--pidfile=", "eventbus", *argv]
    twistd.run()
    return 1 if service.startup_failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def cli() -> None:
    sys.exit(main(sys.argv[1:]))
