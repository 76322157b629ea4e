#!/usr/bin/env python3
"""security.py -- the security checks of the reliability set (issue 8).

    security.py TROUPE SOURCE_ROOT [--full]

* Lua sandbox: escape attempts (os/io/debug/package/require, load and
  dofile with bytecode, string.dump, the string metatable, _G/_ENV tricks,
  rawset on shared tables, coroutines, collectgarbage, __gc finalizers,
  string.rep bombs, deep recursion, infinite loops, memory bombs), each
  once in a pipeline file through `troupe check` (refused at load, exit 1,
  `file:line: message`) and once in a Lua actor's receive or a `when`
  predicate on a running node (refused at run time as a step error; the
  node stays up and the actor is restarted fresh). A marker file that a
  successful escape would create must never appear.
* Auth: a node with tenants "acme" and "globex": missing, wrong, other
  tenant's, long-prefix, truncated, extended, upper-case, very long keys,
  wrong header names and schemes; then the timing of wrong keys that share
  a 31-byte prefix with the real one against random wrong keys, interleaved
  on one keep-alive connection: the ratio of the medians must be within
  noise (the two halves of the random keys measured the same way give the
  noise floor) in one of at most three rounds (timing_checked).
* SQL tools (when PostgreSQL 15 is installed: a throwaway server from
  scripts/pg): injection strings as args are data (stored and read back
  byte for byte; the table and a canary table are intact); an int arg
  with SQL in it is refused (422); NUL cannot get in (400 at JSON).
* Cluster: nodes whose secrets are wrong (another, a shared prefix, one
  byte more) never become members of the good node (GET /v1/cluster) and
  troupe_cluster_refused_total grows.

Quick (default): 2000 + 2000 timed requests, in about 30 s (60 s under
ASan). --full: 10000 + 10000, in under 2 minutes. Prints the figures in
the bench format, then "tt: security: N passed, N failed".
"""
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rnode import SLOW, TMP, Node, check_files, cleanup, figure, http_raw  # noqa: E402
from tt import check, free_port, get, summary, wait_for  # noqa: E402
from tt import post as tt_post  # noqa: E402

TROUPE, SRC = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
FULL = "--full" in sys.argv[3:]
MARK = os.path.join(TMP, "ESCAPED")
rng = random.Random(8)

# ---- the sandbox ---------------------------------------------------------------

