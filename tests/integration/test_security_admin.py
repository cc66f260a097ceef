"""Admin API attacks (beyond test_admin.py) and fault injection, through the real binary.

Admin: every protected route without a token, with a data-plane token, with an expired or
not-yet-valid admin token, with near-miss admin claims; stale and foreign ETags; malformed
JSON grant sets that must change nothing; an owner widening its access to another product;
the admin API and the data path kept apart; HTTP/1.1 framing attacks on the admin port.

Faults: the lineage LMDB map full (503, not forwarded, /readyz false, edits refused), a
disk that fills up (RLIMIT_FSIZE on the process: the same write errors as ENOSPC, without
root tricks), kill -9 under load then restart (every answered request has its access entry,
indexes contiguous, the export verifies), the upstream vanishing mid-download (the client
sees a reset, the outcome entry records it).
"""
import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid

import pytest

import mgtest
from conftest import Gateway
from h2raw import ATTACK_ROUTES, RawH2, real_binary


def tag():
    return uuid.uuid4().hex[:10]


def call(gw, method, path, token=None, body=None, headers=None, http2=False):
    return mgtest.request(gw.mg.admin_url + path, method=method, token=token, body=body,
                          headers=headers, http2=http2)


def grant(gid, product="orders", subjects=("group:analysts",), resources=("datasets/sec/**",),
          actions=("read",), **extra):
    g = {"id": gid, "effect": "allow", "subjects": list(subjects), "product": product,
         "resources": list(resources), "actions": list(actions)}
    g.update(extra)
    return g


def err(r, status):
    assert r.status == status, r
    j = r.json()
    assert isinstance(j.get("error"), str) and isinstance(j.get("detail"), str), j


def snapshot(gw, product="orders"):
    r = call(gw, "GET", "/v1/grants?product=" + product, token=gw.admin)
    assert r.status == 200, r
    return sorted(json.dumps(g, sort_keys=True) for g in r.json()["grants"])


def routes(gid):
    return [("GET", "/v1/grants", None), ("GET", "/v1/grants/" + gid, None),
            ("PUT", "/v1/grants/" + gid, grant(gid)), ("DELETE", "/v1/grants/" + gid, None),
            ("POST", "/v1/grants:import", {"product": "orders", "grants": []}),
            ("POST", "/v1/decide", {"principals": ["user:x"], "method": "GET",
                                    "path": "/datasets/x"}),
            ("GET", "/v1/lineage", None)]


ROUTE_IDS = ["list", "get", "put", "delete", "import", "decide", "lineage"]


# ------------------------------------------------------------------ who may call

@pytest.mark.parametrize("i", range(7), ids=ROUTE_IDS)
@pytest.mark.parametrize("h2", [False, True], ids=["h1", "h2"])
def test_no_token_401_everywhere(gw, i, h2):
    before = snapshot(gw)
    method, path, body = routes("sec-" + tag())[i]
    r = call(gw, method, path, body=body, headers={"If-None-Match": "*", "If-Match": "*"},
             http2=h2)
    err(r, 401)
    assert r.headers.get("www-authenticate", "").startswith("Bearer")
    assert snapshot(gw) == before


@pytest.mark.parametrize("i", range(7), ids=ROUTE_IDS)
def test_data_plane_tokens_403_everywhere(gw, i):
    before = snapshot(gw)
    method, path, body = routes("sec-" + tag())[i]
    for tok in (gw.issuer.es256(sub="alice", groups=["analysts"]),
                gw.issuer.es256(sub="svc", azp="etl"),
                gw.issuer.rs256(sub="carol", groups=["orders-readers"])):
        r = call(gw, method, path, token=tok, body=body,
                 headers={"If-None-Match": "*", "If-Match": "*"})
        err(r, 403)
    assert snapshot(gw) == before


@pytest.mark.parametrize("claims", [
    {"exp_in": -3600}, {"exp_in": -120}, {"nbf": int(time.time()) + 3600},
    {"aud": "not-mesh"}, {"iss": "https://evil.example"}],
    ids=["expired", "expired-beyond-skew", "not-yet-valid", "wrong-aud", "wrong-iss"])
def test_invalid_admin_tokens_401(gw, claims):
    before = snapshot(gw)
    tok = gw.issuer.es256(sub="platform", scope="mesh:admin", **claims)
    gid = "sec-" + tag()
    err(call(gw, "PUT", "/v1/grants/" + gid, token=tok, body=grant(gid),
             headers={"If-None-Match": "*"}), 401)
    err(call(gw, "POST", "/v1/grants:import", token=tok,
             body={"product": "orders", "grants": []}), 401)
    err(call(gw, "GET", "/v1/grants", token=tok), 401)
    assert snapshot(gw) == before


