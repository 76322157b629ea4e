#!/usr/bin/env python3
"""badinput.py -- the bad-input sweep of the reliability set (issue 8).

    badinput.py TROUPE SOURCE_ROOT [--full]

One node (with a cluster config, so that its cluster and data ports
exist) gets, each on a connection of its own:

* malformed HTTP from a table: bad request lines, methods and versions,
  oversized or too many headers, bad Content-Length, bad or overflowing
  chunked encoding, bodies over max_body, invalid UTF-8 and overlong
  encodings in JSON, nesting 10^5 deep, huge numbers, duplicate keys, NUL
  bytes, a slowloris trickle (header_timeout 500ms), pipelined garbage,
  half-closed and reset connections. Each case states the status and
  JSON error code it must get, and whether the node closes; after each,
  GET /health must be 200 from the same PID.
* malformed Lua: every file in tests/lua/bad/ through `troupe check`
  (exit 1, each line `file:line: message`, within a time bound), and
  generated ones: random bytes, truncated pipelines/*.lua, binary chunks,
  NUL bytes, huge lines, deep nesting.
* garbage on the cluster port and on the data port: random bytes, a valid
  SP handshake then garbage frames, huge length prefixes, a wrong SP
  protocol. troupe_cluster_bad_frames_total / _bad_batches_total /
  _refused_total must move where the bytes reach the cluster (past nng's
  own SP handshake and framing) and the node stays up.

Quick (default): every HTTP and cluster case, the bad/ files and 40
generated Lua files, in about 20 s (60 s under ASan). --full: 400
generated Lua files and every HTTP case 3 times, in under 2 minutes.
Prints the figures in the bench format, then
"tt: badinput: N passed, N failed".
"""
import os
import random
import re
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rnode import SLOW, TMP, Node, check_files, cleanup, figure, http_raw  # noqa: E402
from tt import check, free_port, get, summary  # noqa: E402

TROUPE, SRC = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
FULL = "--full" in sys.argv[3:]
rng = random.Random(8)

CONFIG = r'''
node { name = "bad", threads = 2, max_body = "1MiB", max_header = "4KiB", header_timeout = "500ms",
       idle_timeout = "5s",
       cluster = { listen = "tcp://127.0.0.1:%d", secret_file = "%s",
                   heartbeat = "100ms", suspect_after = "400ms", down_after = "900ms" } }
actor "echo" { receive = function(msg) return msg end }
pipeline "echo" { step "echo" { timeout = "2s" } }
'''

# ---- HTTP ------------------------------------------------------------------


