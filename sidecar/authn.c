/*
 * authn.c — JWT bearer verification (SPEC "Identity").
 *
 * Design:
 * - No libjwt on this path. A miss runs every cheap check first — length, three strict
 *   base64url parts, header (alg, forbidden members, typ, kid), claims (iss, exp/nbf/iat
 *   with the issuer's skew, aud, sub, groups, client) with jansson JSON_REJECT_DUPLICATES —
 *   and only then one EVP_DigestVerify with an EVP_PKEY parsed when the JWKS was loaded.
 *   Reasons are fixed strings; token bytes never reach a reason or a log line.
 * - Per-worker cache (struct mg_authn_cache): 4-way set-associative, key = mg_hash64 of the
 *   token + memcmp of the whole token, value = a refcounted identity blob (all strings in
 *   one allocation). An entry is valid until exp+skew and for the key-set generation it was
 *   verified under; after a swap it survives only if its key (by fingerprint) is still in
 *   the new set.
 * - Key-set lifetime: each issuer points to an immutable, refcounted struct mg_jwks. A
 *   cache hit reads only the issuer's atomic generation number (no lock, no refcount). A
 *   miss — already paying for JSON and a signature — takes a reference under the issuer's
 *   mutex for the few instructions of pointer load + increment, so a concurrent swap can
 *   never free the set under it. Writers (reload, refresh thread, unknown-kid file reload)
 *   parse outside the lock and swap only when the document's digest changed.
 * - JWKS URLs: fetched synchronously at start (5 s timeout), then by one background thread
 *   every jwks_refresh_s and on request after an unknown kid (at most one per
 *   jwks_min_refresh_s per issuer). Requests that hit the unknown kid get
 *   MG_AUTHN_E_PENDING and wait with mg_authn_wait_refresh(). JWKS files are re-read
 *   synchronously on an unknown kid (same rate limit): it is a local read.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>

#include "common/common.h"
#include "sidecar/authn.h"
#include "sidecar/authn_int.h"

#define MG_AUTHN_MAX_CLAIM 256
#define MG_AUTHN_FETCH_TIMEOUT_MS 5000
#define MAX_UNIX_S 253402300799LL /* 9999-12-31T23:59:59Z: larger numbers are absurd */
#define WAYS 4

struct issuer {
  char *name, *iss, *file, *url, *groups_claim;
  char **aud;
  size_t naud;
  unsigned algs;            /* configured "algorithms" mask, 0 = none configured */
  int64_t skew_us;
  int refresh_s, min_refresh_s;
  struct mg_jwks *ks;              /* under ks_lock; holds one reference */
  _Atomic uint64_t gen;            /* ks->generation, for lock-free cache hits */
  _Atomic int64_t loaded_us;       /* wall clock of the last successful load */
  pthread_mutex_t ks_lock;         /* ks pointer and every set's refs */
  /* under mg_authn.lock */
  int64_t last_unknown_us;         /* monotonic; INT64_MIN = never */
  _Atomic uint64_t load_tickets;   /* loads started: a load installs only if it began after */
  uint64_t installed_ticket;       /* the installed set's (under ks_lock) */
  bool want, busy;
  int64_t next_periodic_us;
};

struct waiter {
  void (*fn)(void *);
  void *arg;
  struct waiter *next;
};

struct mg_authn {
  struct issuer *iss;
  size_t niss;
  size_t max_token;
  bool prefix;                     /* >1 issuer: principals carry the issuer name */
  pthread_mutex_t lock;
  pthread_cond_t cond;
  pthread_t thr;
  bool have_thr, stop, refreshing;
  struct waiter *waiters;
};

/* The identity and everything it points to, in one allocation. */
struct blob {
  atomic_int ref;
  json_t *claims;
  struct mg_authn_identity id;
  /* followed by const char *groups[ngroups] and the strings */
};

struct centry {
  uint64_t h;
  char *tok;
  size_t len;
  struct blob *b;
  int64_t until_us;
  uint64_t gen, key_fp;
  uint32_t issuer, used;
};

struct mg_authn_cache {
  struct centry *e;
  size_t nsets;
  uint32_t tick;
  const struct mg_authn *owner; /* the verifier whose verdicts it holds (see mg_authn_verify) */
};

static _Atomic uint64_t next_generation = 1;
static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

static int set_reason(char *reason, size_t rl, const char *why, int rc) {
  if (reason && rl) snprintf(reason, rl, "%s", why);
  return rc;
}

/* ---- key sets ----------------------------------------------------------- */

/* A reference to the issuer's current set (NULL before the first load). */
static struct mg_jwks *ks_get(struct issuer *is) {
  pthread_mutex_lock(&is->ks_lock);
  struct mg_jwks *ks = is->ks;
  if (ks) ks->refs++;
  pthread_mutex_unlock(&is->ks_lock);
  return ks;
}

static void ks_put(struct issuer *is, struct mg_jwks *ks) {
  if (!ks) return;
  pthread_mutex_lock(&is->ks_lock);
  bool last = --ks->refs == 0;
  pthread_mutex_unlock(&is->ks_lock);
  if (last) mg_jwks_free(ks);
}