@pytest.mark.parametrize("scope", ["mesh:admins", "xmesh:admin", "mesh:admin:x", "MESH:ADMIN",
                                   "mesh", "mesh:admin,openid", ["mesh:admin2"],
                                   {"mesh:admin": True}, "", "mesh:audit"],
                         ids=lambda s: repr(s)[:24])
def test_near_miss_admin_claims_cannot_write(gw, scope):
    gid = "sec-" + tag()
    tok = gw.issuer.es256(sub="mallory", scope=scope)
    r = call(gw, "PUT", "/v1/grants/" + gid, token=tok, body=grant(gid),
             headers={"If-None-Match": "*"})
    assert r.status in (401, 403), r
    err(call(gw, "GET", "/v1/grants/" + gid, token=gw.admin), 404)


@pytest.mark.parametrize("scope", ["openid mesh:admin", ["x", "mesh:admin"], "mesh:admin"],
                         ids=["words", "array", "exact"])
def test_admin_claim_forms_accepted_control(gw, scope):
    gid = "sec-" + tag()
    tok = gw.issuer.es256(sub="platform2", scope=scope)
    r = call(gw, "PUT", "/v1/grants/" + gid, token=tok, body=grant(gid),
             headers={"If-None-Match": "*"})
    assert r.status == 201, r


# ------------------------------------------------------------------ ETags

def _create(gw, gid, **kw):
    r = call(gw, "PUT", "/v1/grants/" + gid, token=gw.admin, body=grant(gid, **kw),
             headers={"If-None-Match": "*"})
    assert r.status == 201, r
    return r.headers["etag"]


def test_foreign_weak_and_garbage_etags_412(gw):
    a, b = "sec-a-" + tag(), "sec-b-" + tag()
    ta = _create(gw, a)
    tb = _create(gw, b, resources=["datasets/other/**"])
    for bad in (tb, "W/" + ta, '"' + ta.strip('"') + 'x"', '"', "", ta.strip('"')):
        r = call(gw, "PUT", "/v1/grants/" + a, token=gw.admin, body=grant(a, actions=["write"]),
                 headers={"If-Match": bad})
        assert r.status in (400, 412, 428), (bad, r)
        r = call(gw, "DELETE", "/v1/grants/" + a, token=gw.admin, headers={"If-Match": bad})
        assert r.status in (400, 412, 428), (bad, r)
    r = call(gw, "GET", "/v1/grants/" + a, token=gw.admin)
    assert r.status == 200 and r.headers["etag"] == ta and r.json()["actions"] == ["read"]


def test_stale_etag_after_replace_and_after_delete(gw):
    gid = "sec-s-" + tag()
    t1 = _create(gw, gid)
    r = call(gw, "PUT", "/v1/grants/" + gid, token=gw.admin, body=grant(gid, actions=["write"]),
             headers={"If-Match": t1})
    assert r.status == 200
    t2 = r.headers["etag"]
    err(call(gw, "DELETE", "/v1/grants/" + gid, token=gw.admin, headers={"If-Match": t1}), 412)
    r = call(gw, "DELETE", "/v1/grants/" + gid, token=gw.admin, headers={"If-Match": t2})
    assert r.status in (200, 204)
    # a tag of the deleted grant neither resurrects nor replaces it
    err(call(gw, "PUT", "/v1/grants/" + gid, token=gw.admin, body=grant(gid),
             headers={"If-Match": t2}), 412)
    err(call(gw, "GET", "/v1/grants/" + gid, token=gw.admin), 404)


def test_if_match_star_does_not_create(gw):
    gid = "sec-star-" + tag()
    r = call(gw, "PUT", "/v1/grants/" + gid, token=gw.admin, body=grant(gid),
             headers={"If-Match": "*"})
    assert r.status in (404, 412), r
    err(call(gw, "GET", "/v1/grants/" + gid, token=gw.admin), 404)


# ------------------------------------------------------------------ malformed sets

