#!/usr/bin/env python3
"""test_netns.py -- three `troupe run` nodes, each in a network namespace of
its own, wired as a triangle of veth pairs; then the a-b link is cut.

    test_netns.py TROUPE SOURCE_ROOT

Each namespace trns<pid>{a,b,c} has its node address on lo (10.77.0.1, .2,
.3) and a /32 route to each other node over the direct veth (each pair a
/30) and no other route, so with a-b down the only way between a and b is
the indirect probes through c. Checks: all three see each other alive; with
the a-b link down neither a nor b declares the other down for 3 x down_after
while c sees both alive, and nothing is refused or counted bad; kill -9 of
b: a and c declare it down (the times are printed); the link restored and b
restarted, b rejoins everywhere.

Nothing is created in the host's namespace: the veths are made inside the
namespaces, and each node's HTTP API is on 127.0.0.1:8080 of its own
namespace, reached by entering it (setns) around each request. Every
process is stopped by its PID and the namespaces deleted, also on failure
or SIGTERM. Without root or `ip netns` it prints "skipped: ..." and exits
77 (meson's skip). Prints "tt: test_netns: N passed, N failed".
"""
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "http"))
from tt import check, get, summary, wait_for  # noqa: E402

TROUPE, SRC = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
PID = os.getpid()
NODES = "abc"
NS = {n: "trns%d%s" % (PID, n) for n in NODES}
ADDR = {n: "10.77.0.%d" % (i + 1) for i, n in enumerate(NODES)}
PAIRS = ("ab", "ac", "bc")  # pair i: 10.78.i.1/30 on its first node, .2 on the second
HTTP = 8080                 # in each namespace, so no port of the host's is taken
HB_S, SUSPECT_S, DOWN_S = 0.2, 0.6, 1.5
CLONE_NEWNET = 0x40000000

procs = {}                  # node -> Popen of the troupe running there
made = []                   # namespaces created, deleted at the end
tmp = tempfile.mkdtemp(prefix="troupe-netns-")


def veth(x, y):
    """The name of x's end of the x-y pair (at most 15 bytes)."""
    return "tr%d%s%s" % (PID, x, y)


def sh(*args):
    return subprocess.run(args, capture_output=True, text=True, timeout=10)


def ip(*args):
    r = sh("ip", *args)
    if r.returncode != 0:
        raise RuntimeError("ip %s: %s" % (" ".join(args), r.stderr.strip()))


def routes(pair):
    """Each end's /32 route to the other node's address over the pair."""
    i = PAIRS.index(pair)
    x, y = pair
    ip("-n", NS[x], "route", "replace", ADDR[y] + "/32", "via", "10.78.%d.2" % i,
       "dev", veth(x, y), "src", ADDR[x])
    ip("-n", NS[y], "route", "replace", ADDR[x] + "/32", "via", "10.78.%d.1" % i,
       "dev", veth(y, x), "src", ADDR[y])


def link(pair, up):
    x, y = pair
    for a, b in ((x, y), (y, x)):
        ip("-n", NS[a], "link", "set", veth(a, b), "up" if up else "down")
    if up:
        routes(pair)  # a device going down takes its IPv4 routes with it


def build_net():
    for n in NODES:
        ip("netns", "add", NS[n])
        made.append(NS[n])
        ip("-n", NS[n], "link", "set", "lo", "up")
        ip("-n", NS[n], "addr", "add", ADDR[n] + "/32", "dev", "lo")
    for i, (x, y) in enumerate(PAIRS):
        ip("link", "add", veth(x, y), "netns", NS[x], "type", "veth",
           "peer", "name", veth(y, x), "netns", NS[y])
        ip("-n", NS[x], "addr", "add", "10.78.%d.1/30" % i, "dev", veth(x, y))
        ip("-n", NS[y], "addr", "add", "10.78.%d.2/30" % i, "dev", veth(y, x))
        link(x + y, True)


_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


HOST_NS = os.open("/proc/self/ns/net", os.O_RDONLY)


def in_ns(n, fn, *args):
    """fn(*args) with this thread in n's namespace: the sockets it opens
    live there."""
    fd = os.open("/run/netns/" + NS[n], os.O_RDONLY)
    try:
        setns(fd)
        try:
            return fn(*args)
        finally:
            setns(HOST_NS)
    finally:
        os.close(fd)


