/*
 * upstream.c — the upstream leg over h2c: a small per-worker pool of nghttp2 client
 * sessions to upstream.address ("host:port" or "unix:/path").
 *
 * Connections open lazily (the first request that finds no usable connection opens one,
 * up to upstream.connections) and are replaced when they fail. A request that finds no
 * ready connection waits in the pool queue; once connected it is submitted to the least
 * loaded session. Beyond the upstream's SETTINGS_MAX_CONCURRENT_STREAMS nghttp2 itself
 * holds new streams back, so that limit is respected without a second queue.
 *
 * Flow control mirrors the downstream: upstream response DATA is consumed (WINDOW_UPDATE)
 * only when conn.c has written it downstream; request DATA is read NO_COPY from the
 * request's ring and the downstream window opens as it goes out. The HTTP/1.1 leg lives
 * in upstream_h1.c and shares the pool object.
 *
 * Liveness: a connection that has received nothing for upstream.ping_interval_s gets a
 * PING; if still nothing (the ACK or any other frame) arrives within ping_timeout_s it is
 * dropped, its streams answered 502, and the next request opens a new one. A product that
 * vanished without a FIN or RST (a partition, a deleted pod) then costs seconds, not a
 * response timeout per request until TCP gives up.
 *
 * Upstream streams point at a small slot, not at the request: a request may be cancelled
 * while its HEADERS still wait in nghttp2's queue (no stream exists yet, so its user data
 * cannot be cleared). Cancelling empties the slot; the slot itself dies with the stream
 * (on_stream_close), with its unsent HEADERS (on_frame_not_send), or with the connection.
 */
#include "sidecar/transport_int.h"

#include <event2/dns.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

enum { UC_CONNECTING = 0, UC_READY, UC_DRAINING };

struct upslot {
  struct mg_req *r;             /* NULL once the request is gone */
  int32_t sid;
  struct upslot *prev, *next;
};

struct mg_upconn {
  struct mg_uppool *pool;
  struct mg_upconn *next;
  struct bufferevent *bev;
  nghttp2_session *sess;
  int state;
  bool dead, flush_pending;
  int64_t last_rx_us, ping_us;  /* last bytes received; the outstanding PING (0: none) */
  int nstreams;                 /* live slots */
  struct upslot *slots;
  struct mg_req *reqs;
  struct event flush_ev, timer;
};

struct mg_uppool {
  struct mg_worker *w;
  struct mg_upconn *conns;
  struct mg_req *qhead, *qtail;
  void *h1;                     /* upstream_h1.c state */
};

struct mg_config *mg_tp_pool_cfg(struct mg_uppool *p) { return p->w->cfg; }

void **mg_tp_pool_h1_slot(struct mg_uppool *p) { return &p->h1; }
struct mg_worker *mg_tp_pool_worker(struct mg_uppool *p) { return p->w; }

int mg_tp_connect(struct mg_worker *w, struct bufferevent *bev, const char *address, char *why,
                  size_t whylen) {
  struct sockaddr_storage ss;
  int sslen = 0;
  memset(&ss, 0, sizeof ss);
  if (strncmp(address, "unix:", 5) == 0) {
    struct sockaddr_un *su = (struct sockaddr_un *)&ss;
    size_t n = strlen(address + 5);
    if (n == 0 || n >= sizeof su->sun_path) {
      snprintf(why, whylen, "%s: bad unix socket path", address);
      return MG_ERR_INVALID;
    }
    su->sun_family = AF_UNIX;
    memcpy(su->sun_path, address + 5, n + 1);
    sslen = (int)(offsetof(struct sockaddr_un, sun_path) + n + 1);
  } else {
    char host[256], *end = NULL;
    const char *colon = strrchr(address, ':'), *h = address;
    size_t hl;
    if (!colon) {
      snprintf(why, whylen, "%s: no port", address);
      return MG_ERR_INVALID;
    }
    hl = (size_t)(colon - address);
    if (address[0] == '[' && hl >= 2 && address[hl - 1] == ']') {
      h++;
      hl -= 2;
    }
    long port = strtol(colon + 1, &end, 10);
    if (hl == 0 || hl >= sizeof host || !colon[1] || *end || port <= 0 || port > 65535) {
      snprintf(why, whylen, "%s: bad address", address);
      return MG_ERR_INVALID;
    }
    memcpy(host, h, hl);
    host[hl] = 0;
    sslen = (int)sizeof ss;
    if (evutil_parse_sockaddr_port(address, (struct sockaddr *)&ss, &sslen) != 0) {
      /* a name: asynchronous lookup on this worker's loop */
      if (!w->dns && !(w->dns = evdns_base_new(w->base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
                                                            EVDNS_BASE_DISABLE_WHEN_INACTIVE))) {
        snprintf(why, whylen, "%s: cannot start the DNS resolver", address);
        return MG_ERR_NOTFOUND;
      }
      if (bufferevent_socket_connect_hostname(bev, w->dns, AF_UNSPEC, host, (int)port) < 0) {
        snprintf(why, whylen, "%s: cannot resolve", address);
        return MG_ERR_NOTFOUND;
      }
      return 0;
    }
  }
  if (bufferevent_socket_connect(bev, (struct sockaddr *)&ss, sslen) < 0) {
    int e = errno;
    snprintf(why, whylen, "%s: %s", address, strerror(e ? e : ECONNREFUSED));
    return -(e ? e : ECONNREFUSED);
  }
  return 0;
}

