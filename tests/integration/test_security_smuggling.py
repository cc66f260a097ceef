"""h2 -> HTTP/1.1 request smuggling: meshgate in front of an HTTP/1.1 product
(upstream.protocol "http1", tests/integration/upstream.py --http1, a strict parser that logs
every request it parses).

Raw frames (h2raw.py) carry what HTTP/2 clients refuse to send: CR/LF/NUL and spaces in
field names and values, in :path, :method and :authority; content-length that disagrees with
the DATA; transfer-encoding, connection, te, upgrade, keep-alive; bodies that contain a whole
second HTTP/1.1 request. The attacker gets a RST_STREAM(PROTOCOL_ERROR) or a 400, and the
product sees either nothing or exactly the one request that was sent, with its body as body;
the pooled keep-alive connection is never left desynchronised for the next request.
"""
import hashlib
import json
import uuid

import pytest

from h2raw import PROTOCOL_ERROR, RawH2, start_target


@pytest.fixture(scope="module")
def t(tmp_path_factory):
    tgt = start_target(tmp_path_factory.mktemp("smug"), http1=True,
                       limits={"max_body_buffer": 65536})
    yield tgt
    assert tgt.stop() == [], "sanitizer reports (see the server log)"


@pytest.fixture(autouse=True)
def no_smuggled_request(t):
    yield
    for r in t.upstream_requests():
        assert "smuggled" not in r["path"] and "smuggled" not in r["method"], r
        assert not any(k in ("x-injected", "smuggled") for k, _ in r["headers"]), r
    assert t.alive()
    assert t.serves()


def marker():
    return "m" + uuid.uuid4().hex[:10]


def refused(c, sid, t, m):
    """RST_STREAM(PROTOCOL_ERROR) (nghttp2's field checks), a GOAWAY, or a 400 from meshgate;
    and the product never saw the request."""
    st = c.wait_stream(sid)
    assert st["rst"] == PROTOCOL_ERROR or st["status"] == 400 or \
        (c.goaway is not None and c.goaway[1] == PROTOCOL_ERROR), st
    assert t.upstream_saw(m) == []
    return st


BAD_FIELDS = [
    ("x-evil", "a\r\nx-injected: 1"),
    ("x-evil", "a\nx-injected: 1"),
    ("x-evil", "a\rx-injected: 1"),
    ("x-evil", "a\x00b"),
    ("x-evil", "a\r\n\r\nGET /smuggled HTTP/1.1"),
    ("x-evil\r\nx-injected", "1"),
    ("x-evil\nx-injected", "1"),
    ("x evil", "1"),
    ("x-evil:", "1"),
    ("x-evil", " leading-space"),
    ("x-evil", "trailing-space "),
    ("x-evil", "\ttab-first"),
    ("", "empty-name"),
    ("x-\x7f", "del-in-name"),
    ("x-\x01", "ctl-in-name"),
]


@pytest.mark.parametrize("name,value", BAD_FIELDS, ids=[repr(f)[:40] for f in BAD_FIELDS])
def test_bad_field_bytes_refused(t, name, value):
    m = marker()
    c = RawH2(t.port)
    sid = c.new_sid()
    c.headers(sid, c.req_headers("/datasets/orders_fact/" + m, extra=list(t.auth) +
                                 [(name, value)]))
    refused(c, sid, t, m)
    c.close()


def test_inner_tab_in_value_passes_intact(t):
    m = marker()
    c = RawH2(t.port)
    st = c.wait_stream(c.request("/datasets/orders_fact/" + m,
                                 headers=list(t.auth) + [("x-tab", "a\tb")]))
    assert st["status"] == 200
    (seen,) = t.upstream_saw(m)
    assert [v for k, v in seen["headers"] if k == "x-tab"] == ["a\tb"]
    c.close()


PSEUDO = [
    (":path", "/datasets/orders_fact/{m} HTTP/1.1\r\nx-injected: 1\r\n\r\nGET /smuggled"),
    (":path", "/datasets/orders_fact/{m} x"),
    (":path", "/datasets/orders_fact/{m}\tx"),
    (":path", "/datasets/orders_fact/{m}\r\n"),
    (":path", "/datasets/orders_fact/{m}\x00"),
    (":method", "GET /smuggled HTTP/1.1\r\nx: {m}"),
    (":method", "GET {m}"),
    (":method", "G\x00ET"),
    (":method", "GET\r\n"),
    (":authority", "localhost\r\nx-injected: {m}"),
    (":authority", "localhost {m}"),
    (":authority", "localhost/{m}"),
]


@pytest.mark.parametrize("name,value", PSEUDO, ids=[repr(p)[:40] for p in PSEUDO])
def test_bad_pseudo_header_bytes_refused(t, name, value):
    m = marker()
    value = value.format(m=m)
    hdrs = {":method": "GET", ":scheme": "http", ":authority": "localhost",
            ":path": "/datasets/orders_fact/" + m}
    hdrs[name] = value
    c = RawH2(t.port)
    sid = c.new_sid()
    c.headers(sid, list(hdrs.items()) + list(t.auth))
    refused(c, sid, t, m)
    assert not [r for r in t.upstream_requests() if m in json.dumps(r)]
    c.close()


