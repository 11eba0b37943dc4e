#!/usr/bin/env python3
"""Turns an upstream CustomResourceDefinition (YAML) into one JSON Schema file per served version.

    git show TAG:path/to/crd.yaml | python3 crd2jsonschema.py OUT_DIR

writes OUT_DIR/<kind>-<group>-<version>.json. The schema is the CRD's `openAPIV3Schema` with:
- `apiVersion` and `kind` pinned to the CRD's group/version and kind;
- `additionalProperties: false` on every object that lists its `properties` and neither
  preserves unknown fields nor declares `additionalProperties` (what the API server's pruning and
  `kubectl --validate=strict` do: a misspelt field is an error, not silently dropped);
- `nullable: true` turned into a JSON Schema union with `null`;
- descriptions removed (the upstream files have them; the schema stays small);
- a leading `^(?i)` in a pattern written as `(?i)^` (same meaning; Python's `re` wants flags first).
`x-kubernetes-validations` (CEL rules) cannot be evaluated by `jsonschema` and are dropped; the
API server still enforces them.
"""
import json
import pathlib
import sys

import yaml


def convert(node):
    if isinstance(node, list):
        return [convert(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("description", "x-kubernetes-validations"):
            continue
        out[key] = convert(value) if key not in ("enum", "required", "default", "example") else value
    if isinstance(out.get("pattern"), str) and out["pattern"].startswith("^(?i)"):
        # Go's RE2 takes a flag group anywhere; Python's re (jsonschema) only at the start.
        out["pattern"] = "(?i)^" + out["pattern"][len("^(?i)"):]
    if out.get("nullable") is True:
        del out["nullable"]
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = list(out["enum"]) + [None]
    if (
        out.get("type") in ("object", ["object", "null"])
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def main():
    out_dir = pathlib.Path(sys.argv[1])
    crd = yaml.safe_load(sys.stdin)
    spec = crd["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    annotations = crd.get("metadata", {}).get("annotations", {})
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        schema = convert(version["schema"]["openAPIV3Schema"])
        schema.setdefault("properties", {})
        schema["properties"]["apiVersion"] = {"const": f"{group}/{version['name']}"}
        schema["properties"]["kind"] = {"const": kind}
        schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind"})
        schema = {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "$comment": f"{kind}.{group}/{version['name']} from the upstream CRD {crd['metadata']['name']}"
            + "".join(f"; {k}={v}" for k, v in sorted(annotations.items()) if "version" in k),
            **schema,
        }
        path = out_dir / f"{kind.lower()}-{group.split('.')[0]}-{version['name']}.json"
        path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        print(path)


if __name__ == "__main__":
    main()
