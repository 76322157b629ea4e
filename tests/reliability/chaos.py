#!/usr/bin/env python3
"""chaos.py -- chaos under load (issue 8): the fault injector (`troupe run
--chaos SPEC`, runtime/src/core/chaos.h) crashes actors, holds and fails
step attempts and fills mailboxes while a bounded load runs, first
against one node serving the default assistant, then against a 3-node
cluster (a step placed on other nodes, chaos on every node, one node
killed with SIGKILL mid-load). Every request must be answered: with a
result, or with an explicit error (a JSON error status, or an error
event when streaming); never with silence or a dropped connection.

    chaos.py TROUPE REPO [--full]

quick (meson, suite reliability; <= 60 s): chaos for 8 s on the node
(~2000 requests from 8 client threads on the 2-core VM) and 8 s on the
cluster. --full (scripts/reliability; <= 150 s): 30 s on the node, 20 s
on the cluster. The load runs from the start of chaos until
RECOVER_RUN successes in a row followed its end (at most RECOVER_WAIT_S).
With TROUPE_TEST_QUICK=1 (the ASan pass: a slower binary) the requests
are fewer by themselves and the client timeouts longer.

Figures (bench format): chaos_node_{sent,ok,errors,unanswered,restarts,
recover_ms} and chaos_cluster_{...}. recover_ms: from the end of chaos
(the node's `for`) to the first request of the first RECOVER_RUN
consecutive successes.
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "http"))
from tt import check, cluster_states, free_port, get, ndjson, post_stream, summary, wait_for  # noqa: E402
from rnode import SLOW, TMP, Node, cleanup, figure, metric  # noqa: E402
from load import questions, read_answer, request_bytes  # noqa: E402
import socket  # noqa: E402

TROUPE, SRC = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
FULL = "--full" in sys.argv[3:]
ASAN = bool(os.environ.get("TROUPE_TEST_QUICK"))
THREADS = 8
NODE_CHAOS_S = 30 if FULL else 8
CLUSTER_CHAOS_S = 20 if FULL else 8
RECOVER_RUN = 50           # consecutive successes that mean "recovered"
RECOVER_WAIT_S = 15 * SLOW  # how long after chaos a streak may take
CLIENT_TIMEOUT = 15 * SLOW  # above the assistant's 8 s deadline
# Crashes are spaced (GAP) so that the assistant's supervisors (root: 5
# restarts in 10 s) restart children rather than give up.
NODE_SPEC = "seed=42,crash=0.05:2500ms,slow=0.05:60ms,fail=0.02,fill=0.02,for=%ds" % NODE_CHAOS_S
CLUSTER_SPEC = "seed=%d,crash=0.05:2s,slow=0.05:60ms,fail=0.02,fill=0.02,for=%ds"


def req_bytes(pipeline, body):
    """load.py's request for the assistant, to PIPELINE."""
    return request_bytes(body).replace(b"/v1/pipelines/assistant",
                                       b"/v1/pipelines/" + pipeline.encode(), 1)


