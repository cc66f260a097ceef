"""HTTP/2 conformance (an h2spec-equivalent set) against the data port: RFC 9113 §3.4–8.3
and RFC 7541, each case with the outcome the RFC requires (connection error = GOAWAY with
the code; stream error = RST_STREAM with the code, or the same code as a connection error,
RFC 9113 §5.4.1). After every case the server is alive and serves a fresh connection, and
requests that had to be refused never reached the product.

Runs against the real meshgate when it is built, else against the passthrough program
(the same transport, sidecar/conn.c, with a trivial pipeline). Frames come from h2raw.py.
"""
import socket
import struct

import pytest

from h2raw import (CONTINUATION, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PADDED, PING,
                   PRIORITY, PUSH_PROMISE, RST_STREAM, SETTINGS, WINDOW_UPDATE, PREFACE,
                   COMPRESSION_ERROR, ENHANCE_YOUR_CALM, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR,
                   PROTOCOL_ERROR, STREAM_CLOSED, S_ENABLE_PUSH, S_INITIAL_WINDOW_SIZE,
                   S_MAX_FRAME_SIZE, RawH2, frame, hpack_int, literal, start_target,
                   stream_or_conn_error)


@pytest.fixture(scope="module")
def t(tmp_path_factory):
    tgt = start_target(tmp_path_factory.mktemp("conf"))
    yield tgt
    assert tgt.stop() == [], "sanitizer reports (see the server log)"


@pytest.fixture(autouse=True)
def still_serving(t):
    yield
    assert t.alive(), "the server died"
    assert t.serves(), "the server no longer serves a fresh connection"


@pytest.fixture
def c(t):
    conn = RawH2(t.port)
    yield conn
    conn.close()


def conn_error(c, *codes, timeout=5):
    kind, code = c.wait_conn_error(timeout)
    assert kind == "goaway" and code in codes, (kind, code, codes)


def refused_request(t, c, path, extra, expect=PROTOCOL_ERROR, method="GET"):
    """A request whose header list violates §8: stream error `expect`; never forwarded."""
    sid = c.new_sid()
    hdrs = [(":method", method), (":scheme", "http"), (":authority", "localhost"),
            (":path", path)]
    c.headers(sid, hdrs + list(t.auth) + list(extra) if extra is not None else hdrs)
    assert stream_or_conn_error(c, sid, expect), (c.streams.get(sid), c.goaway)
    assert t.upstream_saw(path) == []


def ok(t, c, **kw):
    path = t.ok_path("conf")
    st = c.wait_stream(c.request(path, headers=t.auth, **kw))
    assert st["status"] == 200, st
    return st


# ------------------------------------------------------------------ §3.4 preface

def test_bad_preface_http1_request(t):
    path = t.ok_path("h1preface")
    s = socket.create_connection(("127.0.0.1", t.port), timeout=5)
    s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    data, closed = b"", False
    try:
        while True:
            d = s.recv(65536)
            if not d:
                closed = True
                break
            data += d
    except ConnectionResetError:
        closed = True
    except socket.timeout:
        pass
    s.close()
    # no HTTP/1.1 answer, the connection is closed (after SETTINGS and perhaps a GOAWAY)
    assert closed
    assert not data.startswith(b"HTTP/1.")
    assert t.upstream_saw(path) == []


def test_bad_preface_garbage_closes(t):
    c = RawH2(t.port, preface=False)
    c.send(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + frame(SETTINGS, 0, 0))
    kind, code = c.wait_conn_error(5)
    assert kind == "closed" or code == PROTOCOL_ERROR
    c.close()


def test_first_frame_not_settings(t):
    c = RawH2(t.port, preface=False)
    c.send(PREFACE + frame(PING, 0, 0, b"8bytes!!"))
    conn_error(c, PROTOCOL_ERROR)
    c.close()


# ------------------------------------------------------------------ §4 frames

def test_unknown_frame_type_ignored(t, c):
    c.send_frame(0x20, 0xff, 0, b"whatever")
    c.send_frame(0x21, 0, 1, b"x" * 100)
    ok(t, c)


def test_reserved_bit_in_stream_id_ignored(t, c):
    path = t.ok_path("rbit")
    c.headers(0x80000001, c.req_headers(path, extra=t.auth))
    st = c.wait_stream(1)
    assert st["status"] == 200


def test_unknown_flags_ignored(t, c):
    c.send_frame(PING, 0xfe, 0, b"flagflag")
    c.pump(lambda: c.pings, 3)
    assert c.pings == [b"flagflag"]


