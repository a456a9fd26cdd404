"""Architecture search from the command line: python search.py --config configs/quickstart.yaml [key=value ...]"""

import sys

from nas.cli import search_main

if __name__ == "__main__":
    sys.exit(search_main())
