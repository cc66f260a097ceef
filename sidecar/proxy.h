/*
 * proxy.h — the data-path transport: worker threads with one libevent loop each, the
 * downstream HTTP/2 server (TLS with ALPN h2, or h2c prior knowledge), and the upstream
 * client (h2c connection pool, or HTTP/1.1). The transport moves bytes with flow control;
 * the pipeline (pipeline.c) decides. The two meet here.
 *
 * Life of a request:
 *   1. headers complete and well-formed (nghttp2 messaging checks + our limits) ->
 *      mg_pipeline_on_request(req). The request body is held back by flow control.
 *   2. the pipeline calls, on the worker thread, now or later, exactly one of
 *      mg_req_respond() (local answer) or mg_req_forward() (to the product).
 *   3. when the downstream stream closes -> mg_pipeline_on_close(req, outcome); the req and
 *      its memory die right after it returns.
 * Every function here runs on the request's worker thread, except mg_worker_post().
 */
#ifndef MG_SIDECAR_PROXY_H
#define MG_SIDECAR_PROXY_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#include <nghttp2/nghttp2.h>

#include "sidecar/config.h"

struct mg_server;
struct mg_worker;
struct mg_req;

/* What the pipeline sees of a request. Pointers are valid until on_close. Header values
 * are NUL-terminated. */
struct mg_req_info {
  const char *method;
  const char *path;            /* raw :path as received */
  size_t path_len;
  const char *authority;       /* :authority or NULL */
  const char *scheme;
  const char *host;            /* host header or NULL */
  const char *authorization;   /* NULL if absent; two authorization fields -> 400 by transport */
  const char *purposes[2];     /* x-mesh-purpose values (first two) */
  int npurposes;               /* number of x-mesh-purpose fields received */
  const char *content_type;
  const char *peer;            /* "ip:port" of the client */
  const char *spiffe;          /* "spiffe://…" URI SAN of a verified client certificate */
  bool tls;
  int64_t start_mono_us;
};

struct mg_req_outcome {
  bool forwarded;              /* mg_req_forward was called and the upstream saw the request */
  int status;                  /* status sent downstream, 0 if none */
  int64_t reset;               /* h2 error code if the stream was reset (either side), else -1 */
  uint64_t bytes_in;           /* request body bytes received from the client */
  uint64_t bytes_out;          /* response body bytes sent to the client */
  uint64_t duration_us;
};

/* ---- implemented by pipeline.c ---- */
void mg_pipeline_on_request(struct mg_req *req);
void mg_pipeline_on_close(struct mg_req *req, const struct mg_req_outcome *o);
/* Frees the pipeline's per-worker state; call after mg_server_stop (no worker runs). */
void mg_pipeline_shutdown(void);

/* ---- implemented by the transport ---- */
const struct mg_req_info *mg_req_info(const struct mg_req *req);
struct mg_worker *mg_req_worker(const struct mg_req *req);
void mg_req_set_data(struct mg_req *req, void *data);
void *mg_req_get_data(const struct mg_req *req);
/* A stable handle for finding the request again from a posted callback (conn serial and
 * stream id); 0 is never a valid handle. */
uint64_t mg_req_handle(const struct mg_req *req);
struct mg_req *mg_worker_find_req(struct mg_worker *w, uint64_t handle);
/* A per-worker user pointer (the pipeline keeps its per-worker caches there). */
void mg_worker_set_data(struct mg_worker *w, void *data);
void *mg_worker_get_data(const struct mg_worker *w);
int mg_worker_index(const struct mg_worker *w);
/* One "later" hook per worker: mg_worker_later() makes fn(arg) run once on w's loop after
 * the events already ready in this pass, before the loop waits again (worker thread only;
 * calls before it ran coalesce). The pipeline batches its access-log lines with it. */
void mg_worker_set_later(struct mg_worker *w, void (*fn)(void *arg), void *arg);
void mg_worker_later(struct mg_worker *w);

/* Sends a complete local response (headers + body) and ends the stream. `extra` are added
 * response headers (lowercase names). The body is copied. */
void mg_req_respond(struct mg_req *req, int status, const char *content_type,
                    const char *body, size_t body_len, const nghttp2_nv *extra, size_t nextra);