/* The reason a connection attempt failed: the lookup's, else the socket's. */
const char *mg_tp_connect_error(struct bufferevent *bev) {
  int dns = bufferevent_socket_get_dns_error(bev);
  if (dns)
    return evutil_gai_strerror(dns);
  int e = EVUTIL_SOCKET_ERROR();
  return e ? evutil_socket_error_to_string(e) : "connection closed";
}

/* ---- helpers ---- */

static void uc_want_write(struct mg_upconn *uc) {
  if (!uc->flush_pending) {
    uc->flush_pending = true;
    event_active(&uc->flush_ev, EV_WRITE, 0);
  }
}

static void uc_attach(struct mg_upconn *uc, struct mg_req *r) {
  r->upc = uc;
  r->up_prev = NULL;
  r->up_next = uc->reqs;
  if (uc->reqs)
    uc->reqs->up_prev = r;
  uc->reqs = r;
}

static struct mg_req *slot_req(nghttp2_session *s, int32_t sid) {
  struct upslot *sl = nghttp2_session_get_stream_user_data(s, sid);
  return sl ? sl->r : NULL;
}

static void slot_free(struct mg_upconn *uc, struct upslot *sl) {
  if (sl->prev)
    sl->prev->next = sl->next;
  else
    uc->slots = sl->next;
  if (sl->next)
    sl->next->prev = sl->prev;
  if (sl->r)
    sl->r->up_slot = NULL;
  uc->nstreams--;
  free(sl);
}

static void uc_detach(struct mg_upconn *uc, struct mg_req *r) {
  if (r->up_slot) {
    ((struct upslot *)r->up_slot)->r = NULL;
    r->up_slot = NULL;
  }
  if (r->up_prev)
    r->up_prev->up_next = r->up_next;
  else
    uc->reqs = r->up_next;
  if (r->up_next)
    r->up_next->up_prev = r->up_prev;
  r->up_prev = r->up_next = NULL;
  r->upc = NULL;
  r->up_kind = MG_UP_NONE;
}

static void queue_push(struct mg_uppool *p, struct mg_req *r) {
  r->qnext = NULL;
  r->queued = true;
  if (p->qtail)
    p->qtail->qnext = r;
  else
    p->qhead = r;
  p->qtail = r;
}

static void queue_remove(struct mg_uppool *p, struct mg_req *r) {
  struct mg_req **pp = &p->qhead, *prev = NULL;
  while (*pp && *pp != r) {
    prev = *pp;
    pp = &(*pp)->qnext;
  }
  if (*pp) {
    *pp = r->qnext;
    if (p->qtail == r)
      p->qtail = prev;
  }
  r->queued = false;
  r->qnext = NULL;
}

static void uc_kill(struct mg_upconn *uc, const char *why);

/* ---- request body provider (NO_COPY from the request ring) ---- */

