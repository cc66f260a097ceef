"""The life of a `meshgate serve` process, through the real binary: reload (SIGHUP) with a
good and a bad configuration while a connection stays open, drain on SIGTERM with requests
in flight, the command line's exit statuses and messages, upstream failures (502, 504)
and their outcome entries, and 256 MiB each way in bounded memory.

Run: MESHGATE_BIN=.../meshgate /usr/bin/python3 -m pytest -q tests/integration/test_lifecycle.py
"""
import hashlib
import json
import os
import select
import signal
import socket
import stat
import subprocess
import threading
import time
import uuid

import pytest

import mgtest
from conftest import Gateway
from h2raw import ATTACK_ROUTES, RawH2

pytestmark = pytest.mark.skipif(not mgtest.MESHGATE_BIN_OK(),
                                reason="meshgate binary not built: %s" % mgtest.meshgate_bin())

BIN = mgtest.meshgate_bin()


def tag():
    return uuid.uuid4().hex[:10]


def run(*args, timeout=30, **kw):
    return subprocess.run([BIN] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=timeout, **kw)


def err_lines(r):
    """stderr lines that are not JSON log records (the command's own reason)."""
    return [x for x in r.stderr.decode(errors="replace").splitlines()
            if x.strip() and not x.startswith("{")]


def load_cfg(gw):
    with open(gw.config_path) as f:
        return json.load(f)


def save_cfg(gw, cfg=None, text=None):
    tmp = gw.config_path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text if text is not None else json.dumps(cfg, indent=2))
    os.replace(tmp, gw.config_path)


def log_records(gw):
    out = []
    for ln in mgtest.log_text(gw.mg).splitlines():
        try:
            out.append(json.loads(ln))
        except ValueError:
            out.append({"msg": ln})
    return out


