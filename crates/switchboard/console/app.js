// Switchboard console (DESIGN §4, docs/console.md): one page, no dependencies, no build step.
// Every element is built with the DOM API (text goes in as text, never as HTML); every request
// goes to this origin with the key in an Authorization header; the key lives in sessionStorage
// only, never in a URL. What the key may not do is not offered.

const KEY = "switchboard.key";
const TENANT = "switchboard.tenant";
const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const statusLine = document.getElementById("status");

let me = null; // {admin, tenant_id, scopes}
let tenant = null; // the tenant shown
let tenants = []; // the admin's choice of tenants
let catalog = null;
const cleanup = []; // what the page shown stops when it is left: timers, streams

// ---- small helpers ----------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "value") el.value = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

let ids = 0;
/** A labelled control: the label wraps the control, so it is named for assistive tech. */
function field(label, control, cls) {
  control.id ||= `f${++ids}`;
  return h("label", { class: cls, for: control.id }, label, control);
}

// Where a push subscription's deliveries go: its URL, or a broker's subject (DESIGN §17).
function target(s) {
  const d = s.destination;
  if (d && d.type !== "http") return `${d.type} · ${d.subject || d.routing_key || ""} · ${d.url}`;
  return s.url || "";
}

function say(text, ok = false) {
  statusLine.textContent = text;
  statusLine.className = ok ? "status ok" : "status";
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

class ApiError extends Error {
  constructor(status, problem) {
    super(problem && problem.title ? problem.title : `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY)}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 204) return null;
  const type = r.headers.get("content-type") || "";
  const data = type.includes("json") ? await r.json() : await r.text();
  if (!r.ok) {
    if (r.status === 401 && me) signOut("The key is no longer valid: sign in again.");
    throw new ApiError(r.status, data);
  }
  return data;
}

/** A problem's title, detail and every field error, as one line. */
function describe(err) {
  const p = err && err.problem;
  if (p && typeof p === "object") {
    const fields = (p.errors || []).map(
      (e) => `${e.index !== undefined ? `[${e.index}] ` : ""}${e.field}: ${e.message}`,
    );
    return [p.title || `HTTP ${err.status}`, p.detail, ...fields].filter(Boolean).join(" — ");
  }
  return String((err && err.message) || err);
}

/** Runs `action`, showing its failure (or `done`) in the status line. */
async function attempt(action, done) {
  try {
    const result = await action();
    if (done) say(typeof done === "function" ? done(result) : done, true);
    return result;
  } catch (err) {
    say(describe(err));
    return undefined;
  }
}

const can = (scope) =>
  !!me &&
  (me.admin ||
    me.scopes.includes(scope) ||
    (scope === "read" && me.scopes.includes("manage")));
const t = (path) => `/v1/tenants/${encodeURIComponent(tenant)}${path}`;

/** yyyyMMddHHmmss (UTC) → a Date. */
function parseStamp(s) {
  if (!s || s.length !== 14) return null;
  const n = (a, b) => Number(s.slice(a, b));
  return new Date(Date.UTC(n(0, 4), n(4, 6) - 1, n(6, 8), n(8, 10), n(10, 12), n(12, 14)));
}

const showStamp = (s) => {
  const d = parseStamp(s);
  return d ? d.toISOString().replace("T", " ").slice(0, 19) : s || "";
};
const showMillis = (ms) =>
  ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) : "";
const showTime = (rfc3339) => (rfc3339 ? rfc3339.replace("T", " ").slice(0, 19) : "");

/** A datetime-local value, read as UTC, to yyyyMMddHHmmss; and back. */
const toStamp = (v) => (v ? `${v.replace(/\D/g, "")}00`.slice(0, 14) : "");
const fromStamp = (s) =>
  s && s.length === 14
    ? `${s.slice(0, 4)}-${s.slice(4, 6)}-${s.slice(6, 8)}T${s.slice(8, 10)}:${s.slice(10, 12)}`
    : "";

function duration(secs) {
  secs = Math.max(0, Math.floor(secs));
  const hh = Math.floor(secs / 3600);
  const mm = String(Math.floor((secs % 3600) / 60)).padStart(2, "0");
  const ss = String(secs % 60).padStart(2, "0");
  return hh ? `${hh}:${mm}:${ss}` : `${mm}:${ss}`;
}

const pill = (status) => h("span", { class: `pill s-${status}` }, status);

// How far behind a subscription is: its pending deliveries and the oldest one's wait, marked
// when past its lag budget.
function lagCell(s) {
  if (!s.lag || !s.lag.pending) return h("span", { class: "muted" }, "caught up");
  const age = Math.floor(s.lag.oldest_pending_age_ms / 1000);
  const over = s.lag_budget_secs != null && s.lag.oldest_pending_age_ms > s.lag_budget_secs * 1000;
  return h(
    "span",
    { class: over ? "pill s-lagging" : "", title: over ? `over its budget of ${s.lag_budget_secs} s` : "" },
    `${s.lag.pending} pending, oldest ${duration(age)}`,
  );
}

function table(headers, rows, empty = "Nothing here.") {
  if (!rows.length) return h("p", { class: "muted" }, empty);
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
    h("tbody", {}, rows),
  );
}

async function loadCatalog() {
  catalog ||= await api("GET", "/v1/catalog");
  return catalog;
}

function categoryName(cat) {
  const c = catalog && catalog.categories.find((x) => x.category === cat);
  return c ? c.name : `category ${cat}`;
}

function codeName(cat, code) {
  const c = catalog && catalog.categories.find((x) => x.category === cat);
  const k = c && c.codes.find((x) => x.code === code);
  return k ? k.name : `code ${code}`;
}

// ---- sign-in, the bar, the router --------------------------------------------------------

async function loadMe() {
  me = await api("GET", "/v1/me");
  if (me.admin) {
    tenants = (await api("GET", "/v1/tenants?limit=1000")).data;
    const kept = sessionStorage.getItem(TENANT);
    tenant = tenants.some((x) => x.id === kept) ? kept : tenants[0] ? tenants[0].id : "default";
  } else {
    tenant = me.tenant_id;
  }
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  me = null;
  location.hash = "#/";
  route();
  if (message) say(message);
}

function signInPage() {
  nav.hidden = true;
  who.replaceChildren();
  const input = h("input", {
    type: "password",
    name: "key",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
  });
  const form = h(
    "form",
    {
      onsubmit: async (e) => {
        e.preventDefault();
        sessionStorage.setItem(KEY, input.value.trim());
        try {
          await loadMe();
          location.hash = "#/overview";
          route();
        } catch (err) {
          sessionStorage.removeItem(KEY);
          me = null;
          say(err.status === 401 ? "This key is not valid." : describe(err));
        }
      },
    },
    field("API key", input),
    h(
      "p",
      { class: "muted" },
      "Kept in this browser tab only (sessionStorage) and sent as a bearer header, never in a URL.",
    ),
    h("button", { class: "primary", type: "submit" }, "Sign in"),
  );
  main.replaceChildren(h("section", { class: "signin" }, h("h1", {}, "Sign in"), form));
  input.focus();
}

const pages = {
  overview: { title: "Overview", render: overviewPage, needs: "read" },
  events: { title: "Events", render: eventsPage, needs: "read" },
  subscriptions: { title: "Subscriptions", render: subscriptionsPage, needs: "read" },
  deliveries: { title: "Deliveries", render: deliveriesPage, needs: "read" },
  agents: { title: "Agents", render: agentsPage, needs: "read" },
  keys: { title: "Keys", render: keysPage, needs: "manage" },
};

/** A page's name: the admin's Keys page is also the tenants'. */
const title = (name) => (name === "keys" && me.admin ? "Tenants and keys" : pages[name].title);

function drawBar(current) {
  nav.hidden = false;
  nav.replaceChildren(
    ...Object.entries(pages)
      .filter(([, p]) => can(p.needs))
      .map(([name, p]) =>
        h(
          "a",
          { href: `#/${name}`, "aria-current": name === current ? "page" : null },
          title(name),
        ),
      ),
  );
  const parts = [];
  if (me.admin) {
    const select = h(
      "select",
      {
        onchange: (e) => {
          tenant = e.target.value;
          sessionStorage.setItem(TENANT, tenant);
          route();
        },
      },
      tenants.map((x) => h("option", { value: x.id, selected: x.id === tenant }, x.name || x.id)),
    );
    parts.push(field("Tenant", select, "check"), h("span", {}, "admin key"));
  } else {
    parts.push(h("span", {}, `${tenant} · ${me.scopes.join(", ")}`));
  }
  parts.push(h("button", { type: "button", onclick: () => signOut("Signed out.") }, "Sign out"));
  who.replaceChildren(...parts);
}

