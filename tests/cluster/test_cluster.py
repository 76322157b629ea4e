#!/usr/bin/env python3
"""test_cluster.py -- three `troupe run` nodes forming a cluster over nng on
loopback: membership at GET /v1/cluster and in /metrics, kill -9 of one
node (detected down; the detection time is printed), its restart
(rejoins), a graceful stop (left), a node with the wrong secret (refused,
counted), and garbage bytes on a cluster port (counted, nobody crashes).
Then placement: an actor placed on label "gpu" (two of three nodes) runs
remotely for a pipeline posted to the third, and a kill -9 of one gpu node
under a bounded load leaves no request unanswered.

    test_cluster.py TROUPE SOURCE_ROOT

Every node listens on free loopback ports and is stopped by its PID.
Prints "tt: test_cluster: N passed, N failed".
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "http"))
from tt import check, free_port, get, summary, wait_for  # noqa: E402

TROUPE, SRC = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
procs = []
tmp = tempfile.mkdtemp(prefix="troupe-cluster-")
SECRET = os.path.join(tmp, "secret")
with open(SECRET, "w") as f:
    f.write("correct horse battery staple, cluster secret\n")
WRONG = os.path.join(tmp, "wrong")
with open(WRONG, "w") as f:
    f.write("not the cluster secret at all, sorry\n")

HB = 'heartbeat = "100ms", suspect_after = "400ms", down_after = "900ms"'


def cfg(name, cport, seeds, secret=SECRET, labels=()):
    seeds_l = ", ".join('"tcp://127.0.0.1:%d"' % p for p in seeds)
    lab = ", ".join('"%s"' % l for l in labels)
    return """
node { name = "%s", labels = { %s },
       cluster = { listen = "tcp://127.0.0.1:%d", seeds = { %s }, secret_file = "%s", %s } }
actor "echo" { receive = function(msg) msg.by = "%s" return msg end }
pipeline "p" { step "echo" {} }
actor "gen" { receive = function(msg) msg.by = "%s" return msg end,
              on = { label = "gpu" }, instances = 2 }
