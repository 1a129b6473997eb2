#!/usr/bin/env bash
# Runs `switchboard bench` once for each performance target of DESIGN §8, in order, and prints
# each report. Build first: cargo build --release. Takes about six minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${SWITCHBOARD_BIN:-target/release/switchboard}
# PostgreSQL for the scale-out rows: each run makes a database of its own on that server.
pg=${SWITCHBOARD_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
run() {
    # Each run starts with the previous one's writes on disk, so that its flushing does not
    # stall this one's fsyncs.
    sync
    echo "\$ switchboard bench $*"
    "$bin" bench "$@" 2>/dev/null
    echo
}
run --events 30000                                  # ≥ 10,000 events/s end to end, single POSTs
run --events 100000 --batch 100 --concurrency 8     # ≥ 50,000 events/s accepted, 100-event batches
run --events 100000 --batch 100 --concurrency 8 --subscriptions 0   # the same, ingest alone
run --events 10000 --rate 1000                      # p99 ingest→receiver ≤ 25 ms at 1,000/s
run --events 3000 --subscriptions 100               # fan-out to 100 subscriptions ≥ 20,000/s
run --pending 1000000                               # RSS ≤ 150 MiB; restart to first delivery ≤ 5 s
run --events 10000 --rate 1000 --expired 1000000    # p99 ≤ 25 ms while a million expired events are purged
run --events 10000 --rate 1000 --streams 100 --agents 10000   # stream p99 ≤ 50 ms (100 consumers); GET …/agents ≤ 50 ms with 10,000 agents
run --events 10000 --rate 1000 --counts-streams 10 --agents 10000   # counts stream p99 commit→consumer ≤ 50 ms (DESIGN §18)
run --events 40000 --agents 10000 --rules 10 --rules-disabled   # baseline of the next row: the same events, rules disabled
run --events 40000 --agents 10000 --rules 10        # 100,000 live rule timers: ingest ≤ 10 % below the row above (DESIGN §18)
run --events 20000 --database-url "$pg"            # PostgreSQL, one node: deliveries/s, CPU per delivery by process
run --events 20000 --database-url "$pg" --nodes 2  # two nodes on one database
run --events 20000 --database-url "$pg" --tenants 8   # the same events over eight tenants (docs/capacity.md "Many tenants")
run --events 10000 --rate 1000 --database-url "$pg"   # PostgreSQL, p99 ingest→receiver at 1,000/s
# Two nodes against one, each node held to 0.2 cores (a machine of its own, in miniature), the
# tenants split between them: one node already keeps this machine's two cores busy, so without
# budgets a second one can only share them (docs/capacity.md). Needs root (a cgroup).
capped() {
    sync
    echo "\$ docs/bench/nodes-capped.sh $*"
    SWITCHBOARD_BIN=$bin bash docs/bench/nodes-capped.sh "$@" 2>/dev/null
    echo
}
if [ -w /sys/fs/cgroup/cpu ]; then
    capped 1 0.2 --events 20000 --tenants 8 --tenants-by-node   # one node, 0.2 cores
    capped 2 0.2 --events 20000 --tenants 8 --tenants-by-node   # two nodes: ≥ 1.7× the row above (issue 25)
else
    echo "(two nodes with CPU budgets: skipped; docs/bench/nodes-capped.sh needs a writable /sys/fs/cgroup/cpu)"
fi