def states(n):
    """n's view: {name: state}, {} while it does not answer."""
    try:
        st, j = in_ns(n, get, HTTP, "/v1/cluster", 2)
        return {m["name"]: m["state"] for m in j["members"]} if st == 200 else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def counters(n):
    """n's troupe_cluster_*_total counters, by the part between."""
    st, text = in_ns(n, get, HTTP, "/metrics", 2)
    out = {}
    for line in text.splitlines():
        if line.startswith("troupe_cluster_") and line.split(" ")[0].endswith("_total"):
            out[line.split(" ")[0][len("troupe_cluster_"):-len("_total")]] = float(line.split()[1])
    return out


def reaches(x, y):
    """Whether x opens a TCP connection to y's cluster port."""
    try:
        in_ns(x, socket.create_connection, (ADDR[y], 7101), 1).close()
        return True
    except OSError:
        return False


SECRET = os.path.join(tmp, "secret")


def start(n):
    seeds = ", ".join('"tcp://%s:7101"' % ADDR[m] for m in NODES if m != n)
    path = os.path.join(tmp, n + ".lua")
    with open(path, "w") as f:
        f.write("""
node { name = "%s",
       cluster = { listen = "tcp://%s:7101", data_listen = "tcp://%s:7102", seeds = { %s },
                   secret_file = "%s", heartbeat = "%dms", suspect_after = "%dms",
                   down_after = "%dms" } }
actor "echo" { receive = function(msg) msg.by = "%s" return msg end }
pipeline "p" { step "echo" {} }
""" % (n, ADDR[n], ADDR[n], seeds, SECRET, HB_S * 1000, SUSPECT_S * 1000, DOWN_S * 1000, n))
    log = open(os.path.join(tmp, n + ".log"), "a")
    # `ip netns exec` execs the command itself: the PID is troupe's.
    procs[n] = subprocess.Popen(["ip", "netns", "exec", NS[n], TROUPE, "run", "--http",
                                 "127.0.0.1:%d" % HTTP, "--threads", "2", path],
                                cwd=SRC, stderr=log)
    log.close()
    wait_for(lambda: in_ns(n, get, HTTP, "/health", 1)[0] == 200, 10)


