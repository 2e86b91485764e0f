"""Command line: ``python -m circfft {info,bench} ...`` (also installed as ``circfft``).

The implementation lives in :mod:`circfft._cli` (argument parsing, ``info``) and
:mod:`circfft._bench` (``bench``); both import heavy libraries only when a command needs them.
"""
from __future__ import annotations

import sys

from circfft._cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
