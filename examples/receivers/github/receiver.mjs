// A Switchboard receiver for a subscription with "signature_scheme": "github": verifies each
// delivery's X-Hub-Signature-256 with @octokit/webhooks-methods (the verifier GitHub's own
// ecosystem uses, not HMAC code of ours), deduplicates on the event's Id, answers 2xx fast.
//
//     npm ci
//     WEBHOOK_SECRET=whsec_... node receiver.mjs --port 9102
//
// The secret is passed whole, "whsec_" included: that string is the HMAC key, as GitHub's
// libraries take a secret. Each delivery is printed as one JSON line on stdout:
// {webhook_id, verified, sequence, event}, webhook_id being the event's Id (which is also its
// webhook-id header).

import { createServer } from "node:http";
import { parseArgs } from "node:util";
import { verify } from "@octokit/webhooks-methods";

const { values } = parseArgs({
  options: { host: { type: "string", default: "127.0.0.1" }, port: { type: "string", default: "9102" } },
});
const secret = process.env.WEBHOOK_SECRET;
if (!secret) {
  console.error("WEBHOOK_SECRET is not set");
  process.exit(2);
}
// Delivery is at least once: an id seen before is acknowledged and not processed again. (A real
// receiver keeps these in its database, as long as replays may come.) The id is taken from the
// signed body: this scheme signs the body only, not the webhook-id header.
const seen = new Set();

const server = createServer((req, res) => {
  if (req.method === "GET") {
    res.writeHead(200).end("ok");
    return;
  }
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", async () => {
    // Verify the raw bytes, before any parsing. verify() throws (a TypeError) when the header
    // is missing, and answers false when the signature does not match.
    const body = Buffer.concat(chunks).toString("utf8");
    let ok = false;
    try {
      ok = await verify(secret, body, req.headers["x-hub-signature-256"] ?? "");
    } catch (e) {
      res.writeHead(401).end(`signature: ${e.message}`);
      return;
    }
    if (!ok) {
      res.writeHead(401).end("signature: X-Hub-Signature-256 does not match");
      return;
    }
    const event = JSON.parse(body);
    // A batch subscription sends an array (its webhook-id is batch_…): deduplicate on each
    // element's Id there.
    const id = Array.isArray(event) ? req.headers["webhook-id"] : event.Id;
    if (seen.has(id)) {
      res.writeHead(200).end("duplicate");
      return;
    }
    seen.add(id);
    // Answer first, work after: here the "work" is printing it.
    res.writeHead(204).end();
    const line = { webhook_id: id, verified: true, sequence: req.headers["switchboard-sequence"], event };
    process.stdout.write(JSON.stringify(line) + "\n");
  });
});
server.listen(Number(values.port), values.host, () => {
  console.error(`listening on http://${values.host}:${values.port}`);
});
