#!/usr/bin/python3
"""A real 3-node nats-server JetStream cluster on loopback, for the replication tests.

    cluster = NatsCluster(n=3).start()     # temp store dirs, random free ports, routes
    cluster.urls                           # ["nats://127.0.0.1:p1", ...]
    cluster.stop_node(1); cluster.start_node(1)
    cluster.stop()                         # all nodes; removes the temp dir
    with NatsCluster() as c: ...

`start()` returns once every node reports the same JetStream meta leader (monitoring
/jsz). As a pytest fixture: `nats_cluster` (module scope) in test_replication.py uses it.

From the command line (prints the client URLs, runs until Ctrl-C or --seconds):
    /usr/bin/python3 tests/integration/nats_cluster.py [--nodes 3] [--seconds N]
With --control it reads commands on stdin, one a line, and answers "ok" (or "error ...")
on stdout, until "quit" or EOF (then it stops every node): "kill I", "stop I", "start I"
(waits for a meta leader), "stopall", "startall", "leader" (prints the meta leader).
The C unit tests (tests/unit/lineage/test_shipper.c) drive a cluster this way.

Also a minimal raw NATS client (no third-party module) to inspect a stream the way an
auditor's tool would: stream_info(url, stream) and stream_messages(url, stream), which
read every message by sequence with the JetStream API ($JS.API.STREAM.MSG.GET).
"""
import argparse
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

NATS_SERVER = os.environ.get("NATS_SERVER", shutil.which("nats-server") or "/usr/sbin/nats-server")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsCluster:
    def __init__(self, n=3, name="mgtest", base=None, extra_conf=""):
        self.n = n
        self.extra_conf = extra_conf  # appended to every node's configuration (e.g. tls {})
        self.name = name
        self.dir = base or tempfile.mkdtemp(prefix="mg-nats-")
        self.ports = [free_port() for _ in range(n)]
        self.cports = [free_port() for _ in range(n)]
        self.mports = [free_port() for _ in range(n)]
        self.procs = [None] * n
        self.urls = ["nats://127.0.0.1:%d" % p for p in self.ports]

    # -- nodes -------------------------------------------------------------------
    def _conf(self, i):
        routes = ", ".join("nats-route://127.0.0.1:%d" % self.cports[j]
                           for j in range(self.n) if j != i)
        store = os.path.join(self.dir, "n%d" % i)
        os.makedirs(store, exist_ok=True)
        conf = os.path.join(self.dir, "n%d.conf" % i)
        text = ("server_name: n%d\nlisten: 127.0.0.1:%d\nhttp: 127.0.0.1:%d\n"
                "jetstream { store_dir: \"%s\" }\n" % (i, self.ports[i], self.mports[i], store))
        if self.n > 1:
            text += ("cluster { name: %s, listen: 127.0.0.1:%d, routes: [%s] }\n"
                     % (self.name, self.cports[i], routes))
        text += self.extra_conf
        with open(conf, "w") as f:
            f.write(text)
        return conf

    def start_node(self, i):
        if self.procs[i] and self.procs[i].poll() is None:
            return
        log = open(os.path.join(self.dir, "n%d.log" % i), "ab")
        self.procs[i] = subprocess.Popen([NATS_SERVER, "-c", self._conf(i)],
                                         stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def stop_node(self, i, sig=signal.SIGTERM, timeout=10):
        p = self.procs[i]
        if not p or p.poll() is not None:
            return
        p.send_signal(sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)

    def kill_node(self, i):
        self.stop_node(i, signal.SIGKILL)

    # -- readiness -----------------------------------------------------------------
    def jsz(self, i, timeout=1.0):
        with urllib.request.urlopen("http://127.0.0.1:%d/jsz" % self.mports[i],
                                    timeout=timeout) as r:
            return json.loads(r.read())

    def meta_leader(self, i):
        try:
            j = self.jsz(i)
        except Exception:
            return None
        if self.n == 1:
            return "n0" if j.get("config") or j.get("memory") is not None else None
        return (j.get("meta_cluster") or {}).get("leader") or None

    def wait_ready(self, timeout=30, nodes=None):
        nodes = range(self.n) if nodes is None else nodes
        deadline = time.time() + timeout
        while time.time() < deadline:
            leaders = {self.meta_leader(i) for i in nodes}
            if len(leaders) == 1 and None not in leaders:
                return leaders.pop()
            time.sleep(0.2)
        raise RuntimeError("JetStream has no meta leader after %ss (logs in %s)"
                           % (timeout, self.dir))

    def start(self, timeout=30):
        for i in range(self.n):
            self.start_node(i)
        self.wait_ready(timeout)
        return self

    def stop(self, keep_dir=False):
        for i in range(self.n):
            self.stop_node(i)
        if not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def stop_all(self):
        """Stops every node but keeps the store (for an outage)."""
        for i in range(self.n):
            self.stop_node(i)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self):
        return ",".join(self.urls)


try:  # a fixture for tests that import it: `from nats_cluster import nats_cluster`
    import pytest

    @pytest.fixture(scope="module")
    def nats_cluster():
        if not os.path.exists(NATS_SERVER):
            pytest.skip("nats-server not installed")
        c = NatsCluster(3).start()
        yield c
        c.stop()
except ImportError:  # command-line use without pytest
    pass


# ---- a minimal NATS client ------------------------------------------------------------

