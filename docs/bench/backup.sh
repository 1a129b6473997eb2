#!/usr/bin/env bash
# Ingest while `switchboard backup` runs (DESIGN §15), against ingest alone, on one server, in
# interleaved pairs; then the rate of `switchboard copy` into PostgreSQL.
#
#   cargo build --release && docs/bench/backup.sh [pairs] [preloaded events]
#
# The server (--dev, SQLite in a temporary directory) is first loaded with the events, so that
# a backup takes a while; each run posts 20,000 single events at 1,000/s (open loop) and reports
# ingest p50/p99/max. In the "backup" runs backups are made one after another for the whole
# run. The copy needs the PostgreSQL of the machine (postgres://postgres@127.0.0.1:5432).
set -euo pipefail
bin=${SWITCHBOARD_BIN:-$(dirname "$0")/../../target/release/switchboard}
bin=$(realpath "$bin")
pairs=${1:-3}
preload=${2:-200000}
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
export SWITCHBOARD_ADMIN_KEY=sb_admin_bench_0123456789012345678901234567
port=18211
url=http://127.0.0.1:$port
"$bin" serve --dev --listen 127.0.0.1:$port --data-dir "$work/data" >/dev/null 2>&1 &
server=$!
until curl -sf $url/readyz >/dev/null; do sleep 0.2; done
"$bin" bench --url $url --key "$SWITCHBOARD_ADMIN_KEY" --events "$preload" --batch 100 \
  --concurrency 8 --subscriptions 0 --json >/dev/null 2>&1
echo "preloaded $preload events: $(du -m "$work/data/switchboard.db" | cut -f1) MiB"

run() {
  "$bin" bench --url $url --key "$SWITCHBOARD_ADMIN_KEY" --events 20000 --rate 1000 \
    --subscriptions 0 --json 2>/dev/null |
    python3 -c '
import json, sys
r = json.load(sys.stdin)
l = r["ingest_latency_ms"]
print("p50 %.2f ms  p99 %.2f ms  max %.2f ms  (%d accepted)" % (l["p50"], l["p99"], l["max"], r["accepted"]))' 
}

for i in $(seq "$pairs"); do
  sync
  echo "alone:       $(run)"
  sync
  (n=0; while true; do ${BACKUP_PREFIX:-} "$bin" backup --to "$work/b.db" --force --data-dir "$work/data" >/dev/null 2>&1; n=$((n+1)); echo $n >"$work/count"; done) &
  backups=$!
  out=$(run)
  kill $backups; wait $backups 2>/dev/null || true
  echo "with backup: $out  ($(cat "$work/count" 2>/dev/null || echo 0) backups of $(du -m "$work/b.db" | cut -f1) MiB finished)"
done

kill $server; wait $server 2>/dev/null || true
db=sb_bench_copy_$$
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
"$bin" copy --to "postgres://postgres@127.0.0.1:5432/$db" --data-dir "$work/data" 2>&1 | grep -v "so far"
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE $db"
