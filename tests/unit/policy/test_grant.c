/* test_grant.c — grant JSON codec and validation: canonical output, and the exact JSON
 * pointer of every problem for malformed and invalid input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "policy/policy.h"

#define FULL                                                                                  \
  "{\"id\": \"orders-analysts-read\", \"effect\": \"allow\",\n"                               \
  " \"subjects\": [\"group:analysts\"], \"product\": \"orders\",\n"                           \
  " \"resources\": [\"datasets/orders_fact/**\"], \"actions\": [\"read\"],\n"                 \
  " \"purposes\": [\"analytics\"], \"not_before\": null, \"expires\": \"2027-01-01T00:00:00Z\",\n" \
  " \"description\": \"analysts read the orders fact table\"}"

static bool diag_has(const struct mg_policy_diag *d, const char *ptr) {
  size_t n = strlen(ptr);
  for (size_t i = 0; i < d->n; i++)
    if (strncmp(d->msgs[i], ptr, n) == 0 && d->msgs[i][n] == ':' && d->msgs[i][n + 1] == ' ')
      return true;
  return false;
}

static bool diag_contains(const struct mg_policy_diag *d, const char *text) {
  for (size_t i = 0; i < d->n; i++)
    if (strstr(d->msgs[i], text)) return true;
  return false;
}

static void dump(const struct mg_policy_diag *d) {
  for (size_t i = 0; i < d->n; i++) fprintf(stderr, "  diag: %s\n", d->msgs[i]);
}

/* Parses s as one grant; expects failure with a problem at ptr. */
static void expect_bad(const char *s, const char *ptr) {
  struct mg_grant *g = (void *)1;
  struct mg_policy_diag d = {0};
  int rv = mg_policy_grant_parse(s, strlen(s), "", &g, &d);
  if (rv != MG_POLICY_E_INVALID || !diag_has(&d, ptr)) {
    fprintf(stderr, "input: %s\nwanted pointer '%s', rv=%d\n", s, ptr, rv);
    dump(&d);
    fail();
  }
  assert_null(g);
  mg_policy_diag_clear(&d);
}

static struct mg_grant *expect_good(const char *s) {
  struct mg_grant *g = NULL;
  struct mg_policy_diag d = {0};
  int rv = mg_policy_grant_parse(s, strlen(s), "", &g, &d);
  if (rv) {
    fprintf(stderr, "input: %s\n", s);
    dump(&d);
  }
  assert_int_equal(rv, 0);
  assert_int_equal(d.n, 0);
  return g;
}

/* A valid grant with one field replaced (field given as  "key": value). */
static char *with(const char *key, const char *value) {
  static char buf[8192];
  const char *fields[][2] = {
      {"id", "\"g1\""},           {"effect", "\"allow\""},
      {"subjects", "[\"user:alice\"]"}, {"product", "\"orders\""},
      {"resources", "[\"datasets/x/**\"]"}, {"actions", "[\"read\"]"},
  };
  size_t n = 0;
  n += (size_t)snprintf(buf + n, sizeof buf - n, "{");
  bool first = true, replaced = false;
  for (size_t i = 0; i < 6; i++) {
    const char *v = fields[i][1];
    if (strcmp(fields[i][0], key) == 0) {
      replaced = true;
      if (!value) continue;
      v = value;
    }
    n += (size_t)snprintf(buf + n, sizeof buf - n, "%s\"%s\":%s", first ? "" : ",",
                          fields[i][0], v);
    first = false;
  }
  if (!replaced && value)
    n += (size_t)snprintf(buf + n, sizeof buf - n, ",\"%s\":%s", key, value);
  snprintf(buf + n, sizeof buf - n, "}");
  return buf;
}

static void test_full_example_canonical(void **st) {
  (void)st;
  struct mg_grant *g = expect_good(FULL);
  assert_string_equal(g->id, "orders-analysts-read");
  assert_int_equal(g->effect, MG_POLICY_ALLOW);
  assert_int_equal(g->actions, MG_ACTION_READ);
  assert_int_equal(g->npurposes, 1);
  assert_true(g->not_before_us == MG_POLICY_NO_TIME);
  assert_true(g->expires_us == 1798761600000000LL);
  char *j = mg_policy_grant_to_json(g);
  assert_string_equal(j,
      "{\"actions\":[\"read\"],\"description\":\"analysts read the orders fact table\","
      "\"effect\":\"allow\",\"expires\":\"2027-01-01T00:00:00.000000Z\","
      "\"id\":\"orders-analysts-read\",\"product\":\"orders\",\"purposes\":[\"analytics\"],"
      "\"resources\":[\"datasets/orders_fact/**\"],\"subjects\":[\"group:analysts\"]}");
  struct mg_grant *g2 = expect_good(j);
  assert_true(mg_policy_grant_equal(g, g2));
  char *j2 = mg_policy_grant_to_json(g2);
  assert_string_equal(j, j2);
  free(j);
  free(j2);
  mg_policy_grant_free(g);
  mg_policy_grant_free(g2);
}

