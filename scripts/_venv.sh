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
  # pip's own chatter (and warnings about the machine's pip configuration) goes to a log; on failure
  # its end is shown, so a failed install is never silent.
  if ! .venv/bin/python -m pip install --disable-pip-version-check -e ".[dev,sim,data]" > .venv/install.log 2>&1; then
    tail -n 30 .venv/install.log >&2
    echo "factoryline: installing the dependencies failed; the whole pip log is in .venv/install.log" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
export PATH="$root/.venv/bin:$PATH"