# (name, Lua code run at load and as a receive body, what the refusal says).
# Each body tries the escape for real; if it worked it would write MARK or
# return {escaped = ...}. The messages are the sandbox's or Lua's own.
ESCAPES = [
    ("os.execute", 'os.execute("touch %s")' % MARK, r"unknown name 'os'"),
    ("os via rawget(_G)", 'rawget(_G, "os").execute("touch %s")' % MARK, r"attempt to index a nil value"),
    ("io.popen", 'io.popen("touch %s")' % MARK, r"unknown name 'io'"),
    ("io via _G[]", 'local f = _G["io"].open("%s", "w")' % MARK, r"unknown name 'io'"),
    ("debug.sethook", "debug.sethook()", r"unknown name 'debug'"),
    ("debug.getregistry", "local r = debug.getregistry()", r"unknown name 'debug'"),
    ("package.loadlib", 'package.loadlib("libc.so.6", "system")("touch %s")' % MARK, r"unknown name 'package'"),
    ("require", 'require("os").execute("touch %s")' % MARK, r"unknown name 'require'"),
    ("dofile", 'dofile("/etc/passwd")', r"unknown name 'dofile'"),
    ("loadfile", 'loadfile("/etc/passwd")', r"unknown name 'loadfile'"),
    ("load with bytecode, mode bt", 'local f, e = load("\\27Lua\\84\\0\\25\\147\\r\\n\\26\\n", "x", "bt") '
     'error(e)', r"attempt to load a binary chunk \(mode is 't'\)"),
    ("load with a reader function", 'load(function() return "\\27Lua" end)',
     r"bad argument #1 to 'load' \(string expected, got function\)"),
    ("load escapes its env", 'load("io.open(\'%s\', \'w\')")()' % MARK, r"unknown name 'io'"),
    ("load with a nil env", 'load("return os", "x", "t", nil)()', r"attempt to index a nil value"),
    ("string.dump", "local b = string.dump(function() end)", r"attempt to call a nil value \(field 'dump'\)"),
    ("(\"\").dump", 'local b = (""):dump()', r"attempt to call a nil value \(method 'dump'\)"),
    ("the string metatable", 'getmetatable("").__index.dump = 1', r"attempt to index a boolean value"),
    ("rawget on the string metatable", 'rawget(getmetatable(""), "__index")',
     r"bad argument #1 to 'rawget' \(table expected, got boolean\)"),
    ("a local _ENV over _G", 'local _ENV = setmetatable({}, { __index = _G }) io.open("%s", "w")' % MARK,
     r"unknown name 'io'"),
    ("_G's strictness removed", 'setmetatable(_G, nil) io.open("%s", "w")' % MARK,
     r"attempt to index a nil value \(global 'io'\)"),
    ("collectgarbage(\"stop\")", 'collectgarbage("stop")', r'collectgarbage: only "count" is allowed'),
    ("a __gc finalizer that loops", "setmetatable({}, { __gc = function() while true do end end })",
     r"a __gc metamethod is not allowed in the sandbox"),
    ("a __gc finalizer that allocates", 'X = setmetatable({}, { __gc = function() local t = {} '
     'for i = 1, 1e9 do t[i] = ("x"):rep(100) end end })', r"a __gc metamethod is not allowed"),
    ("string.rep bomb", 'local s = string.rep("x", 1e9)', r"memory limit \(64 MiB\) exceeded"),
    ("string.rep with a separator", 'local s = ("x"):rep(1e6, ("y"):rep(1000))', r"memory limit \(64 MiB\)"),
    ("doubling concatenation", 'local s = "x" for i = 1, 40 do s = s .. s end', r"memory limit \(64 MiB\)"),
    ("string.rep past size_t", 'local s = string.rep("x", 2^62)', r"resulting string too large|memory limit"),
    ("deep recursion", "local function f(n) return f(n + 1) + 1 end f(1)", r"stack overflow"),
    # Lua's C stack limit ends it (each level may add its position).
    ("coroutines nested deep", "local function f() return coroutine.wrap(f)() end f()",
     r"C stack overflow|\.lua:\d+: "),
    ("an infinite loop", "while true do end", r"instruction limit exceeded"),
    ("an infinite loop in a coroutine", "coroutine.wrap(function() while true do end end)()",
     r"instruction limit exceeded"),
    ("pcall swallowing the limit", "while true do pcall(function() while true do end end) end",
     r"instruction limit exceeded"),
    ("coroutines swallowing the limit",
     "while true do pcall(coroutine.wrap(function() while true do end end)) end", r"instruction limit exceeded"),
    ("xpcall with a looping handler",
     "xpcall(function() while true do end end, function() while true do end end)", r"instruction limit exceeded"),
    ("a table error object with __tostring",
     "error(setmetatable({}, { __tostring = function() while true do end end }))",
     # At load: not printed. At run time the probe's tostring() runs the
     # loop: the instruction limit.
     r"\(error object is a table value\)|instruction limit"),
    ("forbidden names enumerable", 'for _, n in ipairs({ "io", "os", "debug", "package", "require", "dofile", '
     '"loadfile" }) do if rawget(_G, n) ~= nil then error("ESCAPED " .. n) end end '
     'for k in pairs(string) do if k == "dump" then error("ESCAPED dump") end end error("none reachable")',
     r"none reachable"),
]

