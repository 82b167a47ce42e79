#!/usr/bin/env bash
# What the store's two hot Lua scripts (create and transition) cost, and what a changed script
# would: captures every script call of a real run (private Redis, NATS, `serve`, one echo worker,
# `loadgen` — Redis `MONITOR` records each `EVALSHA` with its arguments and each `SCRIPT LOAD`
# with its body), then replays the calls against a private Redis, once with the scripts as
# loaded and once per variant, runs interleaved so the machine's drift favours none, and prints
# the server time per job of each script (INFO commandstats) and its ratio to the original's.
#
#   benches/scripts/run.sh                               # capture 20,000 jobs, replay the originals
#   benches/scripts/run.sh transition=my.lua             # a changed transition script
#   benches/scripts/run.sh create=a.lua,transition=b.lua drop=lease+worker_instance
#
# A variant is a comma list of `create=FILE`, `transition=FILE` (a whole script: start from
# $CAPTURE/transition.lua, which the capture writes), and `drop=FIELD+FIELD` (update fields left
# out of finishing transitions, as if the host did not send them). The capture is kept in
# CAPTURE (default target/script-capture) and reused while it exists (N jobs, default 20,000).
# Needs redis-server, nats-server and python3; redis-py goes to a virtualenv in target/.
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-20000}
REPS=${REPS:-6}
CAPTURE=${CAPTURE:-$PWD/target/script-capture}
venv=$PWD/target/scripts-venv
if ! "$venv/bin/python" -c 'import redis' 2>/dev/null; then
  python3 -m venv "$venv" || { apt-get install -y -qq python3-venv && python3 -m venv "$venv"; }
  "$venv/bin/pip" install --quiet "redis==5.2.1"
fi

if [ ! -s "$CAPTURE/calls.json" ]; then
  if [ -z "${BIN:-}" ]; then
    cargo build --release --quiet
    BIN=target/release/coretex
  fi
  source benches/lib.sh
  mkdir -p "$CAPTURE"
  REDIS_PORT=$(free_port); NATS_PORT=$(free_port); HTTP=$(free_port)
  redis-server --port "$REDIS_PORT" --save "" --appendonly no --daemonize no >"$work/redis.log" 2>&1 & pids+=($!)
  nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$work/nats" >"$work/nats.log" 2>&1 & pids+=($!)
  wait_port "$REDIS_PORT"; wait_port "$NATS_PORT"
  redis-cli -p "$REDIS_PORT" monitor >"$work/monitor.txt" & pids+=($!)
  sleep 0.3
  RUST_LOG=warn $BIN serve --listen "127.0.0.1:$HTTP" --no-ui --redis-url "redis://127.0.0.1:$REDIS_PORT" \
    --nats-url "nats://127.0.0.1:$NATS_PORT" >"$work/serve.log" 2>&1 & pids+=($!)
  wait_port "$HTTP"
  RUST_LOG=warn $BIN worker --nats-url "nats://127.0.0.1:$NATS_PORT" --id capture --pool echo \
    --topic job.echo --max-parallel 50 --echo >"$work/worker.log" 2>&1 & pids+=($!)
  sleep 2
  $BIN loadgen --gateway "http://127.0.0.1:$HTTP" --jobs "$N" --concurrency 50 --batch 1000 --topic job.echo
  sleep 1
  "$venv/bin/python" benches/scripts/replay.py capture "$work/monitor.txt" "$CAPTURE"
fi
N=$N REPS=$REPS "$venv/bin/python" benches/scripts/replay.py replay "$CAPTURE" "$@"
