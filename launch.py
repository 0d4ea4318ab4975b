#!/usr/bin/env python
"""fakd command line: `python launch.py {train,sweep,resume,status,retrain,export} ...` (see --help)."""

import sys

from fakd.cli import main

if __name__ == "__main__":
    sys.exit(main())