def wait_log(gw, needle, start, timeout=10):
    """The first log message after record number `start` containing needle."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for rec in log_records(gw)[start:]:
            if needle in rec.get("msg", ""):
                return rec
        time.sleep(0.05)
    raise AssertionError("no log line with %r:\n%s" % (needle, mgtest.log_text(gw.mg)[-3000:]))


def verify_db(gw):
    data = gw.export()
    r = subprocess.run([BIN, "lineage", "verify", "--key",
                        os.path.join(gw.dir, "keys", "lineage.vkey"), "-"], input=data,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    return [json.loads(x) for x in data.splitlines() if b'"index"' in x]


def hwm_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


# ---- SIGHUP -------------------------------------------------------------------------------


def test_sighup_good_config_applies_and_open_connection_keeps_working(tmp_path):
    routes = [r for r in ATTACK_ROUTES if r["prefix"] != "/headers"]
    gw = Gateway(tmp_path, {"routes": routes})
    try:
        t = tag()
        c = RawH2(gw.mg.data_port, timeout=5)
        st = c.wait_stream(c.request("/headers?t=before-" + t))
        assert st["status"] == 404 and gw.upstream_saw("before-" + t) == []  # no route yet
        slow = c.request("/slow?ms=1500&t=" + t)  # in flight across the reload
        deadline = time.time() + 5
        while not gw.upstream_saw("ms=1500&t=" + t) and time.time() < deadline:
            time.sleep(0.02)
        cfg = load_cfg(gw)
        cfg["routes"].append({"prefix": "/headers", "auth": "none"})
        save_cfg(gw, cfg)
        n = len(log_records(gw))
        gw.mg.proc.send_signal(signal.SIGHUP)
        wait_log(gw, "configuration reloaded", n)
        # new requests see the new route: on a new connection and on the open one
        r = gw.get("/headers?t=new-" + t)
        assert r.status == 200 and "headers" in r.json(), r
        st = c.wait_stream(c.request("/headers?t=old-" + t))
        assert st["status"] == 200 and st["ended"], st
        st = c.wait_stream(slow, 5)
        assert st["status"] == 200 and st["ended"] and st["rst"] is None, st
        assert c.goaway is None and not c.closed
        c.close()
        assert gw.mg.alive()
    finally:
        gw.close()


def test_sighup_bad_config_rejected_old_keeps_serving(tmp_path):
    gw = Gateway(tmp_path, {"routes": ATTACK_ROUTES})
    try:
        t = tag()
        good = load_cfg(gw)
        c = RawH2(gw.mg.data_port, timeout=5)
        assert c.wait_stream(c.request("/headers?t=a-" + t))["status"] == 200
        with open(gw.config_path) as f:
            text = f.read()
        lines = text.split("\n")
        # 1. a syntax error (a stray comma), named by file:line:col
        bad_line = next(i for i, ln in enumerate(lines) if '"product"' in ln)
        lines[bad_line] = lines[bad_line] + ","
        cases = [("\n".join(lines), "meshgate.json:%d:" % (bad_line + 1)),
                 (None, "/lineage/durability"),
                 (None, "/routes/1/auth"),
                 (None, "/upstream/response_timeout_ms")]
        bad_values = [None,
                      lambda c_: c_["lineage"].update(durability="sometimes"),
                      lambda c_: c_["routes"][1].update(auth="maybe"),
                      lambda c_: c_["upstream"].update(response_timeout_ms=-5)]
        for (text_, needle), mutate in zip(cases, bad_values):
            if mutate:
                cfg = json.loads(json.dumps(good))
                cfg["routes"] = [r for r in cfg["routes"] if r["prefix"] != "/slow"]
                mutate(cfg)
                save_cfg(gw, cfg)
            else:
                save_cfg(gw, text=text_)
            n = len(log_records(gw))
            gw.mg.proc.send_signal(signal.SIGHUP)
            rec = wait_log(gw, "reload rejected", n)
            assert needle in rec["msg"], (needle, rec)
            assert rec.get("level") in ("error", "warn", "warning"), rec
            assert not any("configuration reloaded" in x.get("msg", "")
                           for x in log_records(gw)[n:])
            # the old configuration keeps serving (the bad value files also drop /slow)
            st = c.wait_stream(c.request("/slow?ms=10&t=" + t))
            assert st["status"] == 200, (needle, st)
            r = gw.get("/slow?ms=10&t=new-" + t)
            assert r.status == 200, (needle, r)
        assert c.goaway is None and not c.closed
        c.close()
        # a good file again is taken
        save_cfg(gw, good)
        n = len(log_records(gw))
        gw.mg.proc.send_signal(signal.SIGHUP)
        wait_log(gw, "configuration reloaded", n)
        assert gw.get("/headers").status == 200
    finally:
        gw.close()


def test_sighup_identity_changes_take_effect(tmp_path):
    """Identity settings are reloaded too: an audience removed from the issuer refuses the
    tokens made for it at once (also one verified and cached before the reload), and one
    added is accepted; the admin API follows the same verifier."""
    gw = Gateway(tmp_path)
    try:
        old_aud = gw.issuer.es256(sub="etl", azp="etl", exp_in=3600)
        new_aud = gw.issuer.es256(sub="etl", azp="etl", exp_in=3600, aud="mesh-v2")
        c = RawH2(gw.mg.data_port, timeout=5)

        def status(token, path):
            return c.wait_stream(c.request(path, headers=[("authorization", "Bearer " + token)]))["status"]
        assert status(old_aud, "/datasets/sales/a") == 200  # verified and cached
        assert status(new_aud, "/datasets/sales/b") == 401
        cfg = load_cfg(gw)
        cfg["identity"]["issuers"][0]["audiences"] = ["mesh-v2"]
        save_cfg(gw, cfg)
        n = len(log_records(gw))
        gw.mg.proc.send_signal(signal.SIGHUP)
        wait_log(gw, "configuration reloaded", n)
        assert any("identity settings changed" in x.get("msg", "") for x in log_records(gw)[n:])
        assert status(old_aud, "/datasets/sales/c") == 401  # on the open connection, too
        assert status(new_aud, "/datasets/sales/d") == 200
        c.close()
        r = mgtest.request(gw.mg.admin_url + "/v1/grants", token=gw.admin)
        assert r.status == 401, r  # the admin token was made for the old audience
        # an issuer whose keys cannot be loaded: the reload is refused, nothing changes
        cfg["identity"]["issuers"][0]["jwks_file"] = "missing.json"
        save_cfg(gw, cfg)
        n = len(log_records(gw))
        gw.mg.proc.send_signal(signal.SIGHUP)
        rec = wait_log(gw, "reload rejected", n)
        assert "missing.json" in rec["msg"], rec
        assert gw.get("/datasets/sales/e", token=new_aud).status == 200
        assert gw.mg.alive()
    finally:
        gw.close()


# ---- SIGTERM ------------------------------------------------------------------------------


def test_sigterm_drains_in_flight_requests(tmp_path):
    gw = Gateway(tmp_path, {"routes": ATTACK_ROUTES, "workers": 2,
                            "limits": {"shutdown_grace_s": 10}})
    try:
        t = tag()
        clients = []
        for k in range(4):
            c = RawH2(gw.mg.data_port, timeout=5)
            sid = c.request("/slow?ms=1500&t=%s-%d" % (t, k))
            clients.append((c, sid))
        deadline = time.time() + 5
        while len(gw.upstream_saw(t)) < 4 and time.time() < deadline:
            time.sleep(0.02)
        assert len(gw.upstream_saw(t)) == 4
        rids = [dict(x["headers"])["x-request-id"] for x in gw.upstream_saw(t)]
        t0 = time.time()
        gw.mg.proc.send_signal(signal.SIGTERM)
        results = [None] * 4

        def finish(k):
            c, sid = clients[k]
            st = c._track(sid)
            c.pump(lambda: st["ended"] or st["rst"] is not None or c.closed, 10)
            results[k] = (st["status"], st["ended"], st["rst"], c.goaway)
        ths = [threading.Thread(target=finish, args=(k,)) for k in range(4)]
        for th in ths:
            th.start()
        # new connections are refused once draining started
        time.sleep(0.3)
        refused = False
        try:
            n = RawH2(gw.mg.data_port, timeout=2)
            sid = n.request("/healthz/late-" + t)
            st = n.wait_stream(sid, 3)
            refused = st["status"] is None and (n.closed or n.goaway is not None)
            n.close()
        except (ConnectionRefusedError, ConnectionResetError, socket.timeout, OSError):
            refused = True
        assert refused, "a new connection was served while draining"
        assert gw.upstream_saw("late-" + t) == []
        for th in ths:
            th.join(15)
        for k, res in enumerate(results):
            status, ended, rst, goaway = res
            assert status == 200 and ended and rst is None, (k, res)
            assert goaway is not None and goaway[1] == 0, (k, res)  # GOAWAY(NO_ERROR)
        rc = gw.mg.proc.wait(15)
        took = time.time() - t0
        assert rc == 0, mgtest.log_text(gw.mg)[-2000:]
        assert took < 10, took
        for c, _ in clients:
            c.close()
        # the shutdown checkpoint covers the outcomes (read with the process gone)
        es = verify_db(gw)
        for rid in rids:
            outs = [e for e in es if e.get("request_id") == rid and "of" in e]
            assert len(outs) == 1 and outs[0]["status"] == 200, (rid, outs)
        # and after a restart the log is whole and continues
        gw.mg = mgtest.start_meshgate(gw.config_path)
        mgtest.wait_ready(gw.mg)
        gw.url = gw.mg.data_url
        assert gw.get("/healthz/after-" + t).status in (200, 404)
        es = gw.entries()
        assert [e["index"] for e in es] == list(range(len(es)))
        verify_db(gw)
    finally:
        gw.close()


# ---- command line -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cfgdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    mgtest.make_keys_and_jwks(d)
    path = mgtest.write_config(d)
    return str(d), path


def test_serve_check_good_config(cfgdir):
    d, path = cfgdir
    r = run("serve", "-c", path, "--check")
    assert r.returncode == 0, r.stderr
    assert b"OK" in r.stdout


@pytest.mark.parametrize("mutate,pointer", [
    (lambda c: c["lineage"].update(durability="sometimes"), "/lineage/durability"),
    (lambda c: c.update(workers=-1), "/workers"),
    (lambda c: c["routes"][0].update(auth="maybe"), "/routes/0/auth"),
    (lambda c: c["limits"].update(bogus_key=1) if "limits" in c else c.update(limits={"bogus_key": 1}),
     "/limits/bogus_key"),
    (lambda c: c["admin"].update(admin_claim="mesh:admin"), "/admin/admin_claim"),
    # (both were bugs: the JWKS error lacked its pointer; the key error read freed memory)
    (lambda c: c["identity"]["issuers"][0].update(jwks_file="missing.json"),
     "/identity/issuers/0/jwks_file"),
    (lambda c: c["lineage"].update(signing_key="missing.key"), "/lineage/signing_key: "),
], ids=["enum", "negative", "route-auth", "unknown-key", "claim-type", "jwks-missing",
        "key-missing"])
def test_serve_check_bad_config_names_pointer(cfgdir, mutate, pointer):
    d, path = cfgdir
    with open(path) as f:
        cfg = json.load(f)
    mutate(cfg)
    bad = os.path.join(d, "bad-%s.json" % tag())
    with open(bad, "w") as f:
        json.dump(cfg, f, indent=2)
    r = run("serve", "-c", bad, "--check")
    assert r.returncode == 1, (pointer, r.stderr)
    lines = err_lines(r)
    assert len(lines) == 1 and pointer in lines[0], (pointer, r.stderr.decode())


def test_serve_check_syntax_error_names_line(cfgdir):
    d, _ = cfgdir
    bad = os.path.join(d, "syntax.json")
    with open(bad, "w") as f:
        f.write('{\n  "product": "orders",\n  "workers": 1,,\n}\n')
    r = run("serve", "-c", bad, "--check")
    assert r.returncode == 1
    lines = err_lines(r)
    assert len(lines) == 1 and "syntax.json:3:" in lines[0], r.stderr.decode()
    r = run("serve", "-c", os.path.join(d, "nonexistent.json"), "--check")
    assert r.returncode == 1 and len(err_lines(r)) == 1, r.stderr


@pytest.mark.parametrize("args", [
    [], ["frobnicate"], ["serve"], ["serve", "-c"], ["serve", "--bogus"],
    ["serve", "-c", "x.json", "extra"], ["keygen"], ["keygen", "--name", "o"],
    ["keygen", "--out", "d"], ["policy"], ["policy", "check"], ["policy", "frob"],
    ["lineage"], ["lineage", "frob"], ["lineage", "verify", "-"],
    ["lineage", "export", "--action", "fly"], ["lineage", "export", "--bogus"],
    ["version", "--bogus"],
], ids=lambda a: " ".join(a) or "no-args")
def test_usage_errors_exit_2(args):
    r = run(*args)
    assert r.returncode == 2, (args, r.returncode, r.stderr)
    assert r.stderr.strip(), args


@pytest.mark.parametrize("cmd", [["serve"], ["keygen"], ["policy"], ["policy", "check"],
                                 ["lineage"], ["lineage", "export"], ["lineage", "verify"],
                                 ["version"], []], ids=lambda c: " ".join(c) or "main")
def test_help_exits_0(cmd):
    r = run(*(cmd + ["--help"]))
    assert r.returncode == 0, (cmd, r.stderr)
    assert b"usage" in r.stdout.lower(), (cmd, r.stdout[:200])


def test_serve_help_lists_configuration_keys():
    r = run("serve", "--help")
    assert r.returncode == 0
    for key in ("durability", "deny_entries_per_s", "response_timeout_ms", "shutdown_grace_s"):
        assert key.encode() in r.stdout, key


def test_version_lists_libraries():
    r = run("version")
    assert r.returncode == 0
    out = r.stdout.decode().lower()
    assert out.startswith("meshgate ")
    for lib in ("openssl", "nghttp2", "libevent", "lmdb", "jansson", "libnats", "libcurl"):
        assert lib in out, (lib, out)


def test_keygen_mode_and_refuses_overwrite(tmp_path):
    out = str(tmp_path / "k")
    r = run("keygen", "--name", "test.example/x", "--out", out)
    assert r.returncode == 0, r.stderr
    key, vkey = os.path.join(out, "lineage.key"), os.path.join(out, "lineage.vkey")
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    with open(key, "rb") as f:
        before = f.read()
    assert before.startswith(b"-----BEGIN PRIVATE KEY-----")
    with open(vkey) as f:
        v = f.read()
    assert v.startswith("test.example/x+") and v.count("\n") <= 1
    r = run("keygen", "--name", "test.example/x", "--out", out)
    assert r.returncode == 1
    assert len(err_lines(r)) == 1 and b"exist" in r.stderr, r.stderr
    with open(key, "rb") as f:
        assert f.read() == before  # untouched


def test_policy_check(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps([
        {"id": "a", "effect": "allow", "subjects": ["group:analysts"], "product": "orders",
         "resources": ["datasets/orders_fact/**"], "actions": ["read"], "purposes": ["analytics"]},
        {"id": "b", "effect": "deny", "subjects": ["*"], "product": "orders",
         "resources": ["datasets/pii/**"], "actions": ["read", "write"],
         "expires": "2099-01-01T00:00:00Z"}]))
    r = run("policy", "check", str(good))
    assert r.returncode == 0, r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([
        {"id": "a", "effect": "permit", "subjects": ["group:analysts"], "product": "orders",
         "resources": ["datasets/orders_fact/**"], "actions": ["read"]},
        {"id": "b", "effect": "allow", "subjects": [], "product": "orders",
         "resources": ["datasets/**"], "actions": ["fly"], "bogus": 1},
        {"id": "a", "effect": "deny", "subjects": ["user:x"], "product": "orders",
         "resources": ["datasets/x"], "actions": ["read"], "expires": "tomorrow"}]))
    r = run("policy", "check", str(bad))
    assert r.returncode == 1
    text = r.stderr.decode()
    for ptr in ("/0/effect", "/1/subjects", "/1/actions/0", "/1/bogus", "/2/expires", "/2/id"):
        assert (": %s:" % ptr) in text, (ptr, text)
    assert len(err_lines(r)) >= 6
    syn = tmp_path / "syn.json"
    syn.write_text("[{\n")
    r = run("policy", "check", str(syn))
    assert r.returncode == 1 and "line 2" in r.stderr.decode(), r.stderr
    r = run("policy", "check", str(tmp_path / "missing.json"))
    assert r.returncode == 1 and len(err_lines(r)) == 1


# ---- upstream failures: 502, 504 ------------------------------------------------------------


def _outcome_for(gw, marker):
    deadline = time.time() + 5
    while time.time() < deadline:
        es = gw.entries()
        acc = [e for e in es if marker in e.get("path", "") and "decision" in e]
        outs = [e for e in es if acc and e.get("of") == acc[0]["index"]]
        if outs:
            return acc, outs
        time.sleep(0.1)
    raise AssertionError("no outcome entry for %s" % marker)


def test_upstream_slow_504_then_down_502(tmp_path):
    gw = Gateway(tmp_path, {"routes": ATTACK_ROUTES,
                            "upstream": {"response_timeout_ms": 300, "connect_timeout_ms": 500}})
    try:
        t = tag()
        t0 = time.time()
        r = gw.get("/slow?ms=3000&t=" + t)
        took = time.time() - t0
        assert r.status == 504, r
        assert r.headers["content-type"].startswith("application/json")
        j = r.json()
        assert isinstance(j["error"], str) and isinstance(j["detail"], str), j
        assert took < 2.5, took
        acc, outs = _outcome_for(gw, "ms=3000&t=" + t)
        assert len(acc) == 1 and acc[0]["decision"] == "allow"
        assert len(outs) == 1 and outs[0]["status"] == 504, outs
        # a fast request on the same upstream still works
        assert gw.get("/slow?ms=10&t=ok-" + t).status == 200
        assert gw.mg.alive()
        verify_db(gw)
    finally:
        gw.close()


class FreezeProxy:
    """A TCP relay to 127.0.0.1:port. freeze() stops relaying on the connections open now:
    they stay open and silent, as a product that vanished without a FIN or an RST (a
    partition, a deleted pod); connections opened later relay normally."""

    def __init__(self, port):
        self.target = port
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.port = self.ls.getsockname()[1]
        self.pairs, self.lock, self.stopped = [], threading.Lock(), False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.ls.accept()
                u = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                return
            pair = {"c": c, "u": u, "frozen": False}
            with self.lock:
                self.pairs.append(pair)
            threading.Thread(target=self._pump, args=(pair,), daemon=True).start()

    def _pump(self, pair):
        c, u = pair["c"], pair["u"]
        try:
            while not self.stopped:
                if pair["frozen"]:
                    time.sleep(0.05)
                    continue
                ready, _, _ = select.select([c, u], [], [], 0.1)
                for sk in ready:
                    if pair["frozen"]:
                        break
                    data = sk.recv(65536)
                    if not data:
                        return
                    (u if sk is c else c).sendall(data)
        except OSError:
            return
        finally:
            if not pair["frozen"] or self.stopped:
                c.close()
                u.close()

    def freeze(self):
        with self.lock:
            for p in self.pairs:
                p["frozen"] = True
            return len(self.pairs)

    def close(self):
        self.stopped = True
        self.ls.close()
        with self.lock:
            for p in self.pairs:
                p["c"].close()
                p["u"].close()


def test_upstream_silent_connection_dropped_by_ping(tmp_path):
    """An h2c upstream connection that goes silent (no FIN, no RST) is PINGed after
    upstream.ping_interval_s without a frame and dropped ping_timeout_s later: the request
    waiting on it gets a 502 in seconds, not the 504 of response_timeout_ms, its outcome entry
    says so, and the next request goes over a new connection."""
    named = tmp_path / "up"
    named.mkdir()
    up = mgtest.start_upstream(named)
    px = FreezeProxy(up.port)
    gw = None
    try:
        gw = Gateway(tmp_path, {"routes": ATTACK_ROUTES, "workers": 1,
                                "upstream": {"address": "127.0.0.1:%d" % px.port,
                                             "connections": 1, "response_timeout_ms": 20000,
                                             "ping_interval_s": 1, "ping_timeout_s": 1}})
        t = tag()
        assert gw.get("/echo?t=first-" + t).status == 200
        time.sleep(2.5)  # idle: PINGed and answered, the connection stays
        assert gw.get("/echo?t=idle-" + t).status == 200
        assert px.freeze() == 1, "one upstream connection expected"
        t0 = time.time()
        r = gw.get("/echo?t=frozen-" + t)
        took = time.time() - t0
        assert r.status == 502, r
        assert took < 6, took
        assert "PING" in r.json()["detail"], r.body
        acc, outs = _outcome_for(gw, "t=frozen-" + t)
        assert len(outs) == 1 and outs[0]["status"] == 502, outs
        r = gw.get("/echo?t=after-" + t)
        assert r.status == 200, r
        assert len(px.pairs) == 2  # a new connection
        assert gw.mg.alive()
        verify_db(gw)
    finally:
        if gw:
            gw.close()
        px.close()
        mgtest.stop(up)


def _localhost_first_family():
    """The family of the first /etc/hosts line naming localhost (evdns reads it in order)."""
    try:
        with open("/etc/hosts") as f:
            for line in f:
                w = line.split("#", 1)[0].split()
                if len(w) >= 2 and "localhost" in w[1:]:
                    return socket.AF_INET6 if ":" in w[0] else socket.AF_INET
    except OSError:
        pass
    return None


@pytest.mark.parametrize("protocol", ["h2c", "http1"])
def test_upstream_by_host_name(tmp_path, protocol):
    """An upstream named by a host name is looked up on the worker's loop (evdns, /etc/hosts
    first: no packet leaves the machine), connected and used like a numeric one."""
    if _localhost_first_family() != socket.AF_INET:
        pytest.skip("/etc/hosts does not map localhost to 127.0.0.1 first")
    named = tmp_path / "named"
    named.mkdir()
    up = mgtest.start_upstream(named, http1=protocol == "http1")
    gw = None
    try:
        gw = Gateway(tmp_path, {"routes": ATTACK_ROUTES,
                                "upstream": {"address": "localhost:%d" % up.port,
                                             "protocol": protocol, "connect_timeout_ms": 2000}})
        t = tag()
        for k in range(3):
            r = gw.get("/healthz/named-%s-%d" % (t, k))
            assert r.status == 404, r  # the product's own answer, not meshgate's 502
        with open(up.log_path) as f:
            seen = [json.loads(line)["path"] for line in f if line.strip()]
        assert sum(1 for p in seen if ("named-%s-" % t) in p) == 3, seen
        assert gw.mg.alive()
    finally:
        if gw:
            gw.close()
        mgtest.stop(up)

def _down_gateway(tmp_path):
    gw = Gateway(tmp_path, {"routes": ATTACK_ROUTES, "upstream": {"connect_timeout_ms": 500}})
    assert gw.get("/healthz/up-" + tag()).status == 404  # the product answers
    gw.up.proc.kill()  # the product goes away
    gw.up.proc.wait(5)
    return gw


def test_upstream_down_502_json(tmp_path):
    gw = _down_gateway(tmp_path)
    try:
        t = tag()
        for k in range(2):  # the dying connection, then a fresh connect attempt
            r = gw.get("/healthz/down-%s-%d" % (t, k))
            assert r.status == 502, r
            assert r.headers["content-type"].startswith("application/json")
            j = r.json()
            assert j["error"] == "upstream_unavailable" and isinstance(j["detail"], str), j
        es = gw.entries()
        for k in range(2):
            acc = [e for e in es if e.get("path") == "/healthz/down-%s-%d" % (t, k)]
            assert len(acc) == 1 and acc[0]["decision"] == "allow", acc
        assert gw.mg.alive()
        verify_db(gw)
    finally:
        gw.close()


def test_upstream_down_502_has_outcome_entry(tmp_path):
    # regression: a refused upstream connect left an allowed access entry without an
    # outcome (fixed in bf337de: outcome.forwarded set when mg_req_forward accepts)
    gw = _down_gateway(tmp_path)
    try:
        t = tag()
        assert gw.get("/healthz/down-" + t).status == 502
        acc, outs = _outcome_for(gw, "down-" + t)
        assert len(outs) == 1 and outs[0]["status"] == 502, outs
        # and the OpenLineage export has its FAIL event
        ev = [json.loads(x) for x in gw.export("--format", "openlineage").splitlines()]
        assert [e["eventType"] for e in ev if e["run"]["runId"] == acc[0]["request_id"]] == ["FAIL"]
    finally:
        gw.close()


# ---- 256 MiB each way in bounded memory --------------------------------------------------------

BIG = 256 << 20


@pytest.fixture(scope="module")
def biggw(tmp_path_factory):
    g = Gateway(tmp_path_factory.mktemp("big"), {"routes": ATTACK_ROUTES})
    yield g
    g.close()


def _pattern_chunks(n):
    pat = bytes(range(256)) * 4096  # 1 MiB
    while n > 0:
        k = min(n, len(pat))
        yield pat[:k]
        n -= k


@pytest.mark.slow
def test_256mib_download_bounded_memory(biggw):
    t = tag()
    url = biggw.url + "/big?bytes=%d&t=%s" % (BIG, t)
    p = subprocess.Popen(["curl", "-s", "-S", "--http2-prior-knowledge", "--max-time", "120",
                          url], stdout=subprocess.PIPE)
    h = hashlib.sha256()
    n = 0
    while True:
        b = p.stdout.read(1 << 20)
        if not b:
            break
        h.update(b)
        n += len(b)
    assert p.wait(130) == 0
    want = hashlib.sha256()
    for c in _pattern_chunks(BIG):
        want.update(c)
    assert n == BIG and h.hexdigest() == want.hexdigest()
    hwm = hwm_kb(biggw.mg.proc.pid)
    assert hwm < 64 * 1024, "VmHWM %d kB" % hwm
    acc, outs = _outcome_for(biggw, "t=" + t)
    assert outs[0]["status"] == 200 and outs[0]["bytes_out"] == BIG


@pytest.mark.slow
def test_256mib_upload_bounded_memory(biggw):
    t = tag()
    url = biggw.url + "/upload?t=" + t
    p = subprocess.Popen(["curl", "-s", "-S", "--http2-prior-knowledge", "--max-time", "120",
                          "-X", "POST", "-H", "content-type: application/octet-stream",
                          "-T", "-", url], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    want = hashlib.sha256()

    def feed():
        try:
            for c in _pattern_chunks(BIG):
                want.update(c)
                p.stdin.write(c)
        finally:
            p.stdin.close()
    th = threading.Thread(target=feed)
    th.start()
    out = p.stdout.read()
    th.join(130)
    assert p.wait(130) == 0
    j = json.loads(out)
    assert j["bytes"] == BIG and j["sha256"] == want.hexdigest(), j
    hwm = hwm_kb(biggw.mg.proc.pid)
    assert hwm < 64 * 1024, "VmHWM %d kB" % hwm
    acc, outs = _outcome_for(biggw, "t=" + t)
    assert acc[0]["action"] == "write"
    assert outs[0]["status"] == 200 and outs[0]["bytes_in"] == BIG
