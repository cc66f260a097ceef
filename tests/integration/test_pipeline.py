"""The request pipeline through the real binary: routes, methods, paths, grants, purposes,
live grant edits, and the lineage entries every request leaves behind."""
import json
import os
import subprocess
import time

import mgtest
from conftest import uniq


def analyst(gw, **kw):
    return gw.issuer.es256(sub="alice", groups=["analysts"], **kw)


def test_allowed_read_with_purpose(gw):
    path = uniq()
    r = gw.get(path, token=analyst(gw), headers={"x-mesh-purpose": "analytics"})
    assert r.status == 200 and r.json()["path"] == path
    assert len(gw.upstream_saw(path)) == 1


def test_purpose_missing_and_wrong(gw):
    path = uniq()
    r = gw.get(path, token=analyst(gw))
    assert r.status == 403 and r.json()["detail"] == "purpose_missing"
    r = gw.get(path, token=analyst(gw), headers={"x-mesh-purpose": "marketing"})
    assert r.status == 403
    assert gw.upstream_saw(path) == []


def test_two_purposes_is_400(gw):
    path = uniq()
    r = mgtest.request(gw.url + path, token=analyst(gw), http2=True,
                       curl_args=["-H", "x-mesh-purpose: analytics", "-H", "x-mesh-purpose: other"])
    assert r.status == 400
    assert gw.upstream_saw(path) == []


def test_no_matching_grant_and_write_without_grant(gw):
    path = uniq("/datasets/other_table/")
    r = gw.get(path, token=analyst(gw), headers={"x-mesh-purpose": "analytics"})
    assert r.status == 403 and r.json()["detail"] == "no_matching_grant"
    path = uniq()
    r = gw.get(path, token=analyst(gw), method="POST", body="{}", headers={"x-mesh-purpose": "analytics"})
    assert r.status == 403
    assert gw.upstream_saw(path) == []


def test_deny_overrides_allow(gw):
    etl = gw.issuer.es256(sub="svc", azp="etl")
    ok = uniq("/datasets/sales/")
    assert gw.get(ok, token=etl).status == 200
    pii = uniq("/datasets/pii/")
    r = gw.get(pii, token=etl)
    assert r.status == 403 and r.json()["detail"] == "denied_by_grant"
    assert "orders-etl-write" not in r.body.decode()  # the body never lists other grants
    assert gw.upstream_saw(pii) == []


def test_expired_grant_never_matches(gw):
    path = uniq("/datasets/sales/")
    r = gw.get(path, token=gw.issuer.es256(sub="bob"))
    assert r.status == 403 and r.json()["detail"] == "grant_expired"


def test_routes_methods_paths(gw):
    tok = analyst(gw)
    assert gw.get("/nowhere/" + uniq(""), token=tok).status == 404
    r = gw.get(uniq(), token=tok, method="OPTIONS")
    assert r.status == 405
    for bad in ("/datasets/orders_fact%2F..%2Fpii/x", "/datasets/orders_fact/x;a=b",
                "/datasets/%252e%252e/pii", "/datasets/orders_fact/%c0%af"):
        r = gw.get(bad, token=tok, headers={"x-mesh-purpose": "analytics"})
        assert r.status == 400, (bad, r)
    # dot segments resolve before authorisation: this lands in pii and is denied
    r = gw.get("/datasets/orders_fact/../pii/secrets", token=tok, headers={"x-mesh-purpose": "analytics"})
    assert r.status == 403
    assert gw.upstream_saw("secrets") == []
    # the canonical bytes are what the product gets
    r = gw.get("/datasets//orders_fact/./%7Ecanon-t1", token=tok, headers={"x-mesh-purpose": "analytics"})
    assert r.status == 200
    seen = gw.upstream_saw("canon-t1")
    assert [s["path"] for s in seen] == ["/datasets/orders_fact/~canon-t1"]


