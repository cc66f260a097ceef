/*
 * admin.c — the admin API's router, caller authentication/roles and handlers (SPEC "Admin
 * API"). Transport-free: admin_http.c hands over whole requests (struct mg_admin_req) and
 * sends back struct mg_admin_resp, for HTTP/1.1 and HTTP/2 alike.
 *
 * Design choices:
 *   - Routing happens before authentication, so an unknown path is 404 and a wrong method
 *     is 405 (with Allow) for anyone; public routes (health, readiness, metrics, checkpoint,
 *     proof) never look at credentials.
 *   - Owners are checked by the store itself (expect_product): both the stored and the new
 *     grant must be of the owner's product, inside the same write transaction, so an owner
 *     can neither move a grant into nor out of its product.
 *   - Every edit writes its policy-write lineage entry from the store's edit hook, i.e.
 *     inside the write transaction, and waits for it to be durable; a lineage failure
 *     aborts the edit (503), so no edit is ever committed without its entry.
 *   - The lineage export runs in its own thread writing into a pipe; the transport forwards
 *     the read end with backpressure, so an export is never held in memory. A client that
 *     goes away closes the read end and the export thread stops on EPIPE.
 *   - A token whose kid is unknown starts a JWKS refresh (MG_AUTHN_E_PENDING); the admin
 *     thread waits for it, bounded (3 s), then answers 503 with Retry-After. Admin traffic
 *     is rare, so a short block of the admin loop is acceptable and keeps handlers simple.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "sidecar/admin_int.h"
#include "sidecar/canon.h"

#define JSON_MAX_DEPTH 16
#define LINEAGE_WAIT_MS 10000
#define JWKS_WAIT_MS 3000
#define MAX_DECIDE_PRINCIPALS 256
#define MAX_MATCHING 64

/* ---- request / response helpers ---------------------------------------- */

void mg_admin_req_init(struct mg_admin_req *rq) {
  memset(rq, 0, sizeof *rq);
  mg_buf_init(&rq->body);
}

void mg_admin_req_clear(struct mg_admin_req *rq) {
  for (size_t i = 0; i < rq->nhdrs; i++) {
    free(rq->hdrs[i].name);
    free(rq->hdrs[i].value);
  }
  free(rq->hdrs);
  free(rq->target);
  mg_buf_clear(&rq->body);
  mg_admin_req_init(rq);
}

int mg_admin_req_add_header(struct mg_admin_req *rq, const char *name, size_t nlen,
                            const char *value, size_t vlen) {
  if (rq->nhdrs == rq->caphdrs) {
    size_t cap = rq->caphdrs ? rq->caphdrs * 2 : 16;
    struct mg_admin_hdr *h = realloc(rq->hdrs, cap * sizeof *h);
    if (!h) return -ENOMEM;
    rq->hdrs = h;
    rq->caphdrs = cap;
  }
  char *n = strndup(name, nlen), *v = strndup(value, vlen);
  if (!n || !v) {
    free(n);
    free(v);
    return -ENOMEM;
  }
  for (char *p = n; *p; p++)
    if (*p >= 'A' && *p <= 'Z') *p = (char)(*p + 32);
  rq->hdrs[rq->nhdrs].name = n;
  rq->hdrs[rq->nhdrs].value = v;
  rq->nhdrs++;
  return 0;
}

const char *mg_admin_req_header(const struct mg_admin_req *rq, const char *name) {
  for (size_t i = 0; i < rq->nhdrs; i++)
    if (strcmp(rq->hdrs[i].name, name) == 0) return rq->hdrs[i].value;
  return NULL;
}

void mg_admin_resp_init(struct mg_admin_resp *rs) {
  memset(rs, 0, sizeof *rs);
  mg_buf_init(&rs->body);
  rs->ctype = "application/json";
}

void mg_admin_resp_clear(struct mg_admin_resp *rs) {
  for (size_t i = 0; i < rs->nhdrs; i++) free(rs->hdrs[i].value);
  mg_buf_clear(&rs->body);
  if (rs->stream) mg_admin_stream_unref(rs->stream);
  mg_admin_resp_init(rs);
}

int mg_admin_resp_header(struct mg_admin_resp *rs, const char *name, const char *value) {
  if (rs->nhdrs == MG_ADMIN_MAX_RESP_HDRS) return MG_ERR_TOOBIG;
  char *v = strdup(value);
  if (!v) return -ENOMEM;
  rs->hdrs[rs->nhdrs].name = (char *)name; /* static names only */
  rs->hdrs[rs->nhdrs].value = v;
  rs->nhdrs++;
  return 0;
}

void mg_admin_resp_error(struct mg_admin_resp *rs, int status, const char *code,
                         const char *detail) {
  mg_buf_reset(&rs->body);
  rs->status = status;
  rs->ctype = "application/json";
  mg_buf_appends(&rs->body, "{\"error\":");
  mg_buf_append_json_str(&rs->body, code, strlen(code));
  mg_buf_appends(&rs->body, ",\"detail\":");
  /* details may quote client input: keep the response valid JSON whatever it holds */
  const char *d = detail ? detail : "";
  size_t dl = strlen(d);
  if (!mg_utf8_valid(d, dl)) d = "(detail not UTF-8)", dl = strlen(d);
  mg_buf_append_json_str(&rs->body, d, dl);
  mg_buf_appends(&rs->body, "}\n");
}

static void resp_errorf(struct mg_admin_resp *rs, int status, const char *code,
                        const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void resp_errorf(struct mg_admin_resp *rs, int status, const char *code,
                        const char *fmt, ...) {
  char detail[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(detail, sizeof detail, fmt, ap);
  va_end(ap);
  mg_admin_resp_error(rs, status, code, detail);
}

const char *mg_admin_status_text(int status) {
  switch (status) {
  case 200: return "OK";
  case 201: return "Created";
  case 204: return "No Content";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 412: return "Precondition Failed";
  case 413: return "Content Too Large";
  case 428: return "Precondition Required";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 503: return "Service Unavailable";
  case 505: return "HTTP Version Not Supported";
  case 507: return "Insufficient Storage";
  default: return "Unknown";
  }
}

static int hexval(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

int mg_admin_pct_decode(const char *s, size_t n, char **out) {
  char *o = malloc(n + 1);
  if (!o) return -ENOMEM;
  size_t j = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '%') {
      int h, l;
      if (i + 2 >= n) goto invalid; /* fewer than two characters follow */
      h = hexval((unsigned char)s[i + 1]);
      l = hexval((unsigned char)s[i + 2]);
      if (h < 0 || l < 0) goto invalid;
      c = (unsigned char)(h * 16 + l);
      i += 2;
      if (c == 0) goto invalid;
    }
    if (c < 0x20 || c == 0x7f) goto invalid;
    o[j++] = (char)c;
  }
  o[j] = 0;
  if (!mg_utf8_valid(o, j)) goto invalid;
  *out = o;
  return 0;
invalid:
  free(o);
  return MG_ERR_INVALID;
}

/* ---- JSON input ---------------------------------------------------------- */

/* Nesting depth of a JSON text, counted outside strings, before jansson sees it (jansson's
 * own limit is 2048, far more than any admin body needs). */
static bool json_depth_ok(const char *s, size_t n, int max) {
  int depth = 0;
  bool str = false;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (str) {
      if (c == '\\') i++;
      else if (c == '"') str = false;
      continue;
    }
    if (c == '"') str = true;
    else if (c == '{' || c == '[') {
      if (++depth > max) return false;
    } else if (c == '}' || c == ']') depth--;
  }
  return true;
}

/* Parses a request body as one JSON object: duplicate keys, trailing data, invalid UTF-8,
 * deep nesting and numbers out of range are 400s. */
static json_t *body_object(const struct mg_admin_req *rq, struct mg_admin_resp *rs) {
  if (rq->body.len == 0) {
    mg_admin_resp_error(rs, 400, "invalid_json", "request body is empty");
    return NULL;
  }
  if (!json_depth_ok(rq->body.data, rq->body.len, JSON_MAX_DEPTH)) {
    mg_admin_resp_error(rs, 400, "invalid_json", "nesting too deep");
    return NULL;
  }
  json_error_t e;
  json_t *j = json_loadb(rq->body.data, rq->body.len, JSON_REJECT_DUPLICATES, &e);
  if (!j) {
    resp_errorf(rs, 400, "invalid_json", "%d:%d: %s", e.line, e.column, e.text);
    return NULL;
  }
  if (!json_is_object(j)) {
    json_decref(j);
    mg_admin_resp_error(rs, 400, "invalid_json", "/: expected an object");
    return NULL;
  }
  return j;
}

