/* test_entry.c — entry encoding: golden lines for each kind (sorted keys, integers only,
 * absent fields omitted), JSON escaping, the groups cap, invalid UTF-8 refused, and the
 * splice of index / of / time by the writer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <cmocka.h>

#include <jansson.h>

#include "lineage/lineage_store.h"

static const char T[] = "2026-11-25T10:00:00.123456Z";
static const char OJ[] = "\"lineage.example/orders/h1\"";

static char *line(const struct mg_lineage_tmpl *t, uint64_t index, uint64_t of) {
  struct mg_buf b;
  mg_buf_init(&b);
  assert_int_equal(mg_lineage_tmpl_finish(t, index, of, T, strlen(T), &b), 0);
  return mg_buf_steal(&b);
}

static void test_access_golden(void **state) {
  (void)state;
  static const char *const groups[] = {"group:analysts", "group:emea"};
  struct mg_lineage_access a = {
      .request_id = "0190d6b0-1111-7000-8000-000000000001", .principal = "user:corp/alice",
      .groups = groups, .ngroups = 2, .client = "client:bi-tool", .peer = "10.0.0.1:51000",
      .product = "orders", .dataset = "orders_fact", .action = "read", .method = "GET",
      .path = "/datasets/orders_fact/2024?x=1", .purpose = "analytics", .decision = "allow",
      .grant = "orders-analysts-read", .policy_revision = "abc123", .token = "deadbeef"};
  struct mg_lineage_tmpl t = {0};
  assert_int_equal(mg_lineage_tmpl_access(&a, OJ, &t), 0);
  char *l = line(&t, 42, 0);
  assert_string_equal(l,
      "{\"action\":\"read\",\"client\":\"client:bi-tool\",\"dataset\":\"orders_fact\","
      "\"decision\":\"allow\",\"grant\":\"orders-analysts-read\","
      "\"groups\":[\"group:analysts\",\"group:emea\"],\"index\":42,\"method\":\"GET\","
      "\"origin\":\"lineage.example/orders/h1\",\"path\":\"/datasets/orders_fact/2024?x=1\","
      "\"peer\":\"10.0.0.1:51000\",\"policy_revision\":\"abc123\",\"principal\":\"user:corp/alice\","
      "\"product\":\"orders\",\"purpose\":\"analytics\","
      "\"request_id\":\"0190d6b0-1111-7000-8000-000000000001\","
      "\"time\":\"2026-11-25T10:00:00.123456Z\",\"token\":\"deadbeef\"}");
  free(l);
  mg_lineage_tmpl_clear(&t);
  /* absent fields are omitted, not null */
  struct mg_lineage_access d = {.request_id = "r", .decision = "unauthenticated",
                                .reason = "invalid_token", .peer = "[::1]:5"};
  assert_int_equal(mg_lineage_tmpl_access(&d, OJ, &t), 0);
  l = line(&t, 0, 0);
  assert_string_equal(l, "{\"decision\":\"unauthenticated\",\"index\":0,"
                         "\"origin\":\"lineage.example/orders/h1\",\"peer\":\"[::1]:5\","
                         "\"reason\":\"invalid_token\",\"request_id\":\"r\","
                         "\"time\":\"2026-11-25T10:00:00.123456Z\"}");
  free(l);
  mg_lineage_tmpl_clear(&t);
}

static void test_outcome_policy_summary_golden(void **state) {
  (void)state;
  struct mg_lineage_tmpl t = {0};
  /* counters over INT64_MAX are clamped: JSON readers refuse larger integers */
  struct mg_lineage_outcome o = {.request_id = "r1", .status = 200, .reset = -1,
                                 .bytes_in = 12, .bytes_out = 34567, .duration_us = UINT64_MAX};
  assert_int_equal(mg_lineage_tmpl_outcome(&o, OJ, &t), 0);
  char *l = line(&t, 9223372036854775806u, 7);
  assert_string_equal(l, "{\"bytes_in\":12,\"bytes_out\":34567,\"duration_us\":9223372036854775807,"
                         "\"index\":9223372036854775806,\"of\":7,"
                         "\"origin\":\"lineage.example/orders/h1\",\"request_id\":\"r1\","
                         "\"status\":200,\"time\":\"2026-11-25T10:00:00.123456Z\"}");
  free(l);
  mg_lineage_tmpl_clear(&t);
  o.status = 0;
  o.reset = 8; /* CANCEL */
  assert_int_equal(mg_lineage_tmpl_outcome(&o, OJ, &t), 0);
  l = line(&t, 9, 8);
  assert_non_null(strstr(l, ",\"request_id\":\"r1\",\"reset\":8,\"status\":0,\"time\""));
  free(l);
  mg_lineage_tmpl_clear(&t);

  struct mg_lineage_policy_write p = {.request_id = "r2", .editor = "user:admin",
                                      .product = "orders", .grant = "*import*",
                                      .old_revision = "aa", .new_revision = "bb"};
  assert_int_equal(mg_lineage_tmpl_policy(&p, OJ, &t), 0);
  l = line(&t, 3, 0);
  assert_string_equal(l, "{\"action\":\"policy-write\",\"editor\":\"user:admin\","
                         "\"grant\":\"*import*\",\"index\":3,\"new_revision\":\"bb\","
                         "\"old_revision\":\"aa\",\"origin\":\"lineage.example/orders/h1\","
                         "\"product\":\"orders\",\"request_id\":\"r2\","
                         "\"time\":\"2026-11-25T10:00:00.123456Z\"}");
  free(l);
  mg_lineage_tmpl_clear(&t);

  assert_int_equal(mg_lineage_tmpl_summary("192.0.2.7", "deny", "no matching grant", 517, OJ, &t), 0);
  l = line(&t, 4, 0);
  assert_string_equal(l, "{\"count\":517,\"decision\":\"deny\",\"index\":4,"
                         "\"origin\":\"lineage.example/orders/h1\",\"peer\":\"192.0.2.7\","
                         "\"reason\":\"no matching grant\",\"summary\":1,"
                         "\"time\":\"2026-11-25T10:00:00.123456Z\"}");
  free(l);
  mg_lineage_tmpl_clear(&t);
}

