#!/usr/bin/env python3
"""Tenant A's ingest alone, then beside each abuse of tenant B (DESIGN §23), on one server.

Starts a release build of Switchboard on loopback with its defaults, gives tenant B a log of
200,000 events of one agent (and a few others), then for each scenario starts B's abuse, runs
`switchboard bench --url` against tenant A ("default") twice (batches: throughput; a steady
rate: latency) and stops the abuse. The baseline runs first and last. Prints one table.

    cargo build --release && python3 docs/bench/abuse.py

Only loopback is used. Takes about six minutes on 2 cores. Nothing beyond Python's standard
library is needed.
"""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("SWITCHBOARD_BIN", os.path.join(ROOT, "target/release/switchboard"))
PORT = int(os.environ.get("ABUSE_PORT", "18931"))
ADMIN = "abuse-bench-admin-key-0123456789abcdef"
B_EVENTS = 200_000


def request(method, path, body=None, key=ADMIN, timeout=60):
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=timeout)
    headers = {"Authorization": f"Bearer {key}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=headers)
    r = conn.getresponse()
    payload = r.read()
    conn.close()
    return r.status, payload


def second(n):
    day, rest = divmod(n, 86_400)
    return f"202611{20 + day:02}{rest // 3600:02}{rest % 3600 // 60:02}{rest % 60:02}"


def status_event(n, username):
    activity, availability = (16, 1) if n % 2 == 0 else (34, 0)
    return {
        "Id": str(uuid.uuid4()), "CreationDateUtc": second(n), "Category": 1, "Code": 3,
        "AdditionalFields": {
            "Username": username, "SessionId": f"S-{username}", "SessionType": "CCA",
            "PhoneNo": "+15551230001", "ActivityCode": activity,
            "AvailabilityCode": availability, "ActivityName": "",
        },
    }


def seed_b(b_key):
    for start in range(0, B_EVENTS, 1000):
        batch = [status_event(n, "busy" if n % 10 else f"agent-{n % 500}")
                 for n in range(start, start + 1000)]
        status, payload = request("POST", "/v1/tenants/b/events", batch, key=b_key)
        assert status == 202, (status, payload[:300])


class Abuse:
    """Threads that repeat one of B's abuses until stopped."""

    def __init__(self):
        self.stop = threading.Event()
        self.threads = []
        self.sockets = []
        self.counts = {}
        self.cleanups = []

    def loop(self, name, n, fn):
        def run():
            while not self.stop.is_set():
                try:
                    status = fn()
                except OSError:
                    status = "error"
                self.counts[(name, status)] = self.counts.get((name, status), 0) + 1
        for _ in range(n):
            t = threading.Thread(target=run, daemon=True)
            t.start()
            self.threads.append(t)

    def end(self):
        self.stop.set()
        for s in self.sockets:
            try:
                s.close()
            except OSError:
                pass
        for t in self.threads:
            t.join(timeout=70)
        for cleanup in self.cleanups:
            cleanup()
        return self.counts


def scans(abuse, b_key):
    # 16 loops of filtered log pages: by username, then by code.
    abuse.loop("scan", 16, lambda: request(
        "GET", "/v1/tenants/b/events?username=agent-7&limit=1000", key=b_key)[0])


def timelines(abuse, b_key):
    abuse.loop("timeline", 4, lambda: request(
        "GET", "/v1/tenants/b/agents/busy/timeline?since=20261120000000&limit=1000",
        key=b_key, timeout=120)[0])


def open_stream(path, key):
    s = socket.create_connection(("127.0.0.1", PORT), timeout=10)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
              f"Accept: text/event-stream\r\n\r\n".encode())
    try:
        head = s.recv(4096).decode(errors="replace")
    except socket.timeout:
        return s, "no answer in 10 s"
    return s, head.split(" ", 2)[1] if " " in head else "?"


