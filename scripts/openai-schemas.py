"""Extract the OpenAI OpenAPI schemas the tests validate against into tests/data.

    python scripts/openai-schemas.py path/to/openai-openapi/openapi.json COMMIT

Writes tests/data/openai-schemas.json: the named root schemas and every schema they refer to,
as JSON Schema (the spec is OpenAPI 3.1, whose schemas are JSON Schema 2020-12), with the
spec's commit so the file says which version it came from.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOTS = (
    "Response",
    "ResponseStreamEvent",
    "ResponseItemList",
    "CreateEmbeddingResponse",
    "Error",
)
OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "openai-schemas.json"


def main(spec_path: str, commit: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    schemas: dict[str, Any] = spec["components"]["schemas"]
    kept: dict[str, Any] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    name = value.rsplit("/", 1)[-1]
                    if name not in kept:
                        kept[name] = schemas[name]
                        walk(schemas[name])
                elif key not in ("x-oaiMeta", "example", "examples"):
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for root in ROOTS:
        kept[root] = schemas[root]
        walk(schemas[root])
    document = {
        "source": f"github.com/openai/openai-openapi@{commit} openapi.json",
        "components": {"schemas": dict(sorted(kept.items()))},
    }
    OUT.write_text(json.dumps(document, indent=1, sort_keys=False) + "\n")
    print(f"{len(kept)} schemas -> {OUT}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
