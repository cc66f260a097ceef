/*
 * admin_http.c — the admin listener: one thread with its own event_base serving HTTP/1.1
 * (http_parser) and HTTP/2 (nghttp2 server session), over TLS (ALPN "h2" / "http/1.1") or
 * plain TCP (HTTP/2 by prior knowledge, detected from the 24-byte client preface).
 *
 * Design choices:
 *   - Whole requests are collected (bodies ≤ 1 MiB; 413 is decided from Content-Length
 *     before a byte of the body is buffered) and handed to mg_admin_dispatch() (admin.c).
 *   - HTTP/1.1 serves one request at a time: reading stops while a response is being sent,
 *     so pipelined requests wait in the kernel instead of in our memory.
 *   - The lineage export streams from a pipe fed by the export thread. Backpressure: output
 *     above OUT_HIGH stops reading the pipe (h1) or stops serialising frames (h2); the write
 *     callback (below OUT_LOW) resumes. A vanished client closes the pipe: the export
 *     thread then fails with EPIPE and stops.
 *   - Timeouts: a connection idle between requests for 60 s is closed; a request's header
 *     section (and a TLS handshake, and the h2 preface) must arrive within 10 s (408).
 *   - Stop: an eventfd wakes the loop; every connection is freed (closing export pipes),
 *     then the export threads are waited for.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "certs/certs.h"
#include "sidecar/admin_int.h"

#define OUT_HIGH (256u * 1024)
#define OUT_LOW (64u * 1024)
#define IDLE_TIMEOUT_S 60
#define HEADER_TIMEOUT_S 10
#define WRITE_TIMEOUT_S 60
#define H2_MAX_STREAMS 32
#define PIPE_CHUNK (64u * 1024)
#define DISCARD_MAX (8u * 1024 * 1024)
#define LINGER_S 2

static const char H2_PREFACE[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
#define H2_PREFACE_LEN 24

/* ---- HTTP/1.1 request parser ------------------------------------------------ */

/* RFC 9110 §5.6.2 tchar. Debian's http_parser is built lenient and lets spaces and other
 * bytes through in field names ("Content-Length : 0"); RFC 9112 §5.1 says 400. */
static bool is_token(const char *s, size_t n) {
  if (n == 0) return false;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) continue;
    if (!strchr("!#$%&'*+-.^_`|~", c) || c == 0) return false;
  }
  return true;
}

static int h1_flush_header(struct mg_admin_h1 *h) {
  if (!h->in_value) return 0;
  h->in_value = false;
  if (!is_token(h->field.data ? h->field.data : "", h->field.len)) {
    h->err = 400;
    return -1;
  }
  if (mg_strieq(h->field.data, h->field.len, "host")) h->nhost++;
  /* chunked trailers never add a field the request was decided on */
  int rc = h->headers_done ? 0 :
           mg_admin_req_add_header(&h->req, h->field.data ? h->field.data : "", h->field.len,
                                   h->value.data ? h->value.data : "", h->value.len);
  mg_buf_reset(&h->field);
  mg_buf_reset(&h->value);
  return rc;
}

static int h1_count(struct mg_admin_h1 *h, size_t n) {
  h->hdr_bytes += n;
  if (h->hdr_bytes > MG_ADMIN_MAX_HEADERS) {
    h->err = 431;
    return -1;
  }
  return 0;
}

static int on_message_begin(http_parser *p) {
  struct mg_admin_h1 *h = p->data;
  h->started = true;
  return 0;
}

static int on_url(http_parser *p, const char *at, size_t n) {
  struct mg_admin_h1 *h = p->data;
  h->started = true;
  if (h1_count(h, n) || mg_buf_append(&h->url, at, n)) return -1;
  return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t n) {
  struct mg_admin_h1 *h = p->data;
  if (h1_count(h, n + 4)) return -1;
  if (h->in_value && h1_flush_header(h)) return -1;
  return mg_buf_append(&h->field, at, n) ? -1 : 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n) {
  struct mg_admin_h1 *h = p->data;
  if (h1_count(h, n)) return -1;
  h->in_value = true;
  return mg_buf_append(&h->value, at, n) ? -1 : 0;
}

static int on_headers_complete(http_parser *p) {
  struct mg_admin_h1 *h = p->data;
  if (h1_flush_header(h)) return -1;
  h->headers_done = true;
  if (p->http_major != 1) {
    h->err = 505;
    return -1;
  }
  if (p->http_minor >= 1 && h->nhost != 1) { /* RFC 9112 §3.2: exactly one Host */
    h->err = 400;
    return -1;
  }
  /* a body announced larger than we accept is refused before any of it is read */
  if (p->content_length != ULLONG_MAX && p->content_length > MG_ADMIN_MAX_BODY) {
    h->err = 413;
    return -1;
  }
  const char *method = http_method_str((enum http_method)p->method);
  snprintf(h->req.method, sizeof h->req.method, "%s", method);
  h->req.target = strndup(h->url.data ? h->url.data : "", h->url.len);
  if (!h->req.target) return -1;
  const char *te = mg_admin_req_header(&h->req, "transfer-encoding");
  const char *cl = mg_admin_req_header(&h->req, "content-length");
  if (te && cl) { /* request smuggling shape: refuse (RFC 9112 §6.3) */
    h->err = 400;
    return -1;
  }
  const char *exp = mg_admin_req_header(&h->req, "expect");
  if (exp && mg_strieq(exp, strlen(exp), "100-continue")) h->expect_continue = true;
  h->keepalive = http_should_keep_alive(p) != 0;
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t n) {
  struct mg_admin_h1 *h = p->data;
  if (h->req.body.len + n > MG_ADMIN_MAX_BODY) {
    h->err = 413;
    return -1;
  }
  return mg_buf_append(&h->req.body, at, n) ? -1 : 0;
}

