/* test_canon.c — :path canonicalisation table, route matching, dataset and action mapping. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "policy/policy.h"
#include "sidecar/canon.h"

struct ccase { const char *in; const char *out; /* NULL = 400 */ };

static const struct ccase cases[] = {
  {"/", "/"},
  {"/datasets/orders_fact/2024", "/datasets/orders_fact/2024"},
  {"/datasets//orders_fact///2024", "/datasets/orders_fact/2024"},
  {"//datasets/x", "/datasets/x"},
  {"/datasets/./orders_fact", "/datasets/orders_fact"},
  {"/datasets/x/../orders_fact", "/datasets/orders_fact"},
  {"/datasets/x/..", "/datasets/"},
  {"/datasets/x/.", "/datasets/x/"},
  {"/../../etc/passwd", "/etc/passwd"},
  {"/datasets/%2e%2e/admin", "/admin"},
  {"/datasets/%2E/x", "/datasets/x"},
  {"/datasets/.%2e/admin", "/admin"},
  {"/datasets/%6Frders", "/datasets/orders"},
  {"/datasets/%7e~%5f", "/datasets/~~_"},
  {"/datasets/a%2cb", "/datasets/a,b"},  /* allowed raw: one spelling, the raw one */
  {"/a%3Ab%40c%21%24%26%27%28%29%2A%2B%2C%3D", "/a:b@c!$&'()*+,="},
  {"/datasets/a%3bb", "/datasets/a%3Bb"},  /* ';' is refused raw, so it stays escaped */
  {"/datasets/a%3fb%23c%25zz%22", "/datasets/a%3Fb%23c%25zz%22"},
  {"/datasets/a%20b", "/datasets/a%20b"},
  {"/datasets/caf%c3%a9", "/datasets/caf%C3%A9"},
  {"/datasets/x/", "/datasets/x/"},
  {"/Datasets/X", "/Datasets/X"},
  {"/datasets/x?limit=10&x=%2F", "/datasets/x?limit=10&x=%2F"},
  {"/datasets/../../x?a=/../b", "/x?a=/../b"},
  {"/datasets/x?", "/datasets/x?"},
  {"/a/b/c/../../d", "/a/d"},
  {"/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="},
  /* refused */
  {"", NULL},
  {"datasets/x", NULL},
  {"*", NULL},
  {"/datasets%2Forders", NULL},
  {"/datasets%2forders", NULL},
  {"/datasets%5Corders", NULL},
  {"/datasets\\orders", NULL},
  {"/datasets/x%00", NULL},
  {"/datasets/x;jsessionid=1", NULL},
  {"/datasets/x#frag", NULL},
  {"/datasets/%252e%252e/admin", NULL},
  {"/datasets/%25%32%65", NULL},     /* double encoding spelled with escaped hex digits */
  {"/datasets/%25zz", "/datasets/%25zz"}, /* %25 not followed by hex: stays encoded */
  {"/datasets/%2", NULL},
  {"/datasets/%zz", NULL},
  {"/datasets/%c0%af", NULL},        /* overlong '/' */
  {"/datasets/%e0%80%af", NULL},     /* overlong, 3 bytes */
  {"/datasets/%ed%a0%80", NULL},     /* surrogate */
  {"/datasets/%c3", NULL},           /* truncated sequence */
  {"/datasets/%c3x", NULL},
  {"/datasets/caf\xc3\xa9", NULL},   /* raw non-ASCII */
  {"/datasets/a b", NULL},
  {"/datasets/a\tb", NULL},
  {"/datasets/x?a=%00", NULL},
  {"/datasets/x?a=%zz", NULL},
  {"/datasets/x?a#b", NULL},
  {"/datasets/%0a", NULL},
  {"/datasets/\"x\"", NULL},
};

static void test_table(void **state) {
  (void)state;
  char out[512];
  for (size_t i = 0; i < MG_ARRAY_LEN(cases); i++) {
    size_t plen = 0, olen = 0;
    const char *why = NULL;
    int rv = mg_canon_path(cases[i].in, strlen(cases[i].in), out, sizeof out, &plen, &olen, &why);
    if (cases[i].out == NULL) {
      if (rv == 0) fail_msg("case %zu '%s': accepted as '%s', expected 400", i, cases[i].in, out);
      assert_non_null(why);
    } else {
      if (rv != 0) fail_msg("case %zu '%s': refused (%s), expected '%s'", i, cases[i].in, why, cases[i].out);
      if (strcmp(out, cases[i].out) != 0)
        fail_msg("case %zu '%s': got '%s', expected '%s'", i, cases[i].in, out, cases[i].out);
      assert_int_equal(olen, strlen(cases[i].out));
      const char *q = strchr(cases[i].out, '?');
      assert_int_equal(plen, q ? (size_t)(q - cases[i].out) : strlen(cases[i].out));
    }
  }
  assert_true(MG_ARRAY_LEN(cases) >= 30);
}

/* Canonicalising a canonical path is the identity (idempotence). */
static void test_idempotent(void **state) {
  (void)state;
  char a[512], b[512];
  for (size_t i = 0; i < MG_ARRAY_LEN(cases); i++) {
    if (!cases[i].out) continue;
    size_t pl, ol, pl2, ol2;
    const char *why;
    assert_int_equal(mg_canon_path(cases[i].in, strlen(cases[i].in), a, sizeof a, &pl, &ol, &why), 0);
    assert_int_equal(mg_canon_path(a, ol, b, sizeof b, &pl2, &ol2, &why), 0);
    assert_string_equal(a, b);
  }
}