static void test_canonical_normalises(void **st) {
  (void)st;
  /* Offsets become Z, actions a fixed order, nulls disappear, escapes are re-encoded. */
  const char *in =
      "{\"description\":null,\"purposes\":null,\"id\":\"a:b.c_d-e\",\"effect\":\"deny\","
      "\"subjects\":[\"*\",\"spiffe:spiffe://td/ns/a/sa/b\"],\"product\":\"p\","
      "\"resources\":[\"**\",\"a/*/b\"],\"actions\":[\"write\",\"read\"],"
      "\"not_before\":\"2026-01-01T01:30:00.5+01:30\",\"expires\":\"2026-06-01t00:00:00z\"}";
  struct mg_grant *g = expect_good(in);
  char *j = mg_policy_grant_to_json(g);
  assert_string_equal(j,
      "{\"actions\":[\"read\",\"write\"],\"effect\":\"deny\","
      "\"expires\":\"2026-06-01T00:00:00.000000Z\",\"id\":\"a:b.c_d-e\","
      "\"not_before\":\"2026-01-01T00:00:00.500000Z\",\"product\":\"p\","
      "\"resources\":[\"**\",\"a/*/b\"],\"subjects\":[\"*\",\"spiffe:spiffe://td/ns/a/sa/b\"]}");
  free(j);
  mg_policy_grant_free(g);

  g = expect_good(with("description", "\"tab\\there \\u00e9 \\\"q\\\" \\u007f\""));
  j = mg_policy_grant_to_json(g);
  struct mg_grant *g2 = expect_good(j);
  assert_string_equal(g2->description, "tab\there \xc3\xa9 \"q\" \x7f");
  assert_true(mg_policy_grant_equal(g, g2));
  free(j);
  mg_policy_grant_free(g);
  mg_policy_grant_free(g2);
}

