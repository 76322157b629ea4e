#!/usr/bin/env python3
"""lifecycle.py -- shutdown, reload and restart of a node under load (issue 8).

    lifecycle.py TROUPE REPO_ROOT [--full]

The default assistant (pipelines/assistant.lua, embedded backends, 2
threads) under keep-alive client threads posting questions (load.py):

  sigterm   SIGTERM mid-load. Every request the node took gets a complete
            answer (200, or a JSON error such as 503); none is left
            unanswered (sent whole, then the connection closed with no
            answer). A request that finds the door closed (connection
            refused or reset at connect) is counted as refused: allowed.
            Exit status 0; the time from SIGTERM to exit is a figure.
  reload    a copy of the file in a temp dir, edited and SIGHUPed several
            times under load: every request 200, each new version live
            (the chit-chat answer names it, /ready its generation).
  restart   kill -9 under load, a new node at once on the same port and
            pid file: /ready 200 within lifecycle_restart_ready_ms, correct
            answers, the clients' load back, the pid file names the new
            process (`troupe reload --pid-file` reaches it).

Quick (default): about 20 s (under ASan, TROUPE_TEST_QUICK=1: fewer
threads and reloads, longer waits). --full: about 60 s (more threads,
longer load phases, 10 reloads, 3 restarts).
"""
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from rnode import Node, SLOW, TMP, cleanup, figure  # noqa: E402
from load import Load, wait_count  # noqa: E402
from tt import check, get, summary, wait_for  # noqa: E402

TROUPE, SRC = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
FULL = "--full" in sys.argv[3:]
QUICK_ENV = bool(os.environ.get("TROUPE_TEST_QUICK"))
THREADS = 16 if FULL else (4 if QUICK_ENV else 8)
PHASE = 8.0 if FULL else 2.0        # seconds of load around each event
RELOADS = 10 if FULL else (3 if QUICK_ENV else 4)
RESTARTS = 3 if FULL else 1

with open(os.path.join(SRC, "pipelines", "assistant.lua")) as f:
    ASSISTANT = f.read()
GREETING = 'msg.answer = "Hello! Ask me'
assert GREETING in ASSISTANT, "pipelines/assistant.lua: the smalltalk greeting moved"


def version(k):
    """The assistant whose greeting names version k."""
    return ASSISTANT.replace(GREETING, 'msg.answer = "Hello (v%d)! Ask me' % k)


def greeting(port):
    """The chit-chat answer of the node now (or None)."""
    ld = Load(port, 1)
    st, j = ld.one({"input": {"text": "hello"}})
    ld.close()
    return ((j or {}).get("output") or {}).get("answer") if st == 200 else None


def test_sigterm():
    n = Node(TROUPE, SRC, ASSISTANT, "sigterm")
    if not check("sigterm: node up", n.up, n.logtext()[-500:]):
        return
    ld = Load(n.port, THREADS)
    t_load = time.time()
    ld.start()
    wait_count(ld, 200, 10 * SLOW)
    time.sleep(PHASE)
    before = ld.snapshot()
    t0 = time.time()
    inflight = ld.mark()          # requests sent whole and not yet answered
    n.proc.send_signal(signal.SIGTERM)
    try:
        rc = n.proc.wait(30 * SLOW)
    except subprocess.TimeoutExpired:
        rc = "timeout"
    exit_ms = (time.time() - t0) * 1000
    ld.stop_when_refused(5 * SLOW)
    r = ld.snapshot()
    after = {k: r[k] - before.get(k, 0) for k in r}
    secs = time.time() - t_load
    figure("lifecycle", "sigterm_inflight", inflight, "requests", secs, 2)
    figure("lifecycle", "sigterm_answered", after["answered"], "requests", secs, 2)
    figure("lifecycle", "sigterm_unanswered", r["unanswered"], "requests", secs, 2)
    figure("lifecycle", "sigterm_refused", r["refused"], "requests", secs, 2)
    figure("lifecycle", "sigterm_exit_ms", round(exit_ms, 1), "ms", secs, 2)
    check("sigterm: load ran before the signal (%d answered)" % before["answered"],
          before["answered"] >= 100, before)
    check("sigterm: exit status 0", rc == 0, (rc, n.logtext()[-800:]))
    check("sigterm: drained", '"msg":"drained"' in n.logtext(), n.logtext()[-800:])
    check("sigterm: exit within the grace (%.0f ms < 10 s)" % exit_ms, exit_ms < 10000)
    check("sigterm: every request in flight at the signal answered (%d)" % inflight,
          ld.marked_answered() == inflight, (ld.marked_answered(), inflight))
    check("sigterm: no request unanswered (%d refused, %d of them crossed the node's close "
          "of an idle connection)" % (r["refused"], r["crossed"]), r["unanswered"] == 0,
          ld.failures[:5])
    check("sigterm: every answer is 200 or a JSON error", r["bad"] == 0, ld.failures[:5])
    check("sigterm: the clients found the door closed afterwards (refused)",
          r["refused"] >= 1, r)
    check("sigterm: every client stopped", ld.join(10 * SLOW))
    ld.close()


