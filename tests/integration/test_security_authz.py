"""Authorization attacks through the real binary (conftest `gw`): path tricks (dot segments
raw and encoded, double encoding, %2F, %5C, backslash, duplicate slashes, ;params, #, NUL,
overlong UTF-8, case, trailing slash, query), method overrides, host vs :authority, and
client-sent identity/forwarding headers in raw HTTP/2 (duplicates, odd case, trailers).

Each case: the status the attacker gets, what the product saw (exactly the canonical bytes
that were authorised, or nothing), and for some the lineage entry. Paths go as raw :path
bytes (h2raw.py), so neither curl nor python-h2 normalises them first.
"""
import json
import uuid

import pytest

import mgtest
from h2raw import PROTOCOL_ERROR, RawH2


def tag():
    return "z" + uuid.uuid4().hex[:10]


@pytest.fixture(scope="module")
def tok(gw):
    class T:
        analyst = [("authorization", "Bearer " + gw.issuer.es256(sub="alice", groups=["analysts"],
                                                                 exp_in=3600)),
                   ("x-mesh-purpose", "analytics")]
        etl = [("authorization", "Bearer " + gw.issuer.es256(sub="svc", azp="etl", exp_in=3600))]
    return T


def send(gw, path, headers, method="GET", body=None, trailers=None):
    c = RawH2(gw.mg.data_port)
    try:
        if trailers is not None:
            sid = c.request(path, method=method, headers=headers, end=False)
            c.data(sid, body or b"")
            c.headers(sid, trailers, end_stream=True)
        else:
            sid = c.request(path, method=method, headers=headers, body=body)
        st = c.wait_stream(sid)
        st["goaway"] = c.goaway
        return st
    finally:
        c.close()


def detail(st):
    try:
        return json.loads(st["body"])["detail"]
    except (ValueError, KeyError):
        return None


# (raw :path with {t} for a unique tag, status, detail or canonical path forwarded)
DENIED_AFTER_CANON = [
    "/datasets/orders_fact/%2e%2e/pii/{t}",
    "/datasets/orders_fact/%2E%2E/%2E%2E/datasets/pii/{t}",
    "/datasets/orders_fact/.%2e/pii/{t}",
    "/datasets/orders_fact/%2e./pii/{t}",
    "/datasets/orders_fact/../../../../datasets/pii/{t}",
    "/datasets//pii//{t}",
    "/datasets/./pii/./{t}",
    "/datasets/orders_fact/x/../../pii/{t}",
    "/datasets/%70ii/{t}",                       # %70 = 'p', unreserved: decoded
    "/datasets/pii/{t}?/../../orders_fact/y",   # the query never moves the resource
]


@pytest.mark.parametrize("raw", DENIED_AFTER_CANON)
def test_dot_segments_and_encodings_resolve_before_authorization(gw, tok, raw):
    """Every spelling that canonicalises into datasets/pii/** meets the deny grant."""
    t = tag()
    st = send(gw, raw.format(t=t), tok.analyst)
    assert st["status"] == 403 and detail(st) == "denied_by_grant", st
    assert gw.upstream_saw(t) == []


BAD_PATHS = [
    ("/datasets/orders_fact/..%2fpii/{t}", "%2F"),
    ("/datasets/orders_fact/%2F{t}", "%2F"),
    ("/datasets/orders_fact/%5c..%5cpii/{t}", "%5C"),
    ("/datasets/orders_fact\\..\\pii\\{t}", "backslash"),
    ("/datasets;/pii/{t}", ";"),
    ("/datasets/orders_fact/{t};jsessionid=1", ";"),
    ("/datasets/orders_fact/{t}#frag", "#"),
    ("/datasets/orders_fact/{t}%00", "NUL"),
    ("/datasets/orders_fact/{t}%00.json", "NUL"),
    ("/datasets/orders_fact/%e0%80%ae%e0%80%ae/pii/{t}", "UTF-8"),   # overlong '.'
    ("/datasets/orders_fact/%c0%ae%c0%ae/pii/{t}", "UTF-8"),
    ("/datasets/orders_fact/%ed%a0%80{t}", "UTF-8"),                  # surrogate
    ("/datasets/orders_fact/%f4%90%80%80{t}", "UTF-8"),               # > U+10FFFF
    ("/datasets/orders_fact/\xc3\xa9{t}", "non-ASCII"),
    ("/datasets/orders_fact/%25%32%65%25%32%65/pii/{t}", "double"),
    ("/datasets/orders_fact/%252F{t}", "double"),
    ("/datasets/orders_fact/%zz{t}", "percent"),
    ("/datasets/orders_fact/{t}%4", "percent"),
    ("/datasets/orders_fact/{t}?a=%00", "NUL"),
    ("/datasets/orders_fact/{t}?a#b", "#"),
]


