-- wrk script: POST a batch of 100 Agent StatusChanged events per request (no Ids: all new).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("SWITCHBOARD_ADMIN_KEY") or "bench-admin-key")
local one = '{"CreationDateUtc":"20261123184603","Category":1,"Code":3,"AdditionalFields":{"SessionId":"S-1042","SessionType":"CCA","Username":"jdoe","PhoneNo":"+15551230001","ActivityCode":16,"AvailabilityCode":1,"ActivityName":""}}'
local events = {}
for i = 1, 100 do events[i] = one end
wrk.body = "[" .. table.concat(events, ",") .. "]"
