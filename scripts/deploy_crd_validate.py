#!/usr/bin/env python3
"""Validates every custom resource in rendered manifests against the CRD schemas vendored in
deploy/schemas/ (kubernetes-validate only knows the built-in kinds). A custom kind without a
vendored schema fails.

    deploy_crd_validate.py RENDERED.yaml...
"""
import json
import pathlib
import sys

import jsonschema
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUILTIN_GROUPS = {"", "apps", "batch", "policy", "autoscaling", "networking.k8s.io",
                  "rbac.authorization.k8s.io", "storage.k8s.io", "scheduling.k8s.io",
                  "coordination.k8s.io", "admissionregistration.k8s.io"}


def schemas():
    found = {}
    for path in sorted((ROOT / "deploy" / "schemas").glob("*.json")):
        schema = json.loads(path.read_text())
        key = (schema["properties"]["apiVersion"]["const"], schema["properties"]["kind"]["const"])
        jsonschema.Draft7Validator.check_schema(schema)
        found[key] = (path.name, jsonschema.Draft7Validator(schema))
    return found


def main():
    known = schemas()
    problems, checked = [], 0
    for file in sys.argv[1:]:
        for obj in yaml.safe_load_all(pathlib.Path(file).read_text()):
            if not obj:
                continue
            api = obj["apiVersion"]
            group = api.rpartition("/")[0] if "/" in api else ""
            if group in BUILTIN_GROUPS:
                continue
            where = f"{file}: {obj['kind']}/{obj['metadata']['name']} ({api})"
            if (api, obj["kind"]) not in known:
                problems.append(f"{where}: no vendored schema in deploy/schemas/")
                continue
            name, validator = known[(api, obj["kind"])]
            errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
            for e in errors:
                path = ".".join(str(p) for p in e.absolute_path) or "(root)"
                problems.append(f"{where}: {path}: {e.message} [{name}]")
            checked += 1
    print(f"custom resources: {checked} validated against {len(known)} vendored schemas")
    if problems:
        sys.exit("FAIL:\n  " + "\n  ".join(problems))
    if checked == 0:
        sys.exit("FAIL: no custom resource was found to validate")


if __name__ == "__main__":
    main()
