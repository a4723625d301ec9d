"""The layers of ARCHITECTURE.md, checked on the source: `shared` never imports `services`, and a
service never imports another service.

A service is a package under `services/` (`services/manager`, `services/ops`, ...): its modules may
import its own package, `shared` and third-party code. The top-level modules of `services/`
(`services/cli.py`, `services/configcmd.py`) are the command line, not a service: they reach the
services only through `COMMANDS` (an import by name when that command runs), and a service may call
`services.cli.main` (`python -m services.ops.cli` and `python -m sim` run the same parser).
The demo (`demo/`, outside `services/`) wires every service together and is not a service.
Every import counts, also one inside a function.
"""

from __future__ import annotations

from pathlib import Path

from sourcescan import imports_in

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "services"
#: Top-level modules of services/: the command line, importable by every service.
COMMAND_LINE = {"services.cli", "services.configcmd"}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file; `from services import cli` is
    `services.cli`."""
    source = path.read_text()
    if "services" not in source:
        return []  # nothing to find (and parsing every file is the cost of this test)
    return imports_in(source, str(path), members=True)


def service_packages() -> list[str]:
    return sorted(p.name for p in SERVICES.iterdir() if (p / "__init__.py").is_file())


def crossings() -> list[str]:
    packages = set(service_packages())
    found = []
    for own in sorted(packages):
        for path in sorted((SERVICES / own).rglob("*.py")):
            for line, module in imported_modules(path):
                parts = module.split(".")
                if (parts[0] == "services" and len(parts) > 1 and parts[1] in packages and parts[1] != own
                        and ".".join(parts[:2]) not in COMMAND_LINE):
                    found.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return found


def test_no_service_imports_another_service():
    assert len(service_packages()) >= 9  # the scan sees the services
    assert crossings() == []


def test_shared_never_imports_services():
    found = [f"{path.relative_to(ROOT)}:{line} imports {module}"
             for path in sorted((ROOT / "shared").rglob("*.py"))
             for line, module in imported_modules(path) if module.split(".")[0] == "services"]
    assert found == []


def test_the_scan_sees_an_import_inside_a_function(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from services.manager import tick\n    import services.ops.flatten\n")
    assert imported_modules(module) == [(2, "services.manager"), (2, "services.manager.tick"),
                                        (3, "services.ops.flatten")]
