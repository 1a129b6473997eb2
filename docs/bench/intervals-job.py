#!/usr/bin/env python3
"""The intervals for WFM, walked whole (DESIGN §18: 30 days × 5,000 agents in at most 10 s).

Starts a release build of Switchboard on loopback (SQLite by default; with `--database-url`,
PostgreSQL: a fresh database on that server), posts DAYS days of a simulated contact center of
AGENTS agents (`switchboard simulate --dry-run --teams 10`, about PER_DAY events per agent and
day, 1,000 events per request), then times `GET …/agents/intervals` (15-minute intervals,
10,000 a page) over the whole window, page after page, twice (the second time with the log by
username caught up), and prints how many intervals it held.

    cargo build --release && python3 docs/bench/intervals-job.py [--agents N] [--days D] \\
        [--per-day K] [--database-url URL]

Only loopback is used; nothing beyond Python's standard library is needed.
"""

import argparse
import datetime
import http.client
import os
import subprocess
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchserver import ADMIN, BIN, server  # noqa: E402


def post(port, lines):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    body = ("[" + ",".join(lines) + "]").encode()
    conn.request("POST", "/v1/tenants/default/events", body=body,
                 headers={"Authorization": f"Bearer {ADMIN}",
                          "Content-Type": "application/json"})
    r = conn.getresponse()
    payload = r.read()
    conn.close()
    assert r.status == 202, (r.status, payload[:500])


def main():
    args = argparse.ArgumentParser()
    args.add_argument("--agents", type=int, default=5000)
    args.add_argument("--days", type=int, default=30)
    args.add_argument("--per-day", type=int, default=100)
    args.add_argument("--database-url", default="")
    opts = args.parse_args()
    duration = opts.days * 86_400
    rate = max(1, round(opts.agents * opts.per_day / 86_400))
    start = datetime.datetime(2026, 10, 1, tzinfo=datetime.timezone.utc)
    stamp = lambda t: t.strftime("%Y%m%d%H%M%S")  # noqa: E731
    with server("intervals", opts.database_url) as api:
        sim = subprocess.Popen(
            [BIN, "simulate", "--dry-run", "--agents", str(opts.agents), "--rate", str(rate),
             "--duration", str(duration), "--seed", "18", "--teams", "10",
             "--start", stamp(start)],
            stdout=subprocess.PIPE, text=True)
        began = time.monotonic()
        batch, events = [], 0
        for line in sim.stdout:
            batch.append(line.rstrip("\n"))
            if len(batch) == 1000:
                post(api.port, batch)
                events += len(batch)
                batch = []
        if batch:
            post(api.port, batch)
            events += len(batch)
        sim.wait()
        print(f"posted {events:,} events of {opts.agents:,} agents over {opts.days} days "
              f"in {time.monotonic() - began:.1f} s")
        query = {"since": stamp(start),
                 "until": stamp(start + datetime.timedelta(days=opts.days)),
                 "size": "900", "limit": "10000"}
        for walk in ("first", "second"):
            began = time.monotonic()
            pages, intervals, after = 0, 0, None
            query.pop("after", None)
            while True:
                if after:
                    query["after"] = after
                path = "/v1/tenants/default/agents/intervals?" + urllib.parse.urlencode(query)
                status, page = api.call("GET", path)
                assert status == 200, (status, page)
                pages += 1
                intervals += len(page["data"])
                after = page["next_after"]
                if not after:
                    break
            took = time.monotonic() - began
            print(f"{walk} walk: {intervals:,} intervals in {pages} pages in {took:.2f} s "
                  f"({intervals / took:,.0f} intervals/s)")

if __name__ == "__main__":
    main()
