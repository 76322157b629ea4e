#!/usr/bin/env python3
"""test_backends.py -- troupe with real PostgreSQL and Redis servers: the
database commands (`troupe db migrate`, `troupe ingest`), a node whose
postgres { } and redis { } are up, down and back (/ready, /metrics), the
shared Redis cache and cross-node coalescing between two nodes, the
assistant on the postgres rag backend, and fault runs: every request of
a bounded load answered while PostgreSQL restarts and while Redis is
killed, with the recovery time measured.

    test_backends.py TROUPE SOURCE_ROOT

Starts its own throwaway servers (scripts/pg, scripts/redis) in temp
dirs on free loopback ports, and its nodes on free ports; stops every
process it started by its PID. Prints "tt: test_backends: N passed, N failed".
"""
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "http"))
from tt import check, free_port, get, post, summary, wait_for  # noqa: E402

TROUPE, SRC = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
PG_SCRIPT = os.path.join(SRC, "scripts", "pg")
REDIS_SCRIPT = os.path.join(SRC, "scripts", "redis")
procs = []
dirs = []


def sh_env(out):
    env = {}
    for line in out.splitlines():
        m = re.match(r"^([A-Z_]+)=(.*)$", line.strip())
        if m:
            env[m.group(1)] = m.group(2).strip("'")
    return env


def server(script, cmd, d):
    r = subprocess.run([script, cmd, d], capture_output=True, text=True, timeout=90)
    if r.returncode != 0:
        print(r.stderr, file=sys.stderr)
    return r.returncode, sh_env(r.stdout)


def troupe(*args, env=None, cwd=SRC):
    return subprocess.run([TROUPE] + list(args), capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=60)


def start_node(text, name, extra_env):
    port = free_port()
    f = tempfile.NamedTemporaryFile("w", prefix="troupe-%s-" % name, suffix=".lua", delete=False)
    f.write(text)
    f.close()
    log = tempfile.NamedTemporaryFile(prefix="troupe-%s-" % name, suffix=".log", delete=False)
    env = dict(os.environ, **extra_env)
    p = subprocess.Popen([TROUPE, "run", "--http", "127.0.0.1:%d" % port, "--threads", "2", f.name],
                         cwd=SRC, stderr=log, env=env)
    procs.append(p)
    for _ in range(200):
        try:
            st, _ = get(port, "/health")
            if st == 200:
                break
        except OSError:
            time.sleep(0.05)
    return p, port, log.name






def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return p.returncode