static int on_message_complete(http_parser *p) {
  struct mg_admin_h1 *h = p->data;
  h->complete = true;
  http_parser_pause(p, 1);
  return 0;
}

static const http_parser_settings h1_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

void mg_admin_h1_init(struct mg_admin_h1 *h) {
  memset(h, 0, sizeof *h);
  http_parser_init(&h->p, HTTP_REQUEST);
  h->p.data = h;
  mg_admin_req_init(&h->req);
  mg_buf_init(&h->field);
  mg_buf_init(&h->value);
  mg_buf_init(&h->url);
}

void mg_admin_h1_clear(struct mg_admin_h1 *h) {
  mg_admin_req_clear(&h->req);
  mg_buf_clear(&h->field);
  mg_buf_clear(&h->value);
  mg_buf_clear(&h->url);
}

void mg_admin_h1_next(struct mg_admin_h1 *h) {
  http_parser_pause(&h->p, 0);
  mg_admin_req_clear(&h->req);
  mg_buf_reset(&h->field);
  mg_buf_reset(&h->value);
  mg_buf_reset(&h->url);
  h->in_value = false;
  h->hdr_bytes = 0;
  h->nhost = 0;
  h->complete = h->expect_continue = h->started = h->headers_done = false;
}

int mg_admin_h1_feed(struct mg_admin_h1 *h, const char *data, size_t len, size_t *used) {
  *used = 0;
  if (h->err) return h->err;
  if (h->complete) return MG_ADMIN_H1_REQUEST;
  size_t n = http_parser_execute(&h->p, &h1_settings, data, len);
  enum http_errno e = HTTP_PARSER_ERRNO(&h->p);
  *used = n;
  if (h->complete) {
    if (h->p.upgrade) h->keepalive = false; /* no upgrades: answer, then close */
    return MG_ADMIN_H1_REQUEST;
  }
  if (h->err) return h->err;
  if (e != HPE_OK) return (h->err = 400);
  if (h->p.upgrade) return (h->err = 400);
  return MG_ADMIN_H1_MORE;
}

/* ---- listener and connections ------------------------------------------------ */

struct conn;

struct h2s {
  struct conn *c;
  int32_t id;
  struct mg_admin_req req;
  struct mg_admin_resp resp;
  size_t hdr_bytes;
  size_t off;            /* bytes of resp.body sent */
  int err;               /* status decided before the request was complete */
  bool responded, discard, reset;
  size_t discarded;      /* body bytes dropped after an early answer */
  struct event *ev;      /* export pipe readable */
  struct h2s *next, *prev;
};

struct mg_admin {
  struct mg_app *app;
  struct event_base *base;
  struct evconnlistener *lis;
  SSL_CTX *ssl_ctx;
  struct event *stop_ev;
  int stop_fd;
  pthread_t thread;
  bool started;
  struct mg_admin_ctx ctx;
  struct conn *conns;
};

enum proto { P_UNKNOWN = 0, P_H1, P_H2 };

struct conn {
  struct mg_admin *a;
  struct bufferevent *bev;
  SSL *ssl;
  enum proto proto;
  char spiffe[2100];
  bool has_spiffe;
  bool closing;          /* free once the output is flushed */
  bool lingering;        /* output flushed and shut; draining input until EOF or timer */
  bool out_paused;       /* h1: reading stopped until the client reads its answers */
  struct event *timer;
  struct conn *next, *prev;
  /* HTTP/1.1 */
  struct mg_admin_h1 h1;
  bool busy;             /* a response is being sent */
  bool continue_sent;
  struct mg_admin_resp resp;
  struct event *stream_ev;
  bool stream_raw;       /* HTTP/1.0: no chunking, close at the end */
  /* HTTP/2 */
  nghttp2_session *h2;
  struct h2s *streams;
  size_t nstreams;
  int64_t last_out_us;   /* last time the output drained (progress of responses) */
};

static void conn_free(struct conn *c);
static void h1_process(struct conn *c);
static void h2_flush(struct conn *c);

static void arm_timer(struct conn *c, int secs) {
  if (c->closing) return; /* the timer of a closing connection bounds its last flush */
  struct timeval tv = {secs, 0};
  evtimer_add(c->timer, &tv);
}

/* Connections are only freed from top-level callbacks (the timer, events, writes), never
 * from inside a call chain that may still touch them: closing code arms the timer. */
static void kill_soon(struct conn *c) {
  c->closing = true;
  c->lingering = true;
  bufferevent_disable(c->bev, EV_READ);
  struct timeval tv = {0, 0};
  evtimer_add(c->timer, &tv);
}