pipeline "g" { step "gen" { timeout = "2s", retries = 3, backoff = { base = "20ms", max = "200ms" } } }
""" % (name, lab, cport, seeds_l, secret, HB, name, name)


def start(name, cport, seeds, secret=SECRET, labels=()):
    hport = free_port()
    path = os.path.join(tmp, name + ".lua")
    with open(path, "w") as f:
        f.write(cfg(name, cport, seeds, secret, labels))
    log = open(os.path.join(tmp, name + ".log"), "a")
    p = subprocess.Popen([TROUPE, "run", "--http", "127.0.0.1:%d" % hport, "--threads", "2", path],
                         cwd=SRC, stderr=log)
    procs.append(p)
    for _ in range(100):
        try:
            if get(hport, "/health")[0] == 200:
                break
        except OSError:
            time.sleep(0.05)
    return p, hport




def view(port):
    try:
        st, j = get(port, "/v1/cluster")
        return {m["name"]: m for m in j["members"]} if st == 200 else {}
    except (OSError, ValueError, KeyError):
        return {}


def states(port):
    return {n: m["state"] for n, m in view(port).items()}




def metric(port, name):
    st, text = get(port, "/metrics")
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def main():
    c1, c2, c3 = free_port(), free_port(), free_port()
    n1, h1 = start("n1", c1, [])
    n2, h2 = start("n2", c2, [c1], labels=("gpu",))
    n3, h3 = start("n3", c3, [c1])
    all3 = {"n1": "alive", "n2": "alive", "n3": "alive"}
    t = wait_for(lambda: all(states(h) == all3 for h in (h1, h2, h3)), 10)
    check("three nodes see each other alive (n3 learns n2 through n1) in %.2f s" % (t or -1),
          t is not None, [states(h) for h in (h1, h2, h3)])
    v = view(h3)
    check("/v1/cluster has names, ids, addresses and labels",
          v.get("n2", {}).get("labels") == ["gpu"] and v["n1"]["addr"].endswith(":%d" % c1) and
          v["n3"]["self"] is True and v["n1"]["node_id"] != v["n2"]["node_id"], v)
    m = get(h1, "/metrics")[1]
    check("/metrics counts the members", 'troupe_cluster_members{state="alive"} 3' in m, m[-1500:])
    promtool = subprocess.run(["sh", "-c", "command -v promtool"], capture_output=True).stdout.strip()
    if promtool:
        r = subprocess.run([promtool, "check", "metrics"], input=m.encode(), capture_output=True)
        check("promtool accepts /metrics with the cluster", r.returncode == 0, r.stdout + r.stderr)

    # kill -9: the others declare it down
    t0 = time.time()
    n3.send_signal(signal.SIGKILL)
    n3.wait()
    t = wait_for(lambda: states(h1).get("n3") == "down" and states(h2).get("n3") == "down", 10)
    check("kill -9 of n3: down on both others after %.2f s (down_after 0.9 s)" % ((time.time() - t0) if t else -1),
          t is not None, (states(h1), states(h2)))
    # its restart rejoins
    n3, h3 = start("n3", c3, [c1])
    t = wait_for(lambda: states(h1).get("n3") == "alive" and states(h2).get("n3") == "alive" and
                 states(h3) == all3, 10)
    check("n3 restarted: it rejoins, alive everywhere (%.2f s)" % (t or -1), t is not None,
          [states(h) for h in (h1, h2, h3)])

    # the wrong secret is refused
    cx = free_port()
    nx, hx = start("intruder", cx, [c1], secret=WRONG)
    time.sleep(1.5)
    refused = metric(h1, "troupe_cluster_refused_total")
    check("a node with the wrong secret is refused: nobody lists it, it lists nobody",
          "intruder" not in states(h1) and "intruder" not in states(h2) and
          set(states(hx)) <= {"intruder"} and (refused or 0) >= 1, (states(h1), states(hx), refused))

    # garbage on the cluster port
    bad0 = metric(h1, "troupe_cluster_bad_frames_total") or 0
    ref0 = metric(h1, "troupe_cluster_refused_total") or 0
    payloads = [os.urandom(4096), b"\x00\x00\x00\x00\x7f\xff\xff\xff" + b"x" * 64,
                b"\x00SP\x00\x00\x11\x00\x00" + b"\x00" * 8 + b"garbage not msgpack", b"GET / HTTP/1.1\r\n\r\n"]
    for pl in payloads:
        try:
            s = socket.create_connection(("127.0.0.1", c1), timeout=2)
            s.sendall(pl)
            time.sleep(0.1)
            s.close()
        except OSError:
            pass
    time.sleep(0.5)
    check("garbage on the cluster port: every node stays up with its view",
          all(p.poll() is None for p in (n1, n2, n3)) and states(h1) == all3 and get(h1, "/health")[0] == 200,
          states(h1))

    # graceful stop: left
    n2.send_signal(signal.SIGTERM)
    rc = n2.wait(15)
    t = wait_for(lambda: states(h1).get("n2") == "left" and states(h3).get("n2") == "left", 5)
    check("SIGTERM on n2: exit 0 and n2 is 'left' everywhere at once (%.2f s)" % (t or -1),
          rc == 0 and t is not None and t < 1.0, (rc, states(h1), states(h3)))
    for p in (n1, n3, nx):
        p.send_signal(signal.SIGTERM)
    check("the other nodes stop with status 0", all(p.wait(15) == 0 for p in (n1, n3, nx)))


def post(conn, pipeline, inp, timeout=20):
    """(status, json) of one run over `conn` (an HTTPConnection, reopened
    on error), or (None, error text)."""
    try:
        conn.request("POST", "/v1/pipelines/" + pipeline, json.dumps({"input": inp}),
                     {"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    except (OSError, ValueError, http.client.HTTPException) as e:
        conn.close()
        return None, repr(e)


def placement():
    c1, c2, c3 = free_port(), free_port(), free_port()
    g1, _ = start("g1", c1, [], labels=("gpu",))
    g2, hg2 = start("g2", c2, [c1], labels=("gpu",))
    cpu, hc = start("cpu", c3, [c1], labels=("cpu",))
    all3 = {"g1": "alive", "g2": "alive", "cpu": "alive"}
    t = wait_for(lambda: states(hc) == all3 and states(hg2) == all3, 10)
    check("placement: three nodes alive (%.2f s)" % (t or -1), t is not None, states(hc))
    ids = {m["node_id"]: n for n, m in view(hc).items()}
    conn = http.client.HTTPConnection("127.0.0.1", hc, timeout=20)
    # each gpu node publishes its instances' names when its data link is
    # up: wait until runs have reached both
    seen = set()

    def both():
        st, j = post(conn, "g", {"i": -1})
        if st == 200:
            seen.add(j["output"]["by"])
        return seen == {"g1", "g2"}
    t = wait_for(both, 10)
    check("placement: runs posted to the cpu node reach both gpu nodes (%.2f s after the view)"
          % (t or -1), t is not None, seen)
    by, nodes, bad = set(), set(), []
    for i in range(40):
        st, j = post(conn, "g", {"i": i})
        if st != 200:
            bad.append((st, j))
            continue
        by.add(j["output"]["by"])
        nodes.update(ids.get(s.get("node"), s.get("node")) for s in j["steps"])
    check("placement: 40 runs on the cpu node all ran remotely, on both gpu nodes (by %s, trace nodes %s)"
          % (sorted(by), sorted(map(str, nodes))), not bad and by == {"g1", "g2"} and nodes == {"g1", "g2"},
          bad[:3])
    st, j = get(hc, "/v1/actors")
    names = json.dumps(j)
    check("placement: the cpu node runs no gen instance, the gpu node two", '"gen#' not in names and
          '"gen#0@1"' in json.dumps(get(hg2, "/v1/actors")[1]), names[:400])
    st, _ = get(hc, "/ready")
    check("placement: the cpu node is ready without the actor placed elsewhere", st == 200, st)

    # kill -9 of g1 under a bounded load: 400 runs over 8 client threads
    import threading
    N, THREADS = 400, 8
    results = [None] * N  # (t_sent, t_done, status, by)
    t_start = time.time()

    def client(k):
        cn = http.client.HTTPConnection("127.0.0.1", hc, timeout=20)
        for i in range(k, N, THREADS):
            t_sent = time.time()
            st, j = post(cn, "g", {"i": i})
            results[i] = (t_sent, time.time(), st, j["output"]["by"] if st == 200 else j)
            time.sleep(0.04)
        cn.close()

    ths = [threading.Thread(target=client, args=(k,)) for k in range(THREADS)]
    for th in ths:
        th.start()
    time.sleep(0.5)
    t_kill = time.time()
    g1.send_signal(signal.SIGKILL)
    g1.wait()
    t = wait_for(lambda: states(hc).get("g1") == "down", 10)
    t_down = time.time()
    for th in ths:
        th.join(45)
    detect = (t_down - t_kill) if t is not None else -1
    answered = [r for r in results if r is not None and r[2] is not None]
    ok = [r for r in answered if r[2] == 200]
    after = [r for r in results if r is not None and r[0] > t_down]
    errs = {}
    for r in answered:
        if r[2] != 200:
            code = r[3].get("error", {}).get("code") if isinstance(r[3], dict) else r[3]
            errs[code] = errs.get(code, 0) + 1
    retries = metric(hc, 'troupe_pipeline_retries_total{pipeline="g"}')
    print("  placement load: %d runs, %d answered, %d ok, errors %s, %d step retries; g1 killed at "
          "%.2f s, down on cpu after %.2f s; slowest run %.2f s; %d runs sent after that, by %s; %.1f s in all"
          % (N, len(answered), len(ok), errs, retries or 0, t_kill - t_start, detect,
             max((r[1] - r[0] for r in answered), default=0), len(after),
             sorted({r[3] for r in after if r[2] == 200}), time.time() - t_start))
    check("placement: kill -9 of a gpu node under load: every run answered (unanswered = %d)"
          % (N - len(answered)), len(answered) == N)
    check("placement: g1 declared down on the cpu node (%.2f s)" % detect, t is not None)
    check("placement: runs sent after the detection all succeed on g2", after and
          all(r[2] == 200 and r[3] == "g2" for r in after), [r for r in after if r[2] != 200 or r[3] != "g2"][:3])
    conn.close()
    for p in (g2, cpu):
        p.send_signal(signal.SIGTERM)
    check("placement: the surviving nodes stop with status 0", all(p.wait(15) == 0 for p in (g2, cpu)))


try:
    main()
    placement()
finally:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    subprocess.run(["rm", "-rf", tmp])
sys.exit(summary("test_cluster"))
