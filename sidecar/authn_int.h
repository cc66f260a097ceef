/*
 * authn_int.h — private to authn.c/jwks.c (and their tests): JWS algorithms and the
 * immutable JWKS snapshot a verification reads without locks.
 */
#ifndef MG_SIDECAR_AUTHN_INT_H
#define MG_SIDECAR_AUTHN_INT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

/* JWS algorithms meshgate verifies; bit i of an "allowed" mask is algorithm i. */
enum mg_jws_alg {
  MG_JWS_NONE = 0,
  MG_JWS_RS256, MG_JWS_RS384, MG_JWS_RS512,
  MG_JWS_ES256, MG_JWS_ES384, MG_JWS_ES512,
  MG_JWS_COUNT
};
#define MG_JWS_RSA_MASK ((1u << MG_JWS_RS256) | (1u << MG_JWS_RS384) | (1u << MG_JWS_RS512))

/* "RS256" … "ES512" -> enum, MG_JWS_NONE for anything else (none, HS*, PS*, junk). */
enum mg_jws_alg mg_jws_alg_parse(const char *s, size_t n);
const char *mg_jws_alg_name(enum mg_jws_alg a);
/* ES* signature half length L (32/48/66), 0 for RSA. */
size_t mg_jws_ec_len(enum mg_jws_alg a);

enum mg_jwk_kty { MG_JWK_RSA = 1, MG_JWK_EC = 2 };

struct mg_jwk {
  char *kid;               /* NULL when the JWK has none */
  enum mg_jwk_kty kty;
  enum mg_jws_alg alg;     /* the JWK's own "alg", MG_JWS_NONE when absent */
  enum mg_jws_alg ec_alg;  /* EC: the only algorithm the curve fits */
  unsigned fits;           /* algorithms the key type can verify */
  EVP_PKEY *pkey;          /* parsed once per load */
  void *ec_order;          /* EC: BIGNUM n of the curve (for r, s < n) */
  uint64_t fp;             /* mg_hash64 of the key material, kid and pinned alg: "same key,
                              same use" across loads (a cached verdict needs all three) */
};

/* An immutable key set, shared by reference (see authn.c "Key-set lifetime"). */
struct mg_jwks {
  struct mg_jwk *keys;
  size_t nkeys;
  uint64_t generation;     /* process-unique, set when installed */
  uint8_t digest[32];      /* SHA-256 of the source bytes: unchanged sets are not swapped */
  int64_t loaded_us;       /* wall clock of the last successful load of this content */
  int refs;                /* owned by authn.c, under the issuer's lock */
};

#define MG_JWKS_MAX_BYTES (1u << 20)
#define MG_JWKS_MAX_KEYS 256

/* Parses an RFC 7517 set. Keys of unknown kty/alg/use, or bad key material, are skipped
 * with a warning; a document that is not JSON, not {"keys": [...]}, or has no usable key
 * -> MG_ERR_INVALID with a reason in err (a set that would refuse every token never
 * replaces the last good one). */
int mg_jwks_parse(const char *json, size_t len, struct mg_jwks **out, char *err, size_t errlen);
/* Reads and parses a file. When its SHA-256 equals `unchanged` (may be NULL), returns 0 with
 * *out = NULL without parsing: a reload of the same bytes costs one read and one hash. */
int mg_jwks_load_file(const char *path, const uint8_t unchanged[32], struct mg_jwks **out,
                      char *err, size_t errlen);
/* GET url with libcurl (timeout_ms total, ≤ MG_JWKS_MAX_BYTES, HTTP 200 only). */
int mg_jwks_fetch_url(const char *url, long timeout_ms, struct mg_jwks **out, char *err,
                      size_t errlen);
void mg_jwks_free(struct mg_jwks *ks);

#endif /* MG_SIDECAR_AUTHN_INT_H */
