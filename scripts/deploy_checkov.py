#!/usr/bin/env python3
"""Runs checkov (framework kubernetes) on rendered manifests and compares its failed checks with
deploy/checkov-skips.yaml: a failed check not in the list fails, a listed check without a reason
fails, and a listed check that no longer fails fails (the list must stay true).

    deploy_checkov.py RENDERED_DIR
"""
import collections
import json
import pathlib
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main():
    rendered = sys.argv[1]
    skips = yaml.safe_load((ROOT / "deploy" / "checkov-skips.yaml").read_text())
    reasons = {s["id"]: (s.get("reason") or "").strip() for s in skips}
    problems = [f"{i}: skipped without a reason" for i, r in reasons.items() if len(r) < 20]

    checkov = pathlib.Path(sys.executable).with_name("checkov")
    run = subprocess.run(
        [str(checkov), "-d", rendered, "--framework", "kubernetes", "--output", "json",
         "--skip-download"],
        capture_output=True, text=True,
    )
    try:
        report = json.loads(run.stdout)
    except json.JSONDecodeError:
        sys.exit(f"checkov did not produce a report (exit {run.returncode}):\n{run.stderr[-3000:]}")
    reports = report if isinstance(report, list) else [report]
    failed = collections.defaultdict(list)
    passed = 0
    for r in reports:
        passed += len(r["results"]["passed_checks"])
        for check in r["results"]["failed_checks"]:
            failed[check["check_id"]].append(f"{check['resource']} ({check['file_path']})")
    if passed == 0:
        problems.append("checkov passed no check at all: did it read the manifests?")
    for check_id, resources in sorted(failed.items()):
        if check_id in reasons:
            print(f"skipped {check_id} on {len(resources)} resources: {reasons[check_id][:90]}...")
        else:
            problems.append(f"{check_id} failed: " + ", ".join(resources))
    for check_id in sorted(set(reasons) - set(failed)):
        problems.append(f"{check_id} is in deploy/checkov-skips.yaml but no longer fails: remove it")
    print(f"checkov: {passed} passed, {sum(map(len, failed.values()))} failed "
          f"({len(set(failed) & set(reasons))} checks skipped with reasons)")
    if problems:
        sys.exit("FAIL:\n  " + "\n  ".join(problems))


if __name__ == "__main__":
    main()
