"""HTTP/2-level attacks on the data port: rapid reset, CONTINUATION flood, HPACK bomb,
SETTINGS/PING/PRIORITY/empty-DATA/zero-increment floods, streams over the limit, idle,
slowloris, slow bodies, zero- and 1-byte-window stalls, oversized headers and trailers.

Each case asserts what the attacker sees (status, RST_STREAM or GOAWAY code, closed
connection), that the product saw nothing it should not (the test upstream's log), that the
process stayed bounded (CPU seconds, RSS growth) and that it still serves a normal request
on a fresh connection afterwards. Runs against the real meshgate when built, else against
the passthrough program (the same transport). Frames come from h2raw.py.
"""
import os
import socket
import struct
import threading
import time
import uuid

import pytest

from h2raw import (CONTINUATION, DATA, END_HEADERS, END_STREAM, HEADERS, PING, PRIORITY,
                   RST_STREAM, SETTINGS, WINDOW_UPDATE, CANCEL, COMPRESSION_ERROR,
                   ENHANCE_YOUR_CALM, INTERNAL_ERROR, NO_ERROR, PROTOCOL_ERROR, REFUSED_STREAM,
                   S_INITIAL_WINDOW_SIZE, RawH2, cpu_seconds, frame, literal, rss_kb,
                   start_target, stream_or_conn_error)

BODY_BUF = 65536
# what one attack may add to the process (sanitizer builds need more: MG_RSS_GROWTH_KB)
RSS_GROWTH_KB = int(os.environ.get("MG_RSS_GROWTH_KB", 48 * 1024))


@pytest.fixture(scope="module")
def t(tmp_path_factory):
    tgt = start_target(tmp_path_factory.mktemp("h2sec"),
                       {"max_concurrent_streams": 8, "max_body_buffer": BODY_BUF})
    yield tgt
    assert tgt.stop() == [], "sanitizer reports (see the server log)"


@pytest.fixture(scope="module")
def tidle(tmp_path_factory):
    """A target with a 2 s idle / body-progress timeout."""
    tgt = start_target(tmp_path_factory.mktemp("h2idle"),
                       {"idle_timeout_s": 2, "max_body_buffer": BODY_BUF})
    yield tgt
    assert tgt.stop() == [], "sanitizer reports (see the server log)"


def healthy(tgt):
    assert tgt.alive(), "the server died"
    assert tgt.serves(), "the server no longer serves a fresh connection"


def marker():
    return "m" + uuid.uuid4().hex[:10]


def lineage_consistent(tgt, m):
    """Real meshgate: whatever the product saw under attack was recorded first (an allow
    access entry per request), and each recorded request that was forwarded has exactly one
    outcome entry. Returns the number of access entries for the marker (None: passthrough)."""
    if not tgt.real:
        return None
    time.sleep(0.5)  # outcomes go in the next group commit
    es = tgt.entries()
    acc = [e for e in es if m in e.get("path", "") and e.get("decision") == "allow"]
    recorded = {}
    for e in acc:
        recorded[e["path"]] = recorded.get(e["path"], 0) + 1
    for r in tgt.upstream_saw(m):
        assert recorded.get(r["path"], 0) >= 1, "forwarded without an entry: " + r["path"]
    seen = {r["path"] for r in tgt.upstream_saw(m)}
    outs = {}
    for e in es:
        if "of" in e:
            outs[e["of"]] = outs.get(e["of"], 0) + 1
    for e in acc:
        if e["path"] in seen:
            assert outs.get(e["index"], 0) == 1, e
        assert outs.get(e["index"], 0) <= 1, e
    return len(acc)


def blast(c, chunks):
    """Sends a list of byte strings as fast as possible; stops when the peer closes."""
    buf = b"".join(chunks)
    for i in range(0, len(buf), 1 << 16):
        if not c.send(buf[i:i + (1 << 16)]):
            return False
    return True


# ------------------------------------------------------------------------- rapid reset