def test_data_larger_than_max_frame_size(t, c):
    sid = c.request("/echo", method="POST", end=False)
    c.data(sid, b"x" * 16385)
    assert stream_or_conn_error(c, sid, FRAME_SIZE_ERROR)


def test_headers_larger_than_max_frame_size(t, c):
    # a literal (not Huffman-coded) field makes the frame 16384 + a few bytes
    c.headers(1, raw=c.block(c.req_headers(t.ok_path("big"))) + literal("x-pad", "p" * 16400))
    conn_error(c, FRAME_SIZE_ERROR)


# ------------------------------------------------------------------ §4.3 / RFC 7541

def test_hpack_garbage_block(t, c):
    c.headers(1, raw=b"\xff\xff\xff\xff\xff\xff\xff\xff\xff")
    conn_error(c, COMPRESSION_ERROR)


def test_hpack_index_zero(t, c):
    c.headers(1, raw=b"\x80")
    conn_error(c, COMPRESSION_ERROR)


def test_hpack_index_beyond_tables(t, c):
    c.headers(1, raw=b"\x82\x86\x84" + hpack_int(200, 7, 0x80))
    conn_error(c, COMPRESSION_ERROR)


def test_hpack_integer_overflow(t, c):
    c.headers(1, raw=b"\x82\x86\x84" + b"\xff" + b"\xff" * 12 + b"\x01")
    conn_error(c, COMPRESSION_ERROR)


def test_hpack_table_size_update_above_setting(t, c):
    c.headers(1, raw=hpack_int(1 << 20, 5, 0x20) + b"\x82\x86\x84")
    conn_error(c, COMPRESSION_ERROR)


def test_hpack_table_size_update_after_field(t, c):
    c.headers(1, raw=b"\x82" + hpack_int(100, 5, 0x20) + b"\x86\x84")
    conn_error(c, COMPRESSION_ERROR)


def test_hpack_huffman_eos_padding(t, c):
    # literal without indexing, :path name (index 4), Huffman value of 32 one-bits (EOS)
    c.headers(1, raw=b"\x82\x86\x04\x84\xff\xff\xff\xff")
    conn_error(c, COMPRESSION_ERROR)


def test_hpack_truncated_block(t, c):
    c.headers(1, raw=b"\x82\x86\x84\x41\x0a" + b"loc")
    conn_error(c, COMPRESSION_ERROR)


def test_hpack_string_length_beyond_block(t, c):
    c.headers(1, raw=b"\x82\x86\x84" + b"\x00" + hpack_int(5000, 7) + b"abc")
    conn_error(c, COMPRESSION_ERROR)


def test_header_block_interrupted_by_other_frame(t, c):
    c.headers(1, c.req_headers(t.ok_path("intr"), extra=t.auth), end_headers=False)
    c.ping()
    conn_error(c, PROTOCOL_ERROR)


def test_header_block_interrupted_by_unknown_frame(t, c):
    c.headers(1, c.req_headers(t.ok_path("intr2"), extra=t.auth), end_headers=False)
    c.send_frame(0x22, 0, 1, b"ext")
    conn_error(c, PROTOCOL_ERROR)


# ------------------------------------------------------------------ §5.1 stream states

def test_data_on_idle_stream(t, c):
    c.data(1, b"hello", end_stream=True)
    conn_error(c, PROTOCOL_ERROR)


def test_rst_on_idle_stream(t, c):
    c.rst(1)
    conn_error(c, PROTOCOL_ERROR)


def test_window_update_on_idle_stream(t, c):
    c.window_update(1, 100)
    conn_error(c, PROTOCOL_ERROR)


def test_even_stream_id_from_client(t, c):
    c.headers(2, c.req_headers(t.ok_path("even"), extra=t.auth))
    conn_error(c, PROTOCOL_ERROR)
    assert t.upstream_saw("/even-") == []


def test_stream_id_decrease(t, c):
    # RFC 9113 §5.1.1 wants a connection error PROTOCOL_ERROR. nghttp2 (by design, it
    # cannot remember every closed stream) ignores a header block on a lower, never-used
    # id instead. Either way the request must never be answered or forwarded.
    ok(t, c, sid=5)
    path = t.ok_path("decr")
    c.headers(3, c.req_headers(path, extra=t.auth))
    kind, code = c.wait_conn_error(1.5)
    assert kind is None or code == PROTOCOL_ERROR, (kind, code)
    assert c.streams[3]["status"] is None
    assert t.upstream_saw(path) == []
    if kind is None:
        ok(t, c, sid=7)  # the connection is still usable


