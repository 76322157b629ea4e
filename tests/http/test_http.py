#!/usr/bin/env python3
"""test_http.py -- the HTTP front door of a real node, over loopback.

    test_http.py TROUPE SOURCE_ROOT

Starts `troupe run` on free loopback ports with pipeline files written to
a temp dir, talks HTTP to it (http.client, and raw sockets for malformed
input), and stops every node it started by its PID. Prints the tt line
"tt: test_http: N passed, N failed" (tests/harness/tt.h).
"""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from tt import check, free_port, post_stream, summary

TROUPE, SRC = sys.argv[1], sys.argv[2]
TMP = tempfile.mkdtemp(prefix="troupe-http-")
procs = []






class Node:
    def __init__(self, text, name="p.lua", extra=()):
        self.port = free_port()
        self.path = os.path.join(TMP, name)
        self.write(text)
        self.log = open(os.path.join(TMP, name + ".log"), "w+")
        self.proc = subprocess.Popen([TROUPE, "run", "--http", "127.0.0.1:%d" % self.port,
                                      *extra, self.path], stderr=self.log)
        procs.append(self.proc)
        self.wait_log('"msg":"node started"')

    def write(self, text):
        with open(self.path, "w") as f:
            f.write(text)

    def logtext(self):
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def wait_log(self, pat, n=1, timeout=10):
        end = time.time() + timeout
        while time.time() < end:
            if self.logtext().count(pat) >= n:
                return True
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        print("  log of %s:\n%s" % (self.path, self.logtext()), file=sys.stderr)
        return False

    def conn(self, timeout=10):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def req(self, method, path, body=None, headers=None, conn=None):
        c = conn or self.conn()
        h = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
            h.setdefault("Content-Type", "application/json")
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        if conn is None:
            c.close()
        try:
            j = json.loads(data) if data else None
        except ValueError:
            j = None
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), j, data

    def run(self, pipeline, inp, **kw):
        return self.req("POST", "/v1/pipelines/" + pipeline, {"input": inp}, **kw)

    def raw(self, data, timeout=5):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        s.sendall(data)
        out = b""
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    break
                out += b
        except socket.timeout:
            pass
        s.close()
        return out

    def metric(self, name, labels=""):
        _, _, _, data = self.req("GET", "/metrics")
        pat = r"^" + re.escape(name) + (r"\{" + labels + r"\}" if labels else r"(?:\{[^}]*\})?") + r" (\S+)$"
        m = re.search(pat, data.decode(), re.M)
        return float(m.group(1)) if m else None

    def stop(self, sig=signal.SIGTERM, timeout=15):
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return "timeout"


# A Lua "slow" step: busy work (the sandbox has no sleep), work = 15 is
# 3 M loop turns, ~30-60 ms here and under the 10 M instruction budget
# of one call. The "slow" pipeline chains four of them.
BASE = r'''
node { name = "http-test", threads = 2 }
actor "shout" { receive = function(msg, ctx) msg.text = string.upper(msg.text or ""); return msg end }
actor "count" { receive = function(msg) msg.n = (msg.n or 0) + 1; return msg end }
actor "boom"  { receive = function(msg) error("boom") end }
actor "slow"  { instances = 2, receive = function(msg)
  local x = 0
  for i = 1, (msg.work or 1) * 200000 do x = x + i end
  msg.slow = true
  return msg
end }
supervisor "root" { strategy = "one_for_one", max_restarts = 1000, within = "10s",
  children = { "shout", "count", "boom", "slow" } }
pipeline "echo"  { step "shout" { timeout = "1s" }, step "count" {} }
pipeline "fails" { step "boom" { retries = 1, backoff = { base = "1ms" } } }
pipeline "slow"  { deadline = "10s", max_inflight = 2, step "slow" { timeout = "5s" },
  step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" } }
pipeline "slower" { deadline = "60s", step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" } }
pipeline "tight" { deadline = "20ms", step "slow" { timeout = "5s" }, step "slow" { timeout = "5s" },
  step "slow" { timeout = "5s" } }
'''