def test_rapid_reset_is_stopped(t):
    m = marker()
    c = RawH2(t.port)
    cpu0 = cpu_seconds(t.pid)
    n = 5000
    chunks = []
    for i in range(n):
        sid = 1 + 2 * i
        blk = c.block(c.req_headers("/slow?ms=300&%s=%d" % (m, i)))
        chunks.append(frame(HEADERS, END_HEADERS | END_STREAM, sid, blk) +
                      frame(RST_STREAM, 0, sid, struct.pack(">I", CANCEL)))
    blast(c, chunks)
    kind, code = c.wait_conn_error(10)
    # nghttp2's stream-reset rate limit (1000 burst, 33/s) ends the connection
    assert kind == "closed" or code in (ENHANCE_YOUR_CALM, INTERNAL_ERROR), (kind, code)
    c.close()
    time.sleep(0.5)
    seen = len(t.upstream_saw(m))
    assert seen < n, "every reset stream still reached the product"
    assert cpu_seconds(t.pid) - cpu0 < 15, "rapid reset burned the CPU"
    lineage_consistent(t, m)
    healthy(t)


# ------------------------------------------------------------------------- CONTINUATION

@pytest.mark.parametrize("payload", [b"", literal("x-c", "v" * 50)], ids=["empty", "fields"])
def test_continuation_flood(t, payload):
    m = marker()
    c = RawH2(t.port)
    rss0 = rss_kb(t.pid)
    blk = c.block(c.req_headers("/datasets/orders_fact/" + m, extra=t.auth))
    chunks = [frame(HEADERS, 0, 1, blk)] + [frame(CONTINUATION, 0, 1, payload)] * 20000
    t0 = time.time()
    blast(c, chunks)
    kind, code = c.wait_conn_error(5)
    assert kind == "closed" or code in (ENHANCE_YOUR_CALM, PROTOCOL_ERROR,
                                        COMPRESSION_ERROR), (kind, code)
    assert time.time() - t0 < 6
    c.close()
    assert t.upstream_saw(m) == []
    assert rss_kb(t.pid) - rss0 < RSS_GROWTH_KB
    healthy(t)


# ------------------------------------------------------------------------- HPACK bomb

def test_hpack_bomb_bounded(t):
    """A 4000-byte field added to the dynamic table, then referenced 2000 times per header
    block (8 MB decoded from 2 KB sent), on several streams: 431 or a reset, never forwarded,
    memory flat."""
    m = marker()
    c = RawH2(t.port)
    rss0 = rss_kb(t.pid)
    first = c.block(c.req_headers("/datasets/orders_fact/%s-0" % m, extra=t.auth))
    refs = bytes([0x80 | 62]) * 2000  # the newest dynamic table entry
    c.headers(1, raw=first + literal("x-bomb", "A" * 4000, index=True) + refs)
    sids = [1]
    for i in range(1, 8):
        sid = 1 + 2 * i
        raw = b"\x82\x86" + literal(":path", "/datasets/orders_fact/%s-%d" % (m, i)) + \
            literal(":authority", "localhost") + refs
        c.headers(sid, raw=raw)
        sids.append(sid)
    c.pump(lambda: all(c.streams[s]["ended"] or c.streams[s]["rst"] is not None
                       for s in sids) or c.goaway is not None, 10)
    for s in sids:
        st = c.streams[s]
        assert st["status"] == 431 or st["rst"] is not None or c.goaway is not None, st
        assert st["status"] != 200
    c.close()
    assert t.upstream_saw(m) == []
    assert rss_kb(t.pid) - rss0 < RSS_GROWTH_KB
    healthy(t)


# ------------------------------------------------------------------------- floods

@pytest.mark.parametrize("kind", ["settings", "ping"])
def test_ack_flood_without_reading(t, kind):
    """SETTINGS or PING frames that each demand an ACK, from a client that never reads:
    the ACK queue is bounded (nghttp2 max_outbound_ack) and memory stays flat."""
    c = RawH2(t.port, rcvbuf=4096)
    rss0 = rss_kb(t.pid)
    cpu0 = cpu_seconds(t.pid)
    one = frame(SETTINGS, 0, 0) if kind == "settings" else frame(PING, 0, 0, b"floodflo")
    c.sock.settimeout(10)
    t0 = time.time()
    sent = 0
    while sent < 400000 and time.time() - t0 < 20:
        if not c.send(one * 10000):
            break
        sent += 10000
    # the server cuts the connection (nghttp2 max_outbound_ack); probe without reading
    t1 = time.time()
    while not c.closed and time.time() - t1 < 5:
        time.sleep(0.2)
        c.send(frame(PING, 0, 0, b"probe123"))
    assert c.closed, "a client that never reads its ACKs kept its connection"
    grown = rss_kb(t.pid) - rss0
    assert grown < RSS_GROWTH_KB, grown
    assert cpu_seconds(t.pid) - cpu0 < 15
    c.close()
    healthy(t)


