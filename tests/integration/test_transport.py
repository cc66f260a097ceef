"""Transport tests: the real passthrough program (meshgate's transport with a trivial
pipeline) between real clients (curl, nghttp, h2load, python3-h2, grpcio) and a real
upstream (upstream.py, or a grpcio server).

Run: /usr/bin/python3 -m pytest tests/integration/test_transport.py
"""
import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest

from upstream import gen  # noqa: E402
from conftest_transport import (Upstream, curl, free_port, passthrough_bin, pki,  # noqa: F401
                                proxies, upstream, upstream_h1)

GIB = 1 << 30
SHA256_GIB_ZEROS = "49bc20df15e412a64472421e13fe86ff1c5165e18b2afccf160d4dc19fe68a14"
# sanitizer builds need more; override with MG_RSS_LIMIT_KB
RSS_LIMIT_KB = int(os.environ.get("MG_RSS_LIMIT_KB", 64 * 1024))


class H2Client:
    """A minimal blocking HTTP/2 client over python3-h2, for what curl cannot do
    (several requests on one connection across a signal, duplicate fields, raw limits)."""

    def __init__(self, port, tls=None, ack=True):
        self.ack = ack  # False: never open flow-control windows (a client that does not read)
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if tls:
            s = tls.wrap_socket(s, server_hostname="localhost")
        self.sock = s
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                      validate_outbound_headers=False,
                                      normalize_outbound_headers=False))
        self.conn.initiate_connection()
        self.streams = {}
        self.goaway = None
        self.closed = False
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, path, headers=(), body=None, method=None, authority="localhost",
                end=True):
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method or ("POST" if body is not None or not end else "GET")),
                (":scheme", "http"), (":authority", authority), (":path", path)] + list(headers)
        self.conn.send_headers(sid, hdrs, end_stream=body is None and end)
        if body is not None:
            self.pending = getattr(self, "pending", {})
            self.pending[sid] = memoryview(body)
            self.send_pending()
        self.streams[sid] = {"status": None, "headers": [], "body": b"", "trailers": [],
                             "ended": False, "reset": None}
        self.flush()
        return sid

    def send_pending(self):
        """Sends queued request bodies as far as the peer's windows allow."""
        for sid, view in list(getattr(self, "pending", {}).items()):
            while view:
                try:
                    n = min(self.conn.local_flow_control_window(sid),
                            self.conn.max_outbound_frame_size, len(view))
                except Exception:
                    view = memoryview(b"")
                    break
                if n <= 0:
                    break
                try:
                    self.conn.send_data(sid, bytes(view[:n]))
                except h2.exceptions.StreamClosedError:  # reset by the server: stop
                    view = memoryview(b"")
                    break
                view = view[n:]
            if view:
                self.pending[sid] = view
            else:
                del self.pending[sid]
                try:
                    self.conn.end_stream(sid)
                except Exception:
                    pass
        self.flush()

    def pump(self, done, timeout=10):
        deadline = time.time() + timeout
        while not done() and not self.closed and time.time() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.time()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                break
            except (ConnectionError, ssl.SSLError, OSError):
                data = b""
            if not data:
                self.closed = True
                break
            try:
                events = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                self.closed = True
                break
            for ev in events:
                st = self.streams.get(getattr(ev, "stream_id", None))
                if isinstance(ev, h2.events.ResponseReceived):
                    st["headers"] = ev.headers
                    st["status"] = int(dict(ev.headers)[":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    st["body"] += ev.data
                    if self.ack:
                        self.conn.acknowledge_received_data(ev.flow_controlled_length,
                                                            ev.stream_id)
                elif isinstance(ev, h2.events.TrailersReceived):
                    st["trailers"] = ev.headers
                elif isinstance(ev, h2.events.StreamEnded):
                    st["ended"] = True
                elif isinstance(ev, h2.events.StreamReset):
                    if st is not None:
                        st["reset"] = ev.error_code
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    self.goaway = ev
            self.send_pending()
        return done()

    def wait(self, sid, timeout=10):
        st = self.streams[sid]
        self.pump(lambda: st["ended"] or st["reset"] is not None, timeout)
        return st

    def get(self, path, headers=(), timeout=10, **kw):
        return self.wait(self.request(path, headers, **kw), timeout)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def hdr(st, name):
    for k, v in st["headers"]:
        if k == name:
            return v
    return None


# ----------------------------------------------------------------------------- basics

def test_h2c_get_forwards_and_strips(passthrough_bin, upstream, proxies):
    p = proxies(passthrough_bin, upstream.address)
    r = curl("--http2-prior-knowledge", "-D", "-", p.url + "/datasets/orders/2024?x=1",
             "-H", "x-mesh-principal: user:evil", "-H", "X-Forwarded-For: 1.2.3.4",
             "-H", "forwarded: for=1.2.3.4", "-H", "x-real-ip: 1.2.3.4",
             "-H", "x-http-method-override: DELETE", "-H", "authorization: Bearer abc",
             "-H", "x-keep: yes", check=True)
    out = r.stdout.decode()
    assert out.startswith("HTTP/2 200")
    assert json.loads(out.split("\r\n\r\n", 1)[1])["path"] == "/datasets/orders/2024?x=1"
    seen = upstream.last("/datasets/orders")
    names = [k for k, _ in seen["headers"]]
    h = dict(seen["headers"])
    assert h[":path"] == "/datasets/orders/2024?x=1"
    assert h[":scheme"] == "http" and h[":authority"] == "127.0.0.1:%d" % p.port
    assert h["x-keep"] == "yes"
    assert len(h["x-request-id"]) == 36
    # inbound x-mesh-* is gone, only the pipeline's own value arrives
    assert [v for k, v in seen["headers"] if k == "x-mesh-principal"] == ["passthrough"]
    for gone in ("x-forwarded-for", "forwarded", "x-real-ip", "x-http-method-override",
                 "authorization", "host"):
        assert gone not in names


def test_forward_token_keeps_authorization(passthrough_bin, upstream, proxies):
    p = proxies(passthrough_bin, upstream.address, "--forward-token")
    curl("--http2-prior-knowledge", p.url + "/datasets/t", "-H", "authorization: Bearer abc",
         check=True)
    assert dict(upstream.last("/datasets/t")["headers"])["authorization"] == "Bearer abc"


def test_local_response_and_async_post(passthrough_bin, upstream, proxies):
    p = proxies(passthrough_bin, upstream.address)
    r = curl("--http2-prior-knowledge", "-w", "%{http_code}", p.url + "/__local404/x")
    assert r.stdout.decode().endswith("404")
    assert json.loads(r.stdout.decode()[:-3])["error"] == "not_found"
    assert upstream.last("/__local404") is None
    # forwarded later from another thread through mg_worker_post + mg_worker_find_req
    r = curl("--http2-prior-knowledge", p.url + "/__async/datasets/late", check=True)
    assert json.loads(r.stdout)["path"] == "/datasets/late"


def test_nghttp_concurrent_streams(passthrough_bin, upstream, proxies):
    p = proxies(passthrough_bin, upstream.address)
    urls = [p.url + "/datasets/n%d" % i for i in range(20)]
    r = subprocess.run(["nghttp", "-n", "-s"] + urls, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=30)
    assert r.returncode == 0, r.stderr
    assert len([x for x in upstream.requests() if x["path"].startswith("/datasets/n")]) == 20


def test_h2load_short_run(passthrough_bin, upstream, proxies):
    p = proxies(passthrough_bin, upstream.address)
    r = subprocess.run(["h2load", "-n", "2000", "-c", "4", "-m", "10", p.url + "/datasets/load"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    out = r.stdout.decode()
    assert "2000 succeeded, 0 failed, 0 errored" in out, out
    assert "status codes: 2000 2xx" in out, out


# ----------------------------------------------------------------------------- TLS

def test_tls_alpn_and_spiffe(passthrough_bin, upstream, proxies, pki):
    p = proxies(passthrough_bin, upstream.address, "--tls-cert", pki + "/server.pem",
                "--tls-key", pki + "/server.key", "--tls-ca", pki + "/ca.pem")
    url = "https://localhost:%d" % p.port
    r = curl("--cacert", pki + "/ca.pem", url + "/datasets/tls", check=True)
    assert json.loads(r.stdout)["path"] == "/datasets/tls"
    # h2 only: a client that cannot negotiate h2 is refused during the handshake
    r = curl("--http1.1", "--cacert", pki + "/ca.pem", url + "/datasets/tls")
    assert r.returncode != 0
    # verified client certificate -> SPIFFE ID reaches the pipeline
    r = curl("--cacert", pki + "/ca.pem", "--cert", pki + "/client.pem", "--key",
             pki + "/client.key", "-D", "-", url + "/__whoami", check=True)
    out = r.stdout.decode()
    assert "x-test-spiffe: spiffe://mesh.test/ns/analytics/sa/reporter" in out
    body = json.loads(out.split("\r\n\r\n", 1)[1])
    assert body["tls"] is True and body["spiffe"] == "spiffe://mesh.test/ns/analytics/sa/reporter"
    # a certificate without a URI SAN is no identity; no certificate neither
    for extra in (["--cert", pki + "/nospiffe.pem", "--key", pki + "/nospiffe.key"], []):
        r = curl("--cacert", pki + "/ca.pem", *extra, url + "/__whoami", check=True)
        assert json.loads(r.stdout)["spiffe"] == ""
    # nghttp over TLS as well
    r = subprocess.run(["nghttp", "-s", url + "/datasets/ng"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=20,
                       env=dict(os.environ, SSL_CERT_FILE=pki + "/ca.pem"))
    assert r.returncode == 0, r.stderr


def test_tls_client_cert_required(passthrough_bin, upstream, proxies, pki):
    p = proxies(passthrough_bin, upstream.address, "--tls-cert", pki + "/server.pem",
                "--tls-key", pki + "/server.key", "--tls-ca", pki + "/ca.pem",
                "--client-cert", "required")
    url = "https://localhost:%d" % p.port
    assert curl("--cacert", pki + "/ca.pem", url + "/datasets/x").returncode != 0
    r = curl("--cacert", pki + "/ca.pem", "--cert", pki + "/admin.pem", "--key",
             pki + "/admin.key", url + "/__whoami", check=True)
    assert json.loads(r.stdout)["spiffe"] == "spiffe://mesh.test/ns/platform/sa/admin"


# ----------------------------------------------------------------------------- streaming

def test_1gib_download_bounded_memory(passthrough_bin, upstream, proxies):
    p = proxies(passthrough_bin, upstream.address)
    t = time.time()
    r = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
             p.url + "/big?bytes=%d" % GIB, timeout=120, check=True)
    assert r.stdout.decode() == "200 %d" % GIB
    hwm = p.hwm_kb()
    print("1 GiB download: %.1f s, proxy VmHWM %d kB" % (time.time() - t, hwm))
    assert hwm < RSS_LIMIT_KB


def test_big_upload_bounded_memory(passthrough_bin, upstream, proxies, tmp_path):
    p = proxies(passthrough_bin, upstream.address)
    # The Python upstream (python3-h2) is the slow end of an upload, 2-5x slower than the
    # proxy on a busy box, so the default is 256 MiB; MG_UPLOAD_BYTES=1073741824 for 1 GiB.
    n = int(os.environ.get("MG_UPLOAD_BYTES", 256 << 20))
    f = tmp_path / "zeros"
    with open(f, "wb") as fh:  # sparse: zeros that cost no disk
        fh.truncate(n)
    want = SHA256_GIB_ZEROS if n == GIB else None
    if want is None:
        h = hashlib.sha256()
        chunk = bytes(1 << 20)
        for _ in range(n // len(chunk)):
            h.update(chunk)
        h.update(bytes(n % len(chunk)))
        want = h.hexdigest()
    t = time.time()
    r = curl("--http2-prior-knowledge", "-T", str(f), "-X", "POST", p.url + "/upload",
             timeout=180, check=True)
    assert json.loads(r.stdout) == {"bytes": n, "sha256": want}
    hwm = p.hwm_kb()
    print("%d MiB upload: %.1f s, proxy VmHWM %d kB" % (n >> 20, time.time() - t, hwm))
    assert hwm < RSS_LIMIT_KB


def test_upload_content_length_and_echo(passthrough_bin, upstream, proxies, tmp_path):
    p = proxies(passthrough_bin, upstream.address)
    data = os.urandom(3 * 1024 * 1024 + 17)
    f = tmp_path / "blob"
    f.write_bytes(data)
    r = curl("--http2-prior-knowledge", "--data-binary", "@%s" % f, p.url + "/upload", check=True)
    assert json.loads(r.stdout) == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    r = curl("--http2-prior-knowledge", "--data-binary", "@%s" % f, p.url + "/echo", check=True)
    assert r.stdout == data


def test_trailers_and_reset(passthrough_bin, upstream, proxies):
    p = proxies(passthrough_bin, upstream.address)
    c = H2Client(p.port)
    st = c.get("/trailers")
    assert st["status"] == 200 and st["body"] == b"hello\n"
    assert dict(st["trailers"]) == {"grpc-status": "0", "x-trailer": "yes"}
    st = c.get("/reset")
    assert st["status"] == 200 and st["reset"] == 2  # INTERNAL_ERROR after 1000 bytes
    assert len(st["body"]) <= 1000
    st = c.get("/datasets/after-reset")  # the connection survives a stream reset
    assert st["status"] == 200
    c.close()


def test_client_reset_resets_upstream(passthrough_bin, upstream, proxies):
    p = proxies(passthrough_bin, upstream.address)
    c = H2Client(p.port)
    sid = c.request("/big?bytes=%d" % (200 << 20))
    c.pump(lambda: len(c.streams[sid]["body"]) > 0, 5)
    c.conn.reset_stream(sid, 8)  # CANCEL
    c.flush()
    st = c.get("/datasets/still-ok")
    assert st["status"] == 200
    c.close()


# ----------------------------------------------------------------------------- gRPC

def test_grpc_roundtrip(passthrough_bin, proxies):
    grpc = pytest.importorskip("grpc")
    from concurrent import futures

    def unary(req, ctx):
        ctx.set_trailing_metadata((("x-done", "1"),))
        return b"echo:" + req

    def stream(req, ctx):
        for i in range(5):
            yield b"item%d" % i

    def fail(req, ctx):
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such dataset")

    handler = grpc.method_handlers_generic_handler("test.Flight", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        p = proxies(passthrough_bin, "127.0.0.1:%d" % port)
        ch = grpc.insecure_channel("127.0.0.1:%d" % p.port)
        resp, call = ch.unary_unary("/test.Flight/Unary").with_call(b"hi", timeout=10)
        assert resp == b"echo:hi"
        assert call.code() == grpc.StatusCode.OK
        assert ("x-done", "1") in tuple(call.trailing_metadata())
        items = list(ch.unary_stream("/test.Flight/Stream")(b"", timeout=10))
        assert items == [b"item%d" % i for i in range(5)]
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary("/test.Flight/Fail")(b"", timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert e.value.details() == "no such dataset"
        ch.close()
    finally:
        server.stop(0)


# ----------------------------------------------------------------------------- HTTP/1.1 upstream

def test_http1_upstream(passthrough_bin, upstream_h1, proxies, tmp_path):
    p = proxies(passthrough_bin, upstream_h1.address, "--protocol", "http1")
    r = curl("--http2-prior-knowledge", p.url + "/datasets/h1", check=True)
    assert json.loads(r.stdout)["path"] == "/datasets/h1"
    seen = upstream_h1.last("/datasets/h1")
    assert seen["proto"] == "http1"
    assert [v for k, v in seen["headers"] if k == "host"] == ["127.0.0.1:%d" % p.port]
    for path, n in (("/big", 300000), ("/chunked", 300000), ("/close", 300000)):
        r = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                 p.url + "%s?bytes=%d" % (path, n), check=True)
        assert r.stdout.decode() == "200 %d" % n, path
    c = H2Client(p.port)
    st = c.get("/trailers")
    assert st["status"] == 200 and st["body"] == b"hello\n"
    assert dict(st["trailers"]) == {"grpc-status": "0", "x-trailer": "yes"}
    st = c.get("/malformed")  # both content-length and chunked: refused
    assert st["status"] == 502 and json.loads(st["body"])["error"] == "upstream_unavailable"
    st = c.get("/reset")      # upstream closes mid-body -> stream reset
    assert st["reset"] == 2
    c.close()
    # uploads: content-length passes through; a length-less body goes chunked
    data = os.urandom(2 * 1024 * 1024 + 3)
    f = tmp_path / "b"
    f.write_bytes(data)
    want = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    r = curl("--http2-prior-knowledge", "--data-binary", "@%s" % f, p.url + "/upload", check=True)
    assert json.loads(r.stdout) == want
    c = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-T", "-", "-X", "POST",
                        p.url + "/upload"], input=data, stdout=subprocess.PIPE, timeout=30)
    assert json.loads(c.stdout) == want
    reqs = [x for x in upstream_h1.requests() if x["path"] == "/upload" and "done" not in x]
    assert dict(reqs[-2]["headers"]).get("content-length") == str(len(data))
    assert dict(reqs[-1]["headers"]).get("transfer-encoding") == "chunked"


def test_http1_rejects_smuggling_bytes(passthrough_bin, upstream_h1, proxies):
    p = proxies(passthrough_bin, upstream_h1.address, "--protocol", "http1")
    c = H2Client(p.port)
    # a raw control character in a value (h2 clients may send what h1 cannot carry)
    st = c.get("/datasets/x", headers=[("x-evil", "a\x01b")])
    # nghttp2's own checks or ours: never forwarded
    assert st["status"] in (400, None)
    assert upstream_h1.last("/datasets/x") is None
    c.close()


# ----------------------------------------------------------------------------- failures

def test_upstream_down_502(passthrough_bin, proxies, tmp_path):
    for proto in ("h2c", "http1"):
        p = proxies(passthrough_bin, "127.0.0.1:%d" % free_port(), "--protocol", proto)
        r = curl("--http2-prior-knowledge", "-w", "\n%{http_code}", p.url + "/datasets/x")
        body, code = r.stdout.decode().rsplit("\n", 1)
        assert code == "502"
        assert json.loads(body)["error"] == "upstream_unavailable"
    p = proxies(passthrough_bin, "unix:%s/nope.sock" % tmp_path)
    r = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}", p.url + "/x")
    assert r.stdout == b"502"


def test_unix_socket_upstream(passthrough_bin, proxies, tmp_path):
    u = Upstream(tmp_path, unix=str(tmp_path / "up.sock"))
    try:
        p = proxies(passthrough_bin, u.address)
        r = curl("--http2-prior-knowledge", p.url + "/datasets/unix", check=True)
        assert json.loads(r.stdout)["path"] == "/datasets/unix"
    finally:
        u.stop()


def test_upstream_slow_504(passthrough_bin, upstream, proxies):
    p = proxies(passthrough_bin, upstream.address, "--response-timeout-ms", "500")
    t = time.time()
    r = curl("--http2-prior-knowledge", "-w", "\n%{http_code}", p.url + "/slow?ms=3000")
    body, code = r.stdout.decode().rsplit("\n", 1)
    assert code == "504" and json.loads(body)["error"] == "upstream_timeout"
    assert time.time() - t < 2.5
    r = curl("--http2-prior-knowledge", p.url + "/slow?ms=10", check=True)
    assert json.loads(r.stdout)["slept_ms"] == 10


def test_header_limits(passthrough_bin, upstream, proxies):
    p = proxies(passthrough_bin, upstream.address, "--max-header-bytes", "4096",
                "--max-streams", "4")
    c = H2Client(p.port)
    st = c.get("/datasets/big-headers", headers=[("x-big", "a" * 5000)])
    assert st["status"] == 431
    st = c.get("/datasets/two-auth", headers=[("authorization", "Bearer a"),
                                              ("authorization", "Bearer b")])
    assert st["status"] == 400
    assert upstream.last("/datasets/big-headers") is None
    assert upstream.last("/datasets/two-auth") is None
    st = c.get("/__whoami", headers=[("x-mesh-purpose", "a"), ("x-mesh-purpose", "b")])
    assert json.loads(st["body"])["npurposes"] == 2
    # more streams than SETTINGS_MAX_CONCURRENT_STREAMS: the excess is refused
    # (python-h2 would hold them back itself; make it believe the limit is higher)
    c.conn.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 100
    c.conn.remote_settings.acknowledge()
    sids = [c.request("/slow?ms=500") for _ in range(6)]
    c.pump(lambda: all(c.streams[s]["ended"] or c.streams[s]["reset"] is not None
                       for s in sids), 10)
    codes = [c.streams[s]["status"] for s in sids]
    resets = [c.streams[s]["reset"] for s in sids]
    # RFC 9113 §5.1.2: REFUSED_STREAM for the excess, or (nghttp2, once the limit is
    # acknowledged) a connection error PROTOCOL_ERROR. Either way no excess stream is served.
    if c.goaway is not None:
        assert c.goaway.error_code == 1
    else:
        assert codes.count(200) == 4 and resets.count(7) == 2  # 7 = REFUSED_STREAM
    time.sleep(0.6)
    assert len([x for x in upstream.requests() if x["path"] == "/slow?ms=500"]) <= 4
    c.close()


def test_failed_verifies_goaway(passthrough_bin, upstream, proxies):
    p = proxies(passthrough_bin, upstream.address, "--failed-verifies", "2")
    c = H2Client(p.port)
    assert c.get("/__failverify")["status"] == 401
    st = c.get("/__failverify")
    assert st["status"] == 401  # the response that hit the limit still completes
    c.pump(lambda: c.goaway is not None or c.closed, 5)
    assert c.goaway is not None or c.closed
    c.close()


def test_idle_timeout_closes(passthrough_bin, upstream, proxies):
    p = proxies(passthrough_bin, upstream.address, "--idle-timeout", "1")
    c = H2Client(p.port)
    assert c.get("/datasets/x")["status"] == 200
    c.pump(lambda: c.closed or c.goaway is not None, 4)
    assert c.closed or c.goaway is not None


# ----------------------------------------------------------------------------- lifecycle

def test_sigterm_lets_inflight_finish(passthrough_bin, upstream, proxies):
    p = proxies(passthrough_bin, upstream.address, "--grace", "10")
    procs = [subprocess.Popen(["curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null",
                               "-w", "%{http_code}", p.url + "/slow?ms=1500"],
                              stdout=subprocess.PIPE) for _ in range(3)]
    time.sleep(0.5)
    p.signal(signal.SIGTERM)
    codes = [pr.communicate(timeout=20)[0] for pr in procs]
    assert codes == [b"200"] * 3
    assert p.proc.wait(10) == 0
    assert "closed 3" in p.stderr()


def test_sigterm_grace_deadline(passthrough_bin, upstream, proxies):
    p = proxies(passthrough_bin, upstream.address, "--grace", "1")
    pr = subprocess.Popen(["curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null",
                           "-w", "%{http_code}", p.url + "/slow?ms=8000"], stdout=subprocess.PIPE)
    time.sleep(0.5)
    t = time.time()
    p.signal(signal.SIGTERM)
    assert p.proc.wait(10) == 0
    assert time.time() - t < 4
    pr.communicate(timeout=10)


def test_sighup_keeps_open_connections(passthrough_bin, upstream, proxies):
    p = proxies(passthrough_bin, upstream.address)
    c = H2Client(p.port)
    assert c.get("/datasets/before")["status"] == 200
    p.signal(signal.SIGHUP)
    time.sleep(0.3)
    assert c.get("/datasets/after")["status"] == 200
    assert not c.closed
    c.close()
    r = curl("--http2-prior-knowledge", p.url + "/datasets/new-conn", check=True)
    assert json.loads(r.stdout)["path"] == "/datasets/new-conn"
    assert p.proc.poll() is None


def test_h2c_requires_prior_knowledge(passthrough_bin, upstream, proxies):
    p = proxies(passthrough_bin, upstream.address)
    r = curl("--http1.1", p.url + "/datasets/x")
    assert r.returncode != 0 or not r.stdout.startswith(b"{")
    assert upstream.last("/datasets/x") is None


def test_sighup_new_upstream_applies_to_new_requests(passthrough_bin, proxies, tmp_path):
    a = Upstream(tmp_path / "..", extra=())
    b = Upstream(tmp_path / "..", extra=())
    try:
        f = tmp_path / "upstream.addr"
        f.write_text(a.address)
        p = proxies(passthrough_bin, "unused", "--upstream-file", str(f))
        c = H2Client(p.port)
        assert c.get("/datasets/one")["status"] == 200
        f.write_text(b.address)
        p.signal(signal.SIGHUP)
        time.sleep(0.3)
        # same downstream connection, next request: the new upstream
        assert c.get("/datasets/two")["status"] == 200
        c.close()
        assert a.last("/datasets/one") and not a.last("/datasets/two")
        assert b.last("/datasets/two")
    finally:
        a.stop()
        b.stop()


def test_http1_keepalive_reuse_and_stale_retry(passthrough_bin, proxies, tmp_path):
    u = Upstream(tmp_path, http1=True, extra=("--idle-close-ms", "300"))
    try:
        p = proxies(passthrough_bin, u.address, "--protocol", "http1", "--workers", "1")
        c = H2Client(p.port)
        for i in range(5):
            assert c.get("/datasets/k%d" % i)["status"] == 200
        time.sleep(0.6)  # the upstream closes the idle keep-alive connection
        assert c.get("/datasets/after-idle")["status"] == 200
        c.close()
    finally:
        u.stop()


def test_http1_stale_keepalive_retried_once(passthrough_bin, proxies, tmp_path):
    u = Upstream(tmp_path, http1=True, extra=("--drop-reused",))
    try:
        p = proxies(passthrough_bin, u.address, "--protocol", "http1", "--workers", "1")
        c = H2Client(p.port)
        assert c.get("/datasets/first")["status"] == 200
        # rides the kept-alive connection, which dies unanswered -> one retry, fresh one
        assert c.get("/datasets/second")["status"] == 200
        assert len([x for x in u.requests() if x["path"] == "/datasets/second"]) == 2
        # a body-carrying request is never replayed: 502 instead
        st = c.get("/upload", body=b"x" * 10)
        assert st["status"] == 502
        # nor a non-idempotent one without a body (RFC 9110 §9.2.2): the product may have
        # deleted before the connection died
        assert c.get("/datasets/fourth")["status"] == 200  # a fresh connection
        st = c.get("/datasets/fifth", method="DELETE")
        assert st["status"] == 502
        assert len([x for x in u.requests() if x["path"] == "/datasets/fifth"]) == 1
        c.close()
    finally:
        u.stop()


def test_http1_close_delimited_body_behind_a_slow_client(passthrough_bin, proxies, tmp_path):
    """A read-until-close response larger than every buffer, to a client that reads
    slowly: the bytes that wait behind a full response ring when the product closes are
    still delivered; the close is not taken for the end of the body before them."""
    u = Upstream(tmp_path, http1=True)
    n = 6 << 20
    try:
        p = proxies(passthrough_bin, u.address, "--protocol", "http1", "--workers", "1")
        c = H2Client(p.port)
        sid = c.request("/close?bytes=%d" % n)
        time.sleep(1.0)  # everything fills: h2 window, ring, input buffer, socket buffers
        st = c.streams[sid]
        deadline = time.time() + 30
        while not (st["ended"] or st["reset"] is not None) and time.time() < deadline:
            c.pump(lambda: False, 0.05)  # read a little at a time
        assert st["status"] == 200 and st["ended"], st["reset"]
        expect = b"".join(gen(n))
        assert len(st["body"]) == n
        assert hashlib.sha256(st["body"]).digest() == hashlib.sha256(expect).digest()
        c.close()
    finally:
        u.stop()


def test_http1_early_response_frees_the_upload_window(passthrough_bin, proxies, tmp_path):
    """The product answers 413 without reading the upload and keeps the connection: the
    body already buffered for it is dropped and its window given back, so the upload
    drains or is cut with RST_STREAM(NO_ERROR); before, the stream hung with a closed
    window that no timer counted against anyone."""
    u = Upstream(tmp_path, http1=True)
    try:
        p = proxies(passthrough_bin, u.address, "--protocol", "http1", "--workers", "1")
        c = H2Client(p.port)
        sid = c.request("/early?delay_ms=1000&hold_ms=20000", body=os.urandom(16 << 20))
        st = c.streams[sid]
        c.pump(lambda: st["reset"] is not None or (st["ended"] and not c.pending), 12)
        assert st["status"] == 413 and st["ended"]
        assert st["reset"] == 0 or not c.pending, (st["reset"], sid in c.pending)
        assert c.get("/datasets/next")["status"] == 200
        c.close()
    finally:
        u.stop()


def test_http1_304_with_content_length_keeps_the_connection(passthrough_bin, proxies, tmp_path):
    """A 304 may carry the Content-Length of the full response (RFC 9110 §8.6) but never a
    body: the parser must not wait for one, and requests after it are answered."""
    u = Upstream(tmp_path, http1=True)
    try:
        p = proxies(passthrough_bin, u.address, "--protocol", "http1", "--workers", "1")
        c = H2Client(p.port)
        for i in range(3):
            st = c.get("/status?code=304&cl=1234")
            assert st["status"] == 304 and st["body"] == b"" and st["ended"]
            assert c.get("/datasets/after-304-%d" % i, timeout=5)["status"] == 200
        c.close()
    finally:
        u.stop()


def test_http1_pool_full_of_closing_connections(passthrough_bin, proxies, tmp_path):
    """More concurrent requests than the HTTP/1.1 pool's 256 connections, each answered
    with Connection: close: the queued ones start as connections die, none waits for the
    response timeout."""
    u = Upstream(tmp_path, http1=True)
    try:
        p = proxies(passthrough_bin, u.address, "--protocol", "http1", "--workers", "1")
        clients = [H2Client(p.port) for _ in range(4)]
        sids = [(c, c.request("/close?bytes=100")) for c in clients for _ in range(80)]
        t0 = time.time()
        for c, sid in sids:
            st = c.wait(sid, timeout=max(1, 15 - (time.time() - t0)))
            assert st["status"] == 200 and st["ended"] and len(st["body"]) == 100, st
        assert time.time() - t0 < 15
        for c in clients:
            c.close()
    finally:
        u.stop()


def test_tls_sighup_reload(passthrough_bin, upstream, proxies, pki):
    p = proxies(passthrough_bin, upstream.address, "--tls-cert", pki + "/server.pem",
                "--tls-key", pki + "/server.key", "--tls-ca", pki + "/ca.pem")
    ctx = ssl.create_default_context(cafile=pki + "/ca.pem")
    ctx.set_alpn_protocols(["h2"])
    c = H2Client(p.port, tls=ctx)
    assert c.get("/datasets/tls-before")["status"] == 200
    p.signal(signal.SIGHUP)
    time.sleep(0.3)
    assert c.get("/datasets/tls-after")["status"] == 200  # open connection kept
    c.close()
    r = curl("--cacert", pki + "/ca.pem", "https://localhost:%d/datasets/tls-new" % p.port,
             check=True)
    assert json.loads(r.stdout)["path"] == "/datasets/tls-new"
    assert "reloaded" in p.stderr()


def test_idle_timeout_ignores_pings(passthrough_bin, upstream, proxies):
    p = proxies(passthrough_bin, upstream.address, "--idle-timeout", "1")
    c = H2Client(p.port)
    assert c.get("/datasets/x")["status"] == 200
    deadline = time.time() + 4
    while time.time() < deadline and not (c.closed or c.goaway):
        c.conn.ping(b"12345678")
        c.flush()
        c.pump(lambda: c.closed or c.goaway is not None, 0.2)
    assert c.closed or c.goaway is not None


def test_slowloris_header_timeout(passthrough_bin, upstream, proxies):
    import struct
    p = proxies(passthrough_bin, upstream.address)
    s = socket.create_connection(("127.0.0.1", p.port), timeout=15)
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + struct.pack(">I", 0)[1:] + b"\x04\x00" +
              b"\x00\x00\x00\x00")
    # HEADERS on stream 1 without END_HEADERS, then nothing: the block never completes
    block = b"\x82\x86\x84"  # :method GET, :scheme http, :path /
    s.sendall(struct.pack(">I", len(block))[1:] + b"\x01\x00" + struct.pack(">I", 1) + block)
    t = time.time()
    s.settimeout(15)
    try:
        while s.recv(65536):
            pass
    except (ConnectionError, socket.timeout):
        pass
    took = time.time() - t
    assert 8 < took < 13  # closed by the 10 s header timeout
    s.close()


def test_multiplexed_echo_integrity(passthrough_bin, upstream, proxies):
    p = proxies(passthrough_bin, upstream.address, "--max-body-buffer", "65536")
    c = H2Client(p.port)
    c.conn.remote_settings  # windows from the proxy's SETTINGS arrive with the first pump
    c.pump(lambda: False, 0.2)
    bodies = {}
    for i in range(16):
        data = os.urandom(150000 + i * 997)
        bodies[c.request("/echo", body=data)] = data
    c.pump(lambda: all(c.streams[s]["ended"] or c.streams[s]["reset"] is not None
                       for s in bodies), 30)
    for sid, data in bodies.items():
        assert c.streams[sid]["status"] == 200
        assert c.streams[sid]["body"] == data
    c.close()


def test_client_not_reading_is_reset(passthrough_bin, upstream, proxies):
    p = proxies(passthrough_bin, upstream.address, "--idle-timeout", "1")
    c = H2Client(p.port, ack=False)
    sid = c.request("/big?bytes=%d" % (50 << 20))
    st = c.wait(sid, 6)
    assert st["reset"] == 8  # CANCEL: no progress for idle_timeout_s
    assert len(st["body"]) <= 65535  # never more than the window we gave
    c.close()


def test_client_not_sending_body_is_reset(passthrough_bin, upstream, proxies):
    p = proxies(passthrough_bin, upstream.address, "--idle-timeout", "1")
    c = H2Client(p.port)
    sid = c.request("/upload", end=False)  # headers, then silence
    st = c.wait(sid, 6)
    assert st["reset"] == 8
    c.close()


def test_local_answer_to_a_silent_client_is_reset(passthrough_bin, upstream, proxies):
    """A request answered by meshgate itself (401, 403, 404...) whose client never ends it:
    after the answer, the stream is reset once the body timeout passes, so silent
    half-closed streams cannot pile up and keep the connection from idling out."""
    p = proxies(passthrough_bin, upstream.address, "--idle-timeout", "1")
    c = H2Client(p.port)
    sids = [c.request("/__local404", end=False) for _ in range(5)]  # headers, then silence
    for sid in sids:
        st = c.wait(sid, 6)
        assert st["status"] == 404 and st["ended"], st
    c.pump(lambda: all(c.streams[s]["reset"] is not None for s in sids), 6)
    assert [c.streams[s]["reset"] for s in sids] == [8] * 5  # CANCEL
    # nothing open: the idle connection is closed (GOAWAY) by the idle timer
    c.pump(lambda: c.goaway is not None or c.closed, 6)
    assert c.goaway is not None or c.closed
    c.close()


def test_grpc_bidi_streaming_large(passthrough_bin, proxies):
    grpc = pytest.importorskip("grpc")
    from concurrent import futures

    def bidi(it, ctx):
        for m in it:
            yield hashlib.sha256(m).digest() + m[:16]

    handler = grpc.method_handlers_generic_handler("test.Flight", {
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        p = proxies(passthrough_bin, "127.0.0.1:%d" % port)
        ch = grpc.insecure_channel("127.0.0.1:%d" % p.port)
        msgs = [os.urandom(100000) for _ in range(50)]
        out = list(ch.stream_stream("/test.Flight/Bidi")(iter(msgs), timeout=30))
        assert out == [hashlib.sha256(m).digest() + m[:16] for m in msgs]
        ch.close()
    finally:
        server.stop(0)


def test_spiffe_strictness(passthrough_bin, upstream, proxies, pki, tmp_path):
    """Two URI SANs, or a non-spiffe URI, is no identity (certs/spiffe.c)."""
    def mk(name, san):
        k, csr, crt, ext = (str(tmp_path / (name + x)) for x in (".key", ".csr", ".pem", ".ext"))
        subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout",
                        "-out", k], check=True)
        subprocess.run(["openssl", "req", "-new", "-key", k, "-subj", "/CN=" + name, "-out", csr],
                       check=True)
        with open(ext, "w") as f:
            f.write("extendedKeyUsage=clientAuth\nsubjectAltName=%s\n" % san)
        subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", pki + "/ca.pem", "-CAkey",
                        pki + "/ca.key", "-CAcreateserial", "-CAserial", str(tmp_path / "srl"),
                        "-days", "1", "-extfile", ext, "-out", crt], check=True,
                       stderr=subprocess.DEVNULL)
        return crt, k
    p = proxies(passthrough_bin, upstream.address, "--tls-cert", pki + "/server.pem",
                "--tls-key", pki + "/server.key", "--tls-ca", pki + "/ca.pem")
    url = "https://localhost:%d/__whoami" % p.port
    cases = {
        "two": ("URI:spiffe://mesh.test/a,URI:spiffe://mesh.test/b", ""),
        "http": ("URI:https://mesh.test/a", ""),
        "notd": ("URI:spiffe:///ns/a", ""),
        "good": ("DNS:x.test,URI:spiffe://mesh.test/ns/a/sa/b", "spiffe://mesh.test/ns/a/sa/b"),
    }
    for name, (san, want) in cases.items():
        crt, key = mk(name, san)
        r = curl("--cacert", pki + "/ca.pem", "--cert", crt, "--key", key, url, check=True)
        assert json.loads(r.stdout)["spiffe"] == want, name