/* Rejects members not listed in `allowed` (NULL-terminated). */
static bool only_fields(json_t *o, const char *const *allowed, struct mg_admin_resp *rs) {
  const char *k;
  json_t *v;
  json_object_foreach(o, k, v) {
    bool ok = false;
    for (size_t i = 0; allowed[i]; i++)
      if (strcmp(k, allowed[i]) == 0) ok = true;
    if (!ok) {
      resp_errorf(rs, 400, "invalid_request", "/%s: unknown field", k);
      return false;
    }
  }
  return true;
}

/* ---- query strings ------------------------------------------------------- */

struct qparam {
  const char *name;
  char *value; /* decoded, or NULL when absent */
};

/* Parses "a=1&b=2" into params[] (names fixed by the caller); unknown, duplicate or
 * malformed parameters are 400. */
static int parse_query(const char *q, struct qparam *params, size_t np,
                       struct mg_admin_resp *rs) {
  if (!q) return 0;
  const char *p = q;
  while (*p) {
    const char *amp = strchr(p, '&');
    size_t len = amp ? (size_t)(amp - p) : strlen(p);
    if (len > 0) {
      const char *eq = memchr(p, '=', len);
      size_t nlen = eq ? (size_t)(eq - p) : len;
      const char *v = eq ? eq + 1 : p + len;
      size_t vlen = eq ? len - nlen - 1 : 0;
      struct qparam *hit = NULL;
      for (size_t i = 0; i < np; i++)
        if (strlen(params[i].name) == nlen && memcmp(params[i].name, p, nlen) == 0)
          hit = &params[i];
      if (!hit) {
        resp_errorf(rs, 400, "invalid_request", "unknown query parameter '%.*s'",
                    (int)MG_MIN(nlen, 64), p);
        return -1;
      }
      if (hit->value) {
        resp_errorf(rs, 400, "invalid_request", "query parameter '%s' given twice", hit->name);
        return -1;
      }
      if (mg_admin_pct_decode(v, vlen, &hit->value) != 0) {
        resp_errorf(rs, 400, "invalid_request", "query parameter '%s': bad encoding", hit->name);
        return -1;
      }
    }
    if (!amp) break;
    p = amp + 1;
  }
  return 0;
}

static void free_query(struct qparam *params, size_t np) {
  for (size_t i = 0; i < np; i++) {
    free(params[i].value);
    params[i].value = NULL;
  }
}

static int parse_u64(const char *s, uint64_t *out) {
  if (!s || !*s || strlen(s) > 20) return MG_ERR_INVALID;
  uint64_t v = 0;
  for (const char *p = s; *p; p++) {
    if (*p < '0' || *p > '9') return MG_ERR_INVALID;
    uint64_t d = (uint64_t)(*p - '0');
    if (v > (UINT64_MAX - d) / 10) return MG_ERR_INVALID;
    v = v * 10 + d;
  }
  *out = v;
  return 0;
}

/* ---- callers and roles --------------------------------------------------- */

struct caller {
  bool admin, auditor;
  bool have_id;
  struct mg_authn_identity id;
  char editor[600];
  const char *principals[MG_AUTHN_MAX_GROUPS + 4];
  size_t nprincipals;
};

static void caller_clear(struct caller *cl) {
  if (cl->have_id) mg_authn_identity_release(&cl->id);
  cl->have_id = false;
}

static bool iss_may_admin(const struct mg_config *cfg, const char *iss) {
  if (!iss) return false;
  if (cfg->admin_issuers) {
    for (size_t i = 0; i < cfg->nadmin_issuers; i++)
      if (strcmp(cfg->admin_issuers[i], iss) == 0) return true;
    return false;
  }
  return cfg->nissuers > 0 && cfg->issuers[0].issuer && strcmp(cfg->issuers[0].issuer, iss) == 0;
}

/* "group:corp/x" -> "group:x": principals of a multi-issuer setup without the issuer name,
 * so that owners may come from any configured issuer. */
static bool strip_issuer(const char *p, const char *issuer_name, char *out, size_t outlen) {
  if (!issuer_name) return false;
  const char *colon = strchr(p, ':');
  if (!colon) return false;
  size_t nl = strlen(issuer_name);
  if (strncmp(colon + 1, issuer_name, nl) != 0 || colon[1 + nl] != '/') return false;
  int n = snprintf(out, outlen, "%.*s%s", (int)(colon - p + 1), p, colon + 2 + nl);
  return n > 0 && (size_t)n < outlen;
}

/* True when principal p equals the owners template with every "{product}" replaced by
 * product. */
static bool template_match(const char *tmpl, const char *product, const char *p) {
  const char *t = tmpl;
  size_t plen = strlen(product);
  while (*t) {
    if (strncmp(t, "{product}", 9) == 0) {
      if (strncmp(p, product, plen) != 0) return false;
      p += plen;
      t += 9;
    } else {
      if (*p != *t) return false;
      p++;
      t++;
    }
  }
  return *p == 0;
}

static bool owner_of(const struct mg_config *cfg, const struct caller *cl, const char *product) {
  if (!cfg->owners || !product || !*product || !cl->have_id) return false;
  for (size_t i = 0; i < cl->nprincipals; i++) {
    char alt[600];
    if (template_match(cfg->owners, product, cl->principals[i])) return true;
    if (strip_issuer(cl->principals[i], cl->id.issuer_name, alt, sizeof alt) &&
        template_match(cfg->owners, product, alt))
      return true;
  }
  return false;
}

/* Whether the caller owns some product (the template with one "{product}" matches a
 * non-empty middle of one of its principals). */
static bool owner_any(const struct mg_config *cfg, const struct caller *cl) {
  if (!cfg->owners || !cl->have_id) return false;
  const char *ph = strstr(cfg->owners, "{product}");
  if (!ph) return false;
  size_t pre = (size_t)(ph - cfg->owners), suf = strlen(ph + 9);
  for (size_t i = 0; i < cl->nprincipals; i++) {
    char alt[600];
    const char *cands[2] = {cl->principals[i], NULL};
    if (strip_issuer(cl->principals[i], cl->id.issuer_name, alt, sizeof alt)) cands[1] = alt;
    for (int k = 0; k < 2 && cands[k]; k++) {
      size_t n = strlen(cands[k]);
      if (n > pre + suf && strncmp(cands[k], cfg->owners, pre) == 0 &&
          strcmp(cands[k] + n - suf, ph + 9) == 0)
        return true;
    }
  }
  return false;
}

/* A heap waiter shared with a callback that may fire after the waiting side gave up. */
struct waiter {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int refs;
  bool done;
  int status;
  uint64_t index;
};

static struct waiter *waiter_new(void) {
  struct waiter *w = calloc(1, sizeof *w);
  if (!w) return NULL;
  pthread_mutex_init(&w->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&w->cv, &ca);
  pthread_condattr_destroy(&ca);
  w->refs = 2;
  return w;
}

static void waiter_unref(struct waiter *w) {
  pthread_mutex_lock(&w->mu);
  int left = --w->refs;
  pthread_mutex_unlock(&w->mu);
  if (left == 0) {
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
  }
}

static void waiter_signal(struct waiter *w, int status, uint64_t index) {
  pthread_mutex_lock(&w->mu);
  w->done = true;
  w->status = status;
  w->index = index;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
  waiter_unref(w);
}

/* Waits up to ms; returns true when signalled. */
static bool waiter_wait(struct waiter *w, int ms, int *status) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  ts.tv_sec += ms / 1000;
  ts.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&w->mu);
  while (!w->done)
    if (pthread_cond_timedwait(&w->cv, &w->mu, &ts) == ETIMEDOUT) break;
  bool done = w->done;
  if (status) *status = w->status;
  pthread_mutex_unlock(&w->mu);
  waiter_unref(w);
  return done;
}

static void jwks_refreshed(void *arg) { waiter_signal(arg, 0, 0); }

