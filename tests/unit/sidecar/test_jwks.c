/*
 * test_jwks.c — JWKS parsing: which keys a set yields, which are skipped, which documents
 * are refused (fixtures from fixtures/make_fixtures.py).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <libgen.h>
#include <limits.h>

#include <cmocka.h>

#include "common/common.h"
#include "sidecar/authn_int.h"

static char fixdir[PATH_MAX];

/* meson compiles "../tests/unit/sidecar/x.c" from the build dir; the binary lives in
 * <build>/tests/unit/sidecar, so the sources are three levels up plus "..". */
static void find_fixtures(void) {
  const char *env = getenv("MG_AUTHN_FIXTURES");
  if (env) {
    snprintf(fixdir, sizeof fixdir, "%s", env);
    return;
  }
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  assert_true(n > 0);
  exe[n] = 0;
  char *d = dirname(exe);
  snprintf(fixdir, sizeof fixdir, "%s/../../../../tests/unit/sidecar/fixtures", d);
  if (access(fixdir, R_OK) != 0) snprintf(fixdir, sizeof fixdir, "tests/unit/sidecar/fixtures");
}

static struct mg_jwks *load(const char *name, int *rc, char *err, size_t errlen) {
  char p[PATH_MAX + 64];
  struct mg_jwks *ks = NULL;
  snprintf(p, sizeof p, "%s/%s", fixdir, name);
  *rc = mg_jwks_load_file(p, NULL, &ks, err, errlen);
  return ks;
}

static const struct mg_jwk *by_kid(const struct mg_jwks *ks, const char *kid) {
  for (size_t i = 0; i < ks->nkeys; i++)
    if (ks->keys[i].kid && !strcmp(ks->keys[i].kid, kid)) return &ks->keys[i];
  return NULL;
}

static void test_main_set(void **st) {
  int rc;
  char err[256] = "";
  struct mg_jwks *ks = load("jwks.json", &rc, err, sizeof err);
  assert_int_equal(rc, 0);
  /* rsa1, ec256, ec384, ec521 usable; enc-use, oct, 1024-bit RSA and PS256 skipped */
  assert_int_equal(ks->nkeys, 4);
  const struct mg_jwk *k = by_kid(ks, "rsa1");
  assert_non_null(k);
  assert_int_equal(k->kty, MG_JWK_RSA);
  assert_int_equal(k->alg, MG_JWS_RS256);
  assert_int_equal(EVP_PKEY_get_bits(k->pkey), 2048);
  k = by_kid(ks, "ec384");
  assert_non_null(k);
  assert_int_equal(k->alg, MG_JWS_NONE);
  assert_int_equal(k->ec_alg, MG_JWS_ES384);
  assert_int_equal(k->fits, 1u << MG_JWS_ES384);
  assert_non_null(by_kid(ks, "ec521"));
  assert_null(by_kid(ks, "enc1"));
  assert_null(by_kid(ks, "hmac"));
  assert_null(by_kid(ks, "short"));
  assert_null(by_kid(ks, "ps"));
  mg_jwks_free(ks);
}

static void test_fingerprints(void **st) {
  int rc;
  char err[256];
  struct mg_jwks *a = load("jwks.json", &rc, err, sizeof err);
  assert_int_equal(rc, 0);
  struct mg_jwks *b = load("jwks_rotated.json", &rc, err, sizeof err);
  assert_int_equal(rc, 0);
  /* the same EC key in two documents has the same fingerprint; different keys differ */
  assert_true(by_kid(a, "ec256")->fp == by_kid(b, "ec256")->fp);
  assert_true(by_kid(a, "rsa1")->fp != by_kid(b, "rsa2")->fp);
  assert_true(by_kid(a, "ec256")->fp != by_kid(a, "ec384")->fp);
  assert_memory_not_equal(a->digest, b->digest, 32);
  mg_jwks_free(a);
  mg_jwks_free(b);
}

/* A cached verdict is kept across a reload only for "the same key": the same material
 * under another kid or another alg pin is not (a fresh check would refuse the token). */
static void test_fingerprint_covers_kid_and_alg(void **st) {
  static const char *n = "lHkDs4xGK_E1_QefZViGClLUw3ArV5yX363Vb-GCcHInHVoC-babKBX_pE0v8AHGH1SANrfUW6ve1QXO6Ak0dsS78WtyD3x6T4qHRSg-UdEEl4ZpgE8LR1jYptmX775XNwvZobkfr-edkw3L1PjcA_oeL4TJogsyycuGDckw0hMtzD-6T136Xam3VrBmtyf5W9mXtYn7Q0pGzb0BrP3YHjK1TxscqiIP7ufyCSLmO6r04FNCr6rBanlZwAsK5bbFArZ09Mz08fVYoBM-gw3KYcK4Z2WVv1QO3PqVinBG2up1xSQlx4_wYag_shgOw_fdYn5wANONjvizBY0BWinOwQ";
  char doc[2048], err[256];
  uint64_t fp[4];
  const char *variants[4][2] = {{"a", ""}, {"a", ",\"alg\":\"RS256\""}, {"a", ",\"alg\":\"RS512\""},
                                {"b", ""}};
  for (int i = 0; i < 4; i++) {
    struct mg_jwks *ks = NULL;
    snprintf(doc, sizeof doc, "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"%s\",\"n\":\"%s\",\"e\":\"AQAB\"%s}]}",
             variants[i][0], n, variants[i][1]);
    assert_int_equal(mg_jwks_parse(doc, strlen(doc), &ks, err, sizeof err), 0);
    assert_int_equal(ks->nkeys, 1);
    fp[i] = ks->keys[0].fp;
    mg_jwks_free(ks);
  }
  for (int i = 0; i < 4; i++)
    for (int j = i + 1; j < 4; j++) assert_true(fp[i] != fp[j]);
  /* and the same document twice is the same key */
  struct mg_jwks *ks = NULL;
  snprintf(doc, sizeof doc, "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"b\",\"n\":\"%s\",\"e\":\"AQAB\"}]}", n);
  assert_int_equal(mg_jwks_parse(doc, strlen(doc), &ks, err, sizeof err), 0);
  assert_true(ks->keys[0].fp == fp[3]);
  mg_jwks_free(ks);
}

