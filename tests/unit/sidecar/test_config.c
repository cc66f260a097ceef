/* test_config.c — the config loader: the SPEC example loads, every bad input names its key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sidecar/config.h"

static char dir[] = "/tmp/mgcfgXXXXXX";

static const char *base =
  "{\"product\": \"orders\", \"workers\": 2,"
  " \"listen\": {\"address\": \"127.0.0.1:8443\"},"
  " \"upstream\": {\"address\": \"127.0.0.1:8080\", \"protocol\": \"h2c\", \"forward_token\": false},"
  " \"routes\": [{\"prefix\": \"/datasets/\", \"dataset\": \"segment:2\"}, {\"prefix\": \"/healthz\", \"auth\": \"none\"}],"
  " \"identity\": {\"issuers\": [{\"name\": \"corp\", \"issuer\": \"https://idp.example\", \"audiences\": [\"mesh\"],"
  "   \"jwks_file\": \"keys/idp.jwks\", \"jwks_url\": null, \"algorithms\": [\"RS256\", \"ES256\"],"
  "   \"groups_claim\": \"groups\", \"clock_skew_s\": 60}]},"
  " \"policy\": {\"db\": \"var/policy\", \"map_size_mb\": 256},"
  " \"lineage\": {\"db\": \"var/lineage\", \"map_size_mb\": 4096, \"signing_key\": \"keys/lineage.key\","
  "   \"origin\": \"lineage.example/orders/${HOSTNAME}\", \"durability\": \"write-ahead\","
  "   \"checkpoint_every_ms\": 1000, \"deny_entries_per_s\": 100},"
  " \"admin\": {\"address\": \"127.0.0.1:9901\", \"tls\": null, \"issuers\": [\"https://idp.example\"],"
  "   \"admin_claim\": {\"scope\": \"mesh:admin\"}, \"auditor_claim\": {\"scope\": \"mesh:audit\"},"
  "   \"owners\": \"group:{product}-owners\"},"
  " \"limits\": {\"max_concurrent_streams\": 100, \"max_header_list_bytes\": 16384,"
  "   \"max_token_bytes\": 8192, \"idle_timeout_s\": 60, \"failed_verifies_per_conn\": 10}}";

static char *write_cfg(const char *text) {
  static char path[256];
  snprintf(path, sizeof path, "%s/meshgate.json", dir);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
  return path;
}

/* Replaces the first occurrence of `from` in base by `to`. */
static char *patched(const char *from, const char *to) {
  static char buf[8192];
  const char *p = strstr(base, from);
  assert_non_null(p);
  snprintf(buf, sizeof buf, "%.*s%s%s", (int)(p - base), base, to, p + strlen(from));
  return buf;
}

static void test_spec_example(void **state) {
  (void)state;
  setenv("HOSTNAME", "node-7", 1);
  struct mg_config *c = NULL;
  char err[512] = "";
  int rv = mg_config_load(write_cfg(base), &c, err, sizeof err);
  if (rv) fail_msg("%s", err);
  assert_string_equal(c->product, "orders");
  assert_int_equal(c->workers, 2);
  assert_null(c->listen_tls);
  assert_int_equal(c->upstream.protocol, MG_UPSTREAM_H2C);
  assert_int_equal(c->nroutes, 2);
  assert_int_equal(c->routes[0].dataset_segment, 2);
  assert_int_equal(c->routes[1].auth, MG_ROUTE_AUTH_NONE);
  assert_int_equal(c->nissuers, 1);
  assert_int_equal(c->issuers[0].jwks_min_refresh_s, 10);
  char expect[512];
  snprintf(expect, sizeof expect, "%s/keys/idp.jwks", dir);
  assert_string_equal(c->issuers[0].jwks_file, expect);
  assert_string_equal(c->origin, "lineage.example/orders/node-7");
  assert_string_equal(c->admin_claim.claim, "scope");
  assert_string_equal(c->admin_claim.value, "mesh:admin");
  assert_string_equal(c->owners, "group:{product}-owners");
  assert_int_equal(c->max_token_bytes, 8192);
  assert_null(c->nats);
  mg_config_unref(c);
  /* old signing keys are paths like the others: relative to the config's directory */
  rv = mg_config_load(write_cfg(patched("\"signing_key\": \"keys/lineage.key\"",
                                        "\"signing_key\": \"keys/lineage.key\", \"old_signing_keys\": "
                                        "[\"keys/old.key\", \"/etc/mg/older.key\"]")),
                      &c, err, sizeof err);
  if (rv) fail_msg("%s", err);
  assert_int_equal(c->nold_signing_keys, 2);
  snprintf(expect, sizeof expect, "%s/keys/old.key", dir);
  assert_string_equal(c->old_signing_keys[0], expect);
  assert_string_equal(c->old_signing_keys[1], "/etc/mg/older.key");
  mg_config_unref(c);
}

