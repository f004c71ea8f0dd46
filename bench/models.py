"""Model throughput benchmark: `python bench/models.py [--quick]` == `jestkit bench models`."""

import argparse
import sys

from jestkit.benchmarks import models

if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="bench/models.py", description=models.__doc__.splitlines()[0]
    )
    models.add_arguments(parser)
    sys.exit(models.run(parser.parse_args()))