# Catastrophic backtracking in Lua patterns runs inside C, where the
# instruction hook never fires: the sandbox's own matcher (lua/pattern.c)
# counts its steps and charges them to the instruction budget.
PATTERN_BOMB = 'string.find(("a"):rep(40), ("a*"):rep(30) .. "b")'
TOO_COMPLEX = r"pattern too complex \(step budget exceeded\)"
ESCAPES += [
    ("a pattern bomb (issue 8)", PATTERN_BOMB, TOO_COMPLEX),
    ("a pattern bomb as a string method", 'local s = ("a"):rep(40) s:match(("a*"):rep(30) .. "b")', TOO_COMPLEX),
    ("nested quantifiers in gsub", 'string.gsub(("ab"):rep(30), (".-"):rep(25) .. "c", "x")', TOO_COMPLEX),
    ("gmatch over a long subject", 'for x in (("a"):rep(300000)):gmatch("a.-b") do end', TOO_COMPLEX),
    ("%b on a huge unbalanced string", 'string.find(("("):rep(1e6), "%b()")', TOO_COMPLEX),
    ("a back-reference bomb", 'string.find(("a"):rep(1e5), "(.*)%1b")', TOO_COMPLEX),
    ("pattern bombs caught by pcall in a loop",
     "while true do pcall(%s) end" % PATTERN_BOMB.replace("string.find(", "string.find, ", 1)[:-1],
     r"instruction limit exceeded"),
]


def sandbox_load():
    """Each escape as a pipeline file through `troupe check`."""
    cases = refused = 0
    for i, (name, code, want) in enumerate(ESCAPES):
        path = os.path.join(TMP, "esc%d.lua" % i)
        with open(path, "w") as f:
            f.write('actor "a" { kind = "intent" }\n' + code + "\n")
        rc, err, dt = check_files(TROUPE, SRC, [path], 30 * SLOW)
        # A chunk made by load() reports its own position: (load):1.
        where = r"(?:%s:2|\(load\):1|\[string \"x\"\]:1)" % re.escape(path)
        ok = rc == 1 and re.search(r"^%s: .*(%s)" % (where, want), err, re.M) is not None and \
            "ESCAPED" not in err and not os.path.exists(MARK)
        cases += 1
        refused += ok
        check("sandbox at load: %s refused (%.2f s): %s" % (name, dt, err.strip().split("\n")[-1][-90:]),
              ok, (rc, err[-400:]))
    return cases, refused


SANDBOX_NODE = r'''
node { name = "sandbox", threads = 2 }
local cases = {
%s
}
actor "probe" { receive = function(msg)
  local f = cases[msg.case]
  if f == nil then error("no case " .. tostring(msg.case)) end
  local ok, e = pcall(f)
  if ok then return { escaped = msg.case } end
  return { refused = tostring(e) }   -- the limits cannot be caught: the instance crashes
end }
actor "poison" { receive = function(msg)
  rawset(string, "upper", function() return "PWNED" end)
  string.rep = nil
  rawset(_G, "pairs", nil)
  return { poisoned = true }
end }
actor "clean" { receive = function(msg)
  return { upper = string.upper("a"), rep = string.rep("b", 2), pairs = type(pairs) }
end }
supervisor "root" { max_restarts = 100000, within = "1s", children = { "probe", "poison", "clean" } }
pipeline "probe" { deadline = "20s", step "probe" { timeout = "15s", retry_on = {} } }
pipeline "poison" { step "poison" {}, step "clean" {} }
pipeline "clean" { step "clean" {} }
pipeline "when_os" { step "clean" { when = function(msg) return os.execute("touch %s") end } }
pipeline "when_loop" { deadline = "20s", step "clean" { when = function(msg) while true do end end } }
pipeline "when_gc" { step "clean" { when = function(msg)
  setmetatable({}, { __gc = function() while true do end end }) return true end } }
pipeline "when_pattern" { step "clean" { when = function(msg)
  return string.find(("a"):rep(40), ("a*"):rep(30) .. "b") end } }
'''


def post(port, pipeline, inp):
    return tt_post(port, pipeline, {"input": inp}, timeout=30 * SLOW)


