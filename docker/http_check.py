"""Container healthcheck for HTTP services without a `--check` (the simulator, rq-dashboard).

`python docker/http_check.py URL` exits 0 when the server answers with any status below 500
(a 401 from rq-dashboard's basic auth still proves it is up), else prints one line and exits 1.
Standard library only: the image has no curl.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python docker/http_check.py URL", file=sys.stderr)
        return 2
    url = argv[0]
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - fixed local URL
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        print(f"http_check: {url}: no answer: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    if status >= 500:
        print(f"http_check: {url}: HTTP {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
