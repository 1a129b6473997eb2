"""A RabbitMQ consumer of a Switchboard subscription with an `amqp` destination.

Each message carries the event as its body and the Standard Webhooks values as AMQP headers, so
it is verified exactly as an HTTP delivery is, with the official library. This consumer declares
its exchange and a queue bound to all of it (Switchboard declares nothing), verifies every
message, checks that each agent's messages come in sequence order, and stops after --expect.

    pip install -r requirements.txt
    WEBHOOK_SECRET=whsec_… python3 consumer.py --url amqp://guest:guest@127.0.0.1:5672/%2f \
        --exchange cc --expect 1000
"""

import argparse
import json
import os
import sys
import time

import pika
from standardwebhooks import Webhook


def text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2f")
    p.add_argument("--exchange", required=True)
    p.add_argument("--expect", type=int, required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--delete-exchange", action="store_true", help="delete the exchange when done")
    args = p.parse_args()
    wh = Webhook(os.environ["WEBHOOK_SECRET"])

    conn = pika.BlockingConnection(pika.URLParameters(args.url))
    ch = conn.channel()
    ch.exchange_declare(exchange=args.exchange, exchange_type="topic")
    queue = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.queue_bind(queue=queue, exchange=args.exchange, routing_key="#")
    print(json.dumps({"ready": True}), flush=True)

    last: dict[str, int] = {}
    seen = 0
    deadline = time.monotonic() + args.timeout
    while seen < args.expect:
        if time.monotonic() > deadline:
            print(f"only {seen} of {args.expect} messages", file=sys.stderr)
            return 1
        method, props, body = ch.basic_get(queue=queue, auto_ack=True)
        if method is None:
            time.sleep(0.05)
            continue
        headers = {k: text(v) for k, v in (props.headers or {}).items()}
        # Raises if the signature, the id or the timestamp does not verify.
        wh.verify(body, headers)
        if props.message_id != headers["webhook-id"] or props.delivery_mode != 2:
            print(f"message_id {props.message_id}, delivery_mode {props.delivery_mode}", file=sys.stderr)
            return 1
        agent = headers["switchboard-agent"]
        sequence = int(headers["switchboard-sequence"])
        if last.get(agent, 0) >= sequence:
            print(f"{agent}: {sequence} after {last[agent]}", file=sys.stderr)
            return 1
        last[agent] = sequence
        seen += 1
    print(json.dumps({"verified": seen, "agents": len(last)}), flush=True)
    if args.delete_exchange:
        ch.exchange_delete(exchange=args.exchange)
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
