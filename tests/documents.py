"""Reading back a JSON document a tool wrote, checked against its schema twice: by the tools' own
validator (``harness.schema_errors``) and by ``jsonschema``, an independent implementation of
JSON Schema draft 2020-12."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import jsonschema

from gpuconv.tools.harness import schema_errors


def check_document(doc: Any, schema: Dict[str, Any]) -> None:
    """Assert that ``doc`` follows ``schema`` for both validators (and that ``schema`` is a valid
    draft 2020-12 schema)."""
    assert schema_errors(doc, schema) == []
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator)


def load_valid(path, schema: Dict[str, Any]) -> Dict[str, Any]:
    """The document at ``path``, after ``check_document``."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    check_document(doc, schema)
    return doc