class Runner:
    """THREADS keep-alive clients posting to /v1/pipelines/PIPELINE on
    port; thread 0 streams (NDJSON). Each request is recorded as
    (t_sent, t_done, outcome, detail), outcome one of ok, error (a JSON
    error status or an error event), unanswered (timeout, or the
    connection closed before a whole answer), bad (an answer that is
    neither)."""

    def __init__(self, port, pipeline, body_of):
        self.port, self.pipeline, self.body_of = port, pipeline, body_of
        self.lock = threading.Lock()
        self.recs = []
        self.sent = 0
        self.halt = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True)
                        for i in range(THREADS)]

    def _take(self):
        with self.lock:
            if self.halt.is_set():
                return None
            self.sent += 1
            return self.sent

    def _rec(self, t0, outcome, detail=None):
        with self.lock:
            self.recs.append((t0, time.time(), outcome, detail))

    def _stream_one(self, body):
        try:
            head, payload = post_stream(self.port, self.pipeline, body)
        except (OSError, socket.timeout):
            return "unanswered", "stream: no answer"
        except ValueError:  # not chunked: a plain answer (a refusal before the first event)
            return "error", "stream: plain error answer"
        m = re.match(rb"HTTP/1\.1 (\d+)", head)
        if not m:
            return "unanswered", head[:100]
        if int(m.group(1)) != 200:
            return "error", int(m.group(1))
        try:
            ev = ndjson(payload)
        except ValueError:
            return "bad", payload[-200:]
        last = ev[-1] if ev else {}
        if last.get("type") == "done" and "output" in last:
            return "ok", last
        if last.get("type") == "error":
            return "error", last.get("error", {}).get("code")
        return "unanswered", "stream ended without done or error"

    def _client(self, i):
        s = None
        while True:
            seq = self._take()
            if seq is None:
                break
            body = self.body_of(i, seq)
            t0 = time.time()
            if i == 0:
                self._rec(t0, *self._stream_one(body))
                continue
            try:
                if s is None:
                    s = socket.create_connection(("127.0.0.1", self.port), timeout=CLIENT_TIMEOUT)
                s.sendall(req_bytes(self.pipeline, body))
                a = read_answer(s)
            except OSError:
                a = None
            if a is None:
                self._rec(t0, "unanswered", "thread %d seq %d" % (i, seq))
                if s is not None:
                    s.close()
                s = None
                continue
            status, h, raw = a
            try:
                j = json.loads(raw)
            except ValueError:
                j = None
            if status == 200 and isinstance(j, dict) and "output" in j:
                self._rec(t0, "ok", j)
            elif status != 200 and isinstance(j, dict) and "error" in j:
                self._rec(t0, "error", (status, j["error"].get("code")))
            else:
                self._rec(t0, "bad", (status, raw[:200]))
            if h.get("connection", "").lower() == "close":
                s.close()
                s = None
        if s is not None:
            s.close()

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self):
        self.halt.set()

    def join(self, secs):
        end = time.time() + secs
        for t in self.threads:
            t.join(max(0.0, end - time.time()))
        return not any(t.is_alive() for t in self.threads)

    def count(self, outcome):
        with self.lock:
            return sum(1 for r in self.recs if r[2] == outcome)

    def recovered_at(self, t_end):
        """The send time of the first request of the first RECOVER_RUN
        consecutive ok ones (by send time) sent after t_end, or None."""
        with self.lock:
            after = sorted(r for r in self.recs if r[0] >= t_end)
        run = 0
        for k, r in enumerate(after):
            run = run + 1 if r[2] == "ok" else 0
            if run == RECOVER_RUN:
                return after[k - RECOVER_RUN + 1][0]
        return None


def chaos_end(node):
    """Wall time (s) the node's faults end: its "chaos on" log line's
    ts_us plus for_ms."""
    for line in node.logtext().splitlines():
        if '"chaos on' in line:
            j = json.loads(line)
            return j["ts_us"] / 1e6 + j["for_ms"] / 1e3
    return None


def restarts(port):
    return int(metric(port, "troupe_actor_restarts_total") or 0)


def load_until_recovered(r, t_end, what):
    """Runs r until chaos ended and RECOVER_RUN successes followed (at
    most RECOVER_WAIT_S after it); the recovery time in ms, or None."""
    r.start()
    while time.time() < t_end:
        time.sleep(0.1)
    deadline = t_end + RECOVER_WAIT_S
    while time.time() < deadline and r.recovered_at(t_end) is None:
        time.sleep(0.1)
    r.stop()
    check("%s: the clients end (no request hangs past the client timeout)" % what,
          r.join(CLIENT_TIMEOUT + 5))
    rec = r.recovered_at(t_end)
    return None if rec is None else max(0.0, (rec - t_end) * 1000)


def report(part, r, rs, rec_ms, secs, what):
    sent, ok, err = len(r.recs), r.count("ok"), r.count("error")
    un, bad = r.count("unanswered"), r.count("bad")
    codes = {}
    for x in r.recs:
        if x[2] == "error":
            c = x[3][1] if isinstance(x[3], tuple) else x[3]
            codes[c] = codes.get(c, 0) + 1
    print("  %s: %d sent, %d ok, %d explicit errors %s, %d unanswered, %d bad, %d restarts, "
          "recovered %s ms after chaos" % (what, sent, ok, err, codes, un, bad, rs,
                                           "%.0f" % rec_ms if rec_ms is not None else "never"))
    for name, v, unit in (("sent", sent, "requests"), ("ok", ok, "requests"),
                          ("errors", err, "requests"), ("unanswered", un, "requests"),
                          ("restarts", rs, "restarts"),
                          ("recover_ms", round(rec_ms, 1) if rec_ms is not None else -1, "ms")):
        figure(part, name, v, unit, secs, THREADS)
    check("%s: every request answered (%d unanswered)" % (what, un), un == 0,
          [x for x in r.recs if x[2] == "unanswered"][:3])
    check("%s: every answer a result or an explicit error (%d neither)" % (what, bad), bad == 0,
          [x for x in r.recs if x[2] == "bad"][:3])
    check("%s: sent = ok + errors (%d = %d + %d)" % (what, sent, ok, err), sent == ok + err)
    check("%s: %d consecutive successes after chaos (%s ms)" % (what, RECOVER_RUN, rec_ms),
          rec_ms is not None)