struct bad { const char *from, *to, *expect; };
static const struct bad bads[] = {
  {"\"durability\": \"write-ahead\"", "\"durability\": \"sometimes\"", "/lineage/durability: expected \"write-ahead\" or \"async\""},
  {"\"workers\": 2", "\"workers\": 0", "/workers: must be between 1 and 256"},
  {"\"workers\": 2", "\"workers\": \"2\"", "/workers: expected an integer"},
  {"\"workers\": 2", "\"wrokers\": 2", "/wrokers: unknown key"},
  {"\"forward_token\": false", "\"forward_token\": false, \"extra\": 1", "/upstream/extra: unknown key"},
  {"\"protocol\": \"h2c\"", "\"protocol\": \"h3\"", "/upstream/protocol: expected \"h2c\" or \"http1\""},
  {"\"segment:2\"", "\"segment:0\"", "/routes/0/dataset: segment number must be 1..64"},
  {"\"prefix\": \"/datasets/\"", "\"prefix\": \"/data//sets/\"", "/routes/0/prefix: must be a canonical path"},
  {"\"auth\": \"none\"", "\"auth\": \"maybe\"", "/routes/1/auth: expected \"token\", \"none\" or \"mtls\""},
  {"\"algorithms\": [\"RS256\", \"ES256\"]", "\"algorithms\": [\"RS256\", \"HS256\"]", "/identity/issuers/0/algorithms/1: unsupported algorithm"},
  {"\"audiences\": [\"mesh\"]", "\"audiences\": []", "/identity/issuers/0/audiences: at least one audience"},
  {"\"jwks_url\": null", "\"jwks_url\": \"https://idp/jwks\"", "/identity/issuers/0/jwks_file: exactly one of"},
  {"\"address\": \"127.0.0.1:9901\"", "\"address\": \"0.0.0.0:9901\"", "/admin/tls: required when the admin address is not loopback"},
  {"\"owners\": \"group:{product}-owners\"", "\"owners\": \"group:owners\"", "/admin/owners: must contain {product}"},
  {"\"issuers\": [\"https://idp.example\"]", "\"issuers\": [\"https://other\"]", "/admin/issuers/0: not a configured issuer"},
  {"\"max_token_bytes\": 8192", "\"max_token_bytes\": 1e9", "/limits/max_token_bytes: expected an integer"},
  {"\"address\": \"127.0.0.1:8080\"", "\"address\": \"127.0.0.1\"", "/upstream/address: expected \"host:port\""},
  {"\"admin_claim\": {\"scope\": \"mesh:admin\"}", "\"admin_claim\": {\"scope\": 1}", "/admin/admin_claim/scope: expected a non-empty string"},
  {"\"map_size_mb\": 256", "\"map_size_mb\": 256, \"map_size_mb\": 512", "duplicate object key"},
  {"\"product\": \"orders\"", "\"product\": \"or ders\"", "/product: use letters"},
  /* plain-http JWKS: the URL's host must be loopback, not its prefix */
  {"\"jwks_file\": \"keys/idp.jwks\", \"jwks_url\": null", "\"jwks_url\": \"http://127.0.0.1@evil.example/jwks\"", "/identity/issuers/0/jwks_url: must be https"},
  {"\"jwks_file\": \"keys/idp.jwks\", \"jwks_url\": null", "\"jwks_url\": \"http://localhost.evil.example/jwks\"", "/identity/issuers/0/jwks_url: must be https"},
  {"\"jwks_file\": \"keys/idp.jwks\", \"jwks_url\": null", "\"jwks_url\": \"http://127.0.0.10/jwks\"", "/identity/issuers/0/jwks_url: must be https"},
  /* what serve would refuse at bind or connect time */
  {"\"address\": \"127.0.0.1:8080\"", "\"address\": \"127.0.0.1:0\"", "/upstream/address: invalid port (1..65535)"},
  {"\"address\": \"127.0.0.1:9901\"", "\"address\": \"localhost:9901\"", "/admin/address: expected an IP address"},
  {"\"address\": \"127.0.0.1:8443\"", "\"address\": \"localhost:8443\"", "/listen/address: expected an IP address"},
  {"\"address\": \"127.0.0.1:8443\"}", "\"address\": \"127.0.0.1:8443\", \"tls\": {\"cert\": \"c.pem\", \"key\": \"k.pem\", \"client_cert\": \"required\"}}", "/listen/tls/client_ca: required with"},
  {"\"max_token_bytes\": 8192", "\"max_token_bytes\": 8192, \"max_body_buffer\": 16384", "/limits/max_body_buffer: must be between 65536"},
};

static void test_bad_values(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof bads / sizeof bads[0]; i++) {
    struct mg_config *c = NULL;
    char err[512] = "";
    int rv = mg_config_load(write_cfg(patched(bads[i].from, bads[i].to)), &c, err, sizeof err);
    if (rv == 0) fail_msg("case %zu accepted, expected '%s'", i, bads[i].expect);
    if (!strstr(err, bads[i].expect)) fail_msg("case %zu: got '%s', expected '%s'", i, err, bads[i].expect);
    assert_null(c);
  }
}

static void test_syntax_error_line_col(void **state) {
  (void)state;
  struct mg_config *c = NULL;
  char err[512] = "";
  assert_int_not_equal(mg_config_load(write_cfg("{\n  \"product\": \"x\",\n  \"workers\": ,\n}"), &c, err, sizeof err), 0);
  assert_non_null(strstr(err, "meshgate.json:3:"));
}

static void test_missing_file(void **state) {
  (void)state;
  struct mg_config *c = NULL;
  char err[512] = "";
  assert_int_not_equal(mg_config_load("/nonexistent/meshgate.json", &c, err, sizeof err), 0);
  assert_non_null(strstr(err, "/nonexistent/meshgate.json"));
}

static int setup(void **state) { (void)state; return mkdtemp(dir) ? 0 : -1; }
static int teardown(void **state) {
  (void)state;
  char p[300];
  snprintf(p, sizeof p, "%s/meshgate.json", dir);
  unlink(p);
  rmdir(dir);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_spec_example),
    cmocka_unit_test(test_bad_values),
    cmocka_unit_test(test_syntax_error_line_col),
    cmocka_unit_test(test_missing_file),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