/* Authenticates the caller. 0, or -1 with rs filled (401 / 503). */
static int authenticate(struct mg_admin_ctx *c, const struct mg_admin_req *rq,
                        struct mg_admin_resp *rs, struct caller *cl) {
  const struct mg_config *cfg = c->app->cfg;
  const char *authz = mg_admin_req_header(rq, "authorization");

  if (rq->peer_spiffe && cfg->admin_tls && cfg->admin_tls->client_ca) {
    for (size_t i = 0; i < cfg->admin_tls->nallowed_spiffe; i++)
      if (strcmp(cfg->admin_tls->allowed_spiffe[i], rq->peer_spiffe) == 0) cl->admin = true;
    snprintf(cl->editor, sizeof cl->editor, "spiffe:%s", rq->peer_spiffe);
  }
  if (!authz) {
    if (cl->admin) return 0;
    mg_admin_resp_error(rs, 401, "unauthenticated", "a bearer token is required");
    mg_admin_resp_header(rs, "www-authenticate", "Bearer");
    return -1;
  }
  struct mg_authn *an = atomic_load(&c->app->authn);
  if (strncasecmp(authz, "Bearer ", 7) != 0 || !authz[7] || !an) {
    mg_admin_resp_error(rs, 401, "invalid_token", "expected 'Authorization: Bearer <token>'");
    mg_admin_resp_header(rs, "www-authenticate", "Bearer error=\"invalid_token\"");
    return -1;
  }
  const char *tok = authz + 7;
  size_t toklen = strlen(tok);
  char reason[128] = "invalid token";
  int rc = MG_AUTHN_E_PENDING;
  for (int attempt = 0; attempt < 2 && rc == MG_AUTHN_E_PENDING; attempt++) {
    rc = mg_authn_verify(an, c->cache, tok, toklen, mg_time_now_us(), &cl->id,
                         reason, sizeof reason);
    if (rc == MG_AUTHN_E_PENDING && attempt == 0) {
      struct waiter *w = waiter_new();
      if (!w) break;
      int wr = mg_authn_wait_refresh(an, jwks_refreshed, w);
      if (wr == -EALREADY) {
        waiter_unref(w); /* the callback never runs */
        waiter_unref(w);
        continue;
      }
      if (wr != 0) {
        waiter_unref(w);
        waiter_unref(w);
        break;
      }
      waiter_wait(w, JWKS_WAIT_MS, NULL);
    }
  }
  if (rc == MG_AUTHN_E_PENDING) {
    mg_admin_resp_error(rs, 503, "unavailable", "signing keys are being refreshed; retry");
    mg_admin_resp_header(rs, "retry-after", "1");
    return -1;
  }
  if (rc != 0) {
    char hdr[200];
    atomic_fetch_add(&c->app->metrics.jwt_failures, 1);
    char safe[128];
    size_t k = 0;
    /* the reason goes into a quoted-string: no quotes, backslashes or control bytes */
    for (const char *p = reason; *p && k + 1 < sizeof safe; p++)
      safe[k++] = (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20 || *p == 0x7f) ? '\'' : *p;
    safe[k] = 0;
    snprintf(hdr, sizeof hdr, "Bearer error=\"invalid_token\", error_description=\"%s\"", safe);
    mg_admin_resp_error(rs, 401, "invalid_token", reason);
    mg_admin_resp_header(rs, "www-authenticate", hdr);
    return -1;
  }
  cl->have_id = true;
  if (iss_may_admin(cfg, cl->id.iss)) {
    if (cfg->admin_claim.claim &&
        mg_authn_claim_matches(&cl->id, cfg->admin_claim.claim, cfg->admin_claim.value))
      cl->admin = true;
    if (cfg->auditor_claim.claim &&
        mg_authn_claim_matches(&cl->id, cfg->auditor_claim.claim, cfg->auditor_claim.value))
      cl->auditor = true;
  }
  if (cl->id.user) cl->principals[cl->nprincipals++] = cl->id.user;
  for (size_t i = 0; i < cl->id.ngroups && i < MG_AUTHN_MAX_GROUPS; i++)
    cl->principals[cl->nprincipals++] = cl->id.groups[i];
  if (cl->id.client) cl->principals[cl->nprincipals++] = cl->id.client;
  snprintf(cl->editor, sizeof cl->editor, "%s",
           cl->id.user ? cl->id.user : cl->id.client ? cl->id.client : "unknown");
  return 0;
}

static void forbidden(struct mg_admin_resp *rs, const char *what) {
  resp_errorf(rs, 403, "forbidden", "the caller may not %s", what);
}

/* ---- edits: lineage first ------------------------------------------------ */

struct edit {
  struct mg_admin_ctx *c;
  const char *editor;
  const char *product;
  int lineage_err;     /* nonzero when the lineage entry could not be written */
};

static void policy_entry_done(void *arg, int status, uint64_t index) {
  waiter_signal(arg, status, index);
}

/* Store hook, inside the write transaction: the policy-write entry must be durable before
 * the edit commits. */
static int edit_hook(void *arg, const char *grant_id, const char *old_json,
                     const char *new_json, const char *old_rev, const char *new_rev) {
  struct edit *e = arg;
  (void)old_json;
  (void)new_json;
  struct mg_lineage_writer *w = e->c->app->lineage;
  if (!w) {
    e->lineage_err = MG_LINEAGE_E_CLOSED;
    return e->lineage_err;
  }
  char rid[37];
  mg_uuidv7(rid);
  struct mg_lineage_policy_write p = {.request_id = rid, .editor = e->editor,
                                      .product = e->product, .grant = grant_id,
                                      .old_revision = old_rev, .new_revision = new_rev};
  struct waiter *wt = waiter_new();
  if (!wt) return (e->lineage_err = -ENOMEM);
  int rc = mg_lineage_submit_policy(w, &p, policy_entry_done, wt);
  if (rc != 0) {
    waiter_unref(wt);
    waiter_unref(wt);
    e->lineage_err = rc;
    return rc;
  }
  int status = 0;
  if (!waiter_wait(wt, LINEAGE_WAIT_MS, &status)) status = -ETIMEDOUT;
  if (status != 0) {
    e->lineage_err = status;
    mg_warn("admin: policy edit of %s refused: lineage entry not written: %s", grant_id,
            mg_strerror(status));
    atomic_fetch_add(&e->c->app->metrics.lineage_failures, 1);
  }
  return status;
}

/* Maps a store error of an edit to a response. */
static void edit_error(struct mg_admin_resp *rs, const struct edit *e, int rc,
                       const char *id) {
  if (e && e->lineage_err) {
    resp_errorf(rs, 503, "lineage_unavailable",
                "the edit was not applied: its lineage entry could not be written (%s)",
                mg_strerror(e->lineage_err));
    mg_admin_resp_header(rs, "retry-after", "1");
    return;
  }
  switch (rc) {
  case MG_POLICY_E_NOTFOUND: resp_errorf(rs, 404, "not_found", "no grant '%s'", id); break;
  case MG_POLICY_E_PRECONDITION:
    mg_admin_resp_error(rs, 412, "precondition_failed", "If-Match does not match the stored grant");
    break;
  case MG_POLICY_E_EXISTS:
    resp_errorf(rs, 412, "precondition_failed", "grant '%s' already exists (If-None-Match: *)", id);
    break;
  case MG_POLICY_E_FULL:
    mg_admin_resp_error(rs, 507, "insufficient_storage",
                        "the policy store is full; the current policy keeps serving");
    break;
  case MG_POLICY_E_PRODUCT:
    mg_admin_resp_error(rs, 403, "forbidden",
                        "owners may only edit grants of their own product (stored and new)");
    break;
  case MG_POLICY_E_INVALID:
    mg_admin_resp_error(rs, 400, "invalid_grant", "the grant is invalid");
    break;
  default:
    resp_errorf(rs, 503, "store_unavailable", "policy store: %s", mg_strerror(rc));
    break;
  }
}

static void diag_error(struct mg_admin_resp *rs, const struct mg_policy_diag *d,
                       const char *prefix) {
  struct mg_buf b;
  mg_buf_init(&b);
  for (size_t i = 0; i < d->n && i < 32; i++) {
    if (i) mg_buf_appends(&b, "; ");
    mg_buf_appendf(&b, "%s%s", prefix, d->msgs[i]);
  }
  if (d->n == 0) mg_buf_appends(&b, "invalid grant");
  mg_admin_resp_error(rs, 400, "invalid_grant", b.data ? b.data : "invalid grant");
  mg_buf_clear(&b);
}

/* After a committed edit. If the index cannot be rebuilt, the edit is in the store but
 * not in force: the answer says so (500, whatever success it would have been), /readyz
 * says so, and every admin call retries the rebuild until it succeeds. */
static void rebuild_index(struct mg_admin_ctx *c, struct mg_admin_resp *rs) {
  int rc = mg_app_index_rebuild(c->app);
  if (rc == 0) return;
  mg_error("admin: policy index rebuild failed: %s", mg_strerror(rc));
  resp_errorf(rs, 500, "not_in_force",
              "the edit is committed but not in force: the policy index could not be rebuilt "
              "(%s); the previous policy decides until a rebuild succeeds (retried on every "
              "admin call, see /readyz)", mg_strerror(rc));
}

/* Product of a grant's canonical JSON (caller frees), or NULL. */
static char *json_product(const char *json) {
  json_t *j = json_loads(json, 0, NULL);
  const char *p = j ? json_string_value(json_object_get(j, "product")) : NULL;
  char *out = p ? strdup(p) : NULL;
  json_decref(j);
  return out;
}

