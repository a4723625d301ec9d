"""Container healthcheck of a service: `python docker/health.py services.trader`.

Runs the service's own self-check (`python -m services.trader --check`: settings, Redis, the broker)
and exits with its status. A success is remembered for RECHECK_SECONDS, so the healthcheck can run
every few seconds (a container reports healthy within one interval of being ready) while the full
check, which reads the broker's account, still runs about once a minute. A failure is never
remembered: the next probe checks again. Standard library only, so a cached probe costs a bare
interpreter start.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time

RECHECK_SECONDS = 55
_MODULE = re.compile(r"^services(\.[a-z_]+)+$")


def stamp_path(module: str) -> str:
    return os.path.join(tempfile.gettempdir(), f"factoryline-health-{module}.ok")


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not _MODULE.match(argv[0]):
        print("usage: python docker/health.py services.<name>", file=sys.stderr)
        return 2
    module = argv[0]
    stamp = stamp_path(module)
    try:
        if time.time() - os.path.getmtime(stamp) < RECHECK_SECONDS:
            return 0
    except OSError:
        pass
    status = subprocess.call([sys.executable, "-m", module, "--check"])
    if status == 0:
        with open(stamp, "w", encoding="utf-8"):
            pass
    else:
        try:
            os.unlink(stamp)
        except OSError:
            pass
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
