"""h2raw.py — a raw HTTP/2 frame client and the targets the security tests attack.

python3-h2 refuses to send most of what an attacker sends (bad pseudo-headers, CR/LF in
values, frames on the wrong stream, floods without reading), so RawH2 writes frames byte by
byte: frames are built with struct, header blocks with hpack's Encoder (which encodes
whatever it is given), or given as raw HPACK bytes. It reads what the server sends back,
acknowledges SETTINGS, optionally opens flow-control windows, decodes response header
blocks and records per stream: headers, status, body, RST_STREAM code, END_STREAM; per
connection: GOAWAY (last stream id, error code) and whether the socket closed.

    c = RawH2(port)                       # preface + SETTINGS, reads the server's SETTINGS
    sid = c.request("/datasets/x", headers=[("x-a", "b")])
    st = c.wait_stream(sid)               # {"status": 200, "body": b"...", "rst": None, ...}
    c.send_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0))
    c.wait_conn_error()                   # -> ("goaway", PROTOCOL_ERROR) or ("closed", None)

Targets (start_target): the real `meshgate serve` (conftest.Gateway with limits and routes
for the attacks) when the binary exists, else the passthrough program (the same transport
with a trivial pipeline), so the HTTP/2-level attacks run against whichever is built.
Network: 127.0.0.1 only; every socket has a timeout; every process is stopped.
"""
import contextlib
import json
import os
import socket
import struct
import sys
import time
import uuid

import hpack

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
# flags
END_STREAM, ACK, END_HEADERS, PADDED, PRIO = 0x1, 0x1, 0x4, 0x8, 0x20
# error codes (RFC 9113 §7)
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, SETTINGS_TIMEOUT, \
    STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, \
    CONNECT_ERROR, ENHANCE_YOUR_CALM, INADEQUATE_SECURITY, HTTP_1_1_REQUIRED = range(14)
ERRNAME = {v: k for k, v in dict(
    NO_ERROR=0, PROTOCOL_ERROR=1, INTERNAL_ERROR=2, FLOW_CONTROL_ERROR=3, SETTINGS_TIMEOUT=4,
    STREAM_CLOSED=5, FRAME_SIZE_ERROR=6, REFUSED_STREAM=7, CANCEL=8, COMPRESSION_ERROR=9,
    CONNECT_ERROR=10, ENHANCE_YOUR_CALM=11, INADEQUATE_SECURITY=12,
    HTTP_1_1_REQUIRED=13).items()}
# settings
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS, S_INITIAL_WINDOW_SIZE, \
    S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = range(1, 7)


def frame(ftype, flags, sid, payload=b""):
    """One frame's bytes (length from the payload; the R bit is whatever sid carries)."""
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", sid & 0xffffffff) + payload


def settings_payload(pairs):
    return b"".join(struct.pack(">HI", k, v) for k, v in pairs)


def hpack_int(value, prefix_bits, first_byte_flags=0):
    """RFC 7541 §5.1 integer encoding (for hand-made header blocks)."""
    maxp = (1 << prefix_bits) - 1
    if value < maxp:
        return bytes([first_byte_flags | value])
    out = [first_byte_flags | maxp]
    value -= maxp
    while value >= 128:
        out.append((value & 0x7f) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name, value, index=False):
    """A literal header field with a literal name, not Huffman-coded; with index=True it is
    added to the dynamic table (RFC 7541 §6.2.1), else 'without indexing' (§6.2.2)."""
    if isinstance(name, str):
        name = name.encode("latin-1")
    if isinstance(value, str):
        value = value.encode("latin-1")
    return (b"\x40" if index else b"\x00") + hpack_int(len(name), 7) + name + \
        hpack_int(len(value), 7) + value