static bool valid_grant_id(const char *id) {
  size_t n = strlen(id);
  if (n == 0 || n > 128) return false;
  for (size_t i = 0; i < n; i++) {
    char ch = id[i];
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
          ch == '.' || ch == '_' || ch == ':' || ch == '-'))
      return false;
  }
  return true;
}

/* An entity tag from If-Match: one strong tag (weak tags never match for If-Match), or "*". */
static char *etag_arg(const char *v, struct mg_admin_resp *rs) {
  while (*v == ' ' || *v == '\t') v++;
  size_t n = strlen(v);
  while (n && (v[n - 1] == ' ' || v[n - 1] == '\t')) n--;
  if (n == 0 || n >= MG_POLICY_ETAG_LEN + 4 || memchr(v, ',', n)) {
    mg_admin_resp_error(rs, 400, "invalid_request", "If-Match: expected one entity tag");
    return NULL;
  }
  return strndup(v, n);
}

/* ---- handlers: grants ----------------------------------------------------- */

struct list_ctx {
  struct mg_buf *b;
  const struct mg_config *cfg;
  const struct caller *cl;
  bool filter_owned;
  size_t n;
};

static int list_cb(void *arg, const struct mg_grant *g, const char *json, const char *etag) {
  struct list_ctx *l = arg;
  (void)etag;
  if (l->filter_owned && !owner_of(l->cfg, l->cl, g->product)) return 0;
  if (l->n++) mg_buf_appends(l->b, ",");
  mg_buf_appends(l->b, json);
  return 0;
}

static void h_list(struct mg_admin_ctx *c, const struct mg_admin_req *rq, const char *query,
                   struct mg_admin_resp *rs, struct caller *cl) {
  const struct mg_config *cfg = c->app->cfg;
  struct qparam qp[] = {{"product", NULL}, {"subject", NULL}};
  if (parse_query(query, qp, 2, rs) != 0) goto out;
  bool all = cl->admin || cl->auditor;
  if (!all) {
    if (qp[0].value ? !owner_of(cfg, cl, qp[0].value) : !owner_any(cfg, cl)) {
      forbidden(rs, "list these grants");
      goto out;
    }
  }
  char rev[MG_POLICY_REVISION_LEN];
  uint64_t gen = 0;
  int rc = mg_policy_store_revision(c->app->policy, rev, &gen);
  if (rc != 0) {
    edit_error(rs, NULL, rc, "");
    goto out;
  }
  mg_buf_reset(&rs->body);
  mg_buf_appendf(&rs->body, "{\"revision\":\"%s\",\"generation\":%llu,\"grants\":[", rev,
                 (unsigned long long)gen);
  struct list_ctx l = {.b = &rs->body, .cfg = cfg, .cl = cl, .filter_owned = !all};
  rc = mg_policy_store_list(c->app->policy, qp[0].value, qp[1].value, list_cb, &l);
  if (rc != 0) {
    edit_error(rs, NULL, rc, "");
    goto out;
  }
  mg_buf_appends(&rs->body, "]}\n");
  rs->status = 200;
out:
  free_query(qp, 2);
  (void)rq;
}

static void h_get(struct mg_admin_ctx *c, const char *id, struct mg_admin_resp *rs,
                  struct caller *cl) {
  char *json = NULL, *product = NULL;
  char etag[MG_POLICY_ETAG_LEN];
  int rc = mg_policy_store_get(c->app->policy, id, &json, etag);
  if (rc != 0) {
    edit_error(rs, NULL, rc, id);
    goto out;
  }
  if (!cl->admin && !cl->auditor) {
    product = json_product(json);
    if (!owner_of(c->app->cfg, cl, product)) {
      forbidden(rs, "read this grant");
      goto out;
    }
  }
  mg_buf_reset(&rs->body);
  mg_buf_appends(&rs->body, json);
  mg_buf_appends(&rs->body, "\n");
  mg_admin_resp_header(rs, "etag", etag);
  rs->status = 200;
out:
  free(json);
  free(product);
}

static void h_put(struct mg_admin_ctx *c, const struct mg_admin_req *rq, const char *id,
                  struct mg_admin_resp *rs, struct caller *cl) {
  struct mg_grant *g = NULL;
  struct mg_policy_diag diag = {0};
  char *ifm = NULL, *json = NULL;
  const char *h_ifm = mg_admin_req_header(rq, "if-match");
  const char *h_inm = mg_admin_req_header(rq, "if-none-match");

  if (!cl->admin && !owner_any(c->app->cfg, cl)) {
    forbidden(rs, "edit grants");
    goto out;
  }
  if (rq->body.len == 0) {
    mg_admin_resp_error(rs, 400, "invalid_grant", "request body is empty");
    goto out;
  }
  if (!json_depth_ok(rq->body.data, rq->body.len, JSON_MAX_DEPTH)) {
    mg_admin_resp_error(rs, 400, "invalid_json", "nesting too deep");
    goto out;
  }
  int rc = mg_policy_grant_parse(rq->body.data, rq->body.len, "", &g, &diag);
  if (rc != 0) {
    diag_error(rs, &diag, "");
    goto out;
  }
  if (strcmp(g->id, id) != 0) {
    resp_errorf(rs, 400, "invalid_grant", "/id: \"%s\" differs from the id in the path", g->id);
    goto out;
  }
  struct mg_policy_precond pc = {0};
  if (h_inm) {
    const char *v = h_inm;
    while (*v == ' ') v++;
    if (strncmp(v, "*", 1) != 0 || v[1 + strspn(v + 1, " \t")] != 0) {
      mg_admin_resp_error(rs, 400, "invalid_request", "If-None-Match: only '*' is supported");
      goto out;
    }
    pc.if_none_match = true;
  }
  if (h_ifm) {
    if (!(ifm = etag_arg(h_ifm, rs))) goto out;
    if (strcmp(ifm, "*") == 0) {
      /* "*": the grant must exist, whatever its tag */
      char etag[MG_POLICY_ETAG_LEN];
      rc = mg_policy_store_get(c->app->policy, id, &json, etag);
      if (rc == MG_POLICY_E_NOTFOUND) rc = MG_POLICY_E_PRECONDITION;
      if (rc != 0) {
        edit_error(rs, NULL, rc, id);
        goto out;
      }
      free(ifm);
      ifm = strdup(etag);
    }
    pc.if_match = ifm;
  }
  if (!pc.if_match && !pc.if_none_match) {
    mg_admin_resp_error(rs, 428, "precondition_required",
                        "use If-None-Match: * to create or If-Match: <etag> to replace");
    goto out;
  }
  const char *expect = NULL;
  if (!cl->admin) {
    if (!owner_of(c->app->cfg, cl, g->product)) {
      resp_errorf(rs, 403, "forbidden", "the caller does not own product \"%s\"", g->product);
      goto out;
    }
    expect = g->product;
  }
  struct edit e = {.c = c, .editor = cl->editor, .product = g->product};
  char etag[MG_POLICY_ETAG_LEN];
  bool created = false;
  rc = mg_policy_store_put(c->app->policy, g, &pc, expect, edit_hook, &e, etag, &created);
  if (rc != 0) {
    edit_error(rs, &e, rc, id);
    goto out;
  }
  char *canon = mg_policy_grant_to_json(g);
  mg_buf_reset(&rs->body);
  if (canon) mg_buf_appends(&rs->body, canon);
  mg_buf_appends(&rs->body, "\n");
  free(canon);
  mg_admin_resp_header(rs, "etag", etag);
  rs->status = created ? 201 : 200;
  rebuild_index(c, rs);
out:
  mg_policy_diag_clear(&diag);
  if (g) mg_policy_grant_free(g);
  free(ifm);
  free(json);
}

static void h_delete(struct mg_admin_ctx *c, const struct mg_admin_req *rq, const char *id,
                     struct mg_admin_resp *rs, struct caller *cl) {
  char *json = NULL, *product = NULL, *ifm = NULL;
  char etag[MG_POLICY_ETAG_LEN];
  const char *h_ifm = mg_admin_req_header(rq, "if-match");

  if (!cl->admin && !owner_any(c->app->cfg, cl)) {
    forbidden(rs, "edit grants");
    goto out;
  }
  int rc = mg_policy_store_get(c->app->policy, id, &json, etag);
  if (rc != 0) {
    edit_error(rs, NULL, rc, id);
    goto out;
  }
  product = json_product(json);
  const char *expect = NULL;
  if (!cl->admin) {
    if (!owner_of(c->app->cfg, cl, product)) {
      forbidden(rs, "delete this grant");
      goto out;
    }
    expect = product;
  }
  if (!h_ifm) {
    mg_admin_resp_error(rs, 428, "precondition_required", "DELETE needs If-Match: <etag>");
    goto out;
  }
  if (!(ifm = etag_arg(h_ifm, rs))) goto out;
  struct mg_policy_precond pc = {.if_match = strcmp(ifm, "*") == 0 ? etag : ifm};
  struct edit e = {.c = c, .editor = cl->editor, .product = product ? product : ""};
  rc = mg_policy_store_delete(c->app->policy, id, &pc, expect, edit_hook, &e);
  if (rc != 0) {
    edit_error(rs, &e, rc, id);
    goto out;
  }
  rs->status = 204;
  mg_buf_reset(&rs->body);
  rebuild_index(c, rs);
out:
  free(json);
  free(product);
  free(ifm);
}

