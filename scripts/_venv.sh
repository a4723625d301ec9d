# Sourced by scripts/test and scripts/demo: make .venv and install the pinned project into it.
# Reinstalls only when pyproject.toml changes. Needs nothing but python3 (3.11+).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=".venv/.factoryline-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "factoryline: installing pinned dependencies into .venv (first run only) ..." >&2
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]" >&2
  echo "$want" > "$stamp"
fi
export PATH="$root/.venv/bin:$PATH"
