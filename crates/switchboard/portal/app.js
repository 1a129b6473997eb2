// The customers' portal (DESIGN §22, docs/portal.md): what a contact center's customer needs to
// manage their own webhooks, opened from a portal link's `url` and often framed by a partner's
// page. One page, no dependencies, no build step, like the console (console/app.js): every
// element is built with the DOM API and text goes in as text, never as HTML; every request goes
// to this origin with the link's token in an Authorization header.
//
// The link arrives in the fragment (`#tenant=…&token=…[&subscriptions=…][&read_only=1]`), which
// browsers never send to a server; it is kept in sessionStorage and the fragment is removed at
// once, so the token is not left in the address bar or the history. The server decides what the
// token may do; the page only leaves out what it would refuse (creating when the link names its
// subscriptions, every change when it is read-only).

const STORE = "switchboard.portal";
const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const statusLine = document.getElementById("status");

let link = null; // {tenant, token, subscriptions: [ids] | null, readOnly}
let catalog = null;
let refused = false; // the token was refused (401): nothing more is asked
let generation = 0; // the page shown: a slower earlier one never replaces it

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

/** Replaces an element's children, leaving out the null, undefined and false that conditional
 * parts leave (`replaceChildren` would show them as text) and flattening arrays. */
function fill(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

let ids = 0;
/** A labelled control: the label wraps the control, so it is named for assistive tech. */
function field(label, control, cls) {
  control.id ||= `f${++ids}`;
  // A checkbox goes before its words, as everywhere else.
  if (cls === "check") return h("label", { class: cls, for: control.id }, control, label);
  return h("label", { class: cls, for: control.id }, label, control);
}

let keepStatus = false; // a message said just before the page changes outlives the change

function say(text, ok = true) {
  statusLine.textContent = text;
  statusLine.className = ok ? "status ok" : "status";
  keepStatus = !!text;
}

// Framed by a page whose storage is blocked, sessionStorage throws: the link then lasts as long
// as the page.
let memory = null;
const kept = {
  get() {
    try {
      return JSON.parse(sessionStorage.getItem(STORE) || "null");
    } catch {
      return memory;
    }
  },
  set(value) {
    memory = value;
    try {
      sessionStorage.setItem(STORE, JSON.stringify(value));
    } catch {
      // memory holds it
    }
  },
  clear() {
    memory = null;
    try {
      sessionStorage.removeItem(STORE);
    } catch {
      // nothing was kept
    }
  },
};

/** The link in the fragment, or null. Read by hand: a `+` in a token is not a space. */
function fromFragment() {
  const raw = location.hash.replace(/^#/, "");
  if (!/(^|&)token=/.test(raw)) return null;
  const p = {};
  for (const part of raw.split("&")) {
    const i = part.indexOf("=");
    if (i < 0) continue;
    try {
      p[part.slice(0, i)] = decodeURIComponent(part.slice(i + 1));
    } catch {
      // a malformed part is left out
    }
  }
  if (!p.tenant || !p.token) return null;
  return {
    tenant: p.tenant,
    token: p.token,
    subscriptions: p.subscriptions ? p.subscriptions.split(",").filter(Boolean) : null,
    readOnly: p.read_only === "1" || p.read_only === "true",
  };
}

class ApiError extends Error {
  constructor(status, problem) {
    super(problem && problem.title ? problem.title : `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

/** Thrown once the token is refused: the page already says so. */
class Refused extends Error {}

async function api(method, path, body) {
  if (refused) throw new Refused();
  const headers = { Authorization: `Bearer ${link.token}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  if (r.status === 401) {
    linkRefused();
    throw new Refused();
  }
  if (r.status === 204) return null;
  const type = r.headers.get("content-type") || "";
  const data = type.includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

const t = (path) => `/v1/tenants/${encodeURIComponent(link.tenant)}${path}`;
const sub = (id, rest = "") => t(`/subscriptions/${encodeURIComponent(id)}${rest}`);
const canChange = () => !link.readOnly;
const canCreate = () => !link.readOnly && !link.subscriptions;

/** A problem's title and detail, as one line. */
function describe(err) {
  const p = err && err.problem;
  if (p && typeof p === "object") return [p.title || `HTTP ${err.status}`, p.detail].filter(Boolean).join(": ");
  return String((err && err.message) || err);
}

/** An empty alert beside a form, filled with a problem: its title, detail and each field's
 * message, the fields named marked invalid. */
function problemBox() {
  const box = h("div", { class: "problem", role: "alert", id: `p${++ids}` });
  box.hidden = true;
  return box;
}

function showProblem(box, form, err) {
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  if (!err) {
    box.hidden = true;
    fill(box);
    return;
  }
  const fields = (err.problem && err.problem.errors) || [];
  fill(
    box,
    h("p", {}, describe(err)),
    fields.length ? h("ul", {}, fields.map((e) => h("li", {}, `${e.field}: ${e.message}`))) : null,
  );
  box.hidden = false;
  for (const e of fields) {
    const name = String(e.field || "").split(/[.[]/)[0];
    const el = form.querySelector(`[data-field="${CSS.escape(name)}"]`);
    if (el) {
      el.setAttribute("aria-invalid", "true");
      el.setAttribute("aria-describedby", box.id);
    }
  }
}

/** Runs a form's action, its failure shown beside the form; its result, or undefined. */
async function submit(form, box, action) {
  const button = form.querySelector("button[type=submit]");
  if (button) button.disabled = true;
  try {
    const result = await action();
    showProblem(box, form, null);
    return result;
  } catch (err) {
    if (!(err instanceof Refused)) showProblem(box, form, err);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

/** RFC 3339 → "2026-11-23 18:46:03" (UTC). */
const showTime = (s) => (s ? String(s).replace("T", " ").slice(0, 19) : "");

/** A datetime-local value, read as UTC, to yyyyMMddHHmmss. */
const toStamp = (v) => (v ? `${v.replace(/\D/g, "")}00`.slice(0, 14) : "");
const localValue = (d) => d.toISOString().slice(0, 16);

const pill = (status) => h("span", { class: `pill s-${status}` }, status);

function table(headers, rows, empty) {
  if (!rows.length) return h("p", { class: "muted" }, empty);
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
    h("tbody", {}, rows),
  );
}

/** Where a subscription's deliveries go. */
function target(s) {
  if (s.mode === "pull") return "pull (read by your consumer)";
  const d = s.destination;
  if (d && d.type !== "http") return `${d.type} · ${d.subject || d.routing_key || ""} · ${d.url}`;
  return s.url || "";
}

// ---- the catalog: names, fields, an example ----------------------------------------------

async function loadCatalog() {
  catalog ||= await api("GET", "/v1/catalog");
  return catalog;
}

const category = (n) => catalog.categories.find((c) => c.category === n);

// Made-up values for an example, by field name, else by type.
const SAMPLES = {
  SessionId: "S-1042",
  SessionType: "CCA",
  Username: "jdoe",
  PhoneNo: "+15551230001",
  ActivityCode: 16,
  AvailabilityCode: 1,
  ActivityName: "",
  ExitCode: 0,
  WorkItemId: "W-3391",
  WorkItemType: "Voice",
  Queue: "Sales",
  From: "+15559870002",
  Reason: "busy",
  DurationSecs: 95,
};
const BY_TYPE = { string: "text", integer: 0, number: 1.5, boolean: true };

/** An event of this type: the catalog's own example when it has one, else one made up from
 * its fields. */
function example(cat, code) {
  if (code.example) return code.example;
  const fields = {};
  for (const [name, f] of Object.entries(code.fields || {})) {
    const sample = SAMPLES[name];
    const fits = sample !== undefined && (f.type === "string" ? typeof sample === "string" : typeof sample === "number");
    fields[name] = fits ? sample : (BY_TYPE[f.type] ?? null);
  }
  return {
    Id: "0f8fad5b-d9cb-469f-a165-70867728950e",
    CreationDateUtc: "20261123184603",
    Category: cat.category,
    Code: code.code,
    AdditionalFields: fields,
  };
}

/** A type's fields and an example. */
function typeDetails(cat, code, level = "h3") {
  const fields = Object.entries(code.fields || {});
  return [
    h(level, {}, `${cat.name} ${code.code} ${code.name}`),
    table(
      ["Field", "Type", "Required", "Personal data"],
      fields.map(([name, f]) =>
        h(
          "tr",
          {},
          h("td", { class: "mono" }, name),
          h("td", {}, f.type),
          h("td", {}, f.required ? "required" : "optional"),
          h("td", {}, f.pii ? "yes" : ""),
        ),
      ),
      "No fields.",
    ),
    h("p", { class: "muted" }, code.example ? "Example:" : "Example (the values are made up):"),
    h("pre", { class: "example" }, JSON.stringify(example(cat, code), null, 2)),
  ];
}

/** What a subscription without event types receives: every category but Switchboard's own
 * (System, 0, and Derived, 5), in words. */
function byDefault() {
  const names = catalog.categories.filter((c) => c.category !== 0 && c.category !== 5).map((c) => c.name);
  return names.length > 1 ? `${names.slice(0, -1).join(", ")} and ${names[names.length - 1]}` : names.join("");
}

/** A filter's event types, in words. */
function typesText(filter) {
  const events = filter && filter.events;
  if (!events) return `every ${byDefault()} event`;
  if (!events.length) return "none";
  return events
    .map((f) => {
      const cat = category(f.category);
      const name = cat ? cat.name : `category ${f.category}`;
      if (!f.codes) return `${name}: every type`;
      const codes = f.codes.map((c) => {
        const k = cat && cat.codes.find((x) => x.code === c);
        return k ? k.name : `code ${c}`;
      });
      return `${name}: ${codes.join(", ")}`;
    })
    .join("; ");
}

/** The event-type picker: a checkbox per type of each category a subscription may name (one for
 * the whole of an open category that declares no types); choosing a type shows its fields and an
 * example. `value()` is the filter's `events` (a whole category as `{category}`), or null when
 * none is chosen. */
function typePicker(filter) {
  // Named by the filter: a type, by its code or its whole category; a category, as a whole.
  const named = (cat, code) =>
    !!(filter && filter.events) &&
    filter.events.some((f) => f.category === cat && (!f.codes || (code !== undefined && f.codes.includes(code))));
  // The chosen type's details are long: a short line is announced, the details are read at will.
  const about = h("section", { class: "about", "aria-label": "The chosen event type" });
  const told = h("span", { class: "sr", "aria-live": "polite" });
  const boxes = [];
  const wholes = [];
  const everyOf = (cat) => {
    const input = h("input", { type: "checkbox", name: "type", value: `${cat.category}`, checked: named(cat.category) });
    wholes.push([cat, input]);
    return field(`Every ${cat.name} event`, input, "check");
  };
  const groups = catalog.categories
    .filter((c) => c.category <= 5 && (c.codes.length || !c.strict))
    .map((cat) =>
      h(
        "fieldset",
        { class: "types" },
        h("legend", {}, `${cat.name} (category ${cat.category})`),
        cat.codes.length ? null : everyOf(cat),
        cat.codes.map((code) => {
          const input = h("input", {
            type: "checkbox",
            name: "type",
            value: `${cat.category}.${code.code}`,
            checked: named(cat.category, code.code),
            onchange: (e) => {
              if (!e.target.checked) return;
              fill(about, typeDetails(cat, code));
              told.textContent = `The fields of ${code.name} and an example are shown after the event types.`;
            },
          });
          boxes.push([cat, code, input]);
          return field(`${code.code} ${code.name}`, input, "check");
        }),
      ),
    );
  const el = h(
    "fieldset",
    { class: "picker wide", "data-field": "filter" },
    h("legend", {}, "Event types"),
    h(
      "p",
      { class: "muted" },
      `None chosen: every ${byDefault()} event. A test event is always sent. ` +
        "Choose a type to see its fields and an example.",
    ),
    h("div", { class: "groups" }, groups),
    told,
    about,
  );
  const value = () => {
    const events = [];
    for (const cat of catalog.categories) {
      if (wholes.some(([c, input]) => c === cat && input.checked)) events.push({ category: cat.category });
      const mine = boxes.filter(([c]) => c === cat);
      const on = mine.filter(([, , input]) => input.checked).map(([, code]) => code.code);
      if (!on.length) continue;
      events.push(on.length === mine.length ? { category: cat.category } : { category: cat.category, codes: on });
    }
    return events.length ? events : null;
  };
  return { el, value };
}

// ---- the link's states, the bar, the router ----------------------------------------------

function linkRefused() {
  refused = true;
  kept.clear();
  nav.hidden = true;
  fill(who);
  say("");
  document.title = "Link expired · Webhooks";
  fill(
    main,
    h("h1", {}, "Link expired"),
    h("p", { class: "alert", role: "alert" }, "This link has expired or was revoked — ask for a new one."),
  );
}

function noLink() {
  nav.hidden = true;
  fill(
    main,
    h("h1", {}, "Webhooks"),
    h(
      "p",
      { class: "alert", role: "alert" },
      "Open this page from the link you were given: it holds your access. Ask for a new one if it is lost.",
    ),
  );
}

const pages = [
  ["subscriptions", "Subscriptions"],
  ["catalog", "Event types"],
];

function drawBar(current) {
  nav.hidden = false;
  fill(
    nav,
    ...pages.map(([name, title]) => h("a", { href: `#/${name}`, "aria-current": name === current ? "page" : null }, title)),
  );
  fill(
    who,
    h("span", {}, link.tenant),
    link.readOnly ? h("span", { class: "pill s-readonly" }, "read-only") : null,
  );
}

async function route(focus = false) {
  if (refused) return;
  const mine = ++generation;
  if (!keepStatus) say("");
  keepStatus = false;
  const [path, query] = location.hash.replace(/^#\/?/, "").split("?");
  const decode = (x) => {
    try {
      return decodeURIComponent(x);
    } catch {
      return x;
    }
  };
  const parts = path.split("/").filter(Boolean).map(decode);
  const q = new URLSearchParams(query || "");
  const name = parts[0] === "catalog" ? "catalog" : "subscriptions";
  drawBar(name);
  let render;
  if (name === "catalog") render = catalogPage;
  else if (parts[1] === "new" && canCreate()) render = newSubscriptionPage;
  else if (parts[1] && parts[2] === "deliveries") render = () => deliveriesPage(parts[1], q);
  else if (parts[1] && parts[1] !== "new") render = () => subscriptionPage(parts[1]);
  else render = subscriptionsPage;
  let shown;
  try {
    await loadCatalog();
    shown = await render();
  } catch (err) {
    if (err instanceof Refused) return;
    shown = [
      h("h1", {}, "Something went wrong"),
      h("p", { class: "alert", role: "alert" }, describe(err)),
      h("p", {}, h("a", { href: "#/subscriptions" }, "← Subscriptions")),
    ];
  }
  if (mine !== generation || refused) return;
  fill(main, shown);
  const h1 = main.querySelector("h1");
  document.title = `${h1 ? h1.textContent : "Webhooks"} · Webhooks`;
  if (focus && h1) {
    h1.tabIndex = -1;
    h1.focus({ preventScroll: true });
    window.scrollTo(0, 0);
  }
}

/** Draws the page again, then puts focus back on the button named `label` if it is there. */
async function redraw(label) {
  await route();
  const again = [...main.querySelectorAll("button")].find((b) => b.textContent === label);
  if (again) again.focus();
}

// ---- Subscriptions -----------------------------------------------------------------------

function stateCell(s) {
  if (s.undecodable) return h("td", {}, pill("unavailable"));
  const failing = s.health && s.health.state !== "healthy";
  return h(
    "td",
    {},
    pill(s.enabled ? "enabled" : "disabled"),
    !s.enabled && s.disabled_reason ? h("div", { class: "muted" }, s.disabled_reason) : null,
    failing ? h("div", { class: "muted" }, `failing: ${s.health.last_error || "no 2xx answer"}`) : null,
  );
}

async function subscriptionsPage() {
  const subs = [];
  let after = null;
  do {
    const page = await api("GET", t(`/subscriptions?limit=1000${after ? `&after=${encodeURIComponent(after)}` : ""}`));
    subs.push(...page.data);
    after = page.next_after;
  } while (after && subs.length < 10000);
  const rows = subs.map((s) => {
    const href = `#/subscriptions/${encodeURIComponent(s.id)}`;
    const deliveries = h("a", { href: `${href}/deliveries` }, "Deliveries", h("span", { class: "sr" }, ` of ${target(s)}`));
    return h(
      "tr",
      {},
      h("td", {}, h("a", { href }, s.undecodable ? s.id : target(s) || s.id), h("div", { class: "muted mono" }, s.id)),
      h("td", {}, s.description || ""),
      h("td", {}, s.undecodable ? "" : typesText(s.filter)),
      stateCell(s),
      h("td", {}, s.undecodable || s.mode === "pull" ? "" : deliveries),
    );
  });
  return [
    h("h1", {}, "Subscriptions"),
    h(
      "p",
      { class: "muted" },
      "Where your events are sent. Each delivery is signed with the subscription's secret (see Standard Webhooks).",
    ),
    canCreate() ? h("p", {}, h("a", { class: "button primary", href: "#/subscriptions/new" }, "New subscription")) : null,
    table(["Endpoint", "Description", "Event types", "State", ""], rows, "No subscriptions yet."),
  ];
}

/** The create and edit form: endpoint URL, description, event types, enabled. */
function subscriptionForm(s, save) {
  const url = h("input", {
    type: "url",
    required: true,
    "data-field": "url",
    autocomplete: "off",
    spellcheck: "false",
    value: s ? s.url : "",
  });
  const description = h("input", { "data-field": "description", value: s ? s.description : "" });
  const picker = typePicker(s ? s.filter : null);
  const enabled = h("input", { type: "checkbox", "data-field": "enabled", checked: s ? s.enabled : true });
  const box = problemBox();
  const hasUrl = !s || s.url !== undefined;
  const form = h(
    "form",
    {
      class: "grid",
      onsubmit: async (e) => {
        e.preventDefault();
        const events = picker.value();
        const body = { description: description.value.trim(), enabled: enabled.checked };
        if (hasUrl) body.url = url.value.trim();
        if (!s) {
          if (events) body.filter = { events };
        } else {
          // A merge patch: the filter's other parts (agents, fields) are kept.
          const rest = s.filter && Object.keys(s.filter).some((k) => k !== "events");
          body.filter = events ? { events } : rest ? { events: null } : null;
        }
        await submit(form, box, () => save(body));
      },
    },
    hasUrl ? field("Endpoint URL", url, "wide") : null,
    field("Description", description, "wide"),
    picker.el,
    field("Enabled", enabled, "check"),
    h(
      "div",
      { class: "wide actions" },
      h("button", { class: "primary", type: "submit" }, s ? "Save changes" : "Create subscription"),
    ),
    box,
  );
  box.classList.add("wide");
  return form;
}

async function newSubscriptionPage() {
  const shown = h("div", { "aria-live": "polite" });
  const form = subscriptionForm(null, async (body) => {
    const created = await api("POST", t("/subscriptions"), body);
    // The secret is shown here once; the subscription's page shows it again on request.
    fill(
      shown,
      h(
        "div",
        { class: "panel done" },
        h("h2", {}, "Subscription created"),
        h("p", {}, "Its signing secret (keep it where your endpoint verifies signatures):"),
        h("p", {}, h("code", { class: "secret" }, created.secret || "")),
        h("p", {}, h("a", { href: `#/subscriptions/${encodeURIComponent(created.id)}` }, `Open ${created.id} →`)),
      ),
    );
    form.hidden = true;
    say(`Subscription ${created.id} created.`);
    shown.querySelector("a").focus();
  });
  return [
    h("h1", {}, "New subscription"),
    form,
    shown,
    h("p", {}, h("a", { href: "#/subscriptions" }, "← Subscriptions")),
  ];
}

/** The secret, hidden until asked; never for a read-only link (the server sends none). */
function secretRow(s) {
  if (!s.secret || s.secret === "***") return null;
  const shown = h("code", { class: "secret" }, "••••••••");
  let open = false;
  const button = h(
    "button",
    {
      type: "button",
      "aria-pressed": "false",
      onclick: () => {
        open = !open;
        shown.textContent = open ? s.secret : "••••••••";
        button.setAttribute("aria-pressed", String(open));
      },
    },
    "Show the secret",
  );
  return ["Signing secret", [shown, " ", button]];
}

const disabled = (s) => (s.disabled_reason ? `disabled: ${s.disabled_reason}` : "disabled");

/** A circuit breaker that is not healthy, in words. */
function health(b) {
  if (!b || b.state === "healthy") return undefined;
  const since = b.failing_since ? ` since ${showTime(b.failing_since)} UTC` : "";
  return `${b.state}${since}${b.last_error ? `: ${b.last_error}` : ""}`;
}

async function subscriptionPage(id) {
  const s = await api("GET", sub(id));
  const pull = s.mode === "pull";
  const facts = [
    ["Id", h("span", { class: "mono" }, s.id)],
    ["Endpoint", target(s)],
    ["Description", s.description],
    ["Event types", s.undecodable ? undefined : typesText(s.filter)],
    ["State", s.undecodable ? "unavailable: ask your provider" : s.enabled ? "enabled" : disabled(s)],
    ["Health", health(s.health)],
    ["Signature scheme", s.signature_scheme],
    ["Public key", s.public_key],
    secretRow(s),
    ["Created", s.created_at ? `${showTime(s.created_at)} UTC` : undefined],
  ].filter((f) => f && f[1] !== undefined && f[1] !== null && f[1] !== "");
  const rows = facts.map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", { class: "secret" }, v)));
  const deliveries = `#/subscriptions/${encodeURIComponent(s.id)}/deliveries`;
  const out = [
    h("h1", {}, `Subscription ${s.id}`),
    h("table", { class: "facts" }, h("tbody", {}, rows)),
    pull ? null : h("p", {}, h("a", { href: deliveries }, "Deliveries and attempts →")),
  ];
  if (canChange() && !s.undecodable) out.push(...actions(s));
  out.push(h("p", {}, h("a", { href: "#/subscriptions" }, "← Subscriptions")));
  return out;
}

/** What a link that may change things may do to a subscription. */
function actions(s) {
  const pull = s.mode === "pull";
  const path = sub(s.id);
  const outcome = h("div", { class: "outcome", "aria-live": "polite" });
  const box = problemBox();
  const run = async (action) => {
    try {
      const r = await action();
      box.hidden = true;
      return r;
    } catch (err) {
      if (!(err instanceof Refused)) {
        fill(box, h("p", {}, describe(err)));
        box.hidden = false;
      }
      return undefined;
    }
  };
  const test = async () => {
    fill(outcome, h("p", { class: "muted" }, "Sending a test event…"));
    const r = await run(() => api("POST", `${path}/test`));
    if (!r) return fill(outcome);
    const how = r.status_code ? `answered ${r.status_code} in ${r.duration_ms} ms` : r.error || "did not answer";
    fill(
      outcome,
      h("p", { class: r.delivered ? "good" : "bad" }, `${r.delivered ? "Delivered" : "Not delivered"}: your endpoint ${how}.`),
      r.error && r.status_code ? h("p", {}, r.error) : null,
      r.response_body ? [h("p", { class: "muted" }, "Its response (excerpt):"), h("pre", {}, excerpt(r.response_body))] : null,
      h("p", {}, h("a", { href: `#/subscriptions/${encodeURIComponent(s.id)}/deliveries` }, "See it in the deliveries →")),
    );
  };
  // Deleting asks first, in the page: a framed page may not be allowed to open a dialog.
  const confirmDelete = h(
    "div",
    { class: "panel confirm", role: "group", "aria-label": "Confirm deletion" },
    h("p", {}, "Delete this subscription and its deliveries? This cannot be undone."),
    h(
      "div",
      { class: "actions" },
      h(
        "button",
        {
          type: "button",
          class: "danger",
          onclick: async () => {
            if ((await run(() => api("DELETE", path))) !== undefined) {
              say(`Subscription ${s.id} deleted.`);
              location.hash = "#/subscriptions";
            }
          },
        },
        "Delete for good",
      ),
      h(
        "button",
        {
          type: "button",
          onclick: () => {
            confirmDelete.hidden = true;
            deleteButton.focus();
          },
        },
        "Keep it",
      ),
    ),
  );
  confirmDelete.hidden = true;
  const deleteButton = h(
    "button",
    {
      type: "button",
      class: "danger",
      onclick: () => {
        confirmDelete.hidden = false;
        confirmDelete.querySelector("button").focus();
      },
    },
    "Delete",
  );
  const buttons = h(
    "div",
    { class: "actions" },
    pull ? null : h("button", { type: "button", onclick: test }, "Send a test event"),
    h(
      "button",
      {
        type: "button",
        onclick: async () => {
          const r = await run(() => api("PATCH", path, { enabled: !s.enabled }));
          if (r) {
            say(s.enabled ? "Disabled: it receives no new events." : "Enabled.");
            redraw(s.enabled ? "Enable" : "Disable");
          }
        },
      },
      s.enabled ? "Disable" : "Enable",
    ),
    deleteButton,
  );
  const out = [
    h(
      "section",
      { class: "panel", "aria-labelledby": "actions-h" },
      h("h2", { id: "actions-h" }, "Actions"),
      buttons,
      confirmDelete,
      box,
      outcome,
    ),
  ];
  out.push(
    h(
      "details",
      { class: "panel" },
      h("summary", {}, "Edit"),
      subscriptionForm(s, async (body) => {
        await api("PATCH", path, body);
        say("Saved.");
        await redraw();
      }),
    ),
  );
  if (!pull) out.push(rotateForm(s), replayForm(s));
  return out;
}

function rotateForm(s) {
  const grace = h("input", { type: "number", min: "0", max: "2592000", value: "86400", "data-field": "grace_secs" });
  const shown = h("div", { "aria-live": "polite" });
  const box = problemBox();
  const form = h(
    "form",
    {
      class: "panel grid",
      onsubmit: async (e) => {
        e.preventDefault();
        const r = await submit(form, box, () => api("POST", `${sub(s.id)}/secret/rotate`, { grace_secs: Number(grace.value) }));
        if (!r) return;
        fill(
          shown,
          h("p", {}, "New signing secret — copy it now, it is not shown again here:"),
          h("p", {}, h("code", { class: "secret new-secret" }, r.secret)),
          r.public_key ? h("p", {}, "New public key: ", h("code", { class: "secret" }, r.public_key)) : null,
          h("p", { class: "muted" }, `The old secret also signs for ${grace.value} s more, while your endpoint changes over.`),
        );
      },
    },
    h("h2", { class: "wide" }, "Rotate the secret"),
    field("Grace period for the old secret (s)", grace),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Rotate the secret")),
    h("div", { class: "wide" }, box, shown),
  );
  return form;
}

function replayForm(s) {
  const now = new Date();
  const since = h("input", {
    type: "datetime-local",
    required: true,
    "data-field": "since",
    value: localValue(new Date(now - 3600 * 1000)),
  });
  const until = h("input", { type: "datetime-local", "data-field": "until" });
  const onlyFailed = h("input", { type: "checkbox", "data-field": "only_failed" });
  const shown = h("p", { "aria-live": "polite" });
  const box = problemBox();
  const form = h(
    "form",
    {
      class: "panel grid",
      onsubmit: async (e) => {
        e.preventDefault();
        const body = { since: toStamp(since.value), only_failed: onlyFailed.checked };
        if (until.value) body.until = toStamp(until.value);
        const r = await submit(form, box, () => api("POST", `${sub(s.id)}/replay`, body));
        if (r) shown.textContent = `${r.requeued} ${r.requeued === 1 ? "delivery" : "deliveries"} requeued.`;
      },
    },
    h("h2", { class: "wide" }, "Replay a window"),
    h("p", { class: "wide muted" }, "Sends again every event of the window that the subscription's event types match now."),
    field("Since (UTC)", since),
    field("Until (UTC, empty: now)", until),
    field("Only failed deliveries", onlyFailed, "check"),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Replay")),
    h("div", { class: "wide" }, box, shown),
  );
  return form;
}

// ---- Deliveries and attempts --------------------------------------------------------------

const STATUSES = ["pending", "succeeded", "failed", "expired", "superseded", "canceled"];
const excerpt = (body) => (body.length > 2000 ? `${body.slice(0, 2000)}…` : body);

function attemptsTable(attempts) {
  return table(
    ["#", "Started (UTC)", "Duration", "Status code", "Error", "Response (excerpt)"],
    attempts.map((a) =>
      h(
        "tr",
        {},
        h("td", { class: "num" }, a.number),
        h("td", {}, showTime(a.started_at)),
        h("td", { class: "num" }, `${a.duration_ms} ms`),
        h("td", { class: "num" }, a.status_code ?? ""),
        h("td", {}, a.error || ""),
        h("td", {}, a.response_body ? h("pre", {}, excerpt(a.response_body)) : ""),
      ),
    ),
    "No attempt yet.",
  );
}

async function deliveriesPage(id, q) {
  const s = await api("GET", sub(id));
  const status = STATUSES.includes(q.get("status")) ? q.get("status") : "";
  const after = q.get("after");
  const params = new URLSearchParams({ limit: "50" });
  if (status) params.set("status", status);
  if (after) params.set("after", after);
  const page = await api("GET", `${sub(id, "/deliveries")}?${params}`);
  const base = `#/subscriptions/${encodeURIComponent(id)}/deliveries`;
  const href = (st, aft) => {
    const p = new URLSearchParams();
    if (st) p.set("status", st);
    if (aft) p.set("after", aft);
    const query = p.toString();
    return query ? `${base}?${query}` : base;
  };
  const select = h(
    "select",
    { onchange: (e) => (location.hash = href(e.target.value, null)) },
    h("option", { value: "" }, "any"),
    STATUSES.map((x) => h("option", { value: x, selected: x === status }, x)),
  );
  const live = h("p", { class: "sr", "aria-live": "polite" });
  const rows = page.data.map((d) => {
    const slot = h("td", { colspan: "8", id: `attempts-${d.id}` });
    const detail = h("tr", { class: "attempts" }, slot);
    detail.hidden = true;
    const toggle = h(
      "button",
      {
        type: "button",
        "aria-expanded": "false",
        "aria-controls": slot.id,
        onclick: async () => {
          if (!detail.hidden) {
            detail.hidden = true;
            toggle.setAttribute("aria-expanded", "false");
            return;
          }
          try {
            const full = await api("GET", t(`/deliveries/${encodeURIComponent(d.id)}`));
            fill(slot, h("h3", { class: "sr" }, `Attempts of delivery ${d.id}`), attemptsTable(full.attempts || []));
          } catch (err) {
            if (err instanceof Refused) return;
            fill(slot, h("p", { class: "alert", role: "alert" }, describe(err)));
          }
          detail.hidden = false;
          toggle.setAttribute("aria-expanded", "true");
          live.textContent = `Attempts of delivery ${d.id} shown.`;
        },
      },
      "Attempts",
      h("span", { class: "sr" }, ` of delivery ${d.id}`),
    );
    const retry =
      canChange() && d.status !== "succeeded"
        ? h(
            "button",
            {
              type: "button",
              onclick: async () => {
                try {
                  await api("POST", t(`/deliveries/${encodeURIComponent(d.id)}/retry`));
                  say(`Delivery ${d.id} is due again.`);
                  setTimeout(() => redraw(), 1000);
                } catch (err) {
                  if (!(err instanceof Refused)) say(describe(err), false);
                }
              },
            },
            "Retry",
            h("span", { class: "sr" }, ` delivery ${d.id}`),
          )
        : null;
    return [
      h(
        "tr",
        {},
        h("td", { class: "num" }, d.id),
        h("td", { class: "mono" }, d.event_id),
        h("td", {}, pill(d.status)),
        h("td", { class: "num" }, d.attempt_count),
        h("td", { class: "num" }, d.last_status_code ?? ""),
        h("td", {}, d.last_error || ""),
        h("td", {}, showTime(d.updated_at)),
        h("td", { class: "actions" }, toggle, retry),
      ),
      detail,
    ];
  });
  return [
    h("h1", {}, "Deliveries"),
    h(
      "p",
      {},
      "Of ",
      h("a", { href: `#/subscriptions/${encodeURIComponent(id)}` }, target(s) || s.id),
      s.description ? ` (${s.description})` : "",
      ", oldest first.",
    ),
    h(
      "div",
      { class: "filters" },
      field("Status", select),
      h("button", { type: "button", onclick: () => redraw("Refresh") }, "Refresh"),
    ),
    live,
    table(
      ["Id", "Event", "Status", "Attempts", "Last status code", "Last error", "Updated (UTC)", ""],
      rows,
      status ? `No ${status} deliveries.` : "No deliveries yet.",
    ),
    h(
      "p",
      { class: "actions" },
      after ? h("a", { href: href(status, null) }, "← First page") : null,
      page.next_after ? h("a", { href: href(status, page.next_after) }, "Next page →") : null,
    ),
  ];
}

// ---- The catalog --------------------------------------------------------------------------

async function catalogPage() {
  return [
    h("h1", {}, "Event types"),
    h("p", { class: "muted" }, "Every event a subscription may receive: its fields and an example."),
    catalog.categories.map((cat) =>
      h(
        "section",
        { "aria-labelledby": `cat-${cat.category}` },
        h("h2", { id: `cat-${cat.category}` }, `${cat.name} (category ${cat.category})`),
        cat.codes.length
          ? null
          : h("p", { class: "muted" }, cat.strict ? "No types." : "Open: any code, any fields; a subscription takes all or none."),
        cat.codes.map((code) =>
          h("details", { class: "type" }, h("summary", {}, `${code.code} ${code.name}`), typeDetails(cat, code, "h3")),
        ),
      ),
    ),
    catalog.activities && catalog.activities.length
      ? h(
          "section",
          { "aria-labelledby": "activities" },
          h("h2", { id: "activities" }, "Activity codes"),
          table(
            ["Code", "Name"],
            catalog.activities.map((a) => h("tr", {}, h("td", { class: "num" }, a.code), h("td", {}, a.name))),
            "",
          ),
        )
      : null,
  ];
}

// ---- start -------------------------------------------------------------------------------

// The skip link moves focus without touching the route in the fragment.
document.querySelector(".skip").addEventListener("click", (e) => {
  e.preventDefault();
  main.focus();
});
/** Takes the link in the fragment, if there is one, and starts over with it. */
function start(focus) {
  const given = fromFragment();
  if (given) {
    kept.set(given);
    history.replaceState(null, "", location.pathname + location.search);
    refused = false;
    catalog = null;
  } else if (refused) {
    return; // the page already says the link is refused
  }
  link = kept.get();
  if (link && link.token && link.tenant) route(focus);
  else noLink();
}

// A new link's url differs from the page's only in its fragment: opened in the same tab, or set
// as a frame's src, it arrives as a hashchange.
window.addEventListener("hashchange", () => start(true));
start(false);