static void h_import(struct mg_admin_ctx *c, const struct mg_admin_req *rq,
                     struct mg_admin_resp *rs, struct caller *cl) {
  static const char *const fields[] = {"product", "grants", NULL};
  struct mg_grant **gs = NULL;
  size_t ng = 0;
  struct mg_policy_diag diag = {0};
  char *arr = NULL;
  json_t *j = body_object(rq, rs);
  if (!j) goto out;
  if (!only_fields(j, fields, rs)) goto out;
  const char *product = json_string_value(json_object_get(j, "product"));
  json_t *grants = json_object_get(j, "grants");
  if (!product || !*product) {
    mg_admin_resp_error(rs, 400, "invalid_request", "/product: expected a non-empty string");
    goto out;
  }
  if (!json_is_array(grants)) {
    mg_admin_resp_error(rs, 400, "invalid_request", "/grants: expected an array");
    goto out;
  }
  if (!cl->admin) {
    if (!owner_of(c->app->cfg, cl, product)) {
      resp_errorf(rs, 403, "forbidden", "the caller does not own product \"%s\"", product);
      goto out;
    }
  }
  arr = json_dumps(grants, JSON_COMPACT | JSON_PRESERVE_ORDER);
  if (!arr) {
    mg_admin_resp_error(rs, 503, "internal", "out of memory");
    goto out;
  }
  int rc = mg_policy_grants_parse(arr, strlen(arr), &gs, &ng, &diag);
  if (rc != 0) {
    diag_error(rs, &diag, "/grants");
    goto out;
  }
  for (size_t i = 0; i < ng; i++)
    if (strcmp(gs[i]->product, product) != 0) {
      resp_errorf(rs, 400, "invalid_grant", "/grants/%zu/product: must be \"%s\"", i, product);
      goto out;
    }
  struct edit e = {.c = c, .editor = cl->editor, .product = product};
  rc = mg_policy_store_import(c->app->policy, product, gs, ng, edit_hook, &e);
  if (rc == MG_POLICY_E_PRODUCT && !e.lineage_err) {
    /* every grant is of `product` (checked above): an id is taken by another product */
    mg_admin_resp_error(rs, 409, "conflict",
                        "a grant id of the import is held by a grant of another product");
    goto out;
  }
  if (rc != 0) {
    edit_error(rs, &e, rc, "*import*");
    goto out;
  }
  char rev[MG_POLICY_REVISION_LEN] = "";
  uint64_t gen = 0;
  mg_policy_store_revision(c->app->policy, rev, &gen);
  mg_buf_reset(&rs->body);
  mg_buf_appends(&rs->body, "{\"product\":");
  mg_buf_append_json_str(&rs->body, product, strlen(product));
  mg_buf_appendf(&rs->body, ",\"grants\":%zu,\"revision\":\"%s\",\"generation\":%llu}\n", ng,
                 rev, (unsigned long long)gen);
  rs->status = 200;
  rebuild_index(c, rs);
out:
  mg_policy_diag_clear(&diag);
  if (gs) mg_policy_grants_free(gs, ng);
  free(arr);
  json_decref(j);
}

/* ---- decide --------------------------------------------------------------- */