MALFORMED_IMPORTS = [
    b"{}", b"[]", b'{"product":"orders"}', b'{"product":"orders","grants":{}}',
    b'{"product":"orders","grants":[1]}', b'{"product":"orders","grants":[null]}',
    b'{"product":"orders","grants":[' + json.dumps(grant("dup")).encode() + b"," +
    json.dumps(grant("dup")).encode() + b"]}",
    b'{"product":"orders","grants":[{"id":"x"}]}',
    b'{"product":"orders","grants":[' + json.dumps(grant("p", product="billing")).encode() + b"]}",
    b'{"product":"orders","grants":[],"extra":1}',
    b'{"product":"orders","product":"billing","grants":[]}',
    b'{"product":"orders","grants":[]} trailing',
    b'{"product":"orders","grants":[]',
    b'{"product":"ord\xffers","grants":[]}',
    b'{"product":"orders","grants":[' + b'[' * 3000 + b']' * 3000 + b"]}",
    b'{"product":"orders","grants":[' + json.dumps(grant("n", resources=["/datasets/x"])).encode()
    + b"]}",
    b'{"product":"orders","grants":[' + json.dumps(grant("n", resources=["datasets/../pii/**"]))
    .encode() + b"]}",
    b'{"product":"orders","grants":[' + json.dumps(grant("n", effect="permit")).encode() + b"]}",
    b'{"product":"orders","grants":[' + json.dumps(grant("n", actions=["admin"])).encode() + b"]}",
    b'{"product":"orders","grants":[' + json.dumps(grant("n", expires="tomorrow")).encode()
    + b"]}",
    b'{"product":"orders","grants":[' + json.dumps(grant("a/b")).encode() + b"]}",
    b'{"product":"orders","grants":[' + json.dumps(grant("n", subjects=["root"])).encode() + b"]}",
    b'{"product":"orders","grants":[' + json.dumps(grant("x" * 5000)).encode() + b"]}",
    b"",
]


@pytest.mark.parametrize("body", MALFORMED_IMPORTS, ids=range(len(MALFORMED_IMPORTS)))
def test_malformed_import_changes_nothing(gw, body):
    before = snapshot(gw)
    rev_before = call(gw, "POST", "/v1/decide", token=gw.admin,
                      body={"principals": ["user:x"], "method": "GET",
                            "path": "/datasets/x"}).json()["revision"]
    r = call(gw, "POST", "/v1/grants:import", token=gw.admin, body=body)
    assert r.status in (400, 413), r
    assert snapshot(gw) == before
    rev_after = call(gw, "POST", "/v1/decide", token=gw.admin,
                     body={"principals": ["user:x"], "method": "GET",
                           "path": "/datasets/x"}).json()["revision"]
    assert rev_after == rev_before


@pytest.mark.parametrize("gid", ["..", "a%2Fb", "%00", "a%20b", "x" * 300],
                         ids=["dotdot", "slash", "nul", "space", "long"])
def test_bad_grant_ids_refused(gw, gid):
    r = call(gw, "PUT", "/v1/grants/" + gid, token=gw.admin, body=grant(gid),
             headers={"If-None-Match": "*"})
    assert r.status in (400, 404), r


@pytest.mark.parametrize("purpose", ["", "x" * 257, 5, ["a"]])
def test_decide_purpose_as_strict_as_the_data_path(gw, purpose):
    """The explain tool must not answer for a request the data path refuses (an empty
    x-mesh-purpose is a 400 there, and would skip a deny with purposes here)."""
    r = call(gw, "POST", "/v1/decide", token=gw.admin,
             body={"principals": ["user:x"], "method": "GET", "path": "/datasets/x",
                   "purpose": purpose})
    err(r, 400)
    assert "/purpose" in r.json()["detail"]


@pytest.mark.parametrize("raw,gid", [("%2E%2E", ".."), ("%2e", ".")])
def test_dot_segment_grant_ids_refused(gw, raw, gid):
    """An id no client could address again (/v1/grants/.. is rewritten by every URL
    library): sent percent-encoded so nothing normalises it on the way, it is refused."""
    before = snapshot(gw)
    r = call(gw, "PUT", "/v1/grants/" + raw, token=gw.admin, body=grant(gid),
             headers={"If-None-Match": "*"})
    err(r, 400)
    assert "/id" in r.json()["detail"] or "id" in r.json()["detail"], r.json()
    assert snapshot(gw) == before


def test_non_canonical_resource_patterns_refused(gw):
    """A pattern no canonical path can equal would silently never match (a deny that
    denies nothing): refused with the rule, nothing stored."""
    before = snapshot(gw)
    for pat in ("datasets/caf\u00e9/**", "datasets/a b/**", "datasets/a%3Ab/**",
                "datasets/%6Frders/**"):
        r = call(gw, "PUT", "/v1/grants/ncanon", token=gw.admin,
                 body=grant("ncanon", resources=[pat]), headers={"If-None-Match": "*"})
        err(r, 400)
        assert "not a canonical path" in json.dumps(r.json()), (pat, r.json())
    assert snapshot(gw) == before


# ------------------------------------------------------------------ owners

