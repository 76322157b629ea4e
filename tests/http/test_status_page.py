#!/usr/bin/env python3
"""test_status_page.py -- the node's status page (GET /) in real headless Chromium.

    test_status_page.py TROUPE SOURCE_ROOT

Starts `troupe run` on a free loopback port with a two-step Lua pipeline,
starts headless Chromium and drives it through the Chrome DevTools
Protocol over a small hand-written WebSocket client (standard library
only). Checks that the page renders the supervision tree, the pipeline
graph and the last traces, that it updates on its own after a run, that
it throws no JavaScript error, and that it loads nothing from any other
origin. Chromium and the node are stopped by their PIDs, also on failure.
Without Chromium the test fails (it does not skip). $CHROMIUM names
another browser binary. Prints "tt: test_status_page: N passed, N failed".
"""
import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

from tt import check, free_port, summary

TROUPE = sys.argv[1] if len(sys.argv) > 1 else "build/troupe"
TMP = tempfile.mkdtemp(prefix="troupe-status-")
sys.stdout.reconfigure(line_buffering=True)






PIPELINE = r'''
node { name = "status-page-test", threads = 2 }
actor "shout" { receive = function(msg, ctx) msg.text = string.upper(msg.text or ""); return msg end }
actor "count" { receive = function(msg) msg.n = (msg.n or 0) + 1; return msg end }
supervisor "root" { strategy = "one_for_one", max_restarts = 100, within = "10s",
  children = { "shout", "count" } }
pipeline "echo" { step "shout" { timeout = "1s" }, step "count" {} }
'''


# ---------------------------------------------------------------------------
# Processes, stopped by PID.

class Proc:
    """A child process in its own process group, stopped by its PID (then
    its group, for Chromium's renderer and zygote children)."""

    def __init__(self, argv, log_name):
        self.log_path = os.path.join(TMP, log_name)
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid

    def text(self):
        self.log.flush()
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_log(self, pattern, timeout=15):
        """The first match of the regex pattern in the log, or None."""
        end = time.time() + timeout
        while time.time() < end:
            m = re.search(pattern, self.text())
            if m:
                return m
            if self.proc.poll() is not None:
                return re.search(pattern, self.text())
            time.sleep(0.05)
        return None

    def stop(self, timeout=10):
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(5)
        # Anything left in its group (Chromium's helpers) goes too.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self.proc.returncode


# ---------------------------------------------------------------------------
# A minimal WebSocket client (RFC 6455): text frames, masked, no extensions.

class WebSocket:
    def __init__(self, url, timeout=10):
        m = re.fullmatch(r"ws://([^/:]+):(\d+)(/.*)", url)
        if not m:
            raise ValueError("not a ws:// URL: " + url)
        host, port, path = m.group(1), int(m.group(2)), m.group(3)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(("GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n" % (path, host, port, key)).encode())
        self.buf = b""
        self.parts = []
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise OSError("websocket handshake refused: %r" % head[:200])

    def _frame(self, opcode, payload):
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + body)

    def send(self, text):
        self._frame(0x1, text.encode())

    def _more(self):
        # A timeout leaves self.buf as it was: frames are only taken off
        # it whole, so a later recv() picks up where this one stopped.
        b = self.sock.recv(1 << 16)
        if not b:
            raise ConnectionError("websocket closed")
        self.buf += b

    def _take_frame(self):
        """(fin, opcode, payload) off the front of self.buf, or None."""
        b = self.buf
        if len(b) < 2:
            return None
        n, at = b[1] & 0x7F, 2
        if n == 126:
            if len(b) < 4:
                return None
            n, at = struct.unpack(">H", b[2:4])[0], 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, at = struct.unpack(">Q", b[2:10])[0], 10
        mask = None
        if b[1] & 0x80:
            if len(b) < at + 4:
                return None
            mask, at = b[at:at + 4], at + 4
        if len(b) < at + n:
            return None
        data = b[at:at + n]
        self.buf = b[at + n:]
        if mask:
            data = bytes(x ^ mask[i % 4] for i, x in enumerate(data))
        return bool(b[0] & 0x80), b[0] & 0x0F, data

    def recv(self):
        """The next whole text message (continuations joined); answers pings.
        Raises socket.timeout when none is whole in time."""
        while True:
            f = self._take_frame()
            if f is None:
                self._more()
                continue
            fin, opcode, data = f
            if opcode == 0x8:
                raise ConnectionError("websocket closed by peer")
            if opcode == 0x9:
                self._frame(0xA, data)
                continue
            if opcode == 0xA:
                continue
            self.parts.append(data)
            if fin:
                msg, self.parts = b"".join(self.parts).decode(), []
                return msg

    def settimeout(self, t):
        self.sock.settimeout(t)

    def close(self):
        try:
            self._frame(0x8, b"")
        except OSError:
            pass
        self.sock.close()