static void test_malformed_json(void **st) {
  (void)st;
  /* Syntax-level problems (jansson stops there) still carry the pointer of the member or
   * element being read, plus line:column. */
  expect_bad("{\"id\":\"a\",\"id\":\"b\"}", "/id");
  struct mg_policy_diag d = {0};
  struct mg_grant *g;
  const char *dup = "{\"id\":\"a\",\"effect\":\"allow\",\"effect\":\"deny\"}";
  assert_int_equal(mg_policy_grant_parse(dup, strlen(dup), "", &g, &d), MG_POLICY_E_INVALID);
  assert_int_equal(d.n, 1);
  assert_string_equal(d.msgs[0],
                      "/effect: invalid JSON at line 1, column 35: duplicate object key near "
                      "'\"effect\"'");
  mg_policy_diag_clear(&d);
  expect_bad("{\"id\":\"g1\"} x", "");             /* trailing data */
  expect_bad("{\"id\":\"g1\"}{\"id\":\"g2\"}", ""); /* two documents */
  expect_bad("{\"id\":\"a\xff\"}", "/id");           /* invalid UTF-8 */
  expect_bad("{\"effect\":\"allow\",\"id\":\"\xed\xa0\x80\"}", "/id"); /* surrogate */
  expect_bad("{\"id\":\"a\\u0000b\"}", "/id");      /* NUL escape */
  expect_bad(with("id", "123456789012345678901234567890"), "/id"); /* integer overflow */
  expect_bad(with("id", "1e999"), "/id");                            /* real overflow */
  expect_bad(with("resources", "[\"a\", 1e999]"), "/resources/1");
  expect_bad("", "");
  expect_bad("{", "");
  expect_bad("{\"id\" \"x\"}", "/id");
  expect_bad("\"just a string\"", "");
  /* A broken key is quoted as valid UTF-8. */
  const char *bk = "{\"i\xff\":1}";
  assert_int_equal(mg_policy_grant_parse(bk, strlen(bk), "", &g, &d), MG_POLICY_E_INVALID);
  assert_int_equal(d.n, 1);
  assert_true(d.msgs[0][0] == '/');
  for (const char *p = d.msgs[0]; *p; p++) assert_true((unsigned char)*p < 0x80);
  mg_policy_diag_clear(&d);
  /* Array of grants: the element index is part of the pointer. */
  const char *arr = "[{\"id\":\"a\"},{\"id\":\"b\",\"subjects\":[\"user:x\",\"user:\xc3\"]}]";
  struct mg_grant **gs;
  size_t ng;
  assert_int_equal(mg_policy_grants_parse(arr, strlen(arr), &gs, &ng, &d), MG_POLICY_E_INVALID);
  assert_true(diag_has(&d, "/1/subjects/1"));
  mg_policy_diag_clear(&d);
  const char *arr2 = "[{\"id\":\"a\"},{\"id\":\"b\",\"id\":\"c\"}]";
  assert_int_equal(mg_policy_grants_parse(arr2, strlen(arr2), &gs, &ng, &d), MG_POLICY_E_INVALID);
  assert_true(diag_has(&d, "/1/id"));
  mg_policy_diag_clear(&d);
  /* With a prefix. */
  assert_int_equal(mg_policy_grant_parse(dup, strlen(dup), "/4", &g, &d), MG_POLICY_E_INVALID);
  assert_true(diag_has(&d, "/4/effect"));
  mg_policy_diag_clear(&d);
  /* Deep nesting: far beyond jansson's bound is a syntax error... */
  size_t depth = 5000;
  char *deep = malloc(2 * depth + 1);
  memset(deep, '[', depth);
  memset(deep + depth, ']', depth);
  deep[2 * depth] = 0;
  assert_int_equal(mg_policy_grant_parse(deep, strlen(deep), "", &g, &d), MG_POLICY_E_INVALID);
  assert_int_equal(d.n, 1);
  assert_true(strncmp(d.msgs[0], "/0/0/0/0/0/0/0/0/", 17) == 0);
  assert_non_null(strstr(d.msgs[0], "depth"));
  mg_policy_diag_clear(&d);
  free(deep);
  /* ...and any nesting a grant does not need is rejected at its exact pointer. */
  expect_bad(with("id", "[[[\"x\"]]]"), "/id");
  expect_bad(with("resources", "[[\"a\"]]"), "/resources/0");
  expect_bad(with("resources", "[\"a\", {\"x\": [1]}]"), "/resources/1");
  expect_bad(with("subjects", "[\"user:a\", [\"user:b\"]]"), "/subjects/1");
  expect_bad(with("description", "{\"a\":{\"b\":1}}"), "/description");
  expect_bad("[" FULL "]", "");
}

static void test_types(void **st) {
  (void)st;
  expect_bad(with("id", "5"), "/id");
  expect_bad(with("effect", "true"), "/effect");
  expect_bad(with("product", "1.5"), "/product");
  expect_bad(with("subjects", "\"user:alice\""), "/subjects");
  expect_bad(with("subjects", "[7]"), "/subjects/0");
  expect_bad(with("actions", "[1]"), "/actions/0");
  expect_bad(with("actions", "\"read\""), "/actions");
  expect_bad(with("purposes", "[\"a\", 2]"), "/purposes/1");
  expect_bad(with("not_before", "1700000000"), "/not_before");
  expect_bad(with("expires", "false"), "/expires");
}

