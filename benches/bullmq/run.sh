#!/usr/bin/env bash
# BullMQ baseline, the same shape as benches/e2e.sh: a private Redis (no persistence) on a free
# port, one BullMQ worker (concurrency 50, a no-op processor) and bench.mjs's producer — three
# throughput runs (N jobs, addBulk batches) and three open-loop latency runs, then medians.
# Run it next to benches/e2e.sh and compare ratios: the machine's speed drifts between sessions.
#
#   benches/bullmq/run.sh                   # N=20000, C=50, batches of 1000, 3 runs
#   RUNS=5 RATE=2000 benches/bullmq/run.sh
#   COMPLETIONS=worker benches/bullmq/run.sh  # completions counted in the worker (BullMQ's best case)
#
# Needs redis-server, node and npm on PATH; installs the pinned bullmq (npm ci) on first use.
set -euo pipefail
cd "$(dirname "$0")"

N=${N:-20000}
C=${C:-50}
BATCH=${BATCH:-1000}
RUNS=${RUNS:-3}
RATE=${RATE:-1000}
RATE_JOBS=${RATE_JOBS:-5000}
CONC=${CONC:-50}
# How the producer learns of completions: events (QueueEvents, the default) or worker.
COMPLETIONS=${COMPLETIONS:-events}
case $COMPLETIONS in events | worker) ;; *) echo "COMPLETIONS must be events or worker" >&2; exit 2 ;; esac

[ -d node_modules ] || npm ci --silent
source ../lib.sh

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --save "" --appendonly no --daemonize no >"$work/redis.log" 2>&1 & pids+=($!)
declare -A roles=([redis]=$!)
wait_port "$REDIS_PORT"
export REDIS_HOST=127.0.0.1 REDIS_PORT
# Both processes read these; in worker mode the worker serves its completion records on the socket.
export COMPLETIONS COMPLETIONS_SOCKET="$work/completions.sock"

CONC=$CONC node bench.mjs worker >"$work/worker.log" 2>&1 & pids+=($!)
roles[worker]=$!
sleep 2
if ! kill -0 "${roles[worker]}" 2>/dev/null; then
  echo "the worker exited:" >&2; cat "$work/worker.log" >&2; exit 1
fi

declare -A cpu_before
for r in "${!roles[@]}"; do cpu_before[$r]=$(cpu_of "${roles[$r]}"); done

run_producer() {
  local TIMEFORMAT='producer-cpu %U %S'
  # The CPU the producer used goes to a file of its own (its own messages still reach stderr).
  { time node bench.mjs producer "$@" 2>&3; } 3>&2 2>>"$work/producer.cpu"
}

versions="bullmq $(node -p 'require("./node_modules/bullmq/package.json").version'), node $(node --version), redis $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')"
echo "== throughput: N=$N C=$C batch=$BATCH, 1 worker (concurrency $CONC), completions=$COMPLETIONS, $(nproc) cores; $versions"
: >"$work/tp"
for i in $(seq 1 "$RUNS"); do
  line=$(run_producer --jobs "$N" --concurrency "$C" --batch "$BATCH") || { echo "$line"; echo "throughput run $i failed" >&2; exit 1; }
  echo "$line"; echo "$line" >>"$work/tp"
done
# Where the CPU went during the throughput runs (what limits the figure), and what Redis did.
report_cpu "$((N * RUNS))" producer "$work/producer.cpu"
report_redis "$REDIS_PORT" "$((N * RUNS))"
echo "== latency: open loop at $RATE jobs/s, $RATE_JOBS jobs, completions=$COMPLETIONS"
: >"$work/lat"
for i in $(seq 1 "$RUNS"); do
  line=$(run_producer --jobs "$RATE_JOBS" --concurrency "$C" --rate "$RATE") || { echo "$line"; echo "latency run $i failed" >&2; exit 1; }
  echo "$line"; echo "$line" >>"$work/lat"
done
echo "== medians of $RUNS runs"
echo "throughput: e2e_per_s=$(field e2e_per_s <"$work/tp" | median) submit_per_s=$(field submit_per_s <"$work/tp" | median)"
echo "latency at $RATE/s: p50_ms=$(field p50_ms <"$work/lat" | median) p99_ms=$(field p99_ms <"$work/lat" | median)"
