#!/usr/bin/env python3
"""Validates a provenance statement against the in-toto Statement v1 and SLSA provenance v1 JSON
schemas beside this script, with jsonschema's format checks (uri, date-time) on.

Usage: validate.py STATEMENT.json  (exit 0: valid; else the errors on stderr)
"""
import json
import pathlib
import sys

import jsonschema
from referencing import Registry, Resource

here = pathlib.Path(__file__).parent
schemas = {p.name: json.loads(p.read_text()) for p in here.glob("*.schema.json")}
registry = Registry().with_resources(
    (name, Resource.from_contents(s)) for name, s in schemas.items()
)
doc = json.loads(pathlib.Path(sys.argv[1]).read_text())
errors = []
for name in ("in-toto-statement-v1.schema.json", "slsa-provenance-v1.schema.json"):
    cls = jsonschema.validators.validator_for(schemas[name])
    validator = cls(
        {"$ref": name}, registry=registry, format_checker=cls.FORMAT_CHECKER
    )
    errors += [f"{name}: {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
for e in errors:
    print(e, file=sys.stderr)
sys.exit(1 if errors else 0)