@pytest.fixture(scope="module")
def owner(gw):
    return gw.issuer.es256(sub="olga", groups=["orders-owners"], exp_in=3600)


def test_owner_cannot_widen_to_another_product(gw, owner):
    before = snapshot(gw, "billing")
    gid = "sec-own-" + tag()
    for body in (grant(gid, product="billing", subjects=["user:olga"], resources=["**"],
                       actions=["read", "write"]),
                 grant(gid, product="billing", subjects=["group:orders-owners"])):
        err(call(gw, "PUT", "/v1/grants/" + gid, token=owner, body=body,
                 headers={"If-None-Match": "*"}), 403)
    err(call(gw, "POST", "/v1/grants:import", token=owner,
             body={"product": "billing", "grants": [grant(gid, product="billing")]}), 403)
    # a set "of orders" that smuggles a billing grant in is refused as a whole
    r = call(gw, "POST", "/v1/grants:import", token=owner,
             body={"product": "orders", "grants": [grant(gid, product="billing")]})
    assert r.status in (400, 403), r
    assert snapshot(gw, "billing") == before
    err(call(gw, "GET", "/v1/grants/" + gid, token=gw.admin), 404)


@pytest.mark.parametrize("product", ["Orders", "orders ", "orders\u0000", "orders/..", "*"],
                         ids=["case", "space", "nul", "dots", "star"])
def test_owner_product_spelling_tricks(gw, owner, product):
    gid = "sec-sp-" + tag()
    r = call(gw, "PUT", "/v1/grants/" + gid, token=owner, body=grant(gid, product=product),
             headers={"If-None-Match": "*"})
    assert r.status in (400, 403), r
    err(call(gw, "GET", "/v1/grants/" + gid, token=gw.admin), 404)


def test_owner_own_product_edit_is_recorded(gw, owner):
    gid = "sec-ok-" + tag()
    r = call(gw, "PUT", "/v1/grants/" + gid, token=owner, body=grant(gid),
             headers={"If-None-Match": "*"})
    assert r.status == 201, r
    pw = [e for e in gw.entries() if e.get("action") == "policy-write" and e.get("grant") == gid]
    assert len(pw) == 1 and pw[0]["editor"] == "user:olga"
    assert pw[0]["old_revision"] != pw[0]["new_revision"]


# ------------------------------------------------------------------ planes kept apart

def test_admin_api_not_on_data_port(gw):
    r = mgtest.request(gw.url + "/v1/grants", token=gw.admin, http2=True)
    assert r.status == 404, r
    c = RawH2(gw.mg.data_port)
    st = c.wait_stream(c.request("/v1/grants:import", method="POST",
                                 headers=[("authorization", "Bearer " + gw.admin)],
                                 body=b'{"product": "orders", "grants": []}'))
    c.close()
    assert st["status"] == 404, st
    assert gw.upstream_saw("/v1/grants") == []


def test_data_path_not_on_admin_port(gw):
    t = tag()
    r = call(gw, "GET", "/datasets/orders_fact/" + t,
             token=gw.issuer.es256(sub="alice", groups=["analysts"]),
             headers={"x-mesh-purpose": "analytics"})
    assert r.status == 404
    assert gw.upstream_saw(t) == []


def test_admin_claim_is_not_a_data_grant(gw):
    t = tag()
    r = gw.get("/datasets/pii/" + t, token=gw.admin)
    assert r.status == 403
    r = gw.get("/datasets/orders_fact/" + t, token=gw.admin,
               headers={"x-mesh-purpose": "analytics"})
    assert r.status == 403
    assert gw.upstream_saw(t) == []


# ------------------------------------------------------------------ HTTP/1.1 framing

def raw_http1(gw, data, timeout=3):
    s = socket.create_connection(("127.0.0.1", gw.mg.admin_port), timeout=timeout)
    s.sendall(data)
    out = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            out += d
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    return out


