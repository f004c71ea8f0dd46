"""Data benchmark: `python bench/data.py [--quick]` == `jestkit bench data`."""

import sys

from jestkit.benchmarks.data import main

if __name__ == "__main__":
    sys.exit(main())
