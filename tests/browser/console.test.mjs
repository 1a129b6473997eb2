// The console in a real browser: Debian's chromium (/usr/bin/chromium) driven by playwright-core,
// against a real server and a receiver on loopback. Run by .ci/browser.sh:
//
//   SWITCHBOARD_BIN=target/debug/switchboard node --test tests/browser/console.test.mjs
//
// With SCREENSHOTS=<dir> it also fills the server with a simulated contact center and saves a
// screenshot of every page there (docs/screenshots/ holds the committed ones).

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, test } from "node:test";
import { gzipSync } from "node:zlib";
import { chromium } from "playwright-core";

const BIN = resolve(process.env.SWITCHBOARD_BIN || "target/debug/switchboard");
const PORT = 18094;
const RECEIVER_PORT = 18095;
const BASE = `http://127.0.0.1:${PORT}`;
const ADMIN = "sb_admin_browser_tests_0123456789abcdef";
// Within 2 s of an event (the bound for the events page and the wallboard).
const SOON = 2000;

let server;
let data;
let browser;
let page;
let receiverFails = false;
let receiverBody = "receiver down for the test";
const received = [];
const outside = []; // requests the page made to anything but this server
const problems = []; // console errors (a CSP violation is one) and page errors

const receiver = http.createServer((req, res) => {
  let body = "";
  req.on("data", (c) => (body += c));
  req.on("end", () => {
    received.push({ headers: req.headers, body });
    res.writeHead(receiverFails ? 500 : 204, { "content-type": "text/plain" });
    res.end(receiverFails ? receiverBody : "");
  });
});

