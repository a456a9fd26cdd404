"""Train a genotype from scratch and test it.

    python evaluate.py --config configs/eval/quick.yaml --genotype DARTS_V2 [key=value ...]
"""

import sys

from nas.cli import evaluate_main

if __name__ == "__main__":
    sys.exit(evaluate_main())
