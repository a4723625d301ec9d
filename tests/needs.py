"""What a test needs from the machine, in one place: under CI=true a missing piece is a failure,
never a silent skip; elsewhere the test skips with one line saying what to install."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def missing(what: str, install: str, module_level: bool = False) -> None:
    """Stop the test (or, with `module_level`, the module) because `what` is not on this machine:
    fail under CI, skip elsewhere; `install` says how to get it."""
    if IN_CI:
        pytest.fail(f"CI=true but {what}: {install}", pytrace=False)
    pytest.skip(f"{what} ({install})", allow_module_level=module_level)


def redis_server_binary(tests: str) -> str:
    """The redis-server binary for `tests` that run throwaway servers of their own."""
    binary = shutil.which("redis-server")
    if binary is None:
        missing("redis-server is not installed", f"{tests} need one: apt-get install redis-server")
    return binary


def chromium_path() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found is None:
        missing("chromium is not installed", "run scripts/ensure_chromium.sh to install Debian's chromium")
    return found


def require_bokeh_data() -> None:
    """Call at a test module's top: the modules that replay real history need the [data] extra
    (bokeh-sampledata; scripts/_venv.sh installs it)."""
    if importlib.util.find_spec("bokeh_sampledata") is None:
        missing("bokeh-sampledata is not installed", "pip install -e '.[data]'", module_level=True)