static void test_fields(void **st) {
  (void)st;
  char longid[200];
  memset(longid, 'a', 130);
  longid[0] = '"';
  longid[130] = '"';
  longid[131] = 0;
  expect_bad(with("id", longid), "/id");
  longid[129] = '"';
  longid[130] = 0;
  mg_policy_grant_free(expect_good(with("id", longid))); /* 128 ok */
  expect_bad(with("id", "\"\""), "/id");
  expect_bad(with("id", "\"a b\""), "/id");
  expect_bad(with("id", "\"a/b\""), "/id");
  expect_bad(with("id", "\".\""), "/id");  /* dot segments in /v1/grants/{id} */
  expect_bad(with("id", "\"..\""), "/id");
  mg_policy_grant_free(expect_good(with("id", "\"...\"")));
  mg_policy_grant_free(expect_good(with("id", "\"a..b\"")));
  expect_bad(with("effect", "\"permit\""), "/effect");
  expect_bad(with("product", "\"\""), "/product");
  expect_bad(with("product", "\"or ders\""), "/product");
  expect_bad(with("product", "\"a:b\""), "/product");
  expect_bad(with("subjects", "[]"), "/subjects");
  expect_bad(with("subjects", "[\"alice\"]"), "/subjects/0");
  expect_bad(with("subjects", "[\"user:\"]"), "/subjects/0");
  expect_bad(with("subjects", "[\"user:a\", \"group:\"]"), "/subjects/1");
  expect_bad(with("subjects", "[\"user:a\\u0007\"]"), "/subjects/0");
  expect_bad(with("subjects", "[\"user:a\", \"user:a\"]"), "/subjects/1");
  expect_bad(with("subjects", "[\"**\"]"), "/subjects/0");
  char big[400];
  strcpy(big, "[\"user:");
  memset(big + 7, 'x', 257);
  strcpy(big + 7 + 257, "\"]");
  expect_bad(with("subjects", big), "/subjects/0");
  big[7 + 256] = 0;
  strcat(big, "\"]");
  mg_policy_grant_free(expect_good(with("subjects", big)));
  mg_policy_grant_free(expect_good(with("subjects", "[\"*\",\"client:etl\",\"group:g\"]")));
  expect_bad(with("actions", "[]"), "/actions");
  expect_bad(with("actions", "[\"delete\"]"), "/actions/0");
  expect_bad(with("actions", "[\"read\",\"read\"]"), "/actions/1");
  expect_bad(with("actions", "[\"READ\"]"), "/actions/0");
  expect_bad(with("purposes", "[]"), "/purposes");
  expect_bad(with("purposes", "[\"\"]"), "/purposes/0");
  expect_bad(with("not_before", "\"2026-13-01T00:00:00Z\""), "/not_before");
  expect_bad(with("not_before", "\"2026-01-01\""), "/not_before");
  expect_bad(with("expires", "\"\""), "/expires");
  expect_bad("{\"id\":\"g1\",\"effect\":\"allow\",\"subjects\":[\"*\"],\"product\":\"p\","
             "\"resources\":[\"a\"],\"actions\":[\"read\"],"
             "\"not_before\":\"2027-01-01T00:00:00Z\",\"expires\":\"2026-01-01T00:00:00Z\"}",
             "/expires");
  expect_bad("{\"id\":\"g1\",\"effect\":\"allow\",\"subjects\":[\"*\"],\"product\":\"p\","
             "\"resources\":[\"a\"],\"actions\":[\"read\"],"
             "\"not_before\":\"2027-01-01T00:00:00Z\",\"expires\":\"2027-01-01T00:00:00Z\"}",
             "/expires");
  char *desc = malloc(1100);
  desc[0] = '"';
  memset(desc + 1, 'd', 1025);
  strcpy(desc + 1026, "\"");
  expect_bad(with("description", desc), "/description");
  strcpy(desc + 1025, "\"");
  mg_policy_grant_free(expect_good(with("description", desc)));
  free(desc);
  expect_bad(with("id", NULL), "/id");
  expect_bad(with("resources", NULL), "/resources");
  expect_bad(with("colour", "\"red\""), "/colour");
  expect_bad(with("a/b~c", "1"), "/a~1b~0c");
}

static void test_patterns(void **st) {
  (void)st;
  static const char *const bad[] = {
      "", "/datasets/x", "datasets//x", "datasets/x/", "datasets/./x", "datasets/../x", "..",
      "datasets/x*", "datasets/*x", "datasets/***", "a**", "**b/c", "datasets/a%2Fb",
      "datasets/a\\\\b", "datasets/a;b", "datasets/a#b", "datasets/a\\u0001b", "datasets/a?x=1",
      "datasets/a\\u007f",
      /* not canonical, so they would never match: raw space, quote, non-ASCII; an escape of a
       * character written raw in canonical paths; lowercase hex; a malformed escape */
      "datasets/a b", "datasets/a\\\"b", "caf\\u00e9/*", "datasets/a%3Ab", "datasets/%6Frders",
      "datasets/caf%c3%a9", "datasets/a%2", "datasets/a%zz", "datasets/%C3",
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    char v[256];
    snprintf(v, sizeof v, "[\"ok/**\", \"%s\"]", bad[i]);
    expect_bad(with("resources", v), "/resources/1");
  }
  static const char *const good[] = {"**", "*", "a/**/b", "a/*/c", "*/status", "**/export",
                                     "datasets/orders_fact/2024", "a/**", "a.b/c-d_e/~x",
                                     "x/**/**/y", "caf%C3%A9/*", "a%20b/**", "a:b@c/!$&'()+,=",
                                     "100%25off"};
  for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
    char v[256];
    snprintf(v, sizeof v, "[\"%s\"]", good[i]);
    mg_policy_grant_free(expect_good(with("resources", v)));
  }
  /* The message names the rule. */
  struct mg_policy_diag d = {0};
  struct mg_grant *g;
  const char *s = with("resources", "[\"a/b**\"]");
  assert_int_equal(mg_policy_grant_parse(s, strlen(s), "/3", &g, &d), MG_POLICY_E_INVALID);
  assert_int_equal(d.n, 1);
  assert_string_equal(d.msgs[0], "/3/resources/0: '**' must be a whole segment");
  mg_policy_diag_clear(&d);
  s = with("resources", "[\"a b\"]");
  assert_int_equal(mg_policy_grant_parse(s, strlen(s), "", &g, &d), MG_POLICY_E_INVALID);
  assert_non_null(strstr(d.msgs[0], "/resources/0: not a canonical path: escape spaces"));
  mg_policy_diag_clear(&d);
}

