/*
 * fuzz_grant.c — libFuzzer target for the grant codec.
 *
 * Feeds the input to mg_policy_grants_parse (the `policy check` / import path). When it
 * parses, every grant must survive the canonical round trip: to_json, parse again, equal
 * fields, and the same canonical bytes (ETags and the revision digest depend on it).
 * The input is also tried as a single grant with a pointer prefix.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy/policy.h"

static void round_trip(const struct mg_grant *g) {
  char *j = mg_policy_grant_to_json(g);
  if (!j) abort();
  struct mg_grant *back = NULL;
  struct mg_policy_diag d = {0};
  if (mg_policy_grant_parse(j, strlen(j), "", &back, &d) != 0) {
    fprintf(stderr, "canonical form does not parse: %s\n%s\n", j, d.n ? d.msgs[0] : "");
    abort();
  }
  if (!mg_policy_grant_equal(g, back)) {
    fprintf(stderr, "round trip changed the grant: %s\n", j);
    abort();
  }
  char *j2 = mg_policy_grant_to_json(back);
  if (!j2 || strcmp(j, j2) != 0) {
    fprintf(stderr, "canonical form not stable:\n%s\n%s\n", j, j2 ? j2 : "(null)");
    abort();
  }
  free(j2);
  free(j);
  mg_policy_grant_free(back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *s = (const char *)data;
  struct mg_grant **gs = NULL;
  size_t n = 0;
  struct mg_policy_diag d = {0};
  int rv = mg_policy_grants_parse(s, size, &gs, &n, &d);
  if (rv == 0) {
    if (d.n) abort(); /* success never comes with problems */
    for (size_t i = 0; i < n; i++) round_trip(gs[i]);
    mg_policy_grants_free(gs, n);
  } else if (rv == MG_POLICY_E_INVALID) {
    if (d.n == 0) abort(); /* a rejection always says why */
    for (size_t i = 0; i < d.n; i++)
      if (!strstr(d.msgs[i], ": ") || !mg_utf8_valid(d.msgs[i], strlen(d.msgs[i]))) abort();
  }
  mg_policy_diag_clear(&d);

  struct mg_grant *g = NULL;
  rv = mg_policy_grant_parse(s, size, "/7", &g, &d);
  if (rv == 0) {
    round_trip(g);
    mg_policy_grant_free(g);
  } else if (rv == MG_POLICY_E_INVALID) {
    for (size_t i = 0; i < d.n; i++)
      if (strncmp(d.msgs[i], "/7", 2) != 0 && strncmp(d.msgs[i], ": too many", 10) != 0) abort();
  }
  mg_policy_diag_clear(&d);
  return 0;
}
