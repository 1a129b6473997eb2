-- wrk script: POST one Agent StatusChanged event per request. No Id, so every request is a new
-- event (the server generates the Id). Usage: see docs/BENCHMARKS.md.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("SWITCHBOARD_ADMIN_KEY") or "bench-admin-key")
wrk.body = '{"CreationDateUtc":"20261123184603","Category":1,"Code":3,"AdditionalFields":{"SessionId":"S-1042","SessionType":"CCA","Username":"jdoe","PhoneNo":"+15551230001","ActivityCode":16,"AvailabilityCode":1,"ActivityName":""}}'
