"""tt.py -- what the Python integration tests share: checks counted and
printed like tests/harness/tt.h ("ok NAME" / "FAIL NAME: detail", then
"tt: FILE: N passed, N failed"), and a free loopback port."""
import socket
import sys

passed = 0
failed = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print("ok   " + name)
    else:
        failed += 1
        print("FAIL " + name + (": " + str(detail)[:2000] if detail else ""), file=sys.stderr)
    return cond


def free_port():
    """A loopback port nothing listens on now (the kernel's pick)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def summary(name):
    """Prints the tt line; returns the exit status."""
    print("tt: %s: %d passed, %d failed" % (name, passed, failed))
    return 1 if failed else 0


def post_stream(port, pipeline, body, accept="application/x-ndjson", close_after=None):
    """POSTs body (a dict) to /v1/pipelines/PIPELINE asking for a stream;
    returns (status line + headers, de-chunked payload), or (bytes read,
    None) when close_after is set: the client hangs up once that many
    bytes came."""
    import json
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    b = json.dumps(body).encode()
    s.sendall(b"POST /v1/pipelines/%s HTTP/1.1\r\nHost: x\r\nAccept: %s\r\nContent-Length: %d\r\n"
              b"Connection: close\r\n\r\n%s" % (pipeline.encode(), accept.encode(), len(b), b))
    data = b""
    while True:
        if close_after is not None and len(data) >= close_after:
            s.close()
            return data, None
        x = s.recv(65536)
        if not x:
            break
        data += x
    s.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    payload = b""
    while rest:
        line, _, rest = rest.partition(b"\r\n")
        size = int(line, 16)
        if size == 0:
            break
        payload += rest[:size]
        rest = rest[size + 2:]
    return head, payload


def ndjson(payload):
    """The events of an NDJSON payload."""
    import json
    return [json.loads(l) for l in payload.decode().splitlines() if l]


def get(port, path, timeout=10):
    """GET path on 127.0.0.1:port: (status, parsed JSON or the text)."""
    import http.client
    import json
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("GET", path)
    r = c.getresponse()
    data = r.read()
    c.close()
    ct = r.getheader("Content-Type", "")
    return r.status, json.loads(data) if ct.startswith("application/json") else data.decode()


def post(port, pipeline, body, timeout=15, headers=None):
    """POSTs body (a dict, as JSON) to /v1/pipelines/PIPELINE on
    127.0.0.1:port: (status, parsed JSON or the bytes)."""
    import http.client
    import json
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("POST", "/v1/pipelines/" + pipeline, body=json.dumps(body), headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    try:
        return r.status, json.loads(data)
    except ValueError:
        return r.status, data


def wait_for(fn, secs, step=0.05):
    """Seconds until fn() is true (errors of a node not up yet count as
    false), or None after secs."""
    import http.client
    import time
    t0 = time.time()
    while time.time() - t0 < secs:
        try:
            if fn():
                return time.time() - t0
        except (OSError, ValueError, KeyError, http.client.HTTPException):
            pass
        time.sleep(step)
    return None


def cluster_states(port):
    """{member name: state} from GET /v1/cluster on 127.0.0.1:port; {}
    while the node does not answer."""
    import http.client
    try:
        st, j = get(port, "/v1/cluster")
        return {m["name"]: m["state"] for m in j["members"]} if st == 200 else {}
    except (OSError, ValueError, KeyError, http.client.HTTPException):
        return {}
