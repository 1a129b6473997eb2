#!/usr/bin/env bash
# Runs each example receiver (examples/receivers/) against a real server: a delivery arrives and
# verifies with the official Standard Webhooks library (or, for the `github` and `stripe`
# signature schemes, with that ecosystem's own verifier), and a tampered request is refused.
# Usage: .ci/receivers.sh <directory holding the switchboard binary>
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(cd "$1" && pwd)/switchboard"
python3 -c 'import standardwebhooks' 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check -r examples/receivers/python/requirements.txt
python3 -c 'import nats.js' 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check -r examples/receivers/nats/requirements.txt
python3 -c 'import pika' 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check -r examples/receivers/amqp/requirements.txt
python3 -c 'import stripe' 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check -r examples/receivers/stripe/requirements.txt
(cd examples/receivers/node && npm ci --no-audit --no-fund --silent)
(cd examples/receivers/github && npm ci --no-audit --no-fund --silent)

data=$(mktemp -d)
port=18091
key=sb_admin_receivers_0123456789abcdef
secret=whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD
api=http://127.0.0.1:$port
SWITCHBOARD_ADMIN_KEY=$key "$bin" serve --dev --listen 127.0.0.1:$port --data-dir "$data" \
    >"$data/server.log" 2>&1 &
pids=($!)
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$data"' EXIT
until curl -sf $api/readyz >/dev/null; do sleep 0.2; done

wait_for() { # <what> <command…>: up to 20 s
    local what=$1; shift
    for _ in $(seq 1 100); do "$@" && return 0; sleep 0.2; done
    echo "not within 20 s: $what" >&2
    return 1
}

check() { # <name> <port> <command…>: a subscription with the default scheme (v1)
    check_scheme "$1" "$2" v1 "${@:3}"
}

check_scheme() { # <name> <port> <signature_scheme> <command…>
    local name=$1 rport=$2 scheme=$3; shift 3
    WEBHOOK_SECRET=$secret "$@" --port "$rport" >"$data/$name.out" 2>"$data/$name.err" &
    pids+=($!)
    wait_for "$name listening" curl -s -o /dev/null "http://127.0.0.1:$rport/"
    local sub extra=
    [ "$scheme" = v1 ] || extra=', "signature_scheme": "'$scheme'"'
    sub=$(curl -sf -X POST $api/v1/tenants/default/subscriptions -H "Authorization: Bearer $key" \
        -H 'Content-Type: application/json' \
        -d '{"url": "http://127.0.0.1:'"$rport"'/hooks", "secret": "'$secret'"'"$extra"'}' |
        sed 's/^{"id":"\([^"]*\)".*/\1/')
    local id
    id=$(python3 -c 'import uuid; print(uuid.uuid4())')
    curl -sf -X POST $api/v1/tenants/default/events -H "Authorization: Bearer $key" \
        -H 'Content-Type: application/json' \
        -d '{"Id": "'"$id"'", "Category": 1, "Code": 1, "AdditionalFields": {"SessionId": "S-1",
             "SessionType": "CCA", "Username": "jdoe", "PhoneNo": "+15550001"}}' >/dev/null
    wait_for "$name receives $id verified" grep -q "\"webhook_id\": *\"$id\"" "$data/$name.out"
    # Delivered: the server saw its 2xx.
    wait_for "$name's delivery succeeded" sh -c "curl -sf '$api/v1/tenants/default/subscriptions/$sub/deliveries?status=succeeded' -H 'Authorization: Bearer $key' | grep -q '$id'"
    # A tampered request (a correct signature, in the subscription's scheme, over another body) is
    # refused.
    local status
    status=$(python3 - "$rport" "$secret" "$scheme" <<'PY'
import base64, hashlib, hmac, sys, time, urllib.error, urllib.request
port, secret, scheme = sys.argv[1], sys.argv[2], sys.argv[3]
msg_id, ts = "0f8fad5b-d9cb-469f-a165-70867728950e", str(int(time.time()))
signed, sent = b'{"Category":1,"Code":1}', b'{"Category":1,"Code":2}'
headers = {"webhook-id": msg_id, "webhook-timestamp": ts, "content-type": "application/json"}
if scheme == "v1":
    key = base64.b64decode(secret.removeprefix("whsec_"))
    sig = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + signed, hashlib.sha256).digest()).decode()
    headers["webhook-signature"] = f"v1,{sig}"
