#!/bin/bash
# How long a PostgreSQL node takes to exit after SIGTERM while retention has 20,000 expired
# events to purge (DESIGN §15: a stop waits for no purge).
#
#   docs/bench/stop.sh target/release/switchboard
#
# Needs the machine's PostgreSQL (postgres://postgres@127.0.0.1:5432); makes and drops a
# database of its own.
bin=${1:?the switchboard binary}
db=sb_stop_$$
psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db"
export SWITCHBOARD_ADMIN_KEY=sb_admin_bench_0123456789012345678901234567
export SWITCHBOARD_RETENTION_SECS=2
d=$(mktemp -d)
$bin serve --dev --listen 127.0.0.1:18300 --data-dir $d --database-url postgres://postgres@127.0.0.1:5432/$db >/dev/null 2>$d/log &
s=$!
until curl -sf http://127.0.0.1:18300/readyz >/dev/null; do sleep 0.2; done
curl -s -X POST http://127.0.0.1:18300/v1/tenants/default/subscriptions -H "Authorization: Bearer $SWITCHBOARD_ADMIN_KEY" -H 'Content-Type: application/json' -d '{"url":"http://127.0.0.1:9/x","filter":{"usernames":["agent-1","agent-2"]}}' >/dev/null
$bin bench --url http://127.0.0.1:18300 --key $SWITCHBOARD_ADMIN_KEY --events 20000 --batch 100 --concurrency 4 --subscriptions 0 --json >/dev/null 2>&1
sleep ${WAIT:-3}
t0=$(date +%s.%N)
kill -TERM $s; wait $s; rc=$?
t1=$(date +%s.%N)
echo "exit $rc after $(echo "$t1 - $t0" | bc) s"
psql -h 127.0.0.1 -U postgres -Atqc "select count(*) from events" $db
psql -h 127.0.0.1 -U postgres -Atqc "select status, count(*) from deliveries group by 1" $db
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE $db"
grep -i "purged\|warn\|error" $d/log | tail -3
rm -rf $d