def test_basics(n):
    st, h, j, _ = n.req("GET", "/health")
    check("GET /health is 200 ok", st == 200 and j["status"] == "ok", (st, j))
    check("JSON content type", h.get("content-type") == "application/json", h)
    st, h, _, data = n.req("HEAD", "/health")
    check("HEAD /health: headers, no body", st == 200 and data == b"" and
          int(h.get("content-length", 0)) > 0, (st, h, data))
    st, _, j, _ = n.req("GET", "/ready")
    check("GET /ready is 200 ready", st == 200 and j["ready"] is True and j["reasons"] == [], j)

    st, h, j, _ = n.run("echo", {"text": "hello", "n": 41})
    ok = st == 200 and j["output"]["text"] == "HELLO" and j["output"]["n"] == 42
    check("POST run answers the output", ok, (st, j))
    check("run has a 128-bit trace id", re.fullmatch(r"[0-9a-f]{32}", j.get("trace_id", "")), j)
    steps = j.get("steps", [])
    check("run lists its steps", [s["step"] for s in steps] == ["shout", "count"] and
          all(set(s) >= {"step", "actor", "ms", "attempts", "cached"} for s in steps), steps)
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    _, _, j, _ = n.run("echo", {"text": "x"}, headers={"traceparent": tp})
    check("W3C traceparent gives the trace id", j["trace_id"] == "0af7651916cd43dd8448eb211c80319c", j)

    c = n.conn()
    res = [n.run("echo", {"text": "k%d" % i}, conn=c)[2]["output"]["text"] for i in range(5)]
    c.close()
    check("keep-alive: 5 runs on one connection", res == ["K%d" % i for i in range(5)], res)

    # Pipelined: three requests written at once come back in order.
    body = json.dumps({"input": {"text": "p"}}).encode()
    one = b"POST /v1/pipelines/echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    out = n.raw(one * 2 + b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    check("pipelined requests answered in order",
          out.count(b"HTTP/1.1 200 OK") == 3 and out.rfind(b'"status":"ok"') > out.rfind(b'"P"'),
          out[:300])