elif scheme == "github":  # keyed with the whole secret string, whsec_ included
    sig = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    headers["x-hub-signature-256"] = f"sha256={sig}"
elif scheme == "stripe":  # the same key, over "{t}.{body}"
    sig = hmac.new(secret.encode(), f"{ts}.".encode() + signed, hashlib.sha256).hexdigest()
    headers["switchboard-signature"] = f"t={ts},v1={sig}"
else:
    sys.exit(f"unknown scheme {scheme}")
req = urllib.request.Request(f"http://127.0.0.1:{port}/hooks", data=sent, headers=headers)
try:
    print(urllib.request.urlopen(req).status)
except urllib.error.HTTPError as e:
    print(e.code)
PY
)
    if [ "$status" != 401 ]; then
        echo "$name accepted a tampered request: $status" >&2
        return 1
    fi
    curl -sf -X DELETE "$api/v1/tenants/default/subscriptions/$sub" -H "Authorization: Bearer $key"
    echo "$name receiver: a delivery verified, a tampered request refused (401)"
}

check python 9100 python3 examples/receivers/python/receiver.py
check node 9101 node examples/receivers/node/receiver.mjs
# The same with the GitHub-style and Stripe-style schemes (DESIGN §20), each receiver verifying with
# that ecosystem's own verifier: @octokit/webhooks-methods, and the stripe Python package.
check_scheme github 9102 github node examples/receivers/github/receiver.mjs
check_scheme stripe 9103 stripe python3 examples/receivers/stripe/receiver.py

# Redaction (DESIGN §19): three subscriptions on the same event, drop / mask / hash of PhoneNo;
# each receiver verifies its body with the official Standard Webhooks library and shows exactly
# its redaction, and the log keeps the number.
redaction_id=$(python3 -c 'import uuid; print(uuid.uuid4())')
redact_subs=()
for mode in drop mask hash; do
    case $mode in drop) rport=9104 ;; mask) rport=9105 ;; hash) rport=9106 ;; esac
    WEBHOOK_SECRET=$secret python3 examples/receivers/python/receiver.py --port $rport \
        >"$data/redact-$mode.out" 2>"$data/redact-$mode.err" &
    pids+=($!)
    wait_for "the $mode receiver listening" curl -s -o /dev/null "http://127.0.0.1:$rport/"
    redact_subs+=("$(curl -sf -X POST $api/v1/tenants/default/subscriptions \
        -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
        -d '{"url": "http://127.0.0.1:'"$rport"'/hooks", "secret": "'$secret'",
             "redact": {"PhoneNo": "'$mode'"}}' | sed 's/^{"id":"\([^"]*\)".*/\1/')")
done
curl -sf -X POST $api/v1/tenants/default/events -H "Authorization: Bearer $key" \
    -H 'Content-Type: application/json' \
    -d '{"Id": "'"$redaction_id"'", "Category": 1, "Code": 1, "AdditionalFields": {"SessionId": "S-9",
         "SessionType": "CCA", "Username": "rdoe", "PhoneNo": "+15559876"}}' >/dev/null
for mode in drop mask hash; do
    wait_for "the $mode receiver verified $redaction_id" grep -q "$redaction_id" "$data/redact-$mode.out"
done
python3 - "$data" "$redaction_id" "$api" "$key" <<'PY'
import json, re, sys, urllib.request
data, event_id, api, key = sys.argv[1:5]
def fields(mode):
    for line in open(f"{data}/redact-{mode}.out"):
        got = json.loads(line)
        if got["event"]["Id"] == event_id:
            return got["event"]["AdditionalFields"]
    sys.exit(f"{mode}: {event_id} not received")
assert "PhoneNo" not in fields("drop"), fields("drop")
assert fields("mask")["PhoneNo"] == "*****9876", fields("mask")
assert re.fullmatch(r"hmac-sha256:[0-9a-f]{64}", fields("hash")["PhoneNo"]), fields("hash")
assert all(fields(m)["Username"] == "rdoe" for m in ("drop", "mask", "hash"))
req = urllib.request.Request(f"{api}/v1/tenants/default/events/{event_id}",
                             headers={"Authorization": f"Bearer {key}"})