@pytest.mark.parametrize("raw,why", BAD_PATHS, ids=[b[0][:48] for b in BAD_PATHS])
def test_bad_paths_400_and_recorded(gw, tok, raw, why):
    t = tag()
    st = send(gw, raw.format(t=t), tok.analyst)
    assert st["status"] == 400, st
    assert why.lower() in detail(st).lower() or why in ("percent", "double", "UTF-8") \
        or why == "non-ASCII", detail(st)
    assert gw.upstream_saw(t) == []


def test_bad_path_has_error_entry(gw, tok):
    t = tag()
    st = send(gw, "/datasets/orders_fact/..%2fpii/" + t, tok.analyst)
    assert st["status"] == 400
    es = [e for e in gw.entries() if e.get("decision") == "error" and "bad path" in
          e.get("reason", "")]
    assert es, "a refused path leaves an error entry"
    assert not any(e.get("of") == es[-1]["index"] for e in gw.entries())


def test_forwarded_bytes_are_the_canonical_bytes(gw, tok):
    t = tag()
    cases = {
        "/datasets/%6Frders_fact/{t}-a": "/datasets/orders_fact/{t}-a",
        "/datasets/orders_fact/{t}-b%3ab": "/datasets/orders_fact/{t}-b:b",
        "/datasets/orders_fact/{t}-g%20%c3%a9": "/datasets/orders_fact/{t}-g%20%C3%A9",
        "/datasets/orders_fact/x/./y/../{t}-c": "/datasets/orders_fact/x/{t}-c",
        "/datasets/orders_fact/{t}-d?../../pii": "/datasets/orders_fact/{t}-d?../../pii",
        "/datasets/orders_fact/100%25off-{t}-e": "/datasets/orders_fact/100%25off-{t}-e",
        "/datasets/orders_fact//{t}-f": "/datasets/orders_fact/{t}-f",
    }
    for raw, canon in cases.items():
        raw, canon = raw.format(t=t), canon.format(t=t)
        st = send(gw, raw, tok.analyst)
        assert st["status"] == 200, (raw, st)
        assert json.loads(st["body"])["path"] == canon, raw
    seen = sorted(r["path"] for r in gw.upstream_saw(t))
    assert seen == sorted(c.format(t=t) for c in cases.values())
    # the lineage entry names the same bytes
    paths = {e.get("path") for e in gw.entries() if t in e.get("path", "")}
    assert paths == {c.format(t=t) for c in cases.values()}


@pytest.mark.parametrize("spelling", ["sec:ret", "sec%3Aret", "sec%3aret", "s%65c%3Aret"])
def test_escaped_sub_delims_meet_the_grant_on_the_raw_spelling(gw, tok, spelling):
    """A deny on datasets/orders_fact/<t>/sec:ret/** must hold however ':' is spelled: a
    product decodes %3A to ':' and would serve the denied data. Canonical form has one
    spelling per byte (the raw one for characters allowed raw), so every spelling meets it."""
    t = tag()
    g = {"id": "subdelim-" + t, "effect": "deny", "subjects": ["group:analysts"],
         "product": "orders", "resources": ["datasets/orders_fact/%s/sec:ret/**" % t],
         "actions": ["read"]}
    r = mgtest.request(gw.mg.admin_url + "/v1/grants/" + g["id"], method="PUT", token=gw.admin,
                       body=g, headers={"If-None-Match": "*"})
    assert r.status == 201, r
    st = send(gw, "/datasets/orders_fact/%s/%s/x" % (t, spelling), tok.analyst)
    assert st["status"] == 403 and detail(st) == "denied_by_grant", st
    assert gw.upstream_saw(t) == []
    st = send(gw, "/datasets/orders_fact/%s/public/x" % t, tok.analyst)
    assert st["status"] == 200