/* After the last answer: stop writing (FIN) but keep reading and dropping what the client
 * still sends for LINGER_S, so the answer is not destroyed by a TCP reset from unread data
 * (a client still uploading a refused body). */
static void linger(struct conn *c) {
  c->lingering = true;
  if (!c->ssl) shutdown(bufferevent_getfd(c->bev), SHUT_WR);
  struct timeval tv = {LINGER_S, 0};
  evtimer_add(c->timer, &tv);
}

static void close_after_flush(struct conn *c) {
  if (c->closing) return;
  c->closing = true;
  bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
  bufferevent_enable(c->bev, EV_READ);
  if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
    linger(c);
    return;
  }
  struct timeval tv = {WRITE_TIMEOUT_S, 0};
  evtimer_add(c->timer, &tv);
}

/* ---- HTTP/1.1 responses ---- */

/* Header names are stored lower case (HTTP/2 needs that); HTTP/1.1 gets the usual spelling. */
static void h1_name(char *out, size_t outlen, const char *name) {
  if (strcmp(name, "etag") == 0) name = "ETag";
  else if (strcmp(name, "www-authenticate") == 0) name = "WWW-Authenticate";
  size_t i = 0;
  bool up = true;
  for (; name[i] && i + 1 < outlen; i++) {
    char ch = name[i];
    out[i] = up && ch >= 'a' && ch <= 'z' ? (char)(ch - 32) : ch;
    up = ch == '-';
  }
  out[i] = 0;
}

static void h1_write_head(struct conn *c, const struct mg_admin_resp *rs, bool keepalive,
                          bool chunked) {
  struct evbuffer *out = bufferevent_get_output(c->bev);
  evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\n", rs->status, mg_admin_status_text(rs->status));
  if (rs->status != 204) evbuffer_add_printf(out, "Content-Type: %s\r\n", rs->ctype);
  for (size_t i = 0; i < rs->nhdrs; i++) {
    char name[64];
    h1_name(name, sizeof name, rs->hdrs[i].name);
    evbuffer_add_printf(out, "%s: %s\r\n", name, rs->hdrs[i].value);
  }
  evbuffer_add_printf(out, "Cache-Control: no-store\r\n");
  if (chunked) evbuffer_add_printf(out, "Transfer-Encoding: chunked\r\n");
  else if (rs->stream) { /* HTTP/1.0: the end of the connection ends the body */ }
  else if (rs->status != 204) evbuffer_add_printf(out, "Content-Length: %zu\r\n", rs->body.len);
  if (!keepalive) evbuffer_add_printf(out, "Connection: close\r\n");
  evbuffer_add(out, "\r\n", 2);
}

/* Answers an error the parser decided (400/408/413/431/505) and closes. */
static void h1_fail(struct conn *c, int status) {
  struct mg_admin_resp rs;
  mg_admin_resp_init(&rs);
  const char *code = status == 413 ? "payload_too_large"
                     : status == 431 ? "headers_too_large"
                     : status == 408 ? "request_timeout"
                     : status == 505 ? "http_version"
                                     : "bad_request";
  const char *detail = status == 413   ? "request bodies are limited to 1 MiB"
                       : status == 431 ? "the header section is limited to 16 KiB"
                       : status == 408 ? "the request did not arrive in time"
                       : status == 505 ? "only HTTP/1.1 and HTTP/2"
                                       : "malformed HTTP/1.1 request";
  mg_admin_resp_error(&rs, status, code, detail);
  h1_write_head(c, &rs, false, false);
  evbuffer_add(bufferevent_get_output(c->bev), rs.body.data, rs.body.len);
  mg_admin_resp_clear(&rs);
  close_after_flush(c);
}

static void h1_stream_end(struct conn *c, bool ok) {
  event_free(c->stream_ev);
  c->stream_ev = NULL;
  close(c->resp.stream->rfd);
  c->resp.stream->rfd = -1;
  if (ok && !c->stream_raw) {
    evbuffer_add(bufferevent_get_output(c->bev), "0\r\n\r\n", 5);
  }
  bool keep = ok && !c->stream_raw && c->h1.keepalive;
  mg_admin_resp_clear(&c->resp);
  c->busy = false;
  if (!keep) {
    /* a failed export ends without the terminating chunk: the client sees a broken body */
    close_after_flush(c);
    return;
  }
  mg_admin_h1_next(&c->h1);
  c->continue_sent = false;
  arm_timer(c, IDLE_TIMEOUT_S);
  bufferevent_enable(c->bev, EV_READ);
  h1_process(c);
}

static void h1_stream_cb(evutil_socket_t fd, short what, void *arg) {
  struct conn *c = arg;
  struct evbuffer *out = bufferevent_get_output(c->bev);
  (void)what;
  if (evbuffer_get_length(out) >= OUT_HIGH) {
    event_del(c->stream_ev); /* resumed by the write callback */
    return;
  }
  char buf[PIPE_CHUNK];
  ssize_t n = read(fd, buf, sizeof buf);
  if (n > 0) {
    if (!c->stream_raw) evbuffer_add_printf(out, "%zx\r\n", (size_t)n);
    evbuffer_add(out, buf, (size_t)n);
    if (!c->stream_raw) evbuffer_add(out, "\r\n", 2);
    return;
  }
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  int result = n == 0 ? atomic_load(&c->resp.stream->result) : -EIO;
  h1_stream_end(c, result == 0);
}

