#!/usr/bin/env python3
"""Makes the calls the demo story does not (an outcome, a refused collection, a withheld read),
waits for Prometheus to scrape them, then evaluates every dashboard query and every alert
expression (as Prometheus loaded it, its final comparison removed) and fails if any returns no
series. Called by scripts/observability-check.sh; standard library and grpcurl only."""
import argparse
import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request


def grpcurl(address, token, method, body):
    out = subprocess.run(
        ["grpcurl", "-plaintext", "-H", f"authorization: Bearer {token}", "-d", json.dumps(body),
         address, method],
        capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"FAIL: {method}: {out.stderr or out.stdout}")
    return json.loads(out.stdout or "{}")


def traffic(args):
    who = {"subject_id": f"obs-{int(time.time())}"}
    profiled = "personalize.content.profiled"
    grpcurl(args.consent, "dev-preference-center", "consentgate.consent.v1.ConsentService/Grant", {
        "target": {"subject": who, "purpose": profiled}, "consent_type": "CONSENT_TYPE_EXPLICIT",
        "notice_version": "2.0", "idempotency_key": f"{who['subject_id']}-g"})
    events = {"subject": who, "purpose": profiled,
              "events": [{"kind": "EVENT_KIND_PRODUCT_VIEW", "item_id": "sku-00001"}]}
    grpcurl(args.profile, "dev-collector", "consentgate.profile.v1.ProfileService/RecordEvents", events)
    refused = grpcurl(args.profile, "dev-collector",
                      "consentgate.profile.v1.ProfileService/RecordEvents",
                      dict(events, purpose="analytics.reporting"))
    if refused["results"][0].get("accepted"):
        sys.exit("FAIL: a collection without consent was accepted")
    grpcurl(args.consent, "dev-preference-center", "consentgate.consent.v1.ConsentService/Withdraw", {
        "target": {"subject": who, "purpose": profiled}, "idempotency_key": f"{who['subject_id']}-w"})
    time.sleep(0.5)
    grpcurl(args.profile, "dev-recommendation-service",
            "consentgate.profile.v1.ProfileService/ListEvents", {"subject": who, "purpose": profiled})
    rec = grpcurl(args.recommendation, "dev-recommendation-service",
                  "consentgate.recommendation.v1.RecommendationService/Recommend",
                  {"context": {"device": "mobile", "region": "EU"}, "n": 3})
    grpcurl(args.recommendation, "dev-recommendation-service",
            "consentgate.recommendation.v1.RecommendationService/RecordOutcome",
            {"recommendation_id": rec["recommendationId"], "kind": "OUTCOME_KIND_CLICK"})


def query(prometheus, expr):
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        answer = json.load(r)
    if answer.get("status") != "success":
        sys.exit(f"FAIL: {expr}: {answer}")
    return answer["data"]["result"]


def rule_queries(prometheus):
    with urllib.request.urlopen(f"{prometheus}/api/v1/rules", timeout=10) as r:
        groups = json.load(r)["data"]["groups"]
    for group in groups:
        for rule in group["rules"]:
            # The alert fires on a comparison; its left side must have series whether it fires or not.
            expr = re.sub(r"\s*(==|!=|>=|<=|>|<)\s*[0-9.]+\s*$", "", rule["query"].strip())
            yield rule["name"], expr


def main():
    p = argparse.ArgumentParser()
    for name in ("consent", "profile", "recommendation", "prometheus", "dashboard", "rules"):
        p.add_argument(f"--{name}", required=True)
    args = p.parse_args()
    traffic(args)
    # Wait for Prometheus to be up and to hold a few scrapes after the traffic (rates need two).
    deadline = time.time() + 60
    while True:
        try:
            if len(query(args.prometheus, 'up == 1')) == 3:
                break
        except OSError:
            pass
        if time.time() > deadline:
            sys.exit("FAIL: Prometheus did not scrape all three services")
        time.sleep(0.5)
    time.sleep(6)
    with open(args.dashboard) as f:
        dashboard = json.load(f)
    queries = [(panel["title"], t["expr"]) for panel in dashboard["panels"]
               for t in panel.get("targets", [])]
    rules = list(rule_queries(args.prometheus))
    if len(rules) < 8:
        sys.exit(f"FAIL: Prometheus loaded {len(rules)} alert rules, expected every rule of {args.rules}")
    empty = [(name, expr) for name, expr in queries + rules if not query(args.prometheus, expr)]
    for name, expr in empty:
        print(f"no series: {name}: {expr}", file=sys.stderr)
    if empty:
        sys.exit(f"FAIL: {len(empty)} of {len(queries) + len(rules)} queries returned no series")
    print(f"observability: {len(queries)} dashboard queries and {len(rules)} alert expressions "
          "all return series")


if __name__ == "__main__":
    main()
