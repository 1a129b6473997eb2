#!/usr/bin/env bash
# Scale-out on one small machine: NODES nodes of one PostgreSQL cluster, each a process of its
# own held to the same CPU budget by a cgroup, driven by one load (`bench --url n1,n2,…`).
#
# On the 2-core development machine one node without a budget already keeps both cores busy,
# together with PostgreSQL and the load (docs/capacity.md), so a second node can only share
# those cores: what it adds is not visible. A budget per node stands for a machine per node;
# PostgreSQL and the load keep what is left.
#
#   docs/bench/nodes-capped.sh NODES CPUS_PER_NODE [bench arguments…]
#   e.g. docs/bench/nodes-capped.sh 1 0.3 --events 20000
#        docs/bench/nodes-capped.sh 2 0.3 --events 20000
#
# Needs the cgroup v1 `cpu` controller writable at /sys/fs/cgroup/cpu (root), and this
# machine's PostgreSQL (postgres@127.0.0.1:5432, trust): a database of the run's own. Build
# first (cargo build --release), or set SWITCHBOARD_BIN. Everything stays on loopback.
set -euo pipefail
cd "$(dirname "$0")/../.."
nodes=$1 share=$2
shift 2
bin=${SWITCHBOARD_BIN:-target/release/switchboard}
cg=/sys/fs/cgroup/cpu
if [ ! -w "$cg" ]; then
  echo "nodes-capped.sh: needs a writable cgroup v1 cpu controller at $cg (root)" >&2
  exit 2
fi
db=bench_nodes_capped
pg="env PGOPTIONS=--client-min-messages=warning psql -q -h 127.0.0.1 -U postgres -d test"
$pg -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
database=postgres://postgres@127.0.0.1:5432/$db
key=sb_admin_$(openssl rand -hex 32)
# A short period, so that a node held back waits milliseconds, not a tenth of a second.
period=10000
quota=$(awk -v s="$share" -v p=$period 'BEGIN { printf "%d", s * p }')
pids=() urls=() dirs=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  rm -rf "${dirs[@]}"
  for i in $(seq 1 "$nodes"); do rmdir "$cg/switchboard-node$i" 2>/dev/null || true; done
  $pg -c "DROP DATABASE IF EXISTS $db" || true
}
trap cleanup EXIT
for i in $(seq 1 "$nodes"); do
  group=$cg/switchboard-node$i
  mkdir -p "$group"
  echo $period >"$group/cpu.cfs_period_us"
  echo "$quota" >"$group/cpu.cfs_quota_us"
  port=$((18300 + i))
  dir=$(mktemp -d)
  dirs+=("$dir")
  # The node's shell joins the group first, so every thread of the node starts in it.
  SWITCHBOARD_ADMIN_KEY=$key bash -c 'echo $$ > "$0/cgroup.procs"; exec "$@"' "$group" \
    "$bin" serve --dev --listen "127.0.0.1:$port" --data-dir "$dir" --database-url "$database" \
    >"$dir/log" 2>&1 &
  pids+=($!)
  urls+=("http://127.0.0.1:$port")
  # One at a time: the first runs the migrations.
  for _ in $(seq 300); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
done
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
sum_ticks() { local s=0 p; for p in "$@"; do s=$((s + $(ticks "$p"))); done; echo $s; }
# Every PostgreSQL process, listed anew each time: backends that connect during the run count.
# shellcheck disable=SC2046
postgres_ticks() { sum_ticks $(pgrep -u postgres); }
n0=$(sum_ticks "${pids[@]}") p0=$(postgres_ticks)
throttled0=$(cat "$cg"/switchboard-node*/cpu.stat | awk '/^nr_throttled/ { s += $2 } END { print s }')
out=$("$bin" bench --url "$(IFS=,; echo "${urls[*]}")" --key "$key" "$@" 2>&1)
n1=$(sum_ticks "${pids[@]}") p1=$(postgres_ticks)
throttled1=$(cat "$cg"/switchboard-node*/cpu.stat | awk '/^nr_throttled/ { s += $2 } END { print s }')
echo "$nodes node(s), $share CPU each (cgroup quota $quota µs per $period µs)"
echo "$out" | grep -E "^(accepted|delivered|receiver raw|ingest latency|cpu)"
n=$(echo "$out" | grep -oE "delivered +[0-9]+ in" | grep -oE "[0-9]+")
hz=$(getconf CLK_TCK)
awk -v s=$((n1 - n0)) -v p=$((p1 - p0)) -v n="$n" -v hz="$hz" -v t=$((throttled1 - throttled0)) 'BEGIN {
  printf "nodes CPU %.2f s (%.3f ms per delivery); PostgreSQL %.2f s (%.3f ms per delivery); periods throttled %d\n",
    s / hz, 1000 * s / hz / n, p / hz, 1000 * p / hz / n, t }'