static void h1_respond(struct conn *c) {
  struct mg_admin_resp *rs = &c->resp;
  bool keep = c->h1.keepalive && !rs->close;
  if (rs->stream) {
    c->stream_raw = c->h1.p.http_minor == 0;
    h1_write_head(c, rs, keep && !c->stream_raw, !c->stream_raw);
    c->busy = true;
    evtimer_del(c->timer); /* the write timeout bounds a stalled client from here */
    c->stream_ev = event_new(c->a->base, rs->stream->rfd, EV_READ | EV_PERSIST, h1_stream_cb, c);
    if (!c->stream_ev) {
      close(rs->stream->rfd);
      rs->stream->rfd = -1;
      mg_admin_resp_clear(rs);
      close_after_flush(c);
      return;
    }
    event_add(c->stream_ev, NULL);
    bufferevent_disable(c->bev, EV_READ);
    return;
  }
  h1_write_head(c, rs, keep, false);
  if (rs->status != 204 && rs->body.len && strcmp(c->h1.req.method, "HEAD") != 0)
    evbuffer_add(bufferevent_get_output(c->bev), rs->body.data, rs->body.len);
  mg_admin_resp_clear(rs);
  if (!keep) {
    close_after_flush(c);
    return;
  }
  mg_admin_h1_next(&c->h1);
  c->continue_sent = false;
  arm_timer(c, IDLE_TIMEOUT_S);
}

static void h1_process(struct conn *c) {
  struct evbuffer *in = bufferevent_get_input(c->bev);
  struct evbuffer *out = bufferevent_get_output(c->bev);
  while (!c->busy && !c->closing) {
    if (evbuffer_get_length(out) >= OUT_HIGH) {
      /* pipelined requests from a client that does not read its answers: wait in the
       * kernel, not in our memory; on_write resumes below OUT_LOW */
      bufferevent_disable(c->bev, EV_READ);
      c->out_paused = true;
      break;
    }
    size_t len = evbuffer_get_length(in);
    if (len == 0) break;
    struct evbuffer_iovec v;
    if (evbuffer_peek(in, -1, NULL, &v, 1) < 1) break;
    bool was_started = c->h1.started;
    size_t used = 0;
    int rc = mg_admin_h1_feed(&c->h1, v.iov_base, v.iov_len, &used);
    evbuffer_drain(in, used);
    if (!was_started && c->h1.started) arm_timer(c, HEADER_TIMEOUT_S);
    if (c->h1.headers_done && !c->h1.complete && rc == MG_ADMIN_H1_MORE) {
      arm_timer(c, IDLE_TIMEOUT_S); /* the body: idle bound only */
      if (c->h1.expect_continue && !c->continue_sent) {
        c->continue_sent = true;
        evbuffer_add_printf(bufferevent_get_output(c->bev), "HTTP/1.1 100 Continue\r\n\r\n");
      }
    }
    if (rc >= 400) {
      h1_fail(c, rc);
      return;
    }
    if (rc == MG_ADMIN_H1_REQUEST) {
      c->h1.req.peer_spiffe = c->has_spiffe ? c->spiffe : NULL;
      mg_admin_resp_init(&c->resp);
      mg_admin_dispatch(&c->a->ctx, &c->h1.req, &c->resp);
      h1_respond(c);
      continue;
    }
    if (used == 0) break;
  }
}

/* ---- HTTP/2 ---- */

static void h2s_free(struct h2s *s) {
  if (s->ev) event_free(s->ev);
  if (s->resp.stream && s->resp.stream->rfd >= 0) {
    close(s->resp.stream->rfd); /* the export thread gets EPIPE */
    s->resp.stream->rfd = -1;
  }
  mg_admin_resp_clear(&s->resp);
  mg_admin_req_clear(&s->req);
  free(s);
}

static ssize_t body_read(nghttp2_session *sess, int32_t id, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *ud) {
  struct h2s *s = src->ptr;
  (void)sess;
  (void)id;
  (void)ud;
  size_t n = MG_MIN(length, s->resp.body.len - s->off);
  memcpy(buf, s->resp.body.data + s->off, n);
  s->off += n;
  if (s->off == s->resp.body.len) *flags |= NGHTTP2_DATA_FLAG_EOF;
  return (ssize_t)n;
}

static void h2_pipe_cb(evutil_socket_t fd, short what, void *arg) {
  struct h2s *s = arg;
  struct conn *c = s->c;
  (void)fd;
  (void)what;
  nghttp2_session_resume_data(c->h2, s->id);
  h2_flush(c);
}

static ssize_t pipe_read(nghttp2_session *sess, int32_t id, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *ud) {
  struct h2s *s = src->ptr;
  (void)sess;
  (void)id;
  (void)ud;
  ssize_t n = read(s->resp.stream->rfd, buf, length);
  if (n > 0) return n;
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
    event_add(s->ev, NULL);
    return NGHTTP2_ERR_DEFERRED;
  }
  if (n == 0 && atomic_load(&s->resp.stream->result) == 0) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    return 0;
  }
  /* failed export: reset the stream so the client never takes it for a whole one */
  return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
}

