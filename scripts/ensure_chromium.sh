#!/usr/bin/env bash
# Make sure headless Chromium is available for tests/integration/test_report_browser.py.
# Idempotent: when /usr/bin/chromium (or chromium on PATH) exists it only says so and exits 0.
# When it is missing and apt-get is usable (root), installs Debian's `chromium` package.
# Otherwise prints why it cannot and exits 1 (the browser test then skips, or fails under CI=true).
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "ensure_chromium: already installed: $(command -v chromium) ($(chromium --version 2>/dev/null || echo 'version unknown'))"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: chromium is missing and apt-get is not available; install Chromium by hand" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure_chromium: chromium is missing; run as root (or: sudo apt-get install -y chromium)" >&2
    exit 1
fi
echo "ensure_chromium: chromium missing; running apt-get update"
apt-get update -qq
echo "ensure_chromium: installing Debian package chromium (no recommends)"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
echo "ensure_chromium: installed: $(command -v chromium) ($(chromium --version 2>/dev/null || echo 'version unknown'))"
