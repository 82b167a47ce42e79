#!/usr/bin/env bash
# Scale-out, shown (issue 17): a local Redis Cluster (3 masters, a replica each) and a 3-node
# NATS cluster (JetStream, the worker-event stream on all three), 2 `coretex serve` replicas and
# 2 echo workers, every process on free ports.
#
#   1. N jobs (default 100,000) through both replicas: every job succeeds, and the keys spread
#      over the masters (each within ±20% of an even share).
#   2. KILL_N jobs (default 50,000) again, and a second into them one Redis master and one NATS node
#      are killed (SIGKILL): the master's replica is promoted, the hosts and workers move to the
#      surviving NATS nodes, and no accepted job is lost (a submit refused while a slot had no
#      master is not accepted, and is counted as rejected).
#   3. What each process spent per job in phase 1 (CPU µs), for the scaling model in the README.
#
# On two cores this proves correctness and balance, not speed. BIN may name a built binary;
# otherwise the release build. Needs redis-server, redis-cli and nats-server on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-100000}
KILL_N=${KILL_N:-50000}
C=${C:-50}
BATCH=${BATCH:-1000}
SHARDS=${SHARDS:-12}
# What phase 2 kills: `both` (a Redis master and a NATS node), `redis` or `nats`.
KILL=${KILL:-both}
TIMEOUT=${TIMEOUT:-10m}
# Phase 2's loadgen stops waiting sooner: its completion feed may miss events while its host
# moves NATS nodes, and the store is asked afterwards anyway.
KILL_TIMEOUT=${KILL_TIMEOUT:-2m}

if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=target/release/coretex
fi
source benches/lib.sh

# --- Redis Cluster: 6 nodes, each with a cluster-bus port of its own (port + 10000 may not exist
# for an ephemeral port).
redis_ports=()
for i in 1 2 3 4 5 6; do
  p=$(free_port); b=$(free_port)
  mkdir -p "$work/redis$i"
  redis-server --port "$p" --cluster-port "$b" --bind 127.0.0.1 --cluster-enabled yes \
    --cluster-config-file nodes.conf --cluster-node-timeout 1000 --save "" --appendonly no \
    --dir "$work/redis$i" >"$work/redis$i.log" 2>&1 & pids+=($!)
  redis_ports+=("$p")
done
for p in "${redis_ports[@]}"; do wait_port "$p"; done
nodes=(); for p in "${redis_ports[@]}"; do nodes+=("127.0.0.1:$p"); done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$work/cluster-create.log"
cluster_ok() {
  for p in "${redis_ports[@]}"; do
    redis-cli -p "$p" ping >/dev/null 2>&1 || continue
    redis-cli -p "$p" cluster info | grep -q 'cluster_state:ok' || return 1
  done
}
for _ in $(seq 1 300); do cluster_ok && break; sleep 0.1; done
cluster_ok || { echo "the Redis Cluster never came up" >&2; exit 1; }
# A replica that has not synced yet may not take over from its master (Redis finds it too
# stale), and would have nothing to take over with.
replicas_synced() {
  for p in "${redis_ports[@]}"; do
    info=$(redis-cli -p "$p" info replication | tr -d '\r')
    echo "$info" | grep -q '^role:slave' || continue
    echo "$info" | grep -q '^master_link_status:up' || return 1
  done
}
for _ in $(seq 1 300); do replicas_synced && break; sleep 0.1; done
replicas_synced || { echo "the Redis Cluster's replicas never synced" >&2; exit 1; }
masters() {
  for p in "${redis_ports[@]}"; do
    redis-cli -p "$p" role 2>/dev/null | head -1 | grep -q '^master$' && echo "$p"
  done
  return 0
}
redis_url="redis+cluster://$(IFS=,; echo "${nodes[*]}")"

# --- NATS cluster: 3 nodes routed to each other.
nats_ports=(); route_ports=()
for i in 1 2 3; do nats_ports+=("$(free_port)"); route_ports+=("$(free_port)"); done
routes=$(for r in "${route_ports[@]}"; do printf 'nats-route://127.0.0.1:%s,' "$r"; done)
routes=${routes%,}
nats_pids=()
for i in 0 1 2; do
  cat >"$work/nats$i.conf" <<EOF
server_name: n$i
listen: 127.0.0.1:${nats_ports[$i]}
jetstream { store_dir: "$work/nats$i" }
cluster { name: coretex-bench, listen: 127.0.0.1:${route_ports[$i]}, routes: [$routes] }
EOF
  nats-server -c "$work/nats$i.conf" >"$work/nats$i.log" 2>&1 & pids+=($!)
  nats_pids+=($!)
done
for p in "${nats_ports[@]}"; do wait_port "$p"; done
nats_seeds=$(for p in "${nats_ports[@]}"; do printf 'nats://127.0.0.1:%s,' "$p"; done)
nats_seeds=${nats_seeds%,}