/* Reloading the same bytes costs a read and a hash: no set comes back to parse or swap. */
static void test_unchanged_file(void **st) {
  int rc;
  char err[256], p[PATH_MAX + 64];
  struct mg_jwks *a = load("jwks.json", &rc, err, sizeof err), *b = (struct mg_jwks *)1;
  assert_int_equal(rc, 0);
  snprintf(p, sizeof p, "%s/jwks.json", fixdir);
  assert_int_equal(mg_jwks_load_file(p, a->digest, &b, err, sizeof err), 0);
  assert_null(b);
  snprintf(p, sizeof p, "%s/jwks_rotated.json", fixdir);
  assert_int_equal(mg_jwks_load_file(p, a->digest, &b, err, sizeof err), 0);
  assert_non_null(b);
  assert_memory_not_equal(a->digest, b->digest, 32);
  mg_jwks_free(a);
  mg_jwks_free(b);
}

static void test_bad_documents(void **st) {
  int rc;
  char err[256] = "";
  struct mg_jwks *ks = load("jwks_bad.json", &rc, err, sizeof err);
  assert_int_equal(rc, MG_ERR_INVALID);
  assert_null(ks);
  assert_non_null(strstr(err, "not valid JSON"));
  const char *bad[] = {"", "[]", "{}", "{\"keys\":{}}", "{\"keys\":[],\"keys\":[]}", "null",
                       "{\"keys\":[]} trailing"};
  for (size_t i = 0; i < MG_ARRAY_LEN(bad); i++) {
    ks = NULL;
    rc = mg_jwks_parse(bad[i], strlen(bad[i]), &ks, err, sizeof err);
    assert_int_equal(rc, MG_ERR_INVALID);
    assert_null(ks);
  }
  ks = load("does-not-exist.json", &rc, err, sizeof err);
  assert_true(rc < 0);
  assert_null(ks);
}

static void test_skipped_keys(void **st) {
  char err[256];
  struct mg_jwks *ks = NULL;
  /* P-256 point not on the curve (y = x), alg that does not fit the curve, unknown crv,
   * x of the wrong length, padded base64, RSA key with alg ES256, non-string kid */
  const char *doc =
      "{\"keys\":["
      "{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"off\","
      "\"x\":\"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE\","
      "\"y\":\"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE\"},"
      "{\"kty\":\"EC\",\"crv\":\"P-256K\",\"kid\":\"k\",\"x\":\"AA\",\"y\":\"AA\"},"
      "{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"short\",\"x\":\"AQ\",\"y\":\"AQ\"},"
      "{\"kty\":\"RSA\",\"kid\":\"pad\",\"n\":\"AQAB==\",\"e\":\"AQAB\"},"
      "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"kid\":\"ed\",\"x\":\"AA\"},"
      "{\"kid\":5,\"kty\":\"EC\"},"
      "7"
      "]}";
  /* a set with no usable key is an error: it must not replace the last good set */
  assert_int_equal(mg_jwks_parse(doc, strlen(doc), &ks, err, sizeof err), MG_ERR_INVALID);
  assert_null(ks);
  assert_non_null(strstr(err, "no usable key (7 skipped)"));
  assert_int_equal(mg_jwks_parse("{\"keys\":[]}", 11, &ks, err, sizeof err), MG_ERR_INVALID);
  assert_null(ks);
}

static void test_alg_names(void **st) {
  assert_int_equal(mg_jws_alg_parse("RS256", 5), MG_JWS_RS256);
  assert_int_equal(mg_jws_alg_parse("ES512", 5), MG_JWS_ES512);
  assert_int_equal(mg_jws_alg_parse("none", 4), MG_JWS_NONE);
  assert_int_equal(mg_jws_alg_parse("HS256", 5), MG_JWS_NONE);
  assert_int_equal(mg_jws_alg_parse("PS256", 5), MG_JWS_NONE);
  assert_int_equal(mg_jws_alg_parse("rs256", 5), MG_JWS_NONE);
  assert_int_equal(mg_jws_alg_parse("RS2560", 6), MG_JWS_NONE);
  assert_int_equal(mg_jws_ec_len(MG_JWS_ES512), 66);
  assert_string_equal(mg_jws_alg_name(MG_JWS_ES384), "ES384");
}

int main(void) {
  find_fixtures();
  mg_log_set_level(MG_LOG_ERROR);
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_main_set),      cmocka_unit_test(test_fingerprints),
    cmocka_unit_test(test_bad_documents), cmocka_unit_test(test_skipped_keys),
    cmocka_unit_test(test_alg_names),     cmocka_unit_test(test_fingerprint_covers_kid_and_alg),
    cmocka_unit_test(test_unchanged_file),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
