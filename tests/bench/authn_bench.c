/*
 * authn_bench.c — cost of one mg_authn_verify(): cached hit, cold RS256, cold ES256/ES384.
 *
 * Usage (from the repo root): authn_bench [fixtures-dir] [seconds-per-case]
 *   fixtures-dir defaults to tests/unit/sidecar/fixtures (jwks.json + token_*.txt, made by
 *   make_fixtures.py; the tokens expire in 2099). Compare the cold numbers with
 *   `openssl speed -seconds 2 rsa2048 ecdsap256` (verify/s column): the difference is JSON,
 *   base64 and the identity build. Cold = no cache; cached = one per-worker cache, 1 token.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "sidecar/authn.h"

static char *token(const char *dir, const char *name) {
  char p[4096], *t = NULL;
  size_t n = 0;
  snprintf(p, sizeof p, "%s/%s", dir, name);
  if (mg_file_read(p, 1 << 16, &t, &n) != 0) {
    fprintf(stderr, "cannot read %s\n", p);
    exit(1);
  }
  t[strcspn(t, "\r\n")] = 0;
  return t;
}

static void run(const char *label, struct mg_authn *a, struct mg_authn_cache *c, const char *t,
                double seconds) {
  struct mg_authn_identity id;
  char why[96];
  size_t len = strlen(t);
  long iters = 0, batch = c ? 100000 : 100;
  int64_t now = mg_time_now_us(), t0 = mg_mono_now_us(), el;
  if (mg_authn_verify(a, c, t, len, now, &id, why, sizeof why) != 0) {
    fprintf(stderr, "%s: token rejected: %s\n", label, why);
    exit(1);
  }
  mg_authn_identity_release(&id);
  t0 = mg_mono_now_us();
  do {
    for (long i = 0; i < batch; i++) {
      if (mg_authn_verify(a, c, t, len, now, &id, why, sizeof why) != 0) abort();
      mg_authn_identity_release(&id);
    }
    iters += batch;
    el = mg_mono_now_us() - t0;
  } while (el < (int64_t)(seconds * 1e6));
  printf("%-14s %10.3f us/verify %12.0f verify/s  (token %zu bytes, %ld iterations)\n", label,
         (double)el / (double)iters, (double)iters * 1e6 / (double)el, len, iters);
}

int main(int argc, char **argv) {
  const char *dir = argc > 1 ? argv[1] : "tests/unit/sidecar/fixtures";
  double secs = argc > 2 ? atof(argv[2]) : 2.0;
  char jwks[4096];
  snprintf(jwks, sizeof jwks, "%s/jwks.json", dir);
  char *auds[] = {"mesh"}, *algs[] = {"RS256", "ES256", "ES384", "ES512"};
  struct mg_config_issuer iss = {.issuer = "https://idp.test", .audiences = auds,
                                 .naudiences = 1, .jwks_file = jwks, .algorithms = algs,
                                 .nalgorithms = 4, .clock_skew_s = 60, .jwks_refresh_s = 300,
                                 .jwks_min_refresh_s = 10};
  struct mg_config cfg = {.refcnt = 1, .issuers = &iss, .nissuers = 1, .max_token_bytes = 8192};
  struct mg_authn *a = NULL;
  char err[256];
  mg_log_set_level(MG_LOG_ERROR);
  if (mg_authn_new(&cfg, &a, err, sizeof err) != 0) {
    fprintf(stderr, "authn: %s\n", err);
    return 1;
  }
  struct mg_authn_cache *c = mg_authn_cache_new(4096);
  char *rs = token(dir, "token_rs256.txt"), *es = token(dir, "token_es256.txt"),
       *es384 = token(dir, "token_es384.txt");
  run("cached RS256", a, c, rs, secs);
  run("cached ES256", a, c, es, secs);
  run("cold RS256", a, NULL, rs, secs);
  run("cold ES256", a, NULL, es, secs);
  run("cold ES384", a, NULL, es384, secs);
  free(rs);
  free(es);
  free(es384);
  mg_authn_cache_free(c);
  mg_authn_free(a);
  return 0;
}
