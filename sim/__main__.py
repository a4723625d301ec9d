"""`python -m sim`: the simulated market (the `sim` extra), same flags as `factoryline sim`."""

from __future__ import annotations

import sys

from services.cli import main

if __name__ == "__main__":
    sys.exit(main(["sim", *sys.argv[1:]]))