def kill_pid(pid, sig):
    """Signals pid and waits (bounded) until it is gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def psql(conninfo, sql):
    r = subprocess.run(["psql", conninfo, "-At", "-c", sql], capture_output=True, text=True, timeout=30)
    return r.stdout.strip()


def main():
    pgdir, rdir = tempfile.mkdtemp(prefix="troupe-pg-"), tempfile.mkdtemp(prefix="troupe-redis-")
    dirs.extend([pgdir, rdir])
    rc, pg = server(PG_SCRIPT, "start", pgdir)
    if not check("a throwaway PostgreSQL starts (scripts/pg)", rc == 0 and "PG_CONNINFO" in pg, pg):
        return
    rc, rd = server(REDIS_SCRIPT, "start", rdir)
    if not check("a throwaway Redis starts (scripts/redis)", rc == 0 and "REDIS_PORT" in rd, rd):
        return
    ci = pg["PG_CONNINFO"]
    redis_url = "redis://127.0.0.1:%s/0" % rd["REDIS_PORT"]
    env = {"TROUPE_TEST_PG": ci, "TROUPE_TEST_REDIS_URL": redis_url}

    # ---- troupe db migrate / ingest --------------------------------------
    r = troupe("db", "migrate", "--conninfo", ci)
    check("db migrate applies both migrations", r.returncode == 0 and "applied 001_documents.sql" in r.stdout
          and "applied 002_events.sql" in r.stdout and "version 2" in r.stdout, r.stdout + r.stderr)
    r = troupe("db", "migrate", "--conninfo", ci)
    check("db migrate again applies nothing", r.returncode == 0 and "0 migrations applied" in r.stdout, r.stdout)
    check("the schema is there (chunks with a GIN index, events with a time index)",
          psql(ci, "select count(*) from pg_indexes where indexname in "
                   "('troupe_chunks_tsv','troupe_events_at')") == "2")
    r = troupe("db", "migrate", "--conninfo", "hostaddr=127.0.0.1 port=1 connect_timeout=2")
    check("db migrate against no server: exit 1 and why", r.returncode == 1 and "cannot connect" in r.stderr,
          r.stderr)
    r = troupe("db", "migrate")
    check("db migrate without a database says how to give one", r.returncode == 1 and "--conninfo" in r.stderr,
          r.stderr)
    r = troupe("db", "frobnicate")
    check("db with an unknown subcommand: exit 2", r.returncode == 2 and "unknown subcommand" in r.stderr)
    r = troupe("ingest", "docs", "--conninfo", ci)
    m = re.search(r"(\d+) files \((\d+) added.* (\d+) chunks written", r.stdout)
    check("ingest loads docs/", r.returncode == 0 and m and int(m.group(2)) == int(m.group(1)) > 5 and
          int(m.group(3)) > 10, r.stdout + r.stderr)
    nchunks = psql(ci, "select count(*) from troupe_chunks where tenant = ''")
    r = troupe("ingest", "docs", "--conninfo", ci)
    check("ingest again skips unchanged files", r.returncode == 0 and "0 added, 0 updated" in r.stdout and
          psql(ci, "select count(*) from troupe_chunks where tenant = ''") == nchunks, r.stdout)
    r = troupe("ingest", "tests/data/rag", "--tenant", "acme", "--conninfo", ci)
    check("ingest --tenant keeps tenants apart", r.returncode == 0 and
          psql(ci, "select count(distinct tenant) from troupe_documents") == "2" and
          psql(ci, "select count(*) from troupe_chunks where tenant = ''") == nchunks, r.stdout + r.stderr)
    d = tempfile.mkdtemp(prefix="troupe-corpus-")
    dirs.append(d)
    with open(os.path.join(d, "a.md"), "w") as f:
        f.write("# Alpha\nThe alpha document talks about zebras.\n")
    with open(os.path.join(d, "b.md"), "w") as f:
        f.write("# Beta\nThe beta document talks about giraffes.\n")
    troupe("ingest", d, "--tenant", "t2", "--conninfo", ci)
    with open(os.path.join(d, "a.md"), "w") as f:
        f.write("# Alpha\nThe alpha document now talks about okapis.\n")
    os.unlink(os.path.join(d, "b.md"))
    r = troupe("ingest", d, "--tenant", "t2", "--conninfo", ci)
    check("ingest replaces a changed file and deletes a removed one",
          r.returncode == 0 and "1 updated" in r.stdout and "1 removed" in r.stdout and
          psql(ci, "select string_agg(body, '|') from troupe_chunks where tenant = 't2'").count("okapis") == 1 and
          "giraffes" not in psql(ci, "select string_agg(body, '|') from troupe_chunks where tenant = 't2'"),
          r.stdout + r.stderr)
    r = troupe("ingest", "/no/such/dir", "--conninfo", ci)
    check("ingest of a missing folder: exit 1 and why", r.returncode == 1 and "/no/such/dir" in r.stderr, r.stderr)
    r = troupe("ingest", "docs", "--chunk", "10", "--overlap", "10", "--conninfo", ci)
    check("ingest refuses overlap >= chunk", r.returncode == 2 and "--overlap" in r.stderr, r.stderr)

    # ---- a node with both backends: /ready, /metrics, outages -------------
    cfg = """