def sandbox_run():
    """Each escape in a Lua actor's receive on a running node."""
    body = ",\n".join("  [%s] = function() %s end" % (json.dumps("c%d" % i), code)
                      for i, (_, code, _) in enumerate(ESCAPES))
    node = Node(TROUPE, SRC, SANDBOX_NODE % (body, MARK), "sandbox")
    if not check("the sandbox node starts", node.up, node.logtext()[-2000:]):
        return 0, 0
    cases = refused = 0
    try:
        for i, (name, _, want) in enumerate(ESCAPES):
            r0 = node.metric("troupe_actor_restarts_total") or 0
            st, j = post(node.port, "probe", {"case": "c%d" % i})
            err = j.get("error", {}) if isinstance(j, dict) else {}
            out = j.get("output", {}) if isinstance(j, dict) else {}
            if "instruction limit" in want:
                # Not catchable: the instance crashes (the client sees
                # "actor crashed") and is restarted with a fresh state.
                ok = st == 502 and err.get("code") == "crashed" and \
                    wait_for(lambda: (node.metric("troupe_actor_restarts_total") or 0) > r0, 5 * SLOW) is not None
                msg = err.get("message", "")
            else:
                # Caught by the probe's pcall: the refusal's own text.
                msg = out.get("refused", "")
                w = want + "|not enough memory" if "memory limit" in want else want
                ok = st == 200 and re.search(w, msg) is not None
            ok = ok and "escaped" not in out and not os.path.exists(MARK) and node.healthy()
            cases += 1
            refused += ok
            check("sandbox at run time: %s -> %s %s" % (name, st, msg[-90:]), ok, (st, j))
        st, j = post(node.port, "poison", {})
        out = j.get("output", {}) if isinstance(j, dict) else {}
        ok = st == 200 and out.get("upper") == "A" and out.get("rep") == "bb" and out.get("pairs") == "function"
        check("rawset on string / _G in one actor does not reach another", ok, (st, j))
        cases += 1
        refused += ok
        for p, want, code in (("when_os", r"unknown name 'os'", "error"),
                              ("when_loop", r"instruction limit exceeded \(10000000", "error"),
                              ("when_gc", r"a __gc metamethod is not allowed", "error"),
                              ("when_pattern", TOO_COMPLEX, "error")):
            st, j = post(node.port, p, {})
            err = j.get("error", {}) if isinstance(j, dict) else {}
            ok = st == 502 and err.get("code") == code and re.search(want, err.get("message", "")) is not None \
                and node.healthy()
            cases += 1
            refused += ok
            check("sandbox in a when predicate: %s -> %s %s: %s" % (p, st, err.get("code"),
                                                                     err.get("message", "")[-80:]), ok, (st, j))
        st, j = post(node.port, "clean", {})
        check("after every escape attempt the node serves: clean run 200, same PID",
              st == 200 and node.proc.poll() is None, (st, j))
        check("no escape wrote its marker file", not os.path.exists(MARK))
        rc = node.stop()
        check("the sandbox node stops with status 0", rc == 0, (rc, node.logtext()[-1500:]))
    finally:
        node.stop()
    return cases, refused


# ---- auth ------------------------------------------------------------------------

KEY = "acme-live-0123456789abcdef0123456789abcdef"
GLOBEX = "globex-live-fedcba9876543210fedcba98765432"
AUTH_NODE = r'''
node { name = "auth", threads = 2 }
tenant "acme"   { keys = { sha256 = "%s" } }
tenant "globex" { keys = { sha256 = "%s" } }
actor "who" { receive = function(msg, ctx) return { tenant = ctx.tenant } end }
pipeline "who" { step "who" {} }
''' % (hashlib.sha256(KEY.encode()).hexdigest(), hashlib.sha256(GLOBEX.encode()).hexdigest())