async function route() {
  while (cleanup.length) cleanup.pop()();
  say("");
  if (!me) return signInPage();
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const [name, ...rest] = path.split("/").filter(Boolean);
  const q = new URLSearchParams(query || "");
  const page = pages[name] && can(pages[name].needs) ? name : can("read") ? "overview" : null;
  drawBar(page);
  if (!page) {
    main.replaceChildren(
      h("h1", {}, "Nothing to show"),
      h("p", {}, "This key may only publish events; the console needs a key with read."),
    );
    return;
  }
  document.title = `${title(page)} · Switchboard`;
  main.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  try {
    await loadCatalog();
    await pages[page].render(rest, q);
  } catch (err) {
    main.replaceChildren(h("h1", {}, pages[page].title), h("p", {}, describe(err)));
  }
}

// ---- Overview ----------------------------------------------------------------------------

/** Sums the samples of a metric in Prometheus text, those whose labels contain `having`. */
function metric(text, name, having) {
  let total = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const next = line[name.length];
    if (next !== " " && next !== "{") continue;
    if (having && !line.includes(having)) continue;
    total += Number(line.slice(line.lastIndexOf(" ") + 1)) || 0;
  }
  return total;
}

async function overviewPage() {
  const cards = h("div", { class: "cards", "aria-live": "polite" });
  const failures = h("div");
  main.replaceChildren(
    h("h1", {}, "Overview"),
    cards,
    h("h2", {}, "Recent failures"),
    failures,
  );
  let last = null;
  const card = (label, value, hint) =>
    h(
      "div",
      { class: "card" },
      h("div", { class: "big" }, value),
      h("div", { class: "label" }, label),
      hint ? h("div", { class: "muted" }, hint) : null,
    );
  const tick = async () => {
    const text = await fetch("/metrics", {
      headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY)}` },
    }).then((r) => (r.ok ? r.text() : ""));
    const sample = {
      at: performance.now(),
      events: metric(text, "switchboard_events_ingested_total"),
      delivered: metric(text, "switchboard_delivery_attempts_total", 'outcome="succeeded"'),
    };
    const rate = (k) =>
      last ? ((sample[k] - last[k]) / ((sample.at - last.at) / 1000)).toFixed(1) : "…";
    const rates = [rate("events"), rate("delivered")];
    last = sample;
    const subs = (await api("GET", t("/subscriptions?limit=1000"))).data;
    // Pull subscriptions have no deliveries: their consumers read the log.
    const enabled = subs.filter((s) => s.enabled && s.mode !== "pull");
    const recent = [];
    let failing = 0;
    for (const s of enabled.slice(0, 50)) {
      const [pending, failed] = await Promise.all(
        ["pending", "failed"].map((st) =>
          api("GET", t(`/subscriptions/${s.id}/deliveries?status=${st}&limit=1000`)),
        ),
      );
      const retrying = pending.data.filter((d) => d.attempt_count > 0 && d.last_error);
      if (retrying.length) failing += 1;
      for (const d of [...retrying, ...failed.data]) recent.push({ ...d, url: target(s) });
    }
    cards.replaceChildren(
      card("events/s accepted", rates[0], "this node"),
      card("deliveries/s", rates[1], "this node"),
      card("pending deliveries", metric(text, "switchboard_deliveries_pending"), "all tenants"),
      card("failing subscriptions", failing, "retrying after errors"),
      card("disabled subscriptions", subs.length - enabled.length, `of ${subs.length}`),
    );
    recent.sort((a, b) => b.updated_at - a.updated_at);
    failures.replaceChildren(
      table(
        ["When", "Subscription", "Event", "Status", "Attempts", "Last error"],
        recent.slice(0, 10).map((d) =>
          h(
            "tr",
            {},
            h("td", {}, showMillis(d.updated_at)),
            h("td", {}, h("a", { href: `#/subscriptions/${d.subscription_id}` }, d.url)),
            h("td", {}, h("a", { class: "mono", href: `#/events/${d.event_id}` }, d.event_id)),
            h("td", {}, pill(d.status)),
            h("td", { class: "num" }, d.attempt_count),
            h("td", {}, d.last_error || ""),
          ),
        ),
        "No failures: every delivery went through.",
      ),
    );
  };
  await tick();
  let stopped = false;
  const loop = async () => {
    while (!stopped) {
      await sleep(2000);
      if (!stopped) await tick().catch((err) => say(describe(err)));
    }
  };
  loop();
  cleanup.push(() => (stopped = true));
}

