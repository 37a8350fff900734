"""Export the message contracts' JSON schemas: ``python -m shared.schemas docs/messages``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from shared.messages import json_schemas


def render() -> dict[str, str]:
    return {
        f"{key}.schema.json": json.dumps(schema, indent=2, sort_keys=True) + "\n"
        for key, schema in json_schemas().items()
    }


def main(argv: list[str]) -> int:
    target = Path(argv[0] if argv else "docs/messages")
    target.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (target / name).write_text(text)
    print(f"wrote {len(render())} schemas to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