def post(body, path=b"/v1/pipelines/echo", extra=b""):
    if isinstance(body, str):
        body = body.encode()
    return (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + extra +
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


def chunked(*chunks, extra=b""):
    return (b"POST /v1/pipelines/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n" + extra +
            b"\r\n" + b"".join(chunks))


GOOD = b'{"input":{"text":"hi"}}'
DEEP = 100000
# (name, request bytes, status, error code or None, closes: True = the node
# must close after answering, None = either). Status None: no answer, the
# node must close (see the notes in each case).
HTTP_CASES = [
    # request lines, methods, versions
    ("garbage request line", b"GARBAGE / NOTHTTP\r\n\r\n", 400, "bad_request", True),
    ("method only", b"GET\r\n\r\n", 400, "bad_request", True),
    ("no version (HTTP/0.9)", b"GET /health\r\n\r\n", 505, "http_version", True),
    ("extra token after the version", b"GET /health HTTP/1.1 x\r\nHost: x\r\n\r\n", 400, "bad_request", True),
    ("unknown method", b"FROB /health HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request", True),
    ("lower-case method", b"get /health HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request", True),
    ("PUT on /health", b"PUT /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405,
     "method_not_allowed", None),
    ("DELETE on a pipeline", b"DELETE /v1/pipelines/echo HTTP/1.1\r\nHost: x\r\n\r\n", 405,
     "method_not_allowed", None),
    ("GET on a pipeline", b"GET /v1/pipelines/echo HTTP/1.1\r\nHost: x\r\n\r\n", 405, "method_not_allowed", None),
    ("unknown path", b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404, "not_found", None),
    ("unknown pipeline", post(GOOD, b"/v1/pipelines/nope"), 404, "not_found", None),
    ("path traversal", b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 404, "not_found", None),
    ("absolute-form URL", b"GET http://evil.example/health HTTP/1.1\r\nHost: x\r\n\r\n", 404, "not_found", None),
    ("HTTP/2.0", b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n", 505, "http_version", True),
    ("HTTP/9.9", b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n", 505, "http_version", True),
    ("HTTP/x.1", b"GET /health HTTP/x.1\r\nHost: x\r\n\r\n", 400, "bad_request", True),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "bad_request", True),
    ("TLS ClientHello", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(32)) * 4, 400,
     "bad_request", True),
    ("control byte in the URL", b"GET /hea\x01lth HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request", True),
    ("NUL in the request line", b"GET /health\x00 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request", True),
    ("random bytes", bytes(random.Random(1).getrandbits(8) for _ in range(4096)), 400, "bad_request", True),
    # headers
    ("URL over max_header", b"GET /" + b"a" * 8000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431,
     "headers_too_large", True),
    ("one header over max_header", b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n", 431,
     "headers_too_large", True),
    ("3000 tiny headers", b"GET /health HTTP/1.1\r\n" + b"a:b\r\n" * 3000 + b"\r\n", 431,
     "headers_too_large", True),
    ("header without a colon", b"GET /health HTTP/1.1\r\nHost x\r\n\r\n", 400, "bad_request", True),
    # http-parser 2.9 (non-strict, as Debian builds it) takes this header;
    # the node is the origin server (no proxy in front of it reads it
    # another way), and ignores it.
    ("space in a header name", b"GET /health HTTP/1.1\r\nX Y: 1\r\n\r\n", 200, None, None),
    ("NUL in a header value", b"GET /health HTTP/1.1\r\nX-A: a\x00b\r\n\r\n", 400, "bad_request", True),
    ("bare LF line ends", b"GET /health HTTP/1.1\nHost: x\n\n", 200, None, None),
    # Content-Length
    ("Content-Length not a number", b"POST /v1/pipelines/echo HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400,
     "bad_request", True),
    ("negative Content-Length", b"POST /v1/pipelines/echo HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400,
     "bad_request", True),
    ("Content-Length overflowing 64 bits",
     b"POST /v1/pipelines/echo HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400,
     "bad_request", True),
    ("two different Content-Lengths", b"POST /v1/pipelines/echo HTTP/1.1\r\nContent-Length: 3\r\n"
     b"Content-Length: 5\r\n\r\n{}", 400, "bad_request", True),
    ("Content-Length and chunked", b"POST /v1/pipelines/echo HTTP/1.1\r\nContent-Length: 5\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "bad_request", True),
    ("Content-Length over max_body", b"POST /v1/pipelines/echo HTTP/1.1\r\nContent-Length: 1000000000000\r\n\r\n",
     413, "body_too_large", True),
    ("Expect: 100-continue over max_body", b"POST /v1/pipelines/echo HTTP/1.1\r\nExpect: 100-continue\r\n"
     b"Content-Length: 5000000\r\n\r\n", 413, "body_too_large", True),
    ("Content-Length shorter than the body",
     b"POST /v1/pipelines/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n" + GOOD, 400, "invalid_json", None),
    ("body over max_body (sent)", post(b'{"input":{"s":"' + b"x" * (1 << 20) + b'"}}'), 413, "body_too_large",
     True),
    # chunked
    ("chunk size not hex", chunked(b"zz\r\n"), 400, "bad_request", True),
    ("chunk size overflowing", chunked(b"FFFFFFFFFFFFFFFFFFFF\r\n"), 400, "bad_request", True),
    # Non-strict http-parser skips the CRLF after chunk data without
    # looking, so this is a request that never ends: 408 at header_timeout.
    ("chunk without CRLF after its data", chunked(b"2\r\n{}XX3\r\n"), 408, "timeout", True),
    ("chunks over max_body", chunked(*[b"10000\r\n" + b"a" * 0x10000 + b"\r\n"] * 18), 413, "body_too_large", True),
    # The declared chunk size is not held against max_body; its data is.
    ("a chunk declared larger than max_body", chunked(b"7FFFFFFFFFFF\r\n" + b"a" * (1100 << 10)), 413,
     "body_too_large", True),
    ("a chunk declared larger than max_body, data stops", chunked(b"7FFFFFFFFFFF\r\n" + b"a" * 70000), 408,
     "timeout", True),
    ("chunked, good JSON", chunked(b"%x\r\n" % len(GOOD) + GOOD + b"\r\n0\r\n\r\n"), 200, None, None),
    ("Transfer-Encoding gzip", b"POST /v1/pipelines/echo HTTP/1.1\r\nTransfer-Encoding: gzip\r\n"
     b"Content-Length: 2\r\n\r\n{}", 400, "bad_request", True),
    # JSON bodies
    ("invalid UTF-8 in a string", post(b'{"input":{"t":"a\xffb"}}'), 400, "invalid_json", None),
    ("overlong encoding of '/'", post(b'{"input":{"t":"\xc0\xaf"}}'), 400, "invalid_json", None),
    ("overlong NUL (C0 80)", post(b'{"input":{"t":"\xc0\x80"}}'), 400, "invalid_json", None),
    ("UTF-8-encoded surrogate", post(b'{"input":{"t":"\xed\xa0\x80"}}'), 400, "invalid_json", None),
    ("code point past U+10FFFF", post(b'{"input":{"t":"\xf4\x90\x80\x80"}}'), 400, "invalid_json", None),
    ("truncated UTF-8 sequence", post(b'{"input":{"t":"\xe2\x82"}}'), 400, "invalid_json", None),
    ("invalid UTF-8 in a key", post(b'{"input":{"\xfe":1}}'), 400, "invalid_json", None),
    ("lone surrogate escape", post(b'{"input":{"t":"\\ud800"}}'), 400, "invalid_json", None),
    ("escaped NUL", post(b'{"input":{"t":"a\\u0000b"}}'), 400, "invalid_json", None),
    ("raw NUL byte in the body", post(b'{"input":{"t":"a\x00b"}}'), 400, "invalid_json", None),
    ("nesting 10^5 deep", post(b'{"input":{"a":' + b"[" * DEEP + b"]" * DEEP + b"}}"), 400, "invalid_json",
     None),
    ("objects 10^5 deep", post(b'{"input":' + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"}"), 400,
     "invalid_json", None),
    ("nesting 64 deep (past 63)", post(b'{"input":{"a":' + b"[" * 64 + b"]" * 64 + b"}}"), 400, "bad_request",
     None),
    ("integer past 64 bits", post(b'{"input":{"n":123456789012345678901234567890}}'), 400, "invalid_json", None),
    ("real overflowing", post(b'{"input":{"n":1e999999}}'), 400, "invalid_json", None),
    ("duplicate keys", post(b'{"input":{"a":1,"a":2}}'), 400, "invalid_json", None),
    ("duplicate input", post(b'{"input":{},"input":{}}'), 400, "invalid_json", None),
    ("truncated JSON", post(b'{"input":{"a":'), 400, "invalid_json", None),
    ("trailing garbage after JSON", post(GOOD + b"}}}"), 400, "invalid_json", None),
    ("JSON array body", post(b"[1,2,3]"), 400, "bad_request", None),
    ("input a string", post(b'{"input":"x"}'), 400, "bad_request", None),
    ("unknown body key", post(b'{"input":{},"evil":1}'), 400, "bad_request", None),
    ("empty body", post(b""), 400, "bad_request", None),
    ("a 900 KiB string (within max_body)", post(b'{"input":{"s":"' + b"x" * 900000 + b'"}}'), 200, None, None),
    ("50 000 keys", post(b'{"input":{' + b",".join(b'"k%d":%d' % (i, i) for i in range(50000)) + b"}}"),
     200, None, None),
    # connections
    ("pipelined garbage after a good request", b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n", 200,
     None, True),
    ("a good POST, then garbage", post(GOOD) + b"\x00\x01\x02 nonsense\r\n\r\n", 200, None, True),
    ("half-closed after GET /health", ("shut_wr", b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"), 200, None, True),
    # A client's EOF cancels its run (README The node: a client that
    # disconnects cancels its run), a half-close included: no answer.
    ("half-closed after a POST", ("shut_wr", post(GOOD)), "any", None, True),
    ("half-closed mid-headers", ("shut_wr", b"GET /health HTTP/1.1\r\nHo"), None, None, True),
    ("reset mid-body", ("reset", post(GOOD)[:-5]), None, None, True),
    ("connect and close", ("reset", b""), None, None, True),
    ("slowloris: headers 1 byte per 100 ms", ("trickle", (b"GET /health HTTP/1.1\r\n",
                                                          b"Host: x\r\nX-Slow: " + b"a" * 100)), 408, "timeout", True),
    ("slowloris: the body 1 byte per 100 ms", ("trickle", (post(GOOD)[:-len(GOOD)], GOOD)), 408, "timeout", True),
    # Only method bytes came: the node closes at header_timeout without an
    # answer (header_timer_cb answers 408 only once URL or header bytes came).
    ("slowloris: method bytes only", ("trickle", (b"", b"POST")), None, None, True),
]


def trickle(port, head, data, every=0.1):
    """Sends head, then data a byte at a time (and then nothing); returns
    what the node answered and when (seconds from the first byte): the node
    must cut it off at header_timeout."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    t0, out, closed = time.time(), b"", False
    s.sendall(head)
    s.setblocking(False)
    for i in range(len(data)):
        try:
            s.send(data[i:i + 1])
        except (BrokenPipeError, ConnectionResetError, BlockingIOError):
            break
        time.sleep(every)
        try:
            b = s.recv(65536)
            if not b:
                closed = True
                break
            out += b
        except BlockingIOError:
            pass
        except ConnectionResetError:
            closed = True
            break
    dt = time.time() - t0
    s.setblocking(True)
    s.settimeout(2)
    try:
        while not closed:
            b = s.recv(65536)
            if not b:
                closed = True
            out += b
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    return out, closed, dt


def run_http_case(node, case):
    from rnode import parse_answer
    name, req, status, code, closes = case
    mode = None
    if isinstance(req, tuple):
        mode, req = req
    detail = ""
    if mode == "trickle":
        out, closed, dt = trickle(node.port, *req)
        st, h, body = parse_answer(out)
        detail = "cut off after %.2f s" % dt
        ok_time = dt < 0.5 + 1.5 * SLOW
    elif mode == "reset":
        s = socket.create_connection(("127.0.0.1", node.port), timeout=5)
        if req:
            s.sendall(req)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        st, h, body, closed, ok_time = None, {}, b"", True, True
    else:
        st, h, body, closed, _ = http_raw(node.port, req, timeout=5 * SLOW, shut_wr=mode == "shut_wr",
                                          wait_close=(2 * SLOW if closes else 0))
        ok_time = True
    ok = ok_time
    if status == "any":
        pass
    elif status is None:
        ok = ok and st is None
    else:
        ok = ok and st == status
    if code is not None:
        import json
        try:
            j = json.loads(body)
            ok = ok and j["error"]["code"] == code and isinstance(j["error"]["message"], str) and \
                h.get("content-type") == "application/json"
            detail += " " + j["error"]["message"][:80]
        except (ValueError, KeyError, TypeError):
            ok = False
    if closes:
        ok = ok and closed
    alive = node.healthy()
    return ok and alive, "%s -> %s%s%s" % (name, st, " closed" if closed else "", detail), \
        (st, h, body[:300], closed, alive)


def http_sweep(node, rounds):
    ok_n = cases = 0
    for r in range(rounds):
        for case in HTTP_CASES:
            ok, label, detail = run_http_case(node, case)
            cases += 1
            ok_n += ok
            if r == 0 or not ok:
                check("http: " + label + "; /health 200 after it", ok, detail)
    return cases, ok_n


# ---- Lua ---------------------------------------------------------------------

LINE = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+): \S")


def lua_bad_files():
    d = os.path.join(SRC, "tests", "lua", "bad")
    fs = sorted("tests/lua/bad/" + f for f in os.listdir(d) if f.endswith(".lua"))
    return [[f] for f in fs] + [["tests/lua/bad/multi/actors.lua", "tests/lua/bad/multi/pipelines.lua"]]


def generated_lua(n):
    """(label, file content) pairs: random bytes, truncated pipelines/*.lua,
    binary chunks, and a few hand-made shapes."""
    out = []
    pdir = os.path.join(SRC, "pipelines")
    good = []
    for f in sorted(os.listdir(pdir)):
        if f.endswith(".lua"):
            with open(os.path.join(pdir, f), "rb") as fh:
                good.append((f, fh.read()))
    out += [("binary chunk header", b"\x1bLua\x54\x00\x19\x93\r\n\x1a\n\x04\x08\x08"),
            ("binary chunk with garbage", b"\x1bLua\x54\x00" + bytes(rng.getrandbits(8) for _ in range(500))),
            ("binary chunk of Lua 5.1", b"\x1bLua\x51\x00\x01\x04\x08\x04\x08\x00" + b"\x00" * 64),
            ("NUL bytes in code", b'actor "a" { kind = "intent" }\n\x00\x00\x00\n'),
            ("NUL inside a string", b'actor "a\x00b" { kind = "intent" }\n'),
            ("a 2 MiB line", b"local x = " + b"1 + " * (512 * 1024) + b"1\n"),
            ("a 1 MiB identifier", b"local " + b"a" * (1 << 20) + b" = 1\nerror('late')\n"),
            ("tables 10^5 deep", b"local t = " + b"{" * 100000 + b"}" * 100000 + b"\n"),
            ("parentheses 10^5 deep", b"local t = " + b"(" * 100000 + b"1" + b")" * 100000 + b"\n"),
            ("unterminated long string", b'actor "a" { kind = "intent" }\nlocal s = [==[ never ends\n'),
            ("unterminated long comment", b"--[[ never ends\n" * 3),
            ("invalid UTF-8 in a name", b'actor "\xff\xfe" { kind = "intent" }\n'),
            ("a BOM then garbage", b"\xef\xbb\xbf}}}\n"),
            ("a shebang then garbage", b"#!/usr/bin/lua\n)(\n"),
            ("goto into nowhere", b"goto nowhere\n"),
            ("255 locals past the limit", b"".join(b"local v%d = %d\n" % (i, i) for i in range(300)))]
    for i in range(n):
        kind = i % 3
        if kind == 0:
            size = rng.choice([1, 7, 64, 512, 4096])
            out.append(("random bytes #%d (%d B)" % (i, size), bytes(rng.getrandbits(8) for _ in range(size))))
        elif kind == 1:
            name, text = good[rng.randrange(len(good))]
            cut = rng.randrange(1, len(text))
            out.append(("%s cut at byte %d" % (name, cut), text[:cut]))
        else:
            name, text = good[rng.randrange(len(good))]
            b = bytearray(text)
            for _ in range(rng.choice([1, 3, 10])):
                b[rng.randrange(len(b))] = rng.getrandbits(8)
            out.append(("%s with flipped bytes #%d" % (name, i), bytes(b)))
    return out


def lua_sweep(n_gen):
    cases = ok_n = 0
    bound = 20 * SLOW
    for files in lua_bad_files():
        rc, err, dt = check_files(TROUPE, SRC, files, bound)
        lines = [l for l in err.splitlines() if l]
        numbered = bool(lines) and all(LINE.match(l) or l.startswith(tuple(f + ": " for f in files))
                                       for l in lines) and any(LINE.match(l) for l in lines)
        ok = rc == 1 and numbered
        cases += 1
        ok_n += ok
        check("lua: troupe check %s: exit 1, line-numbered (%.2f s)" % (" ".join(files), dt), ok, (rc, err[-600:]))
    worst = 0.0
    bad_gen = []
    for i, (label, text) in enumerate(generated_lua(n_gen)):
        path = os.path.join(TMP, "gen%d.lua" % i)
        with open(path, "wb") as f:
            f.write(text)
        rc, err, dt = check_files(TROUPE, SRC, [path], bound)
        worst = max(worst, dt)
        lines = [l for l in err.splitlines() if l]
        # A truncated or mutated file may still be valid (exit 0); every
        # other outcome is exit 1 with `file:line: message` lines, or the
        # file-level "file: cannot read" kind; never a signal or a hang.
        if rc == 0:
            ok = True
        else:
            ok = rc == 1 and bool(lines) and all(l.startswith(path + ":") for l in lines) and \
                "out of memory" not in err
        cases += 1
        ok_n += ok
        if not ok:
            bad_gen.append((label, rc, err[-300:]))
    check("lua: %d generated files (random, truncated, mutated, binary chunks, deep, huge): exit 0 or 1 "
          "with file:line messages, no crash, no hang (slowest %.2f s)" % (len(generated_lua(n_gen)), worst),
          not bad_gen, bad_gen[:5])
    return cases, ok_n


# ---- cluster -------------------------------------------------------------------

SP_PAIR1 = b"\x00SP\x00\x00\x11\x00\x00"  # nng's SP header, pair1 (0x11)
SP_PUSH = b"\x00SP\x00\x00\x50\x00\x00"   # push0, what a pull listener accepts
SP_PULL = b"\x00SP\x00\x00\x51\x00\x00"   # pull0: the wrong peer for a pull socket


def frame(payload):
    return struct.pack(">Q", len(payload)) + payload


def mp_map(d):
    """A msgpack map of small string keys and small ints or strings."""
    out = bytes([0x80 | len(d)])
    for k, v in d.items():
        out += bytes([0xa0 | len(k)]) + k.encode()
        if isinstance(v, int):
            out += bytes([0xcf]) + struct.pack(">Q", v)
        else:
            out += bytes([0xd9, len(v)]) + v.encode()
    return out


def blast(port, data, hold=0.15):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        s.sendall(data)
        time.sleep(hold)
        try:
            s.settimeout(0.3)
            s.recv(4096)
        except (socket.timeout, OSError):
            pass
        s.close()
    except OSError:
        pass


def cluster_sweep(node, cport):
    members = get(node.port, "/v1/cluster")[1]["members"]
    me = [m for m in members if m.get("self")][0]
    dport = int(me["data"].rsplit(":", 1)[1])
    hop = b"\x00\x00\x00\x01"  # pair1's hop count, before each message body
    cases = [
        # (name, port, bytes, counter that must move or None)
        ("random bytes on the cluster port", cport, os.urandom(4096), None),
        ("HTTP on the cluster port", cport, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", None),
        ("a wrong SP protocol (pull) on the cluster port", cport, SP_PULL + frame(hop + b"x"), None),
        ("SP handshake, then a huge length prefix", cport, SP_PAIR1 + b"\x7f\xff\xff\xff\xff\xff\xff\xff" + b"x" * 64,
         None),
        ("SP handshake, then a frame over the 4 MiB cap", cport, SP_PAIR1 + struct.pack(">Q", 5 << 20) +
         b"x" * 4096, None),
        ("SP handshake, then a non-msgpack frame", cport, SP_PAIR1 + frame(hop + b"garbage, not msgpack"),
         "troupe_cluster_bad_frames_total"),
        ("SP handshake, then truncated msgpack", cport, SP_PAIR1 + frame(hop + b"\x85\xa1v\x01"),
         "troupe_cluster_bad_frames_total"),
        ("SP handshake, then msgpack 10^4 deep", cport, SP_PAIR1 + frame(hop + b"\x91" * 10000 + b"\x01"),
         "troupe_cluster_bad_frames_total"),
        ("SP handshake, then a frame of another version", cport, SP_PAIR1 + frame(hop + mp_map({"v": 99, "t": 1})),
         "troupe_cluster_refused_total"),
        ("SP handshake, then AUTH before HELLO", cport, SP_PAIR1 + frame(hop + mp_map({"v": 1, "t": 2})),
         "troupe_cluster_bad_frames_total"),
        ("SP handshake, then a HELLO without fields", cport, SP_PAIR1 + frame(hop + mp_map({"v": 1, "t": 1})),
         "troupe_cluster_bad_frames_total"),
        ("SP handshake, then an unknown frame type", cport, SP_PAIR1 + frame(hop + mp_map({"v": 1, "t": 77})),
         "troupe_cluster_bad_frames_total"),
        ("random bytes on the data port", dport, os.urandom(4096), None),
        ("a wrong SP protocol (pull) on the data port", dport, SP_PULL + frame(b"TRB\x01" + b"\x00" * 24), None),
        ("SP handshake on the data port, then a huge length prefix", dport,
         SP_PUSH + b"\x7f\xff\xff\xff\xff\xff\xff\xff" + b"x" * 64, None),
        ("SP handshake on the data port, then garbage", dport, SP_PUSH + frame(b"garbage, no batch header"),
         "troupe_cluster_bad_batches_total"),
        ("a batch from an unknown node on the data port", dport,
         SP_PUSH + frame(b"TRB\x01" + struct.pack(">I", 12345) + os.urandom(16) + struct.pack(">I", 1) +
                         struct.pack(">I", 3) + b"abc"), "troupe_cluster_bad_batches_total"),
        ("a batch header of another version on the data port", dport,
         SP_PUSH + frame(b"TRB\x07" + b"\x00" * 24), "troupe_cluster_bad_batches_total"),
    ]
    ok_n = 0
    for name, port, data, counter in cases:
        before = node.metric(counter) if counter else None
        blast(port, data)
        moved = True
        if counter:
            end = time.time() + 3 * SLOW
            while time.time() < end and (node.metric(counter) or 0) <= (before or 0):
                time.sleep(0.05)
            after = node.metric(counter) or 0
            moved = after > (before or 0)
        alive = node.healthy()
        ok = moved and alive
        ok_n += ok
        check("cluster: %s: %s, node up" % (name, ("%s moved" % counter.replace("troupe_cluster_", ""))
                                             if counter else "dropped by nng before the cluster"),
              ok, (counter, before, node.metric(counter) if counter else None, alive))
    # 40 connections at once, each with garbage.
    import threading
    ts = [threading.Thread(target=blast, args=(cport if i % 2 else dport,
                                               (SP_PAIR1 if i % 2 else SP_PUSH) + frame(os.urandom(64)), 0.3))
          for i in range(40)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    ok = node.healthy() and get(node.port, "/v1/cluster")[0] == 200
    check("cluster: 40 garbage connections at once on both ports: node up, /v1/cluster answers", ok)
    return len(cases) + 1, ok_n + ok


def main():
    t_all = time.time()
    secret = os.path.join(TMP, "secret")
    with open(secret, "w") as f:
        f.write("a reliability cluster secret, 32+ bytes long\n")
    cport = free_port()
    node = Node(TROUPE, SRC, CONFIG % (cport, secret), "badinput")
    if not check("the node starts with a cluster port", node.up, node.logtext()[-1500:]):
        return
    pid = node.proc.pid

    t0 = time.time()
    hc, hok = http_sweep(node, 3 if FULL else 1)
    t_http = time.time() - t0
    t0 = time.time()
    cc, cok = cluster_sweep(node, cport)
    t_cl = time.time() - t0
    t0 = time.time()
    lc, lok = lua_sweep(400 if FULL else 40)
    t_lua = time.time() - t0

    restarts = 0 if node.proc.poll() is None and node.proc.pid == pid else 1
    check("the node never went down (same PID %d through every case)" % pid, restarts == 0)
    rc = node.stop()
    check("the node stops with status 0 after the sweep", rc == 0, (rc, node.logtext()[-1500:]))
    figure("badinput", "http_cases", hc, "cases", t_http)
    figure("badinput", "http_ok", hok, "cases", t_http)
    figure("badinput", "lua_cases", lc, "cases", t_lua)
    figure("badinput", "lua_ok", lok, "cases", t_lua)
    figure("badinput", "cluster_cases", cc, "cases", t_cl)
    figure("badinput", "node_restarts", restarts, "restarts", time.time() - t_all)


try:
    main()
finally:
    cleanup()
sys.exit(summary("badinput"))
