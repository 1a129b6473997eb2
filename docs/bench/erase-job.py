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
import http.client
import json
import os
import socket
import subprocess
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("SWITCHBOARD_BIN", os.path.join(ROOT, "target/release/switchboard"))
ADMIN = "erase-bench-admin-key-0123456789abcdef"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    def __init__(self, port):
        self.port = port

    def call(self, method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        headers = {"Authorization": f"Bearer {ADMIN}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        payload = r.read()
        conn.close()
        return r.status, (json.loads(payload) if payload else None)

    def wait_up(self):
        for _ in range(600):
            try:
                if self.call("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit("the server did not start")


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
    port = free_port()
    api = Api(port)
    with tempfile.TemporaryDirectory() as data:
        env = dict(os.environ, SWITCHBOARD_ADMIN_KEY=ADMIN)
        command = [BIN, "serve", "--dev", "--listen", f"127.0.0.1:{port}", "--data-dir", data]
        url = None
        if opts.database_url:
            base, _, _ = opts.database_url.rpartition("/")
            name = f"sb_erase_bench_{os.getpid()}"
            subprocess.run(["psql", opts.database_url, "-qc", f"CREATE DATABASE {name}"],
                           check=True)
            url = f"{base}/{name}"
            command += ["--database-url", url]
        server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            api.wait_up()
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
        finally:
            server.terminate()
            server.wait()
            if url:
                subprocess.run(["psql", opts.database_url, "-qc",
                                f"DROP DATABASE {url.rpartition('/')[2]}"], check=True)


if __name__ == "__main__":
    main()
