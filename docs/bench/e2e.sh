#!/usr/bin/env bash
# End-to-end throughput: N nodes, one subscription to a local `switchboard listen`, single-event
# POSTs from wrk (64 connections split over the nodes) for D seconds; then wait until nothing is
# pending. Prints events accepted, and events delivered per second from the first POST to the
# last delivery. Usage: docs/bench/e2e.sh NODES SECONDS [DATABASE_URL]  (from the repository
# root, after `cargo build --release`; an empty DATABASE_URL means SQLite, one node only).
set -euo pipefail
nodes=${1:-1}; secs=${2:-10}; db=${3:-}
bin=target/release/switchboard
work=$(mktemp -d)
export SWITCHBOARD_ADMIN_KEY=bench-admin-key SWITCHBOARD_LOG_LEVEL=warn
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

"$bin" listen --listen 127.0.0.1:19100 > /dev/null & pids+=($!)
for i in $(seq 1 "$nodes"); do
    "$bin" serve --dev --listen 127.0.0.1:$((18100 + i)) --data-dir "$work/n$i" --database-url "$db" \
        > "$work/n$i.out" 2> "$work/n$i.err" & pids+=($!)
done
for i in $(seq 1 "$nodes"); do
    until curl -sf http://127.0.0.1:$((18100 + i))/readyz > /dev/null; do sleep 0.1; done
done
api=http://127.0.0.1:18101
auth="Authorization: Bearer $SWITCHBOARD_ADMIN_KEY"
sub=$(curl -sf -X POST $api/v1/tenants/default/subscriptions -H "$auth" -H 'Content-Type: application/json' \
    -d '{"url": "http://127.0.0.1:19100/", "max_in_flight": 64}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')

start=$(date +%s.%N)
wrks=()
for i in $(seq 1 "$nodes"); do
    (cd docs/bench && wrk -t1 -c$((64 / nodes)) -d"${secs}s" -s post-event.lua \
        http://127.0.0.1:$((18100 + i))/v1/tenants/default/events > "$work/wrk$i.txt") & wrks+=($!)
done
wait "${wrks[@]}"
accepted=0
for i in $(seq 1 "$nodes"); do
    n=$(grep -Eo '^ +[0-9]+ requests' "$work/wrk$i.txt" | grep -Eo '[0-9]+')
    accepted=$((accepted + n))
done
while :; do
    left=$(curl -sf "$api/v1/tenants/default/subscriptions/$sub/deliveries?status=pending&limit=1" -H "$auth" \
        | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["data"]))')
    [ "$left" = 0 ] && break
    sleep 0.1
done
end=$(date +%s.%N)
python3 -c "
a=$accepted; t=$end-$start
print(f'nodes={$nodes} accepted={a} in ${secs}s ({a/$secs:.0f}/s); all delivered after {t:.1f}s: {a/t:.0f} events/s end to end')"
