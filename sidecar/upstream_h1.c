/*
 * upstream_h1.c — the upstream leg over HTTP/1.1 (upstream.protocol "http1").
 *
 * A per-worker keep-alive pool: one request at a time per connection, a connection goes
 * back to the idle list only after a fully framed response (and a fully sent request)
 * with keep-alive semantics and no stray bytes behind it. Requests beyond the pool bound
 * wait in a queue.
 *
 * This is the h2 -> h1 smuggling boundary, so serialisation re-checks what nghttp2 already
 * validated: no CR, LF or NUL anywhere, no whitespace or ':' in names, no control bytes or
 * spaces in the method and path; framing is ours alone (content-length when the client
 * gave one, which nghttp2 holds the DATA to, else chunked), and transfer-encoding,
 * connection, te, upgrade, keep-alive, proxy-connection and client host fields are never
 * copied. Responses are parsed with http_parser; anything it rejects, a 101, both
 * content-length and transfer-encoding, or invalid field bytes -> 502 (or RST once
 * headers went downstream). The parser is fed only as many bytes as the response ring
 * can take, so a slow client stalls the upstream socket (read watermark) instead of
 * growing memory.
 */
#include "sidecar/transport_int.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <http_parser.h>

#define H1_MAX_CONNS 256
#define H1_READ_HIGH (256u * 1024)


struct mg_h1conn;

struct mg_h1pool {
  struct mg_uppool *pool;
  struct mg_h1conn *idle;          /* LIFO of reusable connections */
  struct mg_h1conn *all;
  int nconns;
  struct mg_req *qhead, *qtail;
};

struct mg_h1conn {
  struct mg_h1pool *hp;
  struct mg_h1conn *next_idle, *next_all;
  struct bufferevent *bev;
  http_parser parser;
  struct mg_req *r;
  bool connected, dead, idle, pending_ev;
  bool chunked_req, msg_complete, interim, in_value, too_big, bad;
  bool retired;                 /* config reload changed the upstream: do not reuse */
  bool got_bytes;               /* any response byte for the current request */
  bool eof;                     /* the upstream closed; input still holds unparsed bytes */
  int nreqs;                    /* requests sent on this connection */
  struct mg_buf field, value;   /* header being parsed */
  struct event ev, timer;
};

static struct mg_h1pool *hpool(struct mg_uppool *p) {
  void **slot = mg_tp_pool_h1_slot(p);
  if (!*slot) {
    struct mg_h1pool *hp = calloc(1, sizeof *hp);
    if (!hp)
      return NULL;
    hp->pool = p;
    *slot = hp;
  }
  return *slot;
}

static void hc_schedule(struct mg_h1conn *hc) {
  if (!hc->pending_ev) {
    hc->pending_ev = true;
    event_active(&hc->ev, EV_READ, 0);
  }
}

static void hc_kill(struct mg_h1conn *hc) {
  if (hc->dead)
    return;
  hc->dead = true;
  if (hc->bev)
    bufferevent_disable(hc->bev, EV_READ | EV_WRITE);
  hc_schedule(hc);
}

static void hc_destroy(struct mg_h1conn *hc) {
  struct mg_h1pool *hp = hc->hp;
  struct mg_h1conn **pp;
  for (pp = &hp->idle; *pp; pp = &(*pp)->next_idle)
    if (*pp == hc) {
      *pp = hc->next_idle;
      break;
    }
  for (pp = &hp->all; *pp; pp = &(*pp)->next_all)
    if (*pp == hc) {
      *pp = hc->next_all;
      break;
    }
  hp->nconns--;
  event_del(&hc->ev);
  evtimer_del(&hc->timer);
  if (hc->bev)
    bufferevent_free(hc->bev);
  mg_buf_clear(&hc->field);
  mg_buf_clear(&hc->value);
  free(hc);
}