static void test_every_problem_reported(void **st) {
  (void)st;
  const char *s = "{\"id\":\"bad id\",\"effect\":\"maybe\",\"subjects\":[\"x\",\"user:ok\",\"y\"],"
                  "\"resources\":[\"/a\"],\"actions\":[\"read\",\"fly\"],\"extra\":1,\"more\":2}";
  struct mg_policy_diag d = {0};
  struct mg_grant *g;
  assert_int_equal(mg_policy_grant_parse(s, strlen(s), "", &g, &d), MG_POLICY_E_INVALID);
  static const char *const want[] = {"/id", "/effect", "/subjects/0", "/subjects/2",
                                     "/product", "/resources/0", "/actions/1", "/extra",
                                     "/more"};
  for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
    if (!diag_has(&d, want[i])) {
      dump(&d);
      fail_msg("missing %s", want[i]);
    }
  }
  assert_int_equal(d.n, sizeof want / sizeof *want);
  mg_policy_diag_clear(&d);
  assert_int_equal(d.n, 0);
  /* diag may be NULL */
  assert_int_equal(mg_policy_grant_parse(s, strlen(s), "", &g, NULL), MG_POLICY_E_INVALID);
}

static void test_grants_array(void **st) {
  (void)st;
  const char *s =
      "[{\"id\":\"a\",\"effect\":\"allow\",\"subjects\":[\"*\"],\"product\":\"p\","
      "\"resources\":[\"x\"],\"actions\":[\"read\"]},"
      "{\"id\":\"b\",\"effect\":\"allow\",\"subjects\":[\"*\"],\"product\":\"p\","
      "\"resources\":[\"x\"],\"actions\":[\"read\"]},"
      "{\"id\":\"a\",\"effect\":\"deny\",\"subjects\":[\"*\"],\"product\":\"p\","
      "\"resources\":[\"x\",\"y//z\"],\"actions\":[\"read\"]},"
      "7,"
      "{\"id\":\"b\",\"effect\":\"allow\",\"subjects\":[\"*\"],\"product\":\"p\","
      "\"resources\":[\"x\"],\"actions\":[\"read\"]}]";
  struct mg_grant **gs = (void *)1;
  size_t n = 99;
  struct mg_policy_diag d = {0};
  assert_int_equal(mg_policy_grants_parse(s, strlen(s), &gs, &n, &d), MG_POLICY_E_INVALID);
  assert_null(gs);
  assert_int_equal(n, 0);
  assert_true(diag_has(&d, "/2/resources/1"));
  assert_true(diag_has(&d, "/3"));
  assert_true(diag_has(&d, "/2/id"));
  assert_true(diag_has(&d, "/4/id"));
  assert_true(diag_contains(&d, "/2/id: duplicate id (also at /0)"));
  assert_true(diag_contains(&d, "/4/id: duplicate id (also at /1)"));
  assert_int_equal(d.n, 4);
  mg_policy_diag_clear(&d);

  const char *ok = "[" FULL ",{\"id\":\"z\",\"effect\":\"deny\",\"subjects\":[\"*\"],"
                   "\"product\":\"p\",\"resources\":[\"**\"],\"actions\":[\"write\"]}]";
  assert_int_equal(mg_policy_grants_parse(ok, strlen(ok), &gs, &n, &d), 0);
  assert_int_equal(n, 2);
  assert_string_equal(gs[1]->id, "z");
  mg_policy_grants_free(gs, n);

  assert_int_equal(mg_policy_grants_parse("[]", 2, &gs, &n, &d), 0);
  assert_int_equal(n, 0);
  mg_policy_grants_free(gs, n);
  assert_int_equal(mg_policy_grants_parse(FULL, strlen(FULL), &gs, &n, &d), MG_POLICY_E_INVALID);
  assert_true(diag_has(&d, ""));
  mg_policy_diag_clear(&d);
  assert_int_equal(mg_policy_grants_parse("[1] [2]", 7, &gs, &n, &d), MG_POLICY_E_INVALID);
  mg_policy_diag_clear(&d);
}

