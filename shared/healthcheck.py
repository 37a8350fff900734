"""Container healthcheck for a worker: ``python -m shared.healthcheck FILE MAX_AGE_S``.

The worker touches FILE after every receive attempt (``RETRAINER_HEALTH_FILE``); a file older
than MAX_AGE_S means its receive loop is stuck or dead.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def is_fresh(path: Path, max_age_s: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime <= max_age_s
    except FileNotFoundError:
        return False


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m shared.healthcheck FILE MAX_AGE_S", file=sys.stderr)
        return 2
    path, max_age_s = Path(argv[0]), float(argv[1])
    if is_fresh(path, max_age_s):
        return 0
    print(f"{path} missing or older than {max_age_s:g} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
