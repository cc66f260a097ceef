"""test_admin.py — the admin API of a real `meshgate serve`, over HTTP/1.1 and HTTP/2 (curl),
with real ES256 tokens, a real upstream (upstream.py) and the real lineage log.

Run: /usr/bin/python3 -m pytest -q tests/integration/test_admin.py
Needs the binary ($MESHGATE_BIN, default /work/main/build/sidecar/meshgate); skips without.
"""
import concurrent.futures
import base64
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgtest  # noqa: E402

pytestmark = pytest.mark.skipif(not mgtest.MESHGATE_BIN_OK(),
                                reason="meshgate binary not built: %s" % mgtest.meshgate_bin())

PROTOS = [False, True]  # http2?
PROTO_IDS = ["h1", "h2"]


def grant(gid, product="orders", subjects=("group:analysts",), resources=("datasets/orders_fact/**",),
          actions=("read",), **extra):
    g = {"id": gid, "effect": "allow", "subjects": list(subjects), "product": product,
         "resources": list(resources), "actions": list(actions)}
    g.update(extra)
    return g


class Env:
    pass


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("admin")
    e = Env()
    e.dir = str(d)
    e.keys = mgtest.make_keys_and_jwks(d)
    e.up = mgtest.start_upstream(d)
    cfg = mgtest.write_config(d, {"upstream": {"address": "127.0.0.1:%d" % e.up.port}})
    e.mg = mgtest.start_meshgate(cfg)
    try:
        mgtest.wait_ready(e.mg)
        e.admin = mgtest.mint(e.keys, sub="root", scope="openid mesh:admin")
        e.auditor = mgtest.mint(e.keys, sub="audrey", scope="mesh:audit")
        e.owner = mgtest.mint(e.keys, sub="olga", groups=["orders-owners", "staff"])
        e.billing_owner = mgtest.mint(e.keys, sub="bill", groups=["billing-owners"])
        e.nobody = mgtest.mint(e.keys, sub="nobody", groups=["analysts"])
        e.analyst = mgtest.mint(e.keys, sub="ann", groups=["analysts"])
        yield e
    finally:
        mgtest.stop(e.mg)
        mgtest.stop(e.up)


def call(env, method, path, token=None, body=None, headers=None, http2=False):
    return mgtest.request(env.mg.admin_url + path, method=method, token=token, body=body,
                          headers=headers, http2=http2)


def assert_error(r, status, code=None):
    assert r.status == status, r
    assert r.headers["content-type"].startswith("application/json")
    j = r.json()
    assert isinstance(j["error"], str) and isinstance(j["detail"], str), j
    if code:
        assert j["error"] == code, j


# ---- health ---------------------------------------------------------------------------------


@pytest.mark.parametrize("h2", PROTOS, ids=PROTO_IDS)
def test_health_ready(env, h2):
    r = call(env, "GET", "/healthz", http2=h2)
    assert r.status == 200 and r.body == b"ok\n"
    assert r.proto == ("HTTP/2" if h2 else "HTTP/1.1")
    r = call(env, "GET", "/readyz", http2=h2)
    assert r.status == 200 and r.json()["ready"] is True


def test_routing_errors(env):
    assert_error(call(env, "GET", "/v1/nope"), 404, "not_found")
    r = call(env, "POST", "/v1/grants", token=env.admin)
    assert_error(r, 405)
    assert r.headers["allow"] == "GET"
    r = call(env, "PATCH", "/v1/grants/x", token=env.admin, http2=True)
    assert_error(r, 405)
    assert r.headers["allow"] == "GET, PUT, DELETE"
    assert_error(call(env, "GET", "/v1/grants/bad%zzid", token=env.admin), 400)


# ---- authentication -------------------------------------------------------------------------


