"""`python launch/submit.py ...` is `herbs submit ...`, and `python launch/submit.py status DIR` is `herbs status DIR`."""

import sys

from herbs.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main(args if args[:1] == ["status"] else ["submit", *args]))