node { name = "b1" }
postgres { conninfo_env = "TROUPE_TEST_PG", pool = 4, connect_timeout = "1s" }
redis { url_env = "TROUPE_TEST_REDIS_URL", timeout = "200ms", connect_timeout = "200ms" }
actor "echo" { receive = function(msg) msg.echoed = true return msg end }
pipeline "plain" { step "echo" { timeout = "1s" } }
"""
    node, port, logname = start_node(cfg, "b1", env)
    st, j = get(port, "/ready")
    ok = wait_for(lambda: get(port, "/ready")[0] == 200 and get(port, "/ready")[1]["degraded"] == [], 5)
    check("a node with postgres and redis up is ready, not degraded", ok is not None, get(port, "/ready"))
    st, m = get(port, "/metrics")
    m = m.decode() if isinstance(m, bytes) else str(m)
    check("/metrics reports the pool and the client",
          "troupe_postgres_up 1" in m and "troupe_redis_up 1" in m and
          "troupe_postgres_connections{state=\"open\"}" in m and "troupe_postgres_wait_seconds_bucket" in m, m[-3000:])
    promtool = subprocess.run(["sh", "-c", "command -v promtool"], capture_output=True).stdout.strip()
    if promtool:
        r = subprocess.run([promtool, "check", "metrics"], input=m.encode(), capture_output=True)
        check("promtool accepts /metrics with the backends", r.returncode == 0, r.stdout + r.stderr)

    # Redis down: still ready (the fallbacks), degraded says why; back by itself.
    kill_pid(int(rd["REDIS_PID"]), signal.SIGKILL)
    t = wait_for(lambda: get(port, "/ready")[1].get("degraded"), 5)
    st, j = get(port, "/ready")
    check("redis down: /ready stays 200 and says degraded",
          t is not None and st == 200 and "redis is unreachable" in json.dumps(j["degraded"]), (st, j))
    st, j = post(port, "plain", {"input": {"text": "hi"}})
    check("redis down: requests are still answered", st == 200 and j["output"]["echoed"] is True, (st, j))
    rc, rd = server(REDIS_SCRIPT, "restart", rdir)
    t = wait_for(lambda: get(port, "/ready")[1].get("degraded") == [], 10)
    check("redis back: the node recovers by itself (%.2f s)" % (t or -1), rc == 0 and t is not None,
          get(port, "/ready"))

    # PostgreSQL down: not ready, with the reason; back by itself.
    kill_pid(int(pg["PG_PID"]), signal.SIGINT)  # fast shutdown, data kept
    t = wait_for(lambda: get(port, "/ready")[0] == 503, 10)
    st, j = get(port, "/ready")
    check("postgres down: /ready is 503 and names it", t is not None and st == 503 and
          "postgres is unreachable" in json.dumps(j["reasons"]), (st, j))
    t0 = time.time()
    rc, pg = server(PG_SCRIPT, "start", pgdir)
    t = wait_for(lambda: get(port, "/ready")[0] == 200, 15)
    check("postgres back: ready again by itself (%.2f s after the server started)" % (t or -1),
          rc == 0 and t is not None, get(port, "/ready"))
    check("the node stops with status 0", stop(node) == 0, open(logname).read()[-2000:])

    two_nodes(env, rd, rdir)
    coalescing(env, ci, rd, rdir)
    faults(env, ci, pg, pgdir, rd, rdir)


def coalesce_cfg(name):
    return """
node { name = "%s" }
postgres { conninfo_env = "TROUPE_TEST_PG", pool = 4 }
redis { url_env = "TROUPE_TEST_REDIS_URL", timeout = "300ms", connect_timeout = "200ms" }
tool "slow" { sql = "insert into calls (q, node) select $1, '%s' from pg_sleep(0.4) returning id, node",
              args = { q = "string" } }