async function call(method, path, body, key = ADMIN) {
  const r = await fetch(BASE + path, {
    method,
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

let counter = 0;
function agentEvent(code, username, fields = {}) {
  counter += 1;
  const now = new Date().toISOString().replace(/\D/g, "").slice(0, 14);
  return {
    Id: crypto.randomUUID(),
    CreationDateUtc: now,
    Category: 1,
    Code: code,
    AdditionalFields: {
      SessionId: `S-${username}`,
      SessionType: "CCA",
      Username: username,
      PhoneNo: "+15550001",
      ...fields,
    },
  };
}

const status = (username, activity, availability) =>
  agentEvent(3, username, { ActivityCode: activity, AvailabilityCode: availability, ActivityName: "" });

async function until(what, check, limit = 20000) {
  const end = Date.now() + limit;
  for (;;) {
    const got = await check();
    if (got) return got;
    if (Date.now() > end) throw new Error(`not within ${limit} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function signIn(key) {
  await page.goto(BASE + "/");
  // A fresh tab's state: no key kept.
  await page.evaluate(() => sessionStorage.clear());
  await page.reload();
  await page.getByLabel("API key").fill(key);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("navigation", { name: "Pages" }).waitFor();
}

async function signOut() {
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByLabel("API key").waitFor();
}

before(async () => {
  data = mkdtempSync(join(tmpdir(), "switchboard-browser-"));
  await new Promise((r) => receiver.listen(RECEIVER_PORT, "127.0.0.1", r));
  // Agents are grouped by Team (the wallboard's counts).
  const catalog = join(data, "catalog.toml");
  writeFileSync(catalog, '[agents]\ngroup_fields = ["Team"]\n');
  server = spawn(BIN, ["serve", "--dev", "--listen", `127.0.0.1:${PORT}`, "--data-dir", data], {
    env: { ...process.env, SWITCHBOARD_ADMIN_KEY: ADMIN, SWITCHBOARD_CATALOG_FILE: catalog, RUST_LOG: "warn" },
    stdio: ["ignore", "ignore", "inherit"],
  });
  await until("the server is ready", () => fetch(`${BASE}/readyz`).then((r) => r.ok, () => false));
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("request", (r) => {
    const url = r.url();
    if (!url.startsWith(BASE) && !url.startsWith("data:")) outside.push(url);
  });
  page.on("console", (m) => m.type() === "error" && problems.push(m.text()));
  page.on("pageerror", (e) => problems.push(String(e)));
});

after(async () => {
  await browser?.close();
  server?.kill("SIGTERM");
  receiver.close();
  if (data) rmSync(data, { recursive: true, force: true });
});

test("the page is small, strict and loads nothing from elsewhere", async () => {
  const r = await fetch(`${BASE}/`);
  assert.equal(r.status, 200);
  const csp = r.headers.get("content-security-policy");
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'self'/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  const html = await r.text();
  assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/, "no inline script");
  assert.doesNotMatch(html, /<style|style=/, "no inline style");
  let total = gzipSync(html).length;
  for (const asset of ["/console/app.js", "/console/app.css"]) {
    const a = await fetch(BASE + asset);
    assert.equal(a.status, 200);
    assert.match(a.headers.get("content-security-policy"), /default-src 'none'/);
    total += gzipSync(Buffer.from(await a.arrayBuffer())).length;
  }
  assert.ok(total < 300 * 1024, `assets ${total} bytes compressed`);
  const started = Date.now();
  await page.goto(BASE + "/");
  await page.getByLabel("API key").waitFor();
  const timing = await page.evaluate(() => {
    const n = performance.getEntriesByType("navigation")[0];
    return { interactive: n.domInteractive, complete: n.loadEventEnd };
  });
  console.log(
    `assets: ${(total / 1024).toFixed(1)} KiB gzipped; sign-in form shown ${Date.now() - started} ms after navigation (domInteractive ${timing.interactive.toFixed(0)} ms)`,
  );
});

test("sign in, subscribe a receiver, see events on the events page and the wallboard, retry a failed delivery", async () => {
  await signIn(ADMIN);
  // The key is kept for the tab only, never in the URL.
  assert.equal(await page.evaluate(() => sessionStorage.getItem("switchboard.key")), ADMIN);
  assert.doesNotMatch(page.url(), new RegExp(ADMIN));

  // Create a subscription from the UI: two attempts (a retry at once), then failed.
  await page.getByRole("link", { name: "Subscriptions" }).click();
  await page.getByText("New subscription").click();
  await page.getByLabel("URL").fill(`http://127.0.0.1:${RECEIVER_PORT}/hooks`);
  await page.getByLabel("Description").fill("CRM connector");
  await page.getByLabel("Retry delays (s, comma-separated)").fill("0");
  await page.getByRole("button", { name: "Create subscription" }).click();
  const heading = page.getByRole("heading", { name: /^Subscription sub_/ });
  await heading.waitFor();
  const subId = (await heading.textContent()).replace("Subscription ", "");
  const sub = await call("GET", `/v1/tenants/default/subscriptions/${subId}`);
  assert.equal(sub.url, `http://127.0.0.1:${RECEIVER_PORT}/hooks`);
  assert.deepEqual(sub.retry_schedule_secs, [0]);

  // Events show on the events page within 2 s.
  await page.getByRole("link", { name: "Events" }).click();
  await page.getByRole("button", { name: "Search" }).waitFor();
  const signIn1 = agentEvent(1, "ana");
  await call("POST", "/v1/tenants/default/events", [signIn1, status("ana", 16, 1)]);
  await page.getByRole("button", { name: "Search" }).click();
  await page.getByRole("link", { name: signIn1.Id }).waitFor({ timeout: SOON });
  // An event's detail shows its deliveries and, on demand, their attempts with the response.
  await until("delivered", () => received.length >= 2);
  await page.getByRole("link", { name: signIn1.Id }).click();
  await page.getByRole("heading", { name: `Event ${signIn1.Id}` }).waitFor();
  await page.getByRole("button", { name: "Attempts" }).click();
  await page.getByRole("columnheader", { name: "Response body" }).waitFor();
  assert.equal(await page.getByRole("cell", { name: "204", exact: true }).count(), 2);

  // The wallboard: a tile per agent, updated within 2 s of a change, without reloading.
  await page.getByRole("link", { name: "Agents" }).click();
  const tile = page.locator('article[data-username="ana"]');
  await tile.getByText("Available").waitFor();
  assert.match(await tile.getAttribute("class"), /a-available/);
  await call("POST", "/v1/tenants/default/events", status("ana", 34, 0));
  await tile.getByText("On Break").waitFor({ timeout: SOON });
  assert.match(await tile.getAttribute("class"), /a-unavailable/);
  await call("POST", "/v1/tenants/default/events", [
    agentEvent(1, "ben"),
    agentEvent(4, "ben", { WorkItemId: "W-42", WorkItemType: "Voice" }),
  ]);
  await page.locator('article[data-username="ben"]').getByText(/Receiving Voice W-42/).waitFor({ timeout: SOON });
  // ana is on a break and ben has set no status yet: both not ready.
  await page.getByRole("button", { name: /^Not ready \(2\)/ }).click();
  assert.equal(await page.locator("article.tile").count(), 2);
  await page.getByRole("button", { name: /^All/ }).click();

  // The receiver fails; the delivery ends failed; it is retried from the deliveries page.
  receiverFails = true;
  const lost = agentEvent(2, "ana", { ExitCode: 0 });
  await call("POST", "/v1/tenants/default/events", lost);
  const failed = await until("the delivery failed", async () => {
    const page = await call("GET", `/v1/tenants/default/subscriptions/${subId}/deliveries?status=failed`);
    return page.data.find((d) => d.event_id === lost.Id);
  });
  receiverFails = false;
  await page.getByRole("link", { name: "Deliveries" }).click();
  const row = page.getByRole("row").filter({ hasText: lost.Id });
  await row.waitFor();
  await row.getByRole("button", { name: "Retry" }).click();
  await until("the retried delivery succeeded", async () => {
    const d = await call("GET", `/v1/tenants/default/deliveries/${failed.id}`);
    return d.status === "succeeded" && d.attempts.length === 3;
  });
  const last = received[received.length - 1];
  assert.equal(last.headers["webhook-id"], lost.Id);

  // Overview counts it all.
  await page.getByRole("link", { name: "Overview" }).click();
  await page.getByText("pending deliveries").waitFor();
  await page.getByText("disabled subscriptions").waitFor();
  await signOut();
  assert.equal(await page.evaluate(() => sessionStorage.getItem("switchboard.key")), null);
});

test("the wallboard counts the signed-in agents by team, live", async () => {
  await signIn(ADMIN);
  const team = (name, extra = {}) => ({ Team: name, ...extra });
  await call("POST", "/v1/tenants/default/events", [
    agentEvent(1, "tara", team("Sales")),
    agentEvent(1, "tom", team("Sales")),
    agentEvent(1, "tess", team("Support")),
    agentEvent(3, "tara", team("Sales", { ActivityCode: 16, AvailabilityCode: 1, ActivityName: "" })),
  ]);
  await page.goto(BASE + "/#/agents");
  await page.getByLabel("Count by").selectOption("Team");
  assert.match(page.url(), /by=Team/);
  const sales = page.locator('.counts tr[data-group="Sales"] td');
  const support = page.locator('.counts tr[data-group="Support"] td');
  await until("Sales counted", async () => (await sales.count()) > 0 && (await sales.nth(0).textContent()) === "2");
  // Signed in, on a work item, available, internal, not ready, no status yet.
  assert.deepEqual(await sales.allTextContents(), ["2", "0", "1", "0", "0", "1"]);
  assert.equal(await support.nth(0).textContent(), "1");
  // tom moves to Support: both rows change within 2 s, without reloading.
  await call("POST", "/v1/tenants/default/events", [agentEvent(3, "tom", team("Support", { ActivityCode: 0, AvailabilityCode: 0, ActivityName: "" }))]);
  await until("tom counted in Support", async () => (await support.nth(0).textContent()) === "2", SOON);
  assert.equal(await sales.nth(0).textContent(), "1");
  assert.equal(await support.nth(4).textContent(), "1", "tom is not ready");
  // The whole floor: one row.
  await page.getByLabel("Count by").selectOption("");
  await until("one row for the floor", async () => (await page.locator(".counts tbody tr").count()) === 1);
  await signOut();
});

test("a read key sees no edit controls", async () => {
  const key = (await call("POST", "/v1/tenants/default/keys", { name: "viewer", scopes: ["read"] })).key;
  await signIn(key);
  const nav = page.getByRole("navigation", { name: "Pages" });
  assert.equal(await nav.getByRole("link", { name: /Keys/ }).count(), 0);
  await nav.getByRole("link", { name: "Subscriptions" }).click();
  await page.getByRole("heading", { name: "Subscriptions" }).waitFor();
  assert.equal(await page.getByText("New subscription").count(), 0);
  await page.getByRole("link", { name: /^sub_/ }).first().click();
  await page.getByRole("heading", { name: /^Subscription sub_/ }).waitFor();
  for (const name of ["Disable", "Enable", "Delete", "Rotate", "Replay", "Send a test event", "Show"]) {
    assert.equal(await page.getByRole("button", { name }).count(), 0, name);
  }
  assert.equal(await page.getByText("Edit").count(), 0);
  await page.getByRole("link", { name: "Its deliveries →" }).click();
  await page.getByLabel("Status").selectOption("succeeded");
  await page.getByRole("row").nth(1).waitFor();
  assert.equal(await page.getByRole("button", { name: "Retry" }).count(), 0);
  await signOut();
});

test("the subscriptions page shows each one's lag, marked past its budget", async () => {
  const sub = await call("POST", "/v1/tenants/default/subscriptions", {
    url: `http://127.0.0.1:${RECEIVER_PORT}/lagging`,
    description: "behind",
    enabled: false,
    lag_budget_secs: 1,
  });
  await call("POST", "/v1/tenants/default/events", [agentEvent(1, "lag1"), agentEvent(1, "lag2")]);
  // Disabled, it gets no new events; a replay makes them wait for it.
  await call("POST", `/v1/tenants/default/subscriptions/${sub.id}/replay`, { since: "19700101000000" });
  const pending = (await call("GET", `/v1/tenants/default/subscriptions/${sub.id}`)).lag.pending;
  assert.ok(pending >= 2, `pending ${pending}`);
  await new Promise((r) => setTimeout(r, 1500));
  await signIn(ADMIN);
  await page.getByRole("link", { name: "Subscriptions" }).click();
  const row = page.getByRole("row").filter({ hasText: sub.id });
  const lag = row.getByText(new RegExp(`^${pending} pending, oldest 00:0[1-9]$`));
  await lag.waitFor();
  assert.match(await lag.getAttribute("class"), /s-lagging/);
  await signOut();
});

test("a pull subscription shows its mode, partitions and lag, and no push-only actions", async () => {
  const sub = await call("POST", "/v1/tenants/default/subscriptions", {
    mode: "pull",
    partitions: 2,
    start: "earliest",
    description: "wfm puller",
  });
  const pending = (await call("GET", `/v1/tenants/default/subscriptions/${sub.id}`)).lag.pending;
  assert.ok(pending >= 2, `pending ${pending}`);
  await signIn(ADMIN);
  // The overview reads every push subscription's deliveries: a pull one must not break it.
  await page.getByRole("heading", { name: "Overview" }).waitFor();
  await page.getByRole("link", { name: "Subscriptions" }).click();
  const row = page.getByRole("row").filter({ hasText: sub.id });
  await row.getByText("pull · 2 partitions").waitFor();
  await row.getByText(new RegExp(`^${pending} pending`)).waitFor();
  assert.equal(await row.getByRole("link", { name: "Deliveries" }).count(), 0);
  await row.getByRole("link", { name: sub.id }).click();
  await page.getByText("pull: read from …/messages, 2 partitions").waitFor();
  assert.equal(await page.getByRole("button", { name: "Send a test event" }).count(), 0);
  assert.equal(await page.getByRole("button", { name: "Rotate" }).count(), 0);
  assert.equal(await page.getByRole("link", { name: "Its deliveries →" }).count(), 0);
  await page.getByRole("button", { name: "Disable" }).waitFor();
  await signOut();
});

test("a NATS subscription shows its destination, its password masked", async () => {
  // Never connected to: nothing is published while this test looks (no events are sent).
  const sub = await call("POST", "/v1/tenants/default/subscriptions", {
    destination: { type: "nats", url: "nats://cc:s3cret@127.0.0.1:4222", subject: "cc.{tenant}.{agent}" },
    description: "to the stream",
    enabled: false,
  });
  await signIn(ADMIN);
  await page.getByRole("heading", { name: "Overview" }).waitFor();
  await page.getByRole("link", { name: "Subscriptions" }).click();
  const row = page.getByRole("row").filter({ hasText: sub.id });
  await row.getByText("nats · cc.{tenant}.{agent} · nats://cc:***@127.0.0.1:4222").waitFor();
  await row.getByRole("link", { name: sub.id }).click();
  await page.getByRole("row", { name: /Destination/ }).getByText("nats · cc.{tenant}.{agent}", { exact: false }).waitFor();
  assert.equal(await page.getByText("s3cret").count(), 0);
  await signOut();
});

test("a subscription's receiver credentials show their type, never a secret", async () => {
  // Disabled: nothing is sent while this test looks.
  const sub = await call("POST", "/v1/tenants/default/subscriptions", {
    url: "https://hooks.example.com/in",
    auth: { type: "oauth2", token_url: "https://auth.example.com/token", client_id: "cc-client", client_secret: "cl1ent-s3cret-xyz" },
    signature_scheme: "github",
    description: "behind a gateway",
    enabled: false,
  });
  await signIn(ADMIN);
  await page.getByRole("heading", { name: "Overview" }).waitFor();
  await page.getByRole("link", { name: "Subscriptions" }).click();
  await page.getByRole("row").filter({ hasText: sub.id }).getByRole("link", { name: sub.id }).click();
  await page.getByRole("row", { name: /Receiver auth/ }).getByText("OAuth 2 client credentials", { exact: false }).waitFor();
  await page.getByRole("row", { name: /Signature scheme/ }).getByText("github").waitFor();
  assert.equal(await page.getByText("cl1ent-s3cret-xyz").count(), 0);
  assert.equal((await page.content()).includes("cl1ent-s3cret-xyz"), false);
  await signOut();
});

test("keyboard and labels: every control is named, the pages are reached by keyboard", async () => {
  await signIn(ADMIN);
  for (const hash of ["#/overview", "#/events", "#/subscriptions", "#/deliveries", "#/agents", "#/keys"]) {
    await page.goto(BASE + "/" + hash);
    await page.locator("main h1").waitFor();
    const unnamed = await page.evaluate(() =>
      [...document.querySelectorAll("input, select, textarea, button")]
        .filter((el) => !el.closest("label") && !el.getAttribute("aria-label") && !el.textContent.trim())
        .map((el) => el.outerHTML),
    );
    assert.deepEqual(unnamed, [], hash);
  }
  await page.goto(BASE + "/#/overview");
  await page.locator("main h1").waitFor();
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.textContent), "Skip to content");
  await page.keyboard.press("Tab");
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.textContent), "Events");
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: "Events" }).waitFor();
  await signOut();
});

