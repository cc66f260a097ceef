/*
 * conn.c — the downstream side: one nghttp2 server session per client connection, one
 * mg_req per stream.
 *
 * Flow control is the memory bound. We run nghttp2 without automatic WINDOW_UPDATE and
 * consume request body bytes only when they leave towards the upstream, so a request
 * body held back by the pipeline (or by a slow upstream) stalls the client instead of
 * filling memory: a stream never holds more than its window (= max_body_buffer). The
 * response side mirrors it: upstream DATA lands in a bounded ring and the upstream window
 * opens only as bytes are written downstream. Frames are serialised with mem_send into
 * the bufferevent, but only while its output queue is under MG_TP_OUT_HIGH, so a client
 * that does not read stops the data providers rather than growing the queue. DATA goes out
 * with NGHTTP2_DATA_FLAG_NO_COPY straight from the ring into the output buffer.
 *
 * Everything that may be triggered from inside an nghttp2 callback (submits, resets,
 * connection death) only marks state and schedules the connection's flush event; the
 * session is written, and freed, from that event, never from within its own callbacks.
 */
#include "sidecar/transport_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <event2/bufferevent_ssl.h>

#include "certs/certs.h"

/* ---- arena, ring, header list ---- */

void *mg_tp_arena_alloc(struct mg_arena *a, size_t n) {
  size_t pad = (size_t)(-(uintptr_t)a->p) & 7;
  if (a->p && n + pad <= a->left) {
    void *p = a->p + pad;
    a->p += pad + n;
    a->left -= pad + n;
    return p;
  }
  size_t cap = n > 4096 ? n : 4096;
  struct mg_arena_chunk *ch = malloc(sizeof *ch + cap);
  if (!ch)
    return NULL;
  ch->next = a->chunks;
  ch->cap = cap;
  a->chunks = ch;
  a->p = ch->data + n;
  a->left = cap - n;
  return ch->data;
}

char *mg_tp_arena_strdup(struct mg_arena *a, const void *s, size_t n) {
  char *p = mg_tp_arena_alloc(a, n + 1);
  if (p) {
    memcpy(p, s, n);
    p[n] = 0;
  }
  return p;
}

static void arena_clear(struct mg_arena *a) {
  while (a->chunks) {
    struct mg_arena_chunk *ch = a->chunks;
    a->chunks = ch->next;
    free(ch);
  }
}

size_t mg_tp_ring_write(struct mg_ring *r, const uint8_t *p, size_t n) {
  size_t space, tail, first;
  if (r->len + n > r->cap && r->cap < r->max) {
    size_t ncap = r->cap ? r->cap : MG_TP_RING_MIN;
    uint8_t *nb;
    while (ncap < r->len + n && ncap < r->max)
      ncap *= 2;
    if (ncap > r->max)
      ncap = r->max;
    nb = malloc(ncap);
    if (nb) {
      /* linearise while growing so the head stays contiguous */
      size_t c1 = MG_MIN(r->len, r->cap - r->head);
      if (r->len) {
        memcpy(nb, r->buf + r->head, c1);
        memcpy(nb + c1, r->buf, r->len - c1);
      }
      free(r->buf);
      r->buf = nb;
      r->cap = ncap;
      r->head = 0;
    }
  }
  space = r->cap - r->len;
  if (n > space)
    n = space;
  if (!n)
    return 0;
  tail = (r->head + r->len) % r->cap;
  first = MG_MIN(n, r->cap - tail);
  memcpy(r->buf + tail, p, first);
  memcpy(r->buf, p + first, n - first);
  r->len += n;
  return n;
}

void mg_tp_ring_drop(struct mg_ring *r, size_t n) {
  if (n > r->len)
    n = r->len;
  r->len -= n;
  r->head = r->len ? (r->head + n) % r->cap : 0;
}

void mg_tp_ring_free(struct mg_ring *r) {
  free(r->buf);
  r->buf = NULL;
  r->cap = r->len = r->head = 0;
}

int mg_tp_hdrs_add(struct mg_hdrs *h, struct mg_arena *a, const void *name, size_t namelen,
                   const void *value, size_t valuelen) {
  if (h->n == h->cap) {
    size_t ncap = h->cap ? h->cap * 2 : 16;
    struct mg_hdr *nv = mg_tp_arena_alloc(a, ncap * sizeof *nv);
    if (!nv)
      return -ENOMEM;
    if (h->n)
      memcpy(nv, h->v, h->n * sizeof *nv);
    h->v = nv;
    h->cap = ncap;
  }
  struct mg_hdr *e = &h->v[h->n];
  e->name = mg_tp_arena_strdup(a, name, namelen);
  e->value = mg_tp_arena_strdup(a, value, valuelen);
  if (!e->name || !e->value)
    return -ENOMEM;
  e->namelen = namelen;
  e->valuelen = valuelen;
  h->n++;
  h->bytes += namelen + valuelen + 32;
  return 0;
}

/* ---- small helpers ---- */

static bool name_is(const char *n, size_t len, const char *lit) {
  size_t l = strlen(lit);
  return len == l && memcmp(n, lit, l) == 0;
}

static bool name_prefix(const char *n, size_t len, const char *lit) {
  size_t l = strlen(lit);
  return len >= l && memcmp(n, lit, l) == 0;
}

/* Connection-specific fields never cross a hop (RFC 9113 §8.2.2). */
static bool hop_by_hop(const char *n, size_t len) {
  return name_is(n, len, "connection") || name_is(n, len, "keep-alive") ||
         name_is(n, len, "proxy-connection") || name_is(n, len, "transfer-encoding") ||
         name_is(n, len, "upgrade") || name_is(n, len, "http2-settings");
}

static nghttp2_nv mknv(const char *n, size_t nl, const char *v, size_t vl) {
  nghttp2_nv nv = {(uint8_t *)n, (uint8_t *)v, nl, vl, NGHTTP2_NV_FLAG_NONE};
  return nv;
}