/* Forwards the request to the product: method, `path` (the canonical bytes authorised),
 * the inbound headers minus the stripped set (x-mesh-*, forwarded, x-forwarded-*,
 * x-real-ip, x-original-url, x-rewrite-url, x-http-method-override, x-http-method,
 * x-method-override, authorization unless forward_token, hop-by-hop), plus `add`.
 * The response (headers, body, trailers) streams back. Upstream unreachable -> 502 JSON,
 * no response headers within response_timeout_ms -> 504 JSON. */
int mg_req_forward(struct mg_req *req, const char *path, size_t path_len,
                   const nghttp2_nv *add, size_t nadd);

/* Counts one failed signature verification on the request's connection; at
 * failed_verifies_per_conn the connection is sent GOAWAY and closed after this response.
 * Returns the new count. */
int mg_req_count_failed_verify(struct mg_req *req);

/* Runs fn(arg) on w's loop. Callable from any thread; never blocks (unbounded MPSC list). */
void mg_worker_post(struct mg_worker *w, void (*fn)(void *arg), void *arg);

/* ---- server lifecycle (main thread) ---- */
/* Creates listeners (SO_REUSEPORT, one per worker) and starts cfg->workers threads. */
int mg_server_start(struct mg_config *cfg, struct mg_server **out, char *err, size_t errlen);
/* Swaps in a new config (TLS certs reloaded, limits, upstream); open connections keep
 * theirs. 0 or error with reason (old config stays). */
int mg_server_reload(struct mg_server *s, struct mg_config *cfg, char *err, size_t errlen);
/* GOAWAY to every connection, stop accepting, wait up to grace_s for in-flight streams,
 * then close everything and join the workers. */
void mg_server_stop(struct mg_server *s, int grace_s);
void mg_server_free(struct mg_server *s);

struct mg_server_stats {
  uint64_t connections, streams_active, requests_total;
  uint64_t upstream_errors;
};
void mg_server_stats(struct mg_server *s, struct mg_server_stats *out);
/* The TCP port the data listeners are bound to (the chosen one when the configured port
 * is 0; every worker's listener shares it). Any thread. */
int mg_server_port(const struct mg_server *s);

/* Transport behaviour the pipeline can rely on (sidecar/conn.c, upstream*.c):
 *  - Answered by the transport without calling mg_pipeline_on_request (and so without
 *    mg_pipeline_on_close): header list over max_header_list_bytes -> 431, two or more
 *    authorization fields -> 400, CONNECT (no :path) -> 405; streams beyond
 *    max_concurrent_streams are refused by nghttp2 (REFUSED_STREAM / PROTOCOL_ERROR).
 *  - mg_pipeline_on_close runs exactly once for every request that reached
 *    mg_pipeline_on_request, also when the connection dies or the server stops.
 *  - outcome.forwarded is true once mg_req_forward accepted the request, also when the
 *    upstream then proves unreachable (502) or silent (504): every access entry of a
 *    forward attempt gets its outcome.
 *  - mg_req_respond after response headers went downstream is ignored; a second
 *    mg_req_forward returns MG_ERR_INVALID.
 *  - mg_worker_post callbacks queued when the worker stops still run once, during
 *    mg_server_free (on the calling thread); mg_worker_find_req() then returns NULL.
 *  - Retries: an upstream h2 stream refused (REFUSED_STREAM / above a GOAWAY) before any
 *    body byte left, or a body-less request on a reused HTTP/1.1 keep-alive connection
 *    that died without a response byte, is tried once more on another connection.
 *  - Timers: 10 s to finish the preface / TLS handshake / a header block (else the
 *    connection closes); idle_timeout_s without requests closes a connection (PINGs do
 *    not count); a stream whose client neither sends the body it owes nor reads the
 *    response for idle_timeout_s is reset (CANCEL). response_timeout_ms counts from the
 *    forward, restarted by every request body byte the upstream accepts (a long upload
 *    is not a slow upstream).
 *  - A response finished while the client still uploads: up to 256 KiB more of the body
 *    is drained and discarded (curl 7.x drops a response followed by an immediate
 *    RST_STREAM), then RST_STREAM(NO_ERROR). */

#endif /* MG_SIDECAR_PROXY_H */
