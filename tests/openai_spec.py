"""Validation against OpenAI's own OpenAPI schemas (extracted by scripts/openai-schemas.py).

check("Response", body)            # raises with every violation listed
check_event(event)                 # one Responses stream event, by its type
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC = Path(__file__).parent / "data" / "openai-schemas.json"


@cache
def _document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(SPEC.read_text())
    return document


@cache
def _registry() -> Registry[Any]:
    resource: Resource[Any] = Resource.from_contents(_document(), default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("spec", resource)
    return registry


@cache
def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"spec#/components/schemas/{name}"}, registry=_registry())


def check(name: str, value: Any) -> None:
    """Raise AssertionError listing each way ``value`` breaks the spec's schema ``name``."""
    errors = sorted(validator(name).iter_errors(value), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{'/'.join(map(str, e.absolute_path)) or '.'}: {e.message[:300]}" for e in errors]
        raise AssertionError(f"not a valid {name}:\n" + "\n".join(lines))


# The stream event schemas by the event type they describe.
@cache
def _event_schemas() -> dict[str, str]:
    schemas = _document()["components"]["schemas"]
    found: dict[str, str] = {}
    for ref in schemas["ResponseStreamEvent"]["anyOf"]:
        name = ref["$ref"].rsplit("/", 1)[-1]
        kind = schemas[name]["properties"]["type"]
        values = kind.get("enum") or [kind.get("const")]
        for value in values:
            found[value] = name
    return found


def check_event(event: dict[str, Any]) -> None:
    """One stream event against the schema of its own type (named in the spec's union)."""
    name = _event_schemas().get(event.get("type", ""))
    assert name is not None, f"the spec has no stream event of type {event.get('type')!r}"
    check(name, event)