def faults(port):
    return {k: int(metric(port, "troupe_chaos_%s_total" % k) or 0)
            for k in ("crashes", "delays", "failures", "fills")}


# ---- the production refusal ----------------------------------------------

def refusal():
    path = os.path.join(TMP, "prod.lua")
    with open(path, "w") as f:
        f.write('node { name = "p", env = "production" }\n'
                'actor "a" { receive = function(msg) return msg end }\n'
                'pipeline "p" { step "a" {} }\n')
    p = subprocess.run([TROUPE, "run", "--http", "127.0.0.1:%d" % free_port(), "--chaos",
                        "crash=0.1", path], cwd=SRC, capture_output=True, timeout=30 * SLOW)
    lines = [json.loads(l) for l in p.stderr.decode().splitlines() if l.startswith("{")]
    check("refusal: --chaos on a production node exits 2 with a JSON error line",
          p.returncode == 2 and any(l.get("msg") == "chaos refused" and l.get("level") == "error"
                                    and "production" in l.get("error", "") for l in lines),
          (p.returncode, p.stderr[:300]))
    p = subprocess.run([TROUPE, "run", "--chaos", "crash=2", path], cwd=SRC,
                       capture_output=True, timeout=30 * SLOW)
    check("refusal: a bad SPEC exits 2 and says what is wrong",
          p.returncode == 2 and b"crash: expected P or P:GAP" in p.stderr, p.stderr[:300])


# ---- one node: the default assistant -------------------------------------

def one_node():
    qs = questions()

    def body(i, seq):
        # a number keeps the rag cache from answering everything
        return {"input": {"text": "%s (%d)" % (qs[(i + seq) % len(qs)], seq % 97)}}

    with open(os.path.join(SRC, "pipelines", "assistant.lua")) as f:
        text = f.read()
    t0 = time.time()
    n = Node(TROUPE, SRC, text, "assistant", args=("--chaos", NODE_SPEC))
    check("node: up with --chaos", n.up, n.logtext()[-500:])
    if not n.up:
        return
    t_end = chaos_end(n)
    check("node: the log says chaos is on, with its spec and end", t_end is not None)
    if t_end is None:
        return
    st, txt = get(n.port, "/metrics")
    check("node: /metrics shows troupe_chaos_active 1", "troupe_chaos_active 1" in txt)
    r = Runner(n.port, "assistant", body)
    rec_ms = load_until_recovered(r, t_end, "node")
    secs = time.time() - t0
    rs = restarts(n.port)
    fs = faults(n.port)
    print("  node faults: %s" % fs)
    report("chaos_node", r, rs, rec_ms, secs, "node")
    check("node: every kind of fault was injected %s" % fs, all(v > 0 for v in fs.values()))
    check("node: actors were restarted (%d)" % rs, rs > 0)
    # The load may end before `for=` does (a fast machine, the quick
    # variant): wait for the faults to end by themselves.
    t = wait_for(lambda: "troupe_chaos_active 0" in get(n.port, "/metrics")[1],
                 (NODE_CHAOS_S + 5) * SLOW)
    check("node: chaos over by itself: troupe_chaos_active 0 (%.2f s)" % (t if t is not None else -1), t is not None)
    t = wait_for(lambda: get(n.port, "/ready")[0] == 200, 10 * SLOW)
    check("node: /ready after chaos (%.2f s)" % (t or -1), t is not None)
    check("node: stops with status 0", n.stop() == 0, n.logtext()[-500:])


# ---- three nodes ---------------------------------------------------------

SECRET = os.path.join(TMP, "secret")
HB = 'heartbeat = "100ms", suspect_after = "400ms", down_after = "900ms"'