def test_trailing_slash_does_not_escape_a_deny(gw, tok):
    """Many products serve /x/ as /x: a deny on datasets/orders_fact/<t> also holds for
    datasets/orders_fact/<t>/ (while the analysts' allow on orders_fact/** is untouched)."""
    t = tag()
    g = {"id": "tsdeny-" + t, "effect": "deny", "subjects": ["group:analysts"],
         "product": "orders", "resources": ["datasets/orders_fact/" + t], "actions": ["read"]}
    r = mgtest.request(gw.mg.admin_url + "/v1/grants/" + g["id"], method="PUT", token=gw.admin,
                       body=g, headers={"If-None-Match": "*"})
    assert r.status == 201, r
    for path in ("/datasets/orders_fact/" + t, "/datasets/orders_fact/" + t + "/",
                 "/datasets/orders_fact/" + t + "//", "/datasets/orders_fact/" + t + "/./"):
        st = send(gw, path, tok.analyst)
        assert st["status"] == 403 and detail(st) == "denied_by_grant", (path, st)
    assert gw.upstream_saw(t) == []
    assert send(gw, "/datasets/orders_fact/%s/child" % t, tok.analyst)["status"] == 200


@pytest.mark.parametrize("token", [False, True], ids=["no-token", "token"])
def test_purpose_that_is_not_utf8_is_refused_and_recorded(gw, tok, token):
    """x-mesh-purpose bytes that are not UTF-8 cannot go into an entry as given: the
    request is refused (400) and still recorded, instead of slipping out of the log."""
    t = tag()
    headers = ([h for h in tok.analyst if h[0] == "authorization"] if token else []) + \
        [("x-mesh-purpose", b"an\xffalytics")]
    st = send(gw, "/datasets/orders_fact/" + t, headers)
    assert st["status"] == 400 and "UTF-8" in json.loads(st["body"])["detail"], st
    assert gw.upstream_saw(t) == []
    es = [e for e in gw.entries() if t in e.get("path", "")]
    assert len(es) == 1 and es[0]["decision"] == "error", es
    assert "purpose" not in es[0] or es[0]["purpose"] is None, es


def test_case_is_a_different_resource(gw, tok):
    t = tag()
    st = send(gw, "/datasets/Orders_fact/" + t, tok.analyst)
    assert st["status"] == 403 and detail(st) == "no_matching_grant"
    assert send(gw, "/Datasets/orders_fact/" + t, tok.analyst)["status"] == 404
    assert send(gw, "/DATASETS/orders_fact/" + t, tok.analyst)["status"] == 404
    # the deny on datasets/pii/** is case-sensitive too: PII is another resource, which the
    # etl client's datasets/** grant covers (documented: resources are byte strings)
    assert send(gw, "/datasets/pii/" + t, tok.etl)["status"] == 403
    assert send(gw, "/datasets/pii", tok.etl)["status"] == 403
    assert send(gw, "/datasets/pii/", tok.etl)["status"] == 403
    assert gw.upstream_saw(t) == []