def test_data_on_half_closed_remote(t, c):
    sid = c.request("/slow?ms=1500")
    c.data(sid, b"late", end_stream=True)
    assert stream_or_conn_error(c, sid, STREAM_CLOSED)


def test_headers_on_half_closed_remote(t, c):
    sid = c.request("/slow?ms=1500")
    c.headers(sid, [("x-late", "1")], end_stream=True)
    assert stream_or_conn_error(c, sid, STREAM_CLOSED)


def test_data_on_closed_stream(t, c):
    st = ok(t, c)
    assert st["ended"]
    c.data(1, b"after", end_stream=True)
    assert stream_or_conn_error(c, 1, STREAM_CLOSED)


def test_headers_on_closed_stream(t, c):
    ok(t, c)
    path = t.ok_path("closed")
    c.headers(1, c.req_headers(path, extra=t.auth))
    conn_error(c, STREAM_CLOSED, PROTOCOL_ERROR)
    assert t.upstream_saw(path) == []


def test_headers_self_dependency(t, c):
    path = t.ok_path("selfdep")
    c.headers(1, c.req_headers(path, extra=t.auth), priority=(1, 16, False))
    assert stream_or_conn_error(c, 1, PROTOCOL_ERROR)
    assert t.upstream_saw(path) == []


def test_priority_self_dependency(t, c):
    c.priority(3, dep=3)
    assert stream_or_conn_error(c, 3, PROTOCOL_ERROR)


def test_push_promise_from_client(t, c):
    ok(t, c)
    c.send_frame(PUSH_PROMISE, END_HEADERS, 1, struct.pack(">I", 2) + b"\x82\x86\x84")
    conn_error(c, PROTOCOL_ERROR)


# ------------------------------------------------------------------ §6 frame definitions

@pytest.mark.parametrize("ftype,payload", [
    (DATA, b"x"), (HEADERS, b"\x82\x86\x84"), (PRIORITY, b"\x00\x00\x00\x00\x10"),
    (RST_STREAM, b"\x00\x00\x00\x08"), (CONTINUATION, b"\x82")],
    ids=["DATA", "HEADERS", "PRIORITY", "RST_STREAM", "CONTINUATION"])
def test_stream_frames_on_stream_zero(t, c, ftype, payload):
    flags = END_HEADERS if ftype in (HEADERS, CONTINUATION) else 0
    c.send_frame(ftype, flags, 0, payload)
    conn_error(c, PROTOCOL_ERROR)


@pytest.mark.parametrize("ftype,payload", [
    (SETTINGS, b""), (PING, b"12345678"), (GOAWAY, b"\x00\x00\x00\x00\x00\x00\x00\x00")],
    ids=["SETTINGS", "PING", "GOAWAY"])
def test_connection_frames_on_a_stream(t, c, ftype, payload):
    ok(t, c)
    c.send_frame(ftype, 0, 1, payload)
    conn_error(c, PROTOCOL_ERROR)


def test_data_invalid_padding(t, c):
    sid = c.request("/echo", method="POST", end=False)
    c.send_frame(DATA, PADDED | END_STREAM, sid, bytes([10]) + b"abcd")
    conn_error(c, PROTOCOL_ERROR)


def test_headers_invalid_padding(t, c):
    blk = b"\x82\x86\x84\x41\x09localhost"  # GET http / host localhost
    c.send_frame(HEADERS, PADDED | END_HEADERS | END_STREAM, 1, bytes([len(blk) + 5]) + blk)
    conn_error(c, PROTOCOL_ERROR)


def test_valid_padding_accepted(t, c):
    path = t.ok_path("padok")
    c.headers(1, c.req_headers("/echo", method="POST"), end_stream=False, pad=40)
    c.data(1, b"padded body", end_stream=True, pad=200)
    st = c.wait_stream(1)
    assert st["status"] == 200 and st["body"] == b"padded body"
    c.headers(3, c.req_headers(path, extra=t.auth), pad=7)
    assert c.wait_stream(3)["status"] == 200


@pytest.mark.parametrize("ftype,sid,payload", [
    (PRIORITY, 3, b"\x00\x00\x00\x00"), (RST_STREAM, 1, b"\x00\x00\x08"),
    (PING, 0, b"123456"), (WINDOW_UPDATE, 0, b"\x00\x00\x01"),
    (SETTINGS, 0, b"\x00\x02\x00\x00\x00")],
    ids=["PRIORITY-4", "RST_STREAM-3", "PING-6", "WINDOW_UPDATE-3", "SETTINGS-5"])
