"""load.py -- keep-alive client threads that post to the default assistant
and count every request's fate, for the lifecycle part (SIGTERM, SIGHUP,
kill -9 under load).

    from load import Load, wait_count

A request ends as one of:
  ok          a complete 200 answer with an output
  answered    any complete answer (ok included): status line, headers and
              the Content-Length body; not 200 it must be a JSON error
              (else it also counts as bad)
  unanswered  sent whole, then the connection closed or was reset before
              a complete answer came
  refused     the door was closed: the connection was refused or reset at
              connect, or the node had closed the idle keep-alive
              connection before the request went out (the client sees its
              EOF first, as HTTP clients check a reused connection), or
              after the check but before the request arrived ("crossed",
              counted also on its own: see crossed())
The questions are bench/http_assistant.lua's (the benchmarks' load).
"""
import errno
import json
import os
import re
import select
import socket
import threading
import time

_REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def questions():
    """The questions of bench/http_assistant.lua, in its order."""
    with open(os.path.join(_REPO, "bench", "http_assistant.lua")) as f:
        text = f.read()
    block = text.split("local questions = {", 1)[1].split("}", 1)[0]
    return re.findall(r'"([^"]+)"', block)


def request_bytes(body):
    b = json.dumps(body).encode()
    return (b"POST /v1/pipelines/assistant HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(b), b))


def read_answer(s, why=None):
    """(status, headers, body) of one answer on s; None when the
    connection closed or was reset before the answer was complete (why,
    a list, then gets the reason and the bytes read)."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            x = s.recv(65536)
            if not x:
                raise EOFError("eof")
            data += x
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        h = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            h[k.strip().lower().decode()] = v.strip().decode(errors="replace")
        n = int(h.get("content-length", "-1"))
        if n < 0:
            return None  # the assistant answers plain calls with a length
        while len(body) < n:
            x = s.recv(65536)
            if not x:
                raise EOFError("eof in the body")
            body += x
        return status, h, body[:n]
    except (EOFError, ConnectionResetError, BrokenPipeError, socket.timeout, ValueError,
            IndexError) as e:
        if why is not None:
            why += [crossed(s, e, data) or repr(e), len(data)]
        return None


def crossed(s, e, data):
    """'crossed' when the request reached a connection the node had
    already closed: the EOF came first and our bytes drew a reset (EPIPE
    pending on the socket), so the node never read them. A node that read
    the request and closed leaves no error; one that closed with it unread
    resets the connection (ECONNRESET before any EOF)."""
    if not isinstance(e, EOFError) or data:
        return None
    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    return "crossed" if err in (errno.EPIPE, errno.ECONNRESET) else None


def dropped(s):
    """The node closed this idle connection (EOF or reset waiting)."""
    r, _, _ = select.select([s], [], [], 0)
    if not r:
        return False
    try:
        return s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class Load:
    """nthreads keep-alive clients on 127.0.0.1:port. restart: the node
    may go away and come back (kill -9 tests): a refused connect is
    retried instead of ending the client."""

    def __init__(self, port, nthreads, restart=False, timeout=30.0):
        self.port, self.n, self.restart, self.timeout = port, nthreads, restart, timeout
        self.qs = questions()
        self.lock = threading.Lock()
        self.count = dict(sent=0, answered=0, ok=0, bad=0, unanswered=0, refused=0, crossed=0)
        self.failures = []         # details of the unanswered and bad ones
        self.halt = threading.Event()
        self.threads = []
        self.awaiting = {}         # thread -> seq of its request sent whole, unanswered
        self.marked = {}           # mark(): the requests in flight then
        self.marked_done = 0
        self.socks = []

    def _add(self, k, detail=None):
        with self.lock:
            self.count[k] += 1
            if detail is not None and len(self.failures) < 50:
                self.failures.append(detail)

    def snapshot(self):
        with self.lock:
            return dict(self.count)

    def mark(self):
        """Marks the requests in flight now; returns how many."""
        with self.lock:
            self.marked = dict(self.awaiting)
            return len(self.marked)

    def marked_answered(self):
        with self.lock:
            return self.marked_done

    def connect(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.socks.append(s)
        return s

    def one(self, body):
        """One request on a fresh connection: (status, JSON body or None)."""
        s = self.connect()
        try:
            s.sendall(request_bytes(body))
            a = read_answer(s)
        finally:
            s.close()
        if a is None:
            return None, None
        try:
            return a[0], json.loads(a[2])
        except ValueError:
            return a[0], None

    def _client(self, i):
        s, seq, used = None, 0, 0
        while not self.halt.is_set():
            if s is not None and dropped(s):
                s.close()
                s = None
            if s is None:
                try:
                    s, used = self.connect(), 0
                except OSError as e:
                    if e.errno not in (errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT):
                        raise
                    self._add("refused")
                    if self.restart:
                        time.sleep(0.002)
                        continue
                    return
            req = request_bytes({"input": {"text": self.qs[(i + seq + 1) % len(self.qs)]}})
            if dropped(s):
                # closed before the request went out (a door that drained
                # right after accepting it): not taken, as at a closed door
                self._add("refused")
                s.close()
                s = None
                if self.restart:
                    continue
                return
            seq += 1
            try:
                s.sendall(req)
            except OSError:
                # The node closed the connection before the request was in:
                # not taken, as at a closed door.
                self._add("refused")
                s.close()
                s = None
                continue
            with self.lock:
                self.count["sent"] += 1
                self.awaiting[i] = seq
            why = []
            used += 1
            a = read_answer(s, why)
            with self.lock:
                del self.awaiting[i]
                if a is not None and self.marked.get(i) == seq:
                    self.marked_done += 1
            if a is None and why[:1] == ["crossed"]:
                self._add("refused")
                self._add("crossed")
                s.close()
                s = None
                if self.restart:
                    continue
                return
            if a is None:
                self._add("unanswered", {"thread": i, "seq": seq, "t": time.time(),
                                         "nth_on_conn": used, "why": why})
                s.close()
                s = None
                continue
            status, h, body = a
            self._add("answered")
            try:
                j = json.loads(body)
            except ValueError:
                j = None
            if status == 200 and isinstance(j, dict) and "output" in j:
                self._add("ok")
            elif status == 200 or not (isinstance(j, dict) and "error" in j):
                self._add("bad", {"status": status, "body": body[:300]})
            if h.get("connection", "").lower() == "close":
                s.close()
                s = None
        if s is not None:
            s.close()

    def start(self):
        for i in range(self.n):
            t = threading.Thread(target=self._client, args=(i,), daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self):
        self.halt.set()

    def stop_when_refused(self, secs):
        """Waits up to secs for every client to end on a refusal, then
        stops the rest."""
        self.join(secs)
        self.halt.set()

    def join(self, secs):
        """True when every client ended within secs."""
        end = time.time() + secs
        for t in self.threads:
            t.join(max(0.0, end - time.time()))
        return not any(t.is_alive() for t in self.threads)

    def close(self):
        self.halt.set()
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass
        self.socks = []


def wait_count(ld, n, secs, key="answered"):
    """True once ld counted n of key within secs."""
    end = time.time() + secs
    while time.time() < end:
        if ld.snapshot()[key] >= n:
            return True
        time.sleep(0.02)
    return False
