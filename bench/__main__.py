"""``python -m bench [options]``: run the benchmark scenarios (see docs/benchmarks.md)."""
from __future__ import annotations

import sys

from bench.run import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