/* Takes ks, read by the load with this ticket. Swaps only when the content changed, and
 * never for a load that began before the installed one: a slow reload (an unknown kid on a
 * worker) must not put back a set that SIGHUP has already replaced. */
static void install(struct issuer *is, struct mg_jwks *ks, uint64_t ticket) {
  pthread_mutex_lock(&is->ks_lock);
  struct mg_jwks *old = is->ks;
  if (ticket < is->installed_ticket) {
    pthread_mutex_unlock(&is->ks_lock);
    mg_jwks_free(ks);
    return;
  }
  is->installed_ticket = ticket;
  atomic_store(&is->loaded_us, ks->loaded_us);
  if (old && memcmp(old->digest, ks->digest, sizeof ks->digest) == 0) {
    pthread_mutex_unlock(&is->ks_lock);
    mg_jwks_free(ks);
    return;
  }
  ks->generation = atomic_fetch_add(&next_generation, 1);
  ks->refs = 1;
  is->ks = ks;
  atomic_store(&is->gen, ks->generation);
  pthread_mutex_unlock(&is->ks_lock);
  mg_info("authn: issuer %s: installed %zu key(s)", is->name ? is->name : is->iss, ks->nkeys);
  ks_put(is, old);
}

/* Loads the issuer's source now. 0 or error (err says why); the old set stays. */
static int load_now(struct mg_authn *a, struct issuer *is, char *err, size_t errlen) {
  (void)a;
  struct mg_jwks *ks = NULL;
  uint64_t ticket = atomic_fetch_add(&is->load_tickets, 1) + 1;
  int rc;
  if (is->file) {
    uint8_t cur[32];
    struct mg_jwks *now = ks_get(is);
    if (now) memcpy(cur, now->digest, sizeof cur);
    ks_put(is, now);
    rc = mg_jwks_load_file(is->file, now ? cur : NULL, &ks, err, errlen);
    if (rc == 0 && !ks) { /* the same bytes: nothing to parse */
      atomic_store(&is->loaded_us, mg_time_now_us());
      return 0;
    }
  } else {
    rc = mg_jwks_fetch_url(is->url, MG_AUTHN_FETCH_TIMEOUT_MS, &ks, err, errlen);
  }
  if (rc == 0) install(is, ks, ticket);
  return rc;
}

static void *refresh_main(void *arg) {
  struct mg_authn *a = arg;
  pthread_mutex_lock(&a->lock);
  while (!a->stop) {
    int64_t now = mg_mono_now_us(), next = INT64_MAX;
    struct issuer *due = NULL;
    for (size_t i = 0; i < a->niss; i++) {
      struct issuer *is = &a->iss[i];
      if (!is->url) continue;
      if (is->want || is->next_periodic_us <= now) {
        due = is;
        break;
      }
      next = MG_MIN(next, is->next_periodic_us);
    }
    if (!due) {
      /* nothing pending: wake everyone who waited on the round that just ended */
      struct waiter *w = a->waiters;
      a->waiters = NULL;
      a->refreshing = false;
      if (w) {
        pthread_mutex_unlock(&a->lock);
        while (w) {
          struct waiter *nx = w->next;
          w->fn(w->arg);
          free(w);
          w = nx;
        }
        pthread_mutex_lock(&a->lock);
        continue;
      }
      struct timespec ts;
      clock_gettime(CLOCK_MONOTONIC, &ts);
      int64_t wait_us = next == INT64_MAX ? 3600LL * 1000000 : next - now;
      int64_t ns = ts.tv_nsec + (wait_us % 1000000) * 1000;
      ts.tv_sec += (time_t)(wait_us / 1000000 + ns / 1000000000);
      ts.tv_nsec = (long)(ns % 1000000000);
      pthread_cond_timedwait(&a->cond, &a->lock, &ts);
      continue;
    }
    due->want = false;
    due->busy = true;
    a->refreshing = true;
    pthread_mutex_unlock(&a->lock);
    char err[512];
    if (load_now(a, due, err, sizeof err))
      mg_warn("authn: issuer %s: JWKS refresh failed, keeping the last good set: %s",
              due->name ? due->name : due->iss, err);
    pthread_mutex_lock(&a->lock);
    due->busy = false;
    due->next_periodic_us = mg_mono_now_us() + (int64_t)due->refresh_s * 1000000;
  }
  pthread_mutex_unlock(&a->lock);
  return NULL;
}

/* ---- setup -------------------------------------------------------------- */