actor "execute" { kind = "execute" }
pipeline "p" { step "execute" { timeout = "3s", coalesce = true } }
""" % (name, name)


def burst(ports, q, n_each):
    """n_each identical requests to each port at once; the answers."""
    out = []
    lock = threading.Lock()

    def one(port):
        r = post(port, "p", {"input": {"tool": "slow", "args": {"q": q}}})
        with lock:
            out.append(r)
    ts = [threading.Thread(target=one, args=(p,)) for p in ports for _ in range(n_each)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(20)
    return out


def coalescing(env, ci, rd, rdir):
    psql(ci, "create table calls (id serial primary key, q text, node text)")
    a, pa, la = start_node(coalesce_cfg("a"), "co-a", env)
    b, pb, lb = start_node(coalesce_cfg("b"), "co-b", env)
    wait_for(lambda: get(pa, "/ready")[1].get("degraded") == [] and get(pb, "/ready")[1].get("degraded") == [], 5)
    res = burst([pa, pb], "same question", 4)
    ids = {j["output"]["result"]["rows"][0]["id"] for st, j in res if st == 200}
    rows = psql(ci, "select count(*) from calls where q = 'same question'")
    check("8 identical requests on 2 nodes run the step once (cross-node coalescing)",
          len(res) == 8 and all(st == 200 for st, _ in res) and len(ids) == 1 and rows == "1",
          (rows, [(st, j if st != 200 else j["output"]["result"]) for st, j in res]))
    res = burst([pa, pb], "other question", 2)
    check("a different input is its own call", all(st == 200 for st, _ in res) and
          psql(ci, "select count(*) from calls where q = 'other question'") == "1", res)
    kill_pid(int(rd["REDIS_PID"]), signal.SIGKILL)
    wait_for(lambda: get(pa, "/ready")[1].get("degraded") and get(pb, "/ready")[1].get("degraded"), 5)
    res = burst([pa, pb], "offline question", 3)
    rows = psql(ci, "select count(*) from calls where q = 'offline question'")
    check("redis down: coalescing stays per node (%s calls for 2 nodes), every request answered" % rows,
          len(res) == 6 and all(st == 200 for st, _ in res) and rows == "2", (rows, res))
    rc, rd2 = server(REDIS_SCRIPT, "restart", rdir)
    rd.update(rd2)
    wait_for(lambda: get(pa, "/ready")[1].get("degraded") == [] and get(pb, "/ready")[1].get("degraded") == [], 10)
    check("both nodes stop with status 0 (coalescing)", stop(a) == 0 and stop(b) == 0,
          open(la).read()[-1500:] + open(lb).read()[-1500:])


QUESTIONS = ["how do retries work?", "what is backpressure?", "how does supervision restart actors?",
             "what does the telemetry tap do?", "how is a pipeline deadline enforced?",
             "what is a mailbox overflow policy?", "how do I run the tests?", "what does coalesce do?"]


def load(port, threads, out, stop_at):
    """Requests over `threads` keep-alive connections until stop_at (a
    time), each question made unique (so retrieval reaches PostgreSQL);
    out gets (status, code, t, message) per request."""
    lock = threading.Lock()
    seq = [0]

    def worker(k):
        c = None
        while time.time() < stop_at:
            with lock:
                seq[0] += 1
                i = seq[0]
            q = "%s (run %d)" % (QUESTIONS[i % len(QUESTIONS)], i)
            try:
                if c is None:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
                c.request("POST", "/v1/pipelines/assistant", body=json.dumps({"input": {"text": q}}))
                r = c.getresponse()
                j = json.loads(r.read())
                code = j.get("error", {}).get("code") if r.status != 200 else None
                rec = (r.status, code if r.status == 200 or code else "no error body", time.time(),
                       j.get("error", {}).get("message") if code else None)
            except Exception as e:  # never answered: what this test must not see
                rec = (0, "no answer: %r" % e, time.time(), None)
                c = None
            with lock:
                out.append(rec)
            time.sleep(0.005)  # a steady load, not a flood: failures come back fast
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    return ts


def faults(env, ci, pg, pgdir, rd, rdir):
    e = dict(env, TROUPE_PG=ci, TROUPE_REDIS=env["TROUPE_TEST_REDIS_URL"])
    r = troupe("ingest", "docs", "--conninfo", ci)
    check("the assistant's corpus is in PostgreSQL", r.returncode == 0, r.stderr)
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="troupe-faults-", suffix=".log", delete=False)
    node = subprocess.Popen([TROUPE, "run", "--http", "127.0.0.1:%d" % port, "--threads", "2",
                             "pipelines/assistant-postgres.lua", "pipelines/assistant.lua"],
                            cwd=SRC, stderr=log, env=dict(os.environ, **e))
    procs.append(node)
    ok = wait_for(lambda: get(port, "/ready")[0] == 200, 10)
    st, j = post(port, "assistant", {"input": {"text": "how do retries work?"}})
    check("the assistant answers from PostgreSQL", ok is not None and st == 200 and
          j["output"]["sources"][0].startswith("retries.md"), (st, j))
    out = []
    t0 = time.time()
    ts = load(port, 8, out, t0 + 14)
    time.sleep(2)
    t_pg_down = time.time()
    kill_pid(int(pg["PG_PID"]), signal.SIGINT)
    time.sleep(1.0)
    rc, pg2 = server(PG_SCRIPT, "start", pgdir)
    pg.update(pg2)
    t_pg_up = time.time()
    back = wait_for(lambda: get(port, "/ready")[0] == 200, 15)
    time.sleep(max(0, t_pg_up + 4 - time.time()))
    kill_pid(int(rd["REDIS_PID"]), signal.SIGKILL)
    t_redis_down = time.time()
    time.sleep(1.0)
    rc2, rd2 = server(REDIS_SCRIPT, "restart", rdir)
    rd.update(rd2)
    t_redis_up = time.time()
    rback = wait_for(lambda: get(port, "/ready")[1].get("degraded") == [], 15)
    for t in ts:
        t.join(60)
    N = len(out)
    wall = time.time() - t0
    okn = sum(1 for x in out if x[0] == 200)
    errs = [x for x in out if x[0] not in (0, 200)]
    lost = [x for x in out if x[0] == 0 or x[1] == "no error body"]
    after_pg = [x for x in out if x[2] > t_pg_up and x[2] < t_redis_down]
    first_ok = min((x[2] for x in after_pg if x[0] == 200), default=None)
    during_redis = [x for x in out if t_redis_down <= x[2] <= t_redis_up + 0.5]
    print("# faults: %d requests in %.1f s: %d answered 200, %d explicit errors (%s), %d unanswered; "
          "postgres down %.2f s, first result %.2f s after it started, /ready again after %.2f s; "
          "redis killed: %d requests meanwhile, %d of them 200, degraded cleared %.2f s after restart"
          % (len(out), wall, okn, len(errs), sorted({x[1] for x in errs}), len(lost), t_pg_up - t_pg_down,
             (first_ok - t_pg_up) if first_ok else -1, back or -1, len(during_redis),
             sum(1 for x in during_redis if x[0] == 200), rback or -1))
    msgs = {}
    for x in errs:
        msgs[x[3]] = msgs.get(x[3], 0) + 1
    print("# fault errors by message: %s" % sorted(msgs.items(), key=lambda kv: -kv[1])[:6])
    check("fault load: every one of %d requests answered (%d ok, %d explicit errors, 0 unanswered)"
          % (N, okn, len(errs)), len(out) == N and not lost, lost[:5])
    check("postgres restart: results again within 5 s of the server's start",
          first_ok is not None and first_ok - t_pg_up < 5 and back is not None, (first_ok, back))
    check("redis killed: requests kept succeeding (in-process fallback)",
          during_redis and all(x[0] == 200 for x in during_redis) and rback is not None,
          during_redis[:5])
    check("the node stops with status 0 after the faults", stop(node) == 0, open(log.name).read()[-1500:])


KEY = "acme-key-1"  # printf %s acme-key-1 | sha256sum
KEY_SHA = "904fc520be4ca9db80d0ffcc6bf7e01b4148e33d45bb6b422ad2e607815fb508"


def two_node_cfg(name):
    return """