def test_ping_flood_while_reading_stays_responsive(t):
    c = RawH2(t.port)
    blast(c, [frame(PING, 0, 0, b"%08d" % i) for i in range(20000)])
    c.pump(lambda: len(c.pings) >= 20000, 10)
    kind, _ = (("goaway", c.goaway[1]) if c.goaway else ("closed", None)) \
        if (c.goaway or c.closed) else (None, None)
    assert len(c.pings) == 20000 or kind is not None
    healthy(t)


def test_empty_data_flood(t):
    c = RawH2(t.port)
    cpu0 = cpu_seconds(t.pid)
    sid = c.request("/echo", method="POST", end=False)
    blast(c, [frame(DATA, 0, sid)] * 100000 + [frame(DATA, END_STREAM, sid, b"end")])
    st = c.wait_stream(sid, 15)
    # served (a few µs per frame) or cut as a flood; never a hang or a CPU burn
    assert (st["status"] == 200 and st["body"] == b"end") or c.goaway or c.closed or \
        st["rst"] is not None, st
    assert cpu_seconds(t.pid) - cpu0 < 10
    c.close()
    healthy(t)


def test_priority_flood(t):
    c = RawH2(t.port)
    cpu0 = cpu_seconds(t.pid)
    rss0 = rss_kb(t.pid)
    chunks = [frame(PRIORITY, 0, 1 + 2 * (i % 50000),
                    struct.pack(">IB", 1 + 2 * ((i * 7) % 50000), i & 0xff))
              for i in range(100000)]
    blast(c, chunks)
    ok_path = t.ok_path("prio")
    st = c.wait_stream(c.request(ok_path, headers=t.auth, sid=100001), 15)
    assert st["status"] == 200 or c.goaway or c.closed, st
    assert cpu_seconds(t.pid) - cpu0 < 10
    assert rss_kb(t.pid) - rss0 < RSS_GROWTH_KB
    c.close()
    healthy(t)