static void h2_respond(struct conn *c, struct h2s *s) {
  struct mg_admin_resp *rs = &s->resp;
  char status[8], clen[24];
  nghttp2_nv nv[MG_ADMIN_MAX_RESP_HDRS + 4];
  size_t n = 0;
  s->responded = true;
#define NV(nm, val)                                                                 \
  nv[n++] = (nghttp2_nv) {                                                          \
    (uint8_t *)(nm), (uint8_t *)(val), strlen(nm), strlen(val), NGHTTP2_NV_FLAG_NONE \
  }
  snprintf(status, sizeof status, "%d", rs->status);
  NV(":status", status);
  if (rs->status != 204) NV("content-type", rs->ctype);
  if (!rs->stream && rs->status != 204) {
    snprintf(clen, sizeof clen, "%zu", rs->body.len);
    NV("content-length", clen);
  }
  NV("cache-control", "no-store");
  for (size_t i = 0; i < rs->nhdrs; i++) NV(rs->hdrs[i].name, rs->hdrs[i].value);
#undef NV
  nghttp2_data_provider dp = {.source.ptr = s};
  if (rs->stream) {
    dp.read_callback = pipe_read;
    s->ev = event_new(c->a->base, rs->stream->rfd, EV_READ, h2_pipe_cb, s);
    if (!s->ev) {
      nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
      return;
    }
  } else {
    dp.read_callback = body_read;
  }
  bool body = rs->stream || (rs->status != 204 && rs->body.len > 0);
  if (nghttp2_submit_response(c->h2, s->id, nv, n, body ? &dp : NULL) != 0)
    nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
}

static void h2_early(struct conn *c, struct h2s *s, int status) {
  const char *code = status == 413 ? "payload_too_large" : "headers_too_large";
  const char *detail = status == 413 ? "request bodies are limited to 1 MiB"
                                     : "the header section is limited to 16 KiB";
  mg_admin_resp_error(&s->resp, status, code, detail);
  s->discard = true;
  h2_respond(c, s);
}

static int h2_on_begin_headers(nghttp2_session *sess, const nghttp2_frame *f, void *ud) {
  struct conn *c = ud;
  if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  struct h2s *s = calloc(1, sizeof *s);
  if (!s) return NGHTTP2_ERR_CALLBACK_FAILURE;
  s->c = c;
  s->id = f->hd.stream_id;
  mg_admin_req_init(&s->req);
  mg_admin_resp_init(&s->resp);
  s->req.h2 = true;
  s->next = c->streams;
  if (c->streams) c->streams->prev = s;
  c->streams = s;
  c->nstreams++;
  nghttp2_session_set_stream_user_data(sess, s->id, s);
  return 0;
}

static int h2_on_header(nghttp2_session *sess, const nghttp2_frame *f, const uint8_t *name,
                        size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                        void *ud) {
  (void)flags;
  (void)ud;
  struct h2s *s = nghttp2_session_get_stream_user_data(sess, f->hd.stream_id);
  if (!s || f->hd.type != NGHTTP2_HEADERS) return 0;
  s->hdr_bytes += namelen + valuelen + 32;
  if (s->hdr_bytes > MG_ADMIN_MAX_HEADERS) {
    s->err = 431;
    return 0;
  }
  if (s->err) return 0;
  if (namelen == 7 && memcmp(name, ":method", 7) == 0) {
    if (valuelen >= sizeof s->req.method) s->err = 400;
    else {
      memcpy(s->req.method, value, valuelen);
      s->req.method[valuelen] = 0;
    }
    return 0;
  }
  if (namelen == 5 && memcmp(name, ":path", 5) == 0) {
    free(s->req.target);
    s->req.target = strndup((const char *)value, valuelen);
    return s->req.target ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
  }
  if (namelen && name[0] == ':') return 0;
  /* trailers never add a field the request was decided on (Authorization, If-Match) */
  if (f->headers.cat == NGHTTP2_HCAT_HEADERS) return 0;
  if (mg_admin_req_add_header(&s->req, (const char *)name, namelen, (const char *)value,
                              valuelen))
    return NGHTTP2_ERR_CALLBACK_FAILURE;
  return 0;
}

static void h2_dispatch(struct conn *c, struct h2s *s) {
  if (s->responded) return;
  s->req.peer_spiffe = c->has_spiffe ? c->spiffe : NULL;
  mg_admin_dispatch(&c->a->ctx, &s->req, &s->resp);
  h2_respond(c, s);
}

static int h2_on_frame_recv(nghttp2_session *sess, const nghttp2_frame *f, void *ud) {
  struct conn *c = ud;
  if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA) return 0;
  struct h2s *s = nghttp2_session_get_stream_user_data(sess, f->hd.stream_id);
  if (!s || s->responded) return 0;
  if (f->hd.type == NGHTTP2_HEADERS && (f->hd.flags & NGHTTP2_FLAG_END_HEADERS)) {
    if (s->err) {
      h2_early(c, s, s->err);
      return 0;
    }
    const char *cl = mg_admin_req_header(&s->req, "content-length");
    if (cl && strtoull(cl, NULL, 10) > MG_ADMIN_MAX_BODY) {
      h2_early(c, s, 413);
      return 0;
    }
  }
  if (f->hd.flags & NGHTTP2_FLAG_END_STREAM) h2_dispatch(c, s);
  return 0;
}

