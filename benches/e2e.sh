#!/usr/bin/env bash
# End-to-end throughput and latency: private Redis (no persistence) and NATS (JetStream) on free
# ports, one `coretex serve`, one `coretex worker --echo --max-parallel 50`, and `coretex loadgen`
# — three throughput runs (N jobs, bulk submits) and three open-loop latency runs, then medians.
#
#   benches/e2e.sh                 # N=20000, C=50, 3 runs, 1 serve + 1 worker
#   REPLICAS=2 WORKERS=2 benches/e2e.sh    # scale-out: two serves (loadgen alternates), two workers
#
# Needs redis-server and nats-server on PATH; builds the release binary first.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-20000}
C=${C:-50}
BATCH=${BATCH:-1000}
RUNS=${RUNS:-3}
RATE=${RATE:-1000}
RATE_JOBS=${RATE_JOBS:-5000}
REPLICAS=${REPLICAS:-1}
WORKERS=${WORKERS:-1}

# BIN may name a binary built already; otherwise the release build.
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=target/release/coretex
fi
source benches/lib.sh

start_redis redis; REDIS_PORT=$port
declare -A roles=([redis]=$pid)
start_nats nats; NATS_PORT=$port
roles[nats]=$pid

gateways=()
for r in $(seq 1 "$REPLICAS"); do
  port=$(free_port)
  RUST_LOG=warn $BIN serve --listen "127.0.0.1:$port" --no-ui --redis-url "redis://127.0.0.1:$REDIS_PORT" \
    --nats-url "nats://127.0.0.1:$NATS_PORT" >"$work/serve$r.log" 2>&1 & pids+=($!)
  roles[serve$r]=$!
  wait_port "$port"
  gateways+=("http://127.0.0.1:$port")
done
for w in $(seq 1 "$WORKERS"); do
  RUST_LOG=warn $BIN worker --nats-url "nats://127.0.0.1:$NATS_PORT" --id "bench-$w" --pool echo \
    --topic job.echo --max-parallel 50 --echo >"$work/worker$w.log" 2>&1 & pids+=($!)
  roles[worker$w]=$!
done
sleep 2

declare -A cpu_before
for r in "${!roles[@]}"; do cpu_before[$r]=$(cpu_of "${roles[$r]}"); done

run_loadgen() {
  # With several replicas, the submitters spread over all their gateways; every replica shares
  # the scheduling and result work through Redis and NATS either way.
  shift
  local IFS=,
  local TIMEFORMAT='loadgen-cpu %U %S'
  # The CPU loadgen used goes to a file of its own (its own messages still reach stderr).
  { time $BIN loadgen --gateway "${gateways[*]}" "$@" 2>&3; } 3>&2 2>>"$work/loadgen.cpu"
}

echo "== throughput: N=$N C=$C batch=$BATCH, $REPLICAS serve, $WORKERS worker(s), $(nproc) cores"
: >"$work/tp"
for i in $(seq 1 "$RUNS"); do
  declare -A run_before
  for r in "${!roles[@]}"; do run_before[$r]=$(cpu_of "${roles[$r]}"); done
  line=$(run_loadgen "$i" --jobs "$N" --concurrency "$C" --batch "$BATCH" --topic job.echo)
  echo "$line"; echo "$line" >>"$work/tp"
  # This run's CPU per 10,000 jobs, so a drift from run to run (the store filling up) shows.
  per_run="  cpu/10k:"
  for r in $(printf '%s\n' "${!roles[@]}" | sort); do
    per_run+=" $r=$(echo "($(cpu_of "${roles[$r]}") - ${run_before[$r]}) * 10000 / $N" | bc -l | xargs printf '%.2f')"
  done
  echo "$per_run"
done
# Where the CPU went during the throughput runs (what limits the figure), and what Redis did.
report_cpu "$((N * RUNS))" loadgen "$work/loadgen.cpu"
report_redis "$REDIS_PORT" "$((N * RUNS))"
echo "== latency: open loop at $RATE jobs/s, $RATE_JOBS jobs"
: >"$work/lat"
for i in $(seq 1 "$RUNS"); do
  line=$(run_loadgen "$i" --jobs "$RATE_JOBS" --concurrency "$C" --rate "$RATE" --topic job.echo)
  echo "$line"; echo "$line" >>"$work/lat"
done
echo "== medians of $RUNS runs"
echo "throughput: e2e_per_s=$(field e2e_per_s <"$work/tp" | median) submit_per_s=$(field submit_per_s <"$work/tp" | median)"
echo "latency at $RATE/s: p50_ms=$(field p50_ms <"$work/lat" | median) p99_ms=$(field p99_ms <"$work/lat" | median)"