static void h_decide(struct mg_admin_ctx *c, const struct mg_admin_req *rq,
                     struct mg_admin_resp *rs, struct caller *cl) {
  static const char *const fields[] = {"principals", "method", "path", "purpose", "product", NULL};
  const struct mg_config *cfg = c->app->cfg;
  struct mg_policy_index *ix = NULL;
  const char *princ[MAX_DECIDE_PRINCIPALS];
  char *canon = NULL;
  json_t *j = body_object(rq, rs);
  if (!j) goto out;
  if (!only_fields(j, fields, rs)) goto out;
  json_t *jp = json_object_get(j, "principals");
  json_t *jm = json_object_get(j, "method");
  json_t *jpath = json_object_get(j, "path");
  json_t *jpur = json_object_get(j, "purpose");
  json_t *jprod = json_object_get(j, "product");
  if (!json_is_array(jp) || json_array_size(jp) > MAX_DECIDE_PRINCIPALS) {
    mg_admin_resp_error(rs, 400, "invalid_request", "/principals: expected an array of at most 256 strings");
    goto out;
  }
  size_t np = json_array_size(jp);
  for (size_t i = 0; i < np; i++) {
    const char *s = json_string_value(json_array_get(jp, i));
    if (!s || !*s || strlen(s) > 512 || !strchr(s, ':')) {
      resp_errorf(rs, 400, "invalid_request", "/principals/%zu: expected \"kind:value\"", i);
      goto out;
    }
    princ[i] = s;
  }
  const char *method = json_string_value(jm);
  if (!method || !*method || strlen(method) > 15 || strspn(method, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") != strlen(method)) {
    mg_admin_resp_error(rs, 400, "invalid_request", "/method: expected an upper-case HTTP method");
    goto out;
  }
  const char *path = json_string_value(jpath);
  if (!path || strlen(path) > 8192) {
    mg_admin_resp_error(rs, 400, "invalid_request", "/path: expected a string");
    goto out;
  }
  if (jpur && !json_is_null(jpur) &&
      (!json_is_string(jpur) || json_string_length(jpur) == 0 || json_string_length(jpur) > 256)) {
    /* as on the data path, where x-mesh-purpose must be 1..256 bytes */
    mg_admin_resp_error(rs, 400, "invalid_request", "/purpose: expected a 1..256 byte string or null");
    goto out;
  }
  if (jprod && !json_is_string(jprod)) {
    mg_admin_resp_error(rs, 400, "invalid_request", "/product: expected a string");
    goto out;
  }
  const char *purpose = json_string_value(jpur);
  const char *product = jprod ? json_string_value(jprod) : cfg->product;
  if (!product) product = "";
  if (!cl->admin && !cl->auditor && !owner_of(cfg, cl, product)) {
    resp_errorf(rs, 403, "forbidden", "the caller may not ask decisions for product \"%s\"", product);
    goto out;
  }
  size_t plen = strlen(path), path_len = 0, out_len = 0;
  const char *why = NULL;
  canon = malloc(plen + 2);
  if (!canon) goto oom;
  if (mg_canon_path(path, plen, canon, plen + 1, &path_len, &out_len, &why) != 0) {
    resp_errorf(rs, 400, "invalid_request", "/path: %s", why ? why : "not a valid path");
    goto out;
  }
  canon[path_len] = 0; /* the resource never includes the query */
  const struct mg_config_route *route = mg_route_match(cfg, canon, path_len);
  unsigned action = mg_route_action(route, method, NULL, canon, path_len);

  ix = mg_app_index_acquire(c->app);
  if (!ix) {
    mg_admin_resp_error(rs, 503, "unavailable", "no policy index loaded");
    goto out;
  }
  struct mg_policy_decision d = {0};
  const char *ids[MAX_MATCHING];
  size_t nm = 0;
  const char *reason;
  if (action == 0) {
    d.allow = false;
    reason = "method_not_allowed";
  } else {
    struct mg_policy_request prq = {.principals = princ, .nprincipals = np, .product = product,
                                    .resource = canon + 1, .resource_len = path_len - 1,
                                    .action = action, .purpose = purpose,
                                    .now_us = mg_time_now_us()};
    nm = mg_policy_explain(ix, &prq, &d, ids, MAX_MATCHING);
    if (nm > MAX_MATCHING) nm = MAX_MATCHING;
    reason = mg_policy_reason_str(d.reason);
  }
  struct mg_buf *b = &rs->body;
  mg_buf_reset(b);
  mg_buf_appendf(b, "{\"decision\":\"%s\",\"reason\":\"%s\",\"grant\":", d.allow ? "allow" : "deny",
                 reason);
  if (d.grant_id) mg_buf_append_json_str(b, d.grant_id, strlen(d.grant_id));
  else mg_buf_appends(b, "null");
  mg_buf_appends(b, ",\"matching\":[");
  for (size_t i = 0; i < nm; i++) {
    if (i) mg_buf_appends(b, ",");
    mg_buf_append_json_str(b, ids[i], strlen(ids[i]));
  }
  mg_buf_appendf(b, "],\"revision\":\"%s\",\"action\":%s%s%s,\"resource\":",
                 mg_policy_index_revision(ix), action ? "\"" : "",
                 action == MG_ACTION_READ ? "read" : action == MG_ACTION_WRITE ? "write" : "null",
                 action ? "\"" : "");
  mg_buf_append_json_str(b, canon + 1, path_len - 1);
  mg_buf_appends(b, ",\"product\":");
  mg_buf_append_json_str(b, product, strlen(product));
  mg_buf_appends(b, ",\"route\":");
  if (route) mg_buf_append_json_str(b, route->prefix, strlen(route->prefix));
  else mg_buf_appends(b, "null");
  mg_buf_appends(b, "}\n");
  rs->status = 200;
  goto out;
oom:
  mg_admin_resp_error(rs, 503, "internal", "out of memory");
out:
  if (ix) mg_policy_index_unref(ix);
  free(canon);
  json_decref(j);
}

/* ---- lineage ----------------------------------------------------------------- */

void mg_admin_stream_unref(struct mg_admin_stream *s) {
  if (atomic_fetch_sub(&s->refs, 1) == 1) free(s);
}

struct export_job {
  struct mg_admin_ctx *c;
  struct mg_lineage_writer *w;
  struct mg_lineage_reader *r;
  struct mg_lineage_filter f;
  char *strs[4];
  enum mg_lineage_format fmt;
  int wfd;
  struct mg_admin_stream *s;
};

static void *export_main(void *arg) {
  struct export_job *job = arg;
  /* a client that goes away must end this thread with EPIPE, not kill the process */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  int rc;
  FILE *out = fdopen(job->wfd, "w");
  if (!out) {
    rc = -errno;
    atomic_store(&job->s->result, rc); /* before the reader can see EOF */
    close(job->wfd);
  } else {
    setvbuf(out, NULL, _IOFBF, 64 * 1024);
    /* an unfiltered export ends at the latest checkpoint: sign one now so that it holds
     * everything committed before the request (failure: export up to the last one) */
    char *note = NULL;
    if (job->w && mg_lineage_checkpoint_now(job->w, &note) == 0) free(note);
    rc = mg_lineage_export(job->r, &job->f, job->fmt, out);
    if (rc == 0 && fflush(out) != 0) rc = -errno;
    /* the result must be visible before the reader sees EOF */
    atomic_store(&job->s->result, rc);
    fclose(out);
  }
  if (rc != 0 && rc != -EPIPE) mg_warn("admin: lineage export failed: %s", mg_strerror(rc));
  struct mg_admin_ctx *c = job->c;
  mg_admin_stream_unref(job->s);
  for (int i = 0; i < 4; i++) free(job->strs[i]);
  free(job);
  pthread_mutex_lock(&c->lock);
  c->exports--;
  pthread_cond_broadcast(&c->cond);
  pthread_mutex_unlock(&c->lock);
  return NULL;
}

static void h_lineage(struct mg_admin_ctx *c, const char *query, struct mg_admin_resp *rs,
                      struct caller *cl) {
  struct qparam qp[] = {{"since", NULL},   {"until", NULL},   {"principal", NULL},
                        {"product", NULL}, {"dataset", NULL}, {"action", NULL},
                        {"format", NULL}};
  struct export_job *job = NULL;
  int fds[2] = {-1, -1};
  if (!cl->admin && !cl->auditor) {
    forbidden(rs, "export lineage");
    goto out;
  }
  if (parse_query(query, qp, MG_ARRAY_LEN(qp), rs) != 0) goto out;
  job = calloc(1, sizeof *job);
  if (!job) goto oom;
  mg_lineage_filter_init(&job->f);
  for (int i = 0; i < 2; i++) {
    if (!qp[i].value) continue;
    int64_t *t = i == 0 ? &job->f.since_us : &job->f.until_us;
    if (mg_time_parse_rfc3339(qp[i].value, strlen(qp[i].value), t) != 0) {
      resp_errorf(rs, 400, "invalid_request", "%s: expected an RFC 3339 time", qp[i].name);
      goto out;
    }
  }
  if (qp[5].value && strcmp(qp[5].value, "read") && strcmp(qp[5].value, "write")) {
    mg_admin_resp_error(rs, 400, "invalid_request", "action: expected read or write");
    goto out;
  }
  job->fmt = MG_LINEAGE_NDJSON;
  if (qp[6].value) {
    if (strcmp(qp[6].value, "openlineage") == 0) job->fmt = MG_LINEAGE_OPENLINEAGE;
    else if (strcmp(qp[6].value, "ndjson") != 0) {
      mg_admin_resp_error(rs, 400, "invalid_request", "format: expected ndjson or openlineage");
      goto out;
    }
  }
  for (int i = 0; i < 4; i++) {
    job->strs[i] = qp[2 + i].value;
    qp[2 + i].value = NULL;
  }
  job->f.principal = job->strs[0];
  job->f.product = job->strs[1];
  job->f.dataset = job->strs[2];
  job->f.action = job->strs[3];
  job->w = c->app->lineage;
  if (!c->app->lineage || !(job->r = mg_lineage_writer_reader(c->app->lineage))) {
    mg_admin_resp_error(rs, 503, "lineage_unavailable", "the lineage log is not open");
    goto out;
  }
  if (pipe2(fds, O_CLOEXEC) != 0) goto oom;
  if (fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK) != 0) goto oom;
  (void)fcntl(fds[1], F_SETPIPE_SZ, 1 << 20); /* fewer wakeups; the default 64 KiB works too */
  struct mg_admin_stream *s = calloc(1, sizeof *s);
  if (!s) goto oom;
  s->rfd = fds[0];
  atomic_init(&s->result, 1);
  atomic_init(&s->refs, 2);
  job->s = s;
  job->c = c;
  job->wfd = fds[1];
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_t th;
  pthread_mutex_lock(&c->lock);
  c->exports++;
  pthread_mutex_unlock(&c->lock);
  int prc = pthread_create(&th, &attr, export_main, job);
  pthread_attr_destroy(&attr);
  if (prc != 0) {
    pthread_mutex_lock(&c->lock);
    c->exports--;
    pthread_mutex_unlock(&c->lock);
    free(s);
    job->s = NULL;
    goto oom;
  }
  job = NULL; /* the thread owns it */
  fds[0] = fds[1] = -1;
  rs->stream = s;
  rs->status = 200;
  rs->ctype = "application/x-ndjson";
  mg_buf_reset(&rs->body);
  goto out;
oom:
  mg_admin_resp_error(rs, 503, "internal", "cannot start the export");
out:
  if (fds[0] >= 0) close(fds[0]);
  if (fds[1] >= 0) close(fds[1]);
  if (job) {
    for (int i = 0; i < 4; i++) free(job->strs[i]);
    free(job);
  }
  free_query(qp, MG_ARRAY_LEN(qp));
}

static void h_checkpoint(struct mg_admin_ctx *c, struct mg_admin_resp *rs) {
  char *note = NULL;
  if (!c->app->lineage) {
    mg_admin_resp_error(rs, 503, "lineage_unavailable", "the lineage log is not open");
    return;
  }
  int rc = mg_lineage_checkpoint_now(c->app->lineage, &note);
  if (rc == MG_ERR_NOTFOUND) {
    mg_admin_resp_error(rs, 404, "not_found", "no checkpoint yet (the log is empty)");
    return;
  }
  if (rc != 0) {
    resp_errorf(rs, 503, "lineage_unavailable", "checkpoint: %s", mg_strerror(rc));
    return;
  }
  /* the note's first lines are the origin and the tree size */
  const char *nl = strchr(note, '\n');
  unsigned long long size = nl ? strtoull(nl + 1, NULL, 10) : 0;
  mg_buf_reset(&rs->body);
  mg_buf_appends(&rs->body, "{\"checkpoint\":");
  mg_buf_append_json_str(&rs->body, note, strlen(note));
  mg_buf_appendf(&rs->body, ",\"size\":%llu}\n", size);
  rs->status = 200;
  free(note);
}