void mg_tp_conn_want_write(struct mg_conn *c) {
  if (!c->flush_pending) {
    c->flush_pending = true;
    event_active(&c->flush_ev, EV_WRITE, 0);
  }
}

static void conn_kill(struct mg_conn *c) {
  if (c->dead)
    return;
  c->dead = true;
  if (c->bev)
    bufferevent_disable(c->bev, EV_READ | EV_WRITE);
  mg_tp_conn_want_write(c);
}

static struct mg_config *conn_cfg(const struct mg_conn *c) { return c->cfg; }

/* The session is finished and its last bytes are with the kernel. Closing now could
 * turn unread client bytes (a WINDOW_UPDATE, a PING) into a TCP RST that destroys the
 * response tail still in the client's receive buffer. So: FIN, read and discard until the
 * client closes, at most 2 s ("lingering close"). */
static void conn_linger(struct mg_conn *c) {
  struct timeval tv = {2, 0};
  if (c->lingering || c->dead)
    return;
  c->lingering = true;
  shutdown(bufferevent_getfd(c->bev), SHUT_WR);
  bufferevent_disable(c->bev, EV_WRITE);
  evtimer_add(&c->timer, &tv);
}

size_t mg_tp_body_buffer(const struct mg_config *cfg) {
  size_t n = cfg->max_body_buffer ? cfg->max_body_buffer : 256 * 1024;
  if (n < MG_TP_RING_MIN)
    n = MG_TP_RING_MIN;
  return MG_MIN(n, (size_t)0x7fffffff);
}

static int max_streams(const struct mg_config *cfg) {
  return cfg->max_concurrent_streams > 0 ? cfg->max_concurrent_streams : 100;
}

static int max_header_bytes(const struct mg_config *cfg) {
  return cfg->max_header_list_bytes > 0 ? cfg->max_header_list_bytes : 16384;
}

static int idle_s(const struct mg_config *cfg) {
  return cfg->idle_timeout_s > 0 ? cfg->idle_timeout_s : 60;
}

/* ---- request lifetime ---- */

static void req_timer_cb(evutil_socket_t fd, short what, void *arg);

static void req_timer(struct mg_req *r, int mode, int64_t ms) {
  struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
  r->timer_mode = mode;
  if (mode == MG_TIMER_OFF)
    evtimer_del(&r->timer);
  else
    evtimer_add(&r->timer, &tv);
}

static struct mg_req *req_new(struct mg_conn *c, int32_t sid) {
  struct mg_worker *w = c->w;
  struct mg_req *r = w->free_reqs;
  if (r) {
    w->free_reqs = r->next;
    w->nfree_reqs--;
  } else {
    r = malloc(sizeof *r);
    if (!r)
      return NULL;
  }
  memset(r, 0, offsetof(struct mg_req, arena0));
  r->arena.p = r->arena0;
  r->arena.left = sizeof r->arena0;
  r->conn = c;
  r->stream_id = sid;
  r->out.reset = -1;
  r->info.start_mono_us = mg_mono_now_us();
  r->info.peer = c->peer;
  r->info.spiffe = c->spiffe[0] ? c->spiffe : NULL;
  r->info.tls = c->tls;
  r->reqbuf.max = r->respbuf.max = mg_tp_body_buffer(conn_cfg(c));
  r->last_progress_us = r->info.start_mono_us;
  evtimer_assign(&r->timer, w->base, req_timer_cb, r);
  r->next = c->reqs;
  if (c->reqs)
    c->reqs->prev = r;
  c->reqs = r;
  c->nstreams++;
  atomic_fetch_add_explicit(&w->srv->streams_active, 1, memory_order_relaxed);
  return r;
}

void mg_tp_req_free_block(struct mg_worker *w, struct mg_req *r) {
  if (w->nfree_reqs < 64) {
    r->next = w->free_reqs;
    w->free_reqs = r;
    w->nfree_reqs++;
  } else {
    free(r);
  }
}

/* The stream is gone (closed, or the connection dies): detach, report, free. */
static void req_finish(struct mg_req *r, uint32_t error_code) {
  struct mg_conn *c = r->conn;
  struct mg_worker *w = c->w;
  if (error_code != NGHTTP2_NO_ERROR && r->out.reset < 0)
    r->out.reset = error_code;
  r->closing = true;
  evtimer_del(&r->timer);
  if (r->up_kind != MG_UP_NONE || r->queued)
    mg_tp_up_cancel(r);
  /* Body bytes we never consumed still count against the connection window. */
  if (r->reqbuf.len && c->sess)
    nghttp2_session_consume_connection(c->sess, r->reqbuf.len);
  r->out.duration_us = (uint64_t)(mg_mono_now_us() - r->info.start_mono_us);
  if (r->dispatched)
    mg_pipeline_on_close(r, &r->out);
  if (c->goaway_after && !c->goaway && c->sess && !c->dead) {
    nghttp2_submit_goaway(c->sess, NGHTTP2_FLAG_NONE,
                          nghttp2_session_get_last_proc_stream_id(c->sess),
                          NGHTTP2_ENHANCE_YOUR_CALM, NULL, 0);
    c->goaway = true;
    mg_tp_conn_want_write(c);
  }
  if (c->sess)
    nghttp2_session_set_stream_user_data(c->sess, r->stream_id, NULL);
  if (r->prev)
    r->prev->next = r->next;
  else
    c->reqs = r->next;
  if (r->next)
    r->next->prev = r->prev;
  c->nstreams--;
  c->last_activity_us = mg_mono_now_us();
  atomic_fetch_sub_explicit(&w->srv->streams_active, 1, memory_order_relaxed);
  mg_tp_ring_free(&r->reqbuf);
  mg_tp_ring_free(&r->respbuf);
  arena_clear(&r->arena);
  mg_tp_req_free_block(w, r);
}

static void req_rst(struct mg_req *r, uint32_t code) {
  if (r->out.reset < 0)
    r->out.reset = code;
  nghttp2_submit_rst_stream(r->conn->sess, NGHTTP2_FLAG_NONE, r->stream_id, code);
  mg_tp_conn_want_write(r->conn);
}

