#!/usr/bin/env bash
# Redis memory and CPU per retained job: private Redis (no persistence) and NATS (JetStream) on
# free ports, one `coretex serve`, one `coretex worker --echo`, and `coretex loadgen` submitting N
# echo jobs (bulk submits, the shape of benches/e2e.sh) and waiting until all are terminal.
# Prints Redis's `used_memory` before and after and the bytes per job, `MEMORY USAGE` of one job's
# keys (and its fields) and of each index key (per entry), and CPU per job: Redis's own
# (used_cpu_user + used_cpu_sys), the part of it inside the scripts (`evalsha` in commandstats)
# and `serve`'s.
#
#   benches/memory.sh            # N=100000, bulk submits as fast as they go
#   benches/memory.sh 20000      # N=20000
#   RUNS=3 benches/memory.sh     # three runs, each on fresh servers, then medians
#   RATE=500 benches/memory.sh   # single submits at 500 jobs/s (open loop)
#
# Bulk submits outrun a debug build's `serve`: a backlog of PENDING jobs builds up, and Redis then
# also works for the reconciler (jobs pending past --pending-grace are published again), so its
# CPU per job measures the backlog as much as the record. Under a RATE the host keeps up (a
# debug build, at a few hundred jobs/s), and the CPU figures are those of the record's own path.
#
# BIN names the binary (default: the release build when it exists, else the debug build — this
# script builds neither). Needs redis-server, redis-cli and nats-server on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${1:-${N:-100000}}
RUNS=${RUNS:-1}
C=${C:-50}
BATCH=${BATCH:-1000}
if [ -z "${BIN:-}" ]; then
  BIN=target/release/coretex
  [ -x "$BIN" ] || BIN=target/debug/coretex
fi
[ -x "$BIN" ] || { echo "no binary at $BIN: build it first (cargo build)" >&2; exit 1; }
source benches/lib.sh

# info_field PORT SECTION NAME: one numeric field of INFO.
info_field() { redis-cli -p "$1" info "$2" | tr -d '\r' | sed -n "s/^$3:\([0-9.]*\)$/\1/p"; }
redis_cpu() { echo "$(info_field "$1" cpu used_cpu_user) + $(info_field "$1" cpu used_cpu_sys)" | bc -l; }