# ---------------------------------------------------------------------------
# Chrome DevTools Protocol over one page target.

class CDP:
    def __init__(self, ws_url):
        self.ws = WebSocket(ws_url)
        self.next_id = 0
        self.events = []   # (method, params), in arrival order

    def call(self, method, params=None, timeout=10):
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params or {}}))
        end = time.time() + timeout
        while True:
            left = end - time.time()
            if left <= 0:
                raise TimeoutError("CDP %s: no answer in %ss" % (method, timeout))
            self.ws.settimeout(left)
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError("CDP %s: %s" % (method, msg["error"]))
                return msg.get("result", {})
            if "method" in msg:
                self.events.append((msg["method"], msg.get("params", {})))

    def pump(self, seconds):
        """Collects events for a while."""
        end = time.time() + seconds
        while time.time() < end:
            self.ws.settimeout(max(0.01, end - time.time()))
            try:
                msg = json.loads(self.ws.recv())
            except (socket.timeout, TimeoutError):
                break
            if "method" in msg:
                self.events.append((msg["method"], msg.get("params", {})))

    def eval(self, expr):
        r = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True,
                                           "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError("evaluate %r: %s" % (expr, r["exceptionDetails"]))
        return r["result"].get("value")

    def wait_for(self, expr, timeout=5.0, step=0.1):
        """Polls expr (a JS expression) until it is truthy; its last value."""
        end = time.time() + timeout
        v = None
        while True:
            v = self.eval(expr)
            if v or time.time() >= end:
                return v
            time.sleep(step)

    def of(self, method):
        return [p for m, p in self.events if m == method]


def find_chromium():
    for c in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser",
              "/usr/bin/chromium", "google-chrome"):
        if c:
            p = shutil.which(c)
            if p:
                return p
    return None


