"""A NATS JetStream consumer of a Switchboard subscription with a `nats` destination.

Each message carries the event as its body and the Standard Webhooks values as NATS headers, so
it is verified exactly as an HTTP delivery is, with the official library. This consumer declares
its stream (Switchboard declares none), reads it from the start, verifies every message, checks
that each agent's messages come in sequence order, and stops after --expect messages.

    pip install -r requirements.txt
    WEBHOOK_SECRET=whsec_… python3 consumer.py --url nats://127.0.0.1:4222 \
        --stream CC --subjects 'cc.>' --expect 1000
"""

import argparse
import asyncio
import json
import os
import sys

import nats
from nats.js.api import StreamConfig
from standardwebhooks import Webhook


async def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", default="nats://127.0.0.1:4222")
    p.add_argument("--stream", required=True)
    p.add_argument("--subjects", required=True)
    p.add_argument("--expect", type=int, required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--delete-stream", action="store_true", help="delete the stream when done")
    args = p.parse_args()
    wh = Webhook(os.environ["WEBHOOK_SECRET"])

    nc = await nats.connect(args.url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=args.stream, subjects=[args.subjects]))
    print(json.dumps({"ready": True}), flush=True)

    sub = await js.pull_subscribe(args.subjects, durable=None, stream=args.stream)
    last: dict[str, int] = {}
    seen = 0
    deadline = asyncio.get_running_loop().time() + args.timeout
    while seen < args.expect:
        if asyncio.get_running_loop().time() > deadline:
            print(f"only {seen} of {args.expect} messages", file=sys.stderr)
            return 1
        try:
            batch = await sub.fetch(100, timeout=1)
        except nats.errors.TimeoutError:
            continue
        for msg in batch:
            headers = dict(msg.headers or {})
            # Raises if the signature, the id or the timestamp does not verify.
            wh.verify(msg.data, headers)
            agent = headers["switchboard-agent"]
            sequence = int(headers["switchboard-sequence"])
            if last.get(agent, 0) >= sequence:
                print(f"{agent}: {sequence} after {last[agent]}", file=sys.stderr)
                return 1
            last[agent] = sequence
            await msg.ack()
            seen += 1
            print(json.dumps({"webhook_id": headers["webhook-id"], "agent": agent,
                              "sequence": sequence}), flush=True)
    print(json.dumps({"verified": seen, "agents": len(last)}), flush=True)
    if args.delete_stream:
        await js.delete_stream(args.stream)
    await nc.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