test("hostile data in every field the console shows is shown as text and runs nothing", async () => {
  // Anyone who can post an event or name a thing can put these in front of an operator.
  const img = `<img src=x onerror="window.__pwned=1">`;
  const script = `<script>window.__pwned=1</script>`;
  const js = "javascript:window.__pwned=1";
  const rtl = "\u202Eexe.gnp";
  const bad = `${img}${script}${js}${rtl}`;
  await call("POST", "/v1/tenants", { id: "hostile", name: bad });
  await call("POST", "/v1/tenants/default/keys", { name: bad, scopes: ["read"] });
  const sub = await call("POST", "/v1/tenants/default/subscriptions", {
    url: `http://127.0.0.1:${RECEIVER_PORT}/${encodeURIComponent(img)}?q=${encodeURIComponent(js)}`,
    description: bad,
    headers: { "X-Note": js },
    retry_schedule_secs: [],
  });
  // The receiver answers with it too: the attempt log shows its body.
  receiverFails = true;
  receiverBody = bad;
  const event = agentEvent(1, bad, { Skill: bad, WorkItemId: js });
  await call("POST", "/v1/tenants/default/events", [
    event,
    agentEvent(3, bad, { ActivityCode: 16, AvailabilityCode: 1, ActivityName: bad }),
    agentEvent(4, bad, { WorkItemId: img, WorkItemType: js }),
  ]);
  await until("the hostile deliveries failed", async () => {
    const page = await call("GET", `/v1/tenants/default/subscriptions/${sub.id}/deliveries?status=failed`);
    return page.data.length >= 3;
  });
  receiverFails = false;
  receiverBody = "receiver down for the test";

  await signIn(ADMIN);
  const pages = [
    "#/overview",
    "#/events",
    `#/events/${event.Id}`,
    "#/subscriptions",
    `#/subscriptions/${sub.id}`,
    `#/deliveries?sub=${sub.id}&status=failed`,
    "#/agents",
    "#/keys",
  ];
  for (const hash of pages) {
    await page.goto(BASE + "/" + hash);
    await page.locator("main h1").waitFor();
    // Whatever loads lazily (the wallboard's stream, an event's attempts) has its moment.
    const attempts = page.getByRole("button", { name: "Attempts" });
    if (await attempts.count()) await attempts.first().click();
    await page.waitForTimeout(300);
    const found = await page.evaluate(() => ({
      pwned: window.__pwned === 1,
      imgs: document.querySelectorAll("main img").length,
      scripts: document.querySelectorAll("main script").length,
      jsLinks: [...document.querySelectorAll("a[href]")].filter((a) => /^\s*javascript:/i.test(a.getAttribute("href"))).length,
      text: document.querySelector("main").textContent,
    }));
    assert.equal(found.pwned, false, hash);
    assert.equal(found.imgs, 0, `${hash}: an <img> was made from data`);
    assert.equal(found.scripts, 0, `${hash}: a <script> was made from data`);
    assert.equal(found.jsLinks, 0, `${hash}: a javascript: link`);
    // The pages that show the data itself show it as text.
    if ([`#/events/${event.Id}`, "#/subscriptions", `#/subscriptions/${sub.id}`, "#/agents"].includes(hash)) {
      assert.ok(found.text.includes("<img src=x") || found.text.includes(js), `${hash} shows the data as text`);
    }
  }
  await signOut();
});

