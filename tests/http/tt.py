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
