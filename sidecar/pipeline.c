/*
 * pipeline.c — what happens to one request between the transport's "headers complete"
 * and "forward or answer": canonicalise, route, authenticate, authorise, record, forward.
 *
 * Order matters for cost and for safety: every check that needs no crypto and no I/O
 * runs first; the JWT signature (cached per worker) next; the grant decision (in-memory
 * index, no allocation) after; the lineage entry last, because in write-ahead mode the
 * request waits for its fsync before the product may see it. Two waits can suspend a
 * request: an unknown-kid JWKS refresh and the lineage commit. Both resume through
 * mg_worker_post with the request's handle, so a request that vanished meanwhile is
 * simply not found.
 *
 * Fail closed: a lineage or policy failure answers 503 and nothing is forwarded.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sidecar/app.h"
#include "sidecar/canon.h"
#include "sidecar/proxy.h"

/* Per-worker state, created on the first request of a worker and freed by
 * mg_pipeline_shutdown() once the workers have stopped. */
struct pworker {
  struct pworker *next;      /* registry, for shutdown */
  struct mg_authn_cache *cache;
  struct mg_policy_index *ix; /* cached reference to the app's current index */
  struct mg_buf logq;         /* access-log lines not written yet (see log_flush) */
  /* lineage commits done for this worker's requests, newest first (pushed by the writer
   * thread, taken whole by the worker): one mg_worker_post per batch, not per request */
  _Atomic(struct wake *) done;
  /* freed requests kept for reuse: a struct rq (~1.2 KB) is above glibc's tcache sizes, so
   * calloc/free of one per request went through the arena (consolidation, locks) */
  struct rq *free_rq;
  unsigned nfree;
};

#define RQ_CACHE 256

enum rq_state { RQ_NEW = 0, RQ_WAIT_JWKS, RQ_WAIT_LINEAGE, RQ_FORWARDED, RQ_ANSWERED };

struct rq {
  struct mg_req *req;
  struct mg_worker *w;
  uint64_t handle;
  enum rq_state state;
  char request_id[37];
  char *canon;               /* canonical path (+ query) */
  size_t canon_len, path_len;
  const struct mg_config_route *route;
  struct mg_config *cfg;     /* snapshot this request started with (ref held) */
  char dataset[256];
  unsigned action;
  const char *purpose;
  bool have_id;
  struct mg_authn_identity id;
  char *spiffe_principal;     /* "spiffe:<ID>" (IDs up to 2048 bytes), NULL without mTLS */
  const char *principal;     /* the one value of x-mesh-principal */
  const char *decision;      /* lineage decision word */
  char reason[96];
  char grant[136];
  char revision[MG_POLICY_REVISION_LEN];
  struct mg_lineage_rec *rec;
  int status;
};

/* A wake-up handed from another thread (lineage writer, JWKS refresher) to the worker. */
struct wake {
  struct wake *next;
  struct mg_worker *w;
  uint64_t handle;
  int status;
  uint64_t index;
};

static void process(struct rq *r);

static struct pworker *pworkers;
static pthread_mutex_t pworkers_lock = PTHREAD_MUTEX_INITIALIZER;

/* Access lines of one loop pass go out together: one write(2) per pass (PIPE_BUF chunks)
 * instead of one per request. The flush runs before the loop waits again, so a line is
 * never held while the worker sleeps; mg_pipeline_shutdown writes what is left. */
#define LOGQ_MAX 32768

static void log_flush(void *arg) {
  struct pworker *p = arg;
  if (p->logq.len) mg_log_lines(p->logq.data, p->logq.len);
  mg_buf_reset(&p->logq);
}

static struct pworker *pw_get(struct mg_worker *w) {
  struct pworker *p = mg_worker_get_data(w);
  if (p) return p;
  p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->cache = mg_authn_cache_new(4096);
  if (!p->cache) { free(p); return NULL; }
  mg_buf_init(&p->logq);
  mg_worker_set_later(w, log_flush, p);
  pthread_mutex_lock(&pworkers_lock);
  p->next = pworkers;
  pworkers = p;
  pthread_mutex_unlock(&pworkers_lock);
  mg_worker_set_data(w, p);
  return p;
}