// ---- Events ------------------------------------------------------------------------------

async function eventsPage(rest, q) {
  if (rest[0]) return eventPage(rest[0]);
  const category = h(
    "select",
    { name: "category" },
    h("option", { value: "" }, "any"),
    catalog.categories
      .filter((c) => c.category !== 0)
      .map((c) => h("option", { value: c.category, selected: q.get("category") === `${c.category}` }, `${c.category} ${c.name}`)),
  );
  const code = h("input", { name: "code", type: "number", min: "0", value: q.get("code") || "" });
  const username = h("input", { name: "username", value: q.get("username") || "" });
  const since = h("input", { name: "since", type: "datetime-local", value: fromStamp(q.get("since")) });
  const until = h("input", { name: "until", type: "datetime-local", value: fromStamp(q.get("until")) });
  const form = h(
    "form",
    {
      class: "grid",
      role: "search",
      onsubmit: (e) => {
        e.preventDefault();
        const p = new URLSearchParams();
        if (category.value) p.set("category", category.value);
        if (code.value) p.set("code", code.value);
        if (username.value.trim()) p.set("username", username.value.trim());
        if (since.value) p.set("since", toStamp(since.value));
        if (until.value) p.set("until", toStamp(until.value));
        location.hash = `#/events?${p}`;
      },
    },
    field("Category", category),
    field("Code", code),
    field("Agent (Username)", username),
    field("Since (UTC)", since),
    field("Until (UTC)", until),
    h("button", { class: "primary", type: "submit" }, "Search"),
  );
  const params = new URLSearchParams(q);
  params.set("limit", "50");
  const page = await api("GET", t(`/events?${params}`));
  const rows = page.data.map((item) => {
    const e = item.event;
    const f = e.AdditionalFields || {};
    return h(
      "tr",
      {},
      h("td", { class: "num" }, item.sequence),
      h("td", {}, showStamp(e.CreationDateUtc)),
      h("td", {}, categoryName(e.Category)),
      h("td", {}, `${e.Code} ${codeName(e.Category, e.Code)}`),
      h("td", {}, f.Username || ""),
      h("td", {}, h("a", { class: "mono", href: `#/events/${e.Id}` }, e.Id)),
    );
  });
  const more = new URLSearchParams(q);
  const nextLink = page.next_after
    ? (more.set("after", page.next_after), h("a", { href: `#/events?${more}` }, "Next page →"))
    : null;
  q.delete("after");
  main.replaceChildren(
    h("h1", {}, "Events"),
    form,
    table(["Sequence", "Created (UTC)", "Category", "Code", "Agent", "Id"], rows, "No events match."),
    h("p", { class: "actions" }, params.get("after") ? h("a", { href: `#/events?${q}` }, "← First page") : null, nextLink),
  );
}

