/*
 * jwks.c — RFC 7517 JSON Web Key Sets to OpenSSL public keys.
 *
 * Each JWK becomes an EVP_PKEY once per load (EVP_PKEY_fromdata from n/e or crv/x/y), so
 * a verification never parses key material. A set is all-or-nothing at the document level
 * (not JSON, duplicate members, no "keys" array -> the caller keeps its last good set) but
 * lenient per key: a key we cannot use (other kty/alg/use, short RSA modulus, point off the
 * curve) is skipped with a warning, because IdPs publish encryption and PS* keys alongside.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/param_build.h>

#include "common/common.h"
#include "sidecar/authn_int.h"

#ifndef MG_VERSION
#define MG_VERSION "dev"
#endif

static const char *const alg_names[MG_JWS_COUNT] = {
  [MG_JWS_RS256] = "RS256", [MG_JWS_RS384] = "RS384", [MG_JWS_RS512] = "RS512",
  [MG_JWS_ES256] = "ES256", [MG_JWS_ES384] = "ES384", [MG_JWS_ES512] = "ES512",
};

enum mg_jws_alg mg_jws_alg_parse(const char *s, size_t n) {
  for (int a = MG_JWS_RS256; a < MG_JWS_COUNT; a++)
    if (n == 5 && memcmp(s, alg_names[a], 5) == 0) return (enum mg_jws_alg)a;
  return MG_JWS_NONE;
}

const char *mg_jws_alg_name(enum mg_jws_alg a) {
  return a > MG_JWS_NONE && a < MG_JWS_COUNT ? alg_names[a] : "none";
}

size_t mg_jws_ec_len(enum mg_jws_alg a) {
  switch (a) {
  case MG_JWS_ES256: return 32;
  case MG_JWS_ES384: return 48;
  case MG_JWS_ES512: return 66;
  default: return 0;
  }
}

/* strict base64url member -> malloc'd bytes */
static int b64_member(json_t *jwk, const char *name, uint8_t **out, size_t *outlen) {
  const char *s = json_string_value(json_object_get(jwk, name));
  if (!s) return MG_ERR_INVALID;
  size_t n = strlen(s), cap = n * 3 / 4 + 3;
  uint8_t *b = malloc(cap);
  if (!b) return -ENOMEM;
  *outlen = cap;
  int rc = mg_b64url_decode(s, n, b, outlen);
  if (rc || *outlen == 0) {
    free(b);
    return MG_ERR_INVALID;
  }
  *out = b;
  return 0;
}

static EVP_PKEY *pkey_fromdata(const char *type, OSSL_PARAM_BLD *bld) {
  EVP_PKEY *pk = NULL;
  OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx) != 1 ||
      EVP_PKEY_fromdata(ctx, &pk, EVP_PKEY_PUBLIC_KEY, params) != 1)
    pk = NULL;
  EVP_PKEY_CTX_free(ctx);
  OSSL_PARAM_free(params);
  if (pk) {
    /* fromdata does not promise a full public-key check (point on curve, odd e) */
    EVP_PKEY_CTX *chk = EVP_PKEY_CTX_new_from_pkey(NULL, pk, NULL);
    int ok = chk && EVP_PKEY_public_check(chk) == 1;
    EVP_PKEY_CTX_free(chk);
    if (!ok) {
      EVP_PKEY_free(pk);
      pk = NULL;
    }
  }
  return pk;
}

static const char *rsa_key(json_t *jwk, struct mg_jwk *k) {
  uint8_t *n = NULL, *e = NULL;
  size_t nl = 0, el = 0;
  const char *why = NULL;
  BIGNUM *bn = NULL, *be = NULL;
  OSSL_PARAM_BLD *bld = NULL;
  if (b64_member(jwk, "n", &n, &nl) || b64_member(jwk, "e", &e, &el)) {
    why = "bad n/e";
    goto out;
  }
  bn = BN_bin2bn(n, (int)nl, NULL);
  be = BN_bin2bn(e, (int)el, NULL);
  if (!bn || !be || BN_num_bits(bn) < 2048 || BN_num_bits(bn) > 16384) {
    why = "RSA modulus must be 2048..16384 bits";
    goto out;
  }
  bld = OSSL_PARAM_BLD_new();
  if (!bld || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) ||
      !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be) ||
      !(k->pkey = pkey_fromdata("RSA", bld))) {
    why = "RSA key rejected by OpenSSL";
    goto out;
  }
  uint8_t h[32];
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  unsigned hl = 0;
  if (md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) && EVP_DigestUpdate(md, "RSA", 4) &&
      EVP_DigestUpdate(md, n, nl) && EVP_DigestUpdate(md, e, el) && EVP_DigestFinal_ex(md, h, &hl))
    k->fp = mg_hash64(h, sizeof h);
  EVP_MD_CTX_free(md);