def test_zero_increment_window_update_flood(t):
    c = RawH2(t.port)
    sid = c.request("/echo", method="POST", end=False)
    blast(c, [frame(WINDOW_UPDATE, 0, sid, b"\x00\x00\x00\x00")] * 10000)
    # the first one is an error PROTOCOL_ERROR (nghttp2: on the connection); a close with
    # our flood still unread may cost the GOAWAY (TCP RST), so a bare close counts too
    assert stream_or_conn_error(c, sid, PROTOCOL_ERROR) or c.closed
    c.close()
    c = RawH2(t.port)
    blast(c, [frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00")] * 10000)
    assert c.wait_conn_error() in (("goaway", PROTOCOL_ERROR), ("closed", None))
    c.close()
    healthy(t)


def test_connection_flood_others_still_served(t):
    socks = []
    try:
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", t.port), timeout=5)
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(SETTINGS, 0, 0))
            socks.append(s)
        healthy(t)
    finally:
        for s in socks:
            s.close()
    healthy(t)


# ------------------------------------------------------------------------- limits

def test_streams_over_concurrency_limit_refused(t):
    m = marker()
    c = RawH2(t.port)
    limit = c.server_settings.get(3)
    assert limit == 8
    sids = [c.request("/echo?%s=%d" % (m, i), method="POST", end=False) for i in range(limit)]
    extra = c.request("/echo?%s=extra" % m, method="POST", end=False)
    c.pump(lambda: c.streams[extra]["rst"] is not None or c.goaway is not None, 5)
    # RFC 9113 §5.1.2: a stream error REFUSED_STREAM/PROTOCOL_ERROR, or (nghttp2, once
    # the limit is acknowledged) a connection error PROTOCOL_ERROR
    if c.goaway is None:
        assert c.streams[extra]["rst"] in (REFUSED_STREAM, PROTOCOL_ERROR)
        for s in sids:
            c.data(s, b"x", end_stream=True)
        c.pump(lambda: all(c.streams[s]["ended"] for s in sids), 10)
        assert [c.streams[s]["status"] for s in sids] == [200] * limit
    else:
        assert c.goaway[1] == PROTOCOL_ERROR
    assert [r for r in t.upstream_saw(m) if "extra" in r["path"]] == []
    assert len(t.upstream_saw(m)) <= limit
    c.close()
    lineage_consistent(t, m)
    healthy(t)


def test_oversized_single_header_431(t):
    m = marker()
    c = RawH2(t.port)
    path = "/datasets/orders_fact/" + m
    st = c.wait_stream(c.request(path, headers=list(t.auth) + [("x-big", "b" * 17000)]))
    assert st["status"] == 431 or st["rst"] is not None or c.goaway is not None, st
    assert st["status"] != 200
    c.close()
    assert t.upstream_saw(m) == []
    healthy(t)


def test_oversized_header_list_of_small_fields_431(t):
    m = marker()
    c = RawH2(t.port)
    path = "/datasets/orders_fact/" + m
    many = [("x-f%d" % i, "v" * 100) for i in range(200)]  # ~26 KB of header list
    st = c.wait_stream(c.request(path, headers=list(t.auth) + many))
    assert st["status"] == 431, st
    # the connection survives a refused header list
    assert c.wait_stream(c.request(t.ok_path("after431"), headers=t.auth))["status"] == 200
    c.close()
    assert t.upstream_saw(m) == []
    healthy(t)


def test_huge_header_field_across_continuations(t):
    """A 100 KB field (larger than HPACK's per-field bound) in 7 frames."""
    m = marker()
    c = RawH2(t.port)
    rss0 = rss_kb(t.pid)
    blk = c.block(c.req_headers("/datasets/orders_fact/" + m, extra=t.auth)) + \
        literal("x-huge", "h" * 100000)
    parts = [blk[i:i + 16000] for i in range(0, len(blk), 16000)]
    c.headers(1, raw=parts[0], end_headers=False)
    for i, p in enumerate(parts[1:]):
        c.continuation(1, p, end_headers=(i == len(parts) - 2))
    st = c.wait_stream(1)
    assert st["status"] == 431 or st["rst"] is not None or c.goaway is not None or c.closed
    assert st["status"] != 200
    c.close()
    assert t.upstream_saw(m) == []
    assert rss_kb(t.pid) - rss0 < RSS_GROWTH_KB
    healthy(t)


def test_oversized_trailers_never_reach_upstream(t):
    m = marker()
    c = RawH2(t.port)
    sid = c.request("/echo?" + m, method="POST", end=False)
    c.data(sid, b"body")
    c.headers(sid, [("x-trailer-big", "t" * 20000)], end_stream=True)
    st = c.wait_stream(sid)
    assert st["status"] in (431, None) or st["rst"] is not None, st
    assert st["status"] != 200
    c.close()
    time.sleep(0.3)
    for d in t.upstream_done():
        if m in d["path"]:
            assert not any(k == "x-trailer-big" for k, _ in d.get("trailers", [])), d
    healthy(t)


# ------------------------------------------------------------------------- time-based

def test_idle_connection_closed(tidle):
    c = RawH2(tidle.port)
    t0 = time.time()
    kind, code = c.wait_conn_error(8)
    took = time.time() - t0
    assert kind == "closed" or code == NO_ERROR, (kind, code)
    assert 1.5 < took < 5, took
    c.close()
    healthy(tidle)


@pytest.mark.slow
def test_slowloris_prefaces_closed_others_served(tidle):
    """50 connections that never finish the preface: served around them, all closed by
    the 10 s header timeout."""
    socks = []
    for _ in range(50):
        s = socket.create_connection(("127.0.0.1", tidle.port), timeout=15)
        s.sendall(b"PRI * HTTP/2.0\r\n")
        socks.append(s)
    t0 = time.time()
    healthy(tidle)
    closed = 0
    for s in socks:
        s.settimeout(max(0.1, 14 - (time.time() - t0)))
        try:
            while s.recv(4096):
                pass
            closed += 1
        except (ConnectionResetError, BrokenPipeError):
            closed += 1
        except socket.timeout:
            pass
        s.close()
    assert closed == 50
    assert time.time() - t0 < 14
    healthy(tidle)


def test_body_that_stalls_is_reset(tidle):
    m = marker()
    c = RawH2(tidle.port)
    sid = c.request("/upload?" + m, method="POST", end=False)
    c.data(sid, b"x" * 1000)
    t0 = time.time()
    st = c.wait_stream(sid, 8)
    assert st["rst"] == CANCEL, st
    assert 1.5 < time.time() - t0 < 5
    c.close()
    if tidle.real:
        es = tidle.entries()
        acc = [e for e in es if m in e.get("path", "")]
        assert len(acc) == 1 and acc[0]["decision"] == "allow"
        outs = [e for e in es if e.get("of") == acc[0]["index"]]
        assert len(outs) == 1 and outs[0].get("reset") == CANCEL, outs
    healthy(tidle)


def test_slow_but_progressing_body_is_served(tidle):
    c = RawH2(tidle.port)
    sid = c.request("/upload", method="POST", end=False)
    for i in range(5):  # 5 x 0.8 s: longer than the timeout in total, never idle that long
        c.data(sid, b"y" * 10)
        c.pump(timeout=0.8)
    c.data(sid, b"", end_stream=True)
    st = c.wait_stream(sid)
    assert st["status"] == 200 and b'"bytes": 50' in st["body"], st
    c.close()


@pytest.mark.parametrize("window", ["stream0", "stream1", "connection"])
def test_window_stall_bounded_and_reset(tidle, window):
    """A client that opens no window (0 or 1 byte per stream, or never updates the
    connection window): memory stays bounded, others are served, stalled streams are reset
    after the timeout and never get more than the window allowed."""
    m = marker()
    settings = [(2, 0)]
    if window == "stream0":
        settings.append((S_INITIAL_WINDOW_SIZE, 0))
    elif window == "stream1":
        settings.append((S_INITIAL_WINDOW_SIZE, 1))
    c = RawH2(tidle.port, settings=settings, autowindow=False)
    rss0 = rss_kb(tidle.pid)
    sids = [c.request("/big?bytes=%d&%s=%d" % (20 << 20, m, i)) for i in range(6)]
    healthy(tidle)
    c.pump(lambda: all(c.streams[s]["rst"] is not None for s in sids) or c.goaway is not None,
           8)
    allowed = {"stream0": 0, "stream1": 1, "connection": 65535}[window]
    total = sum(len(c.streams[s]["body"]) for s in sids)
    if window == "connection":
        assert total <= allowed
    else:
        assert all(len(c.streams[s]["body"]) <= allowed for s in sids)
    assert all(c.streams[s]["rst"] == CANCEL for s in sids), [c.streams[s] for s in sids]
    assert rss_kb(tidle.pid) - rss0 < RSS_GROWTH_KB
    c.close()
    if tidle.real:
        assert lineage_consistent(tidle, m) == 6
        outs = [e for e in tidle.entries() if "of" in e and e.get("reset") == CANCEL]
        assert len(outs) >= 6
    healthy(tidle)


def test_one_byte_window_dribble_bounded(tidle):
    """WINDOW_UPDATE of 1 byte at a time (the data-dribble attack): DATA frames never exceed
    what was granted, memory flat."""
    c = RawH2(tidle.port, settings=[(2, 0), (S_INITIAL_WINDOW_SIZE, 1)], autowindow=False)
    rss0 = rss_kb(tidle.pid)
    sid = c.request("/big?bytes=%d" % (10 << 20))
    granted = 1
    for _ in range(30):
        c.pump(timeout=0.05)
        c.window_update(sid, 1)
        c.window_update(0, 1)
        granted += 1
    c.pump(timeout=0.3)
    st = c.streams[sid]
    assert 1 <= len(st["body"]) <= granted, len(st["body"])
    assert rss_kb(tidle.pid) - rss0 < RSS_GROWTH_KB
    c.close()
    healthy(tidle)


def test_client_reset_mid_upload_recorded(t):
    """A client that aborts an upload: the product's stream ends, the connection goes on,
    and (real meshgate) the outcome entry carries the reset."""
    m = marker()
    c = RawH2(t.port)
    sid = c.request("/upload?" + m, method="POST", end=False)
    for _ in range(8):
        c.data(sid, b"u" * 8192)
    c.pump(timeout=0.3)
    c.rst(sid, CANCEL)
    assert c.wait_stream(c.request(t.ok_path("after-rst"), headers=t.auth))["status"] == 200
    c.close()
    assert len(t.upstream_saw(m)) == 1
    if t.real:
        lineage_consistent(t, m)
        es = t.entries()
        (acc,) = [e for e in es if m in e.get("path", "") and "decision" in e]
        (out,) = [e for e in es if e.get("of") == acc["index"]]
        assert out.get("reset") == CANCEL and out["bytes_in"] <= 8 * 8192, out
    healthy(t)
