"""python -m nas TOOL [arguments]: every command-line tool, usable from any directory (python -m nas --help lists
them: search, evaluate, compare, genotype, plot, bench201, config, latency, export, predict)."""

import sys

from nas.cli import main

if __name__ == "__main__":
    sys.exit(main())