one_run() {
  local run=$1 rp np sp used0 used1 cpu0 cpu1 scpu0 scpu1 script_us serve mode line ok job
  rp=$(free_port); np=$(free_port); sp=$(free_port)
  redis-server --port "$rp" --save "" --appendonly no --daemonize no >"$work/redis$run.log" 2>&1 & pids+=($!)
  nats-server -js -a 127.0.0.1 -p "$np" -sd "$work/nats$run" >"$work/nats$run.log" 2>&1 & pids+=($!)
  wait_port "$rp"; wait_port "$np"
  RUST_LOG=warn $BIN serve --listen "127.0.0.1:$sp" --no-ui --redis-url "redis://127.0.0.1:$rp" \
    --nats-url "nats://127.0.0.1:$np" >"$work/serve$run.log" 2>&1 & pids+=($!)
  serve=$!
  wait_port "$sp"
  RUST_LOG=warn $BIN worker --nats-url "nats://127.0.0.1:$np" --id "mem-$run" --pool echo \
    --topic job.echo --max-parallel 50 --echo >"$work/worker$run.log" 2>&1 & pids+=($!)
  sleep 2
  used0=$(info_field "$rp" memory used_memory); cpu0=$(redis_cpu "$rp")
  redis-cli -p "$rp" config resetstat >/dev/null
  scpu0=$(cpu_of "$serve")
  if [ -n "${RATE:-}" ]; then
    mode=(--rate "$RATE")
  else
    mode=(--batch "$BATCH")
  fi
  line=$($BIN loadgen --gateway "http://127.0.0.1:$sp" --jobs "$N" --concurrency "$C" \
    "${mode[@]}" --topic job.echo --timeout 30m)
  echo "$line"
  used1=$(info_field "$rp" memory used_memory); cpu1=$(redis_cpu "$rp"); scpu1=$(cpu_of "$serve")
  script_us=$(redis-cli -p "$rp" info commandstats | tr -d '\r' |
    sed -n 's/^cmdstat_evalsha:calls=[0-9]*,usec=\([0-9]*\),.*/\1/p')
  # Each shard keeps its own indexes (`coretex:{tag}:idx:…`); a finished job is in its shard's
  # paged index (pages `coretex:{tag}:idx:done:{n}`): the count is their sum.
  ok=0
  for k in $(redis-cli -p "$rp" --scan --pattern 'coretex:{*}:idx:done:[0-9]*'); do
    ok=$((ok + $(redis-cli -p "$rp" zcard "$k")))
  done
  [ "$ok" = "$N" ] || { echo "only $ok of $N jobs finished" >&2; exit 1; }
  echo "run $run: used_memory before=$used0 after=$used1 keys=$(redis-cli -p "$rp" dbsize)"
  printf 'run %s: bytes_per_job=%.0f redis_cpu_us_per_job=%.2f script_us_per_job=%.2f serve_cpu_us_per_job=%.2f\n' \
    "$run" "$(echo "($used1 - $used0) / $N" | bc -l)" "$(echo "($cpu1 - $cpu0) * 1000000 / $N" | bc -l)" \
    "$(echo "${script_us:-0} / $N" | bc -l)" "$(echo "($scpu1 - $scpu0) * 1000000 / $N" | bc -l)" |
    tee -a "$work/figures"
  if [ "$run" = 1 ]; then
    report_redis "$rp" "$N"
    # What the keys hold (MEMORY USAGE summed over every key, by a script) against Redis's own
    # overhead (its key and expiry tables, the clients, the scripts).
    local sum
    sum=$(redis-cli -p "$rp" eval "local c, t = '0', 0
      repeat
        local r = redis.call('SCAN', c, 'COUNT', 1000); c = r[1]
        for _, k in ipairs(r[2]) do t = t + redis.call('MEMORY', 'USAGE', k, 'SAMPLES', 0) end
      until c == '0'
      return t" 0)
    printf '== per job: keys %.0f B (MEMORY USAGE summed), Redis overhead %.0f B (used_memory_overhead)\n' \
      "$(echo "$sum / $N" | bc -l)" \
      "$(echo "($(info_field "$rp" memory used_memory_overhead) - $(info_field "$rp" memory used_memory_startup)) / $N" | bc -l)"
    redis-cli -p "$rp" memory stats | tr -d '\r' | paste - - | grep -E 'overhead|keys|dataset|fragmentation\s' | sed 's/^/  /'
    # Where the bytes are: one job's keys (exactly), and each index per entry.
    job_key=$(redis-cli -p "$rp" --scan --pattern 'coretex:{*}:job:{*' | sed -n 1p)
    job=${job_key#*:job:\{}; job=${job%\}}
    echo "== one job: $job"
    redis-cli -p "$rp" --scan --pattern "coretex:*{$job}*" | while read -r k; do
      printf '  %-60s %-8s %-10s %6s B\n' "$k" "$(redis-cli -p "$rp" type "$k")" \
        "$(redis-cli -p "$rp" object encoding "$k")" "$(redis-cli -p "$rp" memory usage "$k" samples 0)"
    done
    echo "  its fields (name: bytes of the value):"
    redis-cli -p "$rp" hkeys "$job_key" |
      while read -r f; do printf '%s: %s  ' "$f" "$(redis-cli -p "$rp" hstrlen "$job_key" "$f")"; done
    echo
    echo "== the encoding of 500 jobs' hashes picked at random (listpack is the compact one)"
    redis-cli -p "$rp" --scan --pattern 'coretex:{*}:job:{*' | shuf -n 500 | while read -r k; do
      redis-cli -p "$rp" object encoding "$k"
    done | sort | uniq -c | sed 's/^/  /'
    echo "== keys other than the jobs' own (MEMORY USAGE, exact; per entry for sorted sets)"
    redis-cli -p "$rp" --scan --pattern 'coretex:*' | grep -v "{$job}" | grep -v ':job:{' |
      grep -v ':cfg:{' | grep -Ev ':idx:done:([0-9]|\{.*\}:[0-9])' | sort | while read -r k; do
        local t bytes n
        t=$(redis-cli -p "$rp" type "$k"); bytes=$(redis-cli -p "$rp" memory usage "$k" samples 0)
        case $t in zset) n=$(redis-cli -p "$rp" zcard "$k") ;; hash) n=$(redis-cli -p "$rp" hlen "$k") ;; *) n=1 ;; esac
        printf '  %-60s %-6s %8s entries %10s B %8.1f B/entry\n' "$k" "$t" "$n" "$bytes" "$(echo "$bytes / $n" | bc -l)"
      done
    echo "  (config records: $(redis-cli -p "$rp" --scan --pattern 'coretex:*:cfg:{*' | wc -l) keys)"
    echo "== the pages of the finished jobs' indexes (MEMORY USAGE, exact, summed)"
    for kind in shard tenant; do
      if [ "$kind" = shard ]; then pat='coretex:{*}:idx:done:[0-9]*'; else pat='coretex:{*}:idx:done:{*}:[0-9]*'; fi
      redis-cli -p "$rp" --scan --pattern "$pat" | {
        pages=0 entries=0 bytes=0 compact=0
        while read -r k; do
          pages=$((pages + 1))
          entries=$((entries + $(redis-cli -p "$rp" zcard "$k")))
          bytes=$((bytes + $(redis-cli -p "$rp" memory usage "$k" samples 0)))
          [ "$(redis-cli -p "$rp" object encoding "$k")" = listpack ] && compact=$((compact + 1))
        done
        printf '  %-7s %6s pages (%s listpack) %8s entries %10s B %8.1f B/entry\n' "$kind" "$pages" \
          "$compact" "$entries" "$bytes" "$(echo "$bytes / ($entries + ($entries == 0))" | bc -l)"
      }
    done
  fi
  # This run's processes end here; the next run starts on fresh servers.
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}

echo "== $N echo jobs (${RATE:+$RATE/s}${RATE:-bulk}), $RUNS run(s), $BIN, $(nproc) cores, $(redis-server --version | cut -d' ' -f3)"
for i in $(seq 1 "$RUNS"); do one_run "$i"; done
echo "== medians of $RUNS run(s)"
for f in bytes_per_job redis_cpu_us_per_job script_us_per_job serve_cpu_us_per_job; do
  printf '%s=%s ' "$f" "$(field "$f" <"$work/figures" | median)"
done
echo
