#!/usr/bin/env python3
"""What a delivery costs SQLite, row by row, and what each index adds (issue 27's analysis).

A stand-alone model of the writer's delivery work, Python's standard library only: a database
with the `deliveries` and `attempts` tables and indexes as migrations 0004, 0009 and 0014 leave
them (WAL, synchronous FULL, secure_delete ON, as the server opens it), 200,000 pending
deliveries of one subscription, then the steady state of a batched drain: each turn records
`--claim` outcomes (the attempts and the deliveries' new state, in chunks of 100) and claims as
many again, `--in-flight` leased at any time, in one transaction. Prints rows/s and the
microseconds per delivery of each part.

Variants (words joined by '-', any order):
  base        the schema as it is
  noleased    without deliveries_leased
  nobystatus  without deliveries_by_status
  new         plus deliveries_by_subscription (subscription_id, id) and deliveries_unfinished
              (subscription_id, status, id) WHERE status <> 'succeeded' (what would replace
              deliveries_by_status for the listings)
  a2          the claim also moves next_attempt_at to the lease's end
  simple      outcomes alike recorded by one UPDATE … WHERE id IN (…), not a VALUES join
  noatt       no attempt rows

  python3 docs/bench/delivery-row-costs.py base 2000 500
  python3 docs/bench/delivery-row-costs.py simple-new-noleased-nobystatus 2000 500

The model is not the server: its figures rank the options, the server's own (`switchboard bench
--backlog`) decide (docs/BENCHMARKS.md, 2026-12-05 evening).
"""

import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid

variant = sys.argv[1] if len(sys.argv) > 1 else "base"
IN_FLIGHT = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
CLAIM = int(sys.argv[3]) if len(sys.argv) > 3 else 500
N = 200_000
CHUNK = 100
NOW = 1_700_000_000_000
LEASE = NOW + 30_000

workdir = tempfile.mkdtemp(prefix="delivery-row-costs-")
c = sqlite3.connect(os.path.join(workdir, "db"), isolation_level=None)
for pragma in ("journal_mode=WAL", "synchronous=FULL", "secure_delete=ON", "cache_size=-32000"):
    c.execute(f"PRAGMA {pragma}")
c.executescript("""
CREATE TABLE subscriptions (id TEXT PRIMARY KEY, enabled INTEGER);
INSERT INTO subscriptions VALUES ('sub_1', 1);
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY, tenant_id TEXT NOT NULL, subscription_id TEXT NOT NULL,
    event_id TEXT NOT NULL, sequence INTEGER NOT NULL, agent TEXT, status TEXT NOT NULL,
    attempt_count INTEGER NOT NULL DEFAULT 0, round_attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER, lease_until INTEGER, last_status_code INTEGER, last_error TEXT,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, coalesce_key TEXT,
    superseded INTEGER NOT NULL DEFAULT 0, pending_since INTEGER,
    UNIQUE (subscription_id, sequence));
CREATE INDEX deliveries_due ON deliveries (subscription_id, next_attempt_at, sequence)
    WHERE status = 'pending';
CREATE INDEX deliveries_agent ON deliveries (subscription_id, agent, sequence)
    WHERE status = 'pending' AND agent IS NOT NULL;
CREATE INDEX deliveries_event ON deliveries (tenant_id, sequence);
CREATE INDEX deliveries_coalesce ON deliveries (subscription_id, coalesce_key, sequence)
    WHERE status = 'pending' AND coalesce_key IS NOT NULL;
CREATE TABLE attempts (delivery_id INTEGER NOT NULL, number INTEGER NOT NULL,
    started_at INTEGER NOT NULL, duration_ms INTEGER NOT NULL, status_code INTEGER,
    error TEXT, response_body TEXT, PRIMARY KEY (delivery_id, number));
""")
if "nobystatus" not in variant:
    c.execute("CREATE INDEX deliveries_by_status ON deliveries (subscription_id, status, id)")
if "new" in variant:
    c.execute("CREATE INDEX deliveries_by_subscription ON deliveries (subscription_id, id)")
    c.execute("CREATE INDEX deliveries_unfinished ON deliveries (subscription_id, status, id) "
              "WHERE status <> 'succeeded'")
if "noleased" not in variant:
    c.execute("CREATE INDEX deliveries_leased ON deliveries (lease_until) "
              "WHERE lease_until IS NOT NULL")

started = time.perf_counter()
c.execute("BEGIN")
c.executemany(
    "INSERT INTO deliveries (tenant_id, subscription_id, event_id, sequence, status, "
    "next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, 'pending', ?, ?, ?)",
    (("default", "sub_1", str(uuid.UUID(int=random.getrandbits(128))), i, NOW, NOW, NOW)
     for i in range(N)))