void mg_pipeline_shutdown(void) {
  pthread_mutex_lock(&pworkers_lock);
  struct pworker *p = pworkers;
  pworkers = NULL;
  pthread_mutex_unlock(&pworkers_lock);
  while (p) {
    struct pworker *next = p->next;
    mg_authn_cache_free(p->cache);
    if (p->ix) mg_policy_index_unref(p->ix);
    log_flush(p);
    mg_buf_clear(&p->logq);
    while (p->free_rq) {
      struct rq *r = p->free_rq;
      p->free_rq = *(struct rq **)r;
      free(r);
    }
    free(p);
    p = next;
  }
}

/* The app's current index, re-referenced only when it changed (one atomic load per
 * request on the hot path). */
static struct mg_policy_index *pw_index(struct pworker *p) {
  struct mg_policy_index *cur = atomic_load_explicit(&mg_app->index, memory_order_acquire);
  if (cur != p->ix) {
    struct mg_policy_index *n = mg_app_index_acquire(mg_app);
    if (p->ix) mg_policy_index_unref(p->ix);
    p->ix = n;
  }
  return p->ix;
}

static enum mg_decision_kind decision_kind(const char *d) {
  if (!d) return MG_DEC_NONE;
  if (!strcmp(d, "allow")) return MG_DEC_ALLOW;
  if (!strcmp(d, "deny")) return MG_DEC_DENY;
  if (!strcmp(d, "unauthenticated")) return MG_DEC_UNAUTH;
  return MG_DEC_ERROR;
}

/* One log line per second at most: a full log refuses every request, and the metric and
 * /readyz carry the rest. */
static bool log_allowed(_Atomic int64_t *last_us) {
  int64_t now = mg_mono_now_us(), prev = atomic_load_explicit(last_us, memory_order_relaxed);
  return now - prev >= 1000000 && atomic_compare_exchange_strong(last_us, &prev, now);
}

/* ---- local answers ---- */

static void answer(struct rq *r, int status, const char *error, const char *detail,
                   const nghttp2_nv *extra, size_t nextra) {
  struct mg_buf b;
  mg_buf_init(&b);
  mg_buf_appends(&b, "{\"error\":");
  mg_buf_append_json_str(&b, error, strlen(error));
  mg_buf_appends(&b, ",\"detail\":");
  mg_buf_append_json_str(&b, detail, strlen(detail));
  mg_buf_appendf(&b, ",\"request_id\":\"%s\"}\n", r->request_id);
  r->status = status;
  r->state = RQ_ANSWERED;
  mg_req_respond(r->req, status, "application/json", b.data, b.len, extra, nextra);
  mg_buf_clear(&b);
}

#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE}

/* Records the access entry of a refused request (rate-limited per peer by the writer),
 * then answers. */
static void refuse(struct rq *r, int status, const char *decision, const char *error,
                   const char *detail, const nghttp2_nv *extra, size_t nextra);

static void fill_access(struct rq *r, struct mg_lineage_access *a) {
  const struct mg_req_info *in = mg_req_info(r->req);
  memset(a, 0, sizeof *a);
  a->request_id = r->request_id;
  a->principal = r->principal;
  if (r->have_id) {
    a->groups = r->id.groups;
    a->ngroups = r->id.ngroups;
    a->client = r->id.client;
    a->token = r->id.token_hash;
  }
  a->peer = in->peer;
  a->product = r->cfg->product;
  a->dataset = r->dataset[0] ? r->dataset : NULL;
  a->action = r->action == MG_ACTION_READ ? "read" : r->action == MG_ACTION_WRITE ? "write" : NULL;
  a->method = in->method;
  a->path = r->canon ? r->canon : NULL;
  a->purpose = r->purpose;
  a->decision = r->decision;
  a->reason = r->reason[0] ? r->reason : NULL;
  a->grant = r->grant[0] ? r->grant : NULL;
  a->policy_revision = r->revision[0] ? r->revision : NULL;
}

static void refuse(struct rq *r, int status, const char *decision, const char *error,
                   const char *detail, const nghttp2_nv *extra, size_t nextra) {
  r->decision = decision;
  if (!r->reason[0]) snprintf(r->reason, sizeof r->reason, "%s", error);
  struct mg_lineage_access a;
  fill_access(r, &a);
  int rv = mg_lineage_submit_access(mg_app->lineage, &a, NULL, NULL, NULL);
  if (rv < 0) {
    static _Atomic int64_t last_log = INT64_MIN / 2;
    atomic_fetch_add(&mg_app->metrics.lineage_failures, 1);
    if (log_allowed(&last_log))
      mg_warn("lineage: could not record refused request %s: %s", r->request_id, mg_strerror(rv));
  }
  answer(r, status, error, detail, extra, nextra);
}

