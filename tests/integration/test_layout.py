"""The layout's rule that code could break without any other test noticing: production code
(`shared`, `services`) never imports the simulated market or the demo (packages `sim` and `demo`,
installed with the `sim` extra) nor the extra's dependencies, so a production image can leave them
out. Only `factoryline sim` and `factoryline demo` reach them, and without the extra they say how
to install it in one line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sourcescan import file_imports

ROOT = Path(__file__).resolve().parents[2]
#: What the `sim` extra brings: its two packages and its two dependencies.
OPTIONAL = ("sim", "demo", "aiohttp", "fakeredis")


def _production_files() -> list[Path]:
    return sorted([*ROOT.glob("shared/**/*.py"), *ROOT.glob("services/**/*.py")])


def _optional_imports(path: Path, root: Path = ROOT) -> list[str]:
    """Every import of an optional module in `path`: import statements, and import_module /
    __import__ calls with a literal name."""
    return [f"{path.relative_to(root)}:{line} imports {name}" for line, name in file_imports(path)
            if name.split(".")[0] in OPTIONAL]


def test_no_production_module_imports_the_simulator_or_the_demo():
    files = _production_files()
    assert len(files) > 50  # the scan really reads the production code
    assert [line for path in files for line in _optional_imports(path)] == []


def test_the_scan_sees_each_way_of_importing_an_optional_module(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import sim.engine\nfrom demo.days import run_days\nimport aiohttp as web\n"
                     "import importlib\nimportlib.import_module('fakeredis')\nfrom simhelpers import x\n")
    found = [line.split(" imports ")[1] for line in _optional_imports(probe, tmp_path)]
    assert found == ["sim.engine", "demo.days", "aiohttp", "fakeredis"]


_WITHOUT_THE_EXTRA = r"""
import contextlib, importlib, io, json, pkgutil, sys

OPTIONAL = {optional!r}

class Missing:
    # What Python does when a package is not installed.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in OPTIONAL:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Missing())
imported = []
for package in ("shared", "services"):
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        importlib.import_module(info.name)
        imported.append(info.name)
from shared import config
groups = [group.__name__ for group in config.all_groups()]
from services import cli
commands = {{}}
for command in ("sim", "demo"):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = cli.main([command])
    commands[command] = [status, err.getvalue()]
print(json.dumps({{"imported": imported, "groups": groups, "commands": commands,
                  "optional_loaded": sorted(m for m in sys.modules if m.split(".")[0] in OPTIONAL)}}))
"""


def test_every_production_module_imports_and_runs_without_the_sim_extra(tmp_path):
    done = subprocess.run([sys.executable, "-c", _WITHOUT_THE_EXTRA.format(optional=OPTIONAL)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert "services.manager.daemon" in result["imported"] and "shared.broker.alpaca" in result["imported"]
    assert result["optional_loaded"] == []
    # `factoryline config` still validates every production group, and leaves out the simulator's.
    assert "StreamerSettings" in result["groups"] and "SimSettings" not in result["groups"]
    for command, (status, stderr) in result["commands"].items():
        assert status == 2, command
        assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
        assert stderr.startswith(f"factoryline: error: factoryline {command} needs the simulated market"), stderr
        assert "pip install 'factoryline[sim]'" in stderr


def test_with_the_extra_the_simulators_settings_are_validated_too():
    from shared import config
    from sim.settings import SimSettings

    assert SimSettings in config.all_groups()