def cluster_cfg(name, cport, seeds, labels):
    return """
node { name = "%s", labels = { %s },
       cluster = { listen = "tcp://127.0.0.1:%d", seeds = { %s }, secret_file = "%s", %s } }
actor "pre" { mailbox = 256, receive = function(msg) msg.pre = "%s" return msg end }
actor "gen" { mailbox = 64, overflow = "reject", instances = 2, on = { label = "gpu" },
              receive = function(msg) msg.by = "%s" return msg end }
pipeline "g" { deadline = "5s",
  step "pre" { timeout = "100ms", retries = 2 },
  step "gen" { timeout = "300ms", retries = 4, backoff = { base = "20ms", max = "200ms" } } }
""" % (name, ", ".join('"%s"' % l for l in labels), cport,
       ", ".join('"tcp://127.0.0.1:%d"' % p for p in seeds), SECRET, HB, name, name)


def cluster():
    with open(SECRET, "w") as f:
        f.write("chaos under load, the cluster secret\n")
    c1, c2, c3 = free_port(), free_port(), free_port()
    t0 = time.time()
    g1 = Node(TROUPE, SRC, cluster_cfg("g1", c1, [], ["gpu"]), "g1",
              args=("--chaos", CLUSTER_SPEC % (1, CLUSTER_CHAOS_S)))
    g2 = Node(TROUPE, SRC, cluster_cfg("g2", c2, [c1], ["gpu"]), "g2",
              args=("--chaos", CLUSTER_SPEC % (2, CLUSTER_CHAOS_S)))
    cpu = Node(TROUPE, SRC, cluster_cfg("cpu", c3, [c1], ["cpu"]), "cpu",
               args=("--chaos", CLUSTER_SPEC % (3, CLUSTER_CHAOS_S)))
    all3 = {"g1": "alive", "g2": "alive", "cpu": "alive"}
    t = wait_for(lambda: cluster_states(cpu.port) == all3 and cluster_states(g2.port) == all3, 10 * SLOW)
    check("cluster: three nodes with --chaos alive (%.2f s)" % (t or -1), t is not None,
          cluster_states(cpu.port))
    # the gpu nodes publish their instances once their data links are up
    seen = set()

    def both():
        a = post_plain(cpu.port, "g", {"input": {"i": -1}})
        if a and a[0] == 200:
            seen.add(a[1]["output"]["by"])
        return seen == {"g1", "g2"}
    t = wait_for(both, 10 * SLOW)
    check("cluster: runs posted to cpu reach both gpu nodes (%.2f s)" % (t or -1), t is not None,
          seen)
    t_end = max(filter(None, (chaos_end(x) for x in (g1, g2, cpu))), default=time.time())
    r = Runner(cpu.port, "g", lambda i, seq: {"input": {"i": seq}})
    r_started = time.time()

    def killer():
        time.sleep(max(0.5, (t_end - r_started) / 3))
        g1.proc.send_signal(signal.SIGKILL)
        g1.proc.wait()
        killer.at = time.time()
    killer.at = None
    kt = threading.Thread(target=killer, daemon=True)
    kt.start()
    rec_ms = load_until_recovered(r, t_end, "cluster")
    kt.join(5)
    secs = time.time() - t0
    rs = restarts(cpu.port) + restarts(g2.port)
    fs = [faults(x.port) for x in (cpu, g2)]
    print("  cluster faults: cpu %s, g2 %s; g1 killed %.2f s into the load" %
          (fs[0], fs[1], (killer.at or 0) - r_started))
    report("chaos_cluster", r, rs, rec_ms, secs, "cluster")
    check("cluster: g1 was killed mid-load and is down on cpu",
          killer.at is not None and killer.at < t_end and cluster_states(cpu.port).get("g1") == "down",
          cluster_states(cpu.port))
    with r.lock:
        late = [x for x in r.recs if x[0] > t_end + (rec_ms or 0) / 1000 and x[2] == "ok"]
    check("cluster: after recovery the runs are served by g2",
          late and all(x[3]["output"]["by"] == "g2" for x in late))
    check("cluster: crashes were injected on the surviving nodes",
          sum(f["crashes"] for f in fs) > 0, fs)
    check("cluster: the surviving nodes stop with status 0",
          g2.stop() == 0 and cpu.stop() == 0)


def post_plain(port, pipeline, body):
    """One plain POST on a fresh connection: (status, JSON) or None."""
    s = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
    try:
        s.sendall(req_bytes(pipeline, body))
        a = read_answer(s)
    finally:
        s.close()
    if a is None:
        return None
    try:
        return a[0], json.loads(a[2])
    except ValueError:
        return a[0], None


try:
    refusal()
    one_node()
    cluster()
finally:
    cleanup()
sys.exit(summary("chaos"))