# --- Two hosts (each seeded with every NATS node) and two workers.
declare -A roles
gateways=()
for r in 1 2; do
  port=$(free_port)
  # The stream needs a JetStream leader: a host that starts before the election ends, and
  # exits, is started again.
  pid=
  for _ in $(seq 1 600); do
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
      RUST_LOG=${SERVE_LOG:-warn} $BIN serve --listen "127.0.0.1:$port" --no-ui --redis-url "$redis_url" \
        --redis-shards "$SHARDS" --redis-wait-replicas 1 --nats-url "$nats_seeds" \
        --nats-stream-replicas 3 >>"$work/serve$r.log" 2>&1 & pid=$!
    fi
    (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break
    sleep 0.1
  done
  pids+=("$pid"); roles[serve$r]=$pid
  wait_port "$port"
  gateways+=("http://127.0.0.1:$port")
done
for w in 1 2; do
  RUST_LOG=warn $BIN worker --nats-url "$nats_seeds" --id "cluster-$w" --pool echo \
    --topic job.echo --max-parallel 50 --echo >"$work/worker$w.log" 2>&1 & pids+=($!)
  roles[worker$w]=$!
done
sleep 2
i=1; for p in $(masters); do roles[redis$i]=$(redis-cli -p "$p" info server | tr -d '\r' | sed -n 's/^process_id://p'); i=$((i + 1)); done
i=1; for pid in "${nats_pids[@]}"; do roles[nats$i]=$pid; i=$((i + 1)); done
declare -A cpu_before
for r in "${!roles[@]}"; do cpu_before[$r]=$(cpu_of "${roles[$r]}"); done

loadgen() { $BIN loadgen --gateway "$(IFS=,; echo "${gateways[*]}")" --concurrency "$C" \
  --batch "$BATCH" --topic job.echo --timeout "$TIMEOUT" "$@"; }

echo "== 1. $N jobs: 3 Redis masters (+3 replicas, $SHARDS shards), 3 NATS nodes, 2 serve, 2 workers, $(nproc) cores"
line=$(loadgen --jobs "$N"); echo "$line"
ok=$(echo "$line" | field ok)
[ "$ok" = "$N" ] || { echo "FAIL: $ok of $N jobs succeeded" >&2; exit 1; }
echo "== CPU µs per job in phase 1 (each process; the Redis masters as they were)"
for r in $(printf '%s\n' "${!roles[@]}" | sort); do
  used=$(echo "$(cpu_of "${roles[$r]}") - ${cpu_before[$r]}" | bc -l)
  printf '  %-8s %7.1f\n' "$r" "$(echo "$used * 1000000 / $N" | bc -l)"
done
echo "== keys per master (each job's record; dbsize)"
total=0; counts=()
for p in $(masters); do n=$(redis-cli -p "$p" dbsize); counts+=("$n"); total=$((total + n)); done
even=$((total / ${#counts[@]}))
for n in "${counts[@]}"; do
  printf '  %8d keys  %+6.1f%% of an even share\n' "$n" "$(echo "($n - $even) * 100 / $even" | bc -l)"
  dev=$(echo "($n - $even) * 100 / $even" | bc -l | tr -d -)
  (( $(echo "$dev <= 20" | bc) )) || { echo "FAIL: a master is more than 20% off an even share" >&2; exit 1; }
done

echo "== 2. $KILL_N jobs; a Redis master and a NATS node killed under load"
TIMEOUT=$KILL_TIMEOUT loadgen --jobs "$KILL_N" >"$work/kill.out" 2>"$work/kill.err" & lg=$!
sleep 1
victim=$(masters | sed -n 1p)
if [ "$KILL" != nats ]; then
  echo "  killing the Redis master on port $victim"
  kill -9 "$(redis-cli -p "$victim" info server | tr -d '\r' | sed -n 's/^process_id://p')"
fi
if [ "$KILL" != redis ]; then
  echo "  killing NATS node n0"
  kill -9 "${nats_pids[0]}"
fi
wait "$lg" || true
line=$(cat "$work/kill.out"); echo "$line"
echo "  $(date +%T) loadgen done"
for _ in $(seq 1 150); do [ "$(masters | wc -l)" = 3 ] && break; sleep 0.1; done
echo "  masters now: $(masters | wc -l) (a replica promoted)"
[ "$(masters | wc -l)" = 3 ] || { echo "FAIL: no replica took the dead master's place" >&2; exit 1; }
rejected=$(echo "$line" | field rejected); rejected=${rejected:-0}
# loadgen counts a job it did not see finish within its wait as lost; the store says whether it
# is: every accepted job of both phases must end SUCCEEDED (jobs whose dispatch went down with
# the NATS node finish once redelivered).
accepted=$((N + KILL_N - rejected))
status() { curl -s "${gateways[1]}/api/v1/status"; }
for _ in $(seq 1 600); do
  live=$(status | python3 -c 'import json,sys; print(sum(json.load(sys.stdin)["jobs"]["live"].values()))')
  [ "$live" = 0 ] && break
  sleep 1
done
# Finished jobs, counted in the store: the entries of every shard's paged index of finished
# jobs (pages `coretex:{tag}:idx:done:{n}`, on the masters), and none of them in a state other
# than SUCCEEDED (the listings of the other finished states are empty).
finished=0
for p in $(masters); do
  for k in $(redis-cli -p "$p" --scan --pattern 'coretex:{*}:idx:done:[0-9]*'); do
    finished=$((finished + $(redis-cli -p "$p" zcard "$k")))
  done
done
unsuccessful=0
for state in FAILED CANCELLED TIMEOUT DENIED; do
  n=$(curl -s "${gateways[1]}/api/v1/jobs?state=$state&limit=500" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["items"]))')
  unsuccessful=$((unsuccessful + n))
done
done_ok=$((finished - unsuccessful))
echo "  $(date +%T) in the store: $finished finished, $unsuccessful not SUCCEEDED, $live live; $accepted accepted over both phases"
# A refused submit may still have been created: one answered 503 when its batch call outlived
# the 10 s a caller waits, and then went through (a client that must know resubmits with its
# Idempotency-Key). So: no accepted job missing, none failed, none past the refused ones.
[ "$done_ok" -ge "$accepted" ] && [ "$done_ok" -le $((accepted + rejected)) ] && [ "$unsuccessful" = 0 ] ||
  { echo "FAIL: $done_ok SUCCEEDED for $accepted accepted jobs (and $rejected refused)" >&2; exit 1; }
echo "PASS: every accepted job succeeded ($rejected submits refused during the failover, $((done_ok - accepted)) of them created after all)"