static void body_ready(struct mg_req *r) {
  if (r->up_kind == MG_UP_H2)
    mg_tp_up_body_ready(r);
  else if (r->up_kind == MG_UP_H1)
    mg_tp_h1_body_ready(r);
}

/* ---- public request API ---- */

const struct mg_req_info *mg_req_info(const struct mg_req *r) { return &r->info; }
struct mg_worker *mg_req_worker(const struct mg_req *r) { return r->conn->w; }
void mg_req_set_data(struct mg_req *r, void *data) { r->user = data; }
void *mg_req_get_data(const struct mg_req *r) { return r->user; }
uint64_t mg_req_handle(const struct mg_req *r) {
  return (r->conn->serial << 31) | (uint64_t)(uint32_t)r->stream_id;
}

static ssize_t local_read(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t length,
                          uint32_t *flags, nghttp2_data_source *src, void *ud) {
  struct mg_req *r = src->ptr;
  size_t n = MG_MIN(length, r->local_len - r->local_off);
  memcpy(buf, r->local_body + r->local_off, n);
  r->local_off += n;
  r->out.bytes_out += n;
  if (r->local_off == r->local_len)
    *flags |= NGHTTP2_DATA_FLAG_EOF;
  return (ssize_t)n;
}

void mg_req_respond(struct mg_req *r, int status, const char *content_type, const char *body,
                    size_t body_len, const nghttp2_nv *extra, size_t nextra) {
  struct mg_conn *c = r->conn;
  nghttp2_nv *nv;
  size_t n = 0;
  char *st, *cl;
  nghttp2_data_provider prd;
  bool head = r->info.method && strcmp(r->info.method, "HEAD") == 0;

  if (r->responded || c->dead || r->closing)
    return;
  if (r->up_kind != MG_UP_NONE || r->queued)
    mg_tp_up_cancel(r);
  r->local = true;
  if (r->reqbuf.len) {
    nghttp2_session_consume(c->sess, r->stream_id, r->reqbuf.len);
    mg_tp_ring_drop(&r->reqbuf, r->reqbuf.len);
  }
  nv = mg_tp_arena_alloc(&r->arena, (3 + nextra) * sizeof *nv);
  st = mg_tp_arena_alloc(&r->arena, 16);
  cl = mg_tp_arena_alloc(&r->arena, 24);
  if (!nv || !st || !cl) {
    req_rst(r, NGHTTP2_INTERNAL_ERROR);
    return;
  }
  snprintf(st, 16, "%d", status);
  snprintf(cl, 24, "%zu", body_len);
  nv[n++] = mknv(":status", 7, st, strlen(st));
  if (content_type)
    nv[n++] = mknv("content-type", 12, content_type, strlen(content_type));
  nv[n++] = mknv("content-length", 14, cl, strlen(cl));
  for (size_t i = 0; i < nextra; i++)
    nv[n++] = extra[i];
  if (body_len && !head) {
    uint8_t *copy = mg_tp_arena_alloc(&r->arena, body_len);
    if (!copy) {
      req_rst(r, NGHTTP2_INTERNAL_ERROR);
      return;
    }
    memcpy(copy, body, body_len);
    r->local_body = copy;
    r->local_len = body_len;
    prd.source.ptr = r;
    prd.read_callback = local_read;
  }
  if (nghttp2_submit_response(c->sess, r->stream_id, nv, n,
                              body_len && !head ? &prd : NULL) != 0) {
    req_rst(r, NGHTTP2_INTERNAL_ERROR);
    return;
  }
  r->responded = true;
  r->out.status = status;
  if (r->timer_mode == MG_TIMER_HEADERS)
    req_timer(r, MG_TIMER_BODY, (int64_t)idle_s(conn_cfg(c)) * 1000);
  mg_tp_conn_want_write(c);
}

static void respond_json(struct mg_req *r, int status, const char *error, const char *detail) {
  struct mg_buf b;
  mg_buf_init(&b);
  mg_buf_appends(&b, "{\"error\":");
  mg_buf_append_json_str(&b, error, strlen(error));
  mg_buf_appends(&b, ",\"detail\":");
  mg_buf_append_json_str(&b, detail ? detail : "", detail ? strlen(detail) : 0);
  mg_buf_appends(&b, "}\n");
  mg_req_respond(r, status, "application/json", b.data, b.len, NULL, 0);
  mg_buf_clear(&b);
}

int mg_req_count_failed_verify(struct mg_req *r) {
  struct mg_conn *c = r->conn;
  int limit = conn_cfg(c)->failed_verifies_per_conn;
  c->failed_verifies++;
  /* GOAWAY goes out when this stream closes, so the response precedes it on the wire;
   * streams newer than that are refused by it. */
  if (limit > 0 && c->failed_verifies >= limit)
    c->goaway_after = true;
  return c->failed_verifies;
}

/* Is `name` one of the inbound fields never forwarded? (also applied to trailers) */
bool mg_tp_strip_inbound(const struct mg_config *cfg, const char *n, size_t l) {
  if (name_prefix(n, l, "x-mesh-") || name_prefix(n, l, "x-forwarded-"))
    return true;
  if (name_is(n, l, "forwarded") || name_is(n, l, "x-real-ip") ||
      name_is(n, l, "x-original-url") || name_is(n, l, "x-rewrite-url") ||
      name_is(n, l, "x-http-method-override") || name_is(n, l, "x-http-method") ||
      name_is(n, l, "x-method-override") || name_is(n, l, "host"))
    return true;
  /* The request id and trace context are meshgate's: the entry's request_id goes upstream,
   * never a client-chosen one (tracestate belongs to the replaced trace). */
  if (name_is(n, l, "x-request-id") || name_is(n, l, "traceparent") || name_is(n, l, "tracestate"))
    return true;
  if (hop_by_hop(n, l))
    return true;
  if (name_is(n, l, "authorization") && !cfg->upstream.forward_token)
    return true;
  return false;
}