static ssize_t up_req_read(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t length,
                           uint32_t *flags, nghttp2_data_source *src, void *ud) {
  struct mg_req *r = ((struct upslot *)src->ptr)->r;
  const uint8_t *p;
  size_t avail;
  if (!r)
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  avail = mg_tp_ring_contig(&r->reqbuf, &p);
  if (avail == 0) {
    if (!r->req_eof) {
      r->up_deferred = true;
      return NGHTTP2_ERR_DEFERRED;
    }
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    r->req_up_done = true;
    if (r->req_trailers.n) {
      nghttp2_nv *nv = mg_tp_arena_alloc(&r->arena, r->req_trailers.n * sizeof *nv);
      size_t n = 0;
      if (!nv)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
      /* Trailers get the same stripping as headers: no identity smuggled at the end. */
      for (size_t i = 0; i < r->req_trailers.n; i++) {
        const struct mg_hdr *h = &r->req_trailers.v[i];
        if (mg_tp_strip_inbound(r->conn->cfg, h->name, h->namelen) ||
            (h->namelen == 2 && memcmp(h->name, "te", 2) == 0))
          continue;
        nv[n++] = (nghttp2_nv){(uint8_t *)h->name, (uint8_t *)h->value, h->namelen,
                               h->valuelen, NGHTTP2_NV_FLAG_NONE};
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

static int up_send_data(nghttp2_session *s, nghttp2_frame *frame, const uint8_t *framehd,
                        size_t length, nghttp2_data_source *src, void *ud) {
  struct mg_upconn *uc = ud;
  struct mg_req *r = ((struct upslot *)src->ptr)->r;
  struct evbuffer *out = bufferevent_get_output(uc->bev);
  const uint8_t *p;
  static const uint8_t zeros[256];
  if (!r || mg_tp_ring_contig(&r->reqbuf, &p) < length)
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  evbuffer_add(out, framehd, 9);
  if (frame->data.padlen > 0) {
    uint8_t pl = (uint8_t)(frame->data.padlen - 1);
    evbuffer_add(out, &pl, 1);
  }
  evbuffer_add(out, p, length);
  if (frame->data.padlen > 1)
    evbuffer_add(out, zeros, frame->data.padlen - 1);
  mg_tp_ring_drop(&r->reqbuf, length);
  r->body_sent += length;
  mg_tp_req_consumed_body(r, length);
  return 0;
}

/* ---- client session callbacks ---- */

static int up_on_header(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name,
                        size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                        void *ud) {
  struct mg_req *r;
  struct mg_hdrs *h;
  if (frame->hd.type != NGHTTP2_HEADERS)
    return 0;
  r = slot_req(s, frame->hd.stream_id);
  if (!r)
    return 0;
  h = r->resp_final ? &r->resp_trailers : &r->resp_hdrs;
  if (!r->resp_final && namelen == 7 && memcmp(name, ":status", 7) == 0) {
    r->resp_status = atoi((const char *)value);
    return 0;
  }
  if (h->bytes + namelen + valuelen + 32 > MG_TP_RESP_HDR_MAX)
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets the upstream stream -> 502 */
  if (mg_tp_hdrs_add(h, &r->arena, name, namelen, value, valuelen) < 0)
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  return 0;
}

static int up_on_frame_recv(nghttp2_session *s, const nghttp2_frame *frame, void *ud) {
  struct mg_upconn *uc = ud;
  struct mg_req *r;
  bool es = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
  switch (frame->hd.type) {
  case NGHTTP2_HEADERS:
    r = slot_req(s, frame->hd.stream_id);
    if (!r)
      return 0;
    if (!r->resp_final) {
      if (r->resp_status < 200) { /* interim (1xx): forget it, wait for the final one */
        r->resp_hdrs.n = 0;
        r->resp_hdrs.bytes = 0;
        return 0;
      }
      r->resp_final = true;
      mg_tp_req_up_headers(r, r->resp_status, &r->resp_hdrs, es);
    } else if (es) {
      mg_tp_req_up_end(r, &r->resp_trailers);
    }
    return 0;
  case NGHTTP2_DATA:
    if (!es)
      return 0;
    r = slot_req(s, frame->hd.stream_id);
    if (r)
      mg_tp_req_up_end(r, NULL);
    return 0;
  case NGHTTP2_GOAWAY:
    uc->state = UC_DRAINING;
    return 0;
  default:
    return 0;
  }
}

static int up_on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t sid,
                            const uint8_t *data, size_t len, void *ud) {
  struct mg_req *r = slot_req(s, sid);
  size_t taken;
  if (!r) {
    nghttp2_session_consume(s, sid, len);
    return 0;
  }
  taken = mg_tp_req_up_data(r, data, len);
  if (taken < len) {
    nghttp2_session_consume(s, sid, len - taken);
    nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, sid, NGHTTP2_FLOW_CONTROL_ERROR);
  }
  return 0;
}

static int up_on_stream_close(nghttp2_session *s, int32_t sid, uint32_t error_code,
                              void *ud) {
  struct mg_upconn *uc = ud;
  struct upslot *sl = nghttp2_session_get_stream_user_data(s, sid);
  struct mg_req *r = sl ? sl->r : NULL;
  if (sl)
    slot_free(uc, sl);
  if (r && error_code == NGHTTP2_REFUSED_STREAM && !r->resp_final && r->body_sent == 0 &&
      r->retries == 0) {
    /* REFUSED_STREAM (or beyond a GOAWAY's last stream id): the upstream guarantees it
     * did not process the request, so one more attempt elsewhere is safe. */
    uc_detach(uc, r);
    r->retries++;
    r->req_up_done = false;
    r->up_deferred = false;
    mg_tp_up_start(r);
    r = NULL;
  }
  if (r) {
    bool complete = r->resp_eof;
    /* The ring's bytes were never consumed; the stream is gone, release the connection. */
    if (r->respbuf.len)
      nghttp2_session_consume_connection(s, r->respbuf.len);
    uc_detach(uc, r);
    if (complete)
      mg_tp_req_drop_body(r);
    if (!complete) {
      char detail[96];
      snprintf(detail, sizeof detail, "upstream closed the stream (%s)",
               nghttp2_http2_strerror(error_code));
      mg_tp_req_up_fail(r, 502, "upstream_unavailable", detail);
    }
  }
  if (uc->state == UC_DRAINING && uc->nstreams <= 0)
    uc_want_write(uc); /* flush notices want_read == 0 and closes */
  return 0;
}

/* A request whose HEADERS never went out (cancelled while queued, or the session
 * refused it): its slot has no stream to die with. */
static int up_on_frame_not_send(nghttp2_session *s, const nghttp2_frame *frame, int err,
                                void *ud) {
  struct mg_upconn *uc = ud;
  struct upslot *sl;
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
    return 0;
  for (sl = uc->slots; sl && sl->sid != frame->hd.stream_id; sl = sl->next)
    ;
  if (!sl || nghttp2_session_get_stream_user_data(s, frame->hd.stream_id) == sl)
    return 0; /* the stream exists: on_stream_close will free it */
  if (sl->r) {
    struct mg_req *r = sl->r;
    uc_detach(uc, r);
    mg_tp_req_up_fail(r, 502, "upstream_unavailable", nghttp2_strerror(err));
  }
  slot_free(uc, sl);
  return 0;
}

static nghttp2_session_callbacks *client_cbs;
static nghttp2_option *client_opt;
static pthread_once_t client_once = PTHREAD_ONCE_INIT;

static void client_init(void) {
  nghttp2_session_callbacks_new(&client_cbs);
  nghttp2_session_callbacks_set_on_header_callback(client_cbs, up_on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(client_cbs, up_on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(client_cbs, up_on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(client_cbs, up_on_stream_close);
  nghttp2_session_callbacks_set_send_data_callback(client_cbs, up_send_data);
  nghttp2_session_callbacks_set_data_source_read_length_callback(client_cbs,
                                                                 mg_tp_read_length);
  nghttp2_session_callbacks_set_on_frame_not_send_callback(client_cbs, up_on_frame_not_send);
  nghttp2_option_new(&client_opt);
  nghttp2_option_set_no_auto_window_update(client_opt, 1);
  nghttp2_option_set_max_continuations(client_opt, 8);
  nghttp2_option_set_max_settings(client_opt, 32);
  nghttp2_option_set_max_outbound_ack(client_opt, 1000);
}

/* ---- connection I/O ---- */

static void uc_destroy(struct mg_upconn *uc) {
  struct mg_uppool *p = uc->pool;
  struct mg_upconn **pp = &p->conns;
  while (*pp && *pp != uc)
    pp = &(*pp)->next;
  if (*pp)
    *pp = uc->next;
  event_del(&uc->flush_ev);
  evtimer_del(&uc->timer);
  while (uc->slots)
    slot_free(uc, uc->slots);
  if (uc->sess)
    nghttp2_session_del(uc->sess);
  if (uc->bev)
    bufferevent_free(uc->bev);
  free(uc);
}

static void submit_on(struct mg_upconn *uc, struct mg_req *r);

static int live_conns(struct mg_uppool *p) {
  int n = 0;
  for (struct mg_upconn *uc = p->conns; uc; uc = uc->next)
    if (!uc->dead && uc->state != UC_DRAINING)
      n++;
  return n;
}

static struct mg_upconn *pick_ready(struct mg_uppool *p) {
  struct mg_upconn *best = NULL;
  for (struct mg_upconn *uc = p->conns; uc; uc = uc->next)
    if (!uc->dead && uc->state == UC_READY && (!best || uc->nstreams < best->nstreams))
      best = uc;
  return best;
}

static void drain_queue(struct mg_uppool *p) {
  struct mg_upconn *uc;
  while (p->qhead && (uc = pick_ready(p))) {
    struct mg_req *r = p->qhead;
    queue_remove(p, r);
    submit_on(uc, r);
  }
}

/* The connection failed: every request on it (and, when no connection is left, every
 * queued one) gets its 502 / reset now. */
static void uc_kill(struct mg_upconn *uc, const char *why) {
  struct mg_uppool *p = uc->pool;
  char detail[160];
  if (uc->dead)
    return;
  uc->dead = true;
  snprintf(detail, sizeof detail, "%s: %s", p->w->cfg->upstream.address, why);
  if (uc->bev)
    bufferevent_disable(uc->bev, EV_READ | EV_WRITE);
  while (uc->reqs) {
    struct mg_req *r = uc->reqs;
    uc_detach(uc, r);
    if (!r->resp_eof)
      mg_tp_req_up_fail(r, 502, "upstream_unavailable", detail);
    else
      mg_tp_req_drop_body(r); /* answered, the upload's rest has no reader any more */
  }
  if (live_conns(p) == 0) {
    while (p->qhead) {
      struct mg_req *r = p->qhead;
      queue_remove(p, r);
      r->up_kind = MG_UP_NONE;
      mg_tp_req_up_fail(r, 502, "upstream_unavailable", detail);
    }
  }
  uc_want_write(uc);
}

static void uc_flush(struct mg_upconn *uc) {
  struct evbuffer *out;
  if (uc->dead || !uc->sess)
    return;
  out = bufferevent_get_output(uc->bev);
  while (!uc->dead && evbuffer_get_length(out) < MG_TP_OUT_HIGH) {
    const uint8_t *data;
    ssize_t n = nghttp2_session_mem_send(uc->sess, &data);
    if (n < 0) {
      uc_kill(uc, nghttp2_strerror((int)n));
      return;
    }
    if (n == 0)
      break;
    evbuffer_add(out, data, (size_t)n);
  }
  if (!uc->dead && !nghttp2_session_want_read(uc->sess) &&
      !nghttp2_session_want_write(uc->sess) && evbuffer_get_length(out) == 0)
    uc_kill(uc, "session closed");
}

static void uc_flush_ev(evutil_socket_t fd, short what, void *arg) {
  struct mg_upconn *uc = arg;
  uc->flush_pending = false;
  if (!uc->dead)
    uc_flush(uc);
  if (uc->dead) {
    uc_destroy(uc);
    return;
  }
}

/* Bytes from the product into the session; nonzero when the connection died. */
static int uc_feed(void *arg, const uint8_t *p, size_t n) {
  struct mg_upconn *uc = arg;
  ssize_t rv = nghttp2_session_mem_recv(uc->sess, p, n);
  if (rv < 0) {
    uc_kill(uc, nghttp2_strerror((int)rv));
    return -1;
  }
  return uc->dead ? -1 : 0;
}

static void uc_readcb(struct bufferevent *bev, void *arg) {
  struct mg_upconn *uc = arg;
  struct evbuffer *in = bufferevent_get_input(bev);
  struct evbuffer_iovec v[16];
  int nv;
  if (uc->dead || !uc->sess)
    return;
  uc->last_rx_us = mg_mono_now_us();
  uc->ping_us = 0;
  while ((nv = evbuffer_peek(in, -1, NULL, v, 16)) > 0) {
    size_t total = 0;
    for (int i = 0; i < nv && i < 16; i++) {
      if (uc_feed(uc, v[i].iov_base, v[i].iov_len))
        return;
      total += v[i].iov_len;
    }
    evbuffer_drain(in, total);
  }
  if (mg_tp_read_more(bufferevent_getfd(bev), uc_feed, uc))
    return;
  drain_queue(uc->pool);
  uc_flush(uc);
}

static void uc_writecb(struct bufferevent *bev, void *arg) { uc_flush(arg); }

/* upstream.ping_interval_s / ping_timeout_s in µs (a config built in code may leave 0) */
static int64_t ping_interval_us(const struct mg_config *cfg) {
  return (int64_t)(cfg->upstream.ping_interval_s > 0 ? cfg->upstream.ping_interval_s : 15) * 1000000;
}
static int64_t ping_timeout_us(const struct mg_config *cfg) {
  return (int64_t)(cfg->upstream.ping_timeout_s > 0 ? cfg->upstream.ping_timeout_s : 5) * 1000000;
}

static void uc_connected(struct mg_upconn *uc) {
  struct mg_config *cfg = uc->pool->w->cfg;
  uint32_t win = (uint32_t)mg_tp_body_buffer(cfg);
  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, win},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, MG_TP_RESP_HDR_MAX},
  };
  int one = 1;
  evutil_socket_t fd = bufferevent_getfd(uc->bev);
  struct timeval tv = {(time_t)(ping_interval_us(cfg) / 1000000), 0};
  evtimer_del(&uc->timer);
  uc->last_rx_us = mg_mono_now_us();
  evtimer_add(&uc->timer, &tv); /* liveness from now on */
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* fails harmlessly on unix */
  pthread_once(&client_once, client_init);
  if (nghttp2_session_client_new2(&uc->sess, client_cbs, uc, client_opt) != 0) {
    uc_kill(uc, "out of memory");
    return;
  }
  /* Large connection window: per-stream windows bound memory; a few stalled downstream
   * clients must not starve every other stream sharing this connection. */
  if (nghttp2_submit_settings(uc->sess, NGHTTP2_FLAG_NONE, iv, MG_ARRAY_LEN(iv)) != 0 ||
      nghttp2_session_set_local_window_size(uc->sess, NGHTTP2_FLAG_NONE, 0, 64 << 20) != 0) {
    uc_kill(uc, "session setup failed");
    return;
  }
  uc->state = UC_READY;
  drain_queue(uc->pool);
  uc_flush(uc);
}

static void uc_eventcb(struct bufferevent *bev, short events, void *arg) {
  struct mg_upconn *uc = arg;
  if (events & BEV_EVENT_CONNECTED) {
    uc_connected(uc);
    return;
  }
  if (events & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
    uc_kill(uc, (events & BEV_EVENT_ERROR) ? mg_tp_connect_error(bev) : "connection closed");
}

/* Connect timeout, then liveness (see the header). */
static void uc_timer_cb(evutil_socket_t fd, short what, void *arg) {
  struct mg_upconn *uc = arg;
  struct mg_config *cfg = uc->pool->w->cfg;
  (void)fd;
  (void)what;
  if (uc->dead)
    return;
  if (uc->state == UC_CONNECTING || !uc->sess) {
    uc_kill(uc, "connect timeout");
    return;
  }
  int64_t now = mg_mono_now_us(), iv = ping_interval_us(cfg), to = ping_timeout_us(cfg), next;
  if (uc->ping_us) {
    if (now - uc->ping_us >= to) {
      char why[64];
      snprintf(why, sizeof why, "no answer to a PING within %d s", (int)(to / 1000000));
      uc_kill(uc, why);
      return;
    }
    next = uc->ping_us + to;
  } else if (now - uc->last_rx_us >= iv) {
    if (nghttp2_submit_ping(uc->sess, NGHTTP2_FLAG_NONE, NULL) != 0) {
      uc_kill(uc, "out of memory");
      return;
    }
    uc->ping_us = now;
    uc_flush(uc);
    if (uc->dead)
      return;
    next = now + to;
  } else {
    next = uc->last_rx_us + iv;
  }
  int64_t d = next > now ? next - now : 1000;
  struct timeval tv = {(time_t)(d / 1000000), (suseconds_t)(d % 1000000)};
  evtimer_add(&uc->timer, &tv);
}

static struct mg_upconn *uc_open(struct mg_uppool *p, char *why, size_t whylen) {
  struct mg_config *cfg = p->w->cfg;
  int ms = cfg->upstream.connect_timeout_ms > 0 ? cfg->upstream.connect_timeout_ms : 2000;
  struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
  struct mg_upconn *uc;
  uc = calloc(1, sizeof *uc);
  if (!uc) {
    snprintf(why, whylen, "out of memory");
    return NULL;
  }
  uc->pool = p;
  event_assign(&uc->flush_ev, p->w->base, -1, 0, uc_flush_ev, uc);
  evtimer_assign(&uc->timer, p->w->base, uc_timer_cb, uc);
  uc->bev = bufferevent_socket_new(p->w->base, -1, BEV_OPT_CLOSE_ON_FREE);
  if (!uc->bev) {
    free(uc);
    snprintf(why, whylen, "out of memory");
    return NULL;
  }
  bufferevent_setcb(uc->bev, uc_readcb, uc_writecb, uc_eventcb, uc);
  bufferevent_setwatermark(uc->bev, EV_WRITE, MG_TP_OUT_LOW, 0);
  uc->next = p->conns;
  p->conns = uc;
  if (mg_tp_connect(p->w, uc->bev, cfg->upstream.address, why, whylen) < 0) {
    uc->dead = true;
    uc_want_write(uc); /* destroyed on the next loop turn */
    return NULL;
  }
  bufferevent_enable(uc->bev, EV_READ | EV_WRITE);
  evtimer_add(&uc->timer, &tv);
  return uc;
}

static void submit_on(struct mg_upconn *uc, struct mg_req *r) {
  struct upslot *sl = calloc(1, sizeof *sl);
  nghttp2_data_provider prd = {.source.ptr = sl, .read_callback = up_req_read};
  int32_t sid = sl ? nghttp2_submit_request(uc->sess, NULL, r->fwd_nv, r->fwd_nnv,
                                            r->req_body ? &prd : NULL, sl)
                   : NGHTTP2_ERR_NOMEM;
  if (sid == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE && uc->state != UC_DRAINING) {
    /* 2^30 requests on this connection used up its stream ids: it takes no more, ends
     * what it carries and closes; the request goes to another connection */
    free(sl);
    uc->state = UC_DRAINING;
    nghttp2_submit_goaway(uc->sess, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, NULL, 0);
    uc_want_write(uc);
    mg_tp_up_start(r);
    return;
  }
  if (sid < 0) {
    free(sl);
    r->up_kind = MG_UP_NONE;
    mg_tp_req_up_fail(r, 502, "upstream_unavailable", nghttp2_strerror(sid));
    return;
  }
  sl->r = r;
  sl->sid = sid;
  sl->next = uc->slots;
  if (uc->slots)
    uc->slots->prev = sl;
  uc->slots = sl;
  r->up_slot = sl;
  if (!r->req_body)
    r->req_up_done = true;
  r->up_sid = sid;
  r->out.forwarded = true;
  uc->nstreams++;
  uc_attach(uc, r);
  uc_want_write(uc);
}

void mg_tp_up_start(struct mg_req *r) {
  struct mg_uppool *p = r->conn->w->pool;
  struct mg_config *cfg = p->w->cfg;
  struct mg_upconn *uc;
  int want = cfg->upstream.connections > 0 ? cfg->upstream.connections : 2;
  char why[160];

  if (cfg->upstream.protocol == MG_UPSTREAM_HTTP1) {
    r->up_kind = MG_UP_H1;
    mg_tp_h1_start(p, r);
    return;
  }
  r->up_kind = MG_UP_H2;
  r->body_sent = 0;
  uc = pick_ready(p);
  /* Open another connection while under the pool size and the best one is busy. */
  if ((!uc || uc->nstreams > 0) && live_conns(p) < want) {
    if (!uc_open(p, why, sizeof why) && !uc && live_conns(p) == 0) {
      r->up_kind = MG_UP_NONE;
      mg_tp_req_up_fail(r, 502, "upstream_unavailable", why);
      return;
    }
  }
  if (uc) {
    submit_on(uc, r);
    return;
  }
  queue_push(p, r);
}

void mg_tp_up_cancel(struct mg_req *r) {
  struct mg_uppool *p = r->conn->w->pool;
  if (r->queued)
    queue_remove(p, r);
  if (r->up_kind == MG_UP_H1) {
    mg_tp_h1_cancel(r);
  } else if (r->upc) {
    struct mg_upconn *uc = r->upc;
    if (uc->sess && !uc->dead) {
      if (r->respbuf.len)
        nghttp2_session_consume_connection(uc->sess, r->respbuf.len);
      nghttp2_submit_rst_stream(uc->sess, NGHTTP2_FLAG_NONE, r->up_sid, NGHTTP2_CANCEL);
      uc_want_write(uc);
    }
    uc_detach(uc, r);
  }
  r->up_kind = MG_UP_NONE;
}

void mg_tp_up_body_ready(struct mg_req *r) {
  struct mg_upconn *uc = r->upc;
  if (!uc || uc->dead || !r->up_deferred)
    return;
  r->up_deferred = false;
  nghttp2_session_resume_data(uc->sess, r->up_sid);
  uc_want_write(uc);
}

void mg_tp_up_resp_consumed(struct mg_req *r, size_t n) {
  if (r->up_kind == MG_UP_H1) {
    mg_tp_h1_resp_consumed(r);
    return;
  }
  if (r->upc && !r->upc->dead) {
    nghttp2_session_consume(r->upc->sess, r->up_sid, n);
    uc_want_write(r->upc);
  }
}

void mg_tp_pool_retire(struct mg_uppool *p) {
  /* Queued requests were sent nowhere yet: they go to the new upstream, not to a 502 from
   * killing the connections still opening to the old one. */
  struct mg_req *q = NULL, **qt = &q;
  while (p->qhead) {
    struct mg_req *r = p->qhead;
    queue_remove(p, r);
    *qt = r;
    qt = &r->qnext;
  }
  for (struct mg_upconn *uc = p->conns; uc; uc = uc->next) {
    if (uc->dead)
      continue;
    if (!uc->sess) { /* still connecting to the old address */
      uc_kill(uc, "upstream changed by reload");
      continue;
    }
    if (uc->state != UC_DRAINING) {
      uc->state = UC_DRAINING;
      /* A client's GOAWAY: no new streams; the session ends when its streams do. */
      nghttp2_submit_goaway(uc->sess, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, NULL, 0);
      uc_want_write(uc);
    }
  }
  mg_tp_h1_pool_retire(p);
  while (q) {
    struct mg_req *r = q;
    q = r->qnext;
    r->qnext = NULL;
    r->up_kind = MG_UP_NONE;
    mg_tp_up_start(r);
  }
}

int mg_tp_pool_new(struct mg_worker *w, struct mg_uppool **out) {
  struct mg_uppool *p = calloc(1, sizeof *p);
  if (!p)
    return -ENOMEM;
  p->w = w;
  *out = p;
  return 0;
}

void mg_tp_pool_free(struct mg_uppool *p) {
  while (p->conns) {
    struct mg_upconn *uc = p->conns;
    while (uc->reqs)
      uc_detach(uc, uc->reqs);
    uc_destroy(uc);
  }
  mg_tp_h1_pool_free(p);
  free(p);
}
