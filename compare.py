"""Compare search methods in one study: python compare.py --config configs/compare/quick.yaml [key=value ...]"""

import sys

from nas.cli import compare_main

if __name__ == "__main__":
    sys.exit(compare_main())