static void issuer_clear(struct issuer *is) {
  free(is->name);
  free(is->iss);
  free(is->file);
  free(is->url);
  free(is->groups_claim);
  for (size_t i = 0; i < is->naud; i++) free(is->aud[i]);
  free(is->aud);
  ks_put(is, is->ks);
  pthread_mutex_destroy(&is->ks_lock);
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

static int issuer_init(struct issuer *is, const struct mg_config_issuer *ci, char *err,
                       size_t errlen) {
  pthread_mutex_init(&is->ks_lock, NULL);
  atomic_init(&is->gen, 0);
  atomic_init(&is->loaded_us, 0);
  is->last_unknown_us = INT64_MIN;
  if (!ci->issuer || (!ci->jwks_file == !ci->jwks_url)) {
    snprintf(err, errlen, "issuer needs iss and exactly one of jwks_file/jwks_url");
    return MG_ERR_INVALID;
  }
  is->name = dup_or_null(ci->name);
  is->iss = strdup(ci->issuer);
  is->file = dup_or_null(ci->jwks_file);
  is->url = dup_or_null(ci->jwks_url);
  is->groups_claim = strdup(ci->groups_claim ? ci->groups_claim : "groups");
  is->aud = calloc(ci->naudiences + 1, sizeof *is->aud);
  if (!is->iss || !is->groups_claim || !is->aud || (ci->name && !is->name) ||
      (ci->jwks_file && !is->file) || (ci->jwks_url && !is->url))
    return -ENOMEM;
  for (size_t i = 0; i < ci->naudiences; i++) {
    if (!(is->aud[i] = strdup(ci->audiences[i]))) return -ENOMEM;
    is->naud++;
  }
  for (size_t i = 0; i < ci->nalgorithms; i++) {
    enum mg_jws_alg alg = mg_jws_alg_parse(ci->algorithms[i], strlen(ci->algorithms[i]));
    if (alg == MG_JWS_NONE) {
      snprintf(err, errlen, "issuer %s: unsupported algorithm %s", ci->issuer, ci->algorithms[i]);
      return MG_ERR_INVALID;
    }
    is->algs |= 1u << alg;
  }
  is->skew_us = (int64_t)(ci->clock_skew_s < 0 ? 0 : ci->clock_skew_s) * 1000000;
  is->refresh_s = ci->jwks_refresh_s > 0 ? ci->jwks_refresh_s : 300;
  is->min_refresh_s = ci->jwks_min_refresh_s < 0 ? 0 : ci->jwks_min_refresh_s;
  return 0;
}

int mg_authn_new(const struct mg_config *cfg, struct mg_authn **out, char *err, size_t errlen) {
  int rc = -ENOMEM;
  char why[512];
  pthread_condattr_t ca;
  struct mg_authn *a = calloc(1, sizeof *a);
  if (!a) goto fail_alloc;
  pthread_mutex_init(&a->lock, NULL);
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&a->cond, &ca);
  pthread_condattr_destroy(&ca);
  a->max_token = cfg->max_token_bytes > 0 ? (size_t)cfg->max_token_bytes : 8192;
  a->prefix = cfg->nissuers > 1;
  a->iss = calloc(cfg->nissuers + 1, sizeof *a->iss);
  if (!a->iss) goto fail_alloc;
  bool any_url = false;
  for (size_t i = 0; i < cfg->nissuers; i++) {
    a->niss++;
    rc = issuer_init(&a->iss[i], &cfg->issuers[i], why, sizeof why);
    if (rc) {
      snprintf(err, errlen, "%s", rc == -ENOMEM ? "out of memory" : why);
      goto fail_issuers;
    }
    if (a->prefix && !a->iss[i].name) {
      snprintf(err, errlen, "issuer %s: a name is required with more than one issuer",
               a->iss[i].iss);
      rc = MG_ERR_INVALID;
      goto fail_issuers;
    }
    any_url |= a->iss[i].url != NULL;
  }
  if (any_url) pthread_once(&curl_once, curl_init_once);
  for (size_t i = 0; i < a->niss; i++) {
    rc = load_now(a, &a->iss[i], why, sizeof why);
    if (rc) {
      snprintf(err, errlen, "/identity/issuers/%zu/%s: %s", i,
               a->iss[i].url ? "jwks_url" : "jwks_file", why);
      goto fail_issuers;
    }
    a->iss[i].next_periodic_us = mg_mono_now_us() + (int64_t)a->iss[i].refresh_s * 1000000;
  }
  if (any_url) {
    rc = -pthread_create(&a->thr, NULL, refresh_main, a);
    if (rc) {
      snprintf(err, errlen, "cannot start the JWKS refresh thread");
      goto fail_issuers;
    }
    a->have_thr = true;
  }
  *out = a;
  return 0;
fail_issuers:
  mg_authn_free(a);
  return rc;
fail_alloc:
  free(a);
  snprintf(err, errlen, "out of memory");
  return rc;
}

void mg_authn_stop(struct mg_authn *a) {
  if (!a) return;
  if (a->have_thr) {
    pthread_mutex_lock(&a->lock);
    a->stop = true;
    pthread_cond_signal(&a->cond);
    pthread_mutex_unlock(&a->lock);
    pthread_join(a->thr, NULL);
    a->have_thr = false;
  }
  /* waiters still registered would wait forever: tell them the refresh ended */
  pthread_mutex_lock(&a->lock);
  struct waiter *w = a->waiters;
  a->waiters = NULL;
  pthread_mutex_unlock(&a->lock);
  for (struct waiter *nx; w; w = nx) {
    nx = w->next;
    w->fn(w->arg);
    free(w);
  }
}

