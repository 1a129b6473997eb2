#!/usr/bin/env python3
"""A minimal Switchboard receiver: verifies each delivery with the official Standard Webhooks
library, deduplicates on webhook-id, answers 2xx fast.

    pip install -r requirements.txt
    WEBHOOK_SECRET=whsec_... python3 receiver.py --port 9100

Each delivery is printed as one JSON line on stdout: {"webhook_id", "sequence", "event"}.
"""

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

webhook = Webhook(os.environ["WEBHOOK_SECRET"])
# Delivery is at least once: an id seen before is acknowledged and not processed again. (A real
# receiver keeps these in its database, as long as replays may come.)
seen = set()


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            event = webhook.verify(body, headers)
        except WebhookVerificationError as e:
            self.answer(401, f"signature: {e}")
            return
        webhook_id = headers["webhook-id"]
        if webhook_id in seen:
            self.answer(200, "duplicate")
            return
        seen.add(webhook_id)
        # Answer first, work after: here the "work" is printing it.
        self.answer(204, "")
        line = {"webhook_id": webhook_id,
                "sequence": headers.get("switchboard-sequence"), "event": event}
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
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Receiver)
    print(f"listening on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    server.serve_forever()
