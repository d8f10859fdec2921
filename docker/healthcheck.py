#!/usr/bin/env python3
"""Container health check: exit 0 when the service's ``GET /readyz`` answers 200, else 1.

Standard library only (the image has no curl). It asks the server on this
container's loopback at ``PRODUCTREC_PORT`` (default 8000), or the URL given
as the first argument, and never goes through an HTTP proxy.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 4.0


def readiness_url(argv: list[str]) -> str:
    if len(argv) > 1:
        return argv[1]
    return f"http://127.0.0.1:{os.environ.get('PRODUCTREC_PORT', '8000')}/readyz"


def main(argv: list[str]) -> int:
    url = readiness_url(argv)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT_S) as response:
            status, body = response.status, response.read(500)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(500)
    except (OSError, ValueError) as exc:  # refused, timed out, bad URL
        print(f"not ready: {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"not ready: {url} answered {status}: {body.decode(errors='replace')}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
