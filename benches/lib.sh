# Shell helpers shared by the end-to-end benchmark scripts (sourced, not run).
#
# After sourcing: $work is a fresh temporary directory; every pid added to the `pids` array is
# killed, and $work removed, when the script exits.

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

# start_redis NAME / start_nats NAME: a private Redis without persistence, or a NATS with
# JetStream (its store in $work/NAME), on a free port, its log in $work/NAME.log; sets $port
# and $pid (the pid also goes to `pids`, for the cleanup) once it accepts connections.
start_redis() {
  port=$(free_port)
  redis-server --port "$port" --save "" --appendonly no --daemonize no >"$work/$1.log" 2>&1 &
  pid=$!; pids+=("$pid"); wait_port "$port"
}
start_nats() {
  port=$(free_port)
  nats-server -js -a 127.0.0.1 -p "$port" -sd "$work/$1" >"$work/$1.log" 2>&1 &
  pid=$!; pids+=("$pid"); wait_port "$port"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p"; }
# CPU seconds (user + system) a process has used so far.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }

# report_cpu JOBS CLIENT CLIENT_CPU_FILE: CPU seconds per 10,000 of JOBS jobs of each process in
# the associative array `roles` (name → pid) since `cpu_before` (name → cpu_of), and of the
# client, whose runs appended "CLIENT-cpu USER SYS" lines (bash `time`) to CLIENT_CPU_FILE.
report_cpu() {
  local jobs=$1 client=$2 file=$3 r used
  echo "== CPU seconds per 10,000 jobs during the throughput runs ($(nproc) cores)"
  for r in $(printf '%s\n' "${!roles[@]}" | sort); do
    used=$(echo "$(cpu_of "${roles[$r]}") - ${cpu_before[$r]}" | bc -l)
    printf '  %-8s %6.2f\n' "$r" "$(echo "$used * 10000 / $jobs" | bc -l)"
  done
  used=$(awk -v k="$client-cpu" '$1 == k {s += $2 + $3} END {print s}' "$file")
  printf '  %-8s %6.2f\n' "$client" "$(echo "$used * 10000 / $jobs" | bc -l)"
}

# report_redis PORT JOBS: what the Redis at PORT did per job since its last reset — calls and
# microseconds per command (commands run inside Lua scripts count under their own names too,
# and their time inside evalsha's) — then resets its statistics.
report_redis() {
  echo "== Redis per job during the throughput runs (calls, usec)"
  redis-cli -p "$1" info commandstats | tr -d '\r' |
    sed -n 's/^cmdstat_\([a-z|]*\):calls=\([0-9]*\),usec=\([0-9]*\).*/\1 \2 \3/p' |
    awk -v n="$2" '{printf "  %-14s %6.2f %8.2f\n", $1, $2 / n, $3 / n}' | sort -k3 -rn | head -20
  redis-cli -p "$1" config resetstat >/dev/null
}