node { name = "%s" }
redis { url_env = "TROUPE_TEST_REDIS_URL", timeout = "300ms", connect_timeout = "200ms" }
tenant "acme" { keys = { { sha256 = "%s" } }, rate = "2/s", burst = 4 }
actor "echo" { receive = function(msg) msg.by = "%s" return msg end }
pipeline "cached" { step "echo" { timeout = "1s", cache = { ttl = "60s", key = { "text" }, store = "redis" } } }
pipeline "plain" { step "echo" { timeout = "1s" } }
""" % (name, KEY_SHA, name)


def post_key(port, pipeline, body, key=KEY):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("POST", "/v1/pipelines/" + pipeline, body=json.dumps(body),
              headers={"Authorization": "Bearer " + key})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, (json.loads(data) if data.startswith(b"{") else data), r.getheader("Retry-After")


def two_nodes(env, rd, rdir):
    a, pa, la = start_node(two_node_cfg("a"), "two-a", env)
    b, pb, lb = start_node(two_node_cfg("b"), "two-b", env)
    wait_for(lambda: get(pa, "/ready")[1].get("degraded") == [] and get(pb, "/ready")[1].get("degraded") == [], 5)
    time.sleep(0.6)  # let the buckets the two starts used fill (2/s)

    # The shared cache: what node a computed, node b serves.
    st, j, _ = post_key(pa, "cached", {"input": {"text": "shared question"}})
    check("node a computes the step (cache miss)", st == 200 and j["output"]["by"] == "a" and
          j["steps"][0]["cached"] is False, (st, j))
    st, j, _ = post_key(pb, "cached", {"input": {"text": "shared question"}})
    check("node b gets node a's result from the Redis cache", st == 200 and j["output"]["by"] == "a" and
          j["steps"][0]["cached"] is True, (st, j))
    st, j, _ = post_key(pb, "cached", {"input": {"text": "another question"}})
    check("a different key is a miss on node b", st == 200 and j["output"]["by"] == "b", (st, j))
    time.sleep(1.6)  # refill: 3 requests taken of burst 4

    # One bucket for both nodes: burst 4 at 2/s.
    statuses = []
    for i in range(10):
        st, j, ra = post_key(pa if i % 2 == 0 else pb, "plain", {"input": {"text": "r%d" % i}})
        statuses.append((st, ra))
    ok = sum(1 for s_, _ in statuses if s_ == 200)
    limited = [x for x in statuses if x[0] == 429]
    check("the tenant's bucket is shared by both nodes (burst 4: %d of 10 allowed)" % ok,
          4 <= ok <= 5 and len(limited) == 10 - ok and all(r_ for _, r_ in limited), statuses)

    # Redis gone: each node falls back to its own bucket, nothing fails.
    kill_pid(int(rd["REDIS_PID"]), signal.SIGKILL)
    wait_for(lambda: get(pa, "/ready")[1].get("degraded") and get(pb, "/ready")[1].get("degraded"), 5)
    time.sleep(2.1)
    statuses = [post_key(pa if i % 2 == 0 else pb, "plain", {"input": {"text": "d%d" % i}})[0]
                for i in range(10)]
    ok = sum(1 for x in statuses if x == 200)
    check("redis down: each node limits with its own bucket (%d of 10 allowed, up to 2 x burst)" % ok,
          ok >= 6 and all(x in (200, 429) for x in statuses), statuses)
    time.sleep(2.1)
    st, j, _ = post_key(pa, "cached", {"input": {"text": "offline question"}})
    check("redis down: the cached step still runs (in-process cache)", st == 200 and j["output"]["by"] == "a",
          (st, j))
    rc, rd2 = server(REDIS_SCRIPT, "restart", rdir)
    rd.update(rd2)
    t = wait_for(lambda: get(pa, "/ready")[1].get("degraded") == [] and get(pb, "/ready")[1].get("degraded") == [], 10)
    check("redis back: both nodes share again by themselves (%.2f s)" % (t or -1), t is not None)
    check("both nodes stop with status 0", stop(a) == 0 and stop(b) == 0,
          open(la).read()[-1500:] + open(lb).read()[-1500:])


try:
    main()
finally:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    for d in dirs:
        script = PG_SCRIPT if "troupe-pg-" in d else REDIS_SCRIPT if "troupe-redis-" in d else None
        if script:
            subprocess.run([script, "stop", d], capture_output=True, timeout=60)
        else:
            subprocess.run(["rm", "-rf", d])
sys.exit(summary("test_backends"))