async function eventPage(id) {
  const item = await api("GET", t(`/events/${encodeURIComponent(id)}`));
  const e = item.event;
  const attemptsOf = async (d, slot) => {
    const full = await api("GET", t(`/deliveries/${d.id}`));
    slot.replaceChildren(
      table(
        ["#", "Started", "Duration", "Status", "Error", "Response body"],
        full.attempts.map((a) =>
          h(
            "tr",
            {},
            h("td", { class: "num" }, a.number),
            h("td", {}, showTime(a.started_at)),
            h("td", { class: "num" }, `${a.duration_ms} ms`),
            h("td", {}, a.status_code ?? ""),
            h("td", {}, a.error || ""),
            h("td", {}, a.response_body ? h("pre", {}, a.response_body) : ""),
          ),
        ),
        "No attempt yet.",
      ),
    );
  };
  const rows = item.deliveries.map((d) => {
    const slot = h("div");
    return [
      h(
        "tr",
        {},
        h("td", { class: "num" }, d.id),
        h("td", {}, h("a", { href: `#/subscriptions/${d.subscription_id}` }, d.subscription_id)),
        h("td", {}, pill(d.status)),
        h("td", { class: "num" }, d.attempt_count),
        h("td", {}, d.last_status_code ?? ""),
        h("td", {}, d.last_error || ""),
        h(
          "td",
          { class: "actions" },
          h("button", { type: "button", onclick: () => attempt(() => attemptsOf(d, slot)) }, "Attempts"),
          can("manage")
            ? h(
                "button",
                {
                  type: "button",
                  onclick: () =>
                    attempt(() => api("POST", t(`/deliveries/${d.id}/retry`)), `Delivery ${d.id} is due again.`),
                },
                "Retry",
              )
            : null,
        ),
      ),
      h("tr", {}, h("td", { colspan: "7" }, slot)),
    ];
  });
  main.replaceChildren(
    h("h1", {}, `Event ${e.Id}`),
    h(
      "p",
      {},
      `Sequence ${item.sequence} · ${categoryName(e.Category)} ${e.Code} ${codeName(e.Category, e.Code)} · created ${showStamp(e.CreationDateUtc)} UTC · received ${showTime(item.received_at)}`,
    ),
    h("pre", {}, JSON.stringify(e, null, 2)),
    h("h2", {}, "Deliveries"),
    table(["Id", "Subscription", "Status", "Attempts", "Last code", "Last error", ""], rows, "No subscription received it."),
    h("p", {}, h("a", { href: "#/events" }, "← Events")),
  );
}

// ---- Subscriptions -----------------------------------------------------------------------

const SUB_FIELDS = [
  ["url", "URL", "url"],
  ["description", "Description", "text"],
  ["ordering", "Ordering", ["none", "per_agent"]],
  ["coalesce", "Coalesce", ["none", "latest_status"]],
  ["signature_scheme", "Signature scheme", ["v1", "v1a", "github", "stripe"]],
  ["max_age_secs", "Max age (s)", "number"],
  ["rate_limit_per_sec", "Rate limit (/s)", "number"],
  ["max_in_flight", "Max in flight", "number"],
  ["heartbeat_secs", "Heartbeat (s)", "number"],
  ["retry_schedule_secs", "Retry delays (s, comma-separated)", "list"],
  ["filter", "Filter (JSON)", "json"],
  ["headers", "Headers (JSON)", "json"],
];

/** The create / edit form; `sub` fills it (edit). Calls `save(body)`. */
function subscriptionForm(sub, save) {
  const controls = {};
  const parts = SUB_FIELDS.map(([key, label, kind]) => {
    const value = sub ? sub[key] : undefined;
    let control;
    if (Array.isArray(kind)) {
      control = h("select", { name: key }, kind.map((o) => h("option", { value: o, selected: value === o }, o)));
    } else if (kind === "json") {
      control = h("textarea", { name: key, rows: "3" });
      control.value = value && Object.keys(value).length ? JSON.stringify(value) : "";
    } else if (kind === "list") {
      control = h("input", { name: key, value: value ? value.join(", ") : "" });
    } else {
      control = h("input", {
        name: key,
        type: kind === "number" ? "number" : kind === "url" ? "url" : "text",
        min: kind === "number" ? "0" : null,
        required: key === "url",
        value: value ?? (key === "max_in_flight" ? 16 : ""),
      });
    }
    controls[key] = control;
    return field(label, control, kind === "json" || key === "url" ? "wide" : null);
  });
  const enabled = h("input", { type: "checkbox", name: "enabled", checked: sub ? sub.enabled : true });
  return h(
    "form",
    {
      class: "grid",
      onsubmit: async (e) => {
        e.preventDefault();
        const body = { enabled: enabled.checked };
        for (const [key, , kind] of SUB_FIELDS) {
          const raw = controls[key].value.trim();
          try {
            if (kind === "number") body[key] = raw === "" ? null : Number(raw);
            else if (kind === "json") body[key] = raw === "" ? (key === "headers" ? {} : null) : JSON.parse(raw);
            else if (kind === "list") body[key] = raw === "" ? null : raw.split(",").map((x) => Number(x.trim()));
            else body[key] = raw;
          } catch {
            say(`${key}: not valid JSON`);
            return;
          }
        }
        if (body.max_in_flight === null) delete body.max_in_flight;
        await save(body);
      },
    },
    parts,
    field("Enabled", enabled, "check"),
    h("button", { class: "primary", type: "submit" }, sub ? "Save" : "Create subscription"),
  );
}