int mg_req_forward(struct mg_req *r, const char *path, size_t path_len, const nghttp2_nv *add,
                   size_t nadd) {
  struct mg_conn *c = r->conn;
  struct mg_config *cfg = conn_cfg(c);
  struct mg_config *wcfg = c->w->cfg;
  nghttp2_nv *nv;
  size_t n = 0;
  const char *auth;
  char *p;

  if (r->responded || r->forwarded || c->dead || r->closing)
    return MG_ERR_INVALID;
  nv = mg_tp_arena_alloc(&r->arena, (4 + r->hdrs.n + nadd) * sizeof *nv);
  p = mg_tp_arena_strdup(&r->arena, path, path_len);
  if (!nv || !p)
    return -ENOMEM;
  auth = r->info.authority ? r->info.authority : r->info.host ? r->info.host : "localhost";
  nv[n++] = mknv(":method", 7, r->info.method, strlen(r->info.method));
  nv[n++] = mknv(":scheme", 7, "http", 4);
  nv[n++] = mknv(":authority", 10, auth, strlen(auth));
  nv[n++] = mknv(":path", 5, p, path_len);
  for (size_t i = 0; i < r->hdrs.n; i++) {
    const struct mg_hdr *h = &r->hdrs.v[i];
    if (mg_tp_strip_inbound(cfg, h->name, h->namelen))
      continue;
    /* te: only "trailers" may cross to an h2 upstream (gRPC needs it); never to h1. */
    if (name_is(h->name, h->namelen, "te") &&
        (wcfg->upstream.protocol != MG_UPSTREAM_H2C || !mg_strieq(h->value, h->valuelen,
                                                                  "trailers")))
      continue;
    nv[n++] = mknv(h->name, h->namelen, h->value, h->valuelen);
  }
  for (size_t i = 0; i < nadd; i++) {
    char *an = mg_tp_arena_strdup(&r->arena, add[i].name, add[i].namelen);
    char *av = mg_tp_arena_strdup(&r->arena, add[i].value, add[i].valuelen);
    if (!an || !av)
      return -ENOMEM;
    nv[n++] = mknv(an, add[i].namelen, av, add[i].valuelen);
  }
  r->fwd_nv = nv;
  r->fwd_nnv = n;
  r->forwarded = true;
  /* Committed to the upstream: the outcome (status, or 502/504 when it proves
   * unreachable or silent) belongs to the lineage whatever happens next. */
  r->out.forwarded = true;
  r->resp_timeout_us = (int64_t)(wcfg->upstream.response_timeout_ms > 0
                                     ? wcfg->upstream.response_timeout_ms
                                     : 30000) * 1000;
  r->resp_deadline_us = mg_mono_now_us() + r->resp_timeout_us;
  req_timer(r, MG_TIMER_BODY, MG_MIN((r->resp_deadline_us - mg_mono_now_us()) / 1000,
                                     (int64_t)idle_s(conn_cfg(c)) * 1000));
  mg_tp_up_start(r);
  return 0;
}

/* ---- upstream -> downstream ---- */

static ssize_t resp_read(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *ud) {
  struct mg_req *r = src->ptr;
  const uint8_t *p;
  size_t avail = mg_tp_ring_contig(&r->respbuf, &p);
  if (avail == 0) {
    if (!r->resp_eof) {
      r->resp_deferred = true;
      return NGHTTP2_ERR_DEFERRED;
    }
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (r->resp_trailers.n) {
      nghttp2_nv *nv = mg_tp_arena_alloc(&r->arena, r->resp_trailers.n * sizeof *nv);
      size_t n = 0;
      if (!nv)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
      for (size_t i = 0; i < r->resp_trailers.n; i++) {
        const struct mg_hdr *h = &r->resp_trailers.v[i];
        if (!hop_by_hop(h->name, h->namelen))
          nv[n++] = mknv(h->name, h->namelen, h->value, h->valuelen);
      }
      if (n) {
        *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        nghttp2_submit_trailer(s, sid, nv, n);
      }
    }
    return 0;
  }
  *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
  return (ssize_t)MG_MIN(avail, length);
}

static int send_data_cb(nghttp2_session *s, nghttp2_frame *frame, const uint8_t *framehd,
                        size_t length, nghttp2_data_source *src, void *ud) {
  struct mg_conn *c = ud;
  struct mg_req *r = src->ptr;
  struct evbuffer *out = bufferevent_get_output(c->bev);
  const uint8_t *p;
  size_t avail = mg_tp_ring_contig(&r->respbuf, &p);
  static const uint8_t zeros[256];
  if (avail < length)
    return NGHTTP2_ERR_CALLBACK_FAILURE;
  evbuffer_add(out, framehd, 9);
  if (frame->data.padlen > 0) {
    uint8_t pl = (uint8_t)(frame->data.padlen - 1);
    evbuffer_add(out, &pl, 1);
  }
  evbuffer_add(out, p, length);
  if (frame->data.padlen > 1)
    evbuffer_add(out, zeros, frame->data.padlen - 1);
  mg_tp_ring_drop(&r->respbuf, length);
  r->out.bytes_out += length;
  r->last_progress_us = mg_mono_now_us();
  mg_tp_up_resp_consumed(r, length);
  return 0;
}