static void test_diag_bounded(void **st) {
  (void)st;
  size_t n = 5000;
  char *s = malloc(2 * n + 3);
  size_t k = 0;
  s[k++] = '[';
  for (size_t i = 0; i < n; i++) {
    if (i) s[k++] = ',';
    s[k++] = '1';
  }
  s[k++] = ']';
  s[k] = 0;
  struct mg_grant **gs;
  size_t ng;
  struct mg_policy_diag d = {0};
  assert_int_equal(mg_policy_grants_parse(s, k, &gs, &ng, &d), MG_POLICY_E_INVALID);
  assert_int_equal(d.n, 1001);
  assert_true(diag_contains(&d, "too many problems"));
  mg_policy_diag_clear(&d);
  free(s);
}

/* Regression (found by fuzz_admin): unknown member names made of '~' (escaped to two
 * bytes each) nested deep enough to fill the diag pointer buffer overflowed it. */
static void test_long_escaped_pointers(void **st) {
  (void)st;
  struct mg_buf b;
  mg_buf_init(&b);
  mg_buf_appends(&b, "[");
  for (int k = 0; k < 3; k++) {
    mg_buf_appends(&b, k ? ",{\"id\":\"g" : "{\"id\":\"g");
    mg_buf_appendf(&b, "%d\"", k);
    for (int depth = 1; depth < 40; depth++) {
      mg_buf_appends(&b, ",\"");
      for (int i = 0; i < 90 + depth; i++) mg_buf_appends(&b, i % 3 ? "~" : "/");
      mg_buf_appendf(&b, "%d\":1", depth);
    }
    mg_buf_appends(&b, "}");
  }
  mg_buf_appends(&b, "]");
  struct mg_grant **gs = NULL;
  size_t n = 0;
  struct mg_policy_diag d = {0};
  assert_int_equal(mg_policy_grants_parse(b.data, b.len, &gs, &n, &d), MG_POLICY_E_INVALID);
  assert_true(d.n > 0);
  for (size_t i = 0; i < d.n; i++) assert_true(strlen(d.msgs[i]) < 4096);
  mg_policy_diag_clear(&d);
  mg_buf_clear(&b);
}

static void test_errors_and_reasons(void **st) {
  (void)st;
  mg_policy_init();
  assert_string_equal(mg_strerror(MG_POLICY_E_PRECONDITION), "precondition failed (stale ETag)");
  assert_string_equal(mg_strerror(MG_POLICY_E_FULL), "policy store full");
  assert_string_equal(mg_strerror(MG_POLICY_E_PRODUCT), "grant belongs to another product");
  assert_string_equal(mg_policy_reason_str(MG_POLICY_REASON_ALLOWED), "allowed");
  assert_string_equal(mg_policy_reason_str(MG_POLICY_REASON_NO_GRANT), "no_matching_grant");
  assert_string_equal(mg_policy_reason_str(MG_POLICY_REASON_DENIED), "denied_by_grant");
  assert_string_equal(mg_policy_reason_str(MG_POLICY_REASON_PURPOSE_MISSING), "purpose_missing");
  assert_string_equal(mg_policy_reason_str(MG_POLICY_REASON_EXPIRED), "grant_expired");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_full_example_canonical),
      cmocka_unit_test(test_canonical_normalises),
      cmocka_unit_test(test_malformed_json),
      cmocka_unit_test(test_types),
      cmocka_unit_test(test_fields),
      cmocka_unit_test(test_patterns),
      cmocka_unit_test(test_every_problem_reported),
      cmocka_unit_test(test_grants_array),
      cmocka_unit_test(test_diag_bounded),
      cmocka_unit_test(test_errors_and_reasons),
      cmocka_unit_test(test_long_escaped_pointers),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