static void h_proof(struct mg_admin_ctx *c, const char *query, struct mg_admin_resp *rs) {
  struct qparam qp[] = {{"index", NULL}, {"size", NULL}, {"from", NULL}, {"to", NULL}};
  char *json = NULL;
  struct mg_lineage_reader *r;
  if (parse_query(query, qp, 4, rs) != 0) goto out;
  bool incl = qp[0].value || qp[1].value, cons = qp[2].value || qp[3].value;
  uint64_t a = 0, b = 0;
  if (incl == cons || (incl && (parse_u64(qp[0].value, &a) || parse_u64(qp[1].value, &b))) ||
      (cons && (parse_u64(qp[2].value, &a) || parse_u64(qp[3].value, &b)))) {
    mg_admin_resp_error(rs, 400, "invalid_request",
                        "expected ?index=N&size=M (inclusion) or ?from=A&to=B (consistency)");
    goto out;
  }
  if (!c->app->lineage || !(r = mg_lineage_writer_reader(c->app->lineage))) {
    mg_admin_resp_error(rs, 503, "lineage_unavailable", "the lineage log is not open");
    goto out;
  }
  int rc = incl ? mg_lineage_reader_inclusion(r, a, b, &json)
                : mg_lineage_reader_consistency(r, a, b, &json);
  if (rc == MG_LINEAGE_E_RANGE || rc == MG_ERR_INVALID) {
    resp_errorf(rs, 400, "invalid_request", "out of range: %s", mg_strerror(rc));
    goto out;
  }
  if (rc != 0) {
    resp_errorf(rs, 503, "lineage_unavailable", "proof: %s", mg_strerror(rc));
    goto out;
  }
  mg_buf_reset(&rs->body);
  mg_buf_appends(&rs->body, json);
  mg_buf_appends(&rs->body, "\n");
  rs->status = 200;
out:
  free(json);
  free_query(qp, 4);
}

/* ---- health, readiness, metrics -------------------------------------------- */

static void h_readyz(struct mg_admin_ctx *c, struct mg_admin_resp *rs) {
  struct mg_app *app = c->app;
  struct mg_buf reasons;
  mg_buf_init(&reasons);
  size_t nr = 0;
  struct mg_lineage_stats st = {0};
  if (!atomic_load(&app->ready)) {
    mg_buf_appends(&reasons, "\"starting or failed\"");
    nr++;
  }
  if (atomic_load(&app->stopping)) {
    mg_buf_appendf(&reasons, "%s\"stopping\"", nr++ ? "," : "");
  }
  if (app->lineage) {
    mg_lineage_writer_stats(app->lineage, &st);
    if (!st.healthy) {
      mg_buf_appendf(&reasons, "%s", nr++ ? "," : "");
      char msg[200];
      snprintf(msg, sizeof msg, "lineage log unhealthy: %s",
               st.last_error ? mg_strerror(st.last_error) : "unknown");
      mg_buf_append_json_str(&reasons, msg, strlen(msg));
    }
  } else {
    mg_buf_appendf(&reasons, "%s\"lineage log not open\"", nr++ ? "," : "");
  }
  struct mg_policy_index *ix = mg_app_index_acquire(app);
  if (!ix) mg_buf_appendf(&reasons, "%s\"no policy index\"", nr++ ? "," : "");
  else mg_policy_index_unref(ix);
  if (atomic_load(&app->index_stale))
    mg_buf_appendf(&reasons, "%s\"policy index behind the store (rebuild failed)\"",
                   nr++ ? "," : "");

  mg_buf_reset(&rs->body);
  mg_buf_appendf(&rs->body, "{\"ready\":%s", nr ? "false" : "true");
  if (nr) mg_buf_appendf(&rs->body, ",\"reasons\":[%s]", reasons.data);
  if (app->cfg->nats)
    mg_buf_appendf(&rs->body, ",\"nats\":{\"connected\":%s,\"backlog\":%llu,\"unverified\":%llu}",
                   st.nats_connected ? "true" : "false", (unsigned long long)st.backlog,
                   (unsigned long long)st.unverified);
  mg_buf_appends(&rs->body, "}\n");
  rs->status = nr ? 503 : 200;
  mg_buf_clear(&reasons);
}

static void prom_escape(struct mg_buf *b, const char *s) {
  for (; *s; s++) {
    if (*s == '\\') mg_buf_appends(b, "\\\\");
    else if (*s == '"') mg_buf_appends(b, "\\\"");
    else if (*s == '\n') mg_buf_appends(b, "\\n");
    else mg_buf_append(b, s, 1);
  }
}

static void h_metrics(struct mg_admin_ctx *c, struct mg_admin_resp *rs) {
  struct mg_app *app = c->app;
  struct mg_metrics *m = &app->metrics;
  struct mg_buf *b = &rs->body;
  static const char *const dec[MG_DEC_COUNT] = {"allow", "deny", "unauthenticated", "error",
                                                "none"};
  static const char *const cls[6] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};
  mg_buf_reset(b);
  mg_buf_appends(b, "# HELP meshgate_requests_total Data-path requests by decision.\n"
                    "# TYPE meshgate_requests_total counter\n");
  for (int i = 0; i < MG_DEC_COUNT; i++)
    mg_buf_appendf(b, "meshgate_requests_total{decision=\"%s\"} %llu\n", dec[i],
                   (unsigned long long)atomic_load(&m->requests[i]));
  mg_buf_appends(b, "# HELP meshgate_responses_total Data-path responses by status class.\n"
                    "# TYPE meshgate_responses_total counter\n");
  for (int i = 0; i < 6; i++)
    mg_buf_appendf(b, "meshgate_responses_total{class=\"%s\"} %llu\n", cls[i],
                   (unsigned long long)atomic_load(&m->status[i]));
  mg_buf_appends(b, "# HELP meshgate_request_duration_seconds Data-path request latency.\n"
                    "# TYPE meshgate_request_duration_seconds histogram\n");
  uint64_t cum = 0;
  for (int i = 0; i < MG_METRICS_NBUCKETS; i++) {
    cum += atomic_load(&m->latency_bucket[i]);
    mg_buf_appendf(b, "meshgate_request_duration_seconds_bucket{le=\"%g\"} %llu\n",
                   mg_metrics_buckets[i], (unsigned long long)cum);
  }
  cum += atomic_load(&m->latency_bucket[MG_METRICS_NBUCKETS]);
  uint64_t count = atomic_load(&m->latency_count);
  if (count > cum) cum = count; /* observed concurrently: keep +Inf == _count */
  mg_buf_appendf(b, "meshgate_request_duration_seconds_bucket{le=\"+Inf\"} %llu\n",
                 (unsigned long long)cum);
  mg_buf_appendf(b, "meshgate_request_duration_seconds_sum %.6f\n",
                 (double)atomic_load(&m->latency_sum_us) / 1e6);
  mg_buf_appendf(b, "meshgate_request_duration_seconds_count %llu\n", (unsigned long long)cum);

  struct {
    const char *name, *help;
    _Atomic uint64_t *v;
  } counters[] = {
      {"meshgate_jwt_cache_hits_total", "Verified-token cache hits.", &m->jwt_cache_hits},
      {"meshgate_jwt_cache_misses_total", "Verified-token cache misses.", &m->jwt_cache_misses},
      {"meshgate_jwt_failures_total", "Rejected tokens.", &m->jwt_failures},
      {"meshgate_lineage_failures_total", "Requests refused because lineage failed.",
       &m->lineage_failures},
      {"meshgate_admin_requests_total", "Admin API requests.", &m->admin_requests},
  };
  for (size_t i = 0; i < MG_ARRAY_LEN(counters); i++)
    mg_buf_appendf(b, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", counters[i].name,
                   counters[i].help, counters[i].name, counters[i].name,
                   (unsigned long long)atomic_load(counters[i].v));

  char rev[MG_POLICY_REVISION_LEN];
  uint64_t gen = 0;
  size_t ngrants = 0;
  if (app->policy) mg_policy_store_revision(app->policy, rev, &gen);
  struct mg_policy_index *ix = mg_app_index_acquire(app);
  if (ix) {
    ngrants = mg_policy_index_count(ix);
    mg_policy_index_unref(ix);
  }
  mg_buf_appendf(b, "# HELP meshgate_policy_revision_generation Committed policy edits.\n"
                    "# TYPE meshgate_policy_revision_generation gauge\n"
                    "meshgate_policy_revision_generation %llu\n"
                    "# HELP meshgate_policy_grants Grants in the serving index.\n"
                    "# TYPE meshgate_policy_grants gauge\nmeshgate_policy_grants %zu\n",
                 (unsigned long long)gen, ngrants);

  struct mg_authn *an = atomic_load(&app->authn);
  if (an) {
    const char *names[16];
    double ages[16];
    size_t n = mg_authn_jwks_ages(an, names, ages, 16);
    mg_buf_appends(b, "# HELP meshgate_jwks_age_seconds Age of each issuer's key set.\n"
                      "# TYPE meshgate_jwks_age_seconds gauge\n");
    for (size_t i = 0; i < n && i < 16; i++) {
      mg_buf_appends(b, "meshgate_jwks_age_seconds{issuer=\"");
      prom_escape(b, names[i] ? names[i] : "");
      mg_buf_appendf(b, "\"} %.3f\n", ages[i]);
    }
  }
  if (app->lineage) {
    struct mg_lineage_stats st;
    mg_lineage_writer_stats(app->lineage, &st);
    struct {
      const char *name, *type, *help;
      unsigned long long v;
    } g[] = {
        {"meshgate_lineage_entries", "gauge", "Entries committed to the local log.", st.size},
        {"meshgate_lineage_checkpoint_size", "gauge", "Entries covered by the latest checkpoint.",
         st.checkpoint_size},
        {"meshgate_lineage_queue", "gauge", "Entries waiting for a commit.", st.queue_len},
        {"meshgate_lineage_map_bytes", "gauge",
         "Size of the lineage LMDB map (lineage.map_size_mb).", st.map_bytes},
        {"meshgate_lineage_used_bytes", "gauge",
         "Bytes of the map in use; at the map size every request is refused.", st.used_bytes},
        {"meshgate_lineage_healthy", "gauge", "1 when the last commit succeeded.", st.healthy},
        {"meshgate_lineage_backlog", "gauge", "Entries not yet acknowledged by JetStream.",
         st.backlog},
        {"meshgate_lineage_unverified", "gauge",
         "Entries JetStream acknowledged that the read-back has not found in the stream yet.",
         st.unverified},
        {"meshgate_lineage_commits_total", "counter", "Group commits.", st.commits},
        {"meshgate_lineage_summaries_total", "counter", "Rate-limit summary entries.",
         st.summaries_total},
        {"meshgate_lineage_nats_connected", "gauge", "1 when connected to NATS.",
         st.nats_connected},
    };
    for (size_t i = 0; i < MG_ARRAY_LEN(g); i++)
      mg_buf_appendf(b, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", g[i].name, g[i].help,
                     g[i].name, g[i].type, g[i].name, g[i].v);
    mg_buf_appendf(b, "# HELP meshgate_lineage_fsync_seconds_total Time spent in fsync.\n"
                      "# TYPE meshgate_lineage_fsync_seconds_total counter\n"
                      "meshgate_lineage_fsync_seconds_total %.6f\n",
                   (double)st.fsync_us_total / 1e6);
  }
  mg_buf_appendf(b, "# HELP meshgate_ready 1 when ready.\n# TYPE meshgate_ready gauge\n"
                    "meshgate_ready %d\n", atomic_load(&app->ready) ? 1 : 0);
  rs->ctype = "text/plain; version=0.0.4; charset=utf-8";
  rs->status = 200;
}

