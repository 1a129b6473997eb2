#!/usr/bin/env python3
"""The intervals for WFM, walked whole (DESIGN §18: 30 days × 5,000 agents in at most 10 s).

Starts a release build of Switchboard on loopback (SQLite by default; with `--database-url`,
PostgreSQL: a fresh database on that server), posts DAYS days of a simulated contact center of
AGENTS agents (`switchboard simulate --dry-run --teams 10 --shift-hours H`: each agent works H
hours a day, the shifts spread around the clock; about PER_DAY events per agent and day; 1,000
events per request), then times `GET …/agents/intervals` (15-minute intervals, 10,000 a page)
over the whole window, page after page, twice, and prints how many intervals it held. The
walker counts each page's intervals and takes its `next_after` without decoding the rest
(`--parse` decodes every page: Python's JSON decoder then takes most of the time).

    cargo build --release && python3 docs/bench/intervals-job.py [--agents N] [--days D] \\
        [--per-day K] [--shift-hours H] [--parse] [--database-url URL] [--data-dir DIR]

With `--data-dir DIR` (SQLite) the server runs over DIR and leaves it: a second run with the
same DIR and options posts nothing and only walks — so two builds (`SWITCHBOARD_BIN=…`) are
compared on the same month, runs interleaved, without posting it twice.

Only loopback is used; nothing beyond Python's standard library is needed.
"""

import argparse
import datetime
import http.client
import json
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
    args.add_argument("--shift-hours", type=int, default=8)
    args.add_argument("--parse", action="store_true")
    args.add_argument("--database-url", default="")
    args.add_argument("--data-dir", default=None)
    args.add_argument("--walks", type=int, default=2)
    opts = args.parse_args()
    start = datetime.datetime(2026, 10, 1, tzinfo=datetime.timezone.utc)
    stamp = lambda t: t.strftime("%Y%m%d%H%M%S")  # noqa: E731
    posted_mark = opts.data_dir and os.path.join(opts.data_dir, "posted")
    if opts.data_dir:
        os.makedirs(opts.data_dir, exist_ok=True)
    with server("intervals", opts.database_url, data_dir=opts.data_dir) as api:
        if posted_mark and os.path.exists(posted_mark):
            with open(posted_mark) as f:
                events = int(f.read())
            print(f"{events:,} events posted earlier in {opts.data_dir}")
        else:
            events = post_all(api, opts, start, stamp)
            if posted_mark:
                with open(posted_mark, "w") as f:
                    f.write(str(events))
        query = {"since": stamp(start),
                 "until": stamp(start + datetime.timedelta(days=opts.days)),
                 "size": "900", "limit": "10000"}
        # The projection folds the log behind ingest (a batch every 250 ms, and before each
        # read): the walks start once it holds every event posted.
        began = time.monotonic()
        while True:
            probe = dict(query, limit="1")
            status, page = api.call(
                "GET", "/v1/tenants/default/agents/intervals?" + urllib.parse.urlencode(probe))
            assert status == 200, (status, page)
            if page["as_of_sequence"] >= events:
                break
            time.sleep(0.5)
        print(f"intervals projection caught up {time.monotonic() - began:.1f} s after the last post")
        for walk in range(1, opts.walks + 1):
            began = time.monotonic()
            pages, intervals = walk_once(api, dict(query), opts.parse)
            took = time.monotonic() - began
            print(f"walk {walk}: {intervals:,} intervals in {pages} pages in {took:.2f} s "
                  f"({intervals / took:,.0f} intervals/s)")


def post_all(api, opts, start, stamp):
    """Posts the simulated month; returns how many events."""
    duration = opts.days * 86_400
    rate = max(1, round(opts.agents * opts.per_day / 86_400))
    sim = subprocess.Popen(
        [BIN, "simulate", "--dry-run", "--agents", str(opts.agents), "--rate", str(rate),
         "--duration", str(duration), "--seed", "18", "--teams", "10",
         "--start", stamp(start), "--shift-hours", str(opts.shift_hours)],
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
    return events


def walk_once(api, query, parse):
    """Walks the window page after page; returns (pages, intervals)."""
    pages, intervals, after = 0, 0, None
    while True:
        if after:
            query["after"] = after
        path = "/v1/tenants/default/agents/intervals?" + urllib.parse.urlencode(query)
        conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=300)
        conn.request("GET", path, headers={"Authorization": f"Bearer {ADMIN}"})
        r = conn.getresponse()
        raw = r.read()
        conn.close()
        assert r.status == 200, (r.status, raw[:500])
        pages += 1
        if parse:
            page = json.loads(raw)
            intervals += len(page["data"])
            after = page["next_after"]
        else:
            intervals += raw.count(b'"username":')
            tail = raw[raw.rindex(b'"next_after":') + len(b'"next_after":'):]
            after = None if tail.startswith(b"null") else tail.split(b'"')[1].decode()
        if not after:
            return pages, intervals


if __name__ == "__main__":
    main()