void mg_authn_free(struct mg_authn *a) {
  if (!a) return;
  mg_authn_stop(a);
  for (size_t i = 0; i < a->niss; i++) issuer_clear(&a->iss[i]);
  free(a->iss);
  pthread_cond_destroy(&a->cond);
  pthread_mutex_destroy(&a->lock);
  free(a);
}

void mg_authn_reload(struct mg_authn *a) {
  char err[512];
  bool any_url = false;
  for (size_t i = 0; i < a->niss; i++) {
    struct issuer *is = &a->iss[i];
    if (is->url) {
      any_url = true;
      continue;
    }
    if (load_now(a, is, err, sizeof err))
      mg_warn("authn: issuer %s: JWKS reload failed, keeping the last good set: %s",
              is->name ? is->name : is->iss, err);
  }
  if (!any_url) return;
  /* URLs are fetched on the refresh thread: a slow IdP must not stall the caller */
  pthread_mutex_lock(&a->lock);
  for (size_t i = 0; i < a->niss; i++)
    if (a->iss[i].url) a->iss[i].want = true;
  pthread_cond_signal(&a->cond);
  pthread_mutex_unlock(&a->lock);
}

int mg_authn_wait_refresh(struct mg_authn *a, void (*fn)(void *arg), void *arg) {
  int rc = -EALREADY;
  pthread_mutex_lock(&a->lock);
  bool pending = a->refreshing && !a->stop; /* a stopped verifier (replaced) refreshes nothing */
  for (size_t i = 0; i < a->niss && !pending && !a->stop; i++)
    pending = a->iss[i].want || a->iss[i].busy;
  if (pending) {
    struct waiter *w = malloc(sizeof *w);
    if (w) {
      *w = (struct waiter){fn, arg, a->waiters};
      a->waiters = w;
      rc = 0;
    } else {
      rc = -ENOMEM;
    }
  }
  pthread_mutex_unlock(&a->lock);
  return rc;
}

size_t mg_authn_jwks_ages(struct mg_authn *a, const char **names, double *ages, size_t max) {
  int64_t now = mg_time_now_us();
  size_t n = 0;
  for (; n < a->niss && n < max; n++) {
    names[n] = a->iss[n].name ? a->iss[n].name : a->iss[n].iss;
    ages[n] = (double)(now - atomic_load(&a->iss[n].loaded_us)) / 1e6;
  }
  return n;
}

/* ---- cache -------------------------------------------------------------- */

struct mg_authn_cache *mg_authn_cache_new(size_t entries) {
  struct mg_authn_cache *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  size_t sets = 1;
  while (sets * WAYS < entries && sets < ((size_t)1 << 24)) sets <<= 1;
  c->nsets = sets;
  c->e = calloc(sets * WAYS, sizeof *c->e);
  if (!c->e) {
    free(c);
    return NULL;
  }
  return c;
}

static void blob_unref(struct blob *b) {
  if (b && atomic_fetch_sub_explicit(&b->ref, 1, memory_order_acq_rel) == 1) {
    json_decref(b->claims);
    free(b);
  }
}

static void centry_clear(struct centry *e) {
  blob_unref(e->b);
  free(e->tok);
  memset(e, 0, sizeof *e);
}

void mg_authn_cache_free(struct mg_authn_cache *c) {
  if (!c) return;
  for (size_t i = 0; i < c->nsets * WAYS; i++) centry_clear(&c->e[i]);
  free(c->e);
  free(c);
}

static void give(struct blob *b, struct mg_authn_identity *id) {
  atomic_fetch_add_explicit(&b->ref, 1, memory_order_relaxed);
  *id = b->id;
  id->priv = b;
}

void mg_authn_identity_release(struct mg_authn_identity *id) {
  if (!id) return;
  blob_unref(id->priv);
  memset(id, 0, sizeof *id);
}

static bool key_still_there(const struct mg_jwks *ks, uint64_t fp) {
  for (size_t i = 0; i < ks->nkeys; i++)
    if (ks->keys[i].fp == fp) return true;
  return false;
}

/* 1 = hit (id filled), 0 = miss */
static int cache_get(struct mg_authn *a, struct mg_authn_cache *c, uint64_t h, const char *tok,
                     size_t len, int64_t now, struct mg_authn_identity *id) {
  struct centry *set = &c->e[(h & (c->nsets - 1)) * WAYS];
  for (int w = 0; w < WAYS; w++) {
    struct centry *e = &set[w];
    if (!e->b || e->h != h || e->len != len || memcmp(e->tok, tok, len) != 0) continue;
    if (now >= e->until_us || e->issuer >= a->niss) {
      centry_clear(e);
      return 0;
    }
    struct issuer *is = &a->iss[e->issuer];
    if (atomic_load_explicit(&is->gen, memory_order_acquire) != e->gen) {
      /* the set changed: the entry lives on only if its key is still published */
      struct mg_jwks *ks = ks_get(is);
      bool keep = ks && key_still_there(ks, e->key_fp);
      if (keep) e->gen = ks->generation;
      ks_put(is, ks);
      if (!keep) {
        centry_clear(e);
        return 0;
      }
    }
    e->used = ++c->tick;
    give(e->b, id);
    return 1;
  }
  return 0;
}