void mg_tp_req_up_headers(struct mg_req *r, int status, const struct mg_hdrs *h,
                          bool end_stream) {
  struct mg_conn *c = r->conn;
  nghttp2_nv *nv;
  size_t n = 0;
  char *st;
  nghttp2_data_provider prd = {.source.ptr = r, .read_callback = resp_read};
  if (r->responded || c->dead || r->closing)
    return;
  nv = mg_tp_arena_alloc(&r->arena, (h->n + 1) * sizeof *nv);
  st = mg_tp_arena_alloc(&r->arena, 8);
  if (!nv || !st) {
    req_rst(r, NGHTTP2_INTERNAL_ERROR);
    return;
  }
  snprintf(st, 8, "%d", status);
  nv[n++] = mknv(":status", 7, st, strlen(st));
  for (size_t i = 0; i < h->n; i++) {
    const struct mg_hdr *e = &h->v[i];
    if (e->namelen == 0 || e->name[0] == ':' || hop_by_hop(e->name, e->namelen) ||
        name_is(e->name, e->namelen, "te"))
      continue;
    nv[n++] = mknv(e->name, e->namelen, e->value, e->valuelen);
  }
  if (end_stream)
    r->resp_eof = true;
  if (nghttp2_submit_response(c->sess, r->stream_id, nv, n, end_stream ? NULL : &prd) != 0) {
    req_rst(r, NGHTTP2_INTERNAL_ERROR);
    return;
  }
  r->responded = true;
  r->out.status = status;
  req_timer(r, MG_TIMER_BODY, (int64_t)idle_s(conn_cfg(c)) * 1000);
  mg_tp_conn_want_write(c);
}

static void resume_resp(struct mg_req *r) {
  if (r->resp_deferred && !r->conn->dead) {
    r->resp_deferred = false;
    nghttp2_session_resume_data(r->conn->sess, r->stream_id);
    mg_tp_conn_want_write(r->conn);
  }
}

size_t mg_tp_req_up_data(struct mg_req *r, const uint8_t *p, size_t n) {
  size_t taken = mg_tp_ring_write(&r->respbuf, p, n);
  resume_resp(r);
  return taken;
}

void mg_tp_req_up_end(struct mg_req *r, const struct mg_hdrs *trailers) {
  if (trailers && trailers != &r->resp_trailers)
    r->resp_trailers = *trailers;
  r->resp_eof = true;
  resume_resp(r);
}

void mg_tp_req_up_fail(struct mg_req *r, int status, const char *error, const char *detail) {
  struct mg_worker *w = r->conn->w;
  atomic_fetch_add_explicit(&w->srv->upstream_errors, 1, memory_order_relaxed);
  if (r->closing || r->conn->dead)
    return;
  if (!r->responded)
    respond_json(r, status, error, detail);
  else if (!r->resp_eof)
    req_rst(r, NGHTTP2_INTERNAL_ERROR);
}

void mg_tp_req_drop_body(struct mg_req *r) {
  struct mg_conn *c = r->conn;
  size_t n = r->reqbuf.len;
  if (c->dead || r->closing || !n)
    return;
  nghttp2_session_consume(c->sess, r->stream_id, n);
  mg_tp_ring_drop(&r->reqbuf, n);
  r->drained += n;
  r->last_progress_us = mg_mono_now_us();
  mg_tp_conn_want_write(c);
}

void mg_tp_req_consumed_body(struct mg_req *r, size_t n) {
  struct mg_conn *c = r->conn;
  if (c->dead || r->closing || !n)
    return;
  nghttp2_session_consume(c->sess, r->stream_id, n);
  r->last_progress_us = mg_mono_now_us();
  /* The response clock runs from the last body byte the upstream accepted: a long upload
   * is not a slow upstream, an upstream that stops reading is. */
  if (!r->responded)
    r->resp_deadline_us = r->last_progress_us + r->resp_timeout_us;
  mg_tp_conn_want_write(c);
}

static void req_timer_cb(evutil_socket_t fd, short what, void *arg) {
  struct mg_req *r = arg;
  struct mg_conn *c = r->conn;
  int64_t idle_us = (int64_t)idle_s(conn_cfg(c)) * 1000000;
  switch (r->timer_mode) {
  case MG_TIMER_HEADERS:
    /* A header block that does not complete blocks the whole connection. */
    mg_info("conn %s: header timeout, closing", c->peer);
    conn_kill(c);
    return;
  case MG_TIMER_BODY: {
    /* One timer, two clocks: the upstream's response deadline (504) and body progress.
     * Only a stall the client causes counts: we wait for body bytes it has room to send
     * (nothing buffered), or it does not read what we have for it. A pipeline or upstream
     * that is slow is not the client's fault (the response deadline covers the upstream). */
    int64_t now = mg_mono_now_us();
    int64_t idle = now - r->last_progress_us;
    int64_t next_ms;
    bool waiting_resp = r->forwarded && !r->responded && r->resp_deadline_us;
    if (waiting_resp && now >= r->resp_deadline_us) {
      mg_tp_up_cancel(r);
      mg_tp_req_up_fail(r, 504, "upstream_timeout", "no response headers in time");
      return;
    }
    /* The client owes the rest of its request whenever nothing of it waits in reqbuf,
     * also after a local answer (401, 404...): a client that never ends such a stream
     * would otherwise hold it, and its connection, open forever. */
    bool client_owes = (!r->req_eof && r->reqbuf.len == 0) || r->respbuf.len > 0 ||
                       (r->local && r->local_off < r->local_len);
    if (client_owes && idle >= idle_us) {
      mg_info("conn %s stream %d: no body progress for %ds, reset", c->peer, r->stream_id,
              idle_s(conn_cfg(c)));
      if (r->up_kind != MG_UP_NONE)
        mg_tp_up_cancel(r);
      req_rst(r, NGHTTP2_CANCEL);
      return;
    }
    next_ms = (client_owes ? idle_us - idle : idle_us) / 1000 + 1;
    if (waiting_resp)
      next_ms = MG_MIN(next_ms, (r->resp_deadline_us - now) / 1000 + 1);
    req_timer(r, MG_TIMER_BODY, next_ms);
    return;
  }
  default:
    return;
  }
}