static void test_escaping_and_utf8(void **state) {
  (void)state;
  struct mg_lineage_tmpl t = {0};
  struct mg_lineage_access a = {.request_id = "r", .decision = "deny",
                                .path = "/a\"b\\c\n\x01\xc3\xa9\xe2\x82\xac",
                                .principal = "user:\xf0\x9f\x98\x80"};
  assert_int_equal(mg_lineage_tmpl_access(&a, OJ, &t), 0);
  char *l = line(&t, 1, 0);
  json_error_t err;
  json_t *j = json_loads(l, JSON_REJECT_DUPLICATES, &err);
  assert_non_null(j);
  assert_string_equal(json_string_value(json_object_get(j, "path")), a.path);
  assert_string_equal(json_string_value(json_object_get(j, "principal")), a.principal);
  assert_null(strchr(l, '\n')); /* one line */
  /* re-encoding with sorted keys gives the same bytes: the line is canonical */
  char *re = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
  assert_string_equal(re, l);
  free(re);
  json_decref(j);
  free(l);
  mg_lineage_tmpl_clear(&t);
  static const char *const bad[] = {"\xc3(", "\xed\xa0\x80" /* surrogate */, "\xc0\xaf",
                                    "\xf5\x80\x80\x80"};
  for (size_t i = 0; i < MG_ARRAY_LEN(bad); i++) {
    a.path = bad[i];
    assert_int_equal(mg_lineage_tmpl_access(&a, OJ, &t), -EINVAL);
    assert_null(t.data);
  }
  a.path = "/ok";
  const char *g[] = {"group:\xff"};
  a.groups = g;
  a.ngroups = 1;
  assert_int_equal(mg_lineage_tmpl_access(&a, OJ, &t), -EINVAL);
  struct mg_lineage_outcome o = {.request_id = "\x80", .reset = -1};
  assert_int_equal(mg_lineage_tmpl_outcome(&o, OJ, &t), -EINVAL);
}

static void test_groups_cap(void **state) {
  (void)state;
  const char *g[100];
  char names[100][16];
  for (int i = 0; i < 100; i++) {
    snprintf(names[i], sizeof names[i], "group:g%02d", i);
    g[i] = names[i];
  }
  struct mg_lineage_access a = {.request_id = "r", .decision = "allow", .groups = g, .ngroups = 100};
  struct mg_lineage_tmpl t = {0};
  assert_int_equal(mg_lineage_tmpl_access(&a, OJ, &t), 0);
  char *l = line(&t, 1, 0);
  json_t *j = json_loads(l, 0, NULL);
  assert_int_equal(json_array_size(json_object_get(j, "groups")), 64);
  assert_string_equal(json_string_value(json_array_get(json_object_get(j, "groups"), 63)), "group:g63");
  assert_int_equal(json_integer_value(json_object_get(j, "groups_more")), 36);
  assert_non_null(strstr(l, "\"group:g63\"],\"groups_more\":36,\"index\":1,"));
  json_decref(j);
  free(l);
  mg_lineage_tmpl_clear(&t);
  a.ngroups = 64; /* exactly the cap: no groups_more */
  assert_int_equal(mg_lineage_tmpl_access(&a, OJ, &t), 0);
  l = line(&t, 1, 0);
  assert_null(strstr(l, "groups_more"));
  free(l);
  mg_lineage_tmpl_clear(&t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_access_golden),
      cmocka_unit_test(test_outcome_policy_summary_golden),
      cmocka_unit_test(test_escaping_and_utf8),
      cmocka_unit_test(test_groups_cap),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