/* Detaches the request; `why` non-NULL reports a failure downstream. */
static void hc_release(struct mg_h1conn *hc, int status, const char *error, const char *why) {
  struct mg_req *r = hc->r;
  if (!r)
    return;
  hc->r = NULL;
  r->h1 = NULL;
  r->up_kind = MG_UP_NONE;
  if (why)
    mg_tp_req_up_fail(r, status, error, why);
  else
    mg_tp_req_drop_body(r); /* an early response: the product reads no more of the body */
}

/* ---- request serialisation ---- */

static bool body_ignored_by_some(const uint8_t *m, size_t l);

static bool tchar(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool valid_name(const uint8_t *n, size_t l) {
  if (!l)
    return false;
  for (size_t i = 0; i < l; i++)
    if (!n[i] || !tchar(n[i]))
      return false;
  return true;
}

static bool valid_value(const uint8_t *v, size_t l) {
  for (size_t i = 0; i < l; i++)
    if (v[i] == '\r' || v[i] == '\n' || v[i] == 0)
      return false;
  return true;
}

static bool valid_target(const uint8_t *v, size_t l) {
  if (!l)
    return false;
  for (size_t i = 0; i < l; i++)
    if (v[i] <= 0x20 || v[i] == 0x7f)
      return false;
  return true;
}

static bool nv_is(const nghttp2_nv *nv, const char *lit) {
  size_t l = strlen(lit);
  return nv->namelen == l && strncasecmp((const char *)nv->name, lit, l) == 0;
}

static void hc_pump(struct mg_h1conn *hc) {
  struct mg_req *r = hc->r;
  struct evbuffer *out;
  if (!r || hc->dead || r->req_up_done)
    return;
  out = bufferevent_get_output(hc->bev);
  while (evbuffer_get_length(out) < MG_TP_OUT_HIGH) {
    const uint8_t *p;
    size_t n = mg_tp_ring_contig(&r->reqbuf, &p);
    if (!n)
      break;
    if (hc->chunked_req)
      evbuffer_add_printf(out, "%zx\r\n", n);
    evbuffer_add(out, p, n);
    if (hc->chunked_req)
      evbuffer_add(out, "\r\n", 2);
    mg_tp_ring_drop(&r->reqbuf, n);
    r->body_sent += n;
    mg_tp_req_consumed_body(r, n);
  }
  if (r->reqbuf.len == 0 && r->req_eof) {
    if (hc->chunked_req)
      evbuffer_add(out, "0\r\n\r\n", 5); /* request trailers are not sent over h1 */
    r->req_up_done = true;
  }
}

static void hc_send(struct mg_h1conn *hc, struct mg_req *r) {
  struct evbuffer *out = bufferevent_get_output(hc->bev);
  const nghttp2_nv *nv = r->fwd_nv;
  const char *clen = NULL;
  size_t clen_len = 0;
  /* fwd_nv: [0] :method [1] :scheme [2] :authority [3] :path, then fields. */
  if (!valid_name(nv[0].value, nv[0].valuelen) || !valid_target(nv[3].value, nv[3].valuelen) ||
      !valid_value(nv[2].value, nv[2].valuelen) || !valid_target(nv[2].value, nv[2].valuelen)) {
    hc->r = r; /* so release detaches it */
    r->h1 = hc;
    hc_release(hc, 400, "bad_request", "request cannot be expressed in HTTP/1.1");
    hc_kill(hc);
    return;
  }
  for (size_t i = 4; i < r->fwd_nnv; i++)
    if (!valid_name(nv[i].name, nv[i].namelen) || !valid_value(nv[i].value, nv[i].valuelen)) {
      hc->r = r;
      r->h1 = hc;
      hc_release(hc, 400, "bad_request", "request field cannot be expressed in HTTP/1.1");
      hc_kill(hc);
      return;
    }
  hc->r = r;
  r->h1 = hc;
  hc->nreqs++;
  hc->msg_complete = hc->interim = hc->in_value = hc->too_big = hc->bad = false;
  hc->got_bytes = false;
  mg_buf_reset(&hc->field);
  mg_buf_reset(&hc->value);
  http_parser_init(&hc->parser, HTTP_RESPONSE);
  hc->parser.data = hc;
  evbuffer_add(out, nv[0].value, nv[0].valuelen);
  evbuffer_add(out, " ", 1);
  evbuffer_add(out, nv[3].value, nv[3].valuelen);
  evbuffer_add(out, " HTTP/1.1\r\nhost: ", 17);
  evbuffer_add(out, nv[2].value, nv[2].valuelen);
  evbuffer_add(out, "\r\n", 2);
  for (size_t i = 4; i < r->fwd_nnv; i++) {
    if (nv_is(&nv[i], "content-length")) {
      if (!clen) {
        clen = (const char *)nv[i].value;
        clen_len = nv[i].valuelen;
      }
      continue;
    }
    if (nv_is(&nv[i], "transfer-encoding") || nv_is(&nv[i], "connection") ||
        nv_is(&nv[i], "te") || nv_is(&nv[i], "upgrade") || nv_is(&nv[i], "keep-alive") ||
        nv_is(&nv[i], "proxy-connection") || nv_is(&nv[i], "host"))
      continue;
    evbuffer_add(out, nv[i].name, nv[i].namelen);
    evbuffer_add(out, ": ", 2);
    evbuffer_add(out, nv[i].value, nv[i].valuelen);
    evbuffer_add(out, "\r\n", 2);
  }
  hc->chunked_req = false;
  if (r->req_body && body_ignored_by_some(nv[0].value, nv[0].valuelen)) {
    /* A GET (HEAD, OPTIONS, DELETE, TRACE) with a body: a product that ignores its framing
     * would read the body as a second request, one nobody authorised or recorded ("CL.0"
     * desync). The body is framed as usual, and the connection dies with this exchange,
     * so no later request can follow it on the wire. */
    evbuffer_add(out, "connection: close\r\n", 19);
    hc->retired = true;
  }
  if (r->req_body) {
    if (clen) {
      evbuffer_add(out, "content-length: ", 16);
      evbuffer_add(out, clen, clen_len);
      evbuffer_add(out, "\r\n", 2);
    } else {
      hc->chunked_req = true;
      evbuffer_add(out, "transfer-encoding: chunked\r\n", 28);
    }
  } else if ((nv[0].valuelen == 4 && memcmp(nv[0].value, "POST", 4) == 0) ||
             (nv[0].valuelen == 3 && memcmp(nv[0].value, "PUT", 3) == 0)) {
    evbuffer_add(out, "content-length: 0\r\n", 19);
  }
  evbuffer_add(out, "\r\n", 2);
  r->out.forwarded = true;
  if (!r->req_body)
    r->req_up_done = true;
  hc_pump(hc);
}

static bool body_ignored_by_some(const uint8_t *m, size_t l) {
  static const char *const ms[] = {"GET", "HEAD", "OPTIONS", "DELETE", "TRACE"};
  for (size_t i = 0; i < MG_ARRAY_LEN(ms); i++)
    if (strlen(ms[i]) == l && memcmp(ms[i], m, l) == 0)
      return true;
  return false;
}

/* ---- response parsing ---- */

static bool drop_resp_field(const char *n, size_t l) {
  static const char *const hop[] = {"connection", "keep-alive", "proxy-connection",
                                    "transfer-encoding", "upgrade", "te", "trailer"};
  for (size_t i = 0; i < MG_ARRAY_LEN(hop); i++)
    if (strlen(hop[i]) == l && memcmp(hop[i], n, l) == 0)
      return true;
  return false;
}

static int flush_field(struct mg_h1conn *hc) {
  struct mg_req *r = hc->r;
  struct mg_hdrs *h;
  char *n = hc->field.data;
  size_t nl = hc->field.len, vl = hc->value.len;
  const char *v = hc->value.data ? hc->value.data : "";
  if (!nl)
    return 0;
  for (size_t i = 0; i < nl; i++)
    if (n[i] >= 'A' && n[i] <= 'Z')
      n[i] = (char)(n[i] - 'A' + 'a');
  /* trim optional whitespace around the value */
  while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
    vl--;
  while (vl && (v[0] == ' ' || v[0] == '\t')) {
    v++;
    vl--;
  }
  if (!nghttp2_check_header_name((const uint8_t *)n, nl) ||
      !nghttp2_check_header_value((const uint8_t *)v, vl)) {
    hc->bad = true;
    return -1;
  }
  if (!drop_resp_field(n, nl) && r) {
    h = r->resp_final ? &r->resp_trailers : &r->resp_hdrs;
    if (h->bytes + nl + vl + 32 > MG_TP_RESP_HDR_MAX) {
      hc->too_big = true;
      return -1;
    }
    if (mg_tp_hdrs_add(h, &r->arena, n, nl, v, vl) < 0)
      return -1;
  }
  mg_buf_reset(&hc->field);
  mg_buf_reset(&hc->value);
  return 0;
}

static int p_on_field(http_parser *p, const char *at, size_t len) {
  struct mg_h1conn *hc = p->data;
  if (hc->in_value) {
    if (flush_field(hc) < 0)
      return -1;
    hc->in_value = false;
  }
  if (hc->field.len + len > MG_TP_RESP_HDR_MAX)
    return -1;
  return mg_buf_append(&hc->field, at, len) < 0 ? -1 : 0;
}

static int p_on_value(http_parser *p, const char *at, size_t len) {
  struct mg_h1conn *hc = p->data;
  hc->in_value = true;
  if (hc->value.len + len > MG_TP_RESP_HDR_MAX)
    return -1;
  return mg_buf_append(&hc->value, at, len) < 0 ? -1 : 0;
}

static int p_on_headers_complete(http_parser *p) {
  struct mg_h1conn *hc = p->data;
  struct mg_req *r = hc->r;
  bool head;
  if (hc->in_value && flush_field(hc) < 0)
    return -1;
  hc->in_value = false;
  if (!r)
    return -1;
  if (p->status_code == 101)
    return -1; /* we never asked to upgrade */
  if (p->status_code < 200) {
    hc->interim = true;
    r->resp_hdrs.n = 0;
    r->resp_hdrs.bytes = 0;
    return 0;
  }
  if ((p->flags & F_CHUNKED) && p->content_length != ULLONG_MAX && p->content_length != 0)
    return -1; /* both framings: refuse (smuggling) */
  head = r->info.method && strcmp(r->info.method, "HEAD") == 0;
  head |= p->status_code == 204 || p->status_code == 304;
  r->resp_final = true;
  r->resp_status = p->status_code;
  /* No body may follow (HEAD, 204, 304; RFC 9112 §6.3): end the downstream stream with the
   * headers, and tell the parser, so a 304's Content-Length is not waited for. */
  mg_tp_req_up_headers(r, p->status_code, &r->resp_hdrs, head);
  return head ? 1 : 0;
}

static int p_on_body(http_parser *p, const char *at, size_t len) {
  struct mg_h1conn *hc = p->data;
  if (!hc->r)
    return -1;
  /* We never feed more than the ring can take, so this takes everything. */
  if (mg_tp_req_up_data(hc->r, (const uint8_t *)at, len) < len)
    return -1;
  return 0;
}

static int p_on_message_complete(http_parser *p) {
  struct mg_h1conn *hc = p->data;
  if (hc->in_value && flush_field(hc) < 0)
    return -1;
  hc->in_value = false;
  if (hc->interim) {
    hc->interim = false;
    return 0;
  }
  hc->msg_complete = true;
  if (hc->r)
    mg_tp_req_up_end(hc->r, &hc->r->resp_trailers);
  http_parser_pause(p, 1);
  return 0;
}

static const http_parser_settings psettings = {
    .on_header_field = p_on_field,
    .on_header_value = p_on_value,
    .on_headers_complete = p_on_headers_complete,
    .on_body = p_on_body,
    .on_message_complete = p_on_message_complete,
};

static void hc_start_next(struct mg_h1pool *hp);
static void h1_assign(struct mg_h1pool *hp, struct mg_req *r);

/* Response done: keep the connection if it is clean, else close it. */
static void hc_complete(struct mg_h1conn *hc) {
  struct mg_h1pool *hp = hc->hp;
  struct mg_req *r = hc->r;
  bool reuse = !hc->retired && !hc->eof && http_should_keep_alive(&hc->parser) && r &&
               r->req_up_done && evbuffer_get_length(bufferevent_get_input(hc->bev)) == 0;
  hc_release(hc, 0, NULL, NULL);
  if (!reuse) {
    hc_kill(hc);
  } else {
    hc->idle = true;
    hc->next_idle = hp->idle;
    hp->idle = hc;
  }
  hc_start_next(hp);
}

static void hc_fail(struct mg_h1conn *hc, const char *why) {
  struct mg_h1pool *hp = hc->hp;
  if (hc->r)
    hc_release(hc, 502, "upstream_unavailable", why);
  hc_kill(hc);
  hc_start_next(hp);
}

static void hc_closed(struct mg_h1conn *hc, short events);

static void hc_process(struct mg_h1conn *hc) {
  struct evbuffer *in;
  struct mg_req *r = hc->r;
  if (hc->dead)
    return;
  in = bufferevent_get_input(hc->bev);
  if (!r) {
    if (evbuffer_get_length(in))
      hc_kill(hc); /* bytes on an idle connection: not a clean keep-alive */
    return;
  }
  if (evbuffer_get_length(in))
    hc->got_bytes = true;
  while (!hc->msg_complete && evbuffer_get_length(in)) {
    size_t room = r->respbuf.max - r->respbuf.len;
    struct evbuffer_iovec v;
    size_t n, done;
    if (room == 0)
      return; /* resumes from mg_tp_h1_resp_consumed */
    if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
      break;
    n = MG_MIN(v.iov_len, room);
    done = http_parser_execute(&hc->parser, &psettings, v.iov_base, n);
    evbuffer_drain(in, done);
    if (HTTP_PARSER_ERRNO(&hc->parser) == HPE_PAUSED) {
      http_parser_pause(&hc->parser, 0);
      break;
    }
    if (HTTP_PARSER_ERRNO(&hc->parser) != HPE_OK || done < n) {
      hc_fail(hc, hc->too_big ? "upstream response headers too large"
                              : "malformed upstream response");
      return;
    }
  }
  if (hc->msg_complete)
    hc_complete(hc);
  else if (hc->eof && !hc->dead && hc->r && evbuffer_get_length(in) == 0)
    hc_closed(hc, BEV_EVENT_EOF); /* everything before the close is parsed now */
}

static void hc_ev(evutil_socket_t fd, short what, void *arg) {
  struct mg_h1conn *hc = arg;
  struct mg_h1pool *hp = hc->hp;
  hc->pending_ev = false;
  if (!hc->dead) {
    hc_process(hc);
    hc_pump(hc);
    if (!hc->dead || hc->pending_ev)
      return;
  }
  hc_destroy(hc);
  hc_start_next(hp); /* its place in the pool is free now: start a queued request */
}

static bool idempotent(const char *m) {
  return m && (!strcmp(m, "GET") || !strcmp(m, "HEAD") || !strcmp(m, "OPTIONS"));
}

static void hc_readcb(struct bufferevent *bev, void *arg) { hc_process(arg); }

static void hc_writecb(struct bufferevent *bev, void *arg) { hc_pump(arg); }

static void hc_eventcb(struct bufferevent *bev, short events, void *arg) {
  struct mg_h1conn *hc = arg;
  if (events & BEV_EVENT_CONNECTED) {
    struct mg_req *r = hc->r;
    int one = 1;
    hc->connected = true;
    evtimer_del(&hc->timer);
    setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (r) {
      hc->r = NULL;
      r->h1 = NULL;
      hc_send(hc, r);
    }
    return;
  }
  if (events & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
    if (events & BEV_EVENT_EOF) {
      hc->eof = true; /* never reused */
      if (hc->r && !hc->msg_complete) {
        /* Bytes sent before the close may still wait in the input, behind a full response
         * ring: hc_process sees the close (hc_closed) only once they are all parsed, or a
         * read-until-close body would end early, looking complete. */
        hc_process(hc);
        return;
      }
    }
    hc_closed(hc, events);
  }
}

/* The upstream closed (EOF) or failed (ERROR), with every byte before it parsed. */
static void hc_closed(struct mg_h1conn *hc, short events) {
  const char *err =
      (events & BEV_EVENT_ERROR) ? mg_tp_connect_error(hc->bev) : "connection closed";
  char why[160];
  if (hc->r && (events & BEV_EVENT_EOF) && !hc->msg_complete) {
    /* EOF may complete a read-until-close body. */
    http_parser_execute(&hc->parser, &psettings, NULL, 0);
    if (hc->msg_complete) {
      hc_release(hc, 0, NULL, NULL);
      hc_kill(hc);
      hc_start_next(hc->hp);
      return;
    }
  }
  if (hc->r && hc->nreqs > 1 && !hc->got_bytes && hc->r->retries == 0 &&
      !hc->r->req_body && idempotent(hc->r->info.method)) {
    /* A reused keep-alive connection the upstream had already closed: most likely it
     * never saw the request (no response byte, no body), so one retry on a fresh one.
     * Only for methods that are safe to repeat (RFC 9110 §9.2.2): the product may have
     * acted on a DELETE or an empty POST before the connection died. */
    struct mg_req *r = hc->r;
    struct mg_h1pool *hp = hc->hp;
    hc->r = NULL;
    r->h1 = NULL;
    r->retries++;
    hc_kill(hc);
    h1_assign(hp, r);
    return;
  }
  snprintf(why, sizeof why, "%s: %s", mg_tp_pool_cfg(hc->hp->pool)->upstream.address, err);
  if (hc->r && hc->r->resp_final)
    hc_fail(hc, "upstream closed mid-response");
  else
    hc_fail(hc, why);
}

static void hc_timer_cb(evutil_socket_t fd, short what, void *arg) {
  struct mg_h1conn *hc = arg;
  if (!hc->connected)
    hc_fail(hc, "connect timeout");
}

static struct mg_h1conn *hc_open(struct mg_h1pool *hp, char *why, size_t whylen) {
  struct mg_worker *w = mg_tp_pool_worker(hp->pool);
  struct mg_config *cfg = mg_tp_pool_cfg(hp->pool);
  int ms = cfg->upstream.connect_timeout_ms > 0 ? cfg->upstream.connect_timeout_ms : 2000;
  struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
  struct mg_h1conn *hc;
  hc = calloc(1, sizeof *hc);
  if (!hc) {
    snprintf(why, whylen, "out of memory");
    return NULL;
  }
  hc->hp = hp;
  mg_buf_init(&hc->field);
  mg_buf_init(&hc->value);
  event_assign(&hc->ev, w->base, -1, 0, hc_ev, hc);
  evtimer_assign(&hc->timer, w->base, hc_timer_cb, hc);
  hc->next_all = hp->all;
  hp->all = hc;
  hp->nconns++;
  hc->bev = bufferevent_socket_new(w->base, -1, BEV_OPT_CLOSE_ON_FREE);
  if (!hc->bev) {
    snprintf(why, whylen, "out of memory");
    hc_destroy(hc);
    return NULL;
  }
  bufferevent_setcb(hc->bev, hc_readcb, hc_writecb, hc_eventcb, hc);
  bufferevent_setwatermark(hc->bev, EV_WRITE, MG_TP_OUT_LOW, 0);
  bufferevent_setwatermark(hc->bev, EV_READ, 0, H1_READ_HIGH);
  if (mg_tp_connect(w, hc->bev, cfg->upstream.address, why, whylen) < 0) {
    hc_destroy(hc);
    return NULL;
  }
  bufferevent_enable(hc->bev, EV_READ | EV_WRITE);
  evtimer_add(&hc->timer, &tv);
  return hc;
}

/* Gives r a connection: an idle one, a new one, or a place in the queue. */
static void h1_assign(struct mg_h1pool *hp, struct mg_req *r) {
  struct mg_h1conn *hc;
  char why[160];
  while ((hc = hp->idle)) {
    hp->idle = hc->next_idle;
    hc->idle = false;
    if (!hc->dead) {
      hc_send(hc, r);
      return;
    }
  }
  if (hp->nconns >= H1_MAX_CONNS) {
    r->qnext = NULL;
    if (hp->qtail)
      hp->qtail->qnext = r;
    else
      hp->qhead = r;
    hp->qtail = r;
    return;
  }
  hc = hc_open(hp, why, sizeof why);
  if (!hc) {
    r->up_kind = MG_UP_NONE;
    mg_tp_req_up_fail(r, 502, "upstream_unavailable", why);
    return;
  }
  hc->r = r; /* sent once connected */
  r->h1 = hc;
}

static void hc_start_next(struct mg_h1pool *hp) {
  while (hp->qhead && (hp->idle || hp->nconns < H1_MAX_CONNS)) {
    struct mg_req *r = hp->qhead;
    hp->qhead = r->qnext;
    if (!hp->qhead)
      hp->qtail = NULL;
    r->qnext = NULL;
    h1_assign(hp, r);
  }
}

void mg_tp_h1_start(struct mg_uppool *p, struct mg_req *r) {
  struct mg_h1pool *hp = hpool(p);
  if (!hp) {
    r->up_kind = MG_UP_NONE;
    mg_tp_req_up_fail(r, 502, "upstream_unavailable", "out of memory");
    return;
  }
  h1_assign(hp, r);
}

void mg_tp_h1_cancel(struct mg_req *r) {
  struct mg_h1pool *hp = hpool(r->conn->w->pool);
  struct mg_h1conn *hc = r->h1;
  if (hc) {
    /* Mid-exchange: the connection cannot be reused. */
    hc->r = NULL;
    r->h1 = NULL;
    hc_kill(hc);
  } else if (hp) {
    struct mg_req **pp = &hp->qhead, *prev = NULL;
    while (*pp && *pp != r) {
      prev = *pp;
      pp = &(*pp)->qnext;
    }
    if (*pp) {
      *pp = r->qnext;
      if (hp->qtail == r)
        hp->qtail = prev;
    }
    r->qnext = NULL;
  }
  r->up_kind = MG_UP_NONE;
}

void mg_tp_h1_body_ready(struct mg_req *r) {
  if (r->h1 && r->h1->connected)
    hc_pump(r->h1);
}

void mg_tp_h1_resp_consumed(struct mg_req *r) {
  /* Ring space freed: parse more of what the upstream sent (outside nghttp2 callbacks). */
  if (r->h1)
    hc_schedule(r->h1);
}

void mg_tp_h1_pool_retire(struct mg_uppool *p) {
  struct mg_h1pool *hp = *mg_tp_pool_h1_slot(p);
  if (!hp)
    return;
  for (struct mg_h1conn *hc = hp->all; hc; hc = hc->next_all) {
    hc->retired = true;
    if (hc->idle || !hc->r)
      hc_kill(hc);
  }
  hp->idle = NULL;
}

void mg_tp_h1_pool_free(struct mg_uppool *p) {
  void **slot = mg_tp_pool_h1_slot(p);
  struct mg_h1pool *hp = *slot;
  if (!hp)
    return;
  while (hp->all) {
    if (hp->all->r) {
      hp->all->r->h1 = NULL;
      hp->all->r = NULL;
    }
    hc_destroy(hp->all);
  }
  free(hp);
  *slot = NULL;
}
