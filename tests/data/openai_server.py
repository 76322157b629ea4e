#!/usr/bin/env python3
"""A small OpenAI-compatible chat server for tests (tests/unit/test_openai.c).

POST /v1/chat/completions, with "stream": false (one JSON answer) or true
(server-sent events: one `data: {chunk}` per word with
choices[0].delta.content, a last chunk with `usage` when
stream_options.include_usage is set, then `data: [DONE]`), over HTTP/1.1
with keep-alive (streams use chunked transfer encoding, so a connection
outlives its response).

The test chooses a behaviour per request with a marker in the last user
message: `mode=NAME` (and for some, `ms=N`):
  normal     the answer ANSWER below, usage prompt_tokens 1000 + number of
             messages, completion_tokens 100 + number of words
  echo       the answer is the request itself as JSON: {"request": {...},
             "authorization": "<header or null>"}
  stats      the answer is "connections=C requests=R" (connections accepted
             so far, requests served so far, this one included)
  nousage    like normal, without usage
  429        HTTP 429, Retry-After: 2, {"error": {"message": "rate limited"}}
  503        HTTP 503, Retry-After: 1, {"error": {"message": "warming up"}}
  500        HTTP 500, {"error": {"message": "boom"}}
  400        HTTP 400, {"error": {"message": "bad request: unknown model"}}
  slowhead   sleeps ms (default 2000) before anything, then normal
  slowbody   sends the headers, sleeps ms, then the body
  trickle    a word every 200 ms, 30 words (streams; plain: sleeps 6 s)
  cut        streams: two words, then the connection is closed without
             ending the body; plain: half the promised Content-Length
  nodone     streams: two words, then the body ends properly without
             [DONE] or a finish_reason
  plainjson  a plain JSON answer even when a stream was asked for
  midstream  streams: a word, then an error event
  utf8       the answer "Grüße, 世界 👋." one character per chunk
  paced      like normal, streams pause 20 ms between words (so that the
             client sees them in separate reads)
Anything else on another path or method: 404.

Prints the port it listens on (loopback, port 0: the kernel's choice) on
stdout, then serves until killed.
"""
import json
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER = "Troupe is built with ninja -C build [1]."
UTF8 = "Grüße, 世界 👋."


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, handler):
        super().__init__(addr, handler)
        self.lock = threading.Lock()
        self.connections = 0
        self.requests = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # Headers and body go as separate writes: without this, Nagle and
        # the client's delayed ACK add 40 ms to every response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.lock:
            self.server.connections += 1

    def log_message(self, fmt, *args):
        pass

    def send_json(self, status, obj, headers=()):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def event(self, obj):
        self.chunk(b"data: " + json.dumps(obj).encode() + b"\n\n")

    def cut(self):
        self.wfile.flush()
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close_connection = True

    def do_GET(self):
        self.send_json(404, {"error": {"message": "not found"}})

    def do_POST(self):
        try:
            self.post()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def post(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n)
        if self.path != "/v1/chat/completions":
            self.send_json(404, {"error": {"message": "no such path"}})
            return
        try:
            req = json.loads(raw)
        except ValueError as e:
            self.send_json(400, {"error": {"message": "bad JSON: %s" % e}})
            return
        with self.server.lock:
            self.server.requests += 1
            conns, reqs = self.server.connections, self.server.requests
        msgs = req.get("messages") or []
        last = msgs[-1].get("content", "") if msgs else ""
        m = re.search(r"mode=(\w+)", last)
        mode = m.group(1) if m else "normal"
        m = re.search(r"ms=(\d+)", last)
        ms = int(m.group(1)) if m else 2000
        stream = bool(req.get("stream"))
        usage = bool((req.get("stream_options") or {}).get("include_usage"))

        if mode in ("429", "503", "500", "400"):
            status = int(mode)
            text = {"429": "rate limited", "503": "warming up", "500": "boom",
                    "400": "bad request: unknown model"}[mode]
            hdrs = [("Retry-After", "2" if status == 429 else "1")] if status in (429, 503) else []
            self.send_json(status, {"error": {"message": text, "type": "test"}}, hdrs)
            return
        if mode == "slowhead":
            time.sleep(ms / 1000)
        if mode == "echo":
            answer = json.dumps({"request": req,
                                 "authorization": self.headers.get("Authorization")})
        elif mode == "stats":
            answer = "connections=%d requests=%d" % (conns, reqs)
        elif mode == "utf8":
            answer = UTF8
        else:
            answer = ANSWER
        if mode == "utf8":
            pieces = list(answer)
        else:
            pieces = re.findall(r"\s*\S+", answer) or [answer]
        u = {"prompt_tokens": 1000 + len(msgs), "completion_tokens": 100 + len(pieces),
             "total_tokens": 1100 + len(msgs) + len(pieces)}

        if not stream or mode == "plainjson":
            if mode == "trickle":
                time.sleep(6)
            body = {"id": "x", "object": "chat.completion", "model": req.get("model"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": answer}}]}
            if mode != "nousage":
                body["usage"] = u
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if mode == "slowbody":
                self.wfile.flush()
                time.sleep(ms / 1000)
            if mode == "cut":
                self.wfile.write(data[: len(data) // 2])
                self.cut()
                return
            self.wfile.write(data)
            self.wfile.flush()
            return

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        if mode == "slowbody":
            time.sleep(ms / 1000)
        if mode == "trickle":
            pieces = [" w%d" % i for i in range(30)]

        def delta(content, finish=None):
            return {"id": "x", "object": "chat.completion.chunk", "model": req.get("model"),
                    "choices": [{"index": 0, "delta": {"content": content},
                                 "finish_reason": finish}]}

        self.event({"id": "x", "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                 "finish_reason": None}]})
        for i, p in enumerate(pieces):
            if mode in ("cut", "nodone") and i == 2:
                break
            if mode == "midstream" and i == 1:
                self.event({"error": {"message": "out of KV cache", "code": 500}})
                self.chunk(b"data: [DONE]\n\n")
                self.wfile.write(b"0\r\n\r\n")
                return
            self.event(delta(p))
            if mode == "trickle":
                time.sleep(0.2)
            elif mode == "paced":
                time.sleep(0.02)
        if mode == "cut":
            self.cut()
            return
        if mode == "nodone":
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            return
        # The finish, then usage (its own chunk, choices empty), then [DONE];
        # a ": ping" comment and a CRLF event on the way, as servers do.
        self.chunk(b": ping\n\n")
        fin = delta("", "stop")
        self.chunk(b"data: " + json.dumps(fin).encode() + b"\r\n\r\n")
        if usage and mode != "nousage":
            self.event({"id": "x", "object": "chat.completion.chunk", "choices": [],
                        "usage": u})
        self.chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def main():
    srv = Server(("127.0.0.1", 0), Handler)
    print(srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
