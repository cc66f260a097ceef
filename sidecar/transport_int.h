/*
 * transport_int.h — private structures shared by worker.c, conn.c, upstream.c and
 * upstream_h1.c. Nothing outside the transport includes this file.
 *
 * Ownership in one picture:
 *   mg_server ─┬─ mg_worker[i] (thread + event_base + listener + upstream pool)
 *              │     ├─ mg_conn (downstream connection, nghttp2 server session)
 *              │     │     └─ mg_req (one per stream: arena, headers, two body rings)
 *              │     └─ mg_uppool ─ mg_upconn (h2c sessions) / mg_h1conn (HTTP/1.1)
 * A req points at its upstream leg (upc+stream id, or h1 connection); an upstream stream
 * points back at its req through nghttp2 stream user data. Whichever side goes first
 * detaches the other, so neither ever sees a freed pointer.
 */
#ifndef MG_SIDECAR_TRANSPORT_INT_H
#define MG_SIDECAR_TRANSPORT_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/listener.h>
#include <openssl/ssl.h>

#include "common/common.h"
#include "sidecar/proxy.h"

#define MG_TP_HEADER_TIMEOUT_S 10      /* slowloris: time to complete a header block / preface */
#define MG_TP_OUT_HIGH (256u * 1024)   /* stop serialising frames above this much queued output */
#define MG_TP_OUT_LOW (64u * 1024)     /* resume below this */
#define MG_TP_RESP_HDR_MAX (64u * 1024) /* upstream response header / trailer bytes */
#define MG_TP_RING_MIN (16u * 1024)
#define MG_TP_MAX_FRAME (256u * 1024)
#define MG_TP_DRAIN_MAX (256u * 1024) /* request bytes discarded after a finished response
                                         before RST_STREAM(NO_ERROR) */

/* ---- small building blocks (conn.c) ---- */

struct mg_arena_chunk {
  struct mg_arena_chunk *next;
  size_t cap;
  char data[];
};

struct mg_arena {
  char *p;                      /* next free byte of the current chunk */
  size_t left;
  struct mg_arena_chunk *chunks; /* heap chunks, freed with the arena */
};

void *mg_tp_arena_alloc(struct mg_arena *a, size_t n);
char *mg_tp_arena_strdup(struct mg_arena *a, const void *s, size_t n);

/* Byte ring that grows (doubling, from MG_TP_RING_MIN) up to max; never beyond. */
struct mg_ring {
  uint8_t *buf;
  size_t cap, max, head, len;
};
size_t mg_tp_ring_write(struct mg_ring *r, const uint8_t *p, size_t n); /* bytes taken */
/* Contiguous readable bytes at the head. */
static inline size_t mg_tp_ring_contig(const struct mg_ring *r, const uint8_t **p) {
  size_t n = r->cap - r->head;
  *p = r->buf + r->head;
  return r->len < n ? r->len : n;
}
void mg_tp_ring_drop(struct mg_ring *r, size_t n);
void mg_tp_ring_free(struct mg_ring *r);

struct mg_hdr {
  const char *name, *value;
  size_t namelen, valuelen;
};

struct mg_hdrs {
  struct mg_hdr *v;
  size_t n, cap;
  size_t bytes;                 /* HPACK-style size: name + value + 32 each */
};
int mg_tp_hdrs_add(struct mg_hdrs *h, struct mg_arena *a, const void *name, size_t namelen,
                   const void *value, size_t valuelen);

/* ---- the request (one downstream stream) ---- */

enum { MG_UP_NONE = 0, MG_UP_H2, MG_UP_H1 };
enum { MG_TIMER_OFF = 0, MG_TIMER_HEADERS, MG_TIMER_BODY };

struct mg_upconn;
struct mg_h1conn;
struct mg_conn;

struct mg_req {
  struct mg_conn *conn;
  int32_t stream_id;
  struct mg_req *prev, *next;   /* conn's list */
  struct mg_req_info info;
  void *user;

  struct mg_hdrs hdrs;          /* request regular headers, as received */
  struct mg_hdrs req_trailers;
  int nauth;
  bool too_big, headers_done, dispatched, req_eof, req_body;
  bool responded;               /* downstream response headers submitted */
  bool local;                   /* answered by mg_req_respond */
  bool forwarded;
  bool resp_eof;                /* upstream response complete (body + trailers known) */
  bool resp_deferred;           /* downstream data provider is waiting for bytes */
  bool up_deferred;             /* upstream (h2) request data provider is waiting */
  bool req_up_done;             /* request fully handed to the upstream */
  bool closing;                 /* on_stream_close running */
  bool resp_sent;               /* response END_STREAM went out, request still open */
  uint64_t drained;             /* request body bytes discarded */

  struct mg_ring reqbuf;        /* client -> upstream body, unconsumed downstream window */
  struct mg_ring respbuf;       /* upstream -> client body, unconsumed upstream window */