static void unavailable(struct rq *r, int err) {
  static _Atomic int64_t last_log = INT64_MIN / 2;
  uint64_t n = atomic_fetch_add(&mg_app->metrics.lineage_failures, 1) + 1;
  if (log_allowed(&last_log))
    mg_error("lineage: cannot record request %s (%s): refusing with 503 (%llu refused so far)",
             r->request_id, mg_strerror(err), (unsigned long long)n);
  r->decision = "error";
  answer(r, 503, "lineage_unavailable", "the lineage log cannot record this request", NULL, 0);
}

/* ---- forwarding ---- */

static void forward(struct rq *r) {
  nghttp2_nv add[3 + MG_AUTHN_MAX_GROUPS];
  size_t n = 0;
  char traceparent[64];
  char hex[33];
  size_t h = 0;
  for (const char *p = r->request_id; *p; p++)
    if (*p != '-') hex[h++] = *p;
  hex[h] = 0;
  snprintf(traceparent, sizeof traceparent, "00-%s-%.16s-01", hex, hex + 16);
  add[n++] = (nghttp2_nv)NV("x-request-id", r->request_id);
  add[n++] = (nghttp2_nv)NV("traceparent", traceparent);
  if (r->principal) add[n++] = (nghttp2_nv)NV("x-mesh-principal", r->principal);
  if (r->have_id)
    for (size_t i = 0; i < r->id.ngroups && n < MG_ARRAY_LEN(add); i++)
      add[n++] = (nghttp2_nv)NV("x-mesh-group", r->id.groups[i]);
  r->state = RQ_FORWARDED;
  int rv = mg_req_forward(r->req, r->canon, r->canon_len, add, n);
  if (rv < 0) {
    mg_warn("forward of %s failed: %s", r->request_id, mg_strerror(rv));
    r->state = RQ_ANSWERED;
  }
}

static void lineage_done_on_worker(void *arg) {
  struct wake *wk = arg;
  struct mg_req *req = mg_worker_find_req(wk->w, wk->handle);
  if (req) {
    struct rq *r = mg_req_get_data(req);
    if (r && r->state == RQ_WAIT_LINEAGE) {
      if (wk->status < 0) unavailable(r, wk->status);
      else forward(r);
    }
  }
  free(wk);
}

/* Runs on the worker: every commit result queued since the last drain, oldest first. */
static void lineage_drain_on_worker(void *arg) {
  struct pworker *p = arg;
  struct wake *list = atomic_exchange_explicit(&p->done, NULL, memory_order_acquire), *fifo = NULL;
  while (list) {
    struct wake *next = list->next;
    list->next = fifo;
    fifo = list;
    list = next;
  }
  while (fifo) {
    struct wake *next = fifo->next;
    lineage_done_on_worker(fifo);
    fifo = next;
  }
}

/* Runs on the lineage writer thread: hand over, never block. A group commit completes
 * many requests of one worker back to back; only the push that finds the list empty
 * posts (a malloc, a mutex and an event_active), the rest ride along. */
static void lineage_done(void *arg, int status, uint64_t index) {
  struct wake *wk = arg;
  wk->status = status;
  wk->index = index;
  struct pworker *p = mg_worker_get_data(wk->w);
  struct wake *head = atomic_load_explicit(&p->done, memory_order_relaxed);
  do {
    wk->next = head;
  } while (!atomic_compare_exchange_weak_explicit(&p->done, &head, wk, memory_order_release,
                                                  memory_order_relaxed));
  if (!head) mg_worker_post(wk->w, lineage_drain_on_worker, p);
}

static void record_and_forward(struct rq *r) {
  r->decision = "allow";
  struct mg_lineage_access a;
  fill_access(r, &a);
  bool wait = r->cfg->durability == MG_LINEAGE_WRITE_AHEAD;
  struct wake *wk = NULL;
  if (wait) {
    wk = malloc(sizeof *wk);
    if (!wk) { unavailable(r, -12); return; }
    wk->w = r->w;
    wk->handle = r->handle;
  }
  int rv = mg_lineage_submit_access(mg_app->lineage, &a, wait ? lineage_done : NULL, wk, &r->rec);
  if (rv < 0) {
    free(wk);
    r->rec = NULL;
    unavailable(r, rv);
    return;
  }
  if (wait) r->state = RQ_WAIT_LINEAGE;
  else forward(r);
}

