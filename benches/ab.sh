#!/usr/bin/env bash
# Compares two builds end to end on a machine whose speed drifts: two whole environments side by
# side (each its own private Redis without persistence, NATS with JetStream, `serve` and one
# `worker --echo --max-parallel 50`), loadgen runs alternated between them a few seconds apart in
# ABBA order (so a drift favours neither), and the median of the per-pair ratios B/A of
# throughput, latency and CPU per job of every process.
#
#   benches/ab.sh OLD_BINARY NEW_BINARY            # 8 pairs of 20,000-job bulk runs
#   PAIRS=12 N=40000 benches/ab.sh OLD NEW
#   RATE=1000 benches/ab.sh OLD NEW                # open-loop latency runs (RATE_JOBS=5000 each)
#   B_ENV="TOKIO_WORKER_THREADS=1" benches/ab.sh BIN BIN   # one build, two environments
#
# A_ENV / B_ENV are variable assignments given to every process of that side (serve, worker,
# loadgen), so a setting can be compared with one binary.
#
# Build each binary with `cargo build --release` and copy it aside first (both builds share
# target/release/coretex). Needs redis-server, nats-server and python3 on PATH.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 OLD_BINARY NEW_BINARY" >&2; exit 2; }
declare -A bin=([A]=$(realpath "$1") [B]=$(realpath "$2"))
PAIRS=${PAIRS:-8}
N=${N:-20000}
C=${C:-50}
BATCH=${BATCH:-1000}
RATE=${RATE:-}
RATE_JOBS=${RATE_JOBS:-5000}
declare -A envs=([A]="${A_ENV:-}" [B]="${B_ENV:-}")
if [ -n "$RATE" ]; then
  N=$RATE_JOBS
  mode=(--rate "$RATE")
else
  mode=(--batch "$BATCH")
fi

cd "$(dirname "$0")/.."
source benches/lib.sh

declare -A pid gateway
for s in A B; do
  redis=$(free_port); nats=$(free_port); http=$(free_port)
  redis-server --port "$redis" --save "" --appendonly no >"$work/$s.redis.log" 2>&1 & pids+=($!)
  pid[$s.redis]=$!
  nats-server -js -a 127.0.0.1 -p "$nats" -sd "$work/$s.nats" >"$work/$s.nats.log" 2>&1 & pids+=($!)
  pid[$s.nats]=$!
  wait_port "$redis"; wait_port "$nats"
  env ${envs[$s]} RUST_LOG=warn ${bin[$s]} serve --listen "127.0.0.1:$http" --no-ui --redis-url "redis://127.0.0.1:$redis" \
    --nats-url "nats://127.0.0.1:$nats" >"$work/$s.serve.log" 2>&1 & pids+=($!)
  pid[$s.serve]=$!
  wait_port "$http"
  env ${envs[$s]} RUST_LOG=warn ${bin[$s]} worker --nats-url "nats://127.0.0.1:$nats" --id "ab-$s" --pool echo \
    --topic job.echo --max-parallel 50 --echo >"$work/$s.worker.log" 2>&1 & pids+=($!)
  pid[$s.worker]=$!
  gateway[$s]="http://127.0.0.1:$http"
done
sleep 2

# CPU ticks (user + system) a process has used so far.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
# One loadgen run against side $1; appends "side key=value …" (CPU as µs per job) to $work/runs.
run() {
  local s=$1 r line
  declare -A before
  for r in serve redis nats worker; do before[$r]=$(ticks "${pid[$s.$r]}"); done
  local TIMEFORMAT='loadgen-cpu %U %S'
  line=$({ time env ${envs[$s]} "${bin[$s]}" loadgen --gateway "${gateway[$s]}" --jobs "$N" \
    --concurrency "$C" "${mode[@]}" --topic job.echo 2>/dev/null; } 2>"$work/time")
  local out="$s"
  for f in e2e_per_s p50_ms p99_ms; do out+=" $f=$(sed -n "s/.* $f=\([0-9.]*\).*/\1/p" <<<"$line")"; done
  for r in serve redis nats worker; do
    out+=" $r=$(( ($(ticks "${pid[$s.$r]}") - ${before[$r]}) * 1000000 / hz / N ))"
  done
  out+=" loadgen=$(awk -v n="$N" '$1 == "loadgen-cpu" {printf "%d", ($2 + $3) * 1e6 / n}' "$work/time")"
  echo "$out" | tee -a "$work/runs"
}

run A >/dev/null; run B >/dev/null   # warm-up, not counted
: >"$work/runs"
for p in $(seq 1 "$PAIRS"); do
  if [ $((p % 2)) -eq 1 ]; then run A; run B; else run B; run A; fi
done

echo "== medians over $PAIRS pairs of ${RATE:+open-loop }runs of $N jobs${RATE:+ at $RATE/s}" \
  "(A=${bin[A]} ${envs[A]}, B=${bin[B]} ${envs[B]}; CPU in µs per job)"
python3 - "$work/runs" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
side = {s: [dict(kv.split("=") for kv in r[1:]) for r in rows if r[0] == s] for s in "AB"}
keys = list(side["A"][0])
print(f"{'':10} {'A':>10} {'B':>10} {'B/A':>7}")
for k in keys:
    a = [float(x[k]) for x in side["A"]]
    b = [float(x[k]) for x in side["B"]]
    ratios = [y / x for x, y in zip(a, b) if x > 0]
    print(f"{k:10} {statistics.median(a):10.2f} {statistics.median(b):10.2f} "
          f"{statistics.median(ratios):7.3f}")
EOF
