/*
 * admin_int.h — private contract between the admin API's router/handlers (admin.c) and its
 * transports (admin_http.c: HTTP/1.1 via http_parser, HTTP/2 via nghttp2, TLS or plain).
 *
 * A transport collects one whole request (method, target, lower-cased header fields, a body
 * of at most MG_ADMIN_MAX_BODY bytes) into struct mg_admin_req, calls mg_admin_dispatch(),
 * and sends struct mg_admin_resp back. A response either carries its body in `body`, or is
 * streamed: `stream` is then set and the transport forwards the pipe's read end
 * (stream->rfd, non-blocking) until EOF, then looks at stream->result to decide whether the
 * body ended cleanly (h1: terminating chunk; h2: END_STREAM) or not (h1: close without the
 * terminator; h2: RST_STREAM), so a client never mistakes a failed export for a whole one.
 *
 * Threads: everything here runs on the admin thread, except the export thread that writes
 * into the pipe.
 */
#ifndef MG_SIDECAR_ADMIN_INT_H
#define MG_SIDECAR_ADMIN_INT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>

#include <http_parser.h>

#include "common/common.h"
#include "sidecar/app.h"

#define MG_ADMIN_MAX_BODY (1024u * 1024u)     /* request bodies: 413 beyond */
#define MG_ADMIN_MAX_HEADERS (16u * 1024u)    /* header section: 431 beyond */
#define MG_ADMIN_MAX_RESP_HDRS 6

struct mg_admin_hdr {
  char *name;  /* lower case */
  char *value;
};

struct mg_admin_req {
  char method[16];
  char *target;                 /* raw request-target: path + optional "?query" */
  struct mg_admin_hdr *hdrs;
  size_t nhdrs, caphdrs;
  struct mg_buf body;
  const char *peer_spiffe;      /* SPIFFE ID of a verified client certificate, or NULL */
  bool h2;
};

/* The export stream of a GET /v1/lineage response, shared by the export thread and the
 * transport (refcounted: each side drops one reference). */
struct mg_admin_stream {
  int rfd;                      /* pipe read end, O_NONBLOCK; the transport closes it */
  _Atomic int result;           /* export result; valid once rfd reached EOF */
  _Atomic int refs;
};
void mg_admin_stream_unref(struct mg_admin_stream *s);

struct mg_admin_resp {
  int status;
  const char *ctype;            /* static string */
  struct mg_admin_hdr hdrs[MG_ADMIN_MAX_RESP_HDRS]; /* extra fields, values owned */
  size_t nhdrs;
  struct mg_buf body;
  struct mg_admin_stream *stream; /* non-NULL: body streamed from stream->rfd */
  bool close;                   /* the transport must close the connection after it */
};

/* State the handlers share: the app, the admin thread's token cache, live export threads. */
struct mg_admin_ctx {
  struct mg_app *app;
  struct mg_authn_cache *cache;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int exports;                  /* export threads still running */
};

int mg_admin_ctx_init(struct mg_admin_ctx *c, struct mg_app *app);
/* Waits for export threads (their pipes must have been closed), frees the cache. */
void mg_admin_ctx_clear(struct mg_admin_ctx *c);

void mg_admin_req_init(struct mg_admin_req *rq);
void mg_admin_req_clear(struct mg_admin_req *rq);
/* Adds a header field (name lower-cased here). 0 or -ENOMEM. */
int mg_admin_req_add_header(struct mg_admin_req *rq, const char *name, size_t nlen,
                            const char *value, size_t vlen);
/* First value of a header field (name lower case), or NULL. */
const char *mg_admin_req_header(const struct mg_admin_req *rq, const char *name);

void mg_admin_resp_init(struct mg_admin_resp *rs);
/* Frees the body and header values; drops the stream reference (closing nothing). */
void mg_admin_resp_clear(struct mg_admin_resp *rs);
int mg_admin_resp_header(struct mg_admin_resp *rs, const char *name, const char *value);
/* Sets a JSON error response {"error":code,"detail":detail}. */
void mg_admin_resp_error(struct mg_admin_resp *rs, int status, const char *code,
                         const char *detail);

/* Routes and handles one request; always fills rs (never fails). Counts it in
 * app->metrics.admin_requests. */
void mg_admin_dispatch(struct mg_admin_ctx *c, struct mg_admin_req *rq,
                       struct mg_admin_resp *rs);

/* Strict percent-decoding of one path segment or query component ('+' is kept literally).
 * Rejects malformed escapes, %00, control characters and invalid UTF-8. Caller frees *out.
 * 0 or MG_ERR_INVALID / -ENOMEM. */
int mg_admin_pct_decode(const char *s, size_t n, char **out);

/* ---- HTTP/1.1 request parser (admin_http.c), separate from the socket for the fuzzer -- */

enum { MG_ADMIN_H1_MORE = 0, MG_ADMIN_H1_REQUEST = 1 };

struct mg_admin_h1 {
  http_parser p;
  struct mg_admin_req req;
  struct mg_buf field, value, url;
  bool in_value;
  size_t hdr_bytes;
  int err;                 /* HTTP status of a refused request (400, 413, 431, 505) */
  bool complete;           /* a whole request is in req */
  bool expect_continue;    /* headers said "Expect: 100-continue" and the body is wanted */
  bool keepalive;          /* the connection may carry another request after this one */
  bool started;            /* a byte of the current request has been seen */
  bool headers_done;
  int nhost;               /* Host fields seen (HTTP/1.1 requires exactly one) */
};

void mg_admin_h1_init(struct mg_admin_h1 *h);
void mg_admin_h1_clear(struct mg_admin_h1 *h);
/* Feeds bytes. *used gets the bytes consumed. Returns MG_ADMIN_H1_MORE (everything taken,
 * no whole request yet), MG_ADMIN_H1_REQUEST (h->req holds one whole request; call
 * mg_admin_h1_next() before feeding the rest), or an HTTP status >= 400 to answer before
 * closing the connection (malformed: 400; header section over MG_ADMIN_MAX_HEADERS: 431;
 * body over MG_ADMIN_MAX_BODY: 413, decided from Content-Length before any body byte is
 * buffered). */
int mg_admin_h1_feed(struct mg_admin_h1 *h, const char *data, size_t len, size_t *used);
/* Resets for the next request on the same connection. */
void mg_admin_h1_next(struct mg_admin_h1 *h);

/* Reason phrase for a status code. */
const char *mg_admin_status_text(int status);

#endif /* MG_SIDECAR_ADMIN_INT_H */