/* ---- router -------------------------------------------------------------------- */

enum route_id {
  R_NONE = 0, R_GRANTS, R_GRANT, R_IMPORT, R_DECIDE, R_LINEAGE, R_CHECKPOINT, R_PROOF,
  R_HEALTHZ, R_READYZ, R_METRICS,
};

static const struct {
  enum route_id id;
  const char *path;
  const char *allow;
  bool public_;
} routes[] = {
    {R_GRANTS, "/v1/grants", "GET", false},
    {R_IMPORT, "/v1/grants:import", "POST", false},
    {R_DECIDE, "/v1/decide", "POST", false},
    {R_LINEAGE, "/v1/lineage", "GET", false},
    {R_CHECKPOINT, "/v1/lineage/checkpoint", "GET", true},
    {R_PROOF, "/v1/lineage/proof", "GET", true},
    {R_HEALTHZ, "/healthz", "GET", true},
    {R_READYZ, "/readyz", "GET", true},
    {R_METRICS, "/metrics", "GET", true},
    {R_GRANT, "/v1/grants/", "GET, PUT, DELETE", false}, /* prefix */
};

static bool method_in(const char *method, const char *allow) {
  size_t n = strlen(method);
  for (const char *p = allow; *p;) {
    size_t k = strcspn(p, ",");
    if (k == n && memcmp(p, method, n) == 0) return true;
    p += k;
    while (*p == ',' || *p == ' ') p++;
  }
  return false;
}

void mg_admin_dispatch(struct mg_admin_ctx *c, struct mg_admin_req *rq,
                       struct mg_admin_resp *rs) {
  struct caller cl = {0};
  char *path = NULL, *id = NULL;
  atomic_fetch_add(&c->app->metrics.admin_requests, 1);
  rs->status = 500;
  const char *target = rq->target ? rq->target : "";
  const char *q = strchr(target, '?');
  size_t plen = q ? (size_t)(q - target) : strlen(target);
  const char *query = q ? q + 1 : NULL;
  path = strndup(target, plen);
  if (!path) {
    mg_admin_resp_error(rs, 503, "internal", "out of memory");
    goto out;
  }
  enum route_id rid = R_NONE;
  size_t ri = 0;
  for (size_t i = 0; i < MG_ARRAY_LEN(routes); i++) {
    if (routes[i].id == R_GRANT) {
      size_t n = strlen(routes[i].path);
      if (strncmp(path, routes[i].path, n) == 0 && path[n] && !strchr(path + n, '/')) {
        rid = R_GRANT;
        ri = i;
      }
    } else if (strcmp(path, routes[i].path) == 0) {
      rid = routes[i].id;
      ri = i;
      break;
    }
  }
  if (rid == R_NONE) {
    mg_admin_resp_error(rs, 404, "not_found", "no such admin endpoint");
    goto out;
  }
  if (!method_in(rq->method, routes[ri].allow)) {
    resp_errorf(rs, 405, "method_not_allowed", "allowed: %s", routes[ri].allow);
    mg_admin_resp_header(rs, "allow", routes[ri].allow);
    goto out;
  }
  if (rid == R_GRANT) {
    const char *raw = path + strlen("/v1/grants/");
    if (mg_admin_pct_decode(raw, strlen(raw), &id) != 0 || !valid_grant_id(id)) {
      mg_admin_resp_error(rs, 400, "invalid_request",
                          "grant id: expected [A-Za-z0-9._:-]{1,128}, strictly percent-encoded");
      goto out;
    }
  }
  if ((rid == R_GRANTS || rid == R_GRANT) && strcmp(rq->method, "GET") == 0 && rq->body.len) {
    mg_admin_resp_error(rs, 400, "invalid_request", "GET takes no body");
    goto out;
  }
  if (!routes[ri].public_ && authenticate(c, rq, rs, &cl) != 0) goto out;
  if (!routes[ri].public_ && !cl.admin && !cl.auditor && !owner_any(c->app->cfg, &cl)) {
    forbidden(rs, "use the admin API");
    goto out;
  }
  if (atomic_load(&c->app->index_stale) && mg_app_index_rebuild(c->app) == 0)
    mg_info("admin: the policy index caught up with the store");
  switch (rid) {
  case R_GRANTS: h_list(c, rq, query, rs, &cl); break;
  case R_GRANT:
    if (strcmp(rq->method, "GET") == 0) h_get(c, id, rs, &cl);
    else if (strcmp(rq->method, "PUT") == 0) h_put(c, rq, id, rs, &cl);
    else h_delete(c, rq, id, rs, &cl);
    break;
  case R_IMPORT: h_import(c, rq, rs, &cl); break;
  case R_DECIDE: h_decide(c, rq, rs, &cl); break;
  case R_LINEAGE: h_lineage(c, query, rs, &cl); break;
  case R_CHECKPOINT: h_checkpoint(c, rs); break;
  case R_PROOF: h_proof(c, query, rs); break;
  case R_HEALTHZ:
    mg_buf_reset(&rs->body);
    mg_buf_appends(&rs->body, "ok\n");
    rs->ctype = "text/plain; charset=utf-8";
    rs->status = 200;
    break;
  case R_READYZ: h_readyz(c, rs); break;
  case R_METRICS: h_metrics(c, rs); break;
  case R_NONE: break;
  }
out:
  caller_clear(&cl);
  free(path);
  free(id);
}

/* ---- context ---------------------------------------------------------------- */

int mg_admin_ctx_init(struct mg_admin_ctx *c, struct mg_app *app) {
  memset(c, 0, sizeof *c);
  c->app = app;
  c->cache = mg_authn_cache_new(256);
  if (!c->cache) return -ENOMEM;
  pthread_mutex_init(&c->lock, NULL);
  pthread_cond_init(&c->cond, NULL);
  return 0;
}

void mg_admin_ctx_clear(struct mg_admin_ctx *c) {
  /* export threads end on EPIPE once their pipes are closed; they may still be flushing */
  pthread_mutex_lock(&c->lock);
  while (c->exports > 0) pthread_cond_wait(&c->cond, &c->lock);
  pthread_mutex_unlock(&c->lock);
  pthread_mutex_destroy(&c->lock);
  pthread_cond_destroy(&c->cond);
  if (c->cache) mg_authn_cache_free(c->cache);
  c->cache = NULL;
}