@pytest.mark.parametrize("path", ["http://evil.example/datasets/orders_fact/{m}", "*",
                                  "datasets/orders_fact/{m}", "//evil.example/{m}"])
def test_non_origin_form_targets(t, path):
    """absolute-form, asterisk-form and relative targets never reach an HTTP/1.1 product
    (where they would mean something else)."""
    if not t.real:
        pytest.skip("path canonicalisation is the pipeline's (real meshgate only)")
    m = marker()
    c = RawH2(t.port)
    sid = c.new_sid()
    c.headers(sid, c.req_headers(path.format(m=m), extra=t.auth))
    st = c.wait_stream(sid)
    assert st["status"] in (400, 404) or st["rst"] is not None, st
    assert not [r for r in t.upstream_requests() if m in r["path"] or r["path"] == "*"
                or not r["path"].startswith("/") or r["path"].startswith("//")]
    c.close()


# ------------------------------------------------------------------ framing

def _pool_in_sync(t, n=4):
    """n requests on one connection, each must arrive once with its own path and answer."""
    c = RawH2(t.port)
    for i in range(n):
        m = marker()
        st = c.wait_stream(c.request("/datasets/orders_fact/" + m, headers=t.auth))
        assert st["status"] == 200, st
        assert json.loads(st["body"])["path"] == "/datasets/orders_fact/" + m
        assert len(t.upstream_saw(m)) == 1
    c.close()


def test_content_length_smaller_than_body_with_smuggled_request(t):
    m = marker()
    c = RawH2(t.port)
    sid = c.new_sid()
    c.headers(sid, c.req_headers("/upload?" + m, method="POST",
                                 extra=[("content-length", "5")]), end_stream=False)
    c.data(sid, b"hello" + b"GET /smuggled-%s HTTP/1.1\r\nhost: x\r\n\r\n" % m.encode(),
           end_stream=True)
    st = c.wait_stream(sid)
    assert st["rst"] == PROTOCOL_ERROR or (c.goaway and c.goaway[1] == PROTOCOL_ERROR), st
    # what reached the product is at most the announced 5 bytes, never a second request
    for d in t.upstream_done():
        if m in d["path"]:
            assert d["bytes"] <= 5, d
    c.close()
    _pool_in_sync(t)


def test_content_length_larger_than_body_does_not_desync_pool(t):
    m = marker()
    c = RawH2(t.port)
    sid = c.new_sid()
    c.headers(sid, c.req_headers("/upload?" + m, method="POST",
                                 extra=[("content-length", "100")]), end_stream=False)
    c.data(sid, b"short", end_stream=True)
    st = c.wait_stream(sid)
    assert st["rst"] == PROTOCOL_ERROR or (c.goaway and c.goaway[1] == PROTOCOL_ERROR), st
    c.close()
    # a half-sent body must not swallow the next request on a pooled connection
    _pool_in_sync(t, 6)


@pytest.mark.parametrize("values", [["5", "5"], ["5", "6"], ["5, 5"], ["+5"], ["0x5"],
                                    ["-1"], ["5 "], ["99999999999999999999999"]])
def test_odd_content_length_values(t, values):
    m = marker()
    c = RawH2(t.port)
    sid = c.new_sid()
    c.headers(sid, c.req_headers("/upload?" + m, method="POST",
                                 extra=[("content-length", v) for v in values]),
              end_stream=False)
    c.data(sid, b"hello", end_stream=True)
    st = c.wait_stream(sid)
    if st["status"] == 200:
        # only an unambiguous, correct length may pass, and it arrives once
        (seen,) = t.upstream_saw(m)
        assert [v for k, v in seen["headers"] if k == "content-length"] == ["5"]
    else:
        assert st["rst"] == PROTOCOL_ERROR or st["status"] == 400 or c.goaway, st
        for d in t.upstream_done():
            if m in d["path"]:
                assert d["bytes"] <= 5
    c.close()
    _pool_in_sync(t, 2)


@pytest.mark.parametrize("name,value", [
    ("transfer-encoding", "chunked"), ("transfer-encoding", "identity"),
    ("connection", "keep-alive"), ("connection", "close"), ("upgrade", "h2c"),
    ("keep-alive", "timeout=100"), ("proxy-connection", "keep-alive"), ("te", "gzip"),
    ("te", "trailers, gzip")])
