"""`python -m herbs ...` is the `herbs` command (the launchers use it: no console script needed on the nodes)."""

import sys

from herbs.cli import main

sys.exit(main())