class RawNats:
    """Just enough of the NATS protocol for request/reply to the JetStream API."""

    def __init__(self, url, timeout=5.0):
        url = url.split(",")[0]
        hp = url.split("://", 1)[-1]
        host, port = hp.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout)
        self.sock.settimeout(timeout)
        self.buf = b""
        self._line()  # INFO
        self.sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,'
                          b'"no_responders":true,"protocol":1}\r\nPING\r\n')
        self.sid = 0
        while self._line() != b"PONG":
            pass
        self.inbox = "_INBOX.mgtest%d" % os.getpid()
        self.sock.sendall(("SUB %s.* 1\r\n" % self.inbox).encode())
        self.n = 0

    def _fill(self):
        d = self.sock.recv(65536)
        if not d:
            raise ConnectionError("nats closed the connection")
        self.buf += d

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _bytes(self, n):
        while len(self.buf) < n + 2:
            self._fill()
        d, self.buf = self.buf[:n], self.buf[n + 2:]
        return d

    def request(self, subject, payload=b""):
        self.n += 1
        reply = "%s.%d" % (self.inbox, self.n)
        self.sock.sendall(("PUB %s %s %d\r\n" % (subject, reply, len(payload))).encode()
                          + payload + b"\r\n")
        while True:
            line = self._line()
            if line == b"PING":
                self.sock.sendall(b"PONG\r\n")
                continue
            parts = line.split()
            if not parts:
                continue
            if parts[0] == b"MSG":
                subj, size = parts[1].decode(), int(parts[-1])
                data = self._bytes(size)
                if subj == reply:
                    return data
            elif parts[0] == b"HMSG":
                subj, hsize, size = parts[1].decode(), int(parts[-2]), int(parts[-1])
                data = self._bytes(size)
                if subj == reply:
                    return data[hsize:] if b"503" not in data[:hsize] else b'{"error":503}'
            elif parts[0] == b"-ERR":
                raise RuntimeError(line.decode())

    def close(self):
        self.sock.close()


def parse_headers(raw):
    """NATS/1.0 header block -> dict (last value wins)."""
    out = {}
    for line in raw.decode().split("\r\n")[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


def stream_info(url, stream):
    c = RawNats(url)
    try:
        return json.loads(c.request("$JS.API.STREAM.INFO." + stream))
    finally:
        c.close()


def stream_messages(url, stream, subject_prefix=None):
    """Every message of the stream in sequence order: dicts with seq, subject, headers,
    data (bytes)."""
    c = RawNats(url)
    try:
        info = json.loads(c.request("$JS.API.STREAM.INFO." + stream))
        if "error" in info:
            raise RuntimeError(info["error"])
        st = info["state"]
        out = []
        for seq in range(st["first_seq"], st["last_seq"] + 1) if st["messages"] else []:
            r = json.loads(c.request("$JS.API.STREAM.MSG.GET." + stream,
                                     json.dumps({"seq": seq}).encode()))
            if "error" in r:
                continue  # deleted sequence
            m = r["message"]
            if subject_prefix and not m["subject"].startswith(subject_prefix):
                continue
            hdrs = parse_headers(base64.b64decode(m["hdrs"])) if m.get("hdrs") else {}
            out.append({"seq": m["seq"], "subject": m["subject"], "headers": hdrs,
                        "data": base64.b64decode(m.get("data") or "")})
        return out
    finally:
        c.close()


def origin_token_decode(tok):
    """Inverse of the shipper's subject token encoding (%XX)."""
    out = bytearray()
    i = 0
    while i < len(tok):
        if tok[i] == "%":
            out.append(int(tok[i + 1:i + 3], 16))
            i += 3
        else:
            out += tok[i].encode()
            i += 1
    return out.decode()


def entries_by_origin(msgs):
    """{origin: [entry line, ...] in stream order} and {origin: [checkpoint sizes]}."""
    entries, cps = {}, {}
    for m in msgs:
        kind = m["headers"].get("Mg-Kind")
        if not kind:
            continue
        origin = origin_token_decode(m["subject"].rsplit(".", 1)[-1])
        if kind == "checkpoint":
            cps.setdefault(origin, []).append(int(m["headers"]["Mg-Size"]))
        else:
            lines = m["data"].decode().split("\n")
            assert lines[-1] == "", "body must end with LF"
            entries.setdefault(origin, []).extend(lines[:-1])
    return entries, cps


def control(c):
    for line in sys.stdin:
        w = line.split()
        if not w:
            continue
        try:
            if w[0] == "quit":
                break
            elif w[0] == "kill":
                c.kill_node(int(w[1]))
            elif w[0] == "stop":
                c.stop_node(int(w[1]))
            elif w[0] == "start":
                c.start_node(int(w[1]))
                c.wait_ready()
            elif w[0] == "stopall":
                c.stop_all()
            elif w[0] == "startall":
                c.start()
            elif w[0] == "leader":
                print(c.wait_ready(), flush=True)
                continue
            else:
                raise ValueError("unknown command " + w[0])
            print("ok", flush=True)
        except Exception as e:  # answer instead of dying: the caller reads one line
            print("error %s" % e, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=0, help="stop after N s (0: until Ctrl-C)")
    ap.add_argument("--control", action="store_true", help="read commands on stdin")
    a = ap.parse_args()
    c = NatsCluster(a.nodes)
    stop = []
    signal.signal(signal.SIGTERM, lambda *x: stop.append(1))
    try:
        c.start()
        print(c.url, flush=True)
        if a.control:
            control(c)
            return 0
        deadline = time.time() + a.seconds if a.seconds else None
        while not stop and (deadline is None or time.time() < deadline):
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        c.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
