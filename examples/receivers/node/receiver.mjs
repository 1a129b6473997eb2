// A minimal Switchboard receiver: verifies each delivery with the official Standard Webhooks
// library, deduplicates on webhook-id, answers 2xx fast.
//
//     npm ci
//     WEBHOOK_SECRET=whsec_... node receiver.mjs --port 9101
//
// Each delivery is printed as one JSON line on stdout: {webhook_id, sequence, event}.

import { createServer } from "node:http";
import { parseArgs } from "node:util";
import { Webhook } from "standardwebhooks";

const { values } = parseArgs({
  options: { host: { type: "string", default: "127.0.0.1" }, port: { type: "string", default: "9101" } },
});
const webhook = new Webhook(process.env.WEBHOOK_SECRET);
// Delivery is at least once: an id seen before is acknowledged and not processed again. (A real
// receiver keeps these in its database, as long as replays may come.)
const seen = new Set();

const server = createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    // Verify the raw bytes, before any parsing.
    const body = Buffer.concat(chunks).toString("utf8");
    let event;
    try {
      event = webhook.verify(body, req.headers);
    } catch (e) {
      res.writeHead(401).end(`signature: ${e.message}`);
      return;
    }
    const id = req.headers["webhook-id"];
    if (seen.has(id)) {
      res.writeHead(200).end("duplicate");
      return;
    }
    seen.add(id);
    // Answer first, work after: here the "work" is printing it.
    res.writeHead(204).end();
    const line = { webhook_id: id, sequence: req.headers["switchboard-sequence"], event };
    process.stdout.write(JSON.stringify(line) + "\n");
  });
});
server.listen(Number(values.port), values.host, () => {
  console.error(`listening on http://${values.host}:${values.port}`);
});
