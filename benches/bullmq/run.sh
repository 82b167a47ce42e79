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
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

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

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p"; }
# CPU seconds (user + system) a process has used so far.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
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
# Where the CPU went during the throughput runs: what limits the figure on this machine.
echo "== CPU seconds per 10,000 jobs during the throughput runs ($(nproc) cores)"
for r in $(printf '%s\n' "${!roles[@]}" | sort); do
  used=$(echo "$(cpu_of "${roles[$r]}") - ${cpu_before[$r]}" | bc -l)
  printf '  %-8s %6.2f\n' "$r" "$(echo "$used * 10000 / ($N * $RUNS)" | bc -l)"
done
used=$(awk '$1 == "producer-cpu" {s += $2 + $3} END {print s}' "$work/producer.cpu")
printf '  %-8s %6.2f\n' producer "$(echo "$used * 10000 / ($N * $RUNS)" | bc -l)"
# What Redis did per job: calls and microseconds per command (commands run inside BullMQ's Lua
# scripts count under their own names too, and their time inside evalsha's).
echo "== Redis per job during the throughput runs (calls, usec)"
redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' |
  sed -n 's/^cmdstat_\([a-z|]*\):calls=\([0-9]*\),usec=\([0-9]*\).*/\1 \2 \3/p' |
  awk -v n="$((N * RUNS))" '{printf "  %-14s %6.2f %8.2f\n", $1, $2 / n, $3 / n}' | sort -k3 -rn | head -20
redis-cli -p "$REDIS_PORT" config resetstat >/dev/null
echo "== latency: open loop at $RATE jobs/s, $RATE_JOBS jobs, completions=$COMPLETIONS"
: >"$work/lat"
for i in $(seq 1 "$RUNS"); do
  line=$(run_producer --jobs "$RATE_JOBS" --concurrency "$C" --rate "$RATE") || { echo "$line"; echo "latency run $i failed" >&2; exit 1; }
  echo "$line"; echo "$line" >>"$work/lat"
done
echo "== medians of $RUNS runs"
echo "throughput: e2e_per_s=$(field e2e_per_s <"$work/tp" | median) submit_per_s=$(field submit_per_s <"$work/tp" | median)"
echo "latency at $RATE/s: p50_ms=$(field p50_ms <"$work/lat" | median) p99_ms=$(field p99_ms <"$work/lat" | median)"