  /* response side */
  struct mg_hdrs resp_hdrs, resp_trailers;
  int resp_status;              /* status of the upstream response being collected */
  bool resp_final;
  const uint8_t *local_body;
  size_t local_len, local_off;

  /* upstream leg */
  int up_kind;
  struct mg_upconn *upc;
  int32_t up_sid;
  struct mg_h1conn *h1;
  struct mg_req *qnext;         /* pool wait queue */
  struct mg_req *up_prev, *up_next; /* streams of one upstream h2 connection */
  void *up_slot;                /* upstream.c: the h2 stream's user data (see there) */
  bool queued;
  int retries;                  /* upstream attempts repeated (refused / stale keep-alive) */
  uint64_t body_sent;           /* request body bytes handed to the upstream */
  const nghttp2_nv *fwd_nv;     /* built by mg_req_forward, lives in the arena */
  size_t fwd_nnv;

  struct event timer;
  int timer_mode;
  int64_t last_progress_us;
  int64_t resp_deadline_us;     /* forwarded: response headers due by then (else 504) */
  int64_t resp_timeout_us;      /* upstream.response_timeout_ms of this request */

  struct mg_req_outcome out;
  struct mg_arena arena;
  char arena0[3072];
};

/* ---- downstream connection ---- */

struct mg_conn {
  struct mg_worker *w;
  uint64_t serial;
  struct mg_conn *prev, *next;  /* worker list */
  struct mg_conn *hnext;        /* serial hash chain */
  struct bufferevent *bev;
  SSL *ssl;
  nghttp2_session *sess;
  struct mg_config *cfg;        /* snapshot for this connection's lifetime (ref held) */
  bool tls, ready, dead, flush_pending, goaway, goaway_after, got_frame, lingering;
  char peer[64];
  char spiffe[2049];
  struct event flush_ev;
  struct event timer;
  int nstreams;
  int failed_verifies;
  int64_t last_activity_us;
  struct mg_req *reqs;
};

/* ---- worker + server ---- */

struct mg_post {
  struct mg_post *next;
  void (*fn)(void *);
  void *arg;
};

#define MG_CONN_HASH 4096

struct mg_uppool;

struct mg_worker {
  struct mg_server *srv;
  int index;
  pthread_t thread;
  bool started;
  struct event_base *base;
  struct evconnlistener *listener;
  struct event *post_ev;
  struct event *later_ev;       /* mg_worker_later(): runs later_fn after this pass */
  struct evdns_base *dns;       /* made on the first upstream host name (mg_tp_connect) */
  void (*later_fn)(void *arg);
  void *later_arg;
  pthread_mutex_t post_lock;
  struct mg_post *post_head, *post_tail;
  void *data;
  struct mg_config *cfg;        /* current snapshot for new connections (ref held) */
  SSL_CTX *ssl_ctx;             /* current TLS context for new connections (ref held) */
  struct mg_conn *conns;
  struct mg_conn *hash[MG_CONN_HASH];
  uint64_t next_serial;
  int nconns;
  struct mg_uppool *pool;
  bool stopping;
  struct event *stop_ev;
  struct mg_req *free_reqs;     /* small cache of req blocks */
  int nfree_reqs;
};

struct mg_server {
  pthread_mutex_t lock;
  struct mg_config *cfg;
  SSL_CTX *ssl_ctx;
  int nworkers;
  struct mg_worker *workers;
  int port;
  _Atomic uint64_t connections, streams_active, requests_total, upstream_errors;
};

/* ---- worker.c ---- */
struct mg_server *mg_tp_worker_server(struct mg_worker *w);
/* libevent 2.1 reads at most 4096 bytes per read callback (EVBUFFER_MAX_READ), so a 16 KiB
 * response took four loop passes, each with its own downstream write and two epoll_ctl
 * calls. After an h2 session consumed what the bufferevent read, this reads the rest the
 * (plaintext) socket holds into a per-thread 64 KiB buffer and passes it to feed, up to
 * MG_TP_READ_MORE bytes per callback so one busy connection cannot starve the others.
 * Stops at EAGAIN, at EOF or an error (left for the bufferevent's next read to report),
 * or when feed returns nonzero (its value is returned). Worker threads only. */
#define MG_TP_READ_MORE (256u * 1024)
int mg_tp_read_more(evutil_socket_t fd, int (*feed)(void *ctx, const uint8_t *p, size_t n),
                    void *ctx);

void mg_tp_worker_conn_add(struct mg_worker *w, struct mg_conn *c);
void mg_tp_worker_conn_del(struct mg_worker *w, struct mg_conn *c);
void mg_tp_worker_check_stopped(struct mg_worker *w);

/* ---- conn.c ---- */
void mg_tp_conn_accept(struct mg_worker *w, evutil_socket_t fd, const struct sockaddr *sa,
                       int salen);
void mg_tp_conn_goaway(struct mg_conn *c);
void mg_tp_conn_destroy(struct mg_conn *c);
void mg_tp_req_free_block(struct mg_worker *w, struct mg_req *r);