out:
  OSSL_PARAM_BLD_free(bld);
  BN_free(bn);
  BN_free(be);
  free(n);
  free(e);
  return why;
}

static const char *ec_key(json_t *jwk, struct mg_jwk *k) {
  static const struct { const char *crv, *group; int nid; enum mg_jws_alg alg; } curves[] = {
    {"P-256", "prime256v1", NID_X9_62_prime256v1, MG_JWS_ES256},
    {"P-384", "secp384r1", NID_secp384r1, MG_JWS_ES384},
    {"P-521", "secp521r1", NID_secp521r1, MG_JWS_ES512},
  };
  const char *crv = json_string_value(json_object_get(jwk, "crv"));
  uint8_t *x = NULL, *y = NULL, pub[1 + 2 * 66];
  size_t xl = 0, yl = 0, i;
  const char *why = NULL;
  OSSL_PARAM_BLD *bld = NULL;
  EC_GROUP *g = NULL;
  for (i = 0; crv && i < MG_ARRAY_LEN(curves); i++)
    if (!strcmp(crv, curves[i].crv)) break;
  if (!crv || i == MG_ARRAY_LEN(curves)) return "unsupported curve";
  size_t L = mg_jws_ec_len(curves[i].alg);
  if (b64_member(jwk, "x", &x, &xl) || b64_member(jwk, "y", &y, &yl) || xl != L || yl != L) {
    why = "bad x/y";
    goto out;
  }
  pub[0] = 4;
  memcpy(pub + 1, x, L);
  memcpy(pub + 1 + L, y, L);
  bld = OSSL_PARAM_BLD_new();
  if (!bld ||
      !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, curves[i].group, 0) ||
      !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pub, 1 + 2 * L) ||
      !(k->pkey = pkey_fromdata("EC", bld))) {
    why = "EC key rejected by OpenSSL";
    goto out;
  }
  g = EC_GROUP_new_by_curve_name(curves[i].nid);
  if (!g || !(k->ec_order = BN_dup(EC_GROUP_get0_order(g)))) {
    why = "out of memory";
    goto out;
  }
  k->ec_alg = curves[i].alg;
  uint8_t h[32], tmp[2 + 1 + 2 * 66];
  tmp[0] = 'E';
  tmp[1] = (uint8_t)curves[i].alg;
  memcpy(tmp + 2, pub, 1 + 2 * L);
  mg_sha256(tmp, 3 + 2 * L, h);
  k->fp = mg_hash64(h, sizeof h);
out:
  EC_GROUP_free(g);
  OSSL_PARAM_BLD_free(bld);
  free(x);
  free(y);
  return why;
}

static void key_clear(struct mg_jwk *k) {
  free(k->kid);
  EVP_PKEY_free(k->pkey);
  BN_free(k->ec_order);
  memset(k, 0, sizeof *k);
}

void mg_jwks_free(struct mg_jwks *ks) {
  if (!ks) return;
  for (size_t i = 0; i < ks->nkeys; i++) key_clear(&ks->keys[i]);
  free(ks->keys);
  free(ks);
}

/* One JWK -> *k; returns NULL or why it was skipped. */
static const char *parse_key(json_t *jwk, struct mg_jwk *k) {
  if (!json_is_object(jwk)) return "not an object";
  const char *kty = json_string_value(json_object_get(jwk, "kty"));
  json_t *use = json_object_get(jwk, "use"), *alg = json_object_get(jwk, "alg");
  json_t *kid = json_object_get(jwk, "kid");
  if (!kty) return "no kty";
  if (use && !(json_is_string(use) && !strcmp(json_string_value(use), "sig")))
    return "use is not sig";
  if (kid && !json_is_string(kid)) return "kid is not a string";
  if (alg) {
    if (!json_is_string(alg)) return "alg is not a string";
    k->alg = mg_jws_alg_parse(json_string_value(alg), json_string_length(alg));
    if (k->alg == MG_JWS_NONE) return "unsupported alg";
  }
  const char *why;
  if (!strcmp(kty, "RSA")) {
    k->kty = MG_JWK_RSA;
    k->fits = MG_JWS_RSA_MASK;
    why = rsa_key(jwk, k);
  } else if (!strcmp(kty, "EC")) {
    k->kty = MG_JWK_EC;
    why = ec_key(jwk, k);
    k->fits = 1u << k->ec_alg;
  } else {
    return "unsupported kty";
  }
  if (why) return why;
  if (k->alg != MG_JWS_NONE && !(k->fits & (1u << k->alg))) return "alg does not fit the key";
  if (kid && !(k->kid = strdup(json_string_value(kid)))) return "out of memory";
  /* the same key material under another kid or alg pin is another key for the cache */
  uint8_t tmp[8 + 1 + 32];
  memcpy(tmp, &k->fp, 8);
  tmp[8] = (uint8_t)k->alg;
  memset(tmp + 9, 0, 32);
  if (k->kid) mg_sha256(k->kid, strlen(k->kid), tmp + 9);
  k->fp = mg_hash64(tmp, sizeof tmp);
  return NULL;
}