class RawH2:
    """A blocking raw-frame HTTP/2 client. See the module docstring."""

    def __init__(self, port, preface=True, settings=((S_ENABLE_PUSH, 0),), timeout=5,
                 autowindow=True, rcvbuf=None, read_settings=True):
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()
        self.dec.max_allowed_table_size = 65536
        self.autowindow = autowindow
        self.buf = b""
        self.frames = []          # every frame received: (type, flags, sid, payload)
        self.streams = {}
        self.goaway = None        # (last_stream_id, error_code, debug)
        self.closed = False
        self.server_settings = {}
        self.pings = []           # payloads of PING ACKs received
        self.next_sid = 1
        self._hblock = None       # (sid, flags, bytes) while a header block is open
        self.decode_error = None
        if preface:
            self.send(PREFACE + frame(SETTINGS, 0, 0, settings_payload(settings or ())))
            if read_settings:
                self.pump(lambda: bool(self.server_settings) or self.closed, 5)

    # ---- sending ----
    def send(self, data):
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError, socket.timeout, OSError):
            self.closed = True
            return False

    def send_frame(self, ftype, flags, sid, payload=b""):
        return self.send(frame(ftype, flags, sid, payload))

    def block(self, headers):
        """HPACK bytes of a header list (the Encoder does not validate names or values)."""
        return self.enc.encode([(k.encode("latin-1") if isinstance(k, str) else k,
                                 v.encode("latin-1") if isinstance(v, str) else v)
                                for k, v in headers])

    def req_headers(self, path, method="GET", authority="localhost", extra=(), scheme="http"):
        return [(":method", method), (":scheme", scheme), (":authority", authority),
                (":path", path)] + list(extra)

    def new_sid(self):
        sid = self.next_sid
        self.next_sid += 2
        return sid

    def _track(self, sid):
        return self.streams.setdefault(sid, {"status": None, "headers": [], "body": b"",
                                             "trailers": [], "ended": False, "rst": None})

    def headers(self, sid, headers=None, end_stream=True, end_headers=True, raw=None,
                pad=None, priority=None, split=None):
        """HEADERS on sid from a header list or raw HPACK bytes. pad: padding length
        (PADDED flag); priority: (dep, weight, exclusive) (PRIORITY flag); split: the
        largest fragment, the rest follows in CONTINUATION frames."""
        blk = raw if raw is not None else self.block(headers)
        if split and len(blk) > split and end_headers:
            parts = [blk[i:i + split] for i in range(0, len(blk), split)]
            self.headers(sid, raw=parts[0], end_stream=end_stream, end_headers=False,
                         pad=pad, priority=priority)
            for i, p in enumerate(parts[1:]):
                self.continuation(sid, p, end_headers=(i == len(parts) - 2))
            return not self.closed
        flags = (END_STREAM if end_stream else 0) | (END_HEADERS if end_headers else 0)
        payload = blk
        if priority is not None:
            dep, weight, excl = priority
            payload = struct.pack(">IB", dep | (0x80000000 if excl else 0), weight) + payload
            flags |= PRIO
        if pad is not None:
            payload = bytes([pad]) + payload + b"\x00" * pad
            flags |= PADDED
        self._track(sid & 0x7fffffff)
        return self.send_frame(HEADERS, flags, sid, payload)

    def continuation(self, sid, raw, end_headers=True):
        return self.send_frame(CONTINUATION, END_HEADERS if end_headers else 0, sid, raw)

    def data(self, sid, data, end_stream=False, pad=None):
        flags = END_STREAM if end_stream else 0
        payload = data
        if pad is not None:
            payload = bytes([pad]) + data + b"\x00" * pad
            flags |= PADDED
        return self.send_frame(DATA, flags, sid, payload)

    def rst(self, sid, code=CANCEL):
        return self.send_frame(RST_STREAM, 0, sid, struct.pack(">I", code))

    def ping(self, payload=b"12345678", ack=False):
        return self.send_frame(PING, ACK if ack else 0, 0, payload)

    def settings(self, pairs=(), ack=False):
        return self.send_frame(SETTINGS, ACK if ack else 0, 0, settings_payload(pairs))

    def window_update(self, sid, inc):
        return self.send_frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", inc))

    def priority(self, sid, dep=0, weight=15, excl=False):
        return self.send_frame(PRIORITY, 0, sid,
                               struct.pack(">IB", dep | (0x80000000 if excl else 0), weight))

    def request(self, path, method="GET", headers=(), body=None, end=True, sid=None,
                authority="localhost"):
        """A normal request (HPACK-encoded, valid unless headers say otherwise)."""
        sid = sid or self.new_sid()
        hdrs = self.req_headers(path, method, authority, headers)
        self.headers(sid, hdrs, end_stream=(body is None and end), split=16384)
        if body is not None:
            for i in range(0, len(body), 16384):
                self.data(sid, body[i:i + 16384], end_stream=end and i + 16384 >= len(body))
            if not body and end:
                self.data(sid, b"", end_stream=True)
        return sid

    # ---- receiving ----
    def _recv(self, timeout):
        self.sock.settimeout(max(0.01, timeout))
        try:
            data = self.sock.recv(1 << 20)
        except socket.timeout:
            return None
        except (ConnectionResetError, OSError):
            data = b""
        if not data:
            self.closed = True
            return b""
        return data

    def _frames(self):
        while len(self.buf) >= 9:
            n = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + n:
                return
            t, fl = self.buf[3], self.buf[4]
            sid = int.from_bytes(self.buf[5:9], "big") & 0x7fffffff
            payload = self.buf[9:9 + n]
            self.buf = self.buf[9 + n:]
            self.frames.append((t, fl, sid, payload))
            self._on_frame(t, fl, sid, payload)

    def _strip_pad(self, fl, payload):
        if fl & PADDED:
            pl = payload[0]
            payload = payload[1:len(payload) - pl]
        return payload

    def _on_frame(self, t, fl, sid, payload):
        if t == SETTINGS:
            if not fl & ACK:
                for i in range(0, len(payload) - 5, 6):
                    k, v = struct.unpack(">HI", payload[i:i + 6])
                    self.server_settings[k] = v
                if not self.server_settings:
                    self.server_settings[0] = 0  # an empty SETTINGS still counts as seen
                self.send_frame(SETTINGS, ACK, 0)
        elif t == PING:
            if fl & ACK:
                self.pings.append(payload)
            else:
                self.send_frame(PING, ACK, 0, payload)
        elif t == GOAWAY:
            last, code = struct.unpack(">II", payload[:8])
            self.goaway = (last & 0x7fffffff, code, payload[8:])
        elif t == RST_STREAM:
            self._track(sid)["rst"] = struct.unpack(">I", payload[:4])[0]
        elif t == DATA:
            st = self._track(sid)
            st["body"] += self._strip_pad(fl, payload)
            if fl & END_STREAM:
                st["ended"] = True
            if self.autowindow and payload:
                self.window_update(0, len(payload))
                if not fl & END_STREAM:
                    self.window_update(sid, len(payload))
        elif t in (HEADERS, CONTINUATION):
            if t == HEADERS:
                p = self._strip_pad(fl, payload)
                if fl & PRIO:
                    p = p[5:]
                self._hblock = (sid, fl, p)
            elif self._hblock:
                s0, f0, b0 = self._hblock
                self._hblock = (s0, f0 | (fl & END_HEADERS), b0 + payload)
            if self._hblock and self._hblock[1] & END_HEADERS:
                s0, f0, blk = self._hblock
                self._hblock = None
                st = self._track(s0)
                try:
                    hdrs = [(k.decode("latin-1") if isinstance(k, bytes) else k,
                             v.decode("latin-1") if isinstance(v, bytes) else v)
                            for k, v in self.dec.decode(blk, raw=True)]
                except Exception as ex:  # noqa: BLE001 - record, the test decides
                    self.decode_error = ex
                    hdrs = []
                if st["status"] is None:
                    st["headers"] = hdrs
                    for k, v in hdrs:
                        if k == ":status":
                            st["status"] = int(v)
                    if st["status"] is not None and st["status"] < 200:
                        st["status"] = None  # interim (100-continue)
                else:
                    st["trailers"] = hdrs
                if f0 & END_STREAM:
                    st["ended"] = True

    def pump(self, done=lambda: False, timeout=5):
        """Reads and handles frames until done() is true, the socket closes or timeout."""
        deadline = time.time() + timeout
        while not done() and not self.closed:
            left = deadline - time.time()
            if left <= 0:
                break
            data = self._recv(min(left, 0.5))
            if data is None:
                continue
            self.buf += data
            self._frames()
        return done()

    def wait_stream(self, sid, timeout=10):
        st = self._track(sid)
        self.pump(lambda: st["ended"] or st["rst"] is not None or self.goaway is not None,
                  timeout)
        return st

    def wait_conn_error(self, timeout=5):
        """('goaway', code) once a GOAWAY arrived (then waits briefly for the close), or
        ('closed', None) when the socket closed without one, or (None, None) on timeout."""
        self.pump(lambda: self.goaway is not None, timeout)
        if self.goaway is not None:
            return "goaway", self.goaway[1]
        if self.closed:
            return "closed", None
        return None, None

    def header(self, sid, name):
        for k, v in self.streams[sid]["headers"]:
            if k == name:
                return v
        return None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def stream_or_conn_error(c, sid, code, timeout=5):
    """True when the peer answered `sid` with RST_STREAM(code) or the connection with
    GOAWAY(code) (RFC 9113 §5.4: an endpoint may always escalate a stream error)."""
    c.pump(lambda: c.streams.get(sid, {}).get("rst") is not None or c.goaway is not None
           or c.closed, timeout)
    st = c.streams.get(sid, {})
    if st.get("rst") is not None:
        return st["rst"] == code
    if c.goaway is not None:
        return c.goaway[1] == code
    return False


