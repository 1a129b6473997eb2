#!/usr/bin/env python3
"""Checks the JSON Schemas of GET /v1/catalog with an independent validator (python-jsonschema,
which schemathesis brings): a valid event of each Agent code is accepted, one missing a required
field is refused, and so is an event of another code.

Usage: .ci/catalog_schemas.py <directory holding the switchboard binary>
"""

import copy
import json
import os
import sys
import urllib.request

import jsonschema

from serving import serving

KEY = "sb_admin_catalog_0123456789abcdef"
PORT = 18090
binary = os.path.join(sys.argv[1], "switchboard")

with serving(binary, PORT, KEY) as api:
    request = urllib.request.Request(
        f"{api}/v1/catalog", headers={"Authorization": f"Bearer {KEY}"}
    )
    catalog = json.load(urllib.request.urlopen(request))

agent = next(c for c in catalog["categories"] if c["category"] == 1)
base = {"SessionId": "S-1", "SessionType": "CCA", "Username": "jdoe", "PhoneNo": "+15550001"}
extra = {
    2: {"ExitCode": 0},
    3: {"ActivityCode": 16, "AvailabilityCode": 1, "ActivityName": ""},
}
checked = 0
for code in agent["codes"]:
    schema = code["schema"]
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    event = {
        "Id": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "CreationDateUtc": "20261123184603",
        "Category": 1,
        "Code": code["code"],
        "AdditionalFields": {**base, **extra.get(code["code"], {})},
    }
    errors = list(validator.iter_errors(event))
    assert not errors, f"code {code['code']}: a valid event is refused: {errors[0].message}"
    missing = copy.deepcopy(event)
    del missing["AdditionalFields"]["SessionId"]
    assert not validator.is_valid(missing), f"code {code['code']}: SessionId missing is accepted"
    other = dict(event, Code=7)
    assert not validator.is_valid(other), f"code {code['code']}: code 7 is accepted"
    checked += 1
assert checked == 7, f"expected the 7 Agent codes, found {checked}"
print(f"catalog schemas: {checked} Agent codes checked with python-jsonschema")