def test_upstream_max_streams_queue_and_cancel(passthrough_bin, proxies, tmp_path):
    """The upstream allows 2 streams: the rest wait in nghttp2's queue; cancelling queued
    ones must neither reach the upstream nor disturb the others."""
    u = Upstream(tmp_path, extra=("--h2-max-streams", "2"))
    try:
        p = proxies(passthrough_bin, u.address, "--workers", "1", "--connections", "1")
        c = H2Client(p.port)
        # warm the upstream connection so its SETTINGS (max 2 streams) are known
        assert c.get("/datasets/warm")["status"] == 200
        sids = [c.request("/slow?ms=400") for _ in range(8)]
        c.pump(lambda: False, 0.1)
        for sid in sids[4:]:
            c.conn.reset_stream(sid, 8)
        c.flush()
        c.pump(lambda: all(c.streams[s]["ended"] for s in sids[:4]), 10)
        assert [c.streams[s]["status"] for s in sids[:4]] == [200] * 4
        assert c.get("/datasets/after")["status"] == 200
        c.close()
        time.sleep(0.5)
        assert len([x for x in u.requests() if x["path"] == "/slow?ms=400"]) == 4
    finally:
        u.stop()


def test_request_trailers_are_stripped(passthrough_bin, upstream, proxies):
    p = proxies(passthrough_bin, upstream.address)
    c = H2Client(p.port)
    sid = c.request("/upload", end=False)
    c.streams[sid] = {"status": None, "headers": [], "body": b"", "trailers": [],
                      "ended": False, "reset": None}
    c.conn.send_data(sid, b"abc")
    c.conn.send_headers(sid, [("x-mesh-principal", "user:evil"), ("x-keep-trailer", "yes")],
                        end_stream=True)
    c.flush()
    st = c.wait(sid)
    assert st["status"] == 200 and json.loads(st["body"])["bytes"] == 3
    c.close()
    done = [x for x in upstream.requests() if x["path"] == "/upload" and x.get("done")]
    assert dict(done[-1]["trailers"]) == {"x-keep-trailer": "yes"}