def auth_cases(node):
    B = "Bearer "
    cases = [
        # (name, headers, body extra, status, code, tenant seen)
        ("no key", {}, {}, 401, "unauthorized", None),
        ("a wrong key", {"Authorization": B + "nope"}, {}, 401, "unauthorized", None),
        ("an empty bearer", {"Authorization": "Bearer "}, {}, 401, "unauthorized", None),
        ("the key, last byte changed", {"Authorization": B + KEY[:-1] + "g"}, {}, 401, "unauthorized", None),
        ("the key truncated by one", {"Authorization": B + KEY[:-1]}, {}, 401, "unauthorized", None),
        ("the key and one more byte", {"Authorization": B + KEY + "0"}, {}, 401, "unauthorized", None),
        ("the key upper-cased", {"Authorization": B + KEY.upper()}, {}, 401, "unauthorized", None),
        ("the key's SHA-256 as the key", {"Authorization": B + hashlib.sha256(KEY.encode()).hexdigest()}, {},
         401, "unauthorized", None),
        ("the key without a scheme", {"Authorization": KEY}, {}, 401, "unauthorized", None),
        ("the key as Basic", {"Authorization": "Basic " + KEY}, {}, 401, "unauthorized", None),
        ("the key after two spaces", {"Authorization": "Bearer  " + KEY}, {}, 401, "unauthorized", None),
        ("the key in another header", {"X-Api-Token": KEY}, {}, 401, "unauthorized", None),
        ("the key in the body", {}, {"api_key": KEY}, 401, "unauthorized", None),
        ("a 150-byte key sharing the prefix", {"Authorization": B + KEY + "x" * (150 - len(KEY))}, {}, 401,
         "unauthorized", None),
        ("a 10 KiB key", {"Authorization": B + "k" * 10240}, {}, 401, "unauthorized", None),
        ("a 20 KiB key (past max_header)", {"Authorization": B + "k" * 20480}, {}, 431, "headers_too_large", None),
        ("globex's key posing as acme", {"X-API-Key": GLOBEX}, {"tenant": "acme"}, 403, "forbidden", None),
        ("globex's key runs as globex", {"X-API-Key": GLOBEX}, {}, 200, None, "globex"),
        ("the key runs as acme", {"Authorization": B + KEY}, {}, 200, None, "acme"),
        ("lower-case bearer scheme and header", {"authorization": "bearer " + KEY}, {}, 200, None, "acme"),
        ("x-api-key in another case", {"x-API-key": KEY}, {}, 200, None, "acme"),
    ]
    ok_n = 0
    for name, h, extra, status, code, tenant in cases:
        body = json.dumps(dict({"input": {}}, **extra))
        req = ("POST /v1/pipelines/who HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" +
               "".join("%s: %s\r\n" % kv for kv in h.items()) +
               "Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)).encode()
        st, hd, data, _, _ = http_raw(node.port, req, timeout=10 * SLOW)
        try:
            j = json.loads(data)
        except ValueError:
            j = {}
        ok = st == status
        if code:
            ok = ok and j.get("error", {}).get("code") == code
        if status == 401:
            ok = ok and hd.get("www-authenticate", "").startswith("Bearer")
        if tenant:
            ok = ok and j.get("output", {}).get("tenant") == tenant
        ok = ok and node.healthy()
        ok_n += ok
        check("auth: %s -> %s %s" % (name, st, j.get("error", {}).get("code", (j.get("output") or {}).get("tenant"))),
              ok, (st, hd, data[:300]))
    return len(cases), ok_n


def timing(node, n):
    """Median latency of wrong keys that share all but the last byte with
    the real key vs random wrong keys of the same length, interleaved in
    random order on one keep-alive connection."""
    body = json.dumps({"input": {}})
    c = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10 * SLOW)
    alphabet = "0123456789abcdef"
    kinds = ["prefix"] * n + ["random"] * n
    rng.shuffle(kinds)
    lat = {"prefix": [], "random": []}
    for i in range(200):  # warm-up
        c.request("POST", "/v1/pipelines/who", body=body, headers={"Authorization": "Bearer x%d" % i})
        c.getresponse().read()
    bad = 0
    t0 = time.time()
    for k in kinds:
        if k == "prefix":
            key = KEY[:-1] + rng.choice([ch for ch in alphabet if ch != KEY[-1]])
        else:
            key = "".join(rng.choice(alphabet) for _ in range(len(KEY)))
        h = {"Authorization": "Bearer " + key}
        s = time.perf_counter()
        c.request("POST", "/v1/pipelines/who", body=body, headers=h)
        r = c.getresponse()
        r.read()
        lat[k].append(time.perf_counter() - s)
        bad += r.status != 401
    c.close()
    secs = time.time() - t0
    mp, mr = statistics.median(lat["prefix"]), statistics.median(lat["random"])
    ratio = mp / mr
    # The noise floor: the same statistic between the two halves (by
    # arrival) of the random keys.
    r = lat["random"]
    noise = statistics.median(r[0::2]) / statistics.median(r[1::2])
    bound = max(0.05, 3 * abs(noise - 1))
    print("  timing: %d prefix keys median %.1f us, %d random keys median %.1f us, ratio %.3f "
          "(noise floor %.3f, bound 1 +- %.3f)" % (n, mp * 1e6, n, mr * 1e6, ratio, noise, bound))
    return bad, ratio, bound, mp, mr, noise, secs