/* ---- authentication ---- */

static void jwks_refreshed_on_worker(void *arg) {
  struct wake *wk = arg;
  struct mg_req *req = mg_worker_find_req(wk->w, wk->handle);
  if (req) {
    struct rq *r = mg_req_get_data(req);
    if (r && r->state == RQ_WAIT_JWKS) process(r);
  }
  free(wk);
}

static void jwks_refreshed(void *arg) {
  struct wake *wk = arg;
  mg_worker_post(wk->w, jwks_refreshed_on_worker, wk);
}

/* Returns 1 when authenticated, 0 when the request was answered or is waiting. */
static int authenticate(struct rq *r, struct pworker *pw) {
  const struct mg_req_info *in = mg_req_info(r->req);
  if (in->spiffe && !r->spiffe_principal) {
    size_t n = strlen(in->spiffe);
    if (!(r->spiffe_principal = malloc(n + 8))) {
      answer(r, 503, "overloaded", "out of memory", NULL, 0);
      return 0;
    }
    memcpy(r->spiffe_principal, "spiffe:", 7);
    memcpy(r->spiffe_principal + 7, in->spiffe, n + 1);
  }
  if (r->route->auth == MG_ROUTE_AUTH_MTLS && in->spiffe && !in->authorization) {
    r->principal = r->spiffe_principal;
    return 1;
  }
  static const nghttp2_nv www_missing[] = {NV("www-authenticate", "Bearer error=\"invalid_token\", error_description=\"missing bearer token\"")};
  const char *auth = in->authorization;
  if (!auth) {
    refuse(r, 401, "unauthenticated", "unauthenticated", "missing bearer token", www_missing, 1);
    return 0;
  }
  if (strncasecmp(auth, "Bearer ", 7) != 0) {
    refuse(r, 401, "unauthenticated", "unauthenticated", "authorization is not a bearer token", www_missing, 1);
    return 0;
  }
  const char *tok = auth + 7;
  while (*tok == ' ') tok++;
  char why[96] = "";
  struct mg_authn *an = atomic_load(&mg_app->authn);
  int rv = mg_authn_verify(an, pw->cache, tok, strlen(tok), mg_time_now_us(), &r->id, why, sizeof why);
  if (rv == MG_AUTHN_E_PENDING) {
    struct wake *wk = malloc(sizeof *wk);
    if (wk) {
      wk->w = r->w;
      wk->handle = r->handle;
      r->state = RQ_WAIT_JWKS;
      if (mg_authn_wait_refresh(an, jwks_refreshed, wk) == 0) return 0;
      free(wk);
      r->state = RQ_NEW;
      rv = mg_authn_verify(an, pw->cache, tok, strlen(tok), mg_time_now_us(), &r->id, why, sizeof why);
    }
    if (rv == MG_AUTHN_E_PENDING) { rv = MG_AUTHN_E_INVALID; snprintf(why, sizeof why, "unknown key id"); }
  }
  if (rv < 0) {
    atomic_fetch_add(&mg_app->metrics.jwt_failures, 1);
    snprintf(r->reason, sizeof r->reason, "%s", why[0] ? why : "invalid token");
    char hdr[160];
    snprintf(hdr, sizeof hdr, "Bearer error=\"invalid_token\", error_description=\"%s\"", r->reason);
    nghttp2_nv www[] = {NV("www-authenticate", hdr)};
    if (rv == MG_AUTHN_E_BADSIG) mg_req_count_failed_verify(r->req);
    refuse(r, 401, "unauthenticated", "invalid_token", r->reason, www, 1);
    return 0;
  }
  r->have_id = true;
  r->principal = r->id.user ? r->id.user : r->id.client ? r->id.client : (in->spiffe ? r->spiffe_principal : NULL);
  return 1;
}

/* ---- authorisation ---- */