# ---------------------------------------------------------------------------- targets

def _proc_stat(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return fields


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    f = _proc_stat(pid)
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def nthreads(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return -1


def real_binary():
    """The meshgate binary to use: $MESHGATE_BIN, else build/sidecar/meshgate (mgtest's
    default), else the newest linked build*/sidecar/meshgate; None when there is none."""
    import glob
    env = os.environ.get("MESHGATE_BIN")
    if env:
        return env if os.access(env, os.X_OK) else None
    root = os.path.dirname(os.path.dirname(HERE))
    default = os.path.join(root, "build", "sidecar", "meshgate")
    if os.access(default, os.X_OK):
        return default
    cands = [c for c in glob.glob(os.path.join(root, "build*", "sidecar", "meshgate"))
             if os.access(c, os.X_OK) and "asan" not in c and "fuzz" not in c]
    return max(cands, key=os.path.getmtime) if cands else None


# Routes for the attacks: the product's generic endpoints open (auth none) so the transport
# can be driven without a token; /datasets/ needs token + grant as in production.
ATTACK_ROUTES = [{"prefix": "/datasets/", "dataset": "segment:2"},
                 {"prefix": "/healthz", "auth": "none"},
                 {"prefix": "/echo", "auth": "none"},
                 {"prefix": "/big", "auth": "none"},
                 {"prefix": "/slow", "auth": "none"},
                 {"prefix": "/upload", "auth": "none"},
                 {"prefix": "/headers", "auth": "none"},
                 {"prefix": "/reset", "auth": "none"}]

LIMIT_FLAGS = {"max_concurrent_streams": "--max-streams", "max_header_list_bytes":
               "--max-header-bytes", "idle_timeout_s": "--idle-timeout",
               "failed_verifies_per_conn": "--failed-verifies",
               "max_body_buffer": "--max-body-buffer"}


class Target:
    """What a test attacks: .kind ('meshgate'|'passthrough'), .port, .pid, .auth (headers
    an allowed /datasets/orders_fact/ read needs), .gw (conftest.Gateway or None)."""

    def __init__(self):
        self.gw = None
        self.proxy = None
        self.up = None
        self.auth = []

    @property
    def real(self):
        return self.kind == "meshgate"

    def ok_path(self, tag="t"):
        return "/datasets/orders_fact/%s-%s" % (tag, uuid.uuid4().hex[:12])

    def upstream_requests(self):
        if self.gw:
            return self.gw.upstream_requests()
        return [r for r in self.up.requests() if not r.get("done")]

    def upstream_done(self):
        path = self.gw.up.log_path if self.gw else self.up.log_path
        out = []
        if os.path.exists(path):
            with open(path) as f:
                out = [json.loads(l) for l in f if l.strip()]
        return [r for r in out if r.get("done")]

    def upstream_saw(self, marker):
        return [r for r in self.upstream_requests() if marker in r["path"]]

    def alive(self):
        p = self.gw.mg.proc if self.gw else self.proxy.proc
        return p.poll() is None

    def serves(self, timeout=10):
        """A fresh connection gets an allowed request through to the product."""
        c = RawH2(self.port)
        try:
            path = self.ok_path("alive")
            st = c.wait_stream(c.request(path, headers=self.auth), timeout)
            return st["status"] == 200 and len(self.upstream_saw(path)) == 1
        finally:
            c.close()

    def entries(self):
        return self.gw.entries() if self.gw else None

    def stop(self):
        """Stops everything; returns sanitizer reports found in the server's output."""
        if self.gw:
            self.gw.close()
            text = _log_text(self.gw.mg)
        else:
            text = ""
        if self.proxy:
            self.proxy.stop()
            text = self.proxy.stderr()
        if self.up:
            self.up.stop()
        return [ln for ln in text.splitlines()
                if "AddressSanitizer" in ln or "LeakSanitizer" in ln or "runtime error:" in ln]


def _log_text(mg):
    import mgtest
    return mgtest.log_text(mg)


@contextlib.contextmanager
def _http1_upstream():
    import mgtest
    orig = mgtest.start_upstream

    def h1(d, http1=False):
        return orig(d, http1=True)
    mgtest.start_upstream = h1
    try:
        yield
    finally:
        mgtest.start_upstream = orig


def start_target(tmpdir, limits=None, http1=False, overrides=None, routes=ATTACK_ROUTES):
    """The real meshgate when linked (conftest.Gateway with these limits and routes, and an
    HTTP/1.1 upstream when http1), else the passthrough program with the same limits."""
    limits = dict(limits or {})
    t = Target()
    binary = real_binary()
    if binary:
        os.environ["MESHGATE_BIN"] = binary
        import conftest
        ov = {"limits": limits, "routes": routes}
        if http1:
            ov["upstream"] = {"protocol": "http1"}
        if overrides:
            import mgtest
            mgtest._merge(ov, overrides)
        if http1:
            with _http1_upstream():
                t.gw = conftest.Gateway(tmpdir, ov)
        else:
            t.gw = conftest.Gateway(tmpdir, ov)
        t.kind = "meshgate"
        t.port = t.gw.mg.data_port
        t.pid = t.gw.mg.proc.pid
        t.auth = [("authorization", "Bearer " + t.gw.issuer.es256(
            sub="alice", groups=["analysts"], exp_in=3600)), ("x-mesh-purpose", "analytics")]
        return t
    import conftest_transport as ct
    pt = ct.find_passthrough()
    if not pt:
        import pytest
        pytest.skip("neither meshgate nor passthrough is built")
    t.up = ct.Upstream(tmpdir, http1=http1)
    args = []
    for k, v in limits.items():
        if k in LIMIT_FLAGS:
            args += [LIMIT_FLAGS[k], str(v)]
    if http1:
        args += ["--protocol", "http1"]
    t.proxy = ct.Proxy(pt, t.up.address, "--workers", "1", *args)
    t.kind = "passthrough"
    t.port = t.proxy.port
    t.pid = t.proxy.pid
    return t