def timing_checked(node, n, rounds=3):
    """timing() until one round is within its bound, at most `rounds`:
    a burst of load from the tests running beside this one (meson runs
    them in parallel, and under ASan) can move one round's medians by
    more than 5 %; a comparison that depends on the key leaks in every
    round, so it still fails all three."""
    for i in range(rounds):
        bad, ratio, bound, mp, mr, noise, secs = timing(node, n)
        if bad or abs(ratio - 1) <= bound:
            break
    check("auth timing: every timed wrong key is 401", bad == 0, bad)
    check("auth timing: prefix-sharing keys take as long as random ones (median ratio %.3f, within 1 +- %.3f, round %d of at most %d)"
          % (ratio, bound, i + 1, rounds), abs(ratio - 1) <= bound, (mp, mr, noise))
    return ratio, mp, mr, secs


# ---- SQL ------------------------------------------------------------------------

SQL_NODE = r'''
node { name = "sql", threads = 2 }
postgres { conninfo_env = "TROUPE_TEST_PG", pool = 2 }
tool "add"  { sql = "insert into notes (body) values ($1) returning id, body", args = { body = "string" } }
tool "find" { sql = "select id, body from notes where body = $1 order by id", args = { body = "string" } }
tool "byid" { sql = "select id, body from notes where id = $1", args = { id = "int" } }
tool "like" { sql = "select count(*) as n from notes where body like $1", args = { pat = "string" } }
actor "execute" { kind = "execute" }
pipeline "sql" { step "execute" { timeout = "5s" } }
'''

INJECTIONS = ["'; DROP TABLE notes; --", "1 OR 1=1", "' OR '1'='1", "1; DELETE FROM canary",
              "\u2019; DROP TABLE notes; --", "\u02bc OR \u02bc1\u02bc=\u02bc1", "\uff07; DROP TABLE canary; --",
              "\\'; DROP TABLE notes; --", "$1", "$$; DROP TABLE notes; $$", "%' OR 1=1 --",
              "'); INSERT INTO canary VALUES (666); --", "\"notes\"; DROP TABLE \"canary\"",
              "x" * 300000 + "'; DROP TABLE notes; --"]


def psql(ci, sql):
    r = subprocess.run(["psql", ci, "-At", "-c", sql], capture_output=True, text=True, timeout=30)
    return r.stdout.strip()


