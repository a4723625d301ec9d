"""Print the image's requirements from pyproject.toml: the build system, the dependencies and the
optional extras named in EXTRAS (comma-separated), one per line.

The Dockerfile installs these in a layer of their own before it copies any code, so a change to the
code (even a comment) reuses the installed dependencies; only pyproject.toml changes reinstall them.
`python docker/requirements.py pyproject.toml dashboard,sim`
"""

from __future__ import annotations

import sys
import tomllib


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    optional = pyproject["project"].get("optional-dependencies", {})
    unknown = [name for name in extras if name not in optional]
    if unknown:
        raise SystemExit(f"requirements: unknown extra(s) {', '.join(unknown)} (pyproject.toml has "
                         f"{', '.join(sorted(optional)) or 'none'})")
    lines = list(pyproject["build-system"]["requires"]) + list(pyproject["project"]["dependencies"])
    for name in extras:
        lines += optional[name]
    return list(dict.fromkeys(lines))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python docker/requirements.py pyproject.toml EXTRA[,EXTRA...]", file=sys.stderr)
        return 2
    with open(argv[0], "rb") as stream:
        pyproject = tomllib.load(stream)
    extras = [name.strip() for name in argv[1].split(",") if name.strip()]
    print("\n".join(requirements(pyproject, extras)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