static int h2_on_data(nghttp2_session *sess, uint8_t flags, int32_t id, const uint8_t *data,
                      size_t len, void *ud) {
  struct conn *c = ud;
  (void)flags;
  struct h2s *s = nghttp2_session_get_stream_user_data(sess, id);
  if (!s) return 0;
  if (s->discard || s->responded) {
    /* answered early (413/431): drop the rest of the upload; clients (curl ≤ 8.x) lose an
     * answer followed at once by RST_STREAM, so only a long upload is cut off */
    s->discarded += len;
    if (s->discarded > DISCARD_MAX && !s->reset) {
      s->reset = true;
      nghttp2_submit_rst_stream(sess, NGHTTP2_FLAG_NONE, id, NGHTTP2_NO_ERROR);
    }
    return 0;
  }
  if (s->req.body.len + len > MG_ADMIN_MAX_BODY) {
    h2_early(c, s, 413);
    return 0;
  }
  if (mg_buf_append(&s->req.body, data, len)) return NGHTTP2_ERR_CALLBACK_FAILURE;
  return 0;
}

static int h2_on_close(nghttp2_session *sess, int32_t id, uint32_t code, void *ud) {
  struct conn *c = ud;
  (void)code;
  struct h2s *s = nghttp2_session_get_stream_user_data(sess, id);
  if (!s) return 0;
  nghttp2_session_set_stream_user_data(sess, id, NULL);
  if (s->prev) s->prev->next = s->next;
  else c->streams = s->next;
  if (s->next) s->next->prev = s->prev;
  c->nstreams--;
  h2s_free(s);
  if (c->nstreams == 0) arm_timer(c, IDLE_TIMEOUT_S);
  return 0;
}

static int h2_start(struct conn *c) {
  nghttp2_session_callbacks *cbs = NULL;
  nghttp2_option *opt = NULL;
  int rc = -ENOMEM;
  if (nghttp2_session_callbacks_new(&cbs)) goto fail_cbs;
  nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, h2_on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cbs, h2_on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, h2_on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, h2_on_data);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, h2_on_close);
  if (nghttp2_option_new(&opt)) goto fail_opt;
  nghttp2_option_set_max_continuations(opt, 8);
  nghttp2_option_set_stream_reset_rate_limit(opt, 100, 10);
  nghttp2_option_set_max_outbound_ack(opt, 1000);
  nghttp2_option_set_max_settings(opt, 32);
  if (nghttp2_session_server_new2(&c->h2, cbs, c, opt)) goto fail_session;
  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, H2_MAX_STREAMS},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, MG_ADMIN_MAX_HEADERS},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 256 * 1024},
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
  };
  if (nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, MG_ARRAY_LEN(iv))) goto fail_settings;
  c->proto = P_H2;
  rc = 0;
  goto done;
fail_settings:
  nghttp2_session_del(c->h2);
  c->h2 = NULL;
fail_session:
done:
  nghttp2_option_del(opt);
fail_opt:
  nghttp2_session_callbacks_del(cbs);
fail_cbs:
  return rc;
}

static void h2_flush(struct conn *c) {
  struct evbuffer *out = bufferevent_get_output(c->bev);
  if (c->closing) return;
  while (evbuffer_get_length(out) < OUT_HIGH) {
    const uint8_t *data;
    ssize_t n = nghttp2_session_mem_send(c->h2, &data);
    if (n < 0) {
      kill_soon(c);
      return;
    }
    if (n == 0) break;
    evbuffer_add(out, data, (size_t)n);
  }
  if (!nghttp2_session_want_read(c->h2) && !nghttp2_session_want_write(c->h2))
    close_after_flush(c);
}

static void h2_input(struct conn *c) {
  struct evbuffer *in = bufferevent_get_input(c->bev);
  while (evbuffer_get_length(in) > 0) {
    struct evbuffer_iovec v;
    if (evbuffer_peek(in, -1, NULL, &v, 1) < 1) break;
    ssize_t n = nghttp2_session_mem_recv(c->h2, v.iov_base, v.iov_len);
    if (n < 0) {
      /* protocol error: nghttp2 queued a GOAWAY; send it and close */
      evbuffer_drain(in, evbuffer_get_length(in));
      h2_flush(c);
      close_after_flush(c);
      return;
    }
    evbuffer_drain(in, (size_t)n);
  }
  h2_flush(c);
}

/* ---- connection events ---- */

static void conn_free(struct conn *c) {
  struct mg_admin *a = c->a;
  if (c->prev) c->prev->next = c->next;
  else a->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  if (c->h2) nghttp2_session_del(c->h2); /* closes streams through h2_on_close */
  while (c->streams) {
    struct h2s *s = c->streams;
    c->streams = s->next;
    h2s_free(s);
  }
  if (c->stream_ev) event_free(c->stream_ev);
  if (c->resp.stream && c->resp.stream->rfd >= 0) {
    close(c->resp.stream->rfd);
    c->resp.stream->rfd = -1;
  }
  mg_admin_resp_clear(&c->resp);
  mg_admin_h1_clear(&c->h1);
  if (c->timer) event_free(c->timer);
  if (c->bev) bufferevent_free(c->bev); /* frees the SSL too */
  free(c);
}

