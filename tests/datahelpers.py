"""The `data` extra (bokeh-sampledata's real prices) for the tests that replay real history."""

from __future__ import annotations

import importlib.util
import os

import pytest


def require_bokeh_data() -> None:
    """Call at a test module's top: without bokeh-sampledata the module skips with one line, except
    under CI=true, where the missing extra is an error (scripts/_venv.sh installs it)."""
    if importlib.util.find_spec("bokeh_sampledata") is not None:
        return
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        raise RuntimeError("CI needs the [data] extra (bokeh-sampledata): scripts/_venv.sh installs it")
    pytest.skip("bokeh-sampledata is not installed (pip install -e '.[data]')", allow_module_level=True)
