"""Container healthcheck: GET a path of the server in this container and exit 0 only on the expected status.

    python -m local.probe /health/live          # the API answers (touches no dependency)
    python -m local.probe / --status 405        # a stage function answers a GET with 405 (it runs on POST only)

The port is $PORT (8080, the image's default). Why a module and not curl: the slim Python image has no curl, and
the same command runs unchanged in tests against real processes on loopback.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.probe", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="the path to GET, e.g. /health/live")
    parser.add_argument("--status", type=int, default=200, help="the status that means healthy (default 200)")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    url = f"http://127.0.0.1:{os.environ.get('PORT', '8080')}{args.path}"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            status = response.status
    except urllib.error.HTTPError as answer:
        status = answer.code
        answer.close()
    except OSError as exc:  # refused, reset, timed out
        print(f"probe: {url}: {exc}", file=sys.stderr)
        return 1
    if status != args.status:
        print(f"probe: {url} answered {status}, expected {args.status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
