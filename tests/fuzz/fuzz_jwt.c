/*
 * fuzz_jwt.c — arbitrary bytes as a bearer token to mg_authn_verify().
 *
 * Uses the unit-test JWKS (tests/unit/sidecar/fixtures/jwks.json: RSA 2048, P-256, P-384,
 * P-521) with a fixed clock, so the seed tokens in tests/fuzz/corpus/jwt (PyJWT-minted,
 * exp 2099) verify and mutations reach every check including the signature. Set
 * MG_FUZZ_JWKS to use another set. Build (from the repo root):
 *   clang -fsanitize=fuzzer,address,undefined -I. -D_GNU_SOURCE tests/fuzz/fuzz_jwt.c \
 *     sidecar/authn.c sidecar/jwks.c common/ *.c -ljansson -lcrypto -lcurl -lpthread
 *   ./a.out tests/fuzz/corpus/jwt
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/common.h"
#include "sidecar/authn.h"

static struct mg_authn *authn;
static struct mg_authn_cache *cache;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  static char *auds[] = {"mesh"}, *algs[] = {"RS256", "ES256", "ES384", "ES512"};
  static struct mg_config_issuer iss = {
      .issuer = "https://idp.test", .audiences = auds, .naudiences = 1,
      .algorithms = algs, .nalgorithms = 4, .clock_skew_s = 60, .jwks_refresh_s = 300,
      .jwks_min_refresh_s = 3600}; /* one unknown-kid re-read, not one per input */
  static struct mg_config cfg = {.refcnt = 1, .issuers = &iss, .nissuers = 1,
                                 .max_token_bytes = 16384};
  const char *cands[] = {getenv("MG_FUZZ_JWKS"), "tests/unit/sidecar/fixtures/jwks.json",
                         "../tests/unit/sidecar/fixtures/jwks.json",
                         "../../tests/unit/sidecar/fixtures/jwks.json"};
  for (size_t i = 0; i < sizeof cands / sizeof cands[0] && !iss.jwks_file; i++)
    if (cands[i] && access(cands[i], R_OK) == 0) iss.jwks_file = (char *)cands[i];
  if (!iss.jwks_file) {
    fprintf(stderr, "fuzz_jwt: no JWKS found; run from the repo root or set MG_FUZZ_JWKS\n");
    abort();
  }
  mg_log_set_level(MG_LOG_ERROR);
  char err[256];
  if (mg_authn_new(&cfg, &authn, err, sizeof err) != 0) {
    fprintf(stderr, "fuzz_jwt: %s\n", err);
    abort();
  }
  cache = mg_authn_cache_new(64);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const int64_t now = 1800000000LL * 1000000; /* 2027: the seeds' exp (2099) is ahead */
  struct mg_authn_identity id;
  char why[96];
  /* every other input bypasses the cache so both paths see each mutation */
  int rc = mg_authn_verify(authn, (size & 1) ? cache : NULL, (const char *)data, size, now, &id,
                           why, sizeof why);
  if (rc == 0) {
    if (!id.user || strncmp(id.user, "user:", 5) != 0 || strlen(id.token_hash) != 64) abort();
    for (size_t i = 0; i < id.ngroups; i++)
      if (strncmp(id.groups[i], "group:", 6) != 0) abort();
    (void)mg_authn_claim_matches(&id, "scope", "mesh:admin");
    mg_authn_identity_release(&id);
  } else if (!why[0] || memchr(why, 0, sizeof why) == NULL) {
    abort(); /* every refusal has a reason */
  }
  return 0;
}