static struct mg_config_route routes[] = {
  {.prefix = "/datasets/", .prefix_len = 10, .dataset_segment = 2},
  {.prefix = "/datasets/special", .prefix_len = 17, .dataset = "special_ds"},
  {.prefix = "/healthz", .prefix_len = 8, .auth = MG_ROUTE_AUTH_NONE},
  {.prefix = "/arrow.flight.protocol.FlightService", .prefix_len = 36, .grpc = true},
};

static void test_routes(void **state) {
  (void)state;
  struct mg_config cfg = {.routes = routes, .nroutes = MG_ARRAY_LEN(routes)};
  const char *p;
  p = "/datasets/orders_fact/2024";
  assert_ptr_equal(mg_route_match(&cfg, p, strlen(p)), &routes[0]);
  p = "/datasets/special/x";
  assert_ptr_equal(mg_route_match(&cfg, p, strlen(p)), &routes[1]);
  p = "/datasets/specialty";            /* not at a segment boundary of the longer prefix */
  assert_ptr_equal(mg_route_match(&cfg, p, strlen(p)), &routes[0]);
  p = "/healthz";
  assert_ptr_equal(mg_route_match(&cfg, p, strlen(p)), &routes[2]);
  p = "/healthzX";
  assert_null(mg_route_match(&cfg, p, strlen(p)));
  p = "/datasets";
  assert_null(mg_route_match(&cfg, p, strlen(p)));
  p = "/other";
  assert_null(mg_route_match(&cfg, p, strlen(p)));

  char ds[64];
  p = "/datasets/orders_fact/2024";
  assert_int_equal(mg_route_dataset(&routes[0], p, strlen(p), ds, sizeof ds), 11);
  assert_string_equal(ds, "orders_fact");
  p = "/datasets/";
  assert_int_equal(mg_route_dataset(&routes[0], p, strlen(p), ds, sizeof ds), 0);
  p = "/datasets/special/x";
  mg_route_dataset(&routes[1], p, strlen(p), ds, sizeof ds);
  assert_string_equal(ds, "special_ds");
}

static void test_actions(void **state) {
  (void)state;
  const char *p = "/datasets/x";
  assert_int_equal(mg_route_action(&routes[0], "GET", NULL, p, strlen(p)), MG_ACTION_READ);
  assert_int_equal(mg_route_action(&routes[0], "HEAD", NULL, p, strlen(p)), MG_ACTION_READ);
  assert_int_equal(mg_route_action(&routes[0], "POST", NULL, p, strlen(p)), MG_ACTION_WRITE);
  assert_int_equal(mg_route_action(&routes[0], "PUT", NULL, p, strlen(p)), MG_ACTION_WRITE);
  assert_int_equal(mg_route_action(&routes[0], "PATCH", NULL, p, strlen(p)), MG_ACTION_WRITE);
  assert_int_equal(mg_route_action(&routes[0], "DELETE", NULL, p, strlen(p)), MG_ACTION_WRITE);
  assert_int_equal(mg_route_action(&routes[0], "OPTIONS", NULL, p, strlen(p)), 0);
  assert_int_equal(mg_route_action(&routes[0], "TRACE", NULL, p, strlen(p)), 0);
  p = "/arrow.flight.protocol.FlightService/DoGet";
  assert_int_equal(mg_route_action(&routes[3], "POST", "application/grpc", p, strlen(p)), MG_ACTION_READ);
  p = "/arrow.flight.protocol.FlightService/DoPut";
  assert_int_equal(mg_route_action(&routes[3], "POST", "application/grpc", p, strlen(p)), MG_ACTION_WRITE);
  p = "/arrow.flight.protocol.FlightService/ListFlights";
  assert_int_equal(mg_route_action(&routes[3], "POST", "application/grpc+proto", p, strlen(p)), MG_ACTION_READ);
  p = "/arrow.flight.protocol.FlightService/DoExchange";
  assert_int_equal(mg_route_action(&routes[3], "POST", "application/grpc", p, strlen(p)), MG_ACTION_WRITE);
  /* gRPC content type on a plain route: recognised on gRPC's path shape only */
  p = "/test.Flight/DoGet";
  assert_int_equal(mg_route_action(&routes[0], "POST", "application/grpc", p, strlen(p)), MG_ACTION_READ);
  p = "/test.Flight/DoPut";
  assert_int_equal(mg_route_action(&routes[0], "POST", "application/grpc", p, strlen(p)), MG_ACTION_WRITE);
  /* ...so a client cannot turn a REST write into a read by sending the header */
  static const char *const writes[] = {"/datasets/svc/DoGet", "/datasets/DoGet", "/a.b/DoGet/",
                                       "/a.b/DoGet?x", "/.b/x/DoGet", "//DoGet", "/ab/DoGet",
                                       "/a.b/", "/a.b"};
  for (size_t i = 0; i < sizeof writes / sizeof writes[0]; i++) {
    p = writes[i];
    assert_int_equal(mg_route_action(&routes[0], "POST", "application/grpc", p, strlen(p)), MG_ACTION_WRITE);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_table),
    cmocka_unit_test(test_idempotent),
    cmocka_unit_test(test_routes),
    cmocka_unit_test(test_actions),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
