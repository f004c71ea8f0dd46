"""`python -m jestkit.pipeline`: the same as `jestkit pipeline`."""

from __future__ import annotations

import argparse
import sys

from jestkit.errors import JestkitError
from jestkit.pipeline.cli import add_arguments, run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m jestkit.pipeline")
    add_arguments(parser)
    try:
        sys.exit(run(parser.parse_args()))
    except JestkitError as e:
        print(f"jestkit pipeline: error: {e}", file=sys.stderr)
        sys.exit(2)