static void cache_put(struct mg_authn_cache *c, uint64_t h, const char *tok, size_t len,
                      struct blob *b, int64_t until, uint64_t gen, uint64_t fp, uint32_t issuer) {
  struct centry *set = &c->e[(h & (c->nsets - 1)) * WAYS], *v = &set[0];
  for (int w = 0; w < WAYS; w++) {
    if (!set[w].b) {
      v = &set[w];
      break;
    }
    if (set[w].used < v->used) v = &set[w];
  }
  char *copy = malloc(len ? len : 1);
  if (!copy) return; /* caching is an optimisation */
  memcpy(copy, tok, len);
  centry_clear(v);
  atomic_fetch_add_explicit(&b->ref, 1, memory_order_relaxed);
  *v = (struct centry){h, copy, len, b, until, gen, fp, issuer, ++c->tick};
}

/* ---- verification ------------------------------------------------------- */

/* A claim value that becomes part of a principal or header: 1..256 bytes, no C0, DEL or
 * C1 controls (jansson already guarantees UTF-8 without NUL). */
static bool claim_ok(const char *s, size_t n) {
  if (n == 0 || n > MG_AUTHN_MAX_CLAIM) return false;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch < 0x20 || ch == 0x7f) return false;
    if (ch == 0xc2 && i + 1 < n && (unsigned char)s[i + 1] >= 0x80 &&
        (unsigned char)s[i + 1] <= 0x9f)
      return false;
  }
  return true;
}

/* NumericDate: an integer JSON number in [0, 9999-12-31]. */
static int numeric_date(json_t *claims, const char *name, bool *present, int64_t *out) {
  json_t *v = json_object_get(claims, name);
  *present = v != NULL;
  if (!v) return 0;
  if (!json_is_integer(v)) return -1;
  json_int_t t = json_integer_value(v);
  if (t < 0 || t > MAX_UNIX_S) return -1;
  *out = (int64_t)t;
  return 0;
}

static bool typ_ok(json_t *typ) {
  if (!json_is_string(typ)) return false;
  const char *s = json_string_value(typ);
  size_t n = json_string_length(typ);
  return mg_strieq(s, n, "JWT") || mg_strieq(s, n, "at+jwt") ||
         mg_strieq(s, n, "application/at+jwt");
}

static bool kid_ok(json_t *kid) {
  if (!json_is_string(kid)) return false;
  const char *s = json_string_value(kid);
  size_t n = json_string_length(kid);
  if (n == 0 || n > 256) return false;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e) return false;
  return true;
}

static unsigned key_allows(const struct issuer *is, const struct mg_jwk *k) {
  if (k->alg != MG_JWS_NONE) return 1u << k->alg;
  if (is->algs) return is->algs & k->fits;
  /* nothing pinned anywhere: EC keys fit one algorithm; RSA gets the JOSE default */
  return k->kty == MG_JWK_EC ? k->fits : 1u << MG_JWS_RS256;
}

/* NULL with *why set ("unknown key id" or "algorithm not allowed for key"). */
static const struct mg_jwk *find_key(const struct issuer *is, const struct mg_jwks *ks,
                                     const char *kid, enum mg_jws_alg alg, const char **why) {
  const struct mg_jwk *found = NULL;
  size_t matches = 0;
  bool kid_seen = false;
  *why = "unknown key id";
  if (!ks) return NULL;
  for (size_t i = 0; i < ks->nkeys; i++) {
    const struct mg_jwk *k = &ks->keys[i];
    if (kid) {
      if (!k->kid || strcmp(k->kid, kid) != 0) continue;
      kid_seen = true;
    }
    if (key_allows(is, k) & (1u << alg)) {
      found = k;
      matches++;
      if (kid) break;
    }
  }
  if (kid && kid_seen && !found) *why = "algorithm not allowed for key";
  if (!kid && matches != 1) return NULL; /* no kid is only unambiguous with one key */
  return found;
}

static const EVP_MD *alg_md(enum mg_jws_alg alg) {
  switch (alg) {
  case MG_JWS_RS256: case MG_JWS_ES256: return EVP_sha256();
  case MG_JWS_RS384: case MG_JWS_ES384: return EVP_sha384();
  default: return EVP_sha512();
  }
}