/* Upstream -> downstream events, used by upstream.c and upstream_h1.c. */
/* Response headers are final (status >= 200). end_stream: no body follows. */
void mg_tp_req_up_headers(struct mg_req *r, int status, const struct mg_hdrs *h,
                          bool end_stream);
/* Body bytes; returns how many were taken (all unless the ring is full). */
size_t mg_tp_req_up_data(struct mg_req *r, const uint8_t *p, size_t n);
/* End of response; trailers may be NULL. */
void mg_tp_req_up_end(struct mg_req *r, const struct mg_hdrs *trailers);
/* The upstream finished its response and will read no more of the request body: drop what
 * waits in reqbuf and give its window back, so the client can go on sending (discarded, as
 * on_data_chunk does) or be reset, and the body timer sees a client that owes bytes. */
void mg_tp_req_drop_body(struct mg_req *r);
/* The upstream leg failed: before response headers -> local 502 (or 504 when timeout),
 * after -> RST_STREAM INTERNAL_ERROR downstream. The leg is already detached. */
void mg_tp_req_up_fail(struct mg_req *r, int status, const char *error, const char *detail);
/* The upstream consumed n request body bytes from reqbuf (window update downstream). */
void mg_tp_req_consumed_body(struct mg_req *r, size_t n);
/* True for inbound fields never forwarded (x-mesh-*, forwarded, x-forwarded-*, …,
 * authorization unless forward_token, hop-by-hop). */
bool mg_tp_strip_inbound(const struct mg_config *cfg, const char *name, size_t len);
/* nghttp2 read-length callback: DATA frames as large as the peer allows (windows, its
 * SETTINGS_MAX_FRAME_SIZE), capped at MG_TP_MAX_FRAME; fewer frames, fewer syscalls. */
ssize_t mg_tp_read_length(nghttp2_session *s, uint8_t type, int32_t sid, int32_t sess_win,
                          int32_t stream_win, uint32_t max_frame, void *ud);
/* Schedules a write of the downstream session. */
void mg_tp_conn_want_write(struct mg_conn *c);

/* ---- upstream.c (h2c) ---- */
int mg_tp_pool_new(struct mg_worker *w, struct mg_uppool **out);
void mg_tp_pool_free(struct mg_uppool *p);
/* Starts the upstream leg of r (r->fwd_nv built). Failures are reported through
 * mg_tp_req_up_fail, possibly before this returns. */
void mg_tp_up_start(struct mg_req *r);
/* Detaches r from its upstream leg, resetting the upstream stream if still open. */
void mg_tp_up_cancel(struct mg_req *r);
/* New request body bytes (or end) are available in r->reqbuf. */
void mg_tp_up_body_ready(struct mg_req *r);
/* r's respbuf drained by n bytes: open the upstream window. */
void mg_tp_up_resp_consumed(struct mg_req *r, size_t n);
/* Used by the pool: the h1 side. */
void mg_tp_h1_start(struct mg_uppool *p, struct mg_req *r);
void mg_tp_h1_cancel(struct mg_req *r);
void mg_tp_h1_body_ready(struct mg_req *r);
void mg_tp_h1_resp_consumed(struct mg_req *r);
void mg_tp_h1_pool_free(struct mg_uppool *p);
/* Config reload changed the upstream: stop reusing existing upstream connections (they
 * finish what they carry and close); new requests get new connections. */
void mg_tp_pool_retire(struct mg_uppool *p);
void mg_tp_h1_pool_retire(struct mg_uppool *p);
/* Body buffer size per stream and direction (cfg value, or the 256 KiB default). */
size_t mg_tp_body_buffer(const struct mg_config *cfg);
/* Resolves "host:port" / "unix:/path" (numeric host or a blocking lookup). */
/* Starts bev's connection to address ("host:port", "[v6]:port", "unix:/path"): numeric
 * addresses and unix paths at once, host names through the worker's evdns, so a lookup
 * never blocks the loop (/etc/hosts first, then the resolv.conf servers). The outcome
 * arrives as BEV_EVENT_CONNECTED or BEV_EVENT_ERROR; the caller's connect timer bounds a
 * slow lookup too. 0, or an error with a reason in why. */
int mg_tp_connect(struct mg_worker *w, struct bufferevent *bev, const char *address, char *why,
                  size_t whylen);
/* After BEV_EVENT_ERROR on a connecting bufferevent: the lookup's or the socket's error. */
const char *mg_tp_connect_error(struct bufferevent *bev);
struct mg_config *mg_tp_pool_cfg(struct mg_uppool *p);
struct mg_worker *mg_tp_pool_worker(struct mg_uppool *p);
/* The HTTP/1.1 leg's private state hangs off the pool here. */
void **mg_tp_pool_h1_slot(struct mg_uppool *p);

#endif /* MG_SIDECAR_TRANSPORT_INT_H */