static void on_read(struct bufferevent *bev, void *arg) {
  struct conn *c = arg;
  struct evbuffer *in = bufferevent_get_input(bev);
  if (c->closing) {
    evbuffer_drain(in, evbuffer_get_length(in));
    return;
  }
  if (c->proto == P_UNKNOWN) {
    size_t len = evbuffer_get_length(in);
    size_t k = MG_MIN(len, (size_t)H2_PREFACE_LEN);
    unsigned char *p = evbuffer_pullup(in, (ssize_t)k);
    if (k && memcmp(p, H2_PREFACE, k) != 0) {
      c->proto = P_H1;
    } else if (k == H2_PREFACE_LEN) {
      if (h2_start(c) != 0) {
        kill_soon(c);
        return;
      }
    } else {
      return; /* a prefix of the preface: wait for more */
    }
  }
  if (c->proto == P_H1) {
    h1_process(c);
  } else {
    arm_timer(c, IDLE_TIMEOUT_S);
    h2_input(c);
  }
}

static void on_write(struct bufferevent *bev, void *arg) {
  struct conn *c = arg;
  c->last_out_us = mg_mono_now_us();
  if (c->closing) {
    if (!c->lingering && evbuffer_get_length(bufferevent_get_output(bev)) == 0) linger(c);
    return;
  }
  if (c->proto == P_H1 && c->out_paused && !c->busy) {
    c->out_paused = false;
    bufferevent_enable(bev, EV_READ);
    h1_process(c);
  } else if (c->proto == P_H1 && c->stream_ev && !event_pending(c->stream_ev, EV_READ, NULL))
    event_add(c->stream_ev, NULL);
  else if (c->proto == P_H2)
    h2_flush(c);
}

static void tls_connected(struct conn *c) {
  const unsigned char *alpn = NULL;
  unsigned alen = 0;
  SSL_get0_alpn_selected(c->ssl, &alpn, &alen);
  if (mg_tls_peer_spiffe(c->ssl, c->spiffe, sizeof c->spiffe) == 0) c->has_spiffe = true;
  arm_timer(c, IDLE_TIMEOUT_S);
  if (alen == 2 && memcmp(alpn, "h2", 2) == 0) {
    if (h2_start(c) != 0) {
      kill_soon(c);
      return;
    }
    h2_flush(c);
  } else if (alen == 8 && memcmp(alpn, "http/1.1", 8) == 0) {
    c->proto = P_H1;
  }
  /* no ALPN at all: sniff the first bytes like on a plain connection */
}

static void on_event(struct bufferevent *bev, short what, void *arg) {
  struct conn *c = arg;
  (void)bev;
  if (what & BEV_EVENT_CONNECTED) {
    tls_connected(c);
    return;
  }
  if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) conn_free(c);
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
  struct conn *c = arg;
  (void)fd;
  (void)what;
  if (c->closing) {
    conn_free(c);
    return;
  }
  if (c->proto == P_H2) {
    /* open streams keep a connection only while their output moves: a client that holds
     * its flow-control window shut and sends nothing would otherwise pin an export thread */
    if (c->nstreams > 0 && mg_mono_now_us() - c->last_out_us < IDLE_TIMEOUT_S * 1000000LL) {
      arm_timer(c, IDLE_TIMEOUT_S);
      return;
    }
    nghttp2_session_terminate_session(c->h2, NGHTTP2_NO_ERROR);
    h2_flush(c);
    close_after_flush(c);
    return;
  }
  if (c->proto == P_H1 && c->h1.started && !c->h1.headers_done && !c->busy) {
    h1_fail(c, 408);
    return;
  }
  conn_free(c);
}

/* ---- accept, thread, start/stop ---- */

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg) {
  struct mg_admin *a = arg;
  (void)l;
  (void)sa;
  (void)salen;
  struct conn *c = calloc(1, sizeof *c);
  if (!c) {
    evutil_closesocket(fd);
    return;
  }
  c->a = a;
  mg_admin_h1_init(&c->h1);
  mg_admin_resp_init(&c->resp);
  c->timer = evtimer_new(a->base, on_timer, c);
  if (a->ssl_ctx) {
    c->ssl = SSL_new(a->ssl_ctx);
    if (c->ssl)
      c->bev = bufferevent_openssl_socket_new(a->base, fd, c->ssl, BUFFEREVENT_SSL_ACCEPTING,
                                              BEV_OPT_CLOSE_ON_FREE);
    if (!c->bev && c->ssl) SSL_free(c->ssl);
    if (c->bev) bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
  } else {
    c->bev = bufferevent_socket_new(a->base, fd, BEV_OPT_CLOSE_ON_FREE);
  }
  if (!c->bev || !c->timer) {
    evutil_closesocket(fd);
    if (c->timer) event_free(c->timer);
    mg_admin_h1_clear(&c->h1);
    free(c);
    return;
  }
  c->next = a->conns;
  if (a->conns) a->conns->prev = c;
  a->conns = c;
  evutil_make_socket_nonblocking(fd);
  bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
  bufferevent_setwatermark(c->bev, EV_WRITE, OUT_LOW, 0);
  bufferevent_setwatermark(c->bev, EV_READ, 0, 256 * 1024);
  struct timeval wt = {WRITE_TIMEOUT_S, 0};
  bufferevent_set_timeouts(c->bev, NULL, &wt);
  bufferevent_enable(c->bev, EV_READ | EV_WRITE);
  /* TLS: the handshake must finish within the header timeout; plain: idle until a byte */
  arm_timer(c, a->ssl_ctx ? HEADER_TIMEOUT_S : IDLE_TIMEOUT_S);
}