/* 1 good, 0 bad */
static int verify_sig(const struct mg_jwk *k, enum mg_jws_alg alg, const char *in, size_t inl,
                      const uint8_t *sig, size_t sigl) {
  uint8_t der[2 * (66 + 4) + 8];
  const uint8_t *vs = sig;
  size_t vl = sigl;
  int ok = 0;
  if (k->kty == MG_JWK_EC) {
    size_t L = mg_jws_ec_len(alg);
    if (sigl != 2 * L) return 0;
    BIGNUM *r = BN_bin2bn(sig, (int)L, NULL), *s = BN_bin2bn(sig + L, (int)L, NULL);
    ECDSA_SIG *es = NULL;
    if (!r || !s || BN_is_zero(r) || BN_is_zero(s) || BN_cmp(r, k->ec_order) >= 0 ||
        BN_cmp(s, k->ec_order) >= 0 || !(es = ECDSA_SIG_new()) || !ECDSA_SIG_set0(es, r, s)) {
      BN_free(r);
      BN_free(s);
      ECDSA_SIG_free(es);
      return 0;
    }
    int dl = i2d_ECDSA_SIG(es, NULL);
    uint8_t *p = der;
    if (dl <= 0 || (size_t)dl > sizeof der || i2d_ECDSA_SIG(es, &p) != dl) {
      ECDSA_SIG_free(es);
      return 0;
    }
    ECDSA_SIG_free(es);
    vs = der;
    vl = (size_t)dl;
  }
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  if (md && EVP_DigestVerifyInit(md, NULL, alg_md(alg), NULL, k->pkey) == 1 &&
      EVP_DigestVerify(md, vs, vl, (const uint8_t *)in, inl) == 1)
    ok = 1;
  EVP_MD_CTX_free(md);
  return ok;
}

static size_t prefix_len(const struct mg_authn *a, const struct issuer *is) {
  return a->prefix ? strlen(is->name) + 1 : 0;
}

static char *put_principal(char *p, const char *kind, const struct mg_authn *a,
                           const struct issuer *is, const char *v, size_t vl) {
  size_t kl = strlen(kind);
  memcpy(p, kind, kl);
  p += kl;
  if (a->prefix) {
    size_t nl = strlen(is->name);
    memcpy(p, is->name, nl);
    p += nl;
    *p++ = '/';
  }
  memcpy(p, v, vl);
  p += vl;
  *p++ = 0;
  return p;
}

static char *put_str(char *p, const char *s) {
  size_t n = strlen(s) + 1;
  memcpy(p, s, n);
  return p + n;
}

/* Builds the identity blob (ref 1) or NULL on ENOMEM. */
static struct blob *make_blob(const struct mg_authn *a, const struct issuer *is, json_t *claims,
                              json_t *sub, json_t *groups, json_t *client, json_t *jti,
                              const char *tok, size_t len, int64_t exp_us) {
  size_t pl = prefix_len(a, is), ng = 0;
  size_t need = sizeof(struct blob);
  if (json_is_string(groups)) ng = 1;
  else if (json_is_array(groups)) ng = json_array_size(groups);
  need += (ng + 1) * sizeof(char *);
  need += (is->name ? strlen(is->name) + 1 : 0) + strlen(is->iss) + 1 + 65;
  need += 5 + pl + json_string_length(sub) + 1;
  if (client) need += 7 + pl + json_string_length(client) + 1;
  for (size_t i = 0; i < ng; i++) {
    json_t *g = json_is_string(groups) ? groups : json_array_get(groups, i);
    need += 6 + pl + json_string_length(g) + 1;
  }
  struct blob *b = malloc(need);
  if (!b) return NULL;
  memset(b, 0, sizeof *b);
  atomic_init(&b->ref, 1);
  const char **gv = (const char **)(b + 1);
  char *p = (char *)(gv + ng + 1);
  b->claims = json_incref(claims);
  if (a->prefix) {
    b->id.issuer_name = p;
    p = put_str(p, is->name);
  }
  b->id.iss = p;
  p = put_str(p, is->iss);
  b->id.user = p;
  p = put_principal(p, "user:", a, is, json_string_value(sub), json_string_length(sub));
  if (client) {
    b->id.client = p;
    p = put_principal(p, "client:", a, is, json_string_value(client),
                      json_string_length(client));
  }
  for (size_t i = 0; i < ng; i++) {
    json_t *g = json_is_string(groups) ? groups : json_array_get(groups, i);
    gv[i] = p;
    p = put_principal(p, "group:", a, is, json_string_value(g), json_string_length(g));
  }
  gv[ng] = NULL;
  b->id.groups = gv;
  b->id.ngroups = ng;
  uint8_t h[32];
  if (jti) {
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned hl = 0;
    if (!md || !EVP_DigestInit_ex(md, EVP_sha256(), NULL) ||
        !EVP_DigestUpdate(md, is->iss, strlen(is->iss) + 1) || /* includes the 0x00 */
        !EVP_DigestUpdate(md, json_string_value(jti), json_string_length(jti)) ||
        !EVP_DigestFinal_ex(md, h, &hl)) {
      EVP_MD_CTX_free(md);
      json_decref(b->claims);
      free(b);
      return NULL;
    }
    EVP_MD_CTX_free(md);
  } else {
    mg_sha256(tok, len, h);
  }
  b->id.token_hash = p;
  mg_hex_encode(h, sizeof h, p);
  b->id.exp_us = exp_us;
  b->id.claims = b->claims;
  return b;
}

