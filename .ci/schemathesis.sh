#!/usr/bin/env bash
# Fuzzes the API against its own OpenAPI document with schemathesis: server errors, status
# codes, content types and response schemas must all conform. Usage: .ci/schemathesis.sh <bin dir>
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$1/switchboard"
if ! command -v st >/dev/null || ! python3 -c 'import openapi_spec_validator' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check schemathesis openapi-spec-validator
fi
# The committed document is valid OpenAPI 3.1 (the served one equals it: tests/it/openapi.rs).
python3 -c 'import json, openapi_spec_validator as v; v.validate(json.load(open("docs/openapi.json"))); print("docs/openapi.json: valid OpenAPI", json.load(open("docs/openapi.json"))["openapi"])'

data=$(mktemp -d)
port=18089
export SB_KEY=sb_admin_schemathesis_0123456789abcdef
SWITCHBOARD_ADMIN_KEY=$SB_KEY "$bin" serve --dev --listen 127.0.0.1:$port --data-dir "$data" \
    >"$data/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data"' EXIT
api=http://127.0.0.1:$port
until curl -sf $api/readyz >/dev/null; do sleep 0.2; done
# Something to read: agents' events, and a subscription whose receiver is not there.
for user in alice bob; do
    curl -sf -X POST $api/v1/tenants/default/events -H "Authorization: Bearer $SB_KEY" \
        -H 'Content-Type: application/json' \
        -d '[{"Category": 1, "Code": 1, "AdditionalFields": {"SessionId": "S-'$user'",
              "SessionType": "CCA", "Username": "'$user'", "PhoneNo": "+15550001"}},
             {"Category": 1, "Code": 3, "AdditionalFields": {"SessionId": "S-'$user'",
              "SessionType": "CCA", "Username": "'$user'", "PhoneNo": "+15550001",
              "ActivityCode": 16, "AvailabilityCode": 1, "ActivityName": ""}}]' >/dev/null
done
curl -sf -X POST $api/v1/tenants/default/subscriptions -H "Authorization: Bearer $SB_KEY" \
    -H 'Content-Type: application/json' -d '{"url": "http://127.0.0.1:9/hooks"}' >/dev/null
st --config-file .ci/schemathesis.toml run $api/openapi.json \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples 30 --seed "${SCHEMATHESIS_SEED:-1}"
