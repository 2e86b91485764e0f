"""Command line: ``python -m circfft {info,bench,demo} ...`` (also installed as ``circfft``).

The tools live in :mod:`circfft._cli`, apart from the library; they import heavy libraries only
when a command needs them.
"""
from __future__ import annotations

import sys

from circfft._cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