c.execute("COMMIT")
insert_us = (time.perf_counter() - started) / N * 1e6
c.execute("PRAGMA wal_checkpoint(TRUNCATE)")

CLAIM_SQL = f"""UPDATE deliveries SET lease_until = ?1{', next_attempt_at = ?1' if 'a2' in variant else ''}
 WHERE id IN (SELECT d.id FROM deliveries d WHERE d.subscription_id = ?2
   AND d.status = 'pending' AND d.next_attempt_at <= ?3
   AND EXISTS (SELECT 1 FROM subscriptions s WHERE s.id = ?2 AND s.enabled = TRUE)
   AND (d.lease_until IS NULL OR d.lease_until < ?3)
   AND (d.agent IS NULL OR NOT EXISTS (SELECT 1 FROM deliveries p
     WHERE p.subscription_id = d.subscription_id AND p.agent = d.agent
       AND p.status = 'pending' AND p.sequence < d.sequence))
   ORDER BY d.next_attempt_at, d.sequence LIMIT ?4)
 RETURNING id, tenant_id, event_id, sequence, attempt_count, round_attempts, created_at,
   superseded"""
VALUES_UPDATE = (
    "UPDATE deliveries SET status = CASE WHEN lease_until = v.column8 THEN v.column2 "
    "ELSE status END, attempt_count = CASE WHEN attempt_count > v.column3 THEN attempt_count "
    "ELSE v.column3 END, round_attempts = CASE WHEN lease_until = v.column8 THEN v.column4 "
    "ELSE round_attempts END, next_attempt_at = CASE WHEN lease_until = v.column8 "
    "THEN v.column5 ELSE next_attempt_at END, last_status_code = v.column6, "
    "last_error = v.column7, lease_until = CASE WHEN lease_until = v.column8 THEN NULL "
    "ELSE lease_until END, updated_at = ?1 FROM (VALUES "
    + ", ".join("(" + ", ".join(f"?{2 + r * 8 + k}" for k in range(8)) + ")"
                for r in range(CHUNK))
    + ") AS v WHERE id = v.column1")
ATTEMPTS = (
    "INSERT INTO attempts (delivery_id, number, started_at, duration_ms, status_code, error, "
    "response_body) VALUES "
    + ", ".join("(" + ", ".join(f"?{1 + r * 7 + k}" for k in range(7)) + ")"
                for r in range(CHUNK))
    + " ON CONFLICT DO NOTHING")


def claim(n):
    rows = c.execute(CLAIM_SQL, (LEASE, "sub_1", NOW, n)).fetchall()
    return sorted(rows, key=lambda r: r[3])


c.execute("BEGIN IMMEDIATE")
held = claim(IN_FLIGHT)
c.execute("COMMIT")
started = time.perf_counter()
done, claiming, finishing = 0, 0.0, 0.0
while len(held) >= CLAIM:
    finished, held = held[:CLAIM], held[CLAIM:]
    c.execute("BEGIN IMMEDIATE")
    a = time.perf_counter()
    for i in range(0, len(finished), CHUNK):
        chunk = finished[i:i + CHUNK]
        if "simple" in variant:
            c.execute(
                "UPDATE deliveries SET status = 'succeeded', attempt_count = attempt_count + 1, "
                "round_attempts = round_attempts + 1, next_attempt_at = NULL, "
                "last_status_code = 200, last_error = NULL, lease_until = NULL, updated_at = ? "
                "WHERE lease_until = ? AND id IN (" + ", ".join("?" * len(chunk)) + ")",
                [NOW, LEASE] + [r[0] for r in chunk])
        else:
            args = [NOW]
            for r in chunk:
                args += [r[0], "succeeded", 1, 1, None, 200, None, LEASE]
            c.execute(VALUES_UPDATE, args)
        if "noatt" not in variant:
            args = []
            for r in chunk:
                args += [r[0], 1, NOW, 3, 200, None, "ok"]
            c.execute(ATTEMPTS, args)
    b = time.perf_counter()
    held += claim(CLAIM)
    e = time.perf_counter()
    c.execute("COMMIT")
    finishing += b - a
    claiming += e - b
    done += len(finished)
elapsed = time.perf_counter() - started
print(f"{variant:32} in flight {IN_FLIGHT}, claims of {CLAIM}: {done / elapsed:8.0f} rows/s; "
      f"finish {finishing / done * 1e6:5.2f} us, claim {claiming / done * 1e6:5.2f} us, "
      f"commit and rest {(elapsed - finishing - claiming) / done * 1e6:5.2f} us per delivery; "
      f"insert {insert_us:4.2f} us")
c.close()
shutil.rmtree(workdir)