async function subscriptionsPage(rest) {
  if (rest[0]) return subscriptionPage(rest[0]);
  const subs = (await api("GET", t("/subscriptions?limit=1000"))).data;
  const rows = subs.map((s) =>
    h(
      "tr",
      {},
      h("td", {}, h("a", { href: `#/subscriptions/${s.id}` }, s.id)),
      h("td", { class: "mono" }, s.mode === "pull" ? `pull · ${s.partitions} partition${s.partitions === 1 ? "" : "s"}` : target(s)),
      h("td", {}, s.description || ""),
      s.undecodable
        ? h("td", {}, pill("undecodable"), h("div", { class: "muted" }, "stored by another release: repair with a whole body, or delete"))
        : h("td", {}, pill(s.enabled ? "enabled" : "disabled"), s.disabled_reason ? h("div", { class: "muted" }, s.disabled_reason) : null),
      h("td", {}, s.ordering || ""),
      h("td", {}, s.coalesce || ""),
      h("td", {}, lagCell(s)),
      h("td", {}, s.mode === "pull" ? "" : h("a", { href: `#/deliveries?sub=${s.id}` }, "Deliveries")),
    ),
  );
  main.replaceChildren(
    h("h1", {}, "Subscriptions"),
    can("manage")
      ? h(
          "details",
          { class: "panel" },
          h("summary", {}, "New subscription"),
          subscriptionForm(null, async (body) => {
            const created = await attempt(() => api("POST", t("/subscriptions"), body));
            if (created) location.hash = `#/subscriptions/${created.id}`;
          }),
        )
      : null,
    table(["Id", "URL", "Description", "State", "Ordering", "Coalesce", "Lag", ""], rows, "No subscriptions yet."),
  );
}

/** A receiver's credentials as the API shows them: the type and who, never a secret. */
function receiverAuth(auth) {
  if (!auth) return undefined;
  if (auth.type === "basic") return `basic, as ${auth.username} (password write-only)`;
  if (auth.type === "bearer") return "bearer token (write-only)";
  if (auth.type === "oauth2") return `OAuth 2 client credentials from ${auth.token_url}, client ${auth.client_id} (secret write-only)`;
  return auth.type;
}

/** A receiver's TLS settings: what is set, never the key. */
function receiverTls(tls) {
  if (!tls) return undefined;
  const parts = [];
  if (tls.client_cert_pem) parts.push("client certificate (key write-only)");
  if (tls.ca_pem) parts.push("private CA");
  return parts.join(", ") || undefined;
}

