#!/usr/bin/env python3
"""Checks `POST /mcp` with the official MCP Python SDK (`mcp`, from PyPI; .ci/run installs it)
as the client, against a real server: two tenants with keys, agent events and two subscriptions
whose deliveries fail. Every tool's structured result is the REST answer it mirrors, fetched
with the same key; tenants stay apart; keys without `read`, no key and portal tokens are
refused; no secret ever shows; bad input is an error result; and nothing changes.

Prints one line per check; exits non-zero at the first failure.

Usage: .ci/mcp.py <directory holding the switchboard binary>
"""

import contextlib
import datetime
import importlib.metadata
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

# This file is `mcp.py`: its own folder, first on the path, would shadow the SDK.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]

import anyio
from mcp import ClientSession

try:  # mcp 2: the transport takes a ready HTTP client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.exceptions import MCPError

    try:
        import httpx2 as httpx
    except ImportError:
        import httpx

    @contextlib.asynccontextmanager
    async def transport(url, headers):
        async with httpx.AsyncClient(headers=headers, timeout=30) as client:
            async with streamable_http_client(url, http_client=client) as streams:
                yield streams[0], streams[1]

except ImportError:  # mcp 1
    from mcp.client.streamable_http import streamablehttp_client
    from mcp.shared.exceptions import McpError as MCPError

    @contextlib.asynccontextmanager
    async def transport(url, headers):
        async with streamablehttp_client(url, headers=headers) as streams:
            yield streams[0], streams[1]

sys.path.insert(0, HERE)
from serving import serving  # noqa: E402

ADMIN = "sb_admin_mcp_0123456789abcdef012345"
PORT = 18094
API = f"http://127.0.0.1:{PORT}"
MCP = f"{API}/mcp"
HEADER_SECRET = "s3cr3t-header"
TOKEN_SECRET = "s3cr3t-token"
TOOLS = {"list_agents", "get_agent", "agent_timeline", "agent_counts", "list_events",
         "get_event", "list_subscriptions", "subscription_lag", "failed_deliveries", "catalog"}
# What list_subscriptions leaves out of each subscription: the secret, the header values and the
# receiver's credentials (`auth`, `tls`: their secrets are masked in REST answers already).
HIDDEN = ("secret", "headers", "auth", "tls")
binary = os.path.join(sys.argv[1], "switchboard")
serialized = []  # every tool result, as JSON text, for the search for secrets


def ok(what):
    print(f"ok   {what}")


class Failed(Exception):
    """A check failed; raised rather than exiting, to leave the SDK's task groups cleanly."""


def fail(what):
    raise Failed(what)


def check(condition, what, detail=""):
    if not condition:
        fail(f"{what}" + (f"\n     {detail}" if detail else ""))
    ok(what)


def difference(got, want, at="$"):
    """Where two JSON values first differ, said briefly (None when they are equal)."""
    if isinstance(got, dict) and isinstance(want, dict):
        for k in sorted(set(got) | set(want)):
            if k not in got:
                return f"{at}.{k}: missing from the MCP result (REST: {json.dumps(want[k])[:200]})"
            if k not in want:
                return f"{at}.{k}: not in the REST answer (MCP: {json.dumps(got[k])[:200]})"
            d = difference(got[k], want[k], f"{at}.{k}")
            if d:
                return d
        return None
    if isinstance(got, list) and isinstance(want, list):
        if len(got) != len(want):
            return f"{at}: {len(got)} items in the MCP result, {len(want)} in the REST answer"
        for i, (g, w) in enumerate(zip(got, want)):
            d = difference(g, w, f"{at}[{i}]")
            if d:
                return d
        return None
    if got != want or type(got) is not type(want):
        return f"{at}: MCP {json.dumps(got)[:200]} != REST {json.dumps(want)[:200]}"
    return None


