#!/usr/bin/env bash
# One build's server as a process of its own, driven by another build's `bench --url`, with the
# server's CPU (and, on PostgreSQL, every PostgreSQL process's) read from /proc around the run:
# two builds' servers compared under one and the same load, whatever each one's `bench` can do.
#
#   docs/bench/server-process.sh SERVER_BIN BENCH_BIN sqlite|pg [bench arguments…]
#   e.g. docs/bench/server-process.sh /tmp/sb-base /tmp/sb-head pg --events 20000
#
# PostgreSQL: this machine's (postgres@127.0.0.1:5432, trust), a database of the run's own.
# Everything stays on loopback.
set -euo pipefail
server=$1 bench=$2 db=$3
shift 3
dir=$(mktemp -d)
key=sb_admin_$(openssl rand -hex 32)
port=$((18000 + RANDOM % 1000))
url=""
pg="env PGOPTIONS=--client-min-messages=warning psql -q -h 127.0.0.1 -U postgres -d test"
if [ "$db" = pg ]; then
  $pg -c "DROP DATABASE IF EXISTS bench_server_process" -c "CREATE DATABASE bench_server_process"
  url=postgres://postgres@127.0.0.1:5432/bench_server_process
fi
SWITCHBOARD_ADMIN_KEY=$key "$server" serve --dev --listen "127.0.0.1:$port" --data-dir "$dir" \
  --database-url "$url" >"$dir/log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
postgres_ticks() {
  local sum=0
  if [ "$db" = pg ]; then
    for p in $(pgrep -u postgres); do sum=$((sum + $(ticks "$p"))); done
  fi
  echo $sum
}
s0=$(ticks $pid) p0=$(postgres_ticks)
out=$("$bench" bench --url "http://127.0.0.1:$port" --key "$key" "$@" 2>&1)
s1=$(ticks $pid) p1=$(postgres_ticks)
kill $pid
wait $pid 2>/dev/null || true
rm -rf "$dir"
[ "$db" = pg ] && $pg -c "DROP DATABASE IF EXISTS bench_server_process"
n=$(echo "$out" | grep -oE "delivered +[0-9]+ in" | grep -oE "[0-9]+")
hz=$(getconf CLK_TCK)
echo "$out" | grep -E "^(accepted|delivered|receiver raw)"
awk -v s=$((s1 - s0)) -v p=$((p1 - p0)) -v n="$n" -v hz="$hz" 'BEGIN {
  printf "server CPU %.2f s (%.3f ms per delivery); PostgreSQL %.2f s (%.3f ms per delivery)\n",
    s / hz, 1000 * s / hz / n, p / hz, 1000 * p / hz / n }'