int mg_jwks_parse(const char *json, size_t len, struct mg_jwks **out, char *err, size_t errlen) {
  json_error_t je;
  struct mg_jwks *ks = NULL;
  int rc = MG_ERR_INVALID;
  json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
  if (!root) {
    snprintf(err, errlen, "not valid JSON at %d:%d: %s", je.line, je.column, je.text);
    goto fail;
  }
  json_t *keys = json_object_get(root, "keys");
  if (!json_is_array(keys)) {
    snprintf(err, errlen, "no \"keys\" array");
    goto fail;
  }
  if (json_array_size(keys) > MG_JWKS_MAX_KEYS) {
    snprintf(err, errlen, "more than %d keys", MG_JWKS_MAX_KEYS);
    goto fail;
  }
  rc = -ENOMEM;
  ks = calloc(1, sizeof *ks);
  if (!ks || !(ks->keys = calloc(json_array_size(keys) + 1, sizeof *ks->keys))) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  size_t i;
  json_t *jwk;
  json_array_foreach(keys, i, jwk) {
    struct mg_jwk *k = &ks->keys[ks->nkeys];
    const char *why = parse_key(jwk, k);
    if (why) {
      const char *kid = json_string_value(json_object_get(jwk, "kid"));
      mg_warn("jwks: skipping key %zu (kid %.64s): %s", i, kid ? kid : "-", why);
      key_clear(k);
      continue;
    }
    ks->nkeys++;
  }
  if (ks->nkeys == 0) {
    rc = MG_ERR_INVALID;
    snprintf(err, errlen, "no usable key (%zu skipped)", json_array_size(keys));
    goto fail;
  }
  mg_sha256(json, len, ks->digest);
  ks->loaded_us = mg_time_now_us();
  json_decref(root);
  *out = ks;
  return 0;
fail:
  mg_jwks_free(ks);
  json_decref(root);
  return rc;
}

int mg_jwks_load_file(const char *path, const uint8_t unchanged[32], struct mg_jwks **out,
                      char *err, size_t errlen) {
  char *text = NULL;
  size_t n = 0;
  *out = NULL;
  int rc = mg_file_read(path, MG_JWKS_MAX_BYTES, &text, &n);
  if (rc) {
    snprintf(err, errlen, "%s: %s", path, mg_strerror(rc));
    return rc;
  }
  if (unchanged) {
    uint8_t d[32];
    mg_sha256(text, n, d);
    if (memcmp(d, unchanged, sizeof d) == 0) {
      free(text);
      return 0;
    }
  }
  char why[256];
  rc = mg_jwks_parse(text, n, out, why, sizeof why);
  if (rc) snprintf(err, errlen, "%s: %s", path, why);
  free(text);
  return rc;
}

static size_t on_body(char *p, size_t sz, size_t nm, void *arg) {
  struct mg_buf *b = arg;
  size_t n = sz * nm;
  if (b->len + n > MG_JWKS_MAX_BYTES) return 0; /* aborts the transfer */
  return mg_buf_append(b, p, n) == 0 ? n : 0;
}

int mg_jwks_fetch_url(const char *url, long timeout_ms, struct mg_jwks **out, char *err,
                      size_t errlen) {
  struct mg_buf body;
  long status = 0;
  int rc = MG_ERR_INVALID;
  mg_buf_init(&body);
  CURL *h = curl_easy_init();
  if (!h) {
    snprintf(err, errlen, "curl_easy_init failed");
    rc = -ENOMEM;
    goto out;
  }
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &body);
  curl_easy_setopt(h, CURLOPT_USERAGENT, "meshgate/" MG_VERSION);
  CURLcode cc = curl_easy_perform(h);
  if (cc != CURLE_OK) {
    snprintf(err, errlen, "%s: %s", url, curl_easy_strerror(cc));
    goto out;
  }
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
  if (status != 200) {
    snprintf(err, errlen, "%s: HTTP status %ld", url, status);
    goto out;
  }
  char why[256];
  rc = mg_jwks_parse(body.data ? body.data : "", body.len, out, why, sizeof why);
  if (rc) snprintf(err, errlen, "%s: %s", url, why);
out:
  if (h) curl_easy_cleanup(h);
  mg_buf_clear(&body);
  return rc;
}