@pytest.mark.parametrize("proto", ["h2c", "http1"])
def test_bodyless_statuses_and_head(passthrough_bin, proxies, tmp_path, proto):
    u = Upstream(tmp_path, http1=(proto == "http1"))
    try:
        p = proxies(passthrough_bin, u.address, "--protocol", proto)
        c = H2Client(p.port)
        for code in (204, 304):
            st = c.get("/status?code=%d" % code)
            assert st["status"] == code and st["body"] == b"" and st["ended"]
        st = c.get("/datasets/head", method="HEAD")
        assert st["status"] == 200 and st["body"] == b"" and st["ended"]
        assert c.get("/datasets/after")["status"] == 200
        c.close()
    finally:
        u.stop()


def test_garbage_does_not_hurt(passthrough_bin, upstream, proxies):
    """Random bytes after the preface, truncated frames, HTTP/1.1 on the h2c port: each
    such connection dies alone; the server keeps serving."""
    import random
    rnd = random.Random(1234)
    p = proxies(passthrough_bin, upstream.address)
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    payloads = [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", preface[:10]]
    for i in range(60):
        n = rnd.randrange(1, 3000)
        payloads.append(preface + bytes(rnd.randrange(256) for _ in range(n)))
    # valid client conversations (requests, bodies, trailers, resets) with a few bytes flipped
    for i in range(120):
        cc = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        cc.initiate_connection()
        for sid in (1, 3, 5):
            cc.send_headers(sid, [(":method", "POST"), (":scheme", "http"),
                                  (":authority", "x"), (":path", "/upload?%d" % i),
                                  ("x-mesh-purpose", "a"), ("content-type", "b")])
            cc.send_data(sid, bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 300))))
            if sid == 3:
                cc.reset_stream(sid, 8)
            else:
                cc.send_headers(sid, [("x-t", "1")], end_stream=True)
        data = bytearray(cc.data_to_send())
        for _ in range(rnd.randrange(1, 4)):
            k = rnd.randrange(24, len(data))
            data[k] = rnd.randrange(256)
        payloads.append(bytes(data))
    for i, data in enumerate(payloads):
        s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
        try:
            s.sendall(data)
            if i % 2:
                s.shutdown(socket.SHUT_WR)  # EOF right behind the bytes
            else:
                s.settimeout(0.05)  # let requests reach the upstream, then vanish
            while s.recv(65536):
                pass
        except OSError:
            pass
        s.close()
    r = curl("--http2-prior-knowledge", p.url + "/datasets/survived", check=True)
    assert json.loads(r.stdout)["path"] == "/datasets/survived"
    assert p.proc.poll() is None


