"""Entry point for `python train.py --config FILE` and `accelerate launch train.py --config FILE`."""

import sys

from herbs.train.commands import main

if __name__ == "__main__":
    sys.exit(main())