static void on_stop(evutil_socket_t fd, short what, void *arg) {
  struct mg_admin *a = arg;
  uint64_t v;
  (void)what;
  if (read(fd, &v, sizeof v) < 0) { /* nothing to do: the wakeup is what counts */ }
  event_base_loopbreak(a->base);
}

static void *admin_main(void *arg) {
  struct mg_admin *a = arg;
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  event_base_dispatch(a->base);
  while (a->conns) conn_free(a->conns); /* closes export pipes: their threads stop */
  return NULL;
}

static void admin_free(struct mg_admin *a) {
  while (a->conns) conn_free(a->conns);
  if (a->lis) evconnlistener_free(a->lis);
  if (a->stop_ev) event_free(a->stop_ev);
  if (a->stop_fd >= 0) close(a->stop_fd);
  if (a->base) event_base_free(a->base);
  if (a->ssl_ctx) SSL_CTX_free(a->ssl_ctx);
  mg_admin_ctx_clear(&a->ctx);
  free(a);
}

int mg_admin_start(struct mg_app *app, struct mg_admin **out, char *err, size_t errlen) {
  const struct mg_config *cfg = app->cfg;
  struct sockaddr_storage ss;
  int sslen = sizeof ss;
  int rc;
  struct mg_admin *a = calloc(1, sizeof *a);
  if (!a) {
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  a->app = app;
  a->stop_fd = -1;
  if ((rc = mg_admin_ctx_init(&a->ctx, app)) != 0) {
    snprintf(err, errlen, "out of memory");
    free(a);
    return rc;
  }
  if (!cfg->admin_address ||
      evutil_parse_sockaddr_port(cfg->admin_address, (struct sockaddr *)&ss, &sslen) != 0) {
    snprintf(err, errlen, "admin.address: cannot parse \"%s\"",
             cfg->admin_address ? cfg->admin_address : "");
    rc = MG_ERR_INVALID;
    goto fail;
  }
  if (cfg->admin_tls) {
    const struct mg_config_tls *t = cfg->admin_tls;
    int mode = MG_TLS_CLIENT_CERT_NONE;
    if (t->client_ca)
      mode = t->client_cert == MG_CLIENT_CERT_REQUIRED ? MG_TLS_CLIENT_CERT_REQUIRED
                                                       : MG_TLS_CLIENT_CERT_OPTIONAL;
    char terr[256] = "";
    rc = mg_tls_server_ctx_new(t->cert, t->key, t->client_ca, mode, MG_TLS_ALPN_HTTP11,
                               &a->ssl_ctx, terr, sizeof terr);
    if (rc != 0) {
      snprintf(err, errlen, "admin.tls: %s", terr);
      goto fail;
    }
  }
  a->base = event_base_new();
  a->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (!a->base || a->stop_fd < 0) {
    snprintf(err, errlen, "cannot create the admin event loop");
    rc = -ENOMEM;
    goto fail;
  }
  a->stop_ev = event_new(a->base, a->stop_fd, EV_READ | EV_PERSIST, on_stop, a);
  if (!a->stop_ev || event_add(a->stop_ev, NULL) != 0) {
    snprintf(err, errlen, "cannot create the admin event loop");
    rc = -ENOMEM;
    goto fail;
  }
  a->lis = evconnlistener_new_bind(a->base, on_accept, a,
                                   LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
                                       LEV_OPT_CLOSE_ON_EXEC,
                                   128, (struct sockaddr *)&ss, sslen);
  if (!a->lis) {
    rc = -errno;
    snprintf(err, errlen, "cannot listen on %s: %s", cfg->admin_address, strerror(errno));
    goto fail;
  }
  if ((rc = pthread_create(&a->thread, NULL, admin_main, a)) != 0) {
    snprintf(err, errlen, "cannot start the admin thread: %s", strerror(rc));
    rc = -rc;
    goto fail;
  }
  a->started = true;
  mg_info("admin API listening on %s (%s)", cfg->admin_address, a->ssl_ctx ? "TLS" : "plain");
  *out = a;
  return 0;
fail:
  admin_free(a);
  return rc;
}

void mg_admin_stop(struct mg_admin *a) {
  if (!a) return;
  if (a->started) {
    uint64_t one = 1;
    if (write(a->stop_fd, &one, sizeof one) < 0) mg_warn("admin: stop signal failed");
    pthread_join(a->thread, NULL);
  }
  admin_free(a);
}
