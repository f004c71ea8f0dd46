"""Per-step overhead benchmark: `python bench/overhead.py [--quick]` == `jestkit bench overhead`."""

import sys

from jestkit.benchmarks.overhead import main

if __name__ == "__main__":
    sys.exit(main())