/* ---- nghttp2 server callbacks ---- */

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *frame, void *ud) {
  struct mg_conn *c = ud;
  struct mg_req *r;
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
    return 0;
  if (c->nstreams >= max_streams(conn_cfg(c))) {
    nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                              NGHTTP2_REFUSED_STREAM);
    return 0;
  }
  r = req_new(c, frame->hd.stream_id);
  if (!r) {
    nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                              NGHTTP2_INTERNAL_ERROR);
    return 0;
  }
  nghttp2_session_set_stream_user_data(s, frame->hd.stream_id, r);
  req_timer(r, MG_TIMER_HEADERS, MG_TP_HEADER_TIMEOUT_S * 1000);
  return 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *ud) {
  struct mg_conn *c = ud;
  struct mg_req *r;
  const char *n = (const char *)name;
  size_t limit = (size_t)max_header_bytes(conn_cfg(c));
  size_t sz = namelen + valuelen + 32;
  if (frame->hd.type != NGHTTP2_HEADERS)
    return 0;
  r = nghttp2_session_get_stream_user_data(s, frame->hd.stream_id);
  if (!r || r->too_big)
    return 0;
  /* Bound before allocating: the whole list (pseudo + regular + trailers) shares it. */
  if (r->hdrs.bytes + r->req_trailers.bytes + sz > limit) {
    r->too_big = true;
    return 0;
  }
  if (frame->headers.cat == NGHTTP2_HCAT_HEADERS) {
    if (mg_tp_hdrs_add(&r->req_trailers, &r->arena, name, namelen, value, valuelen) < 0)
      return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return 0;
  }
  if (frame->headers.cat != NGHTTP2_HCAT_REQUEST)
    return 0;
  if (namelen && n[0] == ':') {
    char *v = mg_tp_arena_strdup(&r->arena, value, valuelen);
    if (!v)
      return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    r->hdrs.bytes += sz;
    if (name_is(n, namelen, ":method"))
      r->info.method = v;
    else if (name_is(n, namelen, ":path")) {
      r->info.path = v;
      r->info.path_len = valuelen;
    } else if (name_is(n, namelen, ":authority"))
      r->info.authority = v;
    else if (name_is(n, namelen, ":scheme"))
      r->info.scheme = v;
    return 0;
  }
  if (mg_tp_hdrs_add(&r->hdrs, &r->arena, name, namelen, value, valuelen) < 0)
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  {
    const char *v = r->hdrs.v[r->hdrs.n - 1].value;
    if (name_is(n, namelen, "authorization")) {
      if (r->nauth++ == 0)
        r->info.authorization = v;
    } else if (name_is(n, namelen, "x-mesh-purpose")) {
      if (r->info.npurposes < 2)
        r->info.purposes[r->info.npurposes] = v;
      r->info.npurposes++;
    } else if (name_is(n, namelen, "host")) {
      if (!r->info.host)
        r->info.host = v;
    } else if (name_is(n, namelen, "content-type")) {
      if (!r->info.content_type)
        r->info.content_type = v;
    }
  }
  return 0;
}

static void req_dispatch(struct mg_req *r) {
  struct mg_conn *c = r->conn;
  static const char too_big[] = "{\"error\":\"headers_too_large\",\"detail\":\"request header "
                                "list exceeds the limit\"}\n";
  static const char two_auth[] = "{\"error\":\"bad_request\",\"detail\":\"more than one "
                                 "authorization field\"}\n";
  req_timer(r, MG_TIMER_BODY, (int64_t)idle_s(conn_cfg(c)) * 1000);
  if (r->too_big) {
    mg_req_respond(r, 431, "application/json", too_big, sizeof too_big - 1, NULL, 0);
    return;
  }
  if (r->nauth > 1) {
    mg_req_respond(r, 400, "application/json", two_auth, sizeof two_auth - 1, NULL, 0);
    return;
  }
  if (!r->info.method || !r->info.path) {
    /* CONNECT (no :path) is not proxied; the pipeline always gets a method and path. */
    static const char no_connect[] = "{\"error\":\"method_not_allowed\",\"detail\":"
                                     "\"CONNECT is not supported\"}\n";
    mg_req_respond(r, 405, "application/json", no_connect, sizeof no_connect - 1, NULL, 0);
    return;
  }
  r->dispatched = true;
  atomic_fetch_add_explicit(&c->w->srv->requests_total, 1, memory_order_relaxed);
  mg_pipeline_on_request(r);
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *frame, void *ud) {
  struct mg_conn *c = ud;
  struct mg_req *r;
  if (!c->got_frame) {
    /* Preface done: from now on the connection timer measures idleness. */
    struct timeval tv = {idle_s(conn_cfg(c)), 0};
    c->got_frame = true;
    evtimer_add(&c->timer, &tv);
  }
  switch (frame->hd.type) {
  case NGHTTP2_HEADERS:
    /* Only requests count as activity: PINGs or SETTINGS do not keep a connection open. */
    c->last_activity_us = mg_mono_now_us();
    r = nghttp2_session_get_stream_user_data(s, frame->hd.stream_id);
    if (!r)
      return 0;
    if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
      r->req_eof = true;
    if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
      r->headers_done = true;
      r->req_body = !r->req_eof;
      req_dispatch(r);
    } else if (r->too_big && !r->responded) {
      mg_req_respond(r, 431, NULL, NULL, 0, NULL, 0);
    } else if (r->req_eof) {
      body_ready(r);
    }
    return 0;
  case NGHTTP2_DATA:
    if (!(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
      return 0;
    r = nghttp2_session_get_stream_user_data(s, frame->hd.stream_id);
    if (r) {
      r->req_eof = true;
      body_ready(r);
    }
    return 0;
  default:
    return 0;
  }
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *data,
                         size_t len, void *ud) {
  struct mg_req *r = nghttp2_session_get_stream_user_data(s, sid);
  if (r)
    r->out.bytes_in += len;
  /* Nobody will read these bytes: give the window straight back. */
  if (!r || r->local || (r->forwarded && r->up_kind == MG_UP_NONE && !r->queued)) {
    nghttp2_session_consume(s, sid, len);
    if (r) {
      r->drained += len;
      r->last_progress_us = mg_mono_now_us();
      if (r->resp_sent && r->drained - len <= MG_TP_DRAIN_MAX && r->drained > MG_TP_DRAIN_MAX)
        nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, sid, NGHTTP2_NO_ERROR);
    }
    return 0;
  }
  if (mg_tp_ring_write(&r->reqbuf, data, len) < len) {
    /* More than the window we advertised: the peer broke flow control. */
    nghttp2_session_consume(s, sid, len);
    req_rst(r, NGHTTP2_FLOW_CONTROL_ERROR);
    return 0;
  }
  r->last_progress_us = mg_mono_now_us();
  body_ready(r);
  return 0;
}