def test_auth_none_route_is_recorded(gw):
    r = gw.get("/healthz/probe-" + uniq("")[1:])
    assert r.status in (200, 404)  # whatever the product answers, meshgate forwarded it
    assert gw.upstream_saw("/healthz/probe-")


def test_grant_edit_visible_on_next_request(gw):
    path = uniq("/datasets/fresh_table/")
    tok = gw.issuer.es256(sub="carol")
    assert gw.get(path, token=tok).status == 403
    g = {"id": "carol-fresh", "effect": "allow", "subjects": ["user:carol"], "product": "orders",
         "resources": ["datasets/fresh_table/*"], "actions": ["read"]}
    r = mgtest.request(gw.mg.admin_url + "/v1/grants/carol-fresh", method="PUT", token=gw.admin,
                       body=g, headers={"If-None-Match": "*"})
    assert r.status == 201, r
    assert gw.get(path, token=tok).status == 200          # the very next request
    etag = r.headers["etag"]
    r = mgtest.request(gw.mg.admin_url + "/v1/grants/carol-fresh", method="DELETE", token=gw.admin,
                       headers={"If-Match": etag})
    assert r.status in (200, 204), r
    assert gw.get(path, token=tok).status == 403          # revoked on the next request too


def test_lineage_records_every_request_and_verifies(gw):
    tok = analyst(gw)
    allowed = [uniq() for _ in range(5)]
    for p in allowed:
        assert gw.get(p, token=tok, headers={"x-mesh-purpose": "analytics"}).status == 200
    denied = uniq("/datasets/pii/")
    assert gw.get(denied, token=tok, headers={"x-mesh-purpose": "analytics"}).status == 403
    unauth = uniq()
    assert gw.get(unauth, token="garbage").status == 401
    entries = gw.entries()
    by_path = {}
    for e in entries:
        if "path" in e:
            by_path.setdefault(e["path"], []).append(e)
    for p in allowed:
        (acc,) = by_path[p]
        assert acc["decision"] == "allow" and acc["principal"] == "user:alice"
        assert acc["grant"] == "orders-analysts-read" and acc["purpose"] == "analytics"
        assert acc["dataset"] == "orders_fact" and acc["action"] == "read" and acc["product"] == "orders"
        assert len(acc["policy_revision"]) == 64 and len(acc["token"]) == 64
        outs = [e for e in entries if e.get("of") == acc["index"]]
        assert len(outs) == 1 and outs[0]["status"] == 200 and outs[0]["request_id"] == acc["request_id"]
    assert by_path[denied][0]["decision"] == "deny"
    assert by_path[denied][0]["grant"] == "orders-deny-pii"
    assert by_path[unauth][0]["decision"] == "unauthenticated"
    assert not any(e.get("of") == by_path[denied][0]["index"] for e in entries)
    # indexes contiguous, times non-decreasing, lines canonical (sorted keys, compact)
    assert [e["index"] for e in entries] == list(range(len(entries)))
    assert all(a["time"] <= b["time"] for a, b in zip(entries, entries[1:]))
    # the export verifies with the sidecar's key; a tampered copy does not
    exp = os.path.join(gw.dir, "export.ndjson")
    with open(exp, "wb") as f:
        f.write(gw.export())
    vkey = os.path.join(gw.dir, "keys", "lineage.vkey")
    r = subprocess.run([mgtest.meshgate_bin(), "lineage", "verify", "--key", vkey, exp],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    lines = open(exp, "rb").read().splitlines()
    i = next(k for k, l in enumerate(lines) if b'"decision":"deny"' in l)
    bad_index = json.loads(lines[i])["index"]
    lines[i] = lines[i].replace(b'"decision":"deny"', b'"decision":"allow"')
    with open(exp + ".bad", "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    r = subprocess.run([mgtest.meshgate_bin(), "lineage", "verify", "--key", vkey, exp + ".bad"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert r.returncode == 1
    assert ("index %d" % bad_index) in r.stderr.decode(), r.stderr.decode()
