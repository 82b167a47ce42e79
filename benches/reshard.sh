#!/usr/bin/env bash
# A resharding in progress, under load (issue 17): a local 3-master Redis Cluster, NATS, one
# `serve` and one echo worker; while `loadgen` runs, one shard's hash slot is moved to another
# master the way `redis-cli --cluster reshard` moves it (CLUSTER SETSLOT IMPORTING / MIGRATING,
# MIGRATE of its keys a few at a time, SETSLOT NODE), slowly enough that the load meets the
# slot half moved. It reports what loadgen saw (every accepted job should succeed), the MIGRATE
# errors (BUSYKEY would be a key the load made on the target while the source still held it),
# and what `serve` logged.
#
# At scale, what `cluster_writes_to_a_slot_being_moved_are_refused_whole_then_go_on` in
# tests/store_conformance.rs checks exactly: every write to a moving shard is refused whole
# (and retried) until its slot has moved, so no job is lost and the move completes.
#
#   benches/reshard.sh            # 30,000 jobs, shard s0's slot moved 1.5 s in
#
# BIN may name a built binary; otherwise the release build. Needs redis-server, redis-cli and
# nats-server on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-30000}
DELAY=${DELAY:-1.5}
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=target/release/coretex
fi
source benches/lib.sh

ports=()
for i in 1 2 3; do
  p=$(free_port); b=$(free_port); mkdir -p "$work/redis$i"
  redis-server --port "$p" --cluster-port "$b" --bind 127.0.0.1 --cluster-enabled yes \
    --cluster-config-file nodes.conf --cluster-node-timeout 1000 --save "" --appendonly no \
    --dir "$work/redis$i" >"$work/redis$i.log" 2>&1 & pids+=($!)
  ports+=("$p")
done
for p in "${ports[@]}"; do wait_port "$p"; done
redis-cli --cluster create "127.0.0.1:${ports[0]}" "127.0.0.1:${ports[1]}" "127.0.0.1:${ports[2]}" \
  --cluster-replicas 0 --cluster-yes >"$work/cluster-create.log"
for _ in $(seq 1 100); do
  redis-cli -p "${ports[0]}" cluster info | grep -q cluster_state:ok && break
  sleep 0.1
done
start_nats nats; NATS_PORT=$port
HTTP=$(free_port)
RUST_LOG=warn $BIN serve --listen "127.0.0.1:$HTTP" --no-ui \
  --redis-url "redis+cluster://127.0.0.1:${ports[0]},127.0.0.1:${ports[1]}" \
  --nats-url "nats://127.0.0.1:$NATS_PORT" >"$work/serve.log" 2>&1 & pids+=($!)
wait_port "$HTTP"
RUST_LOG=warn $BIN worker --nats-url "nats://127.0.0.1:$NATS_PORT" --id reshard --pool echo \
  --topic job.echo --max-parallel 50 --echo >"$work/worker.log" 2>&1 & pids+=($!)
sleep 2

# migrate: moves shard s0's slot, DELAY seconds into the load.
migrate() {
  sleep "$DELAY"
  local key='' p
  for p in "${ports[@]}"; do
    key=$(redis-cli -p "$p" --scan --pattern '*{s0*}:job:*' | head -1 || true)
    [ -n "$key" ] && break
  done
  local tag=${key#*\{}; tag=${tag%%\}*}
  local slot src dst id_src id_dst
  slot=$(redis-cli -p "${ports[0]}" cluster keyslot "{$tag}")
  for p in "${ports[@]}"; do
    redis-cli -p "$p" cluster countkeysinslot "$slot" | grep -qv '^0$' && src=$p
  done
  for p in "${ports[@]}"; do [ "$p" != "$src" ] && { dst=$p; break; }; done
  id_src=$(redis-cli -p "$src" cluster myid); id_dst=$(redis-cli -p "$dst" cluster myid)
  echo "moving slot $slot (shard {$tag}) from :$src to :$dst"
  redis-cli -p "$dst" cluster setslot "$slot" importing "$id_src" >/dev/null
  redis-cli -p "$src" cluster setslot "$slot" migrating "$id_dst" >/dev/null
  local moved=0 failed=0 keys out
  while :; do
    mapfile -t keys < <(redis-cli -p "$src" cluster getkeysinslot "$slot" 10 | grep -v '^$' || true)
    [ ${#keys[@]} -eq 0 ] && break
    out=$(redis-cli -p "$src" migrate 127.0.0.1 "$dst" "" 0 5000 keys "${keys[@]}" 2>&1)
    case $out in
      OK) moved=$((moved + ${#keys[@]})) ;;
      NOKEY) ;;  # expired meanwhile
      *) failed=$((failed + 1)); echo "MIGRATE: $out"; [ $failed -ge 20 ] && break ;;
    esac
    sleep 0.01
  done
  for p in "$dst" "$src" "${ports[@]}"; do
    redis-cli -p "$p" cluster setslot "$slot" node "$id_dst" >/dev/null 2>&1 || true
  done
  echo "moved $moved keys; $failed MIGRATE calls failed (BUSYKEY: the target held a key the source" \
    "still had); $(redis-cli -p "$src" cluster countkeysinslot "$slot") keys left on the source"
}
migrate >"$work/migrate.log" 2>&1 &
migrator=$!
$BIN loadgen --gateway "http://127.0.0.1:$HTTP" --jobs "$N" --concurrency 20 --batch 100 \
  --topic job.echo --timeout 60s || true
wait "$migrator" || true
cat "$work/migrate.log"
echo "== serve's warnings, by kind"
sed 's/\x1b\[[0-9;]*m//g; s/[0-9a-z]\{26\}/ID/g; s/^[0-9T:.Z-]* *//; s/failed=[0-9]*/failed=N/' "$work/serve.log" |
  grep -E 'WARN|ERROR' | cut -c1-160 | sort | uniq -c | sort -rn | head -12