@pytest.mark.parametrize("proto", ["h2c", "http1"])
def test_upstream_comes_back(passthrough_bin, proxies, tmp_path, proto):
    port = free_port()
    p = proxies(passthrough_bin, "127.0.0.1:%d" % port, "--protocol", proto, "--workers", "1")
    c = H2Client(p.port)
    assert c.get("/datasets/down")["status"] == 502
    u = Upstream(tmp_path, http1=(proto == "http1"), extra=("--port", str(port)))
    try:
        assert c.get("/datasets/up")["status"] == 200  # reconnects on demand
        u.stop()
        time.sleep(0.3)
        assert c.get("/datasets/down-again")["status"] == 502
    finally:
        u.stop()
    c.close()


def test_early_response_while_client_uploads(passthrough_bin, upstream, proxies):
    """A local answer before the body arrived: the client still gets a clean response
    (the small rest of the body drains); a large rest is cut with RST_STREAM(NO_ERROR)."""
    p = proxies(passthrough_bin, upstream.address)
    c = subprocess.Popen(["curl", "-sS", "--http2-prior-knowledge", "-T", "-", "-X", "POST",
                          "-w", "\n%{http_code}", p.url + "/__local404"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.3)  # the 404 is out before the first body byte
    out, err = c.communicate(b"x" * 1000, timeout=10)
    assert c.returncode == 0, err
    assert out.decode().endswith("\n404")
    h = H2Client(p.port)
    sid = h.request("/__local404", body=os.urandom(2 << 20))
    h.pump(lambda: h.streams[sid]["reset"] is not None, 10)
    st = h.streams[sid]
    assert st["status"] == 404 and st["ended"] and st["reset"] == 0
    assert h.get("/datasets/next")["status"] == 200
    h.close()


def test_response_timeout_counts_from_last_body_byte(passthrough_bin, upstream, proxies):
    """An upload that takes longer than response_timeout_ms is not a slow upstream."""
    p = proxies(passthrough_bin, upstream.address, "--response-timeout-ms", "500")
    c = subprocess.Popen(["curl", "-sS", "--http2-prior-knowledge", "-T", "-", "-X", "POST",
                          p.url + "/upload"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    for _ in range(10):  # 1.5 s of trickling
        c.stdin.write(b"y" * 1000)
        c.stdin.flush()
        time.sleep(0.15)
    out, _ = c.communicate(timeout=10)
    assert json.loads(out)["bytes"] == 10000


def test_outcomes_reported(passthrough_bin, upstream, proxies):
    """mg_req_outcome as the pipeline sees it (passthrough prints them to stderr)."""
    env = {"PASSTHROUGH_LOG_OUTCOMES": "1"}
    p = proxies(passthrough_bin, upstream.address, env=env)
    down = proxies(passthrough_bin, "127.0.0.1:%d" % free_port(), env=env)
    c = H2Client(p.port)
    up = c.get("/upload", body=b"z" * 1000)
    assert up["status"] == 200
    assert c.get("/reset")["reset"] == 2
    assert c.get("/__local404")["status"] == 404
    c.close()
    assert curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}",
                down.url + "/datasets/x").stdout == b"502"
    p.stop()
    down.stop()

    def outcomes(proxy):
        out = {}
        for line in proxy.stderr().splitlines():
            if line.startswith('{"outcome"'):
                o = json.loads(line)["outcome"]
                out[o["path"]] = o
        return out
    o = outcomes(p)
    assert o["/upload"]["forwarded"] == 1 and o["/upload"]["status"] == 200
    assert o["/upload"]["bytes_in"] == 1000 and o["/upload"]["bytes_out"] == len(up["body"])
    assert o["/upload"]["reset"] == -1 and o["/upload"]["duration_us"] > 0
    assert o["/reset"]["status"] == 200 and o["/reset"]["reset"] == 2
    assert o["/__local404"]["forwarded"] == 0 and o["/__local404"]["status"] == 404
    d = outcomes(down)["/datasets/x"]
    assert d["forwarded"] == 1 and d["status"] == 502  # an attempt: its outcome is recorded