def test_bad_frame_lengths(t, c, ftype, sid, payload):
    if ftype == RST_STREAM:
        c.request("/slow?ms=1000")
    c.send_frame(ftype, 0, sid, payload)
    if ftype == PRIORITY:
        assert stream_or_conn_error(c, sid, FRAME_SIZE_ERROR)
    else:
        conn_error(c, FRAME_SIZE_ERROR)


def test_settings_ack_with_payload(t, c):
    c.send_frame(SETTINGS, 1, 0, struct.pack(">HI", S_ENABLE_PUSH, 0))
    conn_error(c, FRAME_SIZE_ERROR)


@pytest.mark.parametrize("setting,value,code", [
    (S_ENABLE_PUSH, 2, PROTOCOL_ERROR),
    (S_INITIAL_WINDOW_SIZE, 1 << 31, FLOW_CONTROL_ERROR),
    (S_MAX_FRAME_SIZE, 16383, PROTOCOL_ERROR),
    (S_MAX_FRAME_SIZE, 1 << 24, PROTOCOL_ERROR)],
    ids=["ENABLE_PUSH=2", "INITIAL_WINDOW_SIZE=2^31", "MAX_FRAME_SIZE=16383",
         "MAX_FRAME_SIZE=2^24"])
def test_settings_bad_values(t, c, setting, value, code):
    c.settings([(setting, value)])
    conn_error(c, code)


def test_settings_unknown_id_ignored(t, c):
    c.settings([(0x99, 12345), (0xfff0, 1)])
    ok(t, c)


def test_ping_echoed(t, c):
    c.ping(b"\x00\x01\x02\x03\x04\x05\x06\x07")
    c.pump(lambda: c.pings, 3)
    assert c.pings == [b"\x00\x01\x02\x03\x04\x05\x06\x07"]


def test_ping_ack_not_answered(t, c):
    c.ping(b"ackackac", ack=True)
    c.pump(lambda: c.pings, 0.5)
    assert c.pings == []
    ok(t, c)


def test_window_update_zero_on_connection(t, c):
    c.window_update(0, 0)
    conn_error(c, PROTOCOL_ERROR)


def test_window_update_zero_on_stream(t, c):
    sid = c.request("/echo", method="POST", end=False)
    c.window_update(sid, 0)
    assert stream_or_conn_error(c, sid, PROTOCOL_ERROR)


def test_window_update_overflow_connection(t, c):
    c.window_update(0, 0x7fffffff)
    c.window_update(0, 0x7fffffff)
    conn_error(c, FLOW_CONTROL_ERROR)


def test_window_update_overflow_stream(t, c):
    sid = c.request("/echo", method="POST", end=False)
    c.window_update(sid, 0x7fffffff)
    assert stream_or_conn_error(c, sid, FLOW_CONTROL_ERROR)


def test_initial_window_size_change_overflows_stream(t, c):
    sid = c.request("/echo", method="POST", end=False)
    c.window_update(sid, 0x7fffffff - 65535)  # the stream window is now 2^31-1
    c.settings([(S_INITIAL_WINDOW_SIZE, 65536)])
    assert stream_or_conn_error(c, sid, FLOW_CONTROL_ERROR)


def test_continuation_without_headers(t, c):
    c.continuation(1, b"\x82\x86\x84")
    conn_error(c, PROTOCOL_ERROR)


def test_continuation_on_other_stream(t, c):
    c.headers(1, c.req_headers(t.ok_path("cont"), extra=t.auth), end_headers=False)
    c.continuation(3, b"\x82")
    conn_error(c, PROTOCOL_ERROR)


def test_headers_with_continuations_accepted(t, c):
    path = t.ok_path("contok")
    blk = c.block(c.req_headers(path, extra=list(t.auth) + [("x-a", "1" * 100)]))
    parts = [blk[i:i + 40] for i in range(0, len(blk), 40)][:6]
    rest = blk[sum(len(p) for p in parts):]
    parts[-1] += rest
    c.headers(1, raw=parts[0], end_headers=False)
    for i, p in enumerate(parts[1:]):
        c.continuation(1, p, end_headers=(i == len(parts) - 2))
    st = c.wait_stream(1)
    assert st["status"] == 200
    assert len(t.upstream_saw(path)) == 1


# ------------------------------------------------------------------ §8.1 messages