def test_errors(n):
    def err(st, j, code, status):
        return st == status and isinstance(j, dict) and j.get("error", {}).get("code") == code and \
            j["error"].get("message")

    st, _, j, _ = n.req("POST", "/v1/pipelines/echo", "{not json", {"Content-Type": "application/json"})
    check("malformed JSON is 400 invalid_json", err(st, j, "invalid_json", 400), (st, j))
    check("malformed JSON message names the place", "line 1" in j["error"]["message"], j)
    st, _, j, _ = n.req("POST", "/v1/pipelines/echo", [1, 2])
    check("a non-object body is 400", err(st, j, "bad_request", 400), (st, j))
    st, _, j, _ = n.req("POST", "/v1/pipelines/echo", {"text": "no input key"})
    check("an unknown body key is 400", err(st, j, "bad_request", 400) and "text" in j["error"]["message"], j)
    st, _, j, _ = n.req("POST", "/v1/pipelines/echo", {"input": "str"})
    check("input not an object is 400", err(st, j, "bad_request", 400), j)
    st, _, j, _ = n.req("POST", "/v1/pipelines/echo", b'{"input": {"t": "\xff\xfe"}}')
    check("invalid UTF-8 is 400", err(st, j, "invalid_json", 400), (st, j))
    deep = "[" * 100 + "]" * 100
    st, _, j, _ = n.req("POST", "/v1/pipelines/echo", '{"input": {"d": %s}}' % deep)
    check("nesting past the limit is 400", err(st, j, "bad_request", 400) and "deep" in j["error"]["message"], j)
    st, _, j, _ = n.req("POST", "/v1/pipelines/echo", "")
    check("an empty body is 400", err(st, j, "bad_request", 400), (st, j))
    st, _, j, _ = n.run("nope", {})
    check("unknown pipeline is 404", err(st, j, "not_found", 404) and "nope" in j["error"]["message"], j)
    st, _, j, _ = n.req("GET", "/nowhere")
    check("unknown route is 404", err(st, j, "not_found", 404), j)
    st, h, j, _ = n.req("GET", "/v1/pipelines/echo")
    check("GET on a pipeline is 405 with Allow: POST",
          err(st, j, "method_not_allowed", 405) and h.get("allow") == "POST", (st, h, j))
    st, h, j, _ = n.req("DELETE", "/health")
    check("DELETE /health is 405", err(st, j, "method_not_allowed", 405) and "GET" in h.get("allow", ""), (st, h))

    out = n.raw(b"POST /v1/pipelines/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n")
    check("body over the limit is 413 (from Content-Length, before the body)",
          out.startswith(b"HTTP/1.1 413 ") and b'"body_too_large"' in out, out[:200])
    chunk = b"%x\r\n%s\r\n" % (600000, b"a" * 600000)
    out = n.raw(b"POST /v1/pipelines/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
                chunk * 2 + b"0\r\n\r\n")
    check("chunked body over the limit is 413", out.startswith(b"HTTP/1.1 413 "), out[:100])
    out = n.raw(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    check("headers over the limit are 431", out.startswith(b"HTTP/1.1 431 "), out[:100])
    out = n.raw(b"GARBAGE / NOTHTTP\r\n\r\n")
    check("a malformed request line is 400", out.startswith(b"HTTP/1.1 400 ") and b"malformed HTTP" in out, out[:200])
    out = n.raw(b"POST /v1/pipelines/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    check("bad chunked encoding is 400", out.startswith(b"HTTP/1.1 400 "), out[:100])
    out = n.raw(b"GET /health HTTP/2.0\r\n\r\n")
    check("HTTP/2 preface-less version is refused", out.startswith(b"HTTP/1.1 505 ") or out.startswith(b"HTTP/1.1 400 "), out[:100])

    st, _, j, _ = n.run("fails", {})
    check("a crashing step is 502 crashed, naming the step and the Lua error",
          st == 502 and j["error"]["code"] == "crashed" and j["error"]["step"] == "boom" and
          j["error"]["attempts"] == 2 and "boom" in j["error"].get("message", ""), (st, j))
    st, _, j, _ = n.run("tight", {"work": 15})
    check("a run past its deadline is 504", st == 504 and j["error"]["code"] in ("timeout", "deadline"), (st, j))
    st, _, _, _ = n.req("GET", "/health")
    check("node still serving after bad input", st == 200)


def test_overload(n):
    results = []
    lock = threading.Lock()

    def one():
        r = n.run("slow", {"work": 15})
        with lock:
            results.append(r)
    ts = [threading.Thread(target=one) for _ in range(12)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    codes = sorted(r[0] for r in results)
    over = [r for r in results if r[0] == 503]
    check("max_inflight: every run answered, 200 or 503", len(results) == 12 and
          set(codes) <= {200, 503} and 200 in codes, codes)
    check("overload is 503 code overload with Retry-After",
          len(over) > 0 and all(r[2]["error"]["code"] == "overload" and
                                int(r[1].get("retry-after", "0")) >= 1 for r in over),
          [(r[0], r[1].get("retry-after"), r[2]) for r in over[:2]])


def read_stream(n, accept, body, close_after=None):
    """A streaming run on node n (body["_p"]: the pipeline, default echo)."""
    pipe = body.pop("_p", "echo")
    return post_stream(n.port, pipe, body, accept, close_after)


def test_streaming(n):
    head, payload = read_stream(n, "application/x-ndjson", {"input": {"text": "s"}})
    evs = [json.loads(l) for l in payload.decode().splitlines() if l]
    check("NDJSON: 200 chunked x-ndjson", b"200 OK" in head and b"application/x-ndjson" in head and
          b"chunked" in head.lower(), head)
    types = [e["type"] for e in evs]
    check("NDJSON: step events then done", types[-1:] == ["done"] and types.count("step") >= 4, types)
    check("NDJSON: start/end for each step",
          [(e["event"], e["step"]) for e in evs if e["type"] == "step" and e["event"] in ("start", "end")] ==
          [("start", "shout"), ("end", "shout"), ("start", "count"), ("end", "count")], evs)
    check("NDJSON: done carries the output", evs[-1].get("output", {}).get("text") == "S", evs[-1:])
    head, payload = read_stream(n, "text/event-stream", {"input": {"text": "e"}})
    lines = [l for l in payload.decode().split("\n\n") if l]
    check("SSE: text/event-stream with data: lines", b"text/event-stream" in head and
          all(l.startswith("data: ") for l in lines) and json.loads(lines[-1][6:])["type"] == "done",
          (head, lines[-1:]))
    head, payload = read_stream(n, "application/x-ndjson", {"input": {}, "_p": "fails"})
    evs = [json.loads(l) for l in payload.decode().splitlines() if l]
    check("NDJSON: a failed run ends with an error event",
          evs and evs[-1]["type"] == "error" and evs[-1]["error"]["code"] == "crashed", evs[-1:])

    before = n.metric("troupe_pipeline_runs_total", 'pipeline="slow",outcome="cancelled"') or 0
    first, _ = read_stream(n, "application/x-ndjson", {"input": {"work": 15}, "_p": "slow"}, close_after=1)
    ok = False
    for _ in range(100):
        v = n.metric("troupe_pipeline_runs_total", 'pipeline="slow",outcome="cancelled"') or 0
        if v > before:
            ok = True
            break
        time.sleep(0.05)
    check("a client that disconnects cancels its run", ok, first)


def test_introspection(n):
    st, _, j, _ = n.req("GET", "/v1/actors")
    names = json.dumps(j)
    check("/v1/actors: the tree with the actors", st == 200 and '"shout@1"' in names and
          '"slow#1@1"' in names and '"pipeline:echo@1"' in names, names[:300])
    st, _, j, _ = n.req("GET", "/v1/pipelines")
    p = {x["name"]: x for x in j["pipelines"]}
    check("/v1/pipelines: graphs and stats", st == 200 and set(p) >= {"echo", "slow"} and
          [s["actor"] for s in p["echo"]["steps"]] == ["shout", "count"] and p["echo"]["stats"]["ok"] > 0, j)
    st, _, j, _ = n.req("GET", "/v1/traces")
    check("/v1/traces: the last runs", st == 200 and len(j["traces"]) > 0 and
          j["traces"][0]["pipeline"] in ("echo", "slow", "fails", "tight"), j)
    st, h, _, data = n.req("GET", "/metrics")
    text = data.decode()
    want = ["troupe_actor_mailbox_depth", "troupe_actor_received_total", "troupe_actor_processed_total",
            "troupe_actor_dropped_total", "troupe_actor_restarts_total", "troupe_step_duration_seconds_bucket",
            "troupe_pipeline_retries_total", "troupe_pipeline_timeouts_total", "troupe_pipeline_cache_hits_total",
            "troupe_pipeline_cache_misses_total", "troupe_pipeline_runs_total", "troupe_http_requests_total"]
    check("/metrics: Prometheus text with every family", st == 200 and
          h["content-type"].startswith("text/plain; version=0.0.4") and all(w in text for w in want),
          [w for w in want if w not in text])
    check("/metrics: HTTP requests by route and status",
          re.search(r'troupe_http_requests_total\{route="/v1/pipelines/\{name\}",code="404"\} [1-9]', text), "")
    check("/metrics: restarts of the crashing actor counted",
          (n.metric("troupe_actor_restarts_total", 'actor="boom@1"') or 0) >= 2)
    promtool = subprocess.run(["sh", "-c", "command -v promtool"], capture_output=True).stdout.strip()
    if promtool:
        r = subprocess.run([promtool, "check", "metrics"], input=data, capture_output=True)
        check("/metrics passes promtool check metrics", r.returncode == 0, r.stdout + r.stderr)
    else:
        check("promtool available (Debian prometheus)", False, "install the prometheus package")
    st, h, _, data = n.req("GET", "/")
    check("GET / serves the status page", st == 200 and h["content-type"].startswith("text/html") and
          b"/v1/actors" in data and b"<script" in data and b"http://" not in data and b"https://" not in data)


def sha(k):
    import hashlib
    return hashlib.sha256(k.encode()).hexdigest()


AUTH = r'''
node { threads = 2, max_body = "4KiB", max_header = "2KiB", max_connections = 5,
       header_timeout = "300ms", idle_timeout = "600ms", grace = "2s" }
tenant "acme"   { keys = { sha256 = "%s" }, rate = "5/s", burst = 5 }
tenant "globex" { keys = { { sha256 = "%s" }, { sha256 = "%s" } } }
actor "who" { receive = function(msg, ctx) msg.tenant_seen = ctx.tenant; return msg end }
pipeline "who" { step "who" {} }
''' % (sha("acme-key"), sha("globex-key-1"), sha("globex-key-2"))


def test_auth_and_limits():
    n = Node(AUTH, "auth.lua")
    try:
        st, h, j, _ = n.run("who", {"x": 1})
        check("no API key is 401 with WWW-Authenticate",
              st == 401 and j["error"]["code"] == "unauthorized" and "www-authenticate" in h, (st, h, j))
        st, _, j, _ = n.run("who", {}, headers={"Authorization": "Bearer acme-kez"})
        check("a wrong API key is 401", st == 401 and "invalid" in j["error"]["message"], j)
        st, _, j, _ = n.run("who", {}, headers={"Authorization": "Basic YWNtZTp4"})
        check("another auth scheme is 401", st == 401, (st, j))
        st, _, j, _ = n.run("who", {}, headers={"Authorization": "Bearer acme-key"})
        check("a good key runs as its tenant", st == 200 and j["output"]["tenant"] == "acme" and
              j["output"]["tenant_seen"] == "acme", (st, j))
        st, _, j, _ = n.run("who", {}, headers={"X-API-Key": "globex-key-2"})
        check("X-API-Key, second key of a tenant", st == 200 and j["output"]["tenant_seen"] == "globex", j)
        st, _, j, _ = n.req("POST", "/v1/pipelines/who", {"input": {}, "tenant": "acme"},
                            headers={"X-API-Key": "globex-key-1"})
        check("posing as another tenant is 403", st == 403 and j["error"]["code"] == "forbidden", (st, j))
        st, _, j, _ = n.run("who", {"tenant": "acme"}, headers={"X-API-Key": "globex-key-1"})
        check("the key's tenant overrides input.tenant", st == 200 and j["output"]["tenant"] == "globex", j)
        st, _, _, _ = n.req("GET", "/health")
        check("/health needs no key", st == 200)

        c = n.conn()
        codes = [n.run("who", {}, headers={"Authorization": "Bearer acme-key"}, conn=c) for _ in range(12)]
        c.close()
        lim = [r for r in codes if r[0] == 429]
        check("tenant over its rate gets 429 with Retry-After",
              len(lim) >= 5 and all(r[2]["error"]["code"] == "rate_limited" and
                                    int(r[1]["retry-after"]) >= 1 for r in lim) and
              [r[0] for r in codes].count(200) >= 1, [r[0] for r in codes])
        c = n.conn()
        codes = [n.run("who", {}, headers={"X-API-Key": "globex-key-1"}, conn=c)[0] for _ in range(30)]
        c.close()
        check("a tenant without a rate is not limited", codes == [200] * 30, codes)

        st, _, j, _ = n.run("who", {"pad": "x" * 5000}, headers={"X-API-Key": "globex-key-1"})
        check("max_body from the node config: 413", st == 413, st)
        out = n.raw(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 3000 + b"\r\n\r\n")
        check("max_header from the node config: 431", out.startswith(b"HTTP/1.1 431 "), out[:80])

        # Slowloris: half a request, then nothing: 408 and closed.
        t0 = time.time()
        s = socket.create_connection(("127.0.0.1", n.port), timeout=5)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        data = b""
        while True:
            b = s.recv(4096)
            if not b:
                break
            data += b
        s.close()
        dt = time.time() - t0
        check("a slow client is cut off at header_timeout with 408",
              data.startswith(b"HTTP/1.1 408 ") and 0.2 < dt < 3, (data[:60], dt))
        # Keep-alive idle: the server closes after idle_timeout.
        s = socket.create_connection(("127.0.0.1", n.port), timeout=5)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = s.recv(4096)
        t0 = time.time()
        rest = s.recv(4096)
        dt = time.time() - t0
        s.close()
        check("an idle keep-alive connection is closed after idle_timeout",
              first.startswith(b"HTTP/1.1 200") and rest == b"" and 0.3 < dt < 3, (rest, dt))
        # max_connections = 5: the 6th is told 503 and closed.
        socks = [socket.create_connection(("127.0.0.1", n.port), timeout=5) for _ in range(5)]
        time.sleep(0.05)
        out = n.raw(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        for x in socks:
            x.close()
        check("past max_connections: 503 too_many_connections",
              out.startswith(b"HTTP/1.1 503 ") and b"too_many_connections" in out, out[:120])
        time.sleep(0.1)
        st, _, _, _ = n.req("GET", "/health")
        check("connections free again once others close", st == 200)
    finally:
        n.stop()


def test_shutdown_and_reload():
    n = Node(BASE, "g.lua")
    # Reload while serving: a loop of runs across a SIGHUP, none fails.
    stop = threading.Event()
    codes = []

    def loop():
        c = n.conn()
        while not stop.is_set():
            try:
                codes.append(n.run("echo", {"text": "r"}, conn=c)[0])
            except Exception as e:  # a closed keep-alive connection would show here
                codes.append(str(e))
                c = n.conn()
    t = threading.Thread(target=loop)
    t.start()
    time.sleep(0.3)
    n.write(BASE.replace('msg.n = (msg.n or 0) + 1', 'msg.n = (msg.n or 0) + 100'))
    n.proc.send_signal(signal.SIGHUP)
    check("reload while serving is logged", n.wait_log('"msg":"reloaded","generation":2'))
    time.sleep(0.5)
    stop.set()
    t.join()
    _, _, j, _ = n.run("echo", {"text": "r", "n": 0})
    check("reload while serving: no failed request", len(codes) > 20 and set(codes) == {200},
          (len(codes), set(codes)))
    check("new runs use the new version", j["output"]["n"] == 100, j)

    # Graceful stop with runs in flight: all answered, exit 0.
    results = []

    def one():
        try:
            results.append(n.run("slow", {"work": 15})[0])
        except Exception as e:
            results.append(str(e))
    ts = [threading.Thread(target=one) for _ in range(2)]
    for x in ts:
        x.start()
    time.sleep(0.05)
    for _ in range(500):
        if (n.metric("troupe_http_inflight") or 0) >= 2:
            break
        time.sleep(0.02)
    rc = n.stop(signal.SIGTERM)
    for x in ts:
        x.join()
    check("SIGTERM with runs in flight exits 0", rc == 0, rc)
    check("SIGTERM: every in-flight run answered 200", results == [200, 200], results)
    check("SIGTERM: drain logged", '"msg":"drained"' in n.logtext(), n.logtext()[-500:])

    # A second signal during the drain exits at once (status 1): a run
    # that would take seconds is not waited for.
    n = Node(BASE, "g2.lua")
    outcomes = []  # what each long run got: a status, or the exception

    def long_run():
        try:
            c = n.conn(timeout=30)
            c.request("POST", "/v1/pipelines/slower", body=json.dumps({"input": {"work": 15}}))
            r = c.getresponse()
            outcomes.append((r.status, r.read()[:200]))
        except Exception as e:  # the node exits mid-run: expected here
            outcomes.append(repr(e))
    ts = [threading.Thread(target=long_run) for _ in range(2)]
    for x in ts:
        x.start()
    # Wait (up to 10 s: sanitizer builds are slow) until a run is in flight.
    busy = False
    for _ in range(500):
        if (n.metric("troupe_http_inflight") or 0) >= 1:
            busy = True
            break
        time.sleep(0.02)
    check("a long run is in flight before the first SIGTERM", busy,
          (outcomes, n.logtext()[-1500:]))
    t0 = time.time()
    n.proc.send_signal(signal.SIGTERM)
    n.wait_log('"msg":"draining"')
    n.proc.send_signal(signal.SIGTERM)
    try:
        rc = n.proc.wait(10)
    except subprocess.TimeoutExpired:
        rc = "timeout"
    for x in ts:
        x.join()
    check("a second SIGTERM during the drain exits at once with status 1",
          rc == 1 and "second signal" in n.logtext(), (rc, time.time() - t0, n.logtext()[-300:]))


def main():
    n = Node(BASE)
    try:
        for t in (test_basics, test_errors, test_overload, test_streaming, test_introspection):
            try:
                t(n)
            except Exception as e:
                check(t.__name__ + " ran to the end", False, repr(e))
        check("node alive after the tests", n.proc.poll() is None)
        rc = n.stop()
        check("SIGTERM exits 0", rc == 0, rc)
        for t in (test_auth_and_limits, test_shutdown_and_reload):
            try:
                t()
            except Exception as e:
                check(t.__name__ + " ran to the end", False, repr(e))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        sys.exit(summary("test_http"))


main()
