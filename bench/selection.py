"""Selection benchmark: `python bench/selection.py [--quick]` == `jestkit bench selection`."""

import sys

from jestkit.benchmarks.selection import main

if __name__ == "__main__":
    sys.exit(main())
