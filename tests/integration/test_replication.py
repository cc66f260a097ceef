"""test_replication.py — lineage replication to a real 3-node nats-server JetStream cluster.

Each test runs the real `meshgate serve` (h2c, write-ahead lineage, an "auth": "none" route
so no tokens are needed) in front of tests/integration/upstream.py, loads it with h2load
(bounded in count and time), and then checks what an auditor sees:
  * the raw stream (read message by message with the JetStream API, nats_cluster.py):
    every entry of the origin exactly once, no gap, the exact bytes of the local log;
  * `meshgate lineage export --nats URL --stream S` verifies with the sidecar's key
    (`meshgate lineage verify --key VKEY`), and holds the same entries as the local export.
Scenarios: steady load; the stream leader killed during load and restarted; the whole
cluster stopped for 30 s during load (requests keep being served, the backlog drains to
zero); meshgate kill -9 while shipping, then restarted; two sidecars (two origins) into one
stream. Skips (with the reason) when the meshgate binary ($MESHGATE_BIN) is not built.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgtest  # noqa: E402
import nats_cluster  # noqa: E402

pytestmark = pytest.mark.nats

H2LOAD = shutil.which("h2load")


@pytest.fixture(scope="module")
def cluster():
    if not mgtest.MESHGATE_BIN_OK():
        pytest.skip("meshgate binary not built: " + mgtest.meshgate_bin())
    if not os.path.exists(nats_cluster.NATS_SERVER):
        pytest.skip("nats-server not installed")
    if not H2LOAD:
        pytest.skip("h2load not installed (nghttp2-client)")
    c = nats_cluster.NatsCluster(3).start()
    yield c
    c.stop()


class Sidecar:
    """A meshgate with lineage.nats pointing at the cluster, and its upstream."""

    def __init__(self, d, cluster, stream, subject, origin, retention_s=None, replicas=3,
                 tls_ca=None):
        self.dir = str(d)
        os.makedirs(self.dir, exist_ok=True)
        self.cluster, self.stream, self.subject, self.origin = cluster, stream, subject, origin
        mgtest.make_keys_and_jwks(self.dir)   # the config names an issuer; no token is used
        self.up = mgtest.start_upstream(self.dir)
        self.cfg = mgtest.write_config(self.dir, {
            "upstream": {"address": "127.0.0.1:%d" % self.up.port, "protocol": "h2c"},
            "routes": [{"prefix": "/datasets/", "dataset": "segment:2", "auth": "none"},
                       {"prefix": "/healthz", "auth": "none"}],
            "lineage": {"origin": origin, "checkpoint_every_ms": 200,
                        "nats": dict({"servers": cluster.urls, "stream": stream,
                                      "subject": subject, "replicas": replicas},
                                     **({"retention_s": retention_s} if retention_s else {}),
                                     **({"tls": {"ca": tls_ca}} if tls_ca else {}))},
        })
        self.vkey = os.path.join(self.dir, "keys", "lineage.vkey")
        self.mg = None

    def start(self):
        self.mg = mgtest.start_meshgate(self.cfg)
        mgtest.wait_ready(self.mg, timeout=30)
        return self

    def stop(self, sig=signal.SIGTERM, check=True):
        if self.mg and self.mg.alive():
            if sig == signal.SIGKILL:
                self.mg.proc.kill()
                self.mg.proc.wait(10)
            else:
                rc = mgtest.stop(self.mg, timeout=30)
                assert rc == 0 or not check, "meshgate exited %s on SIGTERM:\n%s" % (
                    rc, mgtest.log_text(self.mg)[-3000:])

    def close(self):
        self.stop(check=False)
        mgtest.stop(self.up)

    def readyz(self):
        r = mgtest.request(self.mg.admin_url + "/readyz", timeout=5)
        return r.status, json.loads(r.body or b"{}")

    def backlog(self):
        _, j = self.readyz()
        return (j.get("nats") or {}).get("backlog")

    def wait_backlog_zero(self, timeout=90):
        """Every entry acknowledged by JetStream and read back from the stream (readyz
        nats.backlog and nats.unverified both 0)."""
        deadline = time.time() + timeout
        n = None
        while time.time() < deadline:
            _, j = self.readyz()
            n = j.get("nats") or {}
            if n.get("backlog") == 0 and n.get("unverified") == 0:
                return
            time.sleep(0.25)
        raise AssertionError("readyz nats %s after %ss:\n%s"
                             % (n, timeout, mgtest.log_text(self.mg)[-3000:]))

    def local_export(self, *extra):
        r = subprocess.run([mgtest.meshgate_bin(), "lineage", "export", "--db",
                            os.path.join(self.dir, "var/lineage")] + list(extra),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        assert r.returncode == 0, r.stderr.decode()
        return r.stdout


def load(sc, n, conns=4, streams=8, timeout=120):
    """n requests through h2load on an auth-none route; returns (succeeded, failed, 2xx)."""
    url = sc.mg.data_url + "/datasets/orders_fact/" + uuid.uuid4().hex[:8]
    r = subprocess.run([H2LOAD, "-n", str(n), "-c", str(conns), "-m", str(streams),
                        "-T", "20", "-N", "20", url],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    out = r.stdout.decode()
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed", out)
    assert m, out
    codes = re.search(r"status codes: (\d+) 2xx", out)
    return int(m.group(4)), int(m.group(5)), int(codes.group(1)) if codes else 0


class Loader(threading.Thread):
    """Background load in bounded h2load rounds until stop() or max_s; records failures."""

    def __init__(self, sc, per_round=300, max_s=120):
        super().__init__(daemon=True)
        self.sc, self.per_round, self.max_s = sc, per_round, max_s
        self.halt = threading.Event()
        self.rounds = []  # (t, succeeded, failed, 2xx)
        self.errors = []

    def run(self):
        t0 = time.time()
        while not self.halt.is_set() and time.time() - t0 < self.max_s:
            try:
                self.rounds.append((time.time(),) + load(self.sc, self.per_round, conns=2,
                                                        streams=4, timeout=60))
            except Exception as ex:  # noqa: BLE001 - recorded, asserted by the test
                self.errors.append(repr(ex))
                time.sleep(0.2)
            time.sleep(0.05)

    def stop(self):
        self.halt.set()
        self.join(90)


def entry_lines(export_bytes):
    return [l for l in export_bytes.splitlines() if b'"index"' in l and
            not l.startswith(b'{"checkpoint"')]


def check_stream(cluster, stream, origin, local_lines):
    """The raw stream holds every entry of `origin` exactly once, no gap, exact bytes of the
    local log. Returns the number of entries it holds."""
    msgs = nats_cluster.stream_messages(cluster.urls[0], stream)
    entries, _ = nats_cluster.entries_by_origin(msgs)
    lines = [l.encode() for l in entries.get(origin, [])]
    idx = [json.loads(l)["index"] for l in lines]
    dups = len(idx) - len(set(idx))
    assert dups == 0, "%d entries of %s are in the stream twice" % (dups, origin)
    assert sorted(idx) == list(range(len(idx))), "gap in the stream for %s" % origin
    assert len(idx) <= len(local_lines), \
        "the stream holds %d entries, the local export only %d" % (len(idx), len(local_lines))
    for i, l in zip(idx, lines):
        assert l == local_lines[i], "entry %d differs from the local log" % i
    return len(idx)


def nats_export(cluster, stream, origin=None, *extra):
    args = [mgtest.meshgate_bin(), "lineage", "export", "--nats", cluster.urls[0],
            "--stream", stream]
    if origin:
        args += ["--origin", origin]
    args += list(extra)
    r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout


def verify(path, vkeys):
    args = [mgtest.meshgate_bin(), "lineage", "verify"]
    for k in vkeys:
        args += ["--key", k]
    r = subprocess.run(args + [path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    return r.returncode, r.stderr.decode()


def final_checks(sc, tmp, expect_min=1):
    """After the sidecar stopped: stream == local log, and the --nats export verifies."""
    local = sc.local_export()
    local_lines = entry_lines(local)
    assert len(local_lines) >= expect_min
    try:
        n = check_stream(sc.cluster, sc.stream, sc.origin, local_lines)
    except AssertionError as ex:  # with the sidecar's last words, for a run that cannot be repeated
        raise AssertionError("%s\nmeshgate log (tail):\n%s"
                             % (ex, mgtest.log_text(sc.mg)[-4000:])) from ex
    assert n == len(local_lines), "stream holds %d of %d entries" % (n, len(local_lines))
    exp = nats_export(sc.cluster, sc.stream, sc.origin)
    path = os.path.join(str(tmp), "nats-export.ndjson")
    with open(path, "wb") as f:
        f.write(exp)
    rc, err = verify(path, [sc.vkey])
    assert rc == 0, err
    assert entry_lines(exp) == local_lines
    return len(local_lines)


def stream_leader(cluster, stream):
    info = nats_cluster.stream_info(cluster.urls[0], stream)
    leader = (info.get("cluster") or {}).get("leader") or "n0"
    return int(leader[1:])


# ---- scenarios ------------------------------------------------------------------------


def test_steady_load_every_entry_once(cluster, tmp_path):
    sc = Sidecar(tmp_path / "a", cluster, "REPL1", "lineage.r1", "test.example/orders/h1")
    try:
        sc.start()
        ok, failed, _ = load(sc, 3000)
        assert failed == 0 and ok == 3000
        sc.wait_backlog_zero()
        sc.stop()
        final_checks(sc, tmp_path, expect_min=6000)  # an access and an outcome entry each
        # filters and OpenLineage from the stream: what the local log gives, byte for byte
        for extra in (["--dataset", "orders_fact", "--action", "read"],
                      ["--action", "read", "--format", "openlineage"]):
            exp = nats_export(cluster, "REPL1", sc.origin, *extra)
            assert exp == sc.local_export(*extra), extra
            assert len(exp.splitlines()) >= 3000, (extra, exp[:300])
        path = os.path.join(str(tmp_path), "filtered.ndjson")
        with open(path, "wb") as f:
            f.write(nats_export(cluster, "REPL1", None, "--dataset", "orders_fact"))
        rc, err = verify(path, [sc.vkey])
        assert rc == 0, err
        # a filtered export needs scratch space: without it, exit 1 and a reason
        r = subprocess.run([mgtest.meshgate_bin(), "lineage", "export", "--nats",
                            cluster.urls[0], "--stream", "REPL1", "--action", "read"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120,
                           env=dict(os.environ, TMPDIR=str(tmp_path / "missing" / "dir")))
        assert r.returncode == 1 and r.stdout == b"", r
        assert b"TMPDIR" in r.stderr, r.stderr
    finally:
        sc.close()


def test_node_killed_during_load(cluster, tmp_path):
    sc = Sidecar(tmp_path / "a", cluster, "REPL2", "lineage.r2", "test.example/orders/h2")
    try:
        sc.start()
        ld = Loader(sc, per_round=300, max_s=60)
        ld.start()
        time.sleep(2)
        victim = stream_leader(cluster, "REPL2")
        cluster.kill_node(victim)
        time.sleep(3)
        cluster.start_node(victim)
        cluster.wait_ready()
        time.sleep(2)
        ld.stop()
        assert not ld.errors, ld.errors
        assert sum(r[1] for r in ld.rounds) > 0
        sc.wait_backlog_zero()
        sc.stop()
        final_checks(sc, tmp_path)
    finally:
        sc.close()


@pytest.mark.slow
def test_cluster_down_30s_during_load(cluster, tmp_path):
    sc = Sidecar(tmp_path / "a", cluster, "REPL3", "lineage.r3", "test.example/orders/h3")
    try:
        sc.start()
        ld = Loader(sc, per_round=200, max_s=90)
        ld.start()
        time.sleep(2)
        cluster.stop_all()
        t_down = time.time()
        grew = 0
        while time.time() - t_down < 30:
            time.sleep(1)
            status, j = sc.readyz()
            assert status == 200, j          # an outage only grows the backlog
            grew = max(grew, (j.get("nats") or {}).get("backlog") or 0)
        served_during = [r for r in ld.rounds if t_down < r[0] < t_down + 30]
        cluster.start()
        time.sleep(2)
        ld.stop()
        assert not ld.errors, ld.errors
        assert served_during and all(r[2] == 0 for r in served_during), served_during
        assert grew > 0
        sc.wait_backlog_zero(timeout=120)
        sc.stop()
        final_checks(sc, tmp_path)
    finally:
        sc.close()


def test_meshgate_kill9_while_shipping_then_restart(cluster, tmp_path):
    sc = Sidecar(tmp_path / "a", cluster, "REPL4", "lineage.r4", "test.example/orders/h4")
    try:
        sc.start()
        ld = Loader(sc, per_round=300, max_s=30)
        ld.start()
        time.sleep(2.5)
        sc.stop(signal.SIGKILL)
        ld.stop()
        sc.start()                      # resumes from the stream's last message
        ok, failed, _ = load(sc, 1000)
        assert failed == 0
        sc.wait_backlog_zero()
        sc.stop()
        final_checks(sc, tmp_path)
    finally:
        sc.close()


def test_two_sidecars_one_stream(cluster, tmp_path):
    a = Sidecar(tmp_path / "a", cluster, "REPL5", "lineage.mesh", "test.example/orders/a")
    b = Sidecar(tmp_path / "b", cluster, "REPL5", "lineage.mesh", "test.example/orders/b*2>%")
    try:
        a.start()
        b.start()
        ta = threading.Thread(target=load, args=(a, 1500))
        ta.start()
        load(b, 1000)
        ta.join(120)
        a.wait_backlog_zero()
        b.wait_backlog_zero()
        a.stop()
        b.stop()
        na = final_checks(a, tmp_path / "a")
        nb = final_checks(b, tmp_path / "b")
        exp = nats_export(cluster, "REPL5")
        path = os.path.join(str(tmp_path), "both.ndjson")
        with open(path, "wb") as f:
            f.write(exp)
        rc, err = verify(path, [a.vkey, b.vkey])
        assert rc == 0, err
        assert len(entry_lines(exp)) == na + nb
        rc, _ = verify(path, [a.vkey])   # b's checkpoints are signed by an unknown key
        assert rc != 0
    finally:
        a.close()
        b.close()


def test_retention_prunes_acknowledged_entries(cluster, tmp_path):
    """lineage.nats.retention_s: entries the stream acknowledged and older than the retention
    leave the local log; the local export starts at the pruned point with the prefix frontier
    and verifies; the stream keeps every entry from 0 and its export verifies."""
    sc = Sidecar(tmp_path / "ret", cluster, "REPL7", "lineage.r7", "test.example/orders/ret",
                 retention_s=1)
    try:
        sc.start()
        ok, failed, _ = load(sc, 500)
        assert failed == 0 and ok == 500
        sc.wait_backlog_zero()
        time.sleep(1.5)  # the first 1,000 entries are now acknowledged and older than 1 s
        ok, failed, _ = load(sc, 100, conns=1, streams=1)  # groups that prune as they commit
        assert failed == 0 and ok == 100
        sc.wait_backlog_zero()
        sc.stop()
        local = sc.local_export()
        first = json.loads(local.splitlines()[0])
        assert "prefix" in first, local[:300]
        pruned = first["prefix"]["size"]
        assert pruned >= 900, pruned
        lpath = os.path.join(str(tmp_path), "local.ndjson")
        with open(lpath, "wb") as f:
            f.write(local)
        rc, err = verify(lpath, [sc.vkey])
        assert rc == 0, err
        exp = nats_export(cluster, "REPL7", sc.origin)
        npath = os.path.join(str(tmp_path), "nats.ndjson")
        with open(npath, "wb") as f:
            f.write(exp)
        rc, err = verify(npath, [sc.vkey])
        assert rc == 0, err
        stream_lines = entry_lines(exp)
        idx = [json.loads(l)["index"] for l in stream_lines]
        assert idx == list(range(len(idx))) and len(idx) >= 1200, len(idx)
        local_lines = entry_lines(local)
        assert local_lines == stream_lines[pruned:pruned + len(local_lines)]
        assert pruned + len(local_lines) <= len(stream_lines)
    finally:
        sc.close()


def test_tls_server_ship_and_export(tmp_path):
    """lineage.nats.tls and `lineage export --tls-ca`: a NATS server that requires TLS (the
    dev CA's server certificate) gets every entry, the export over TLS is the local log, and
    an export that does not trust the CA fails with exit 1."""
    pki = tmp_path / "pki"
    pki.mkdir()
    subprocess.run(["sh", os.path.join(os.path.dirname(__file__), "..", "..", "certs",
                                       "mkcerts.sh"), str(pki)],
                   check=True, stdout=subprocess.DEVNULL)
    tls = ('tls { cert_file: "%s", key_file: "%s" }\n'
           % (pki / "server.pem", pki / "server.key"))
    c = nats_cluster.NatsCluster(1, extra_conf=tls).start()
    sc = None
    try:
        sc = Sidecar(tmp_path / "a", c, "REPLTLS", "lineage.tls", "test.example/orders/tls",
                     replicas=1, tls_ca=str(pki / "ca.pem"))
        sc.start()
        ok, failed, _ = load(sc, 200, conns=1, streams=4)
        assert failed == 0 and ok == 200
        sc.wait_backlog_zero()
        sc.stop()
        local_lines = entry_lines(sc.local_export())
        assert len(local_lines) >= 400
        exp = nats_export(c, "REPLTLS", sc.origin, "--tls-ca", str(pki / "ca.pem"))
        assert entry_lines(exp) == local_lines
        path = os.path.join(str(tmp_path), "tls-export.ndjson")
        with open(path, "wb") as f:
            f.write(exp)
        rc, err = verify(path, [sc.vkey])
        assert rc == 0, err
        r = subprocess.run([mgtest.meshgate_bin(), "lineage", "export", "--nats", c.urls[0],
                            "--stream", "REPLTLS"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        assert r.returncode == 1 and r.stdout == b"", r
        assert b"cannot connect" in r.stderr, r.stderr
    finally:
        if sc:
            sc.close()
        c.stop()
