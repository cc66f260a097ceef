"""Lineage through the real binary, as an auditor sees it.

h2load runs of allowed and denied requests leave exactly one access entry per request and
one outcome entry per forwarded request; above deny_entries_per_s, summary entries account
for every denied request; kill -9 under load loses no entry the product (or a client) saw
and the log continues after a restart; write-ahead puts the access entry in the log before
the product answers; `meshgate lineage verify` names the first bad index for every kind of
tampering; filtered and OpenLineage exports; a full lineage map fails closed; the admin
export equals the CLI export.

Run: MESHGATE_BIN=.../meshgate /usr/bin/python3 -m pytest -q tests/integration/test_lineage.py
"""
import json
import os
import re
import shutil
import signal
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
needs_h2load = pytest.mark.skipif(not shutil.which("h2load"), reason="h2load not installed")

SCHEMA_DIR = "/work/shared/schemas/openlineage"
ROUTES = ATTACK_ROUTES + [{"prefix": "/status", "auth": "none"}]


def tag():
    return uuid.uuid4().hex[:10]


def canon(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def vkey(gw):
    return os.path.join(gw.dir, "keys", "lineage.vkey")


def verify(data, key):
    """`meshgate lineage verify --key KEY -` over data: (exit status, stderr)."""
    r = subprocess.run([mgtest.meshgate_bin(), "lineage", "verify", "--key", key, "-"],
                       input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    return r.returncode, r.stderr.decode()


def export_piped_into_verify(gw):
    """`meshgate lineage export --db DIR | meshgate lineage verify --key K -` as two
    processes joined by a pipe: (export status, verify status, verify stderr)."""
    exp = subprocess.Popen([mgtest.meshgate_bin(), "lineage", "export", "--db",
                            os.path.join(gw.dir, "var/lineage")], stdout=subprocess.PIPE)
    ver = subprocess.Popen([mgtest.meshgate_bin(), "lineage", "verify", "--key", vkey(gw), "-"],
                           stdin=exp.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    exp.stdout.close()
    _, err = ver.communicate(timeout=120)
    exp.wait(timeout=30)
    return exp.returncode, ver.returncode, err.decode()


def h2load(url, n, c=2, m=4, headers=(), timeout=120):
    """Runs h2load; returns {"2xx": k, "4xx": k, "5xx": k, "done": k} from its summary."""
    args = ["h2load", "-n", str(n), "-c", str(c), "-m", str(m)]
    for h in headers:
        args += ["-H", h]
    out = subprocess.run(args + [url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         timeout=timeout).stdout.decode()
    res = {}
    m1 = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    m2 = re.search(r"requests: \d+ total, \d+ started, (\d+) done", out)
    assert m1 and m2, out
    res["2xx"], res["3xx"], res["4xx"], res["5xx"] = (int(x) for x in m1.groups())
    res["done"] = int(m2.group(1))
    return res


def bearer(tok):
    return "authorization: Bearer " + tok


def restart(gw):
    mgtest.stop(gw.mg)
    gw.mg = mgtest.start_meshgate(gw.config_path)
    mgtest.wait_ready(gw.mg)
    gw.url = gw.mg.data_url


def entries_of(export_bytes):
    return [json.loads(x) for x in export_bytes.splitlines()
            if b'"index"' in x and not x.startswith(b'{"proof"')]


@pytest.fixture(scope="module")
def lgw(tmp_path_factory):
    g = Gateway(tmp_path_factory.mktemp("lineage"),
                {"routes": ROUTES, "workers": 2, "lineage": {"deny_entries_per_s": 1000000}})
    g.etl = g.issuer.es256(sub="svc", azp="etl")
    g.analyst = g.issuer.es256(sub="alice", groups=["analysts"])
    g.auditor = g.issuer.es256(sub="audrey", scope="mesh:audit")
    yield g
    g.close()


# ---- h2load: one access entry per request, one outcome per forwarded request ----------------


@needs_h2load
def test_h2load_allowed_and_denied_one_entry_each(lgw):
    t = tag()
    allowed, denied, unauth = ("/datasets/sales/ok-" + t, "/datasets/pii/no-" + t,
                               "/datasets/sales/anon-" + t)
    runs = {}

    def run(name, *a, **kw):
        runs[name] = h2load(*a, **kw)
    ths = [threading.Thread(target=run, args=("allow", lgw.url + allowed, 2000, 4, 8,
                                              [bearer(lgw.etl)])),
           threading.Thread(target=run, args=("deny", lgw.url + denied, 1000, 2, 4,
                                              [bearer(lgw.etl)])),
           threading.Thread(target=run, args=("unauth", lgw.url + unauth, 500, 1, 4))]
    for th in ths:
        th.start()
    for th in ths:
        th.join(150)
    assert runs["allow"]["2xx"] == 2000, runs
    assert runs["deny"]["4xx"] == 1000, runs
    assert runs["unauth"]["4xx"] == 500, runs
    assert len(lgw.upstream_saw(allowed)) == 2000
    assert lgw.upstream_saw(denied) == [] and lgw.upstream_saw(unauth) == []

    lgw.checkpoint()
    es = entries_of(lgw.export())
    assert [e["index"] for e in es] == list(range(len(es)))
    assert not any(e.get("summary") for e in es)  # the limit is far above the rate
    acc = {p: [e for e in es if e.get("path") == p] for p in (allowed, denied, unauth)}
    assert len(acc[allowed]) == 2000 and {e["decision"] for e in acc[allowed]} == {"allow"}
    assert len(acc[denied]) == 1000 and {e["decision"] for e in acc[denied]} == {"deny"}
    assert {e["reason"] for e in acc[denied]} == {"denied_by_grant"}
    assert len(acc[unauth]) == 500 and {e["decision"] for e in acc[unauth]} == {"unauthenticated"}
    outs = {}
    for e in es:
        if "of" in e:
            outs.setdefault(e["of"], []).append(e)
    by_index = {e["index"]: e for e in es}
    for a in acc[allowed]:
        (o,) = outs[a["index"]]
        assert o["status"] == 200 and o["request_id"] == a["request_id"]
        assert o["index"] > a["index"] and o["bytes_out"] > 0
    for a in acc[denied] + acc[unauth]:
        assert a["index"] not in outs
    # every outcome points at an allowed access entry
    for of in outs:
        assert by_index[of].get("decision") == "allow"
    assert len({e["request_id"] for e in acc[allowed] + acc[denied] + acc[unauth]}) == 3500
    # export while serve runs, piped into verify
    xs, vs, err = export_piped_into_verify(lgw)
    assert (xs, vs) == (0, 0), err


# ---- summaries above deny_entries_per_s -----------------------------------------------------


@needs_h2load
def test_deny_summaries_account_for_every_denied_request(tmp_path):
    gw = Gateway(tmp_path, {"routes": ROUTES, "lineage": {"deny_entries_per_s": 5}})
    try:
        etl = gw.issuer.es256(sub="svc", azp="etl")
        t = tag()
        t0 = time.time()
        d = h2load(gw.url + "/datasets/pii/s-" + t, 1500, 3, 4, [bearer(etl)])
        u = h2load(gw.url + "/datasets/sales/s-" + t, 700, 2, 4, [bearer("x.y.z")])
        ok = h2load(gw.url + "/datasets/sales/ok-" + t, 50, 1, 1, [bearer(etl)])
        elapsed = time.time() - t0
        assert d["4xx"] == 1500 and u["4xx"] == 700 and ok["2xx"] == 50, (d, u, ok)

        def tally(es):
            res = {}
            for dec in ("deny", "unauthenticated"):
                single = [e for e in es if e.get("decision") == dec and not e.get("summary")]
                summ = [e for e in es if e.get("decision") == dec and e.get("summary")]
                res[dec] = (single, summ)
            return res
        # summaries are written once per second per (address, reason): wait for the last one
        deadline = time.time() + 8
        while True:
            es = gw.entries()
            tl = tally(es)
            total = {k: len(v[0]) + sum(s["count"] for s in v[1]) for k, v in tl.items()}
            if total == {"deny": 1500, "unauthenticated": 700} or time.time() > deadline:
                break
            time.sleep(0.3)
        assert total == {"deny": 1500, "unauthenticated": 700}, total
        for dec, (single, summ) in tl.items():
            assert summ, dec
            for s in summ:
                assert s["summary"] == 1 and s["count"] > 0 and s["peer"].startswith("127.0.0.1")
                assert s["reason"] and s["decision"] == dec
                assert "path" not in s and "request_id" not in s
                assert all(isinstance(v, (int, str)) for v in s.values())
        # individual entries stay within the per-address budget (shared by all reasons)
        singles = len(tl["deny"][0]) + len(tl["unauthenticated"][0])
        assert 5 <= singles <= 5 * (int(elapsed) + 3), (singles, elapsed)
        assert {s["reason"] for s in tl["deny"][1]} == {"denied_by_grant"}
        # allowed requests are never summarised
        assert len([e for e in es if e.get("path") == "/datasets/sales/ok-" + t]) == 50
        assert [e["index"] for e in es] == list(range(len(es)))
        xs, vs, err = export_piped_into_verify(gw)
        assert (xs, vs) == (0, 0), err
    finally:
        gw.close()


# ---- kill -9 under load, restart -------------------------------------------------------------


def test_kill9_under_load_every_seen_request_recorded(tmp_path):
    gw = Gateway(tmp_path, {"routes": ROUTES, "workers": 2})
    etl = gw.issuer.es256(sub="svc", azp="etl")
    t = tag()
    answered, lock, stop = [], threading.Lock(), threading.Event()

    def load(k):
        i = 0
        try:
            c = RawH2(gw.mg.data_port, timeout=2)
            while not stop.is_set() and not c.closed and c.goaway is None:
                sids = []
                for j in range(4):  # 4 streams in flight per connection
                    p = "/datasets/sales/k%s-%d-%d" % (t, k, i)
                    i += 1
                    sids.append((p, c.request(p, headers=[("authorization", "Bearer " + etl)])))
                for p, sid in sids:
                    st = c.wait_stream(sid, 2)
                    if st["status"] is not None:
                        with lock:
                            answered.append((p, st["status"]))
        except OSError:
            pass
    ths = [threading.Thread(target=load, args=(k,)) for k in range(4)]
    try:
        for th in ths:
            th.start()
        time.sleep(1.5)
        gw.mg.proc.send_signal(signal.SIGKILL)
        gw.mg.proc.wait(10)
        stop.set()
        for th in ths:
            th.join(10)
        assert len(answered) > 50, len(answered)
        assert {s for _, s in answered} == {200}
        seen = [r for r in gw.upstream_requests() if ("k" + t) in r["path"]]
        seen_ids = [dict(r["headers"])["x-request-id"] for r in seen]
        assert len(seen_ids) >= len(answered)
        restart(gw)
        es = gw.entries()
        before = len(es)
        by_rid = {e["request_id"]: e for e in es if "decision" in e and "request_id" in e}
        # every request the product saw has its allowed access entry (same request_id)
        missing = [rid for rid in seen_ids if rid not in by_rid]
        assert missing == [], missing[:5]
        assert all(by_rid[rid]["decision"] == "allow" for rid in seen_ids)
        recorded = {e["path"] for e in by_rid.values()}
        assert [p for p, _ in answered if p not in recorded] == []
        # the log continues at the next index, no repeats
        after = "/datasets/sales/after-" + t
        for _ in range(5):
            assert gw.get(after, token=etl).status == 200
        es = gw.entries()
        assert [e["index"] for e in es] == list(range(len(es)))
        new = [e for e in es if e.get("path") == after]
        assert len(new) == 5 and min(e["index"] for e in new) >= before
        rids = [(e["request_id"], "of" in e) for e in es if "request_id" in e]
        assert len(rids) == len(set(rids))
        xs, vs, err = export_piped_into_verify(gw)
        assert (xs, vs) == (0, 0), err
    finally:
        stop.set()
        gw.close()


# ---- write-ahead / async: the access entry is there before the answer ----------------------


@pytest.mark.parametrize("durability", ["write-ahead", "async"])
def test_access_entry_in_log_while_request_in_flight(tmp_path, durability):
    gw = Gateway(tmp_path, {"routes": ROUTES, "lineage": {"durability": durability}})
    try:
        t = tag()
        path = "/slow?ms=2000&t=" + t
        res = {}
        th = threading.Thread(target=lambda: res.update(r=gw.get(path)))
        th.start()
        deadline = time.time() + 5
        while not gw.upstream_saw(t) and time.time() < deadline:
            time.sleep(0.02)
        assert gw.upstream_saw(t), "the request did not reach the product"
        # read the log from another process while the product holds the request
        gw.checkpoint()
        es = entries_of(gw.export())
        assert th.is_alive(), "the slow request already finished"
        acc = [e for e in es if e.get("path") == path]
        assert len(acc) == 1 and acc[0]["decision"] == "allow", acc
        assert not any(e.get("of") == acc[0]["index"] for e in es)  # no outcome yet
        rid = dict(gw.upstream_saw(t)[0]["headers"])["x-request-id"]
        assert acc[0]["request_id"] == rid
        th.join(10)
        assert res["r"].status == 200
        deadline = time.time() + 5
        while time.time() < deadline:
            es = gw.entries()
            outs = [e for e in es if e.get("of") == acc[0]["index"]]
            if outs:
                break
            time.sleep(0.1)
        assert len(outs) == 1 and outs[0]["status"] == 200
        assert outs[0]["duration_us"] >= 1900000
    finally:
        gw.close()


# ---- tampering: verify names the first bad index ----------------------------------------------


@pytest.fixture(scope="module")
def verified_export(lgw):
    t = tag()
    for i in range(6):
        assert lgw.get("/datasets/sales/tamper-%s-%d" % (t, i), token=lgw.etl).status == 200
        assert lgw.get("/datasets/pii/tamper-%s-%d" % (t, i), token=lgw.etl).status == 403
    lgw.checkpoint()
    data = lgw.export()
    rc, err = verify(data, vkey(lgw))
    assert rc == 0, err
    lines = data.splitlines()
    pos = {json.loads(x)["index"]: i for i, x in enumerate(lines) if b'"index"' in x}
    assert len(pos) >= 12
    return lines, pos


def _cps(lines):
    return [i for i, x in enumerate(lines) if x.startswith(b'{"checkpoint"')]


def _case(name, lines, pos):
    """(tampered lines, index verify must name, word its reason must contain)."""
    ls = list(lines)
    last = max(pos)
    k = last - 6
    if name == "edited":
        o = json.loads(ls[pos[k]])
        o["time"] = o["time"][:-2] + ("1Z" if o["time"][-2] != "1" else "2Z")
        ls[pos[k]] = canon(o)
        return ls, k, "edited"
    if name == "deleted":
        del ls[pos[k]]
        return ls, k, "missing"
    if name == "reordered":
        ls[pos[k]], ls[pos[k + 1]] = ls[pos[k + 1]], ls[pos[k]]
        return ls, k, ""
    if name == "inserted":
        # a copy of entry k-1 renumbered k, placed before the real entry k
        o = json.loads(ls[pos[k - 1]])
        o["index"] = k
        ls.insert(pos[k], canon(o))
        return ls, k, ""
    if name == "appended":
        o = json.loads(ls[pos[last]])
        o["index"] = last + 1
        ls.append(canon(o))
        return ls, last + 1, "not covered"
    if name == "truncated":
        # drop the last entries but keep the final checkpoint that covers them
        final = _cps(ls)[-1]
        ls = [x for i, x in enumerate(ls) if not (b'"index"' in x and json.loads(x)["index"] >= k)
              or i == final]
        return ls, k, "truncated"
    if name == "forged-checkpoint":
        final = _cps(ls)[-1]
        o = json.loads(ls[final])
        note = o["checkpoint"].split("\n")
        root = bytearray(__import__("base64").b64decode(note[2]))
        root[0] ^= 1
        note[2] = __import__("base64").b64encode(bytes(root)).decode()
        o["checkpoint"] = "\n".join(note)
        ls[final] = json.dumps(o, separators=(",", ":")).encode()
        return ls, None, "checkpoint"
    raise AssertionError(name)


TAMPER = ["edited", "deleted", "reordered", "inserted", "appended", "truncated",
          "forged-checkpoint"]


@pytest.mark.parametrize("name", TAMPER)
def test_tampered_export_fails_naming_index(lgw, verified_export, name):
    lines, pos = verified_export
    ls, index, word = _case(name, lines, pos)
    rc, err = verify(b"\n".join(ls) + b"\n", vkey(lgw))
    assert rc == 1, (name, err)
    assert len(err.strip().splitlines()) == 1, err
    if index is not None:
        assert re.search(r"\bindex %d\b" % index, err), (name, index, err)
    else:
        # a forged checkpoint: named by the checkpoint's size and the last index it covers
        final = json.loads(ls[_cps(ls)[-1]])["checkpoint"].split("\n")
        size = int(final[1])
        assert ("checkpoint %d" % size) in err and ("index %d" % (size - 1)) in err, err
    assert word in err, err


def test_unknown_key_fails(lgw, verified_export, tmp_path):
    lines, _ = verified_export
    kdir = str(tmp_path / "other")
    r = subprocess.run([mgtest.meshgate_bin(), "keygen", "--name", "test.example/orders",
                        "--out", kdir], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert r.returncode == 0, r.stderr
    data = b"\n".join(lines) + b"\n"
    rc, err = verify(data, os.path.join(kdir, "lineage.vkey"))
    assert rc == 1 and "unknown key" in err, err
    # named by the first checkpoint (it signs entries 0..size-1): its size, and index 0 or
    # the checkpoint's last index
    first = json.loads(lines[_cps(lines)[0]])["checkpoint"].split("\n")
    size = int(first[1])
    assert ("checkpoint %d " % size) in err, err
    assert re.search(r"\bindex (0|%d)\b" % (size - 1), err), err
    # the right key among several verifies
    r = subprocess.run([mgtest.meshgate_bin(), "lineage", "verify", "--key",
                        os.path.join(kdir, "lineage.vkey"), "--key", vkey(lgw), "-"],
                       input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert r.returncode == 0, r.stderr


# ---- filtered and OpenLineage exports ----------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_traffic(lgw):
    """Reads, writes, a denied read, a 503 from the product and a reset, by two principals."""
    t = tag()
    # a raw h2 client keeps its connection and never resets a finished stream (curl may
    # RST_STREAM(CANCEL) once it has content-length bytes, before END_STREAM arrives)
    c = RawH2(lgw.mg.data_port)
    ana = [("authorization", "Bearer " + lgw.analyst), ("x-mesh-purpose", "analytics")]
    etl = [("authorization", "Bearer " + lgw.etl)]
    for i in range(3):
        st = c.wait_stream(c.request("/datasets/orders_fact/ol-%s-%d" % (t, i), headers=ana))
        assert st["status"] == 200 and st["ended"], st
        st = c.wait_stream(c.request("/datasets/sales/ol-%s-%d" % (t, i), method="POST",
                                     headers=etl, body=b"{}"))
        assert st["status"] == 200 and st["ended"], st
    c.close()
    purpose = {"x-mesh-purpose": "analytics"}
    assert lgw.get("/datasets/pii/ol-" + t, token=lgw.analyst, headers=purpose).status == 403
    assert lgw.get("/status?code=503&t=" + t).status == 503
    c = RawH2(lgw.mg.data_port)
    st = c.wait_stream(c.request("/reset?t=" + t), 10)
    c.close()
    assert st["rst"] is not None or not st["ended"], st
    time.sleep(0.3)
    lgw.checkpoint()
    return t


@pytest.mark.parametrize("args,match", [
    (["--principal", "user:alice"], lambda e: e.get("principal") == "user:alice"),
    (["--dataset", "sales"], lambda e: e.get("dataset") == "sales"),
    (["--action", "read"], lambda e: e.get("action") == "read"),
    (["--action", "write", "--principal", "user:svc"],
     lambda e: e.get("action") == "write" and e.get("principal") == "user:svc"),
], ids=["principal", "dataset", "action", "action+principal"])
def test_filtered_export_verifies(lgw, mixed_traffic, args, match):
    full = entries_of(lgw.export())
    data = lgw.export(*args)
    got = entries_of(data)
    want_acc = [e for e in full if "of" not in e and match(e)]
    acc = [e for e in got if "of" not in e]
    assert want_acc and [e["index"] for e in acc] == [e["index"] for e in want_acc]
    assert all(match(e) for e in acc)
    # outcomes ride along with their access entries
    want_idx = {e["index"] for e in want_acc}
    assert all(e["of"] in want_idx for e in got if "of" in e)
    # every entry line is followed by its inclusion proof
    lines = data.splitlines()
    for i, x in enumerate(lines):
        if b'"index"' in x and not x.startswith(b'{"proof"'):
            assert lines[i + 1].startswith(b'{"proof"'), lines[i + 1][:80]
    rc, err = verify(data, vkey(lgw))
    assert rc == 0, err
    # a filtered export with an edited entry fails too
    bad = data.replace(b'"method":"GET"', b'"method":"PUT"', 1) if b'"method":"GET"' in data \
        else data.replace(b'"method":"POST"', b'"method":"PUT"', 1)
    rc, err = verify(bad, vkey(lgw))
    assert rc == 1, err


def verify_out(data, key, *extra):
    r = subprocess.run([mgtest.meshgate_bin(), "lineage", "verify", "--key", key] + list(extra)
                       + ["-"], input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=60)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def test_verify_says_what_it_proved(lgw, mixed_traffic):
    """An export can be cut down without the key and still verify: filtered (its marker is
    not signed), after a prefix, or ended at an earlier checkpoint. verify says which, and
    --complete / --min-size turn that into a failure for an auditor who asked for all."""
    key = vkey(lgw)
    full = lgw.export()
    lines = full.splitlines()
    cps = [i for i, x in enumerate(lines) if x.startswith(b'{"checkpoint"')]
    size = int(json.loads(lines[cps[-1]])["checkpoint"].split("\n")[1])
    rc, out, err = verify_out(full, key, "--complete", "--min-size", str(size))
    assert rc == 0, err
    assert "complete, entries 0..%d, checkpoint %d" % (size - 1, size) in out, out
    assert "NOT a complete log" not in out

    # the tail cut at an earlier checkpoint: intact, but --min-size from a trusted size fails
    cut = b"\n".join(lines[:cps[0] + 1]) + b"\n"
    first = int(json.loads(lines[cps[0]])["checkpoint"].split("\n")[1])
    assert first < size
    rc, out, err = verify_out(cut, key)
    assert rc == 0 and "checkpoint %d" % first in out, (out, err)
    rc, out, err = verify_out(cut, key, "--min-size", str(size))
    assert rc == 1 and "truncated export" in err and "covers %d entries" % first in err, err

    # every entry removed, the checkpoints marked "filtered": verifies, but says so
    stripped = []
    for x in lines:
        o = json.loads(x)
        if "checkpoint" in o:
            o.pop("leaves", None)
            o["filtered"] = 1
            stripped.append(json.dumps(o, separators=(",", ":")).encode())
    data = b"\n".join(stripped) + b"\n"
    rc, out, err = verify_out(data, key)
    assert rc == 0, err
    assert "NOT a complete log" in out and "filtered, no entries" in out, out
    rc, out, err = verify_out(data, key, "--complete")
    assert rc == 1 and "completeness not proven" in err, err

    # a real filtered export: inclusion proven, completeness not
    data = lgw.export("--principal", "user:alice")
    rc, out, err = verify_out(data, key)
    assert rc == 0 and "entries proven included" in out and "completeness not proven" in out, out
    rc, out, err = verify_out(data, key, "--complete")
    assert rc == 1 and "filtered" in err, err

    # an export after a prefix (--since): the entries before it are not in the file
    entries = [json.loads(x) for x in lines if b'"index"' in x]
    mid = entries[len(entries) // 2]
    data = lgw.export("--since", mid["time"])
    first = min(e["index"] for e in entries if e["time"] >= mid["time"])  # same-time entries
    rc, out, err = verify_out(data, key)
    assert rc == 0 and "after a prefix of %d" % first in out, (out, err)
    rc, out, err = verify_out(data, key, "--complete")
    assert rc == 1 and "starts after a prefix" in err, err


def _schema_validator():
    try:
        import jsonschema
    except ImportError:
        return None
    store = {}
    for fn in os.listdir(SCHEMA_DIR):
        if fn.endswith(".json"):
            with open(os.path.join(SCHEMA_DIR, fn)) as f:
                s = json.load(f)
            store[s["$id"]] = s
    root = store["https://openlineage.io/spec/2-0-2/OpenLineage.json"]
    resolver = jsonschema.RefResolver.from_schema(root, store=store)

    def validate(obj, ref):
        schema = {"$ref": ref}
        jsonschema.Draft202012Validator(schema, resolver=resolver,
                                        format_checker=jsonschema.FormatChecker()).validate(obj)
    return validate


def test_openlineage_export(lgw, mixed_traffic):
    t = mixed_traffic
    es = entries_of(lgw.export())
    out = lgw.export("--format", "openlineage")
    events = [json.loads(x) for x in out.splitlines() if x.strip()]
    by_index = {e["index"]: e for e in es}
    outcomes = [e for e in es if "of" in e]
    assert len(events) == len(outcomes)  # one RunEvent per forwarded request
    by_run = {ev["run"]["runId"]: ev for ev in events}
    assert len(by_run) == len(events)
    for o in outcomes:
        a = by_index[o["of"]]
        ev = by_run[a["request_id"]]
        want = "COMPLETE"
        if o["status"] >= 500 or o["status"] == 0:
            want = "FAIL"
        elif "reset" in o:
            want = "ABORT"
        assert ev["eventType"] == want, (o, a.get("path"), ev["eventType"])
        assert ev["eventTime"] == o["time"]
        facet = ev["run"]["facets"]["meshgate_access"]
        assert facet["origin"] == a["origin"] and facet["index"] == a["index"]
        for k in ("principal", "grant", "purpose"):
            assert facet.get(k) == a.get(k), (k, facet, a)
        if a.get("dataset"):
            names = [d["name"] for d in ev["inputs"]] + [d["name"] for d in ev["outputs"]]
            assert a["dataset"] in names
            if a["action"] == "read":
                assert [d["name"] for d in ev["inputs"]] == [a["dataset"]] and ev["outputs"] == []
            else:
                assert [d["name"] for d in ev["outputs"]] == [a["dataset"]] and ev["inputs"] == []
    ours = [ev for ev in events if t in ev["run"]["facets"]["meshgate_access"].get("path", "")]
    kinds = sorted(ev["eventType"] for ev in ours)
    assert kinds.count("COMPLETE") == 6 and "FAIL" in kinds, kinds
    validate = _schema_validator()
    if validate is None:
        pytest.skip("python3-jsonschema not installed: schema validation not run")
    import jsonschema
    broken = json.loads(json.dumps(events[0]))
    broken["eventType"] = "FINISHED"
    del broken["run"]["runId"]
    with pytest.raises(jsonschema.ValidationError):  # the validator is not vacuous
        validate(broken, "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent")
    for ev in events:
        validate(ev, "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent")
        for ds in ev["inputs"] + ev["outputs"]:
            for facet in list(ds.get("inputFacets", {}).values()) + \
                    list(ds.get("outputFacets", {}).values()):
                url = facet["_schemaURL"]
                validate(facet, url)
        for facet in ev["job"].get("facets", {}).values():
            validate(facet, facet["_schemaURL"])


# ---- admin export ------------------------------------------------------------------------------


def test_admin_export_equals_cli_export(lgw, mixed_traffic):
    r = mgtest.request(lgw.mg.admin_url + "/v1/lineage", token=lgw.auditor, http2=True)
    assert r.status == 200, r
    api = [x for x in r.body.splitlines() if b'"index"' in x]
    cli = [x for x in lgw.export().splitlines() if b'"index"' in x]
    # the admin export signed a checkpoint first, so the CLI export now reaches as far
    assert api and api == cli[:len(api)] and len(cli) == len(api)
    rc, err = verify(r.body, vkey(lgw))
    assert rc == 0, err
    # a filter through the API equals the same filter through the CLI
    r = mgtest.request(lgw.mg.admin_url + "/v1/lineage?principal=user:alice", token=lgw.auditor)
    assert r.status == 200
    api = [x for x in r.body.splitlines() if b'"index"' in x and not x.startswith(b'{"proof"')]
    cli = [x for x in lgw.export("--principal", "user:alice").splitlines()
           if b'"index"' in x and not x.startswith(b'{"proof"')]
    assert api == cli and api
    # not for data-plane tokens
    r = mgtest.request(lgw.mg.admin_url + "/v1/lineage", token=lgw.analyst)
    assert r.status == 403


# ---- a full lineage map ---------------------------------------------------------------------------


@needs_h2load
def test_lineage_map_full_fails_closed(tmp_path):
    gw = Gateway(tmp_path, {"routes": ROUTES, "lineage": {"map_size_mb": 1}})
    try:
        t = tag()
        url = gw.url + "/healthz/fill-" + t
        for _ in range(30):
            r = h2load(url, 500, 2, 4)
            if r["5xx"]:
                break
        assert r["5xx"] > 0, "the 1 MiB map never filled"
        # LMDB can still fit a small commit in pages freed by earlier transactions, so
        # after the first 503s single requests may pass again, but only once recorded.
        # Requests one by one with unique paths: a 503 is never forwarded, and /readyz
        # reports the lineage while it refuses.
        statuses, readyz = [], []
        for i in range(60):
            p = "/healthz/after-%s-%d" % (t, i)
            res = gw.get(p)
            statuses.append((p, res.status))
            assert res.status in (404, 503), res  # 404: forwarded, the product answered
            if res.status == 503:
                assert res.json()["error"] == "lineage_unavailable", res
                rz = mgtest.request(gw.mg.admin_url + "/readyz")
                readyz.append((rz.status, rz.body))
        refused = [p for p, st in statuses if st == 503]
        assert len(refused) >= 10, statuses
        ups = {x["path"] for x in gw.upstream_requests()}
        assert [p for p in refused if p in ups] == [], "a refused request was forwarded"
        bad = [json.loads(b) for st, b in readyz if st == 503]
        assert bad, readyz
        assert all(j["ready"] is False and any("lineage" in x for x in j["reasons"])
                   for j in bad), bad
        assert gw.mg.alive()
        # the log verifies up to its last good (checkpointed) entry while still full
        data = gw.export()
        rc, err = verify(data, vkey(gw))
        assert rc == 0, err
        # with a larger map after a restart: every request the product saw was recorded
        with open(gw.config_path) as f:
            cfg = json.load(f)
        cfg["lineage"]["map_size_mb"] = 64
        with open(gw.config_path, "w") as f:
            json.dump(cfg, f)
        restart(gw)
        es = gw.entries()
        assert [e["index"] for e in es] == list(range(len(es)))
        assert es[:len(entries_of(data))] == entries_of(data)
        recorded = {e["request_id"] for e in es if e.get("decision") == "allow"}
        ups = [dict(x["headers"])["x-request-id"] for x in gw.upstream_requests()]
        assert ups and [rid for rid in ups if rid not in recorded] == []
        xs, vs, err = export_piped_into_verify(gw)
        assert (xs, vs) == (0, 0), err
    finally:
        gw.close()