def test_content_length_larger_than_data(t, c):
    sid = c.new_sid()
    c.headers(sid, c.req_headers("/echo", method="POST", extra=[("content-length", "10")]),
              end_stream=False)
    c.data(sid, b"12345", end_stream=True)
    assert stream_or_conn_error(c, sid, PROTOCOL_ERROR)


def test_content_length_smaller_than_data(t, c):
    sid = c.new_sid()
    c.headers(sid, c.req_headers("/echo", method="POST", extra=[("content-length", "2")]),
              end_stream=False)
    c.data(sid, b"12345", end_stream=True)
    assert stream_or_conn_error(c, sid, PROTOCOL_ERROR)


def test_trailers_without_end_stream(t, c):
    sid = c.request("/echo", method="POST", end=False)
    c.data(sid, b"abc")
    c.headers(sid, [("x-trailer", "1")], end_stream=False)
    assert stream_or_conn_error(c, sid, PROTOCOL_ERROR)


def test_pseudo_header_in_trailers(t, c):
    sid = c.request("/echo", method="POST", end=False)
    c.data(sid, b"abc")
    c.headers(sid, [(":path", "/datasets/pii/x")], end_stream=True)
    assert stream_or_conn_error(c, sid, PROTOCOL_ERROR)


# ------------------------------------------------------------------ §8.2 fields

def test_uppercase_header_name(t, c):
    path = t.ok_path("upper")
    refused_request(t, c, path, [("X-Upper", "1")])


@pytest.mark.parametrize("name,value", [
    ("connection", "keep-alive"), ("keep-alive", "timeout=5"), ("proxy-connection", "x"),
    ("transfer-encoding", "chunked"), ("upgrade", "websocket"), ("te", "gzip")])
def test_connection_specific_fields(t, c, name, value):
    refused_request(t, c, t.ok_path("connspec"), [(name, value)])


def test_te_trailers_allowed(t, c):
    path = t.ok_path("te")
    st = c.wait_stream(c.request(path, headers=list(t.auth) + [("te", "trailers")]))
    assert st["status"] == 200


# ------------------------------------------------------------------ §8.3 pseudo-headers

def _pseudo_case(t, c, hdrs):
    path = t.ok_path("pseudo")
    hdrs = [(k, path if v == "PATH" else v) for k, v in hdrs]
    sid = c.new_sid()
    c.headers(sid, hdrs + list(t.auth))
    assert stream_or_conn_error(c, sid, PROTOCOL_ERROR), (c.streams.get(sid), c.goaway)
    assert t.upstream_saw(path) == []


M, S, A, P = (":method", "GET"), (":scheme", "http"), (":authority", "localhost"), (":path", "PATH")


@pytest.mark.parametrize("hdrs", [
    [S, A, P],                                   # missing :method
    [M, A, P],                                   # missing :scheme
    [M, S, A],                                   # missing :path
    [M, M, S, A, P],                             # duplicate :method
    [M, S, A, P, P],                             # duplicate :path
    [M, S, S, A, P],                             # duplicate :scheme
    [M, S, A, P, (":foo", "bar")],               # unknown pseudo-header
    [M, S, A, P, (":status", "200")],            # response pseudo-header in a request
    [M, S, A, ("x-regular", "1"), P],            # pseudo-header after a regular field
    [M, S, A, (":path", "")],                    # empty :path
    [(":method", ""), S, A, P],                  # empty :method
    [(":method", "G ET"), S, A, P],              # invalid :method token
], ids=["no-method", "no-scheme", "no-path", "dup-method", "dup-path", "dup-scheme",
        "unknown-pseudo", "status-in-request", "pseudo-after-regular", "empty-path",
        "empty-method", "bad-method-token"])
def test_invalid_pseudo_headers(t, c, hdrs):
    _pseudo_case(t, c, hdrs)


def test_connect_without_path_not_proxied(t, c):
    sid = c.new_sid()
    c.headers(sid, [(":method", "CONNECT"), (":authority", "127.0.0.1:22")])
    st = c.wait_stream(sid)
    assert st["status"] == 405 or st["rst"] is not None or c.goaway is not None
    assert not [r for r in t.upstream_requests() if r.get("method") == "CONNECT"]


def test_settings_many_entries_is_calm_or_accepted(t, c):
    # nghttp2_option_set_max_settings(32): a SETTINGS frame with more entries is refused
    c.settings([(0x99, i) for i in range(100)])
    conn_error(c, ENHANCE_YOUR_CALM)
