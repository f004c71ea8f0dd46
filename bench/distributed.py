"""1 vs 2 processes at the same global batch: `python bench/distributed.py` == `jestkit bench distributed`."""

import sys

from jestkit.benchmarks.distributed import main

if __name__ == "__main__":
    sys.exit(main())