def agents_streams(abuse, b_keys):
    # 500 idle agents streams (the most B's five keys may hold), never read after the start.
    codes = {}
    for i in range(500):
        s, code = open_stream("/v1/tenants/b/agents/stream", b_keys[i // 100])
        abuse.sockets.append(s)
        codes[code] = codes.get(code, 0) + 1
    abuse.counts.update({("agents-stream", c): n for c, n in codes.items()})


def stream_flood(abuse, b_keys):
    # 1,100 event streams from one key: the first 100 open, the rest are refused.
    codes = {}
    for _ in range(1100):
        s, code = open_stream("/v1/tenants/b/events/stream", b_keys[0])
        if code == "200":
            abuse.sockets.append(s)
        else:
            s.close()
        codes[code] = codes.get(code, 0) + 1
    abuse.counts.update({("events-stream", c): n for c, n in codes.items()})


def slowloris(abuse, _b_keys):
    # 400 connections that never finish their headers (no key at all).
    for _ in range(400):
        s = socket.create_connection(("127.0.0.1", PORT))
        s.sendall(b"GET /v1/tenants/b/events HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        abuse.sockets.append(s)
    abuse.counts[("partial-headers", "open")] = 400


def subscriptions(abuse, b_key):
    # Subscriptions with the most usernames a filter holds, and B posting to them.
    names = [f"user-{i}" for i in range(1000)]
    made = []
    for i in range(30):
        status, payload = request("POST", "/v1/tenants/b/subscriptions", {
            "url": "http://127.0.0.1:9/", "filter": {"usernames": names}}, key=b_key)
        if status == 201:
            made.append(json.loads(payload)["id"])
    abuse.counts[("subscriptions", "201")] = len(made)
    # Deleted at the end, with their deliveries: the next scenario starts clean.
    abuse.cleanups.extend(
        (lambda i=i: request("DELETE", f"/v1/tenants/b/subscriptions/{i}", key=b_key))
        for i in made)
    batch = lambda: [status_event(n, f"user-{n % 1000}") for n in range(100)]
    abuse.loop("b-posts", 2, lambda: request(
        "POST", "/v1/tenants/b/events", batch(), key=b_key)[0])


def bench(args):
    out = subprocess.run([BIN, "bench", "--url", f"http://127.0.0.1:{PORT}", "--key", ADMIN,
                          *args], capture_output=True, text=True, check=True).stdout
    accepted = re.search(r"= (\d+) events/s", out)
    p99 = re.search(r"ingest latency\s+p50 ([\d.]+)\s+p90 [\d.]+\s+p99 ([\d.]+)", out)
    return int(accepted.group(1)), float(p99.group(1)), float(p99.group(2))


def main():
    data = tempfile.mkdtemp(prefix="switchboard-abuse-")
    env = dict(os.environ, SWITCHBOARD_ADMIN_KEY=ADMIN)
    server = subprocess.Popen(
        [BIN, "serve", "--listen", f"127.0.0.1:{PORT}", "--data-dir", data],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                if request("GET", "/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        assert request("POST", "/v1/tenants", {"id": "b"})[0] == 201
        b_keys = []
        for i in range(5):
            status, payload = request("POST", "/v1/tenants/b/keys",
                                      {"name": f"b{i}", "scopes": ["read", "publish", "manage"]})
            assert status == 201, payload
            b_keys.append(json.loads(payload)["key"])
        print(f"seeding tenant B with {B_EVENTS} events…", file=sys.stderr)
        seed_b(b_keys[0])
        scenarios = [
            ("A alone", None),
            ("B: 16 looping log scans by username", lambda a: scans(a, b_keys[0])),
            ("B: 4 looping 200,000-event timelines", lambda a: timelines(a, b_keys[0])),
            ("B: 500 idle agents streams", lambda a: agents_streams(a, b_keys)),
            ("B: 1,100 event streams from one key", lambda a: stream_flood(a, b_keys)),
            ("anonymous: 400 unfinished headers", lambda a: slowloris(a, b_keys)),
            ("B: 30 subscriptions × 1,000 usernames, posting", lambda a: subscriptions(a, b_keys[0])),
            ("A alone (again)", None),
        ]
        print("| scenario | A batches: events/s | A at 500/s: p50 / p99 ms | B's requests |")
        print("|---|---|---|---|")
        for name, start in scenarios:
            print(f"running: {name}", file=sys.stderr)
            abuse = Abuse()
            if start:
                start(abuse)
            rate, _, _ = bench(["--events", "20000", "--batch", "100", "--concurrency", "8",
                                "--subscriptions", "0", "--agents", "500"])
            _, p50, p99 = bench(["--events", "5000", "--rate", "500", "--subscriptions", "0"])
            counts = abuse.end()
            seen = ", ".join(f"{k[0]} {k[1]}: {v}" for k, v in sorted(counts.items(), key=str))
            print(f"| {name} | {rate} | {p50} / {p99} | {seen or '—'} |", flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