def test_connection_specific_fields_refused(t, name, value):
    m = marker()
    c = RawH2(t.port)
    sid = c.new_sid()
    c.headers(sid, c.req_headers("/upload?" + m, method="POST", extra=[(name, value)]),
              end_stream=False)
    c.data(sid, b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n", end_stream=True)
    refused(c, sid, t, m)
    c.close()


def test_te_trailers_not_forwarded_to_http1(t):
    m = marker()
    c = RawH2(t.port)
    st = c.wait_stream(c.request("/datasets/orders_fact/" + m,
                                 headers=list(t.auth) + [("te", "trailers")]))
    assert st["status"] == 200
    (seen,) = t.upstream_saw(m)
    names = [k for k, _ in seen["headers"]]
    assert "te" not in names and "transfer-encoding" not in names
    c.close()


@pytest.mark.parametrize("with_length", [False, True], ids=["chunked", "content-length"])
def test_body_containing_a_second_request_is_just_body(t, with_length):
    m = marker()
    body = (b"GET /smuggled-a HTTP/1.1\r\nHost: x\r\n\r\n"
            b"0\r\n\r\nPOST /smuggled-b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"\r\n5\r\nhello\r\n0\r\n\r\n") * 50
    extra = [("content-length", str(len(body)))] if with_length else []
    c = RawH2(t.port)
    sid = c.new_sid()
    c.headers(sid, c.req_headers("/upload?" + m, method="POST", extra=extra),
              end_stream=False)
    for i in range(0, len(body), 1000):  # odd frame sizes: chunk boundaries anywhere
        c.data(sid, body[i:i + 1000], end_stream=i + 1000 >= len(body))
    st = c.wait_stream(sid)
    assert st["status"] == 200, st
    assert json.loads(st["body"]) == {"bytes": len(body),
                                      "sha256": hashlib.sha256(body).hexdigest()}
    assert len(t.upstream_saw(m)) == 1
    c.close()
    _pool_in_sync(t, 2)


@pytest.mark.parametrize("method", ["GET", "DELETE", "OPTIONS"])
def test_body_on_a_bodiless_method_closes_the_connection(t, method):
    """CL.0: a product that ignores the framing of a GET's body would parse the body as a
    second request. meshgate frames the body as usual and sends `connection: close`, so no
    further request can follow on that connection whatever the product does with it."""
    m = marker()
    body = b"GET /smuggled-cl0 HTTP/1.1\r\nHost: x\r\n\r\n"
    c = RawH2(t.port)
    sid = c.new_sid()
    c.headers(sid, c.req_headers("/datasets/orders_fact/" + m, method=method,
                                 extra=list(t.auth) + [("content-length", str(len(body)))]),
              end_stream=False)
    c.data(sid, body, end_stream=True)
    st = c.wait_stream(sid)
    c.close()
    if st["status"] == 200:
        (seen,) = t.upstream_saw(m)
        assert ["connection", "close"] in [list(h) for h in seen["headers"]], seen["headers"]
    else:  # refused before the product (405 for OPTIONS, 403 for a write): nothing seen
        assert t.upstream_saw(m) == []
    _pool_in_sync(t, 2)


@pytest.mark.parametrize("trailers", [[("x-trailer", "1")],
                                      [("x-trailer", "1"), ("content-length", "1000")]],
                         ids=["plain", "with-content-length"])
def test_request_trailers_do_not_reach_http1_as_fields(t, trailers):
    m = marker()
    c = RawH2(t.port)
    sid = c.request("/upload?" + m, method="POST", end=False)
    c.data(sid, b"abc")
    c.headers(sid, trailers, end_stream=True)
    st = c.wait_stream(sid)
    if st["status"] == 200:
        assert json.loads(st["body"])["bytes"] == 3
    else:
        assert st["rst"] == PROTOCOL_ERROR, st
    for seen in t.upstream_saw(m):
        assert not any(k == "x-trailer" for k, _ in seen["headers"])
        assert "1000" not in [v for k, v in seen["headers"] if k == "content-length"]
    for d in t.upstream_done():
        if m in d["path"]:
            assert d["trailers"] == [] and d["bytes"] <= 3, d
    c.close()
    _pool_in_sync(t, 2)


def test_head_response_does_not_desync_pool(t):
    """HEAD: the HTTP/1.1 answer has content-length but no body; a parser that waits for
    the body would take the next response as it."""
    c = RawH2(t.port)
    for i in range(3):
        m = marker()
        st = c.wait_stream(c.request("/datasets/orders_fact/" + m, method="HEAD",
                                     headers=t.auth))
        assert st["status"] == 200 and st["body"] == b"", st
        m2 = marker()
        st = c.wait_stream(c.request("/datasets/orders_fact/" + m2, headers=t.auth))
        assert st["status"] == 200 and json.loads(st["body"])["path"].endswith(m2), st
    c.close()


def test_host_field_never_duplicated_upstream(t):
    m = marker()
    c = RawH2(t.port)
    st = c.wait_stream(c.request("/datasets/orders_fact/" + m,
                                 headers=list(t.auth) + [("host", "localhost")]))
    assert st["status"] == 200, st
    (seen,) = t.upstream_saw(m)
    assert [v for k, v in seen["headers"] if k == "host"] == ["localhost"]
    c.close()