@pytest.mark.parametrize("h2", PROTOS, ids=PROTO_IDS)
def test_unauthenticated_and_forbidden(env, h2):
    r = call(env, "GET", "/v1/grants", http2=h2)
    assert_error(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = call(env, "GET", "/v1/grants", token="abc.def.ghi", http2=h2)
    assert_error(r, 401, "invalid_token")
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    expired = mgtest.mint(env.keys, sub="root", scope="mesh:admin", exp_in=-3600)
    assert_error(call(env, "GET", "/v1/grants", token=expired, http2=h2), 401, "invalid_token")
    # a valid token without admin, auditor or owner standing
    assert_error(call(env, "GET", "/v1/grants", token=env.nobody, http2=h2), 403)
    assert_error(call(env, "PUT", "/v1/grants/nb1", token=env.nobody, body=grant("nb1"),
                      headers={"If-None-Match": "*"}, http2=h2), 403)


# ---- create / read / replace / delete -----------------------------------------------------


@pytest.mark.parametrize("h2", PROTOS, ids=PROTO_IDS)
def test_grant_lifecycle(env, h2):
    gid = "life-" + ("h2" if h2 else "h1")
    g = grant(gid)
    r = call(env, "PUT", "/v1/grants/" + gid, token=env.admin, body=g, http2=h2)
    assert_error(r, 428, "precondition_required")
    r = call(env, "PUT", "/v1/grants/" + gid, token=env.admin, body=g,
             headers={"If-None-Match": "*"}, http2=h2)
    assert r.status == 201, r
    tag1 = r.headers["etag"]
    assert r.json()["id"] == gid
    r = call(env, "GET", "/v1/grants/" + gid, token=env.admin, http2=h2)
    assert r.status == 200 and r.headers["etag"] == tag1
    assert r.json()["resources"] == ["datasets/orders_fact/**"]
    # create again: exists
    r = call(env, "PUT", "/v1/grants/" + gid, token=env.admin, body=g,
             headers={"If-None-Match": "*"}, http2=h2)
    assert_error(r, 412)
    # replace with the right tag
    g2 = grant(gid, resources=["datasets/orders_fact/2024"])
    r = call(env, "PUT", "/v1/grants/" + gid, token=env.admin, body=g2,
             headers={"If-Match": tag1}, http2=h2)
    assert r.status == 200, r
    tag2 = r.headers["etag"]
    assert tag2 != tag1
    # stale tag
    r = call(env, "PUT", "/v1/grants/" + gid, token=env.admin, body=g,
             headers={"If-Match": tag1}, http2=h2)
    assert_error(r, 412)
    # id mismatch, invalid pattern, unknown field
    assert_error(call(env, "PUT", "/v1/grants/other", token=env.admin, body=g2,
                      headers={"If-None-Match": "*"}, http2=h2), 400)
    bad = grant(gid + "x", resources=["datasets/a**"])
    r = call(env, "PUT", "/v1/grants/" + gid + "x", token=env.admin, body=bad,
             headers={"If-None-Match": "*"}, http2=h2)
    assert_error(r, 400)
    assert "/resources/0" in r.json()["detail"]
    bad = dict(grant(gid + "x"), colour="red")
    r = call(env, "PUT", "/v1/grants/" + gid + "x", token=env.admin, body=bad,
             headers={"If-None-Match": "*"}, http2=h2)
    assert_error(r, 400)
    assert "colour" in r.json()["detail"]
    # delete
    assert_error(call(env, "DELETE", "/v1/grants/" + gid, token=env.admin, http2=h2), 428)
    assert_error(call(env, "DELETE", "/v1/grants/" + gid, token=env.admin,
                      headers={"If-Match": tag1}, http2=h2), 412)
    r = call(env, "DELETE", "/v1/grants/" + gid, token=env.admin, headers={"If-Match": tag2},
             http2=h2)
    assert r.status in (200, 204), r
    assert_error(call(env, "GET", "/v1/grants/" + gid, token=env.admin, http2=h2), 404)


def test_malformed_bodies(env):
    raw = [b'{"id":"m1","id":"m1"}', b'{"id":"m1"} x', b'[' * 5000 + b']' * 5000,
           b'{"id":"m\xff"}', b'{"id":"m1","effect":"allow","n":1e99999}', b'']
    for body in raw:
        r = call(env, "PUT", "/v1/grants/m1", token=env.admin, body=body,
                 headers={"If-None-Match": "*"})
        assert_error(r, 400)
    big = b'{"id":"m1","description":"' + b"a" * (1024 * 1024 + 10) + b'"}'
    for h2 in PROTOS:
        r = call(env, "PUT", "/v1/grants/m1", token=env.admin, body=big,
                 headers={"If-None-Match": "*"}, http2=h2)
        assert_error(r, 413)
    assert_error(call(env, "GET", "/v1/grants/m1", token=env.admin), 404)


def test_lineage_records_edits(env):
    g = grant("lin-1")
    r = call(env, "PUT", "/v1/grants/lin-1", token=env.owner, body=g, headers={"If-None-Match": "*"})
    assert r.status == 201, r
    r = call(env, "GET", "/v1/lineage?format=ndjson", token=env.auditor)
    assert r.status == 200
    lines = [json.loads(x) for x in r.body.decode().splitlines()]
    pw = [x for x in lines if x.get("action") == "policy-write" and x.get("grant") == "lin-1"]
    assert pw and pw[-1]["editor"] == "user:olga", pw


# ---- owners ---------------------------------------------------------------------------------


def test_owner_delegation(env):
    # admin creates a billing grant
    r = call(env, "PUT", "/v1/grants/bill-1", token=env.admin,
             body=grant("bill-1", product="billing", resources=["ledger/**"]),
             headers={"If-None-Match": "*"})
    assert r.status == 201, r
    billtag = r.headers["etag"]
    # the orders owner edits its own product
    r = call(env, "PUT", "/v1/grants/own-1", token=env.owner, body=grant("own-1"),
             headers={"If-None-Match": "*"})
    assert r.status == 201, r
    owntag = r.headers["etag"]
    r = call(env, "PUT", "/v1/grants/own-1", token=env.owner,
             body=grant("own-1", resources=["datasets/x/*"]), headers={"If-Match": owntag},
             http2=True)
    assert r.status == 200, r
    # …but not another product's: create, move in, move out, delete, read
    assert_error(call(env, "PUT", "/v1/grants/bill-2", token=env.owner,
                      body=grant("bill-2", product="billing"), headers={"If-None-Match": "*"}), 403)
    assert_error(call(env, "PUT", "/v1/grants/bill-1", token=env.owner, body=grant("bill-1"),
                      headers={"If-Match": billtag}), 403)
    assert_error(call(env, "PUT", "/v1/grants/own-1", token=env.owner,
                      body=grant("own-1", product="billing"), headers={"If-Match": "*"}), 403)
    assert_error(call(env, "DELETE", "/v1/grants/bill-1", token=env.owner,
                      headers={"If-Match": billtag}), 403)
    assert_error(call(env, "GET", "/v1/grants/bill-1", token=env.owner), 403)
    r = call(env, "GET", "/v1/grants/bill-1", token=env.admin)
    assert r.status == 200 and r.headers["etag"] == billtag and r.json()["product"] == "billing"
    # listing: an owner sees its products only
    r = call(env, "GET", "/v1/grants", token=env.owner)
    assert r.status == 200
    assert {g["product"] for g in r.json()["grants"]} == {"orders"}
    assert_error(call(env, "GET", "/v1/grants?product=billing", token=env.owner), 403)
    r = call(env, "GET", "/v1/grants?product=billing", token=env.billing_owner)
    assert r.status == 200 and [g["id"] for g in r.json()["grants"]] == ["bill-1"]
    r = call(env, "GET", "/v1/grants?product=billing", token=env.auditor)
    assert r.status == 200 and len(r.json()["grants"]) == 1
    # the auditor reads but never writes
    assert_error(call(env, "PUT", "/v1/grants/aud-1", token=env.auditor, body=grant("aud-1"),
                      headers={"If-None-Match": "*"}), 403)


# ---- import -------------------------------------------------------------------------------


@pytest.mark.parametrize("h2", PROTOS, ids=PROTO_IDS)
def test_import(env, h2):
    prod = "imp" + ("2" if h2 else "1")
    r = call(env, "PUT", "/v1/grants/%s-old" % prod, token=env.admin,
             body=grant("%s-old" % prod, product=prod), headers={"If-None-Match": "*"}, http2=h2)
    assert r.status == 201
    body = {"product": prod, "grants": [grant("%s-a" % prod, product=prod),
                                        grant("%s-b" % prod, product=prod, actions=["write"])]}
    r = call(env, "POST", "/v1/grants:import", token=env.admin, body=body, http2=h2)
    assert r.status == 200, r
    r = call(env, "GET", "/v1/grants?product=" + prod, token=env.admin, http2=h2)
    assert sorted(g["id"] for g in r.json()["grants"]) == ["%s-a" % prod, "%s-b" % prod]
    # an owner may import only its product
    assert_error(call(env, "POST", "/v1/grants:import", token=env.owner, body=body, http2=h2), 403)
    # a grant of another product inside: nothing changes
    body2 = {"product": prod, "grants": [grant("%s-c" % prod, product="orders")]}
    assert_error(call(env, "POST", "/v1/grants:import", token=env.admin, body=body2, http2=h2), 400)
    r = call(env, "GET", "/v1/grants?product=" + prod, token=env.admin, http2=h2)
    assert len(r.json()["grants"]) == 2


# ---- concurrency ------------------------------------------------------------------------------


def test_concurrent_replace_one_wins(env):
    r = call(env, "PUT", "/v1/grants/race", token=env.admin, body=grant("race"),
             headers={"If-None-Match": "*"})
    assert r.status == 201
    tag = r.headers["etag"]
    for round_ in range(5):
        bodies = [grant("race", resources=["datasets/r%d-%d/**" % (round_, i)]) for i in range(2)]
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            futs = [ex.submit(call, env, "PUT", "/v1/grants/race", env.admin, bodies[i],
                              {"If-Match": tag}, i == 1) for i in range(2)]
            res = [f.result() for f in futs]
        assert sorted(x.status for x in res) == [200, 412], res
        tag = [x for x in res if x.status == 200][0].headers["etag"]


# ---- decide ---------------------------------------------------------------------------------


@pytest.mark.parametrize("h2", PROTOS, ids=PROTO_IDS)
def test_decide(env, h2):
    r = call(env, "PUT", "/v1/grants/dec-1", token=env.admin,
             body=grant("dec-1", subjects=["group:deciders"], resources=["datasets/dec/**"]),
             headers={"If-None-Match": "*"}, http2=h2)
    assert r.status in (201, 412)
    q = {"principals": ["user:x", "group:deciders"], "method": "GET",
         "path": "/datasets/dec/2024/../2025", "purpose": None}
    r = call(env, "POST", "/v1/decide", token=env.auditor, body=q, http2=h2)
    assert r.status == 200, r
    j = r.json()
    assert j["decision"] == "allow" and j["grant"] == "dec-1" and "dec-1" in j["matching"]
    assert len(j["revision"]) == 64
    q["method"] = "POST"
    j = call(env, "POST", "/v1/decide", token=env.auditor, body=q, http2=h2).json()
    assert j["decision"] == "deny" and j["reason"] == "no_matching_grant"
    q["path"] = "/datasets/%2f/x"
    assert_error(call(env, "POST", "/v1/decide", token=env.auditor, body=q, http2=h2), 400)
    assert_error(call(env, "POST", "/v1/decide", token=env.auditor, body={"x": 1}, http2=h2), 400)


def test_edit_visible_on_data_path_at_once(env):
    url = env.mg.data_url + "/datasets/instant/1"
    before = mgtest.request(url, token=env.analyst, http2=True)
    assert before.status == 403, before
    r = call(env, "PUT", "/v1/grants/instant", token=env.admin,
             body=grant("instant", resources=["datasets/instant/**"]), headers={"If-None-Match": "*"})
    assert r.status == 201
    after = mgtest.request(url, token=env.analyst, http2=True)
    assert after.status == 200, after


# ---- lineage endpoints ------------------------------------------------------------------


@pytest.mark.parametrize("h2", PROTOS, ids=PROTO_IDS)
def test_lineage_export_streamed_and_verifiable(env, h2, tmp_path):
    assert_error(call(env, "GET", "/v1/lineage", token=env.owner, http2=h2), 403)
    assert_error(call(env, "GET", "/v1/lineage"), 401)
    r = call(env, "GET", "/v1/lineage", token=env.auditor, http2=h2)
    assert r.status == 200
    assert "content-length" not in r.headers  # streamed
    if not h2:
        assert r.headers.get("transfer-encoding") == "chunked"
    lines = r.body.decode().splitlines()
    assert any('"checkpoint"' in x for x in lines)
    out = tmp_path / "export.ndjson"
    out.write_bytes(r.body)
    vkey = os.path.join(env.dir, "keys", "lineage.vkey")
    v = subprocess.run([mgtest.meshgate_bin(), "lineage", "verify", "--key", vkey, str(out)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert v.returncode == 0, v.stderr
    # a tampered copy fails
    bad = r.body.replace(b'"policy-write"', b'"policy-wrote"', 1)
    out.write_bytes(bad)
    v = subprocess.run([mgtest.meshgate_bin(), "lineage", "verify", "--key", vkey, str(out)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert v.returncode == 1
    # filters and formats
    r = call(env, "GET", "/v1/lineage?action=write&format=openlineage", token=env.admin, http2=h2)
    assert r.status == 200
    assert_error(call(env, "GET", "/v1/lineage?format=xml", token=env.admin, http2=h2), 400)
    assert_error(call(env, "GET", "/v1/lineage?since=yesterday", token=env.admin, http2=h2), 400)


def _threads(pid):
    return len(os.listdir("/proc/%d/task" % pid))


@pytest.mark.skipif(not shutil.which("h2load"), reason="h2load not installed")
def test_export_client_gone_stops_export_thread(env):
    r = call(env, "PUT", "/v1/grants/load", token=env.admin,
             body=grant("load", resources=["datasets/orders_fact/load"]),
             headers={"If-None-Match": "*"})
    assert r.status == 201, r
    # grow the log well beyond pipe and socket buffers (each allowed request: access +
    # outcome entry)
    subprocess.run(["h2load", "-n", "20000", "-c", "4", "-m", "16",
                    "-H", "authorization: Bearer " + env.analyst,
                    env.mg.data_url + "/datasets/orders_fact/load"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120, check=True)
    pid = env.mg.proc.pid
    baseline = _threads(pid)
    for h2 in PROTOS:
        for _ in range(3):
            cmd = mgtest.curl_cmd(env.mg.admin_url + "/v1/lineage", token=env.admin, http2=h2)
            p = subprocess.Popen(cmd + [env.mg.admin_url + "/v1/lineage"], stdout=subprocess.PIPE)
            assert len(p.stdout.read(1000)) == 1000
            p.kill()
            p.wait(timeout=10)
            p.stdout.close()
    # every export thread notices its reader is gone (EPIPE) and ends
    deadline = time.time() + 10
    while _threads(pid) > baseline and time.time() < deadline:
        time.sleep(0.1)
    assert _threads(pid) <= baseline
    assert call(env, "GET", "/healthz").status == 200
    assert env.mg.alive()
    # a full export of the same log still streams to the end
    r = call(env, "GET", "/v1/lineage", token=env.auditor, http2=True)
    assert r.status == 200 and r.body.count(b"\n") > 40000


def test_checkpoint_and_proofs(env):
    # make sure there are a few entries
    for i in range(3):
        call(env, "PUT", "/v1/grants/cp-%d" % i, token=env.admin, body=grant("cp-%d" % i),
             headers={"If-None-Match": "*"})
    r = call(env, "GET", "/v1/lineage/checkpoint", http2=True)
    assert r.status == 200, r
    origin, size, root = mgtest.parse_checkpoint(r.json()["checkpoint"])
    assert origin == "test.example/orders" and size >= 3
    export = call(env, "GET", "/v1/lineage", token=env.admin).body.decode().splitlines()
    entries = [x for x in export if '"index"' in x and not x.startswith('{"proof"')]
    for idx in (0, size // 2, size - 1):
        p = call(env, "GET", "/v1/lineage/proof?index=%d&size=%d" % (idx, size)).json()
        hashes = [base64.b64decode(h) for h in p["hashes"]]
        leaf = mgtest.leaf_hash(entries[idx].encode())
        assert mgtest.verify_inclusion(idx, size, leaf, hashes, root), (idx, size, p)
    # consistency between an older checkpoint and a newer one
    call(env, "PUT", "/v1/grants/cp-more", token=env.admin, body=grant("cp-more"),
         headers={"If-None-Match": "*"})
    r2 = call(env, "GET", "/v1/lineage/checkpoint").json()
    _, size2, root2 = mgtest.parse_checkpoint(r2["checkpoint"])
    assert size2 > size
    p = call(env, "GET", "/v1/lineage/proof?from=%d&to=%d" % (size, size2)).json()
    hashes = [base64.b64decode(h) for h in p["hashes"]]
    assert mgtest.verify_consistency(size, size2, hashes, root, root2)
    assert_error(call(env, "GET", "/v1/lineage/proof?index=%d&size=%d" % (size2 + 5, size2)), 400)
    assert_error(call(env, "GET", "/v1/lineage/proof?index=1"), 400)


# ---- metrics ---------------------------------------------------------------------------------


def test_metrics(env):
    mgtest.request(env.mg.data_url + "/datasets/orders_fact/1", token=env.analyst, http2=True)
    r = call(env, "GET", "/metrics")
    assert r.status == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    m = mgtest.parse_prometheus(r.body.decode())
    names = {k[0] for k in m}
    for n in ("meshgate_requests_total", "meshgate_responses_total",
              "meshgate_request_duration_seconds_bucket", "meshgate_request_duration_seconds_count",
              "meshgate_policy_revision_generation", "meshgate_policy_grants",
              "meshgate_jwks_age_seconds", "meshgate_lineage_entries",
              "meshgate_lineage_checkpoint_size", "meshgate_lineage_queue",
              "meshgate_lineage_healthy", "meshgate_jwt_cache_hits_total",
              "meshgate_admin_requests_total"):
        assert n in names, n
    assert m[("meshgate_lineage_healthy", frozenset())] == 1
    mapb = m[("meshgate_lineage_map_bytes", frozenset())]
    used = m[("meshgate_lineage_used_bytes", frozenset())]
    assert mapb == 64 << 20  # lineage.map_size_mb in mgtest.write_config
    assert 0 < used < mapb
    buckets = sorted(((float(dict(k[1])["le"]), v) for k, v in m.items()
                      if k[0] == "meshgate_request_duration_seconds_bucket"))
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))
    for (name, labels) in m:
        for _, v in labels:
            assert not v.startswith(("user:", "group:", "client:", "spiffe:")), (name, labels)


# ---- a full policy store ----------------------------------------------------------------------


def test_policy_store_full_507_keeps_serving(tmp_path):
    keys = mgtest.make_keys_and_jwks(tmp_path)
    up = mgtest.start_upstream(tmp_path)
    cfg = mgtest.write_config(tmp_path, {"upstream": {"address": "127.0.0.1:%d" % up.port},
                                         "policy": {"map_size_mb": 1}})
    mg = mgtest.start_meshgate(cfg)
    try:
        mgtest.wait_ready(mg)
        admin = mgtest.mint(keys, sub="root", scope="mesh:admin")
        analyst = mgtest.mint(keys, sub="ann", groups=["analysts"])
        url = mg.admin_url + "/v1/grants/"
        r = mgtest.request(url + "first", "PUT", admin, grant("first", resources=["datasets/first/**"]),
                           {"If-None-Match": "*"})
        assert r.status == 201, r
        subjects = ["group:" + ("s%04d" % i) * 30 for i in range(200)]  # ~25 KB per grant
        status = None
        for i in range(200):
            g = grant("fill-%d" % i, subjects=subjects, resources=["datasets/fill%d/**" % i])
            status = mgtest.request(url + "fill-%d" % i, "PUT", admin, g, {"If-None-Match": "*"}).status
            if status != 201:
                break
        assert status == 507, status
        r = mgtest.request(url + "first", token=admin)
        assert r.status == 200
        assert mgtest.request(mg.admin_url + "/readyz").status == 200
        d = mgtest.request(mg.data_url + "/datasets/first/x", token=analyst, http2=True)
        assert d.status == 200, d
    finally:
        mgtest.stop(mg)
        mgtest.stop(up)


# ---- slow clients ---------------------------------------------------------------------------


def test_header_timeout_408(env):
    import socket
    s = socket.create_connection(("127.0.0.1", env.mg.admin_port))
    s.settimeout(20)
    t = time.time()
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n")  # never finished
    data = mgtest.recv_until_close(s)
    s.close()
    elapsed = time.time() - t
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert 8 <= elapsed <= 15, elapsed
    assert call(env, "GET", "/healthz").status == 200


def test_keepalive_and_pipelining(env):
    import socket
    s = socket.create_connection(("127.0.0.1", env.mg.admin_port))
    s.settimeout(10)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n" * 3 +
              b"GET /nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    assert data.count(b"HTTP/1.1 200 OK") == 3 and data.count(b"HTTP/1.1 404 ") == 1, data


# ---- TLS admin port with client certificates ----------------------------------------------


def test_admin_tls_spiffe_admin(tmp_path):
    pki = tmp_path / "pki"
    subprocess.run(["sh", os.path.join(mgtest.ROOT, "certs", "mkcerts.sh"), str(pki)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    keys = mgtest.make_keys_and_jwks(tmp_path)
    admin_spiffe = "spiffe://mesh.test/ns/platform/sa/admin"
    cfg = mgtest.write_config(tmp_path, {"admin": {"tls": {
        "cert": str(pki / "server.pem"), "key": str(pki / "server.key"),
        "client_ca": str(pki / "ca.pem"), "allowed_spiffe": [admin_spiffe]}}})
    mg = mgtest.start_meshgate(cfg)
    ca = ["--cacert", str(pki / "ca.pem")]
    as_admin = ca + ["--cert", str(pki / "admin.pem"), "--key", str(pki / "admin.key")]
    as_client = ca + ["--cert", str(pki / "client.pem"), "--key", str(pki / "client.key")]
    try:
        mgtest.wait_ready(mg, curl_args=ca)
        assert mg.admin_url.startswith("https://")
        for h2 in PROTOS:
            gid = "tls-%d" % h2
            r = mgtest.request(mg.admin_url + "/v1/grants/" + gid, "PUT", body=grant(gid),
                               headers={"If-None-Match": "*"}, http2=h2, curl_args=as_admin)
            assert r.status == 201, r
            assert r.proto == ("HTTP/2" if h2 else "HTTP/1.1")
            # another workload's certificate is no admin; without a token: 401
            r = mgtest.request(mg.admin_url + "/v1/grants/" + gid, http2=h2, curl_args=as_client)
            assert_error(r, 401)
            # a token still works over TLS
            tok = mgtest.mint(keys, sub="root", scope="mesh:admin")
            r = mgtest.request(mg.admin_url + "/v1/grants/" + gid, token=tok, http2=h2, curl_args=ca)
            assert r.status == 200, r
        r = mgtest.request(mg.admin_url + "/v1/lineage", http2=True, curl_args=as_admin)
        assert r.status == 200
        editors = {json.loads(x).get("editor") for x in r.body.decode().splitlines()}
        assert "spiffe:" + admin_spiffe in editors
    finally:
        mgtest.stop(mg)