static int on_stream_close(nghttp2_session *s, int32_t sid, uint32_t error_code, void *ud) {
  struct mg_req *r = nghttp2_session_get_stream_user_data(s, sid);
  if (r)
    req_finish(r, error_code);
  return 0;
}

static int on_frame_send(nghttp2_session *s, const nghttp2_frame *frame, void *ud) {
  struct mg_req *r;
  if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
      !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
    return 0;
  r = nghttp2_session_get_stream_user_data(s, frame->hd.stream_id);
  /* Response complete while the client is still sending. RFC 9113 §8.1 allows an
   * immediate RST_STREAM(NO_ERROR), but common clients (curl 7.x) then drop the response
   * they already have. So let a small rest drain (discarded, window given back) and only
   * reset once it exceeds MG_TP_DRAIN_MAX; a client that stalls meets the body timer. */
  if (r && !r->req_eof) {
    r->resp_sent = true;
    if (r->drained > MG_TP_DRAIN_MAX)
      nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_NO_ERROR);
  }
  return 0;
}

ssize_t mg_tp_read_length(nghttp2_session *s, uint8_t type, int32_t sid, int32_t sess_win,
                          int32_t stream_win, uint32_t max_frame, void *ud) {
  int64_t n = MG_MIN((int64_t)sess_win, (int64_t)stream_win);
  n = MG_MIN(n, (int64_t)max_frame);
  n = MG_MIN(n, (int64_t)MG_TP_MAX_FRAME);
  return (ssize_t)(n > 0 ? n : 1);
}

static nghttp2_session_callbacks *server_cbs;
static nghttp2_option *server_opt;
static pthread_once_t server_once = PTHREAD_ONCE_INIT;

static void server_init(void) {
  nghttp2_session_callbacks_new(&server_cbs);
  nghttp2_session_callbacks_set_on_begin_headers_callback(server_cbs, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(server_cbs, on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(server_cbs, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(server_cbs, on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(server_cbs, on_stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(server_cbs, on_frame_send);
  nghttp2_session_callbacks_set_send_data_callback(server_cbs, send_data_cb);
  nghttp2_session_callbacks_set_data_source_read_length_callback(server_cbs,
                                                                 mg_tp_read_length);
  nghttp2_option_new(&server_opt);
  nghttp2_option_set_no_auto_window_update(server_opt, 1);
  nghttp2_option_set_stream_reset_rate_limit(server_opt, 1000, 33);
  nghttp2_option_set_max_continuations(server_opt, 8);
  nghttp2_option_set_max_settings(server_opt, 32);
  nghttp2_option_set_max_outbound_ack(server_opt, 1000);
}

/* ---- connection I/O ---- */

static void conn_flush(struct mg_conn *c) {
  struct evbuffer *out;
  if (c->dead || !c->sess || c->lingering)
    return;
  out = bufferevent_get_output(c->bev);
  while (!c->dead && evbuffer_get_length(out) < MG_TP_OUT_HIGH) {
    const uint8_t *data;
    ssize_t n = nghttp2_session_mem_send(c->sess, &data);
    if (n < 0) {
      conn_kill(c);
      return;
    }
    if (n == 0)
      break;
    evbuffer_add(out, data, (size_t)n);
  }
  if (c->dead)
    return;
  if (!nghttp2_session_want_read(c->sess) && !nghttp2_session_want_write(c->sess) &&
      evbuffer_get_length(out) == 0)
    conn_linger(c);
}

static void conn_flush_ev(evutil_socket_t fd, short what, void *arg) {
  struct mg_conn *c = arg;
  c->flush_pending = false;
  if (c->dead) {
    mg_tp_conn_destroy(c);
    return;
  }
  conn_flush(c);
  if (c->dead && !c->flush_pending)
    mg_tp_conn_destroy(c);
}

/* Bytes from the client into the session; nonzero when the connection died. */
static int conn_feed(void *arg, const uint8_t *p, size_t n) {
  struct mg_conn *c = arg;
  ssize_t rv = nghttp2_session_mem_recv(c->sess, p, n);
  if (rv < 0) {
    mg_debug("conn %s: %s", c->peer, nghttp2_strerror((int)rv));
    conn_kill(c);
    return -1;
  }
  return c->dead ? -1 : 0;
}

static void conn_readcb(struct bufferevent *bev, void *arg) {
  struct mg_conn *c = arg;
  struct evbuffer *in = bufferevent_get_input(bev);
  struct evbuffer_iovec v[16];
  int nv;
  if (c->dead || !c->sess)
    return;
  if (c->lingering) {
    evbuffer_drain(in, evbuffer_get_length(in));
    return;
  }
  while ((nv = evbuffer_peek(in, -1, NULL, v, 16)) > 0) {
    size_t total = 0;
    for (int i = 0; i < nv && i < 16; i++) {
      if (conn_feed(c, v[i].iov_base, v[i].iov_len))
        return;
      total += v[i].iov_len;
    }
    evbuffer_drain(in, total);
  }
  /* TLS reads go through OpenSSL's records; only a plaintext socket is read directly */
  if (!c->ssl && mg_tp_read_more(bufferevent_getfd(bev), conn_feed, c))
    return;
  conn_flush(c);
}

static void conn_writecb(struct bufferevent *bev, void *arg) {
  struct mg_conn *c = arg;
  if (c->lingering)
    return;
  conn_flush(c);
}

static int session_start(struct mg_conn *c) {
  struct mg_config *cfg = conn_cfg(c);
  uint32_t win = (uint32_t)mg_tp_body_buffer(cfg);
  int32_t conn_win = (int32_t)MG_MIN((uint64_t)win * 4 < (1u << 20) ? (1u << 20)
                                                                     : (uint64_t)win * 4,
                                     (uint64_t)0x7fffffff);
  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, (uint32_t)max_streams(cfg)},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, (uint32_t)max_header_bytes(cfg)},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, win},
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
  };
  pthread_once(&server_once, server_init);
  if (nghttp2_session_server_new2(&c->sess, server_cbs, c, server_opt) != 0)
    return -ENOMEM;
  if (nghttp2_submit_settings(c->sess, NGHTTP2_FLAG_NONE, iv, MG_ARRAY_LEN(iv)) != 0 ||
      nghttp2_session_set_local_window_size(c->sess, NGHTTP2_FLAG_NONE, 0, conn_win) != 0)
    return MG_ERR_INTERNAL;
  c->ready = true;
  conn_flush(c);
  return 0;
}

static void conn_eventcb(struct bufferevent *bev, short events, void *arg) {
  struct mg_conn *c = arg;
  if (events & BEV_EVENT_CONNECTED) {
    char id[2049];
    if (!mg_tls_alpn_is_h2(c->ssl)) {
      mg_debug("conn %s: no h2 ALPN, closing", c->peer);
      conn_kill(c);
      return;
    }
    if (mg_tls_peer_spiffe(c->ssl, id, sizeof id) == 0)
      memcpy(c->spiffe, id, strlen(id) + 1);
    if (session_start(c) < 0)
      conn_kill(c);
    else if (evbuffer_get_length(bufferevent_get_input(bev)))
      conn_readcb(bev, c);
    return;
  }
  if (events & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))
    conn_kill(c);
}

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg) {
  struct mg_conn *c = arg;
  int isec = idle_s(conn_cfg(c));
  int64_t idle = mg_mono_now_us() - c->last_activity_us;
  struct timeval tv = {isec, 0};
  if (c->lingering) {
    conn_kill(c);
    return;
  }
  if (!c->got_frame) {
    mg_debug("conn %s: no preface in time, closing", c->peer);
    conn_kill(c);
    return;
  }
  if (c->nstreams == 0 && idle >= (int64_t)isec * 1000000) {
    nghttp2_session_terminate_session(c->sess, NGHTTP2_NO_ERROR);
    mg_tp_conn_want_write(c);
    return;
  }
  if (c->nstreams == 0)
    tv.tv_sec = (time_t)((int64_t)isec - idle / 1000000);
  if (tv.tv_sec <= 0)
    tv.tv_sec = 1;
  evtimer_add(&c->timer, &tv);
}

