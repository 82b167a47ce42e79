#!/usr/bin/env bash
# Schemathesis against the API's own OpenAPI document (issue 13): starts `coretex serve` on the
# embedded backend on a free port, generates requests from /api/v1/openapi.json (valid ones and,
# as schemathesis does, invalid ones) and checks every answer: no 5xx, every status, content
# type, header and body as the document says, data the document allows accepted and data it
# forbids refused. The example count is bounded so the run takes a few minutes on a 2-core
# machine; `ST_MAX_EXAMPLES` changes it.
#
# The virtualenv lives in target/ (made on first use, kept like the build cache).
# `CORETEX_BIN` runs another build of coretex instead of building this tree's.
set -euo pipefail
cd "$(dirname "$0")/../.."

venv=$PWD/target/schemathesis-venv
version=4.32.5
if ! "$venv/bin/st" --version 2>/dev/null | grep -q "$version"; then
  # Debian's python3 makes venvs only with python3-venv installed.
  python3 -m venv "$venv" || { apt-get install -y -qq python3-venv && python3 -m venv "$venv"; }
  "$venv/bin/pip" install --quiet "schemathesis==$version"
fi

bin=${CORETEX_BIN:-}
if [ -z "$bin" ]; then
  cargo build --quiet --bin coretex
  bin=target/debug/coretex
fi
log=$(mktemp)
cache=$(mktemp -d)
CORETEX_PLUGIN_CACHE_DIR="$cache" "$bin" serve --listen 127.0.0.1:0 --no-ui >"$log" 2>&1 &
serve=$!
trap 'kill "$serve" 2>/dev/null || true; wait "$serve" 2>/dev/null || true; rm -rf "$log" "$cache"' EXIT

base=""
for _ in $(seq 1 600); do
  base=$(grep -o 'coretex listening on http://[0-9.:]*' "$log" | sed 's/coretex listening on //' || true)
  [ -n "$base" ] && break
  kill -0 "$serve" 2>/dev/null || { cat "$log"; echo "coretex serve exited" >&2; exit 1; }
  sleep 0.1
done
[ -n "$base" ] || { cat "$log"; echo "coretex serve did not start" >&2; exit 1; }

# The live stream never ends by design; it is left out. Run from target/, where schemathesis
# keeps its cache.
cd target
"$venv/bin/st" --no-color --config-file ../tests/schemathesis/schemathesis.toml run "$base/api/v1/openapi.json" \
  --url "$base" \
  --checks all \
  --exclude-checks ignored_auth \
  --exclude-path /api/v1/stream \
  --phases examples,coverage,fuzzing \
  --max-examples "${ST_MAX_EXAMPLES:-100}" \
  --seed 13 \
  --workers 1 \
  --request-timeout 10 \
  --suppress-health-check all
