#!/usr/bin/env python3
"""A replay job's speed (DESIGN §16: at least 20,000 events/s requeued), and how soon a DELETE
stops one.

Starts a release build of Switchboard on loopback (SQLite by default; with `--database-url`,
PostgreSQL: a fresh database on that server, made and dropped with `psql`), posts EVENTS events (1,000 per request), creates a disabled subscription
(so nothing is attempted), then:

1. a dry run of the whole window: its count, and how long counting took;
2. the replay job: its total, how long it ran from creation to `done` (count and pages),
   and the events per second requeued;
3. a second replay, canceled by `DELETE` once it has started its pages: how many more
   deliveries it requeued after the `DELETE` answered, and how long until `done` stopped
   moving (polled every 10 ms).

    cargo build --release && python3 docs/bench/replay-job.py [--events N] [--database-url URL]

Only loopback is used; nothing beyond Python's standard library is needed.
"""

import argparse
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchserver import server  # noqa: E402


def event(n):
    return {
        "Id": str(uuid.uuid4()), "CreationDateUtc": "20261120100000", "Category": 1, "Code": 1,
        "AdditionalFields": {"Username": f"agent{n % 500}", "SessionId": f"S-{n % 500}",
                             "SessionType": "CCA", "PhoneNo": "+15551230001"},
    }


def job(api, sub, dry_run=False):
    status, created = api.call("POST", "/v1/tenants/default/jobs", {
        "kind": "replay", "subscription_id": sub, "since": "20200101000000",
        "dry_run": dry_run})
    assert status == 202, (status, created)
    return created["id"], time.monotonic()


def poll(api, job_id):
    return api.call("GET", f"/v1/tenants/default/jobs/{job_id}")[1]


def until_done(api, job_id):
    while True:
        seen = poll(api, job_id)
        if seen["state"] in ("done", "failed", "canceled"):
            return seen, time.monotonic()
        time.sleep(0.01)


def main():
    args = argparse.ArgumentParser()
    args.add_argument("--events", type=int, default=100_000)
    args.add_argument("--database-url", default="")
    opts = args.parse_args()
    with server("replay", opts.database_url, extra=("--dev",)) as api:
        for start in range(0, opts.events, 1000):
            batch = [event(n) for n in range(start, min(start + 1000, opts.events))]
            status, answer = api.call("POST", "/v1/tenants/default/events", batch)
            assert status == 202, (status, answer)
        status, sub = api.call("POST", "/v1/tenants/default/subscriptions",
                               {"url": "http://127.0.0.1:9/", "enabled": False})
        assert status == 201, (status, sub)

        dry, began = job(api, sub["id"], dry_run=True)
        seen, ended = until_done(api, dry)
        print(f"dry run: total {seen['total']}, counted in {ended - began:.2f} s")

        real, began = job(api, sub["id"])
        counted = None
        while True:
            seen = poll(api, real)
            if counted is None and seen["total"] is not None:
                counted = time.monotonic()
            if seen["state"] != "running" and seen["state"] != "queued":
                break
            time.sleep(0.01)
        ended = time.monotonic()
        requeued = seen["done"]
        pages = ended - (counted or began)
        print(f"replay: state {seen['state']}, total {seen['total']}, requeued {requeued}; "
              f"{ended - began:.2f} s in all ({requeued / (ended - began):,.0f} events/s), "
              f"pages {pages:.2f} s ({requeued / max(pages, 1e-9):,.0f} events/s)")

        # Requeued again: every delivery is pending now, so a replay counts none; cancel the
        # pending ones first so that the next replay has work to cancel.
        status, answer = api.call("POST", "/v1/tenants/default/jobs",
                                  {"kind": "cancel_pending", "subscription_id": sub["id"]})
        assert status == 202, (status, answer)
        seen, _ = until_done(api, answer["id"])
        print(f"cancel_pending: canceled {seen['done']} of {seen['total']}")

        third, _ = job(api, sub["id"])
        while (seen := poll(api, third))["done"] == 0:
            time.sleep(0.005)
        status, answer = api.call("DELETE", f"/v1/tenants/default/jobs/{third}")
        answered = time.monotonic()
        assert status == 200, (status, answer)
        at_delete = answer["done"]
        last, last_change = at_delete, answered
        while time.monotonic() - answered < 2:
            done = poll(api, third)["done"]
            if done != last:
                last, last_change = done, time.monotonic()
            time.sleep(0.01)
        print(f"canceled: done {at_delete} when the DELETE answered, {last} after; "
              f"last change {1000 * (last_change - answered):.0f} ms after it")


if __name__ == "__main__":
    main()