def sql_checks():
    pgbin = os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin")
    if not os.path.exists(os.path.join(pgbin, "initdb")) or shutil.which("psql") is None:
        print("  skip: SQL tools (no PostgreSQL 15 at %s, or no psql)" % pgbin)
        return 0, 0
    os.chmod(TMP, 0o711)  # the server runs as the postgres user under root
    pgdir = os.path.join(TMP, "pg")
    script = os.path.join(SRC, "scripts", "pg")
    r = subprocess.run([script, "start", pgdir], capture_output=True, text=True, timeout=120)
    env = dict(re.findall(r"^([A-Z_]+)=(.*)$", r.stdout, re.M))
    ci = env.get("PG_CONNINFO", "").strip("'")
    if not check("a throwaway PostgreSQL starts (scripts/pg)", r.returncode == 0 and ci, r.stderr[-500:]):
        return 0, 0
    node = None
    cases = ok_n = 0
    try:
        psql(ci, "create table notes (id serial primary key, body text not null); "
                 "create table canary (v int); insert into canary values (1), (2), (3); "
                 "insert into notes (body) values ('first'), ('second')")
        node = Node(TROUPE, SRC, SQL_NODE, "sql", env=dict(os.environ, TROUPE_TEST_PG=ci))
        if not check("the SQL node starts", node.up, node.logtext()[-1500:]):
            return 0, 0
        wait_for(lambda: get(node.port, "/ready")[1].get("degraded") == [], 10 * SLOW)
        for s in INJECTIONS:
            label = s if len(s) < 60 else "%d bytes ending %r" % (len(s), s[-25:])
            st, j = post(node.port, "sql", {"tool": "find", "args": {"body": s}})
            found = j.get("output", {}).get("result", {}) if isinstance(j, dict) else {}
            st2, j2 = post(node.port, "sql", {"tool": "add", "args": {"body": s}})
            row = (j2.get("output", {}).get("result", {}).get("rows") or [{}])[0] if isinstance(j2, dict) else {}
            st3, j3 = post(node.port, "sql", {"tool": "find", "args": {"body": s}})
            back = j3.get("output", {}).get("result", {}).get("rows", []) if isinstance(j3, dict) else []
            ok = st == 200 and found.get("count") == 0 and st2 == 200 and row.get("body") == s and \
                st3 == 200 and len(back) == 1 and back[0]["body"] == s
            cases += 1
            ok_n += ok
            check("sql: %r is data: no match, stored and read back byte for byte" % label, ok,
                  (st, found, st2, str(j2)[:300], st3, str(j3)[:300]))
        st, j = post(node.port, "sql", {"tool": "like", "args": {"pat": "%"}})
        n = j.get("output", {}).get("result", {}).get("rows", [{}])[0].get("n") if st == 200 else None
        for s, want_st in (("1 OR 1=1", 422), ("1; DROP TABLE notes", 422), ("0x10", 422)):
            st, j = post(node.port, "sql", {"tool": "byid", "args": {"id": s}})
            ok = st == want_st and j.get("error", {}).get("code") == "invalid"
            cases += 1
            ok_n += ok
            check("sql: int arg %r refused before SQL (%s %s)" % (s, st, j.get("error", {}).get("message", "")[:70]),
                  ok, (st, j))
        req = (b"POST /v1/pipelines/sql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n")
        body = b'{"input":{"tool":"add","args":{"body":"a\\u0000b\'; DROP TABLE notes; --"}}}'
        st, _, data, _, _ = http_raw(node.port, req % len(body) + body, timeout=10 * SLOW)
        ok = st == 400 and b"invalid_json" in data
        cases += 1
        ok_n += ok
        check("sql: a NUL in an arg never reaches SQL (400 invalid_json)", ok, (st, data[:200]))
        rows = psql(ci, "select count(*) from notes")
        canary = psql(ci, "select string_agg(v::text, ',' order by v) from canary")
        tables = psql(ci, "select string_agg(tablename, ',' order by tablename) from pg_tables "
                          "where schemaname = 'public'")
        ok = rows == str(2 + len(INJECTIONS)) and n == 2 + len(INJECTIONS) and canary == "1,2,3" and \
            tables == "canary,notes"
        check("sql: tables intact after the injections (notes %s rows, canary %s, tables %s)" % (rows, canary, tables),
              ok, (rows, n, canary, tables))
        rc = node.stop()
        check("the SQL node stops with status 0", rc == 0, rc)
    finally:
        if node:
            node.stop()
        subprocess.run([script, "stop", pgdir], capture_output=True, timeout=60)
    return cases, ok_n


# ---- cluster ---------------------------------------------------------------------