int mg_authn_verify(struct mg_authn *a, struct mg_authn_cache *c, const char *token,
                    size_t len, int64_t now_us, struct mg_authn_identity *id,
                    char *reason, size_t reason_len) {
  int rc = MG_AUTHN_E_INVALID;
  const char *why = "malformed token";
  uint8_t *buf = NULL;
  json_t *hdr = NULL, *claims = NULL;
  struct blob *b = NULL;
  struct issuer *is = NULL;
  struct mg_jwks *ks = NULL;
  uint64_t h = 0;

  memset(id, 0, sizeof *id);
  if (c && c->owner != a) { /* a reload replaced the verifier: none of its verdicts hold */
    for (size_t i = 0; i < c->nsets * WAYS; i++) centry_clear(&c->e[i]);
    c->owner = a;
  }
  if (len > a->max_token) return set_reason(reason, reason_len, "token too large", rc);
  if (c) {
    h = mg_hash64(token, len);
    if (cache_get(a, c, h, token, len, now_us, id)) return 0;
  }

  /* structure: three non-empty parts; the base64url decoder rejects '=', '+', '/' */
  const char *d1 = memchr(token, '.', len);
  const char *d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token)) : NULL;
  if (!d1 || !d2 || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - token))) goto out;
  size_t l0 = (size_t)(d1 - token), l1 = (size_t)(d2 - d1 - 1), l2 = len - (size_t)(d2 + 1 - token);
  if (!l0 || !l1 || !l2) goto out;
  buf = malloc(len + 16);
  if (!buf) {
    why = "out of memory";
    goto out;
  }
  uint8_t *hb = buf, *cb, *sb;
  size_t hl = l0 + 4, cl, sl;
  if (mg_b64url_decode(token, l0, hb, &hl)) goto out;
  cb = hb + hl;
  cl = l1 + 4;
  if (mg_b64url_decode(d1 + 1, l1, cb, &cl)) goto out;
  sb = cb + cl;
  sl = l2 + 4;
  if (mg_b64url_decode(d2 + 1, l2, sb, &sl)) goto out;

  /* header */
  hdr = json_loadb((const char *)hb, hl, JSON_REJECT_DUPLICATES, NULL);
  if (!json_is_object(hdr)) goto out;
  static const char *const forbidden[] = {"jku", "x5u", "jwk", "x5c", "crit"};
  for (size_t i = 0; i < MG_ARRAY_LEN(forbidden); i++)
    if (json_object_get(hdr, forbidden[i])) {
      why = "forbidden header";
      goto out;
    }
  json_t *jalg = json_object_get(hdr, "alg");
  if (!json_is_string(jalg)) goto out;
  enum mg_jws_alg alg = mg_jws_alg_parse(json_string_value(jalg), json_string_length(jalg));
  if (alg == MG_JWS_NONE) {
    why = "unsupported algorithm";
    goto out;
  }
  json_t *typ = json_object_get(hdr, "typ");
  if (typ && !typ_ok(typ)) {
    why = "unsupported token type";
    goto out;
  }
  json_t *jkid = json_object_get(hdr, "kid");
  if (jkid && !kid_ok(jkid)) {
    why = "invalid key id";
    goto out;
  }
  const char *kid = jkid ? json_string_value(jkid) : NULL;

  /* claims */
  claims = json_loadb((const char *)cb, cl, JSON_REJECT_DUPLICATES, NULL);
  if (!json_is_object(claims)) goto out;
  json_t *jiss = json_object_get(claims, "iss");
  if (!jiss) {
    why = "missing claim: iss";
    goto out;
  }
  if (!json_is_string(jiss)) {
    why = "invalid claim: iss";
    goto out;
  }
  uint32_t isx = 0;
  for (; isx < a->niss; isx++)
    if (strlen(a->iss[isx].iss) == json_string_length(jiss) &&
        strcmp(a->iss[isx].iss, json_string_value(jiss)) == 0) {
      is = &a->iss[isx];
      break;
    }
  if (!is) {
    why = "unknown issuer";
    goto out;
  }
  bool have;
  int64_t exp = 0, nbf = 0, iat = 0;
  if (numeric_date(claims, "exp", &have, &exp)) {
    why = "invalid claim: exp";
    goto out;
  }
  if (!have) {
    why = "missing claim: exp";
    goto out;
  }
  if (exp * 1000000 + is->skew_us <= now_us) {
    why = "token expired";
    goto out;
  }
  if (numeric_date(claims, "nbf", &have, &nbf)) {
    why = "invalid claim: nbf";
    goto out;
  }
  if (have && nbf * 1000000 > now_us + is->skew_us) {
    why = "token not yet valid";
    goto out;
  }
  if (numeric_date(claims, "iat", &have, &iat)) {
    why = "invalid claim: iat";
    goto out;
  }
  if (have && iat * 1000000 > now_us + is->skew_us) {
    why = "token issued in the future";
    goto out;
  }
  json_t *aud = json_object_get(claims, "aud");
  if (!aud) {
    why = "missing claim: aud";
    goto out;
  }
  bool aud_ok = false;
  if (json_is_string(aud)) {
    for (size_t j = 0; j < is->naud; j++) aud_ok |= !strcmp(is->aud[j], json_string_value(aud));
  } else if (json_is_array(aud) && json_array_size(aud) > 0) {
    size_t i;
    json_t *v;
    json_array_foreach(aud, i, v) {
      if (!json_is_string(v)) {
        why = "invalid claim: aud";
        goto out;
      }
      for (size_t j = 0; j < is->naud; j++) aud_ok |= !strcmp(is->aud[j], json_string_value(v));
    }
  } else {
    why = "invalid claim: aud";
    goto out;
  }
  if (!aud_ok) {
    why = "audience mismatch";
    goto out;
  }
  json_t *sub = json_object_get(claims, "sub");
  if (!sub) {
    why = "missing claim: sub";
    goto out;
  }
  if (!json_is_string(sub) || !claim_ok(json_string_value(sub), json_string_length(sub))) {
    why = "invalid claim: sub";
    goto out;
  }
  json_t *groups = json_object_get(claims, is->groups_claim);
  if (groups && !json_is_null(groups)) {
    if (json_is_string(groups)) {
      if (!claim_ok(json_string_value(groups), json_string_length(groups))) {
        why = "invalid claim: groups";
        goto out;
      }
    } else if (json_is_array(groups)) {
      if (json_array_size(groups) > MG_AUTHN_MAX_GROUPS) {
        why = "too many groups";
        goto out;
      }
      size_t i;
      json_t *g;
      json_array_foreach(groups, i, g) {
        if (!json_is_string(g) || !claim_ok(json_string_value(g), json_string_length(g))) {
          why = "invalid claim: groups";
          goto out;
        }
      }
    } else {
      why = "invalid claim: groups";
      goto out;
    }
  } else {
    groups = NULL;
  }
  json_t *client = json_object_get(claims, "azp");
  const char *client_name = "azp";
  if (!client) {
    client = json_object_get(claims, "client_id");
    client_name = "client_id";
  }
  if (client &&
      (!json_is_string(client) || !claim_ok(json_string_value(client), json_string_length(client)))) {
    why = strcmp(client_name, "azp") ? "invalid claim: client_id" : "invalid claim: azp";
    goto out;
  }
  json_t *jti = json_object_get(claims, "jti");
  if (jti && (!json_is_string(jti) || json_string_length(jti) > 1024)) {
    why = "invalid claim: jti";
    goto out;
  }

  /* key: (issuer, kid), algorithm pinned by the key */
  ks = ks_get(is);
  const struct mg_jwk *k = find_key(is, ks, kid, alg, &why);
  if (!k && kid && !strcmp(why, "unknown key id")) {
    /* rate-limited refresh: a token with a fresh kid usually means the IdP rotated */
    int64_t mono = mg_mono_now_us();
    bool start = false, pending = false;
    pthread_mutex_lock(&a->lock);
    if (is->url && (is->want || is->busy)) {
      pending = true;
    } else if (is->last_unknown_us == INT64_MIN ||
               mono - is->last_unknown_us >= (int64_t)is->min_refresh_s * 1000000) {
      is->last_unknown_us = mono;
      start = true;
      if (is->url) {
        is->want = true;
        a->refreshing = true;
        pthread_cond_signal(&a->cond);
        pending = true;
      }
    }
    pthread_mutex_unlock(&a->lock);
    if (pending) {
      rc = MG_AUTHN_E_PENDING;
      goto out;
    }
    if (start && is->file) {
      char err[512];
      if (load_now(a, is, err, sizeof err))
        mg_warn("authn: issuer %s: JWKS reload after an unknown kid failed: %s",
                is->name ? is->name : is->iss, err);
      ks_put(is, ks);
      ks = ks_get(is);
      k = find_key(is, ks, kid, alg, &why);
    }
  }
  if (!k) goto out;

  if (!verify_sig(k, alg, token, (size_t)(d2 - token), sb, sl)) {
    why = "bad signature";
    rc = MG_AUTHN_E_BADSIG;
    goto out;
  }

  b = make_blob(a, is, claims, sub, groups, client, jti, token, len, exp * 1000000);
  if (!b) {
    why = "out of memory";
    goto out;
  }
  if (c) cache_put(c, h, token, len, b, exp * 1000000 + is->skew_us, ks->generation, k->fp, isx);
  *id = b->id;
  id->priv = b; /* the creation reference */
  rc = 0;
out:
  if (ks) ks_put(is, ks);
  json_decref(hdr);
  json_decref(claims);
  free(buf);
  if (rc) set_reason(reason, reason_len, why, rc);
  return rc;
}

bool mg_authn_claim_matches(const struct mg_authn_identity *id, const char *claim,
                            const char *value) {
  if (!id || !id->claims || !claim || !value) return false;
  json_t *v = json_object_get((json_t *)id->claims, claim);
  size_t vl = strlen(value);
  if (vl == 0) return false;
  if (json_is_string(v)) {
    const char *s = json_string_value(v), *end = s + json_string_length(v);
    while (s < end) {
      const char *sp = memchr(s, ' ', (size_t)(end - s));
      const char *we = sp ? sp : end;
      if ((size_t)(we - s) == vl && memcmp(s, value, vl) == 0) return true;
      s = we + 1;
    }
    return false;
  }
  if (json_is_array(v)) {
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) {
      if (json_is_string(e) && json_string_length(e) == vl && !memcmp(json_string_value(e), value, vl))
        return true;
    }
  }
  return false;
}
