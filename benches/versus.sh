#!/usr/bin/env bash
# Coretex against BullMQ in the same minutes. This machine's speed drifts (the same build was
# seen at 12,000 and at 21,000 jobs/s within ten minutes, BullMQ at 5,800 and 7,800 a session
# apart), so two benchmarks run one after the other compare the machine's moods as much as the
# systems. Here both set-ups are up at once — Coretex as benches/e2e.sh runs it (a private Redis
# without persistence, NATS with JetStream, one `serve`, one `worker --echo --max-parallel 50`),
# BullMQ as benches/bullmq/run.sh does (its own private Redis, one worker of concurrency 50) —
# and their runs alternate in ABBA order (so a drift favours neither); each pair gives a ratio
# Coretex/BullMQ, and the medians of those ratios are the result.
#
#   benches/versus.sh                        # 20,000 jobs, 4 pairs of throughput runs and of
#                                            # open-loop latency runs (1,000 jobs/s, 5,000 jobs)
#   N=100000 PAIRS=3 benches/versus.sh
#
# Needs redis-server, nats-server, node and npm on PATH; builds the release binary first (BIN
# may name one built already) and installs the pinned bullmq on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-20000}
C=${C:-50}
BATCH=${BATCH:-1000}
PAIRS=${PAIRS:-4}
RATE=${RATE:-1000}
RATE_JOBS=${RATE_JOBS:-5000}

if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=target/release/coretex
fi
(cd benches/bullmq && { [ -d node_modules ] || npm ci --silent; })
source benches/lib.sh

# Coretex.
start_redis coretex-redis; CORETEX_REDIS=$port
start_nats nats; NATS_PORT=$port
HTTP=$(free_port)
RUST_LOG=warn $BIN serve --listen "127.0.0.1:$HTTP" --no-ui --redis-url "redis://127.0.0.1:$CORETEX_REDIS" \
  --nats-url "nats://127.0.0.1:$NATS_PORT" >"$work/serve.log" 2>&1 & pids+=($!)
wait_port "$HTTP"
RUST_LOG=warn $BIN worker --nats-url "nats://127.0.0.1:$NATS_PORT" --id versus --pool echo \
  --topic job.echo --max-parallel 50 --echo >"$work/worker.log" 2>&1 & pids+=($!)

# BullMQ (completions from QueueEvents, as loadgen's from Coretex's live feed).
start_redis bullmq-redis; BULLMQ_REDIS=$port
export REDIS_HOST=127.0.0.1 REDIS_PORT=$BULLMQ_REDIS COMPLETIONS=events
CONC=50 node benches/bullmq/bench.mjs worker >"$work/bullmq-worker.log" 2>&1 & pids+=($!)
bullmq_worker=$!
sleep 2
if ! kill -0 "$bullmq_worker" 2>/dev/null; then
  echo "the BullMQ worker exited:" >&2; cat "$work/bullmq-worker.log" >&2; exit 1
fi

# run SIDE ARGS…: one run of SIDE (coretex or bullmq); prints and records "SIDE key=value …".
run() {
  local side=$1 line
  shift
  if [ "$side" = coretex ]; then
    line=$($BIN loadgen --gateway "http://127.0.0.1:$HTTP" --topic job.echo "$@" 2>/dev/null)
  else
    line=$(node benches/bullmq/bench.mjs producer "$@" 2>/dev/null) || { echo "bullmq run failed: $line" >&2; exit 1; }
  fi
  echo "$side $line" | tee -a "$work/runs"
}

# pairs ARGS…: PAIRS pairs of runs in ABBA order.
pairs() {
  : >"$work/runs"
  for p in $(seq 1 "$PAIRS"); do
    if [ $((p % 2)) -eq 1 ]; then run bullmq "$@"; run coretex "$@"; else run coretex "$@"; run bullmq "$@"; fi
  done
}

# report KEY…: each side's median of each KEY, and the median over pairs of Coretex/BullMQ.
report() {
  python3 - "$work/runs" "$@" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
runs = {s: [dict(kv.split("=") for kv in r[2:] if "=" in kv) for r in rows if r[0] == s]
        for s in ("coretex", "bullmq")}
print(f"  {'':12} {'Coretex':>10} {'BullMQ':>10} {'ratio':>7}")
for k in sys.argv[2:]:
    c = [float(x[k]) for x in runs["coretex"]]
    b = [float(x[k]) for x in runs["bullmq"]]
    ratios = [y / x for x, y in zip(b, c) if x > 0]
    print(f"  {k:12} {statistics.median(c):10.2f} {statistics.median(b):10.2f} "
          f"{statistics.median(ratios):7.2f}")
EOF
}

echo "== throughput: $PAIRS pairs of $N jobs (C=$C, batches of $BATCH), $(nproc) cores"
run coretex --jobs 2000 --concurrency "$C" --batch "$BATCH" >/dev/null   # warm-ups
run bullmq --jobs 2000 --concurrency "$C" --batch "$BATCH" >/dev/null
pairs --jobs "$N" --concurrency "$C" --batch "$BATCH"
report e2e_per_s submit_per_s
echo "== latency: $PAIRS pairs of open-loop runs at $RATE jobs/s, $RATE_JOBS jobs"
pairs --jobs "$RATE_JOBS" --concurrency "$C" --rate "$RATE"
report p50_ms p99_ms
