#!/usr/bin/env python3
"""Writes grafana-dashboard.json: the suite's Grafana dashboard, generated so that every panel
has the same shape and every query is listed in one place (scripts/observability-check.sh
evaluates each against a Prometheus that scraped a running suite).

Run: python3 deploy/observability/dashboard.py > deploy/observability/grafana-dashboard.json
"""
import json

DS = {"type": "prometheus", "uid": "${datasource}"}

# (row title, [(panel title, unit, [(legend, expr)])])
ROWS = [
    ("Withdrawal enforcement", [
        ("Withdrawal propagation to each gate (p50, p99)", "s", [
            ("p99 {{job}} {{instance}}", 'histogram_quantile(0.99, sum by (job, instance, le) (rate(consentgate_gate_change_propagation_seconds_bucket{kind="withdraw"}[5m])))'),
            ("p50 {{job}} {{instance}}", 'histogram_quantile(0.5, sum by (job, instance, le) (rate(consentgate_gate_change_propagation_seconds_bucket{kind="withdraw"}[5m])))'),
        ]),
        ("Change-stream heartbeat age", "s", [
            ("{{job}} {{instance}}", "max by (job, instance) (consentgate_gate_heartbeat_age_seconds)"),
        ]),
        ("Lease live (cached allows served)", "none", [
            ("{{job}} {{instance}}", "min by (job, instance) (consentgate_gate_lease_live)"),
        ]),
        ("Lease lapses and stream reconnects", "short", [
            ("lapses {{job}} {{instance}}", "sum by (job, instance) (increase(consentgate_gate_lease_lapses_total[5m]))"),
            ("reconnects {{job}} {{instance}}", "sum by (job, instance) (increase(consentgate_gate_stream_reconnects_total[5m]))"),
        ]),
        ("Fail-closed denials", "reqps", [
            ("{{job}} {{instance}}", "sum by (job, instance) (rate(consentgate_gate_fail_closed_total[5m]))"),
        ]),
        ("Revisions behind the consent service", "short", [
            ("{{job}} {{instance}}", "max by (job, instance) (consentgate_gate_stream_lag_revisions)"),
        ]),
    ]),
    ("RPC", [
        ("Calls by method", "reqps", [
            ("{{rpc_method}}", "sum by (rpc_method) (rate(rpc_server_call_duration_seconds_count[5m]))"),
        ]),
        ("p99 latency by method", "s", [
            ("{{rpc_method}}", "histogram_quantile(0.99, sum by (rpc_method, le) (rate(rpc_server_call_duration_seconds_bucket[5m])))"),
        ]),
        ("Calls by status code", "reqps", [
            ("{{rpc_response_status_code}}", "sum by (rpc_response_status_code) (rate(rpc_server_call_duration_seconds_count[5m]))"),
        ]),
        ("In flight", "short", [
            ("{{job}}", "sum by (job) (rpc_server_active_requests)"),
        ]),
    ]),
    ("Consent", [
        ("Decisions by verdict and reason", "reqps", [
            ("{{verdict}} {{reason}}", "sum by (verdict, reason) (rate(consentgate_consent_decisions_total[5m]))"),
        ]),
        ("Personalization level allowed", "reqps", [
            ("{{level}}", "sum by (level) (rate(consentgate_consent_personalization_levels_total[5m]))"),
        ]),
        ("Consent writes by kind", "reqps", [
            ("{{kind}} {{outcome}}", "sum by (kind, outcome) (rate(consentgate_consent_writes_total[5m]))"),
        ]),
        ("Durable commit (p99)", "s", [
            ("{{instance}}", "histogram_quantile(0.99, sum by (instance, le) (rate(consentgate_consent_commit_duration_seconds_bucket[5m])))"),
        ]),
        ("Ledger entries and unsigned entries", "short", [
            ("entries", "max(consentgate_consent_ledger_entries)"),
            ("unsigned", "max(consentgate_consent_ledger_unsigned_entries)"),
        ]),
    ]),
    ("Profile", [
        ("Gated reads by outcome", "reqps", [
            ("{{purpose}} {{outcome}}", "sum by (purpose, outcome) (rate(consentgate_profile_reads_total[5m]))"),
        ]),
        ("Items withheld by reason", "short", [
            ("{{reason}}", "sum by (reason) (increase(consentgate_profile_redacted_items_total[5m]))"),
        ]),
        ("Collection refused by reason", "short", [
            ("{{reason}}", "sum by (reason) (increase(consentgate_profile_collection_refusals_total[5m]))"),
        ]),
        ("Access log: queue and append (p99)", "s", [
            ("append p99 {{instance}}", "histogram_quantile(0.99, sum by (instance, le) (rate(consentgate_profile_access_log_append_duration_seconds_bucket[5m])))"),
            ("queue {{instance}}", "max by (instance) (consentgate_profile_access_log_queue_depth)"),
        ]),
        ("Erasure requests by state", "short", [
            ("{{state}}", "sum by (state) (increase(consentgate_profile_erasure_requests_total[1h]))"),
        ]),
        ("Gate cache", "reqps", [
            ("{{job}} {{result}}", "sum by (job, result) (rate(consentgate_gate_cache_lookups_total[5m]))"),
        ]),
    ]),
    ("Recommendation", [
        ("Answers by tier", "reqps", [
            ("{{tier}}", "sum by (tier) (rate(consentgate_recommendation_answers_total[5m]))"),
        ]),
        ("Model size (subjects learned from)", "short", [
            ("{{instance}}", "max by (instance) (consentgate_recommendation_model_subjects)"),
        ]),
        ("Unlearned subjects by cause", "short", [
            ("{{cause}}", "sum by (cause) (increase(consentgate_recommendation_unlearned_subjects_total[1h]))"),
        ]),
        ("Outcomes by tier", "short", [
            ("{{tier}} {{kind}}", "sum by (tier, kind) (increase(consentgate_recommendation_outcomes_total[1h]))"),
        ]),
    ]),
]


def dashboard():
    panels, panel_id, y = [], 1, 0
    for row_title, row_panels in ROWS:
        panels.append({"type": "row", "title": row_title, "id": panel_id, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        panel_id += 1
        y += 1
        for i, (title, unit, targets) in enumerate(row_panels):
            panels.append({
                "type": "timeseries",
                "title": title,
                "id": panel_id,
                "datasource": DS,
                "gridPos": {"h": 8, "w": 8, "x": (i % 3) * 8, "y": y + (i // 3) * 8},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                            "tooltip": {"mode": "multi"}},
                "targets": [{"datasource": DS, "expr": expr, "legendFormat": legend,
                             "refId": chr(ord("A") + j)}
                            for j, (legend, expr) in enumerate(targets)],
            })
            panel_id += 1
        y += ((len(row_panels) + 2) // 3) * 8
    return {
        "title": "consentgate",
        "uid": "consentgate-suite",
        "description": "The consent, profile and recommendation services; the first row shows how fast withdrawals are enforced.",
        "tags": ["consentgate"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": [{
            "name": "datasource", "type": "datasource", "query": "prometheus",
            "label": "Prometheus", "current": {}, "hide": 0,
        }]},
        "annotations": {"list": []},
        "panels": panels,
    }


if __name__ == "__main__":
    print(json.dumps(dashboard(), indent=2))