test("no third-party requests and no console errors in all of it", () => {
  assert.deepEqual(outside, []);
  assert.deepEqual(problems, []);
});

test("screenshots of every page with a simulated contact center", { skip: !process.env.SCREENSHOTS }, async () => {
  const dir = resolve(process.env.SCREENSHOTS);
  const sim = spawn(
    BIN,
    ["simulate", "--server", BASE, "--key", ADMIN, "--agents", "36", "--rate", "60", "--duration", "600", "--seed", "7"],
    { stdio: "ignore" },
  );
  // A receiver that fails now and then, so failures show.
  let n = 0;
  receiver.removeAllListeners("request");
  receiver.on("request", (req, res) => {
    n += 1;
    req.resume();
    res.writeHead(n % 9 === 0 ? 503 : 204).end();
  });
  await call("POST", "/v1/tenants/default/subscriptions", {
    url: `http://127.0.0.1:${RECEIVER_PORT}/wallboard`,
    description: "Wallboard (latest status only)",
    coalesce: "latest_status",
    max_age_secs: 60,
    retry_schedule_secs: [1, 5],
  });
  await new Promise((r) => setTimeout(r, 10000));
  await signIn(ADMIN);
  const shots = [
    ["overview", "#/overview"],
    ["events", "#/events"],
    ["subscriptions", "#/subscriptions"],
    ["deliveries", "#/deliveries?status=failed"],
    ["agents", "#/agents"],
    ["keys", "#/keys"],
  ];
  for (const [name, hash] of shots) {
    await page.goto(BASE + "/" + hash);
    await page.locator("main h1").waitFor();
    await new Promise((r) => setTimeout(r, name === "overview" ? 4500 : 800));
    await page.screenshot({ path: join(dir, `${name}.png`), fullPage: name !== "events" });
  }
  const event = (await call("GET", "/v1/tenants/default/events?limit=1&category=1&code=3")).data[0];
  await page.goto(`${BASE}/#/events/${event.event.Id}`);
  await page.getByRole("button", { name: "Attempts" }).first().click();
  await new Promise((r) => setTimeout(r, 500));
  await page.screenshot({ path: join(dir, "event.png"), fullPage: true });
  const subs = (await call("GET", "/v1/tenants/default/subscriptions")).data;
  const wallboard = subs.find((s) => s.coalesce === "latest_status");
  await page.goto(`${BASE}/#/subscriptions/${wallboard.id}`);
  await page.locator("main h1").waitFor();
  await page.screenshot({ path: join(dir, "subscription.png"), fullPage: true });
  sim.kill("SIGTERM");
  console.log(`screenshots in ${dir}: ${readFileSync(join(dir, "agents.png")).length} bytes for the wallboard`);
});