void mg_tp_conn_accept(struct mg_worker *w, evutil_socket_t fd, const struct sockaddr *sa,
                       int salen) {
  struct mg_conn *c = calloc(1, sizeof *c);
  struct timeval tv = {MG_TP_HEADER_TIMEOUT_S, 0};
  char ip[INET6_ADDRSTRLEN] = "?";
  if (!c) {
    evutil_closesocket(fd);
    return;
  }
  c->w = w;
  mg_config_ref(w->cfg);
  c->cfg = w->cfg;
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
    inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
    snprintf(c->peer, sizeof c->peer, "%s:%u", ip, ntohs(s4->sin_port));
  } else if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
    inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof ip);
    snprintf(c->peer, sizeof c->peer, "[%s]:%u", ip, ntohs(s6->sin6_port));
  } else {
    snprintf(c->peer, sizeof c->peer, "unix");
  }
  event_assign(&c->flush_ev, w->base, -1, 0, conn_flush_ev, c);
  evtimer_assign(&c->timer, w->base, conn_timer_cb, c);
  c->last_activity_us = mg_mono_now_us();
  mg_tp_worker_conn_add(w, c);
  if (w->ssl_ctx) {
    c->ssl = SSL_new(w->ssl_ctx);
    if (!c->ssl)
      goto fail;
    c->tls = true;
    c->bev = bufferevent_openssl_socket_new(w->base, fd, c->ssl, BUFFEREVENT_SSL_ACCEPTING,
                                            BEV_OPT_CLOSE_ON_FREE);
    if (!c->bev) {
      SSL_free(c->ssl);
      c->ssl = NULL;
      goto fail;
    }
    bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
  } else {
    c->bev = bufferevent_socket_new(w->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!c->bev)
      goto fail;
  }
  fd = -1; /* owned by the bufferevent now */
  bufferevent_setcb(c->bev, conn_readcb, conn_writecb, conn_eventcb, c);
  bufferevent_setwatermark(c->bev, EV_WRITE, MG_TP_OUT_LOW, 0);
  bufferevent_enable(c->bev, EV_READ | EV_WRITE);
  evtimer_add(&c->timer, &tv);
  if (!c->tls && session_start(c) < 0)
    goto fail;
  return;

fail:
  if (fd >= 0)
    evutil_closesocket(fd);
  conn_kill(c);
}

void mg_tp_conn_goaway(struct mg_conn *c) {
  if (c->dead || c->lingering)
    return;
  if (!c->sess || !c->got_frame) {
    conn_kill(c);
    return;
  }
  if (!c->goaway) {
    nghttp2_submit_goaway(c->sess, NGHTTP2_FLAG_NONE,
                          nghttp2_session_get_last_proc_stream_id(c->sess), NGHTTP2_NO_ERROR,
                          NULL, 0);
    c->goaway = true;
  }
  mg_tp_conn_want_write(c);
}

void mg_tp_conn_destroy(struct mg_conn *c) {
  struct mg_worker *w = c->w;
  c->dead = true;
  while (c->reqs)
    req_finish(c->reqs, NGHTTP2_CANCEL);
  event_del(&c->flush_ev);
  evtimer_del(&c->timer);
  if (c->sess)
    nghttp2_session_del(c->sess);
  if (c->bev)
    bufferevent_free(c->bev); /* frees the SSL and closes the socket */
  mg_tp_worker_conn_del(w, c);
  mg_config_unref(c->cfg);
  free(c);
  mg_tp_worker_check_stopped(w);
}
