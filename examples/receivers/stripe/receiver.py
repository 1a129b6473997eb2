#!/usr/bin/env python3
"""A Switchboard receiver for a subscription with "signature_scheme": "stripe": verifies each
delivery's Switchboard-Signature with the stripe package's verifier, deduplicates on the event's
Id, answers 2xx fast.

    pip install -r requirements.txt
    WEBHOOK_SECRET=whsec_... python3 receiver.py --port 9103

The secret is passed whole, "whsec_" included, as Stripe's libraries take a secret. Each delivery
is printed as one JSON line on stdout: {"webhook_id", "verified", "sequence", "event"},
webhook_id being the event's Id (which is also its webhook-id header).
"""

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import stripe

secret = os.environ["WEBHOOK_SECRET"]
# Delivery is at least once: an id seen before is acknowledged and not processed again. (A real
# receiver keeps these in its database, as long as replays may come.) The id is taken from the
# signed body: this scheme signs the timestamp and the body, not the webhook-id header.
seen = set()


class Receiver(BaseHTTPRequestHandler):
    def do_GET(self):
        self.answer(200, "ok")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        # Verify the raw bytes, before any parsing: any of the header's v1= signatures (one per
        # live secret during a rotation) may match, and t= must be at most 5 minutes old.
        try:
            stripe.WebhookSignature.verify_header(
                body, self.headers.get("switchboard-signature"), secret, tolerance=300)
        except stripe.SignatureVerificationError as e:
            self.answer(401, f"signature: {e}")
            return
        event = json.loads(body)
        # A batch subscription sends an array (its webhook-id is batch_…): deduplicate on each
        # element's Id there.
        webhook_id = event["Id"] if isinstance(event, dict) else self.headers.get("webhook-id")
        if webhook_id in seen:
            self.answer(200, "duplicate")
            return
        seen.add(webhook_id)
        # Answer first, work after: here the "work" is printing it.
        self.answer(204, "")
        line = {"webhook_id": webhook_id, "verified": True,
                "sequence": self.headers.get("switchboard-sequence"), "event": event}
        print(json.dumps(line), flush=True)

    def answer(self, status, text):
        self.send_response(status)
        self.send_header("content-length", str(len(text)))
        self.end_headers()
        self.wfile.write(text.encode())

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9103)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Receiver)
    print(f"listening on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    server.serve_forever()