def test_trailing_slash_is_a_different_resource(gw, tok):
    t = tag()
    g = {"id": "tslash-" + t, "effect": "allow", "subjects": ["user:tess"], "product": "orders",
         "resources": ["datasets/tslash/" + t], "actions": ["read"]}
    r = mgtest.request(gw.mg.admin_url + "/v1/grants/" + g["id"], method="PUT", token=gw.admin,
                       body=g, headers={"If-None-Match": "*"})
    assert r.status == 201, r
    tess = [("authorization", "Bearer " + gw.issuer.es256(sub="tess"))]
    assert send(gw, "/datasets/tslash/" + t, tess)["status"] == 200
    assert send(gw, "/datasets/tslash/" + t + "/", tess)["status"] == 403
    assert send(gw, "/datasets/tslash/" + t + "/x", tess)["status"] == 403
    assert send(gw, "/datasets/tslash/" + t + "%2F", tess)["status"] == 400
    assert [r["path"] for r in gw.upstream_saw(t)] == ["/datasets/tslash/" + t]


# ------------------------------------------------------------------ methods

@pytest.mark.parametrize("name", ["x-http-method-override", "x-http-method", "x-method-override"])
def test_method_override_never_reaches_upstream(gw, tok, name):
    t = tag()
    st = send(gw, "/datasets/orders_fact/" + t, tok.analyst + [(name, "DELETE"), (name, "PUT")])
    assert st["status"] == 200
    (seen,) = gw.upstream_saw(t)
    assert seen["method"] == "GET"
    assert not [k for k, _ in seen["headers"] if k in
                ("x-http-method-override", "x-http-method", "x-method-override")]


def test_method_override_cannot_downgrade_a_write(gw, tok):
    t = tag()
    st = send(gw, "/datasets/orders_fact/" + t, tok.analyst + [("x-http-method-override", "GET")],
              method="POST", body=b"{}")
    assert st["status"] == 403
    assert gw.upstream_saw(t) == []


@pytest.mark.parametrize("ct", ["application/grpc", "application/grpc+proto", "application/grpc;x=1"])
def test_grpc_content_type_cannot_downgrade_a_write(gw, tok, ct):
    """A read-only caller sends a REST write dressed as gRPC: the content type maps Flight
    method names (DoGet is a read) only on gRPC's own path shape, /pkg.Service/Method."""
    t = tag()
    for path in ("/datasets/orders_fact/%s/DoGet" % t, "/datasets/orders_fact/%s/ListFlights" % t):
        st = send(gw, path, tok.analyst + [("content-type", ct)], method="POST", body=b"{}")
        assert st["status"] == 403 and detail(st) == "no_matching_grant", st
    assert gw.upstream_saw(t) == []


@pytest.mark.parametrize("method", ["get", "Get", "PROPFIND", "TRACE", "DEBUG", "PURGE"])
def test_unmapped_methods_405(gw, tok, method):
    t = tag()
    st = send(gw, "/datasets/orders_fact/" + t, tok.analyst, method=method)
    assert st["status"] == 405, st
    assert gw.upstream_saw(t) == []


# ------------------------------------------------------------------ host / :authority

@pytest.mark.parametrize("hosts,ok", [
    (["evil.example"], False), (["localhost:1"], False), (["LOCALHOST"], True),
    (["localhost"], True), (["localhost", "evil.example"], False),
    (["evil.example", "localhost"], False)])
def test_host_differing_from_authority(gw, tok, hosts, ok):
    t = tag()
    st = send(gw, "/datasets/orders_fact/" + t, tok.analyst + [("host", h) for h in hosts])
    if ok:
        assert st["status"] == 200, st
        (seen,) = gw.upstream_saw(t)
        assert not any("evil" in v for _, v in seen["headers"])
    else:
        # 400 from meshgate, or nghttp2's own refusal of a second host field
        assert st["status"] == 400 or st["rst"] == PROTOCOL_ERROR, st
        assert gw.upstream_saw(t) == []


# ------------------------------------------------------------------ identity headers

SPOOF = [("x-mesh-principal", "user:root"), ("x-mesh-principal", "user:admin"),
         ("x-mesh-group", "group:admins"), ("x-mesh-group", "group:orders-owners"),
         ("x-mesh-client", "client:etl"), ("x-forwarded-for", "10.0.0.1"),
         ("x-forwarded-for", "10.0.0.2"), ("x-forwarded-host", "evil"),
         ("x-forwarded-proto", "https"), ("forwarded", "for=10.0.0.1;by=evil"),
         ("x-real-ip", "10.0.0.1"), ("x-original-url", "/datasets/pii/x"),
         ("x-rewrite-url", "/datasets/pii/x")]


