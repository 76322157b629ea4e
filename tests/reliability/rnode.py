"""rnode.py -- what the bad-input and security parts of the reliability set
share: a `troupe run` node on free loopback ports (started, watched and
stopped by its PID), raw HTTP over a socket, /metrics readings, `troupe
check` with a time bound, and the bench-format figure line.

    from rnode import Node, figure, cleanup, check_files, http_raw, metric
"""
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "http"))
from tt import free_port, get  # noqa: E402

procs = []
TMP = tempfile.mkdtemp(prefix="troupe-rel-")
# The ASan pass (scripts/test) runs a binary several times slower.
SLOW = 4.0 if os.environ.get("TROUPE_TEST_QUICK") else 1.0


def figure(part, name, rate, unit, seconds, threads=1):
    """One figure in the bench format."""
    r = ("%.3f" % rate).rstrip("0").rstrip(".") if isinstance(rate, float) else str(rate)
    print("peer=troupe bench=%s_%s threads=%d rate=%s unit=%s seconds=%.1f" %
          (part, name, threads, r, unit, seconds), flush=True)


def http_raw(port, data, timeout=5.0, shut_wr=False, wait_close=0.0):
    """Sends data on a fresh connection and reads the first answer: its
    bytes are complete once the headers and Content-Length bytes (or a
    close) came. wait_close > 0: then waits that long for the node to
    close. Returns (status or None, headers dict, body bytes, closed:
    whether the node closed the connection, raw bytes)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    out, closed = b"", False
    try:
        if data:
            s.sendall(data)
        if shut_wr:
            s.shutdown(socket.SHUT_WR)
        end = time.time() + timeout
        while time.time() < end:
            head, sep, body = out.partition(b"\r\n\r\n")
            if sep:
                m = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
                if m and len(body) >= int(m.group(1)):
                    break
            try:
                b = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not b:
                closed = True
                break
            out += b
        if not closed and wait_close > 0:
            s.settimeout(wait_close)
            try:
                while True:
                    b = s.recv(65536)
                    if not b:
                        closed = True
                        break
                    out += b
            except (socket.timeout, ConnectionResetError):
                pass
    except (BrokenPipeError, ConnectionResetError):
        closed = True
    finally:
        s.close()
    return parse_answer(out) + (closed, out)


def parse_answer(out):
    """(status, headers, body) of the first HTTP answer in out."""
    head, _, body = out.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", head)
    if not m:
        return None, {}, b""
    h = {}
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        h[k.strip().lower().decode()] = v.strip().decode(errors="replace")
    n = int(h.get("content-length", len(body)))
    return int(m.group(1)), h, body[:n]


class Node:
    """A `troupe run` node with the config text, on a free HTTP port."""

    def __init__(self, troupe, src, text, name, env=None, threads=2, port=None, args=()):
        """port: this one (a restart on the same port) instead of a free
        one; args: more `troupe run` options (--pid-file F)."""
        self.port = port or free_port()
        self.path = os.path.join(TMP, name + ".lua")
        with open(self.path, "w") as f:
            f.write(text)
        self.logpath = os.path.join(TMP, name + ".log")
        self.log = open(self.logpath, "a")
        self.proc = subprocess.Popen([troupe, "run", "--http", "127.0.0.1:%d" % self.port,
                                      "--threads", str(threads), *args, self.path],
                                     cwd=src, stderr=self.log, env=env)
        procs.append(self.proc)
        self.up = self.wait_health(15 * SLOW)

    def wait_health(self, secs):
        end = time.time() + secs
        while time.time() < end and self.proc.poll() is None:
            try:
                if get(self.port, "/health", timeout=2)[0] == 200:
                    return True
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        return False

    def healthy(self):
        """The process lives and GET /health answers 200."""
        if self.proc.poll() is not None:
            return False
        try:
            return get(self.port, "/health", timeout=5 * SLOW)[0] == 200
        except (OSError, ValueError):
            return False

    def metric(self, name):
        return metric(self.port, name)

    def logtext(self):
        self.log.flush()
        with open(self.logpath, errors="replace") as f:
            return f.read()

    def stop(self, timeout=15):
        """SIGTERM, then SIGKILL past timeout; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def metric(port, name):
    """The sum of the samples of metric name (every label set)."""
    st, text = get(port, "/metrics")
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
            seen = True
    return total if seen else None


def check_files(troupe, src, files, timeout):
    """`troupe check FILES` with a time bound: (exit status, stderr,
    seconds); status None when it hung and was killed."""
    t0 = time.time()
    p = subprocess.Popen([troupe, "check"] + list(files), cwd=src, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        _, err = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        rc = None
    return rc, err.decode(errors="replace"), time.time() - t0


def cleanup():
    """Stops every node still running (by its PID) and removes the temp dir."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    subprocess.run(["rm", "-rf", TMP])
