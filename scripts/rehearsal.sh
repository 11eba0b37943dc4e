#!/usr/bin/env bash
# The rehearsal (docs/operations.md, "The rehearsal"): the prod overlay's shape on this machine,
# without a cluster, through failures. Renders deploy/overlays/prod with kubectl, starts
# 3 consent, 2 profile and 1 recommendation replica of the real binary with the manifests'
# environment (as the image's user when run as root), behind round-robin Services, on the
# PostgreSQL server CONSENTGATE_TEST_POSTGRES_URL names (default: 127.0.0.1:5432, user postgres),
# in databases of its own that it drops afterwards. While a mixed load runs it kills replicas,
# restarts every Deployment, cuts PostgreSQL and partitions the consent Service, then prints
# what happened and what it checked. It is the test `cargo test --test rehearsal`, which CI runs
# with the rest of the suite.
#   scripts/rehearsal.sh              # debug build, as CI runs it
#   scripts/rehearsal.sh --release    # the same on a release build
set -euo pipefail
cd "$(dirname "$0")/.."

export CONSENTGATE_TEST_POSTGRES_URL="${CONSENTGATE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
command -v kubectl >/dev/null \
  || { echo "FAIL: kubectl (>= 1.30, with its built-in kustomize) renders deploy/ for the rehearsal" >&2; exit 1; }
if command -v pg_isready >/dev/null && ! pg_isready -d "$CONSENTGATE_TEST_POSTGRES_URL" -q; then
  echo "FAIL: PostgreSQL at $CONSENTGATE_TEST_POSTGRES_URL is not accepting connections" >&2
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "note: not root, so the pods run as $(id -un), not as the image's UID (the report says so too)"
fi

profile=()
[ "${1:-}" = "--release" ] && profile=(--release)
exec cargo test "${profile[@]}" --test rehearsal -- --nocapture --test-threads=1