def test_reload():
    n = Node(TROUPE, SRC, ASSISTANT, "reload")
    if not check("reload: node up", n.up, n.logtext()[-500:]):
        return
    ld = Load(n.port, THREADS)
    ld.start()
    wait_count(ld, 100, 10 * SLOW)
    t0 = time.time()
    done, live = 0, 0
    for k in range(1, RELOADS + 1):
        time.sleep(PHASE / 2)
        with open(n.path, "w") as f:
            f.write(version(k))
        n.proc.send_signal(signal.SIGHUP)
        if not wait_for(lambda: n.logtext().count('"msg":"reloaded"') >= k, 15 * SLOW):
            break
        done += 1
        if wait_for(lambda: greeting(n.port) == version_greeting(k), 5 * SLOW) is not None:
            live += 1
    time.sleep(PHASE / 2)
    ld.stop()
    ld.join(10 * SLOW)
    r = ld.snapshot()
    secs = time.time() - t0
    st, ready = get(n.port, "/ready")
    figure("lifecycle", "reload_requests", r["sent"], "requests", secs, 2)
    figure("lifecycle", "reload_failed", r["sent"] - r["ok"], "requests", secs, 2)
    figure("lifecycle", "reload_reloads", done, "reloads", secs, 2)
    check("reload: %d reloads under load, each logged" % RELOADS, done == RELOADS,
          n.logtext()[-800:])
    check("reload: no reload rejected", '"reload rejected"' not in n.logtext())
    check("reload: each new version live (its greeting)", live == RELOADS, (live, RELOADS))
    check("reload: /ready names the last generation",
          st == 200 and isinstance(ready, dict) and ready.get("generation") == RELOADS + 1, ready)
    check("reload: load ran (%d requests)" % r["sent"], r["sent"] >= 200, r)
    check("reload: no failed request (all 200)", r["sent"] == r["ok"], (r, ld.failures[:5]))
    rc = n.stop()
    check("reload: SIGTERM afterwards exits 0", rc == 0, rc)
    ld.close()


def version_greeting(k):
    return "Hello (v%d)! Ask me about troupe (\"how do retries work?\"), or book an appointment." % k


def test_restart():
    pidf = os.path.join(TMP, "restart.pid")
    n = Node(TROUPE, SRC, ASSISTANT, "restart", args=("--pid-file", pidf))
    if not check("restart: node up", n.up, n.logtext()[-500:]):
        return
    port = n.port
    ld = Load(port, THREADS, restart=True)
    ld.start()
    wait_count(ld, 100, 10 * SLOW)
    ready_ms = []
    for i in range(RESTARTS):
        time.sleep(PHASE / 2)
        n.proc.kill()                       # kill -9
        n.proc.wait()
        t0 = time.time()
        n = Node(TROUPE, SRC, ASSISTANT, "restart", port=port, args=("--pid-file", pidf))
        w = wait_for(lambda: get(port, "/ready", timeout=2)[0] == 200, 15 * SLOW, step=0.002)
        if w is None:
            check("restart %d: /ready 200 on the same port" % i, False, n.logtext()[-800:])
            break
        ready_ms.append((time.time() - t0) * 1000)
        ok_before = ld.snapshot()["ok"]
        back = wait_count(ld, ok_before + 50, 10 * SLOW, key="ok")
        check("restart %d: the clients' load is back" % i, back, ld.snapshot())
    time.sleep(PHASE / 4)
    ld.stop()
    ld.join(10 * SLOW)
    secs = sum(ready_ms) / 1000
    if ready_ms:
        figure("lifecycle", "restart_ready_ms", round(max(ready_ms), 1), "ms", secs, 2)
    check("restart: %d restarts, each ready on the same port" % RESTARTS,
          len(ready_ms) == RESTARTS, ready_ms)
    check("restart: no 'cannot listen' (the port is reusable at once)",
          "cannot listen" not in n.logtext(), n.logtext()[-500:])
    st, ready = get(port, "/ready")
    check("restart: a clean start (generation 1)",
          st == 200 and isinstance(ready, dict) and ready.get("generation") == 1, ready)
    ld1 = Load(port, 1)
    st, j = ld1.one({"input": {"text": "how do retries work?"}})
    ld1.close()
    ans = ((j or {}).get("output") or {}).get("answer") or ""
    check("restart: answers correctly", st == 200 and "retr" in ans.lower(), (st, j))
    with open(pidf) as f:
        pid = int(f.read().strip())
    check("restart: the pid file names the new process", pid == n.proc.pid, (pid, n.proc.pid))
    rr = subprocess.run([TROUPE, "reload", "--pid-file", pidf], capture_output=True)
    check("restart: troupe reload --pid-file reaches it",
          rr.returncode == 0 and wait_for(lambda: '"msg":"reloaded"' in n.logtext(), 10 * SLOW)
          is not None, (rr, n.logtext()[-500:]))
    r = ld.snapshot()
    check("restart: every answer is 200 or a JSON error", r["bad"] == 0, ld.failures[:5])
    rc = n.stop()
    check("restart: SIGTERM afterwards exits 0", rc == 0, rc)
    ld.close()


def main():
    t0 = time.time()
    try:
        for t in (test_sigterm, test_reload, test_restart):
            try:
                t()
            except Exception as e:  # a broken part must not hide the others
                check(t.__name__ + " ran to the end", False, repr(e))
    finally:
        cleanup()
    print("lifecycle: %.1f s" % (time.time() - t0))
    sys.exit(summary("lifecycle"))


main()