def statuses(raw):
    import re
    return [int(x) for x in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


def test_admin_cl_te_smuggling_refused(gw):
    gid = "smug-" + tag()
    inner = json.dumps(grant(gid)).encode()
    smuggled = (b"PUT /v1/grants/" + gid.encode() + b" HTTP/1.1\r\nHost: a\r\n"
                b"Authorization: Bearer " + gw.admin.encode() + b"\r\nIf-None-Match: *\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(inner) + inner)
    for framing in (b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
                    b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
                    b"Content-Length: 4\r\nContent-Length: 5\r\n",
                    b"Transfer-Encoding: xchunked\r\n",
                    b"Transfer-Encoding: chunked, identity\r\n",
                    b"Content-Length: -1\r\n",
                    b"Content-Length: 4 4\r\n"):
        req = (b"POST /v1/decide HTTP/1.1\r\nHost: a\r\n" + framing + b"\r\n0\r\n\r\n" + smuggled)
        out = raw_http1(gw, req)
        st = statuses(out)
        assert st and st[0] in (400, 401, 411, 413, 501), (framing, out[:300])
        assert 201 not in st, (framing, out[:300])
    err(call(gw, "GET", "/v1/grants/" + gid, token=gw.admin), 404)


def test_admin_pipelined_requests_answered_in_order(gw):
    req = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n" * 3 + \
        b"GET /v1/nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    assert statuses(raw_http1(gw, req)) == [200, 200, 200, 404]


def test_admin_bad_request_lines(gw):
    # (obs-fold is not here: RFC 9112 §5.2 lets a server replace it with SP)
    for req in (b"GET /healthz HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
                b"GET /healthz\x00 HTTP/1.1\r\nHost: a\r\n\r\n",
                b"GET /healthz HTTP/1.1\r\n" + b"X-Big: " + b"a" * 100000 + b"\r\n\r\n"):
        st = statuses(raw_http1(gw, req))
        assert st == [] or st[0] in (400, 413, 431), (req[:60], st)
    assert call(gw, "GET", "/healthz").status == 200


@pytest.mark.parametrize("req", [
    b"GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length : 0\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHo st: a\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"],
    ids=["space-before-colon", "space-in-name", "no-host", "two-hosts"])
def test_admin_http1_rfc9112_musts(gw, req):
    # (was a bug: Debian's lenient http_parser let these through; admin_http.c now checks
    # field names are tokens and that an HTTP/1.1 request has exactly one Host)
    assert statuses(raw_http1(gw, req)) == [400]


# ------------------------------------------------------------------ faults

def _needs_binary():
    if not real_binary():
        pytest.skip("meshgate binary not built")
    os.environ.setdefault("MESHGATE_BIN", real_binary())


def _readyz(gw):
    return mgtest.request(gw.mg.admin_url + "/readyz")


def _h2load(url, n, c=2, m=4, headers=()):
    args = ["h2load", "-n", str(n), "-c", str(c), "-m", str(m)]
    for h in headers:
        args += ["-H", h]
    return subprocess.run(args + [url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=120).stdout.decode()


def _restart(gw, env_bin=None):
    mgtest.stop(gw.mg)
    old = os.environ.get("MESHGATE_BIN")
    if env_bin:
        os.environ["MESHGATE_BIN"] = env_bin
    try:
        gw.mg = mgtest.start_meshgate(gw.config_path)
    finally:
        if env_bin and old:
            os.environ["MESHGATE_BIN"] = old
    mgtest.wait_ready(gw.mg)


def _verify(gw):
    exp = os.path.join(gw.dir, "verify-%s.ndjson" % tag())
    with open(exp, "wb") as f:
        f.write(gw.export())
    r = subprocess.run([mgtest.meshgate_bin(), "lineage", "verify", "--key",
                        os.path.join(gw.dir, "keys", "lineage.vkey"), exp],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert r.returncode == 0, r.stderr.decode()


def test_lineage_map_full_fails_closed(tmp_path):
    """A 1 MiB lineage map fills up under load: requests are answered 503 instead of being
    forwarded unrecorded, /readyz turns false, a grant edit without its policy-write entry
    does not commit. LMDB may still fit a single small commit later (freed pages), so a
    request may then pass, but only once recorded: after a restart with a larger map every
    request the product saw has its access entry, and the log verifies."""
    _needs_binary()
    gw = Gateway(tmp_path, {"lineage": {"map_size_mb": 1}, "routes": ATTACK_ROUTES})
    try:
        out = _h2load(gw.url + "/healthz/fill", 6000)
        assert "5xx" in out
        assert 0 < len(gw.upstream_requests()) < 6000
        r = _readyz(gw)
        # not ready while the last commit failed (a later small commit may succeed again)
        assert r.status == 503 or mgtest.parse_prometheus(mgtest.request(
            gw.mg.admin_url + "/metrics").body.decode())[
                ("meshgate_lineage_failures_total", frozenset())] > 0, r
        t = tag()
        tok = gw.issuer.es256(sub="alice", groups=["analysts"])
        codes = []
        for i in range(20):
            r = gw.get("/datasets/orders_fact/%s-%d" % (t, i), token=tok,
                       headers={"x-mesh-purpose": "analytics"})
            assert r.status in (200, 503), r
            if r.status == 503:
                assert r.json()["error"] == "lineage_unavailable"
                assert gw.upstream_saw("%s-%d" % (t, i)) == []
            codes.append(r.status)
        # a grant edit commits only with its policy-write entry
        gid = "full-" + t
        r = call(gw, "PUT", "/v1/grants/" + gid, token=gw.admin, body=grant(gid),
                 headers={"If-None-Match": "*"})
        assert r.status in (201, 503, 507), r
        edited = r.status == 201
        if not edited:
            err(call(gw, "GET", "/v1/grants/" + gid, token=gw.admin), 404)
        assert gw.mg.alive()
        seen = [x["path"] for x in gw.upstream_requests()]
        with open(gw.config_path) as f:
            cfg = json.load(f)
        cfg["lineage"]["map_size_mb"] = 64
        with open(gw.config_path, "w") as f:
            json.dump(cfg, f)
        _restart(gw)
        es = gw.entries()
        assert [e["index"] for e in es] == list(range(len(es)))
        allowed = {}
        for e in es:
            if e.get("decision") == "allow":
                allowed[e["path"]] = allowed.get(e["path"], 0) + 1
        for p in set(seen):
            assert allowed.get(p, 0) >= seen.count(p), p
        pw = [e for e in es if e.get("action") == "policy-write" and e.get("grant") == gid]
        stored = call(gw, "GET", "/v1/grants/" + gid, token=gw.admin).status
        assert (edited, stored, len(pw)) in ((True, 200, 1), (False, 404, 0)), \
            (edited, stored, pw, es[-3:], mgtest.log_text(gw.mg)[-2000:])
        _verify(gw)
    finally:
        gw.close()


def test_disk_full_fails_closed_and_loses_nothing(tmp_path):
    """RLIMIT_FSIZE (prlimit --fsize, SIGXFSZ ignored) makes LMDB's writes fail with EFBIG
    at 3 MiB, as a full disk would. Requests are refused rather than forwarded unrecorded;
    after a restart without the limit every forwarded request has its entry and the log
    verifies."""
    _needs_binary()
    if not os.path.exists("/usr/bin/prlimit"):
        pytest.skip("prlimit (util-linux) not installed")
    real = os.environ["MESHGATE_BIN"]
    wrapper = os.path.join(str(tmp_path), "meshgate-fsize")
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\ntrap '' XFSZ\nexec /usr/bin/prlimit --fsize=%d -- %s \"$@\"\n"
                % (3 << 20, real))
    os.chmod(wrapper, 0o755)
    os.environ["MESHGATE_BIN"] = wrapper
    try:
        gw = Gateway(tmp_path, {"routes": ATTACK_ROUTES})
    finally:
        os.environ["MESHGATE_BIN"] = real
    try:
        out = _h2load(gw.url + "/healthz/disk", 10000)
        assert "5xx" in out, out
        # readiness follows the last commit (it may already have recovered); the failures
        # are counted
        m = mgtest.parse_prometheus(mgtest.request(gw.mg.admin_url + "/metrics").body.decode())
        assert m[("meshgate_lineage_failures_total", frozenset())] > 0
        assert gw.mg.alive()
        ups = [r["path"] for r in gw.upstream_requests()]
        _restart(gw)  # no limit now
        es = gw.entries()
        assert [e["index"] for e in es] == list(range(len(es)))
        allowed = [e for e in es if e.get("path", "").startswith("/healthz/disk") and
                   e.get("decision") == "allow"]
        # write-ahead: everything the product saw was recorded first
        assert len(allowed) >= len([p for p in ups if p.startswith("/healthz/disk")]) > 0
        _verify(gw)
    finally:
        gw.close()


def test_kill9_under_load_then_restart(tmp_path):
    _needs_binary()
    gw = Gateway(tmp_path, {"routes": ATTACK_ROUTES, "workers": 2})
    answered, lock, stop = [], threading.Lock(), threading.Event()

    def load(k):
        i = 0
        try:
            c = RawH2(gw.mg.data_port, timeout=2)
            while not stop.is_set() and not c.closed:
                path = "/healthz/k%d-%d" % (k, i)
                st = c.wait_stream(c.request(path), 2)
                if st["status"] is not None:
                    with lock:
                        answered.append(path)
                i += 1
                if c.goaway is not None:
                    break
        except OSError:
            pass
    try:
        ths = [threading.Thread(target=load, args=(k,)) for k in range(4)]
        for th in ths:
            th.start()
        time.sleep(1.5)
        gw.mg.proc.send_signal(signal.SIGKILL)
        gw.mg.proc.wait(10)
        stop.set()
        for th in ths:
            th.join(10)
        assert len(answered) > 50
        _restart(gw)
        es = gw.entries()
        assert [e["index"] for e in es] == list(range(len(es)))
        recorded = {e["path"] for e in es if e.get("decision") == "allow" and "path" in e}
        missing = [p for p in answered if p not in recorded]
        assert missing == [], missing[:10]
        seen = {r["path"] for r in gw.upstream_requests() if r["path"].startswith("/healthz/k")}
        assert seen <= recorded, sorted(seen - recorded)[:10]
        _verify(gw)
    finally:
        stop.set()
        gw.close()


def test_upstream_vanishes_mid_download(tmp_path):
    _needs_binary()
    gw = Gateway(tmp_path, {"routes": ATTACK_ROUTES})
    try:
        t = tag()
        c = RawH2(gw.mg.data_port)
        sid = c.request("/big?bytes=%d&%s=1" % (200 << 20, t))
        c.pump(lambda: len(c.streams[sid]["body"]) > (1 << 20), 10)
        assert len(c.streams[sid]["body"]) > 0
        gw.up.proc.kill()
        gw.up.proc.wait(5)
        st = c.wait_stream(sid, 10)
        assert len(st["body"]) < (200 << 20)
        assert st["rst"] is not None or c.goaway is not None or c.closed, st
        c.close()
        time.sleep(0.3)
        es = gw.entries()
        (acc,) = [e for e in es if t in e.get("path", "") and "decision" in e]
        outs = [e for e in es if e.get("of") == acc["index"]]
        assert len(outs) == 1, outs
        assert outs[0]["status"] == 200 and "reset" in outs[0], outs[0]
        assert 0 < outs[0]["bytes_out"] < (200 << 20)
        # meshgate survives; with the product gone it answers 502
        assert gw.mg.alive()
        r = gw.get("/healthz/after-" + t)
        assert r.status == 502, r
    finally:
        gw.close()


# ------------------------------------------------------------------ the admin port over h2

def _admin_ok(gw):
    c = RawH2(gw.mg.admin_port)
    try:
        st = c.wait_stream(c.request("/v1/grants", headers=[("authorization",
                                                             "Bearer " + gw.admin)]))
        return st["status"] == 200
    finally:
        c.close()


def test_admin_h2_rapid_reset(gw):
    import struct
    from h2raw import CANCEL, END_HEADERS, END_STREAM, HEADERS, RST_STREAM, frame
    c = RawH2(gw.mg.admin_port)
    chunks = []
    for i in range(3000):
        sid = 1 + 2 * i
        chunks.append(frame(HEADERS, END_HEADERS | END_STREAM, sid,
                            c.block(c.req_headers("/v1/lineage", extra=[
                                ("authorization", "Bearer " + gw.admin)]))) +
                      frame(RST_STREAM, 0, sid, struct.pack(">I", CANCEL)))
    c.send(b"".join(chunks))
    kind, code = c.wait_conn_error(10)
    assert kind is not None, "3000 HEADERS+RST_STREAM on the admin port were not stopped"
    c.close()
    assert gw.mg.alive() and _admin_ok(gw)


def test_admin_h2_continuation_flood(gw):
    from h2raw import CONTINUATION, HEADERS, frame, literal
    c = RawH2(gw.mg.admin_port)
    blk = c.block(c.req_headers("/v1/grants"))
    c.send(frame(HEADERS, 0, 1, blk) + frame(CONTINUATION, 0, 1, literal("x-c", "v")) * 20000)
    kind, _ = c.wait_conn_error(5)
    assert kind is not None
    c.close()
    assert gw.mg.alive() and _admin_ok(gw)


def test_admin_h2_hpack_bomb(gw):
    from h2raw import literal
    c = RawH2(gw.mg.admin_port)
    first = c.block(c.req_headers("/v1/grants", extra=[("authorization", "Bearer " + gw.admin)]))
    c.headers(1, raw=first + literal("x-bomb", "A" * 4000, index=True) + bytes([0x80 | 62]) * 3000)
    st = c.wait_stream(1)
    assert st["status"] in (431, 400) or st["rst"] is not None or c.goaway or c.closed, st
    assert st["status"] != 200
    c.close()
    assert gw.mg.alive() and _admin_ok(gw)


def test_admin_h2_settings_flood_without_reading(gw):
    """The admin port stops processing a flood (nghttp2 max_outbound_ack) and closes once
    what it queued is read; memory stays flat while the client does not read."""
    from h2raw import SETTINGS, frame, rss_kb
    pid = gw.mg.proc.pid
    rss0 = rss_kb(pid)
    c = RawH2(gw.mg.admin_port, rcvbuf=4096)
    sent = 0
    while sent < 1000000 and not c.closed:
        c.send(frame(SETTINGS, 0, 0) * 10000)
        sent += 10000
    time.sleep(0.5)
    # (sanitizer builds quarantine freed memory: MG_RSS_GROWTH_KB raises the bound)
    assert rss_kb(pid) - rss0 < int(os.environ.get("MG_RSS_GROWTH_KB", 32 * 1024))
    kind, _ = c.wait_conn_error(15)  # now read: the queued ACKs, then the close
    assert kind is not None
    acks = sum(1 for f in c.frames if f[0] == SETTINGS and f[1] & 1)
    assert acks < sent, "every SETTINGS frame of the flood was processed"
    c.close()
    assert gw.mg.alive() and _admin_ok(gw)


@pytest.mark.parametrize("case", ["wu-zero", "data-idle", "even-sid", "bad-pseudo"])
def test_admin_h2_protocol_errors(gw, case):
    from h2raw import PROTOCOL_ERROR, stream_or_conn_error
    c = RawH2(gw.mg.admin_port)
    if case == "wu-zero":
        c.window_update(0, 0)
        assert c.wait_conn_error()[1] == PROTOCOL_ERROR
    elif case == "data-idle":
        c.data(1, b"x", end_stream=True)
        assert c.wait_conn_error()[1] == PROTOCOL_ERROR
    elif case == "even-sid":
        c.headers(2, c.req_headers("/healthz"))
        assert c.wait_conn_error()[1] == PROTOCOL_ERROR
    else:
        c.headers(1, [(":method", "GET"), (":scheme", "http"), (":path", "/healthz"),
                      (":authority", "a"), (":evil", "1")])
        assert stream_or_conn_error(c, 1, PROTOCOL_ERROR)
    c.close()
    assert gw.mg.alive() and _admin_ok(gw)


def _rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_pipelined_requests_from_a_client_that_never_reads(gw):
    """HTTP/1.1 pipelining on the admin port with no reading: the answers wait in a bounded
    output buffer and the requests in the kernel, not in meshgate's memory."""
    s = socket.create_connection(("127.0.0.1", gw.mg.admin_port), timeout=5)
    s.setblocking(False)
    req = b"GET /v1/nope HTTP/1.1\r\nHost: a\r\n\r\n" * 1000
    before = _rss_kb(gw.mg.proc.pid)
    sent, deadline = 0, time.time() + 3
    while time.time() < deadline:
        try:
            sent += s.send(req)
        except BlockingIOError:
            time.sleep(0.01)
    time.sleep(0.5)
    grown = _rss_kb(gw.mg.proc.pid) - before
    s.close()
    assert mgtest.request(gw.mg.admin_url + "/healthz").status == 200
    # unbounded, ~7 bytes of answer per byte of request would be held. Measured: ~0.3 MB
    # after the fix, ~18 MB before. Sanitizer builds quarantine freed memory (18.8 MB with
    # the fix in CI), so their RSS says nothing here: only the release pass asserts it.
    if not os.environ.get("MG_SANITIZED"):
        assert grown < 4 * 1024, (grown, sent)


def test_head_on_the_admin_port_gets_no_body(gw):
    """A HEAD answer carries no body, or a keep-alive client reads it as the next response."""
    s = socket.create_connection(("127.0.0.1", gw.mg.admin_port), timeout=5)
    s.sendall(b"HEAD /v1/grants HTTP/1.1\r\nHost: a\r\n\r\nGET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
    data, deadline = b"", time.time() + 5
    while data.count(b"HTTP/1.1 ") < 2 or not data.endswith(b"ok\n"):
        if time.time() > deadline:
            break
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    first, _, rest = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 4"), data
    assert rest.startswith(b"HTTP/1.1 200"), data  # the next response, nothing in between


def test_trailers_do_not_authenticate_an_admin_request(gw):
    """A chunked request whose Authorization comes in a trailer is not authenticated."""
    s = socket.create_connection(("127.0.0.1", gw.mg.admin_port), timeout=5)
    body = json.dumps(grant("trailer-auth")).encode()
    s.sendall(b"PUT /v1/grants/trailer-auth HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
              b"If-None-Match: *\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" +
              b"%x\r\n" % len(body) + body + b"\r\n0\r\nAuthorization: Bearer " +
              gw.admin.encode() + b"\r\n\r\n")
    data = mgtest.recv_until_close(s)
    s.close()
    assert data.startswith(b"HTTP/1.1 401"), data[:200]
    assert call(gw, "GET", "/v1/grants/trailer-auth", token=gw.admin).status == 404
