#!/usr/bin/env python3
"""Checks Ed25519 (`v1a`) signatures with an independent verifier, the `cryptography` package
(installed from PyPI when missing): a real server delivers to a receiver here, every attempt's
`v1a,` signature verifies with the subscription's `public_key` alone, a tampered body does not,
and during a rotation both the old and the new public key verify.

Usage: .ci/v1a.py <directory holding the switchboard binary>
"""

import base64
import http.server
import json
import os
import subprocess
import sys
import threading
import urllib.request
import uuid

try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
except ImportError:
    subprocess.check_call(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "cryptography"]
    )
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from serving import serving

KEY = "sb_admin_v1a_0123456789abcdef0123456"
PORT, RECEIVER_PORT = 18092, 18093
API = f"http://127.0.0.1:{PORT}"
binary = os.path.join(sys.argv[1], "switchboard")
received = []
arrived = threading.Condition()


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        with arrived:
            received.append((dict((k.lower(), v) for k, v in self.headers.items()), body))
            arrived.notify_all()
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def call(method, path, body=None):
    request = urllib.request.Request(
        API + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as answer:
        return json.load(answer)


def wait_for(n):
    with arrived:
        if not arrived.wait_for(lambda: len(received) >= n, timeout=20):
            sys.exit(f"FAIL: {n} deliveries expected, {len(received)} arrived")
        return received[n - 1]


def verifies(public_key, headers, body):
    """Whether one of the `v1a,` signatures of the header is `public_key`'s (`whpk_…`)."""
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key.removeprefix("whpk_")))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    for sig in headers["webhook-signature"].split(" "):
        scheme, _, b64 = sig.partition(",")
        if scheme != "v1a":
            continue
        try:
            key.verify(base64.b64decode(b64), signed)
            return True
        except InvalidSignature:
            pass
    return False


def post_event():
    event = {"Id": str(uuid.uuid4()), "Category": 1, "Code": 1,
             "AdditionalFields": {"SessionId": "S-1", "SessionType": "CCA", "Username": "jdoe",
                                  "PhoneNo": "+15550001"}}
    call("POST", "/v1/tenants/default/events", event)


receiver = http.server.ThreadingHTTPServer(("127.0.0.1", RECEIVER_PORT), Receiver)
threading.Thread(target=receiver.serve_forever, daemon=True).start()
try:
    with serving(binary, PORT, KEY, dev=True):
        sub = call("POST", "/v1/tenants/default/subscriptions",
                   {"url": f"http://127.0.0.1:{RECEIVER_PORT}/hooks", "signature_scheme": "v1a"})
        old_key = sub["public_key"]
        post_event()
        headers, body = wait_for(1)
        assert headers["webhook-signature"].startswith("v1a,"), headers["webhook-signature"]
        assert verifies(old_key, headers, body), "the public key verifies the delivery"
        assert not verifies(old_key, headers, body + b" "), "a tampered body does not verify"

        rotated = call("POST", f"/v1/tenants/default/subscriptions/{sub['id']}/secret/rotate",
                       {"grace_secs": 3600})
        new_key = rotated["public_key"]
        post_event()
        headers, body = wait_for(2)
        assert verifies(old_key, headers, body), "during the rotation the old key verifies"
        assert verifies(new_key, headers, body), "and the new one too"
        first_headers, first_body = received[0]
        assert not verifies(new_key, first_headers, first_body), "the new key is another key"
finally:
    receiver.shutdown()
print("v1a: 2 deliveries verified with cryptography's Ed25519, across a rotation")