def log_tail(n, lines=15):
    with open(os.path.join(tmp, n + ".log"), errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def stop(p, how=signal.SIGTERM, bound=5):
    """Signals p, then SIGKILL after bound seconds; its exit status."""
    if p.poll() is None:
        p.send_signal(how)
        try:
            p.wait(bound)
        except subprocess.TimeoutExpired:
            p.kill()
    return p.wait()


def first_down(watchers, target, secs):
    """Seconds until each watcher sees target down (None: not in secs)."""
    t0, seen = time.time(), {}
    while len(seen) < len(watchers) and time.time() - t0 < secs:
        for w in watchers:
            if w not in seen and states(w).get(target) == "down":
                seen[w] = time.time() - t0
        time.sleep(0.02)
    return {w: seen.get(w) for w in watchers}


def main():
    with open(SECRET, "w") as f:
        f.write("netns test cluster secret, long enough\n")
    t0 = time.time()
    for n in NODES:
        start(n)
    alive = {n: "alive" for n in NODES}
    t = wait_for(lambda: all(states(n) == alive for n in NODES), 10)
    t = t and time.time() - t0  # from the first start
    check("three nodes in three namespaces see each other alive in %.2f s" % (t or -1),
          t is not None, {n: states(n) for n in NODES})
    check("the direct a-b path is up", reaches("a", "b") and reaches("b", "a"))
    # Both ends dial each other at start and keep one link; let the spare
    # one's handshake end before the cut, or its timeout counts as refused.
    time.sleep(1.0)
    before = {n: counters(n) for n in NODES}

    # Cut a-b; only c connects them now.
    link("ab", False)
    check("a-b cut: a and b cannot open a connection to each other",
          not reaches("a", "b") and not reaches("b", "a"))
    hold, t0, samples, c_ok, bad = 3 * DOWN_S + 0.5, time.time(), 0, 0, []
    seen = {"a": set(), "b": set()}
    while time.time() - t0 < hold:
        v = {n: states(n) for n in NODES}
        samples += 1
        seen["a"].add(v["a"].get("b"))
        seen["b"].add(v["b"].get("a"))
        if v["c"] == alive:
            c_ok += 1
        if v["a"].get("b") not in ("alive", "suspect") or v["b"].get("a") not in ("alive", "suspect") \
                or "down" in v["c"].values():
            bad.append((round(time.time() - t0, 2), v))
        time.sleep(0.05)
    after = {n: counters(n) for n in NODES}
    delta = {n: {k: after[n].get(k, 0) - before[n].get(k, 0) for k in after[n]} for n in NODES}
    print("a-b cut for %.1f s (%d samples): a saw b %s, b saw a %s; suspected a:%d b:%d; "
          "c saw all alive in %d/%d" % (hold, samples, sorted(s for s in seen["a"] if s),
                                        sorted(s for s in seen["b"] if s),
                                        delta["a"].get("suspected", 0), delta["b"].get("suspected", 0),
                                        c_ok, samples))
    check("a-b cut for 3 x down_after: a and b never declare each other down (indirect probes via c)",
          not bad and all(delta[n].get("declared_down", 0) == 0 for n in "ab"), bad[:3] or delta)
    check("a-b cut: c sees both alive", states("c") == alive and c_ok >= samples * 0.9,
          (states("c"), c_ok, samples))
    check("a-b cut: nothing refused, no bad frames",
          all(after[n].get(k, 0) == 0 for n in NODES for k in ("refused", "bad_frames")),
          {n: (after[n].get("refused"), after[n].get("bad_frames")) for n in NODES})

    # kill -9 of b: a (which only hears of b through c) and c declare it down.
    procs["b"].send_signal(signal.SIGKILL)
    procs["b"].wait()
    d = first_down("ac", "b", 10)
    print("kill -9 of b: down on a after %s s, on c after %s s (suspect_after %.1f s, down_after %.1f s)"
          % (tuple("%.2f" % d[w] if d[w] is not None else "never" for w in "ac") + (SUSPECT_S, DOWN_S)))
    margin = SUSPECT_S + 2 * HB_S + 1.0
    check("kill -9 of b: a and c declare it down within down_after + %.1f s" % margin,
          all(d[w] is not None and d[w] <= DOWN_S + margin for w in "ac"), d)

    # The link back, b restarted: it rejoins everywhere.
    link("ab", True)
    t0 = time.time()
    start("b")
    t = wait_for(lambda: all(states(n) == alive for n in NODES), 10)
    t = t and time.time() - t0  # from the restart
    check("a-b restored, b restarted: it rejoins, alive everywhere in %.2f s" % (t or -1),
          t is not None, {n: states(n) for n in NODES})

    t0 = time.time()
    rcs = {n: stop(procs[n], signal.SIGTERM, 10) for n in NODES}
    check("the nodes stop on SIGTERM with status 0 (%.2f s)" % (time.time() - t0),
          list(rcs.values()) == [0, 0, 0], {n: (rc, log_tail(n)) for n, rc in rcs.items() if rc != 0})


def skip(why):
    print("skipped: " + why)
    sys.exit(77)


def cleanup():
    for p in procs.values():
        stop(p, signal.SIGTERM, 3)
    for ns in made:
        sh("ip", "netns", "del", ns)  # takes the veths inside with it
    subprocess.run(["rm", "-rf", tmp])


def on_signal(sig, _frame):
    raise SystemExit(128 + sig)


for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, on_signal)
try:
    if os.geteuid() != 0:
        skip("needs root (ip netns)")
    try:
        build_net()
        r = sh("ip", "netns", "exec", NS["a"], "true")
        if r.returncode != 0:
            raise RuntimeError("ip netns exec: " + r.stderr.strip())
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
        skip("no network namespaces here (%s)" % e)
    try:
        main()
    except Exception as e:  # a failed step still ends with the tt line
        import traceback
        check("no exception", False, "".join(traceback.format_exception(e)))
finally:
    cleanup()
sys.exit(summary("test_netns"))