def cluster_node(name, cport, seeds, secret):
    text = '''
node { name = "%s", cluster = { listen = "tcp://127.0.0.1:%d", seeds = { %s }, secret_file = "%s",
       heartbeat = "100ms", suspect_after = "400ms", down_after = "900ms" } }
actor "echo" { receive = function(msg) return msg end }
pipeline "p" { step "echo" {} }
''' % (name, cport, ", ".join('"tcp://127.0.0.1:%d"' % p for p in seeds), secret)
    return Node(TROUPE, SRC, text, name)


def members(port):
    try:
        st, j = get(port, "/v1/cluster")
        return {m["name"]: m["state"] for m in j["members"]} if st == 200 else {}
    except (OSError, ValueError, KeyError):
        return {}


def cluster_checks():
    good = "the one true cluster secret, 40 bytes!!"
    secrets = {"good": good, "other": "an entirely different secret, 40 bytes", "prefix": good[:-1] + "?",
               "longer": good + "x"}
    paths = {}
    for k, v in secrets.items():
        paths[k] = os.path.join(TMP, "secret-" + k)
        with open(paths[k], "w") as f:
            f.write(v + "\n")
    c1, c2 = free_port(), free_port()
    nodes = []
    try:
        a = cluster_node("a", c1, [], paths["good"])
        b = cluster_node("b", c2, [c1], paths["good"])
        nodes += [a, b]
        t = wait_for(lambda: members(a.port) == {"a": "alive", "b": "alive"}, 10 * SLOW)
        if not check("two nodes with the secret form a cluster (%.2f s)" % (t or -1), t is not None,
                     members(a.port)):
            return 0
        before = a.metric("troupe_cluster_refused_total") or 0
        intruders = []
        for k in ("other", "prefix", "longer"):
            n = cluster_node("x-" + k, free_port(), [c1], paths[k])
            nodes.append(n)
            intruders.append(n)
        time.sleep(2 * SLOW)
        after = a.metric("troupe_cluster_refused_total") or 0
        view_a, view_b = members(a.port), members(b.port)
        ok = all(n.up for n in intruders) and set(view_a) == {"a", "b"} and set(view_b) == {"a", "b"}
        check("nodes with a wrong secret (another, a shared prefix, one byte more) are never members: "
              "a sees %s" % sorted(view_a), ok, (view_a, view_b))
        for n in intruders:
            check("%s sees only itself" % n.path.rsplit("/", 1)[1], set(members(n.port)) <= {n.path.rsplit("/", 1)[1][:-4]},
                  members(n.port))
        check("troupe_cluster_refused_total grows on the good node (%d -> %d)" % (before, after),
              after >= before + len(intruders), (before, after))
        check("the good nodes stay alive for each other", members(a.port) == {"a": "alive", "b": "alive"},
              members(a.port))
        return after - before
    finally:
        for n in nodes:
            n.stop()


def main():
    t0 = time.time()
    lc, lr = sandbox_load()
    rc_, rr = sandbox_run()
    t_sb = time.time() - t0

    t0 = time.time()
    node = Node(TROUPE, SRC, AUTH_NODE, "auth")
    ac = ao = 0
    ratio = None
    if check("the auth node starts", node.up, node.logtext()[-1500:]):
        try:
            ac, ao = auth_cases(node)
            ratio, mp, mr, secs = timing_checked(node, 10000 if FULL else 2000)
        finally:
            node.stop()
    t_auth = time.time() - t0

    t0 = time.time()
    sc, so = sql_checks()
    t_sql = time.time() - t0

    t0 = time.time()
    refused = cluster_checks()
    t_cl = time.time() - t0

    figure("security", "sandbox_cases", lc + rc_, "cases", t_sb)
    figure("security", "sandbox_refused", lr + rr, "cases", t_sb)
    figure("security", "auth_cases", ac, "cases", t_auth)
    if ratio is not None:
        figure("security", "auth_timing_ratio", round(ratio, 3), "ratio", t_auth)
    figure("security", "sql_cases", sc, "cases", t_sql)
    figure("security", "cluster_refused", int(refused or 0), "refusals", t_cl)


try:
    main()
finally:
    cleanup()
sys.exit(summary("security"))
