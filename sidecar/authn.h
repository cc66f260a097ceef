/*
 * authn.h — JWT bearer verification against JWKS key sets (SPEC "Identity").
 *
 * Hot path: a per-worker cache of verified tokens (a cached check is a hash + memcmp);
 * misses do every cheap check (size, structure, base64url, header alg/kid, duplicate
 * members, claims) before one OpenSSL signature verification with an EVP_PKEY parsed once
 * per JWKS load. libjwt is not used on this path (it re-parses PEM per call and has the
 * traps listed in the README); tests cross-check against it.
 *
 * Threads: struct mg_authn is shared (key sets swapped atomically under RCU-like refcounts);
 * struct mg_authn_cache is per worker thread and must not be shared.
 */
#ifndef MG_SIDECAR_AUTHN_H
#define MG_SIDECAR_AUTHN_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#include "sidecar/config.h"

enum {
  MG_AUTHN_E_INVALID = MG_ERR_SIDECAR_BASE - 101, /* token rejected: 401 */
  MG_AUTHN_E_PENDING = MG_ERR_SIDECAR_BASE - 102, /* unknown kid: a JWKS refresh is running;
                                                     retry after the waiter callback */
  MG_AUTHN_E_BADSIG  = MG_ERR_SIDECAR_BASE - 103, /* signature check failed: 401, counts
                                                     toward failed_verifies_per_conn */
};

#define MG_AUTHN_MAX_GROUPS 256

/* The identity extracted from a verified token. Strings are owned by the identity (or by
 * the cache entry it came from) and valid until mg_authn_identity_release(). */
struct mg_authn_identity {
  const char *issuer_name;   /* config name, or NULL with a single issuer */
  const char *iss;
  const char *user;          /* "user:<sub>" or "user:<name>/<sub>" */
  const char *client;        /* "client:<azp|client_id>" or NULL */
  const char *const *groups; /* "group:<g>" or "group:<name>/<g>" */
  size_t ngroups;
  const char *token_hash;    /* 64 hex: SHA-256(iss||0x00||jti) or SHA-256(token) */
  int64_t exp_us;
  /* the raw claims object for admin claim checks: a jansson json_t*, borrowed */
  void *claims;
  void *priv;                /* implementation: refcounted cache entry */
};

struct mg_authn;
struct mg_authn_cache;

/* Loads every issuer's JWKS (file now; URL fetched synchronously once at start, then in
 * a background thread every jwks_refresh_s). Fails if a configured JWKS cannot be loaded
 * at start. */
int mg_authn_new(const struct mg_config *cfg, struct mg_authn **out, char *err, size_t errlen);
void mg_authn_free(struct mg_authn *a);
/* Stops the refresh thread and wakes every waiter; verification still works on the key
 * sets held (a set replaced on reload stays valid for requests already using it). */
void mg_authn_stop(struct mg_authn *a);
/* SIGHUP: reloads JWKS files/URLs (keeps the old set on failure, logs why). */
void mg_authn_reload(struct mg_authn *a);

struct mg_authn_cache *mg_authn_cache_new(size_t entries);
void mg_authn_cache_free(struct mg_authn_cache *c);

/* Verifies `token` (the bytes after "Bearer "). On success fills *id (release it!).
 * On failure writes a short reason ("token expired", "unknown key id", …, never token
 * contents) and returns MG_AUTHN_E_INVALID / MG_AUTHN_E_BADSIG, or MG_AUTHN_E_PENDING when
 * an unknown kid started a JWKS refresh (register with mg_authn_wait_refresh). */
int mg_authn_verify(struct mg_authn *a, struct mg_authn_cache *c, const char *token,
                    size_t len, int64_t now_us, struct mg_authn_identity *id,
                    char *reason, size_t reason_len);
void mg_authn_identity_release(struct mg_authn_identity *id);

/* Registers fn(arg) to be called (on the refresh thread) once the refresh in progress
 * ends (success or failure). Returns 0, or -EALREADY if no refresh is in progress (call
 * verify again now). */
int mg_authn_wait_refresh(struct mg_authn *a, void (*fn)(void *arg), void *arg);

/* Claim test for admin/auditor claims: true when claims[claim] equals value, contains it
 * as a space-separated word, or is an array containing it. */
bool mg_authn_claim_matches(const struct mg_authn_identity *id, const char *claim,
                            const char *value);

/* Per-issuer JWKS age in seconds (for /metrics); returns the number of issuers written. */
size_t mg_authn_jwks_ages(struct mg_authn *a, const char **names, double *ages, size_t max);

#endif /* MG_SIDECAR_AUTHN_H */