def http_json(port, method, path, body=None, timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = {"Content-Type": "application/json"} if body is not None else {}
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, json.loads(data) if data else None


# The page's state, read in one evaluation.
STATE_JS = r'''(() => {
  const q = s => document.querySelector(s);
  const actors = [...document.querySelectorAll("#actors tbody tr[data-actor]")].map(tr => ({
    name: tr.dataset.actor, behaviour: tr.cells[1] && tr.cells[1].textContent,
    indent: parseFloat(tr.cells[0].style.paddingLeft) || 0}));
  const pipes = [...document.querySelectorAll("#pipelines [data-pipeline]")].map(d => {
    const m = /runs (\d+) \(ok (\d+)/.exec(d.textContent);
    return {name: d.dataset.pipeline,
            steps: [...d.querySelectorAll("[data-step]")].map(s => s.dataset.step),
            runs: m ? +m[1] : null, ok: m ? +m[2] : null};
  });
  const traces = [...document.querySelectorAll("#traces tbody tr[data-trace]")].map(tr => ({
    id: tr.dataset.trace, pipeline: tr.cells[1].textContent, outcome: tr.cells[2].textContent,
    steps: tr.cells[4].textContent}));
  return {title: document.title, summary: (q("#summary") || {}).textContent,
          actors, pipes, traces};
})()'''


def main():
    chromium = find_chromium()
    if not check("chromium is installed", chromium,
                 "chromium not installed (apt-get install chromium)"):
        return

    port = free_port()
    base = "http://127.0.0.1:%d" % port
    lua = os.path.join(TMP, "status.lua")
    with open(lua, "w") as f:
        f.write(PIPELINE)
    node = browser = cdp = None
    try:
        node = Proc([TROUPE, "run", "--http", "127.0.0.1:%d" % port, lua], "node.log")
        if not check("node started", node.wait_log(r'"msg":"node started"'), node.text()):
            return

        profile = os.path.join(TMP, "profile")
        browser = Proc([chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
                        "--remote-debugging-port=0", "--user-data-dir=" + profile,
                        "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                        "--disable-background-networking", "--disable-sync",
                        "--disable-component-update", "--disable-dev-shm-usage",
                        "about:blank"], "chromium.log")
        m = browser.wait_log(r"DevTools listening on (ws://[^\s]+)", timeout=30)
        if not check("chromium started with DevTools", m, browser.text()[-2000:]):
            return
        dport = int(re.match(r"ws://[^:]+:(\d+)/", m.group(1)).group(1))

        # The about:blank page target; instrumented before it navigates so
        # that every request of the status page is seen.
        page_ws = None
        end = time.time() + 10
        while not page_ws and time.time() < end:
            c = http.client.HTTPConnection("127.0.0.1", dport, timeout=5)
            c.request("GET", "/json/list")
            targets = json.loads(c.getresponse().read())
            c.close()
            page_ws = next((t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page"),
                           None)
            if not page_ws:
                time.sleep(0.1)
        if not check("chromium has a page target", page_ws, targets):
            return
        cdp = CDP(page_ws)
        for d in ("Page", "Runtime", "Network", "Log"):
            cdp.call(d + ".enable")

        t0 = time.time()
        nav = cdp.call("Page.navigate", {"url": base + "/"})
        check("navigation to / succeeded", not nav.get("errorText"), nav)
        state = cdp.wait_for("document.readyState === 'complete' && "
                             "document.querySelectorAll('#actors tbody tr').length > 0 && "
                             "document.querySelectorAll('#pipelines [data-pipeline]').length > 0",
                             timeout=10)
        check("page loaded and rendered in %.0f ms" % ((time.time() - t0) * 1000), state)
        s = cdp.eval(STATE_JS)
        check("title is 'troupe node'", s["title"] == "troupe node", s["title"])
        check("summary says ready", s["summary"] and " actors · generation 1 · ready" in s["summary"],
              s["summary"])

        # Supervision tree: the Lua actors under their supervisor, and the
        # pipeline's engine.
        by = {a["name"]: a for a in s["actors"]}
        for name in ("shout@1", "count@1"):
            check("tree has Lua actor %s" % name,
                  name in by and by[name]["behaviour"] == "lua", s["actors"])
        check("tree has supervisor root@1", by.get("root@1", {}).get("behaviour") == "supervisor",
              s["actors"])
        engines = [a for a in s["actors"] if a["behaviour"] == "pipeline"]
        check("tree has the pipeline engine", any(a["name"].startswith("pipeline:echo") for a in engines),
              s["actors"])
        if "root@1" in by and "shout@1" in by:
            check("Lua actors are indented under root", by["shout@1"]["indent"] > by["root@1"]["indent"],
                  (by["root@1"], by["shout@1"]))
        _, api_actors = http_json(port, "GET", "/v1/actors")

        def tree_size(nodes):
            return sum(1 + tree_size(a.get("children") or []) for a in nodes)
        check("page shows one row per actor of the /v1/actors tree and the doors",
              len(s["actors"]) == tree_size(api_actors["tree"]) + len(api_actors.get("others", [])) and
              len(api_actors.get("others", [])) >= 1,
              (len(s["actors"]), tree_size(api_actors["tree"]), api_actors.get("others")))

        # Pipeline graph.
        echo = next((p for p in s["pipes"] if p["name"] == "echo"), None)
        check("pipeline graph shows echo", echo, s["pipes"])
        check("echo's steps are shout -> count", echo and echo["steps"] == ["shout", "count"], echo)
        runs0 = echo and echo["runs"]
        check("echo shows its run count", isinstance(runs0, int), echo)

        # A run, from outside the page: the page must show it on its own.
        st, r = http_json(port, "POST", "/v1/pipelines/echo", {"input": {"text": "hi"}})
        tid = (r or {}).get("trace_id")
        check("POST /v1/pipelines/echo ran", st == 200 and r["output"]["text"] == "HI" and tid, (st, r))
        t1 = time.time()
        seen = cdp.wait_for("!!document.querySelector('#traces tr[data-trace=\"%s\"]')" % tid, 5.0)
        check("traces table shows the new trace after %.0f ms" % ((time.time() - t1) * 1000), seen)
        s = cdp.eval(STATE_JS)
        tr = next((t for t in s["traces"] if t["id"] == tid), None)
        check("trace row names echo, ok, both steps",
              tr and tr["pipeline"] == "echo" and tr["outcome"] == "ok" and
              "shout" in tr["steps"] and "count" in tr["steps"], tr)
        runs1 = cdp.wait_for("(() => { const m = /runs (\\d+)/.exec(document.querySelector("
                             "'#pipelines [data-pipeline=\"echo\"]').textContent); "
                             "return m && +m[1] > %d ? +m[1] : 0; })()" % (runs0 or 0), 5.0)
        check("echo's run count went up (%s -> %s)" % (runs0, runs1),
              isinstance(runs0, int) and runs1 and runs1 > runs0)

        # A second refresh cycle must keep all of it (no flicker to empty).
        cdp.pump(1.2)
        s = cdp.eval(STATE_JS)
        check("still rendered after another refresh",
              any(t["id"] == tid for t in s["traces"]) and "shout@1" in {a["name"] for a in s["actors"]},
              s)

        # Origins, errors.
        urls = [p["request"]["url"] for p in cdp.of("Network.requestWillBeSent")]
        check("the page polled the API",
              all(any(u == base + e for u in urls) for e in ("/", "/v1/actors", "/v1/pipelines",
                                                                "/v1/traces", "/ready")), urls)
        foreign = sorted({u for u in urls if not u.startswith(base + "/")})
        check("no request to another origin (%d requests)" % len(urls), not foreign, foreign)
        exc = [p["exceptionDetails"] for p in cdp.of("Runtime.exceptionThrown")]
        check("no JavaScript exception", not exc, exc)
        cons = [p for p in cdp.of("Runtime.consoleAPICalled") if p.get("type") in ("error", "assert")]
        check("no console error", not cons, cons)
        logs = [p["entry"] for p in cdp.of("Log.entryAdded") if p["entry"].get("level") == "error"]
        check("no error in the browser log", not logs, [(e.get("text"), e.get("url")) for e in logs])
        failed_req = [p for p in cdp.of("Network.loadingFailed")]
        check("no failed request", not failed_req, failed_req)

        # The node going away shows on the page instead of stale numbers.
        node.stop()
        gone = cdp.wait_for("document.getElementById('summary').textContent"
                            ".startsWith('cannot reach the node')", 5.0)
        check("page says when it cannot reach the node", gone,
              cdp.eval("document.getElementById('summary').textContent"))
    except Exception as e:  # noqa: BLE001 -- any failure counts, cleanup follows
        check("test ran to the end", False, "%s: %s" % (type(e).__name__, e))
    finally:
        if cdp:
            try:
                cdp.call("Browser.close", timeout=3)
            except Exception:  # noqa: BLE001
                pass
            cdp.ws.close()
        if browser:
            browser.stop()
        if node:
            node.stop()


t_start = time.time()
main()
print("(%.1f s)" % (time.time() - t_start))
import tt
if tt.failed:
    print("logs kept in " + TMP, file=sys.stderr)
else:
    shutil.rmtree(TMP, ignore_errors=True)
sys.exit(summary("test_status_page"))
