#!/usr/bin/env python3
"""An erase job's speed (DESIGN §19: one value erased from 1,000,000 events in at most 60 s).

Starts a release build of Switchboard on loopback (SQLite by default; with `--database-url`,
PostgreSQL: a fresh database on that server, made and dropped with `psql`), posts EVENTS events
(1,000 per request) of 500 agents, one in `--every` carrying the phone number to erase, with one
subscription of the erased agent's events (its receiver down: its deliveries stay pending),
then times the `erase` job from creation to `done` and prints its receipt.

    cargo build --release && python3 docs/bench/erase-job.py [--events N] [--every K] [--database-url URL]

Only loopback is used; nothing beyond Python's standard library is needed.
"""

import argparse
import json
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchserver import server  # noqa: E402

PHONE = "+15559990000"


def event(n, every):
    agent = n % 500
    phone = PHONE if n % every == 0 else "+15551230001"
    return {
        "Id": str(uuid.uuid4()), "CreationDateUtc": "20261120100000", "Category": 1, "Code": 3,
        "AdditionalFields": {"Username": f"agent{agent}", "SessionId": f"S-{agent}",
                             "SessionType": "CCA", "PhoneNo": phone, "ActivityCode": 16,
                             "AvailabilityCode": 1, "ActivityName": ""},
    }


def main():
    args = argparse.ArgumentParser()
    args.add_argument("--events", type=int, default=1_000_000)
    args.add_argument("--every", type=int, default=1000)
    args.add_argument("--database-url", default="")
    opts = args.parse_args()
    # --dev: the subscription's receiver is on loopback (and down: its deliveries stay pending).
    with server("erase", opts.database_url, extra=("--dev",)) as api:
        status, sub = api.call("POST", "/v1/tenants/default/subscriptions",
                               {"url": "http://127.0.0.1:9/", "enabled": False,
                                "filter": {"usernames": ["agent0"]}})
        assert status == 201, (status, sub)
        began = time.monotonic()
        for start in range(0, opts.events, 1000):
            batch = [event(n, opts.every) for n in range(start, min(start + 1000, opts.events))]
            status, answer = api.call("POST", "/v1/tenants/default/events", batch)
            assert status == 202, (status, answer)
        posted = time.monotonic() - began
        print(f"posted {opts.events:,} events in {posted:.1f} s "
              f"({opts.events // opts.every:,} with the number)")
        status, job = api.call("POST", "/v1/tenants/default/jobs",
                               {"kind": "erase", "field": "PhoneNo", "value": PHONE})
        assert status == 202, (status, job)
        began = time.monotonic()
        while True:
            seen = api.call("GET", f"/v1/tenants/default/jobs/{job['id']}")[1]
            if seen["state"] not in ("queued", "running"):
                break
            time.sleep(0.05)
        took = time.monotonic() - began
        print(f"erase: state {seen['state']}, receipt {json.dumps(seen['result'])}, "
              f"{took:.2f} s from creation to done "
              f"({opts.events / took:,.0f} events looked through per second)")


if __name__ == "__main__":
    main()