async function subscriptionPage(id) {
  const path = t(`/subscriptions/${encodeURIComponent(id)}`);
  const sub = await api("GET", path);
  const reload = () => route();
  const pull = sub.mode === "pull";
  const facts = [
    ["URL", sub.destination && sub.destination.type !== "http" ? undefined : sub.url],
    ["Destination", sub.destination && sub.destination.type !== "http" ? target(sub) : undefined],
    ["Mode", pull ? `pull: read from …/messages, ${sub.partitions} partition${sub.partitions === 1 ? "" : "s"}` : undefined],
    ["Description", sub.description],
    ["State", sub.enabled ? "enabled" : `disabled: ${sub.disabled_reason || ""}`],
    ["Filter", sub.filter ? JSON.stringify(sub.filter) : "every non-System event"],
    ["Ordering", sub.ordering],
    ["Coalesce", sub.coalesce],
    ["Max age", sub.max_age_secs ? `${sub.max_age_secs} s` : "none"],
    ["Signature scheme", sub.signature_scheme],
    ["Public key", sub.public_key],
    ["Receiver auth", receiverAuth(sub.auth)],
    ["TLS", receiverTls(sub.tls)],
    ["Created", showTime(sub.created_at)],
  ].filter(([, v]) => v !== undefined && v !== null && v !== "");
  const out = [
    h("h1", {}, `Subscription ${sub.id}`),
    h("table", {}, h("tbody", {}, facts.map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", { class: "secret" }, v))))),
    pull ? null : h("p", { class: "actions" }, h("a", { href: `#/deliveries?sub=${sub.id}` }, "Its deliveries →")),
  ];
  if (sub.secret) {
    const shown = h("code", { class: "secret" }, "••••••••");
    out.push(
      h(
        "div",
        { class: "panel" },
        h("h2", {}, "Secret"),
        h("p", {}, shown, " ", h("button", { type: "button", onclick: () => (shown.textContent = sub.secret) }, "Show")),
      ),
    );
  }
  // Shared by the actions below (the push-only ones are not offered for a pull subscription).
  const grace = h("input", { type: "number", min: "0", value: "86400" });
  const since = h("input", { type: "datetime-local", required: true });
  const until = h("input", { type: "datetime-local" });
  const onlyFailed = h("input", { type: "checkbox" });
  const outcome = h("div", { "aria-live": "polite" });
  if (can("manage")) {
    out.push(
      h(
        "div",
        { class: "panel actions" },
        h(
          "button",
          {
            type: "button",
            onclick: async () => {
              if (await attempt(() => api("PATCH", path, { enabled: !sub.enabled }), sub.enabled ? "Disabled." : "Enabled."))
                reload();
            },
          },
          sub.enabled ? "Disable" : "Enable",
        ),
        pull ? null : h(
          "button",
          {
            type: "button",
            onclick: async () => {
              const r = await attempt(() => api("POST", `${path}/test`), (r) => (r.delivered ? "The test event was delivered." : `The test event was not delivered: ${r.error || r.status_code}`));
              if (r) outcome.replaceChildren(h("pre", {}, JSON.stringify(r, null, 2)));
            },
          },
          "Send a test event",
        ),
        h(
          "button",
          {
            type: "button",
            class: "danger",
            onclick: async () => {
              if (!confirm(`Delete ${sub.id} and its deliveries?`)) return;
              if ((await attempt(() => api("DELETE", path), "Deleted.")) !== undefined) location.hash = "#/subscriptions";
            },
          },
          "Delete",
        ),
      ),
      outcome,
    );
  }
  if (can("manage") && !pull) {
    out.push(
      h(
        "form",
        {
          class: "panel grid",
          onsubmit: async (e) => {
            e.preventDefault();
            const r = await attempt(() => api("POST", `${path}/secret/rotate`, { grace_secs: Number(grace.value) }), "The secret was rotated; the old one signs until the grace period ends.");
            if (r) outcome.replaceChildren(h("p", {}, "New secret: ", h("code", { class: "secret" }, r.secret)), r.public_key ? h("p", {}, "New public key: ", h("code", { class: "secret" }, r.public_key)) : null);
          },
        },
        h("h2", { class: "wide" }, "Rotate the secret"),
        field("Grace period (s)", grace),
        h("button", { type: "submit" }, "Rotate"),
      ),
      h(
        "form",
        {
          class: "panel grid",
          onsubmit: async (e) => {
            e.preventDefault();
            const body = { since: toStamp(since.value), only_failed: onlyFailed.checked };
            if (until.value) body.until = toStamp(until.value);
            await attempt(() => api("POST", `${path}/replay`, body), (r) => `${r.requeued} deliveries requeued.`);
          },
        },
        h("h2", { class: "wide" }, "Replay a window"),
        field("Since (UTC)", since),
        field("Until (UTC)", until),
        field("Only failed deliveries", onlyFailed, "check"),
        h("button", { type: "submit" }, "Replay"),
      ),
      h(
        "details",
        { class: "panel" },
        h("summary", {}, "Edit"),
        subscriptionForm(sub, async (body) => {
          if (await attempt(() => api("PATCH", path, body), "Saved.")) reload();
        }),
      ),
    );
  }
  out.push(h("p", {}, h("a", { href: "#/subscriptions" }, "← Subscriptions")));
  main.replaceChildren(...out);
}

// ---- Deliveries --------------------------------------------------------------------------

async function deliveriesPage(rest, q) {
  const subs = (await api("GET", t("/subscriptions?limit=1000"))).data.filter((s) => s.mode !== "pull");
  const subId = q.get("sub") || (subs[0] && subs[0].id);
  const status = q.get("status") || "failed";
  const go = (s, st) => (location.hash = `#/deliveries?sub=${encodeURIComponent(s)}&status=${st}`);
  const subSelect = h(
    "select",
    { onchange: (e) => go(e.target.value, status) },
    subs.map((s) => h("option", { value: s.id, selected: s.id === subId }, `${s.id} · ${s.mode === "pull" ? "pull" : target(s)}`)),
  );
  const statusSelect = h(
    "select",
    { onchange: (e) => go(subId, e.target.value) },
    ["failed", "pending", "succeeded", "expired", "superseded", "canceled"].map((s) => h("option", { value: s, selected: s === status }, s)),
  );
  const head = [
    h("h1", {}, "Deliveries"),
    h("div", { class: "filters" }, field("Subscription", subSelect), field("Status", statusSelect)),
  ];
  if (!subId) {
    main.replaceChildren(...head, h("p", { class: "muted" }, "No subscriptions yet."));
    return;
  }
  const page = await api("GET", t(`/subscriptions/${encodeURIComponent(subId)}/deliveries?status=${status}&limit=1000`));
  const rows = page.data.map((d) =>
    h(
      "tr",
      {},
      h("td", { class: "num" }, d.id),
      h("td", {}, h("a", { class: "mono", href: `#/events/${d.event_id}` }, d.event_id)),
      h("td", { class: "num" }, d.sequence),
      h("td", {}, pill(d.status)),
      h("td", { class: "num" }, d.attempt_count),
      h("td", {}, d.last_status_code ?? ""),
      h("td", {}, d.last_error || ""),
      h("td", {}, d.next_attempt_at ? showMillis(d.next_attempt_at) : ""),
      h(
        "td",
        {},
        can("manage") && d.status !== "succeeded"
          ? h(
              "button",
              {
                type: "button",
                onclick: async () => {
                  if ((await attempt(() => api("POST", t(`/deliveries/${d.id}/retry`)), `Delivery ${d.id} is due again.`)) !== undefined)
                    setTimeout(() => route(), 1000);
                },
              },
              "Retry",
            )
          : null,
      ),
    ),
  );
  main.replaceChildren(
    ...head,
    can("manage") && status === "failed" && rows.length
      ? h(
          "p",
          {},
          h(
            "button",
            {
              type: "button",
              onclick: () =>
                attempt(
                  () => api("POST", t(`/subscriptions/${encodeURIComponent(subId)}/replay`), { since: "19700101000000", only_failed: true }),
                  (r) => `${r.requeued} failed deliveries requeued.`,
                ),
            },
            "Replay every failed delivery",
          ),
        )
      : null,
    table(["Id", "Event", "Sequence", "Status", "Attempts", "Last code", "Last error", "Next attempt", ""], rows, `No ${status} deliveries.`),
  );
}

// ---- Agents: the live wallboard ----------------------------------------------------------

/** Parses one Server-Sent Events message block. */
function parseMessage(block) {
  const msg = { event: "message", data: [], id: null };
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue;
    const i = line.indexOf(":");
    const name = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
    if (name === "data") msg.data.push(value);
    else if (name === "event") msg.event = value;
    else if (name === "id") msg.id = value;
  }
  return { ...msg, data: msg.data.join("\n") };
}

/** Follows a stream with fetch (an EventSource cannot send the key in a header), resuming
 * after the last id when the connection drops, until `signal` aborts. */
async function follow(path, onMessage, onState, signal) {
  let last = null;
  while (!signal.aborted) {
    try {
      const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY)}`, Accept: "text/event-stream" };
      if (last) headers["Last-Event-ID"] = last;
      const r = await fetch(path, { headers, signal });
      if (!r.ok) throw new ApiError(r.status, await r.json().catch(() => null));
      onState("live");
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
          const msg = parseMessage(block);
          if (msg.id) last = msg.id;
          if (msg.data) onMessage(msg);
        }
      }
    } catch (err) {
      if (signal.aborted) return;
      onState(`reconnecting (${describe(err)})`);
    }
    await sleep(1000);
  }
}

const AGENT_FILTERS = {
  all: ["All", () => true],
  available: ["Available", (a) => a.signed_in && !busy(a) && a.availability_code === 1],
  internal: ["Internal calls", (a) => a.signed_in && !busy(a) && a.availability_code === 2],
  unavailable: ["Not ready", (a) => a.signed_in && !busy(a) && ![1, 2].includes(a.availability_code)],
  busy: ["On a work item", (a) => a.signed_in && busy(a)],
  out: ["Signed out", (a) => !a.signed_in],
};

const busy = (a) => !!(a.work_item && a.work_item.state === "accepted");

function tileClass(a) {
  if (!a.signed_in) return "a-out";
  if (busy(a)) return "a-busy";
  if (a.availability_code === 1) return "a-available";
  if (a.availability_code === 2) return "a-internal";
  return "a-unavailable";
}

async function agentsPage(rest, q) {
  const agents = new Map();
  let filter = AGENT_FILTERS[q.get("state")] ? q.get("state") : "all";
  const live = h("p", { class: "live", "aria-live": "polite" }, "connecting…");
  const filters = h("div", { class: "filters", role: "group", "aria-label": "Filter by state" });
  const tiles = h("div", { class: "tiles" });
  const counts = h("section", { class: "counts", "aria-label": "Counts by group" });
  main.replaceChildren(h("h1", {}, "Agents"), live, counts, filters, tiles);

  const draw = () => {
    const all = [...agents.values()].sort((a, b) => a.username.localeCompare(b.username));
    filters.replaceChildren(
      ...Object.entries(AGENT_FILTERS).map(([key, [label, keep]]) =>
        h(
          "button",
          {
            type: "button",
            "aria-pressed": key === filter ? "true" : "false",
            onclick: () => {
              filter = key;
              history.replaceState(null, "", `#/agents?state=${key}`);
              draw();
            },
          },
          `${label} (${all.filter(keep).length})`,
        ),
      ),
    );
    const keep = AGENT_FILTERS[filter][1];
    tiles.replaceChildren(
      ...all.filter(keep).map((a) => {
        const state = !a.signed_in
          ? "Signed out"
          : a.activity_name || (a.activity_code !== null && a.activity_code !== undefined ? `activity ${a.activity_code}` : "Signed in");
        const since = a.signed_in ? a.since || a.signed_in_at : a.signed_out_at;
        const w = a.work_item;
        return h(
          "article",
          { class: `tile ${tileClass(a)}`, "data-username": a.username },
          h("h3", {}, a.username),
          h("div", { class: "state" }, state),
          h("div", { class: "for", "data-since": since || "" }, ""),
          w ? h("div", { class: "work" }, `${w.state === "accepted" ? "Handling" : "Receiving"} ${w.type || "work item"} ${w.id || ""}`) : null,
        );
      }),
    );
    tick();
  };
  const tick = () => {
    const now = Date.now();
    for (const el of tiles.querySelectorAll(".for")) {
      const since = parseStamp(el.dataset.since);
      el.textContent = since ? `for ${duration((now - since.getTime()) / 1000)}` : "";
    }
  };
  const timer = setInterval(tick, 1000);
  const abort = new AbortController();
  cleanup.push(() => {
    clearInterval(timer);
    abort.abort();
  });
  countsByGroup(counts, q, abort.signal);
  follow(
    t("/agents/stream"),
    (msg) => {
      const data = JSON.parse(msg.data);
      if (msg.event === "snapshot") {
        agents.clear();
        for (const a of data.agents) agents.set(a.username, a);
      } else if (msg.event === "agent") {
        agents.set(data.username, data);
      }
      live.textContent = `Live · ${agents.size} agents · updated ${new Date().toLocaleTimeString()}`;
      draw();
    },
    (state) => {
      if (state !== "live") live.textContent = state;
    },
    abort.signal,
  );
}