static int authorize(struct rq *r, struct pworker *pw) {
  const char *principals[4 + MG_AUTHN_MAX_GROUPS];
  size_t n = 0;
  if (r->have_id) {
    if (r->id.user) principals[n++] = r->id.user;
    if (r->id.client) principals[n++] = r->id.client;
    for (size_t i = 0; i < r->id.ngroups && n < MG_ARRAY_LEN(principals) - 1; i++) principals[n++] = r->id.groups[i];
  }
  if (r->spiffe_principal) principals[n++] = r->spiffe_principal;
  struct mg_policy_index *ix = pw_index(pw);
  if (!ix) {
    refuse(r, 503, "error", "policy_unavailable", "no policy loaded", NULL, 0);
    return 0;
  }
  snprintf(r->revision, sizeof r->revision, "%s", mg_policy_index_revision(ix));
  struct mg_policy_request pr = {
    .principals = principals, .nprincipals = n, .product = r->cfg->product,
    .resource = r->canon + 1, .resource_len = r->path_len - 1, .action = r->action,
    .purpose = r->purpose, .now_us = mg_time_now_us(),
  };
  struct mg_policy_decision d;
  mg_policy_decide(ix, &pr, &d);
  if (d.grant_id) snprintf(r->grant, sizeof r->grant, "%s", d.grant_id);
  if (d.allow) return 1;
  const char *reason = mg_policy_reason_str(d.reason);
  snprintf(r->reason, sizeof r->reason, "%s", reason);
  /* the body names the reason class only, never other grants */
  refuse(r, 403, "deny", "forbidden", reason, NULL, 0);
  return 0;
}

/* ---- the request ---- */

static void process(struct rq *r) {
  struct pworker *pw = pw_get(r->w);
  if (!pw) { answer(r, 503, "overloaded", "out of memory", NULL, 0); return; }
  if (r->route->auth != MG_ROUTE_AUTH_NONE) {
    if (!authenticate(r, pw)) return;
    if (!authorize(r, pw)) return;
  } else {
    snprintf(r->reason, sizeof r->reason, "auth:none");
  }
  record_and_forward(r);
}

static struct rq *rq_new(struct mg_worker *w) {
  struct pworker *p = mg_worker_get_data(w);
  if (p && p->free_rq) {
    struct rq *r = p->free_rq;
    p->free_rq = *(struct rq **)r;
    p->nfree--;
    memset(r, 0, sizeof *r);
    return r;
  }
  return calloc(1, sizeof(struct rq));
}

static void rq_free(struct pworker *p, struct rq *r) {
  if (p && p->nfree < RQ_CACHE) {
    *(struct rq **)r = p->free_rq; /* the first bytes of a dead rq hold the link */
    p->free_rq = r;
    p->nfree++;
    return;
  }
  free(r);
}

void mg_pipeline_on_request(struct mg_req *req) {
  const struct mg_req_info *in = mg_req_info(req);
  struct rq *r = rq_new(mg_req_worker(req));
  if (!r) {
    mg_req_respond(req, 503, "application/json", "{\"error\":\"overloaded\",\"detail\":\"out of memory\"}\n", 48, NULL, 0);
    return;
  }
  r->req = req;
  r->w = mg_req_worker(req);
  r->handle = mg_req_handle(req);
  r->cfg = atomic_load_explicit(&mg_app->cfg, memory_order_acquire);
  mg_config_ref(r->cfg);
  mg_uuidv7(r->request_id);
  mg_req_set_data(req, r);

  r->canon = malloc(in->path_len + 1);
  if (!r->canon) { answer(r, 503, "overloaded", "out of memory", NULL, 0); return; }
  const char *why = NULL;
  if (mg_canon_path(in->path, in->path_len, r->canon, in->path_len + 1, &r->path_len, &r->canon_len, &why) != 0) {
    free(r->canon);
    r->canon = NULL;
    snprintf(r->reason, sizeof r->reason, "bad path: %s", why);
    refuse(r, 400, "error", "bad_path", why, NULL, 0);
    return;
  }
  if (in->host && in->authority && strcasecmp(in->host, in->authority) != 0) {
    refuse(r, 400, "error", "bad_request", "host differs from :authority", NULL, 0);
    return;
  }
  if (in->npurposes > 1) {
    refuse(r, 400, "error", "bad_request", "more than one x-mesh-purpose", NULL, 0);
    return;
  }
  r->purpose = in->npurposes == 1 ? in->purposes[0] : NULL;
  if (r->purpose && (!r->purpose[0] || strlen(r->purpose) > 256 ||
                     !mg_utf8_valid(r->purpose, strlen(r->purpose)))) {
    /* not recorded as given: an entry holds valid UTF-8 only, and a refusal must be
     * recorded too */
    r->purpose = NULL;
    refuse(r, 400, "error", "bad_request", "x-mesh-purpose must be 1..256 bytes of UTF-8", NULL, 0);
    return;
  }
  r->route = mg_route_match(r->cfg, r->canon, r->path_len);
  if (!r->route) {
    refuse(r, 404, "error", "not_found", "no route for this path", NULL, 0);
    return;
  }
  mg_route_dataset(r->route, r->canon, r->path_len, r->dataset, sizeof r->dataset);
  r->action = mg_route_action(r->route, in->method, in->content_type, r->canon, r->path_len);
  if (!r->action) {
    static const nghttp2_nv allow[] = {NV("allow", "GET, HEAD, POST, PUT, PATCH, DELETE")};
    refuse(r, 405, "error", "method_not_allowed", "method not allowed on this route", allow, 1);
    return;
  }
  process(r);
}

