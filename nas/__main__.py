"""The command-line tools as one module, usable from any directory:

    python -m nas search --config RECIPE [key=value ...]      (search.py)
    python -m nas evaluate --config RECIPE --genotype G ...   (evaluate.py)
    python -m nas compare --config STUDY ...                  (compare.py)
"""

import sys

from nas.cli import compare_main, evaluate_main, search_main

TOOLS = {"search": search_main, "evaluate": evaluate_main, "compare": compare_main}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in TOOLS:
        sys.exit(f"usage: python -m nas {{{','.join(TOOLS)}}} [arguments]; got {' '.join(sys.argv[1:])!r}")
    sys.argv[0] = f"python -m nas {sys.argv[1]}"
    sys.exit(TOOLS[sys.argv.pop(1)]())