// The wallboard's counts (DESIGN §18): signed-in agents by a group field of the catalog (or the
// whole floor), followed live from …/agents/counts/stream; each message's groups replace theirs.
const COUNT_COLUMNS = [
  ["Available", (g) => g.by_availability["1"] || 0],
  ["Internal calls", (g) => g.by_availability["2"] || 0],
  [
    "Not ready",
    (g) =>
      Object.entries(g.by_availability)
        .filter(([k]) => !["1", "2", "unknown"].includes(k))
        .reduce((n, [, v]) => n + v, 0),
  ],
  ["No status yet", (g) => g.by_availability.unknown || 0],
];

async function countsByGroup(section, q, signal) {
  let fields = [];
  try {
    fields = (await loadCatalog()).group_fields || [];
  } catch (err) {
    section.replaceChildren(h("p", { class: "muted" }, `Counts unavailable: ${describe(err)}`));
    return;
  }
  // The page was left while the catalog loaded.
  if (signal.aborted) return;
  let by = fields.includes(q.get("by")) ? q.get("by") : "";
  const groups = new Map();
  let follower = null;
  const state = h("span", { class: "muted" }, "");
  const body = h("div", {});
  const select = h(
    "select",
    {
      onchange: () => {
        by = select.value;
        const state = new URLSearchParams(location.hash.split("?")[1] || "");
        if (by) state.set("by", by);
        else state.delete("by");
        history.replaceState(null, "", `#/agents?${state}`);
        start();
      },
    },
    h("option", { value: "", selected: by === "" }, "the whole floor"),
    fields.map((f) => h("option", { value: f, selected: by === f }, f)),
  );
  section.replaceChildren(h("div", { class: "filters" }, field("Count by ", select), state), body);
  const draw = () => {
    const rows = [...groups.values()].map((g) =>
      h(
        "tr",
        { "data-group": g.value ?? "" },
        h("th", { scope: "row" }, g.value ?? (by ? `no ${by}` : "All")),
        h("td", {}, g.signed_in),
        h("td", {}, g.on_work_item),
        COUNT_COLUMNS.map(([, count]) => h("td", {}, count(g))),
      ),
    );
    body.replaceChildren(
      table([by || "Group", "Signed in", "On a work item", ...COUNT_COLUMNS.map(([name]) => name)], rows, "Nobody is signed in."),
    );
  };
  const start = () => {
    follower?.abort();
    follower = new AbortController();
    const mine = follower;
    signal.addEventListener("abort", () => mine.abort(), { once: true });
    groups.clear();
    const path = t(`/agents/counts/stream${by ? `?by=${encodeURIComponent(by)}` : ""}`);
    follow(
      path,
      (msg) => {
        const data = JSON.parse(msg.data);
        if (msg.event === "snapshot") groups.clear();
        for (const g of data.groups) {
          if (g.signed_in === 0) groups.delete(g.value);
          else groups.set(g.value, g);
        }
        const sorted = [...groups.entries()].sort(([a], [b]) => String(a ?? "").localeCompare(String(b ?? "")));
        groups.clear();
        for (const [k, v] of sorted) groups.set(k, v);
        state.textContent = ` as of sequence ${data.as_of_sequence}`;
        draw();
      },
      (s) => {
        if (s !== "live") state.textContent = ` ${s}`;
      },
      follower.signal,
    );
  };
  start();
}

