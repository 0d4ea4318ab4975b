#!/usr/bin/env python
"""fakd command line: `python launch.py {train,sweep,resume,status,retrain,export} ...` (see --help)."""

import sys

from fakd.cli import main
from fakd.supervisor import adopt_parent, run_supervised, supervised

if __name__ == "__main__":
    argv = sys.argv[1:]
    if supervised(argv):
        sys.exit(run_supervised())
    adopt_parent()
    sys.exit(main(argv))
