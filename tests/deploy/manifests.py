"""Loading the rendered kustomize overlays for the deploy tests and checks.

The overlays are rendered with `kubectl kustomize` from DEPLOY_DIR (default: deploy/ of this
checkout), or read from DEPLOY_RENDERED (a folder holding dev.yaml, prod.yaml and prod-mtls.yaml, as
scripts/deploy-check.sh writes them).
"""
import os
import pathlib
import subprocess

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = pathlib.Path(os.environ.get("DEPLOY_DIR", ROOT / "deploy"))
OVERLAYS = ("dev", "prod", "prod-mtls")


def render(overlay):
    rendered = os.environ.get("DEPLOY_RENDERED")
    if rendered:
        text = (pathlib.Path(rendered) / f"{overlay}.yaml").read_text()
    else:
        text = subprocess.run(
            ["kubectl", "kustomize", str(DEPLOY / "overlays" / overlay)],
            check=True, capture_output=True, text=True,
        ).stdout
    return [d for d in yaml.safe_load_all(text) if d]


def of_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def named(objects, kind, name):
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]