def rest(method, path, key, body=None, headers=None, url=None):
    """One HTTP request; (status, parsed JSON body or None, response headers)."""
    request = urllib.request.Request(
        url or API + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={**({"Authorization": f"Bearer {key}"} if key else {}),
                 "Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            status, raw, got = answer.status, answer.read(), answer.headers
    except urllib.error.HTTPError as e:
        status, raw, got = e.code, e.read(), e.headers
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = None
    return status, parsed, got


def need(method, path, key, body=None, status=200):
    got, answer, _ = rest(method, path, key, body)
    if got != status:
        fail(f"set-up: {method} {path} answered {got}, not {status}: {answer}")
    return answer


def query(args):
    return "?" + urllib.parse.urlencode(args) if args else ""


def stamp(t):
    return t.strftime("%Y%m%d%H%M%S")


def agent_event(code, username, session, at, **fields):
    return {"Id": str(uuid.uuid4()), "CreationDateUtc": stamp(at), "Category": 1, "Code": code,
            "AdditionalFields": {"SessionId": session, "SessionType": "CCA",
                                 "Username": username, "PhoneNo": "+15550001", **fields}}


def dead_url():
    """A loopback URL nothing listens on: every attempt fails at once (refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/hooks"


def initialize_body():
    return {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "switchboard-ci", "version": "1"}}}


def raw_mcp(key, message, method="POST", protocol=None):
    headers = {"Accept": "application/json, text/event-stream"}
    if protocol:
        headers["MCP-Protocol-Version"] = protocol
    return rest(method, None, key, None if method == "GET" else message, headers, url=MCP)


@contextlib.asynccontextmanager
async def connected(key):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with transport(MCP, headers) as (read, write):
        async with ClientSession(read, write) as session:
            with anyio.fail_after(30):
                await session.initialize()
            yield session


async def call(session, tool, args):
    """Calls a tool; its result as the wire's JSON (camelCase), kept for the secrets search."""
    with anyio.fail_after(30):
        result = await session.call_tool(tool, args)
    dumped = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    serialized.append(json.dumps(dumped))
    return dumped


def structured(result, what):
    """A successful result's structured content, checked against its text copy."""
    if result.get("isError"):
        fail(f"{what}: an error result: {result.get('content')}")
    if "structuredContent" not in result:
        fail(f"{what}: no structuredContent: {json.dumps(result)[:300]}")
    content = result.get("content") or []
    if not content or content[0].get("type") != "text":
        fail(f"{what}: content[0] is not text: {content[:1]}")
    try:
        text = json.loads(content[0]["text"])
    except ValueError:
        fail(f"{what}: content[0].text is not JSON: {content[0]['text'][:200]}")
    d = difference(text, result["structuredContent"])
    if d:
        fail(f"{what}: content[0].text is not the structured content: {d}")
    return result["structuredContent"]


def error_text(result, what):
    if not result.get("isError"):
        fail(f"{what}: not an error result: {json.dumps(result)[:300]}")
    content = result.get("content") or []
    if not content or content[0].get("type") != "text":
        fail(f"{what}: an error result without text: {json.dumps(result)[:300]}")
    return content[0]["text"]


class Tools:
    """One session's tools, called with arguments typed as their input schemas say (REST
    cursors are strings; a tool may take an integer)."""

    def __init__(self, session, key, schemas):
        self.session, self.key, self.schemas = session, key, schemas

    def typed(self, tool, args):
        props = self.schemas[tool].get("properties", {})
        out = {}
        for name, value in args.items():
            kinds = props.get(name, {}).get("type")
            kinds = kinds if isinstance(kinds, list) else [kinds]
            if isinstance(value, str) and "string" not in kinds and "integer" in kinds:
                value = int(value)
            elif isinstance(value, int) and "integer" not in kinds and "string" in kinds:
                value = str(value)
            out[name] = value
        return out

    async def mirrors(self, tool, args, path, params=None, shape=None):
        """Checks that `tool(args)` answers what GET `path` answers this key; returns it."""
        args = self.typed(tool, args)
        got = structured(await call(self.session, tool, args), f"{tool} {args}")
        want = need("GET", path + query(params), self.key)
        if shape:
            want = shape(want)
        d = difference(got, want)
        check(d is None, f"{tool} {json.dumps(args)} = GET {path}{query(params)}", d or "")
        return got

    async def refuses(self, tool, args, names, what):
        """Checks that `tool(args)` is an error result naming each of `names`; returns its text."""
        text = error_text(await call(self.session, tool, args), f"{tool} {args}")
        missing = [n for n in names if n not in text]
        naming = f" naming {', '.join(names)}" if names else ""
        check(not missing, f"{tool} {json.dumps(args)}: an error result{naming} ({what})",
              f"it says: {text[:300]}")
        return text


async def tools_of(session):
    with anyio.fail_after(30):
        listed = await session.list_tools()
    return {t.name: t.model_dump(mode="json", by_alias=True, exclude_none=True)
            for t in listed.tools}


async def refused_by_sdk(key, what):
    """Checks that the SDK cannot connect (initialize) with `key`."""
    try:
        with anyio.fail_after(30):
            async with connected(key):
                pass
    except TimeoutError:
        fail(f"the SDK with {what}: initialize hung instead of failing")
    except BaseException as e:  # an MCPError, an HTTP error or a group of them (SDK versions)
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        while getattr(e, "exceptions", None):  # an ExceptionGroup: its first
            e = e.exceptions[0]
        said = str(e).partition("\n")[0][:80]
        ok(f"the SDK with {what}: initialize fails ({type(e).__name__}: {said})")
        return
    fail(f"the SDK with {what}: initialize succeeded")


def set_up():
    """Two tenants: A with read, publish-only and manage keys, two subscriptions (a header and
    a bearer token, to loopback addresses nothing listens on) and 4 agent events; B with a read
    key and 2 agent events. Waits until A's 8 deliveries have failed."""
    for t in ("mcp-a", "mcp-b"):
        need("POST", "/v1/tenants", ADMIN, {"id": t, "name": t.upper()}, 201)
    keys = {}
    for name, tenant, scopes in [("read_a", "mcp-a", ["read"]), ("publish_a", "mcp-a", ["publish"]),
                                 ("manage_a", "mcp-a", ["manage"]), ("read_b", "mcp-b", ["read"])]:
        keys[name] = need("POST", f"/v1/tenants/{tenant}/keys", ADMIN,
                          {"name": name, "scopes": scopes}, 201)["key"]
    subs = [
        need("POST", "/v1/tenants/mcp-a/subscriptions", keys["manage_a"],
             {"url": dead_url(), "description": "header",
              "headers": {"Authorization": f"Bearer {HEADER_SECRET}"},
              "retry_schedule_secs": []}, 201),
        need("POST", "/v1/tenants/mcp-a/subscriptions", keys["manage_a"],
             {"url": dead_url(), "description": "token",
              "auth": {"type": "bearer", "token": TOKEN_SECRET},
              "retry_schedule_secs": []}, 201),
    ]
    for sub in subs:
        if not sub.get("secret"):
            fail(f"set-up: the subscription was created without a secret: {sub}")
    t0 = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    t0 -= datetime.timedelta(minutes=30)
    status = {"ActivityCode": 16, "AvailabilityCode": 1, "ActivityName": ""}
    events_a = [agent_event(1, "alice", "S-A1", t0),
                agent_event(3, "alice", "S-A1", t0 + datetime.timedelta(minutes=1), **status),
                agent_event(1, "bob", "S-A2", t0 + datetime.timedelta(minutes=2)),
                agent_event(3, "alice", "S-A1", t0 + datetime.timedelta(minutes=3),
                            ActivityCode=34, AvailabilityCode=0, ActivityName="")]
    events_b = [agent_event(1, "carol", "S-B1", t0),
                agent_event(3, "carol", "S-B1", t0 + datetime.timedelta(minutes=1), **status)]
    need("POST", "/v1/tenants/mcp-a/events", keys["publish_a"], events_a, 202)
    need("POST", "/v1/tenants/mcp-b/events", ADMIN, events_b, 202)
    # One attempt each (an empty retry schedule), refused at once: 4 failed deliveries per
    # subscription, below the 5 failures in a row that would open its breaker.
    deadline = time.monotonic() + 30
    for sub in subs:
        while True:
            failed = need("GET", f"/v1/tenants/mcp-a/subscriptions/{sub['id']}/deliveries"
                          "?status=failed", ADMIN)["data"]
            if len(failed) == len(events_a):
                break
            if time.monotonic() > deadline:
                fail(f"set-up: {len(failed)} of {len(events_a)} deliveries of {sub['id']} "
                     "failed in 30 s")
            time.sleep(0.2)
    ok(f"set-up: tenants mcp-a and mcp-b, 4 keys, 2 subscriptions, {len(events_a)} + "
       f"{len(events_b)} events, {2 * len(events_a)} failed deliveries")
    return keys, subs, events_a, events_b, t0


def snapshot(keys):
    """What the tools must never change, as REST shows it to the admin."""
    out = {}
    for t in ("mcp-a", "mcp-b"):
        out[t] = {
            "events": need("GET", f"/v1/tenants/{t}/events?limit=1000", ADMIN),
            "agents": need("GET", f"/v1/tenants/{t}/agents?limit=1000", ADMIN),
            "subscriptions": need("GET", f"/v1/tenants/{t}/subscriptions?limit=1000", ADMIN),
            "keys": need("GET", f"/v1/tenants/{t}/keys?limit=1000", ADMIN),
        }
    return out


def without_secrets(page):
    return {**page, "data": [{k: v for k, v in s.items() if k not in HIDDEN} for s in page["data"]]}


def http_refusals(keys):
    """The endpoint itself, over plain HTTP: statuses, content types, statelessness."""
    status, body, headers = raw_mcp(keys["read_a"], None, method="GET")
    check(status == 405, "GET /mcp: 405", f"got {status} {body}")

    for key, what, want in [(None, "no key", 401),
                            ("sb_nonsense_0123456789abcdef", "an unknown key", 401),
                            ("sbp_" + "0" * 43, "a forged portal token (sbp_…)", 401),
                            (keys["publish_a"], "a publish-only key", 403)]:
        status, body, headers = raw_mcp(key, initialize_body())
        check(status == want and "problem+json" in (headers.get("Content-Type") or ""),
              f"POST /mcp initialize with {what}: {want} problem+json",
              f"got {status} {headers.get('Content-Type')} {body}")

    status, body, headers = raw_mcp(keys["read_a"], initialize_body())
    version = ((body or {}).get("result") or {}).get("protocolVersion", "")
    check(status == 200 and "application/json" in (headers.get("Content-Type") or "")
          and version >= "2025-06-18",
          f"POST /mcp initialize with a read key: 200 JSON, protocol {version}",
          f"got {status} {headers.get('Content-Type')} {body}")
    status, body, headers = raw_mcp(
        keys["read_a"], {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                         "params": {"name": "catalog", "arguments": {}}}, protocol=version)
    check(status == 200 and "structuredContent" in ((body or {}).get("result") or {}),
          "tools/call without a session (no Mcp-Session-Id, no initialize first): answered",
          f"got {status} {json.dumps(body)[:300]}")

    # A real portal token, where the server makes them (DESIGN §22): refused.
    status, link, _ = rest("POST", "/v1/tenants/mcp-a/portal-links", keys["manage_a"],
                           {"expires_in_secs": 600})
    if status == 201:
        status, body, headers = raw_mcp(link["token"], initialize_body())
        check(status == 403, "POST /mcp with a real portal token: 403", f"got {status} {body}")
    else:
        print(f"skip a real portal token: POST …/portal-links answered {status}")


async def main():
    keys, subs, events_a, events_b, t0 = set_up()
    before = snapshot(keys)
    http_refusals(keys)
    await refused_by_sdk(keys["publish_a"], "a publish-only key")
    await refused_by_sdk(None, "no key")

    since = stamp(t0 - datetime.timedelta(hours=1))
    until = stamp(t0 + datetime.timedelta(minutes=2))
    a = "/v1/tenants/mcp-a"
    sub = subs[0]["id"]

    async with connected(keys["read_a"]) as session:
        ok("the SDK with A's read key: initialize")
        schemas = await tools_of(session)
        check(set(schemas) == TOOLS, "list_tools: exactly the ten tools",
              f"got {sorted(schemas)}")
        for name, tool in sorted(schemas.items()):
            schema = tool.get("inputSchema") or {}
            if schema.get("type") != "object":
                fail(f"{name}: its inputSchema is not an object schema: {schema}")
            if name != "catalog" and "tenant" not in schema.get("properties", {}):
                fail(f"{name}: its inputSchema has no `tenant`: {schema}")
        for name, needed in [("get_agent", "username"), ("agent_timeline", "username"),
                             ("get_event", "id"), ("subscription_lag", "id"),
                             ("failed_deliveries", "id")]:
            if needed not in schemas[name]["inputSchema"].get("required", []):
                fail(f"{name}: `{needed}` is not required in its inputSchema")
        ok("every tool has an object inputSchema; `tenant` on the tenant's tools; ids required")
        hints = {n: (t.get("annotations") or {}).get("readOnlyHint") for n, t in schemas.items()}
        check(all(h is True for h in hints.values()), "every tool is annotated readOnlyHint",
              str(hints))
        tools = Tools(session, keys["read_a"], schemas_of(schemas))

        agents = await tools.mirrors("list_agents", {}, f"{a}/agents")
        check([x["username"] for x in agents["data"]] == ["alice", "bob"],
              "list_agents: A's agents, alice and bob", json.dumps(agents)[:300])
        page = await tools.mirrors("list_agents", {"limit": 1}, f"{a}/agents", {"limit": 1})
        await tools.mirrors("list_agents", {"limit": 1, "after": page["next_after"]},
                            f"{a}/agents", {"limit": 1, "after": page["next_after"]})
        await tools.mirrors("list_agents", {"tenant": "mcp-a"}, f"{a}/agents")
        await tools.mirrors("list_agents", {"signed_in": True, "availability_code": 0},
                            f"{a}/agents", {"signed_in": "true", "availability_code": 0})
        await tools.mirrors("get_agent", {"username": "alice"}, f"{a}/agents/alice")
        await tools.mirrors("get_agent", {"username": "alice", "as_of": 1},
                            f"{a}/agents/alice", {"as_of": 1})
        await tools.mirrors("agent_timeline", {"username": "alice", "since": since},
                            f"{a}/agents/alice/timeline", {"since": since})
        await tools.mirrors("agent_timeline",
                            {"username": "alice", "since": since, "until": until, "limit": 1},
                            f"{a}/agents/alice/timeline",
                            {"since": since, "until": until, "limit": 1})
        await tools.mirrors("agent_counts", {}, f"{a}/agents/counts")
        log = await tools.mirrors("list_events", {}, f"{a}/events")
        check([e["event"]["Id"] for e in log["data"]] == [e["Id"] for e in events_a],
              "list_events: A's 4 events, in order", json.dumps(log)[:300])
        page = await tools.mirrors("list_events", {"limit": 2}, f"{a}/events", {"limit": 2})
        await tools.mirrors("list_events", {"limit": 2, "after": page["next_after"]},
                            f"{a}/events", {"limit": 2, "after": page["next_after"]})
        await tools.mirrors("list_events", {"username": "alice"}, f"{a}/events",
                            {"username": "alice"})
        await tools.mirrors("list_events", {"since": since, "until": until}, f"{a}/events",
                            {"since": since, "until": until})
        await tools.mirrors("list_events", {"category": 1, "code": 3}, f"{a}/events",
                            {"category": 1, "code": 3})
        await tools.mirrors("get_event", {"id": events_a[0]["Id"]},
                            f"{a}/events/{events_a[0]['Id']}")
        await tools.mirrors("list_subscriptions", {}, f"{a}/subscriptions", shape=without_secrets)
        await tools.mirrors("list_subscriptions", {"limit": 1}, f"{a}/subscriptions",
                            {"limit": 1}, shape=without_secrets)
        for s in subs:
            lag = structured(await call(session, "subscription_lag", {"id": s["id"]}),
                             "subscription_lag")
            want = need("GET", f"{a}/subscriptions/{s['id']}", keys["read_a"])
            d = (difference(sorted(lag), ["health", "id", "lag"])
                 or difference(lag["id"], want["id"])
                 or difference(lag["health"], want["health"])
                 or difference(sorted(lag["lag"]), sorted(want["lag"]))
                 or difference(lag["lag"]["pending"], want["lag"]["pending"]))
            check(d is None, f"subscription_lag {s['id']} = {{id, lag, health}} of GET "
                  f"{a}/subscriptions/{s['id']}", d or "")
            failed = await tools.mirrors("failed_deliveries", {"id": s["id"]},
                                         f"{a}/subscriptions/{s['id']}/deliveries",
                                         {"status": "failed"})
            check(len(failed["data"]) == len(events_a)
                  and all(x["status"] == "failed" for x in failed["data"]),
                  f"failed_deliveries {s['id']}: the {len(events_a)} failed deliveries",
                  json.dumps(failed)[:300])
        await tools.mirrors("failed_deliveries", {"id": sub, "limit": 2},
                            f"{a}/subscriptions/{sub}/deliveries",
                            {"status": "failed", "limit": 2})
        await tools.mirrors("catalog", {}, "/v1/catalog")

        # A REST error comes back as an error result holding the problem.
        for tool, args, path in [
            ("get_agent", {"username": "nobody"}, f"{a}/agents/nobody"),
            ("get_event", {"id": str(uuid.uuid4())}, None),
            ("agent_counts", {"by": "NoSuchField"}, f"{a}/agents/counts?by=NoSuchField"),
        ]:
            path = path or f"{a}/events/{args['id']}"
            text = error_text(await call(session, tool, args), f"{tool} {args}")
            status, problem, _ = rest("GET", path, keys["read_a"])
            try:
                got = json.loads(text)
            except ValueError:
                got = text
            check(status >= 400 and got == problem,
                  f"{tool} {json.dumps(args)}: an error result holding GET's {status} problem",
                  f"MCP: {text[:300]}\n     REST: {problem}")

        # Isolation: A's key cannot see B.
        for tool, args in [("list_agents", {}), ("list_events", {}),
                           ("get_event", {"id": events_b[0]["Id"]}),
                           ("get_agent", {"username": "carol"})]:
            text = error_text(await call(session, tool, {**args, "tenant": "mcp-b"}),
                              f"{tool} tenant mcp-b")
            check("not found" in text.lower() or "404" in text,
                  f"{tool} with A's key and tenant mcp-b: an error result, not found",
                  f"it says: {text[:300]}")
        text = error_text(await call(session, "get_event", {"id": events_b[0]["Id"]}),
                          "get_event of B's event")
        ok("get_event of B's event id with A's key (no tenant): an error result")
        log = structured(await call(session, "list_events", {"limit": 1000}), "list_events")
        theirs = {e["Id"] for e in events_b} & {e["event"]["Id"] for e in log["data"]}
        check(not theirs, "list_events with A's key holds none of B's event ids", str(theirs))

        # Bad input: a JSON-RPC error for an unknown tool, error results naming the argument.
        try:
            with anyio.fail_after(30):
                result = await session.call_tool("drop_everything", {})
        except MCPError as e:
            ok(f"an unknown tool: a JSON-RPC error ({e.error.code}: {e.error.message[:60]})")
        else:
            fail(f"an unknown tool: no JSON-RPC error but a result: {result}")
        await tools.refuses("list_events", {"limit": "abc"}, ["limit"], "a string for an integer")
        await tools.refuses("list_agents", {"bogus": 1}, ["bogus"], "an unknown argument")
        await tools.refuses("get_agent", {}, ["username"], "a required argument missing")
        # A value that is a route's own word there would reach that route (the events stream).
        await tools.refuses("get_event", {"id": "stream"}, ["id"], "the events stream's word")
        await tools.refuses("get_agent", {"username": "stream"}, ["username"],
                            "the agents stream's word")
        await tools.refuses("agent_timeline", {"since": since}, ["username"],
                            "a required argument missing")
        await tools.refuses("agent_timeline", {"username": "alice"}, ["since"],
                            "the REST route's required `since` missing")

    async with connected(keys["read_b"]) as session:
        log = structured(await call(session, "list_events", {}), "list_events with B's key")
        want = need("GET", "/v1/tenants/mcp-b/events", keys["read_b"])
        d = difference(log, want)
        check(d is None, "list_events with B's key: B's log", d or "")

    async with connected(keys["manage_a"]) as session:
        tools = Tools(session, keys["manage_a"], schemas_of(schemas))
        await tools.mirrors("list_subscriptions", {}, f"{a}/subscriptions", shape=without_secrets)
        ok("a manage key: list_subscriptions without the secrets its REST answer shows")

    async with connected(ADMIN) as session:
        tools = Tools(session, ADMIN, schemas_of(schemas))
        await tools.mirrors("list_events", {"tenant": "mcp-b"}, "/v1/tenants/mcp-b/events")
        await tools.mirrors("list_agents", {"tenant": "mcp-b"}, "/v1/tenants/mcp-b/agents")
        await tools.mirrors("get_event", {"tenant": "mcp-b", "id": events_b[1]["Id"]},
                            f"/v1/tenants/mcp-b/events/{events_b[1]['Id']}")
        await tools.mirrors("list_subscriptions", {"tenant": "mcp-a"}, f"{a}/subscriptions",
                            shape=without_secrets)
        await tools.mirrors("failed_deliveries", {"tenant": "mcp-a", "id": sub},
                            f"{a}/subscriptions/{sub}/deliveries", {"status": "failed"})
        # The admin key names a tenant on every tool but the catalog, which belongs to none.
        await tools.mirrors("catalog", {}, "/v1/catalog")
        await tools.refuses("list_events", {}, ["tenant"], "the admin key without a tenant")
        await tools.refuses("list_agents", {"tenant": "no-such-tenant"}, [],
                            "the admin key with an unknown tenant")

    # No secret anywhere: the subscriptions' signing secrets, the header's value, the token.
    secrets = [s["secret"] for s in subs] + [HEADER_SECRET, TOKEN_SECRET]
    leaks = [(s, r[:200]) for r in serialized for s in secrets if s in r]
    check(not leaks, f"no secret in any of the {len(serialized)} tool results", str(leaks[:1]))

    after = snapshot(keys)
    d = difference(after, before)
    check(d is None, "nothing changed: both tenants' events, agents, subscriptions and keys "
          "as before", d or "")
    sdk = importlib.metadata.version("mcp")
    print(f"MCP: every check passed with the mcp Python SDK {sdk}, {len(serialized)} tool calls")


def schemas_of(tools):
    return {n: t["inputSchema"] for n, t in tools.items()}


def failure(e):
    """The `Failed` in `e`, which may be an exception group (of groups) holding it."""
    if isinstance(e, Failed):
        return e
    for inner in getattr(e, "exceptions", ()):
        found = failure(inner)
        if found:
            return found
    return None


with serving(binary, PORT, ADMIN, dev=True):
    try:
        anyio.run(main)
    except BaseException as e:  # a failure may come wrapped in exception groups
        found = failure(e)
        if found is None:
            raise
        sys.exit(f"FAIL {found}")