logged = json.load(urllib.request.urlopen(req))
assert logged["event"]["AdditionalFields"]["PhoneNo"] == "+15559876", logged
PY
for sub in "${redact_subs[@]}"; do
    curl -sf -X DELETE "$api/v1/tenants/default/subscriptions/$sub" -H "Authorization: Bearer $key"
done
echo "redaction: drop, mask and hash each verified with the official library; the log unchanged"

# 20 agents × 50 events, 20 per request (one per agent), interleaved.
publish_agents() {
python3 - "$api" "$key" <<'PY'
import json, sys, urllib.request, uuid
api, key = sys.argv[1], sys.argv[2]
for round in range(50):
    batch = [{"Id": str(uuid.uuid4()), "Category": 1, "Code": 1,
              "AdditionalFields": {"SessionId": f"S-{a}", "SessionType": "CCA",
                                   "Username": f"agent.{a}", "PhoneNo": "+15550001"}}
             for a in range(20)]
    req = urllib.request.Request(f"{api}/v1/tenants/default/events", data=json.dumps(batch).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    assert urllib.request.urlopen(req).status == 202
PY
}

# The NATS consumer (examples/receivers/nats): 20 agents × 50 events to a `nats` destination
# with per_agent; the consumer verifies every message with the official library, from the
# message's headers, and checks each agent's order.
nats_url=${SWITCHBOARD_TEST_NATS_URL:-nats://127.0.0.1:4222}
tag=$(python3 -c 'import uuid; print(uuid.uuid4().hex[:12])')
WEBHOOK_SECRET=$secret python3 examples/receivers/nats/consumer.py --url "$nats_url" \
    --stream "SBCI_$tag" --subjects "sbci.$tag.>" --expect 1000 --delete-stream >"$data/nats.out" 2>"$data/nats.err" &
consumer=$!
pids+=($consumer)
wait_for "the NATS consumer's stream" grep -q '"ready"' "$data/nats.out"
nats_sub=$(curl -sf -X POST $api/v1/tenants/default/subscriptions -H "Authorization: Bearer $key" \
    -H 'Content-Type: application/json' \
    -d '{"destination": {"type": "nats", "url": "'"$nats_url"'", "subject": "sbci.'"$tag"'.{agent}"},
         "ordering": "per_agent", "secret": "'$secret'"}' | sed 's/^{"id":"\([^"]*\)".*/\1/')
publish_agents
if ! wait "$consumer"; then
    echo "the NATS consumer failed:" >&2
    tail -5 "$data/nats.err" >&2
    exit 1
fi
tail -1 "$data/nats.out"
echo "nats consumer: 1,000 messages verified with the official library, each agent in order"
curl -sf -X DELETE "$api/v1/tenants/default/subscriptions/$nats_sub" -H "Authorization: Bearer $key"

# The RabbitMQ consumer (examples/receivers/amqp): the same with an `amqp` destination.
amqp_url=${SWITCHBOARD_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
WEBHOOK_SECRET=$secret python3 examples/receivers/amqp/consumer.py --url "$amqp_url" \
    --exchange "sbci.$tag" --expect 1000 --delete-exchange >"$data/amqp.out" 2>"$data/amqp.err" &
consumer=$!
pids+=($consumer)
wait_for "the RabbitMQ consumer's queue" grep -q '"ready"' "$data/amqp.out"
curl -sf -X POST $api/v1/tenants/default/subscriptions -H "Authorization: Bearer $key" \
    -H 'Content-Type: application/json' \
    -d '{"destination": {"type": "amqp", "url": "'"$amqp_url"'", "exchange": "sbci.'"$tag"'",
         "routing_key": "{tenant}.{agent}"}, "ordering": "per_agent", "secret": "'$secret'"}' >/dev/null
publish_agents
if ! wait "$consumer"; then
    echo "the RabbitMQ consumer failed:" >&2
    tail -5 "$data/amqp.err" >&2
    exit 1
fi
tail -1 "$data/amqp.out"
echo "amqp consumer: 1,000 messages verified with the official library, each agent in order"