/* Decimal without printf: the access log and the lineage outcome are per-request work. */
static int append_i64(struct mg_buf *b, int64_t v) {
  char d[24], *p = d + sizeof d;
  uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
  do *--p = (char)('0' + u % 10); while (u /= 10);
  if (v < 0) *--p = '-';
  return mg_buf_append(b, p, (size_t)(d + sizeof d - p));
}

static void access_log(struct rq *r, const struct mg_req_outcome *o, struct pworker *pw) {
  const struct mg_req_info *in = mg_req_info(r->req);
  struct mg_buf *b = pw ? &pw->logq : NULL;
  struct mg_buf local;
  if (!b) { mg_buf_init(&local); b = &local; }
  size_t start = b->len;
  char ts[MG_RFC3339_LEN];
  size_t tl = mg_time_format_rfc3339(mg_time_now_us(), ts);
  mg_buf_appends(b, "{\"time\":\"");
  mg_buf_append(b, ts, tl);
  mg_buf_appends(b, "\",\"type\":\"access\",\"request_id\":\"");
  mg_buf_appends(b, r->request_id);
  mg_buf_appends(b, "\",\"principal\":");
  if (r->principal) mg_buf_append_json_str(b, r->principal, strlen(r->principal));
  else mg_buf_appends(b, "null");
  mg_buf_appends(b, ",\"method\":");
  mg_buf_append_json_str(b, in->method, strlen(in->method));
  mg_buf_appends(b, ",\"path\":");
  if (r->canon) mg_buf_append_json_str(b, r->canon, r->canon_len);
  else mg_buf_append_json_str(b, in->path, in->path_len);
  mg_buf_appends(b, ",\"status\":");
  append_i64(b, o->status);
  mg_buf_appends(b, ",\"decision\":\"");
  mg_buf_appends(b, r->decision ? r->decision : "none");
  mg_buf_appends(b, "\",\"duration_us\":");
  append_i64(b, o->duration_us > INT64_MAX ? INT64_MAX : (int64_t)o->duration_us);
  if (o->reset >= 0) {
    mg_buf_appends(b, ",\"reset\":");
    append_i64(b, (int64_t)o->reset);
  }
  if (mg_buf_appends(b, "}\n") != 0) { /* out of memory: drop this line, keep the rest */
    b->len = start;
    return;
  }
  if (b == &local) {
    mg_log_lines(local.data, local.len);
    mg_buf_clear(&local);
  } else if (b->len >= LOGQ_MAX) {
    log_flush(pw);
  } else if (start == 0) {
    mg_worker_later(r->w);
  }
}

void mg_pipeline_on_close(struct mg_req *req, const struct mg_req_outcome *o) {
  struct rq *r = mg_req_get_data(req);
  if (!r) return;
  struct pworker *pw = mg_worker_get_data(r->w);
  if (r->rec) {
    if (o->forwarded) {
      struct mg_lineage_outcome oc = {
        .request_id = r->request_id, .status = o->status, .reset = o->reset,
        .bytes_in = o->bytes_in, .bytes_out = o->bytes_out, .duration_us = o->duration_us,
      };
      int rv = mg_lineage_submit_outcome(mg_app->lineage, r->rec, &oc);
      if (rv < 0) mg_warn("lineage: outcome of %s not recorded: %s", r->request_id, mg_strerror(rv));
    } else {
      mg_lineage_rec_unref(r->rec);
    }
    r->rec = NULL;
  }
  mg_metrics_observe(&mg_app->metrics, decision_kind(r->decision), o->status, o->duration_us);
  access_log(r, o, pw);
  if (r->have_id) mg_authn_identity_release(&r->id);
  free(r->canon);
  free(r->spiffe_principal);
  mg_config_unref(r->cfg);
  rq_free(pw, r);
  mg_req_set_data(req, NULL);
}