// ---- Tenants and keys --------------------------------------------------------------------

async function keysPage() {
  const out = [h("h1", {}, me.admin ? "Tenants and keys" : "Keys")];
  if (me.admin) {
    const id = h("input", { required: true, pattern: "[a-z0-9][a-z0-9-]{0,62}" });
    const name = h("input", { required: true });
    out.push(
      h("h2", {}, "Tenants"),
      table(
        ["Id", "Name", "Ingest limit (/s)", "Created"],
        tenants.map((x) =>
          h("tr", {}, h("td", {}, x.id), h("td", {}, x.name), h("td", {}, x.ingest_rate_limit_per_sec ?? "none"), h("td", {}, showTime(x.created_at))),
        ),
      ),
      h(
        "form",
        {
          class: "panel grid",
          onsubmit: async (e) => {
            e.preventDefault();
            const created = await attempt(() => api("POST", "/v1/tenants", { id: id.value, name: name.value }), "Tenant created.");
            if (created) {
              tenants = (await api("GET", "/v1/tenants?limit=1000")).data;
              tenant = created.id;
              sessionStorage.setItem(TENANT, tenant);
              route();
            }
          },
        },
        h("h2", { class: "wide" }, "New tenant"),
        field("Id", id),
        field("Name", name),
        h("button", { type: "submit" }, "Create tenant"),
      ),
    );
  }
  const keys = (await api("GET", t("/keys?limit=1000"))).data;
  const keyName = h("input", { required: true });
  const scopes = ["publish", "read", "manage", "consume"].map((s) => [s, h("input", { type: "checkbox", value: s, checked: s === "read" })]);
  const shown = h("div", { "aria-live": "polite" });
  out.push(
    h("h2", {}, `Keys of ${tenant}`),
    table(
      ["Id", "Name", "Scopes", "Created", ""],
      keys.map((k) =>
        h(
          "tr",
          {},
          h("td", { class: "mono" }, k.id),
          h("td", {}, k.name),
          h("td", {}, k.scopes.join(", ")),
          h("td", {}, showTime(k.created_at)),
          h(
            "td",
            {},
            h(
              "button",
              {
                type: "button",
                class: "danger",
                onclick: async () => {
                  if (!confirm(`Revoke key ${k.name}?`)) return;
                  if ((await attempt(() => api("DELETE", t(`/keys/${k.id}`)), "Key revoked.")) !== undefined) route();
                },
              },
              "Revoke",
            ),
          ),
        ),
      ),
      "No keys yet.",
    ),
    h(
      "form",
      {
        class: "panel grid",
        onsubmit: async (e) => {
          e.preventDefault();
          const chosen = scopes.filter(([, c]) => c.checked).map(([s]) => s);
          const k = await attempt(() => api("POST", t("/keys"), { name: keyName.value, scopes: chosen }), "Key created: copy it now, it is not shown again.");
          if (k) shown.replaceChildren(h("p", {}, "New key: ", h("code", { class: "secret" }, k.key)));
        },
      },
      h("h2", { class: "wide" }, "New key"),
      field("Name", keyName),
      scopes.map(([s, c]) => field(s, c, "check")),
      h("button", { type: "submit" }, "Create key"),
    ),
    shown,
  );
  main.replaceChildren(...out);
}

// ---- start -------------------------------------------------------------------------------

window.addEventListener("hashchange", route);
(async () => {
  if (sessionStorage.getItem(KEY)) {
    try {
      await loadMe();
    } catch (err) {
      sessionStorage.removeItem(KEY);
      me = null;
    }
  }
  route();
})();