def _names(seen):
    return [k for k, _ in seen["headers"]]


def test_spoofed_identity_headers_with_duplicates_stripped(gw, tok):
    t = tag()
    st = send(gw, "/datasets/orders_fact/" + t, tok.analyst + SPOOF)
    assert st["status"] == 200
    (seen,) = gw.upstream_saw(t)
    vals = lambda n: [v for k, v in seen["headers"] if k == n]  # noqa: E731
    assert vals("x-mesh-principal") == ["user:alice"]
    assert vals("x-mesh-group") == ["group:analysts"]
    for n in ("x-mesh-client", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto",
              "forwarded", "x-real-ip", "x-original-url", "x-rewrite-url", "authorization",
              "x-mesh-purpose"):
        assert n not in _names(seen), n


def test_spoof_cannot_authorize(gw):
    """A token with no grants plus spoofed principal/group headers is still refused."""
    t = tag()
    nobody = [("authorization", "Bearer " + gw.issuer.es256(sub="nobody")),
              ("x-mesh-purpose", "analytics")]
    st = send(gw, "/datasets/orders_fact/" + t, nobody + [("x-mesh-group", "group:analysts"),
                                                          ("x-mesh-principal", "client:etl")])
    assert st["status"] == 403
    assert gw.upstream_saw(t) == []


@pytest.mark.parametrize("name", ["X-Mesh-Principal", "x-mesh-principal ", " x-mesh-principal",
                                  "X-FORWARDED-FOR"])
def test_odd_case_or_spaced_identity_header_names_refused(gw, tok, name):
    """HTTP/2 field names are lowercase tokens (RFC 9113 §8.2.1): a malformed request, so
    an odd spelling can never slip past a case-sensitive strip list."""
    t = tag()
    st = send(gw, "/datasets/orders_fact/" + t, tok.analyst + [(name, "user:root")])
    assert st["rst"] == PROTOCOL_ERROR or st["status"] == 400, st
    assert gw.upstream_saw(t) == []


def test_identity_headers_in_trailers_stripped(gw):
    t = tag()
    st = send(gw, "/echo?" + t, [], method="POST", body=b"abc",
              trailers=[("x-mesh-principal", "user:root"), ("x-forwarded-for", "1.2.3.4"),
                        ("authorization", "Bearer x"), ("x-ok", "1")])
    assert st["status"] == 200 and st["body"] == b"abc", st
    with open(gw.up.log_path) as f:
        done = [d for d in map(json.loads, f) if d.get("done") and t in d["path"]]
    assert len(done) == 1
    names = [k for k, _ in done[0]["trailers"]]
    assert "x-mesh-principal" not in names and "x-forwarded-for" not in names
    assert "authorization" not in names


def test_client_request_id_and_traceparent_replaced(gw, tok):
    # (was a bug until 7487a81: the client's copies reached the product next to ours)
    t = tag()
    st = send(gw, "/datasets/orders_fact/" + t, tok.analyst + [
        ("x-request-id", "evil"), ("x-request-id", "evil2"),
        ("traceparent", "00-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-bbbbbbbbbbbbbbbb-01"),
        ("tracestate", "evil=1")])
    assert st["status"] == 200
    (seen,) = gw.upstream_saw(t)
    rid = [v for k, v in seen["headers"] if k == "x-request-id"]
    tp = [v for k, v in seen["headers"] if k == "traceparent"]
    assert len(rid) == 1 and rid[0] not in ("evil", "evil2"), rid
    assert len(tp) == 1 and "aaaaaaaa" not in tp[0], tp
    assert [v for k, v in seen["headers"] if k == "tracestate"] == []
    acc = [e for e in gw.entries() if t in e.get("path", "")]
    assert acc and acc[0]["request_id"] == rid[0]
