/* test_admin.c — the admin API's router, caller roles, preconditions, owner delegation,
 * lineage-before-commit and the HTTP/1.1 request parser, against a real policy store and a
 * real lineage log in a temporary directory and real ES256 tokens checked by the real
 * authn module (no network: requests go straight into mg_admin_dispatch()). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <cmocka.h>

#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>

#include "sidecar/admin_int.h"

#define ISS "https://idp.test"

struct fx {
  char dir[64];
  struct mg_config *cfg;
  struct mg_app app;
  struct mg_admin_ctx ctx;
  struct mg_admin_resp rs;
  EVP_PKEY *key;
  json_t *body; /* parsed response body of the last request */
  char etag[64];
};

/* ---- token minting (ES256, like an IdP would) ---------------------------------------- */

static void b64u(const uint8_t *in, size_t n, char *out) { out[mg_b64url_encode(in, n, out)] = 0; }
static size_t b64u_len_write(char *out, const char *s, size_t n) {
  return mg_b64url_encode((const uint8_t *)s, n, out);
}

static EVP_PKEY *ec_key_new(void) { return EVP_EC_gen("P-256"); }

static void write_jwks(EVP_PKEY *k, const char *path) {
  BIGNUM *x = NULL, *y = NULL;
  assert_int_equal(EVP_PKEY_get_bn_param(k, OSSL_PKEY_PARAM_EC_PUB_X, &x), 1);
  assert_int_equal(EVP_PKEY_get_bn_param(k, OSSL_PKEY_PARAM_EC_PUB_Y, &y), 1);
  uint8_t xb[32], yb[32];
  BN_bn2binpad(x, xb, 32);
  BN_bn2binpad(y, yb, 32);
  char xs[64], ys[64];
  b64u(xb, 32, xs);
  b64u(yb, 32, ys);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fprintf(f, "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"k1\",\"alg\":\"ES256\","
             "\"use\":\"sig\",\"x\":\"%s\",\"y\":\"%s\"}]}\n", xs, ys);
  fclose(f);
  BN_free(x);
  BN_free(y);
}

/* claims: the JSON members after iss/aud/exp, e.g. "\"sub\":\"alice\",\"scope\":\"mesh:admin\"" */
static char *mint(struct fx *f, const char *claims) {
  char hdr[] = "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"k1\"}";
  char payload[2048];
  long long now = (long long)(mg_time_now_us() / 1000000);
  snprintf(payload, sizeof payload, "{\"iss\":\"%s\",\"aud\":\"mesh\",\"exp\":%lld,\"iat\":%lld,%s}",
           ISS, now + 600, now, claims);
  size_t hl = strlen(hdr), pl = strlen(payload);
  char *tok = malloc(mg_b64url_len(hl) + mg_b64url_len(pl) + 100);
  size_t n = b64u_len_write(tok, hdr, hl);
  tok[n++] = '.';
  n += b64u_len_write(tok + n, payload, pl);
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  uint8_t der[128];
  size_t derlen = sizeof der;
  assert_int_equal(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, f->key), 1);
  assert_int_equal(EVP_DigestSign(md, der, &derlen, (uint8_t *)tok, n), 1);
  EVP_MD_CTX_free(md);
  const uint8_t *p = der;
  ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)derlen);
  assert_non_null(sig);
  uint8_t rs[64];
  BN_bn2binpad(ECDSA_SIG_get0_r(sig), rs, 32);
  BN_bn2binpad(ECDSA_SIG_get0_s(sig), rs + 32, 32);
  ECDSA_SIG_free(sig);
  tok[n++] = '.';
  n += mg_b64url_encode(rs, 64, tok + n);
  tok[n] = 0;
  return tok;
}

/* ---- fixture ------------------------------------------------------------------------ */

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static int setup(void **state) {
  struct fx *f = calloc(1, sizeof *f);
  char path[256], err[512] = "";
  snprintf(f->dir, sizeof f->dir, "/tmp/test_admin_XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  f->key = ec_key_new();
  assert_non_null(f->key);
  snprintf(path, sizeof path, "%s/jwks.json", f->dir);
  write_jwks(f->key, path);
  snprintf(path, sizeof path, "%s/keys", f->dir);
  assert_int_equal(mkdir(path, 0700), 0);
  assert_int_equal(mg_lineage_keygen("test.example/orders", path), 0);
  snprintf(path, sizeof path, "%s/meshgate.json", f->dir);
  write_file(path,
             "{\"product\":\"orders\",\"listen\":{\"address\":\"127.0.0.1:18443\"},"
             "\"upstream\":{\"address\":\"127.0.0.1:18080\"},"
             "\"routes\":[{\"prefix\":\"/datasets/\",\"dataset\":\"segment:2\"}],"
             "\"identity\":{\"issuers\":[{\"issuer\":\"" ISS "\",\"audiences\":[\"mesh\"],"
             "\"jwks_file\":\"jwks.json\",\"algorithms\":[\"ES256\"]}]},"
             "\"policy\":{\"db\":\"policy\",\"map_size_mb\":8},"
             "\"lineage\":{\"db\":\"lineage\",\"map_size_mb\":64,\"signing_key\":\"keys/lineage.key\","
             "\"origin\":\"test.example/orders\",\"checkpoint_every_ms\":100},"
             "\"admin\":{\"address\":\"127.0.0.1:19901\","
             "\"tls\":{\"cert\":\"c.pem\",\"key\":\"k.pem\",\"client_ca\":\"ca.pem\","
             "\"allowed_spiffe\":[\"spiffe://test/ns/platform/sa/admin\"]},"
             "\"owners\":\"group:{product}-owners\",\"auditor_claim\":{\"scope\":\"mesh:audit\"}}}\n");
  int rc = mg_config_load(path, &f->cfg, err, sizeof err);
  if (rc) fprintf(stderr, "config: %s\n", err);
  assert_int_equal(rc, 0);
  f->app.cfg = f->cfg;
  pthread_mutex_init(&f->app.index_lock, NULL);
  assert_int_equal(mg_policy_store_open(f->cfg->policy_db, f->cfg->policy_map_size_mb, false,
                                        &f->app.policy), 0);
  assert_int_equal(mg_app_index_rebuild(&f->app), 0);
  struct mg_authn *an = NULL;
  rc = mg_authn_new(f->cfg, &an, err, sizeof err);
  if (rc) fprintf(stderr, "authn: %s\n", err);
  assert_int_equal(rc, 0);
  f->app.authn = an;
  struct mg_lineage_config lc = {.db = f->cfg->lineage_db, .map_size_mb = 64,
                                 .signing_key = f->cfg->signing_key, .origin = f->cfg->origin,
                                 .durability = MG_LINEAGE_WRITE_AHEAD,
                                 .checkpoint_every_ms = 100, .deny_entries_per_s = 100};
  assert_int_equal(mg_mkdir_p(f->cfg->lineage_db, 0700), 0);
  assert_int_equal(mg_lineage_writer_open(&lc, &f->app.lineage), 0);
  atomic_store(&f->app.ready, 1);
  assert_int_equal(mg_admin_ctx_init(&f->ctx, &f->app), 0);
  mg_admin_resp_init(&f->rs);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  struct fx *f = *state;
  char cmd[128];
  mg_admin_resp_clear(&f->rs);
  json_decref(f->body);
  mg_admin_ctx_clear(&f->ctx);
  if (f->app.lineage) mg_lineage_writer_close(f->app.lineage);
  mg_authn_free(f->app.authn);
  struct mg_policy_index *ix = atomic_exchange(&f->app.index, NULL);
  if (ix) mg_policy_index_unref(ix);
  mg_policy_store_close(f->app.policy);
  pthread_mutex_destroy(&f->app.index_lock);
  mg_config_unref(f->cfg);
  EVP_PKEY_free(f->key);
  snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
  assert_int_equal(system(cmd), 0);
  free(f);
  return 0;
}

/* One request; extra header pairs (name, value) end with NULL. Returns the status; the
 * parsed JSON body is in f->body, the ETag in f->etag. */
static int call(struct fx *f, const char *tok, const char *spiffe, const char *method,
                const char *target, const char *body, ...) {
  struct mg_admin_req rq;
  mg_admin_req_init(&rq);
  snprintf(rq.method, sizeof rq.method, "%s", method);
  rq.target = strdup(target);
  rq.peer_spiffe = spiffe;
  if (tok) {
    char h[4096];
    snprintf(h, sizeof h, "Bearer %s", tok);
    mg_admin_req_add_header(&rq, "Authorization", 13, h, strlen(h));
  }
  va_list ap;
  va_start(ap, body);
  for (const char *n; (n = va_arg(ap, const char *));) {
    const char *v = va_arg(ap, const char *);
    mg_admin_req_add_header(&rq, n, strlen(n), v, strlen(v));
  }
  va_end(ap);
  if (body) mg_buf_append(&rq.body, body, strlen(body));
  mg_admin_resp_clear(&f->rs);
  mg_admin_dispatch(&f->ctx, &rq, &f->rs);
  mg_admin_req_clear(&rq);
  json_decref(f->body);
  f->body = NULL;
  if (f->rs.body.len && strcmp(f->rs.ctype, "application/json") == 0) {
    json_error_t e;
    f->body = json_loadb(f->rs.body.data, f->rs.body.len, JSON_REJECT_DUPLICATES, &e);
    if (!f->body) fail_msg("response is not JSON: %s", f->rs.body.data);
  }
  f->etag[0] = 0;
  for (size_t i = 0; i < f->rs.nhdrs; i++)
    if (strcmp(f->rs.hdrs[i].name, "etag") == 0)
      snprintf(f->etag, sizeof f->etag, "%s", f->rs.hdrs[i].value);
  if (f->rs.status >= 400 && strcmp(target, "/readyz") != 0) {
    assert_non_null(f->body);
    assert_true(json_is_string(json_object_get(f->body, "error")));
    assert_true(json_is_string(json_object_get(f->body, "detail")));
  }
  return f->rs.status;
}

static const char *hdr(struct fx *f, const char *name) {
  for (size_t i = 0; i < f->rs.nhdrs; i++)
    if (strcmp(f->rs.hdrs[i].name, name) == 0) return f->rs.hdrs[i].value;
  return NULL;
}

static const char *err_code(struct fx *f) {
  return f->body ? json_string_value(json_object_get(f->body, "error")) : NULL;
}
static const char *detail(struct fx *f) {
  return f->body ? json_string_value(json_object_get(f->body, "detail")) : "";
}

static char gbuf[1024];
static const char *grant(const char *id, const char *product, const char *subject,
                         const char *resource) {
  snprintf(gbuf, sizeof gbuf,
           "{\"id\":\"%s\",\"effect\":\"allow\",\"subjects\":[\"%s\"],\"product\":\"%s\","
           "\"resources\":[\"%s\"],\"actions\":[\"read\"]}",
           id, subject, product, resource);
  return gbuf;
}

#define ADMIN_SPIFFE "spiffe://test/ns/platform/sa/admin"

/* ---- routing ------------------------------------------------------------------------ */

static void test_routing(void **state) {
  struct fx *f = *state;
  assert_int_equal(call(f, NULL, NULL, "GET", "/healthz", NULL, NULL), 200);
  assert_string_equal(f->rs.body.data, "ok\n");
  assert_int_equal(call(f, NULL, NULL, "GET", "/nope", NULL, NULL), 404);
  assert_string_equal(err_code(f), "not_found");
  assert_int_equal(call(f, NULL, NULL, "POST", "/healthz", NULL, NULL), 405);
  assert_string_equal(hdr(f, "allow"), "GET");
  assert_int_equal(call(f, NULL, NULL, "PATCH", "/v1/grants/x", NULL, NULL), 405);
  assert_string_equal(hdr(f, "allow"), "GET, PUT, DELETE");
  assert_int_equal(call(f, NULL, NULL, "GET", "/v1/grants/a/b", NULL, NULL), 404);
  /* strict percent-decoding of ids */
  assert_int_equal(call(f, NULL, ADMIN_SPIFFE, "GET", "/v1/grants/%zz", NULL, NULL), 400);
  assert_int_equal(call(f, NULL, ADMIN_SPIFFE, "GET", "/v1/grants/a%2", NULL, NULL), 400);
  assert_int_equal(call(f, NULL, ADMIN_SPIFFE, "GET", "/v1/grants/a%00b", NULL, NULL), 400);
  assert_int_equal(call(f, NULL, ADMIN_SPIFFE, "GET", "/v1/grants/a%2Fb", NULL, NULL), 400);
  assert_int_equal(call(f, NULL, ADMIN_SPIFFE, "GET", "/v1/grants/a%41", NULL, NULL), 404);
  assert_int_equal(call(f, NULL, NULL, "GET", "/readyz", NULL, NULL), 200);
  assert_true(json_is_true(json_object_get(f->body, "ready")));
  atomic_store(&f->app.ready, 0);
  assert_int_equal(call(f, NULL, NULL, "GET", "/readyz", NULL, NULL), 503);
  assert_true(json_is_false(json_object_get(f->body, "ready")));
  assert_true(json_array_size(json_object_get(f->body, "reasons")) >= 1);
}

static void test_pct_decode(void **state) {
  (void)state;
  char *o = NULL;
  assert_int_equal(mg_admin_pct_decode("a%41b", 5, &o), 0);
  assert_string_equal(o, "aAb");
  free(o);
  assert_int_equal(mg_admin_pct_decode("a+b", 3, &o), 0);
  assert_string_equal(o, "a+b");
  free(o);
  assert_int_equal(mg_admin_pct_decode("%C3%A9", 6, &o), 0);
  free(o);
  assert_int_equal(mg_admin_pct_decode("%C3", 3, &o), MG_ERR_INVALID);   /* bad UTF-8 */
  assert_int_equal(mg_admin_pct_decode("%", 1, &o), MG_ERR_INVALID);
  assert_int_equal(mg_admin_pct_decode("%4", 2, &o), MG_ERR_INVALID);
  assert_int_equal(mg_admin_pct_decode("%0a", 3, &o), MG_ERR_INVALID);   /* control */
  assert_int_equal(mg_admin_pct_decode("%g0", 3, &o), MG_ERR_INVALID);
}

/* ---- authentication and roles ----------------------------------------------------------- */

static void test_auth(void **state) {
  struct fx *f = *state;
  assert_int_equal(call(f, NULL, NULL, "GET", "/v1/grants", NULL, NULL), 401);
  assert_string_equal(hdr(f, "www-authenticate"), "Bearer");
  assert_int_equal(call(f, "not.a.token", NULL, "GET", "/v1/grants", NULL, NULL), 401);
  assert_string_equal(err_code(f), "invalid_token");
  assert_non_null(strstr(hdr(f, "www-authenticate"), "error=\"invalid_token\""));
  /* a valid token without any admin role */
  char *nobody = mint(f, "\"sub\":\"nobody\",\"groups\":[\"analysts\"]");
  assert_int_equal(call(f, nobody, NULL, "GET", "/v1/grants", NULL, NULL), 403);
  assert_int_equal(call(f, nobody, NULL, "PUT", "/v1/grants/g1",
                        grant("g1", "orders", "group:a", "datasets/**"), "If-None-Match", "*",
                        NULL), 403);
  /* a token with a tampered signature */
  char *admin = mint(f, "\"sub\":\"root\",\"scope\":\"openid mesh:admin\"");
  char *bad = strdup(admin);
  bad[strlen(bad) - 3] = bad[strlen(bad) - 3] == 'A' ? 'B' : 'A';
  assert_int_equal(call(f, bad, NULL, "GET", "/v1/grants", NULL, NULL), 401);
  assert_int_equal(call(f, admin, NULL, "GET", "/v1/grants", NULL, NULL), 200);
  assert_true(json_is_array(json_object_get(f->body, "grants")));
  /* the admin certificate alone */
  assert_int_equal(call(f, NULL, ADMIN_SPIFFE, "GET", "/v1/grants", NULL, NULL), 200);
  assert_int_equal(call(f, NULL, "spiffe://test/ns/other/sa/x", "GET", "/v1/grants", NULL, NULL),
                   401);
  /* public endpoints need nothing */
  assert_int_equal(call(f, NULL, NULL, "GET", "/metrics", NULL, NULL), 200);
  free(nobody);
  free(admin);
  free(bad);
}

/* ---- create, read, replace, delete with preconditions ----------------------------------- */

static bool lineage_has(struct fx *f, const char *needle) {
  char *buf = NULL, *note = NULL;
  size_t len = 0;
  /* an export ends with a checkpoint: cover the newest entries first */
  assert_int_equal(mg_lineage_checkpoint_now(f->app.lineage, &note), 0);
  free(note);
  FILE *m = open_memstream(&buf, &len);
  struct mg_lineage_filter flt;
  mg_lineage_filter_init(&flt);
  int rc = mg_lineage_export(mg_lineage_writer_reader(f->app.lineage), &flt, MG_LINEAGE_NDJSON, m);
  fclose(m);
  bool yes = rc == 0 && buf && strstr(buf, needle);
  if (!yes) fprintf(stderr, "export (rc %d) lacks %s:\n%s\n", rc, needle, buf ? buf : "");
  free(buf);
  return yes;
}

static void test_crud(void **state) {
  struct fx *f = *state;
  char *admin = mint(f, "\"sub\":\"root\",\"scope\":\"mesh:admin\"");
  const char *g1 = grant("g1", "orders", "group:analysts", "datasets/orders_fact/**");
  char body[1024];
  snprintf(body, sizeof body, "%s", g1);

  assert_int_equal(call(f, admin, NULL, "PUT", "/v1/grants/g1", body, NULL), 428);
  assert_string_equal(err_code(f), "precondition_required");
  assert_int_equal(call(f, admin, NULL, "PUT", "/v1/grants/g1", body, "If-None-Match", "*", NULL),
                   201);
  char tag1[64];
  snprintf(tag1, sizeof tag1, "%s", f->etag);
  assert_true(tag1[0] == '"');
  assert_string_equal(json_string_value(json_object_get(f->body, "id")), "g1");
  /* the edit is in the lineage log, by its editor */
  assert_true(lineage_has(f, "\"action\":\"policy-write\""));
  assert_true(lineage_has(f, "\"editor\":\"user:root\""));
  /* the data path sees it right away */
  struct mg_policy_index *ix = mg_app_index_acquire(&f->app);
  assert_int_equal(mg_policy_index_count(ix), 1);
  mg_policy_index_unref(ix);

  assert_int_equal(call(f, admin, NULL, "PUT", "/v1/grants/g1", body, "If-None-Match", "*", NULL),
                   412);
  assert_int_equal(call(f, admin, NULL, "GET", "/v1/grants/g1", NULL, NULL), 200);
  assert_string_equal(f->etag, tag1);

  const char *g1b = grant("g1", "orders", "group:analysts", "datasets/orders_fact/2024");
  snprintf(body, sizeof body, "%s", g1b);
  assert_int_equal(call(f, admin, NULL, "PUT", "/v1/grants/g1", body, "If-Match", tag1, NULL), 200);
  char tag2[64];
  snprintf(tag2, sizeof tag2, "%s", f->etag);
  assert_string_not_equal(tag1, tag2);
  /* stale tag */
  assert_int_equal(call(f, admin, NULL, "PUT", "/v1/grants/g1", body, "If-Match", tag1, NULL), 412);
  assert_int_equal(call(f, admin, NULL, "PUT", "/v1/grants/g1", body, "If-Match", "W/\"x\"", NULL),
                   412);
  /* id in the body must be the one in the path */
  assert_int_equal(call(f, admin, NULL, "PUT", "/v1/grants/g2", body, "If-None-Match", "*", NULL),
                   400);
  assert_non_null(strstr(detail(f), "/id"));
  /* invalid grants name the field */
  assert_int_equal(call(f, admin, NULL, "PUT", "/v1/grants/g3",
                        "{\"id\":\"g3\",\"effect\":\"allow\",\"subjects\":[\"group:a\"],"
                        "\"product\":\"orders\",\"resources\":[\"a/x**\"],\"actions\":[\"read\"]}",
                        "If-None-Match", "*", NULL), 400);
  assert_non_null(strstr(detail(f), "/resources/0"));
  assert_int_equal(call(f, admin, NULL, "PUT", "/v1/grants/g3",
                        "{\"id\":\"g3\",\"effect\":\"allow\",\"subjects\":[\"group:a\"],"
                        "\"product\":\"orders\",\"resources\":[\"a\"],\"actions\":[\"read\"],"
                        "\"colour\":\"red\"}", "If-None-Match", "*", NULL), 400);
  assert_non_null(strstr(detail(f), "colour"));
  assert_int_equal(call(f, admin, NULL, "PUT", "/v1/grants/g3", "{\"id\":\"g3\",\"id\":\"g3\"}",
                        "If-None-Match", "*", NULL), 400);
  assert_int_equal(call(f, admin, NULL, "PUT", "/v1/grants/g3", "[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]",
                        "If-None-Match", "*", NULL), 400);

  /* delete */
  assert_int_equal(call(f, admin, NULL, "DELETE", "/v1/grants/g1", NULL, NULL), 428);
  assert_int_equal(call(f, admin, NULL, "DELETE", "/v1/grants/g1", NULL, "If-Match", tag1, NULL),
                   412);
  assert_int_equal(call(f, admin, NULL, "DELETE", "/v1/grants/g1", NULL, "If-Match", tag2, NULL),
                   204);
  assert_int_equal(call(f, admin, NULL, "GET", "/v1/grants/g1", NULL, NULL), 404);
  assert_int_equal(call(f, admin, NULL, "DELETE", "/v1/grants/g1", NULL, "If-Match", tag2, NULL),
                   404);
  ix = mg_app_index_acquire(&f->app);
  assert_int_equal(mg_policy_index_count(ix), 0);
  mg_policy_index_unref(ix);
  free(admin);
}

/* ---- owners ------------------------------------------------------------------------------ */

static void test_owner(void **state) {
  struct fx *f = *state;
  char *admin = mint(f, "\"sub\":\"root\",\"scope\":\"mesh:admin\"");
  char *owner = mint(f, "\"sub\":\"olga\",\"groups\":[\"orders-owners\",\"staff\"]");
  char body[1024];

  snprintf(body, sizeof body, "%s", grant("bill1", "billing", "group:finance", "ledger/**"));
  assert_int_equal(call(f, admin, NULL, "PUT", "/v1/grants/bill1", body, "If-None-Match", "*", NULL),
                   201);
  char billtag[64];
  snprintf(billtag, sizeof billtag, "%s", f->etag);

  /* own product */
  snprintf(body, sizeof body, "%s", grant("ord1", "orders", "group:analysts", "datasets/**"));
  assert_int_equal(call(f, owner, NULL, "PUT", "/v1/grants/ord1", body, "If-None-Match", "*", NULL),
                   201);
  assert_true(lineage_has(f, "\"editor\":\"user:olga\""));
  assert_int_equal(call(f, owner, NULL, "GET", "/v1/grants/ord1", NULL, NULL), 200);

  /* another product: creating one is refused */
  snprintf(body, sizeof body, "%s", grant("bill2", "billing", "group:analysts", "ledger/**"));
  assert_int_equal(call(f, owner, NULL, "PUT", "/v1/grants/bill2", body, "If-None-Match", "*", NULL),
                   403);
  /* replacing a billing grant with an orders one (moving it into the owner's product) too */
  snprintf(body, sizeof body, "%s", grant("bill1", "orders", "group:analysts", "datasets/**"));
  assert_int_equal(call(f, owner, NULL, "PUT", "/v1/grants/bill1", body, "If-Match", billtag, NULL),
                   403);
  assert_int_equal(call(f, admin, NULL, "GET", "/v1/grants/bill1", NULL, NULL), 200);
  assert_string_equal(json_string_value(json_object_get(f->body, "product")), "billing");
  assert_string_equal(f->etag, billtag);
  /* …and deleting it, or reading it */
  assert_int_equal(call(f, owner, NULL, "DELETE", "/v1/grants/bill1", NULL, "If-Match", billtag,
                        NULL), 403);
  assert_int_equal(call(f, owner, NULL, "GET", "/v1/grants/bill1", NULL, NULL), 403);

  /* listing: only the owner's products */
  assert_int_equal(call(f, owner, NULL, "GET", "/v1/grants", NULL, NULL), 200);
  json_t *gs = json_object_get(f->body, "grants");
  assert_int_equal(json_array_size(gs), 1);
  assert_string_equal(json_string_value(json_object_get(json_array_get(gs, 0), "id")), "ord1");
  assert_int_equal(call(f, owner, NULL, "GET", "/v1/grants?product=billing", NULL, NULL), 403);
  assert_int_equal(call(f, owner, NULL, "GET", "/v1/grants?product=orders", NULL, NULL), 200);
  assert_int_equal(call(f, admin, NULL, "GET", "/v1/grants", NULL, NULL), 200);
  assert_int_equal(json_array_size(json_object_get(f->body, "grants")), 2);
  assert_int_equal(call(f, admin, NULL, "GET", "/v1/grants?product=billing&subject=group%3Afinance",
                        NULL, NULL), 200);
  assert_int_equal(json_array_size(json_object_get(f->body, "grants")), 1);
  assert_int_equal(call(f, admin, NULL, "GET", "/v1/grants?colour=red", NULL, NULL), 400);

  /* import: own product only */
  const char *imp_b = "{\"product\":\"billing\",\"grants\":[]}";
  assert_int_equal(call(f, owner, NULL, "POST", "/v1/grants:import", imp_b, NULL), 403);
  free(admin);
  free(owner);
}

static void test_auditor(void **state) {
  struct fx *f = *state;
  char *aud = mint(f, "\"sub\":\"aud\",\"scope\":\"mesh:audit\"");
  char body[1024];
  snprintf(body, sizeof body, "%s", grant("x1", "orders", "group:a", "datasets/**"));
  assert_int_equal(call(f, aud, NULL, "GET", "/v1/grants", NULL, NULL), 200);
  assert_int_equal(call(f, aud, NULL, "PUT", "/v1/grants/x1", body, "If-None-Match", "*", NULL), 403);
  assert_int_equal(call(f, aud, NULL, "POST", "/v1/grants:import",
                        "{\"product\":\"orders\",\"grants\":[]}", NULL), 403);
  free(aud);
}

/* ---- import -------------------------------------------------------------------------- */

static void test_import(void **state) {
  struct fx *f = *state;
  char *admin = mint(f, "\"sub\":\"root\",\"scope\":\"mesh:admin\"");
  char body[4096];
  snprintf(body, sizeof body, "%s", grant("old1", "orders", "group:a", "datasets/**"));
  assert_int_equal(call(f, NULL, ADMIN_SPIFFE, "PUT", "/v1/grants/old1", body, "If-None-Match", "*",
                        NULL), 201);
  assert_true(lineage_has(f, "\"editor\":\"spiffe:" ADMIN_SPIFFE "\""));
  snprintf(body, sizeof body, "%s", grant("keep", "billing", "group:a", "ledger/**"));
  assert_int_equal(call(f, admin, NULL, "PUT", "/v1/grants/keep", body, "If-None-Match", "*", NULL),
                   201);
  char g2[1024], g3[1024];
  snprintf(g2, sizeof g2, "%s", grant("new1", "orders", "group:b", "datasets/x/*"));
  snprintf(g3, sizeof g3, "%s", grant("new2", "orders", "group:c", "datasets/y/**"));
  snprintf(body, sizeof body, "{\"product\":\"orders\",\"grants\":[%s,%s]}", g2, g3);
  assert_int_equal(call(f, admin, NULL, "POST", "/v1/grants:import", body, NULL), 200);
  assert_int_equal(call(f, admin, NULL, "GET", "/v1/grants/old1", NULL, NULL), 404);
  assert_int_equal(call(f, admin, NULL, "GET", "/v1/grants/new2", NULL, NULL), 200);
  assert_int_equal(call(f, admin, NULL, "GET", "/v1/grants/keep", NULL, NULL), 200);
  assert_true(lineage_has(f, "\"grant\":\"*import*\""));
  /* an id held by another product's grant: conflict, nothing changes */
  snprintf(body, sizeof body, "{\"product\":\"orders\",\"grants\":[%s]}",
           grant("keep", "orders", "group:b", "x"));
  assert_int_equal(call(f, admin, NULL, "POST", "/v1/grants:import", body, NULL), 409);
  assert_int_equal(call(f, admin, NULL, "GET", "/v1/grants/new1", NULL, NULL), 200);
  /* a grant of another product inside the import */
  snprintf(body, sizeof body, "{\"product\":\"orders\",\"grants\":[%s]}",
           grant("z", "billing", "group:b", "x"));
  assert_int_equal(call(f, admin, NULL, "POST", "/v1/grants:import", body, NULL), 400);
  assert_non_null(strstr(detail(f), "/grants/0/product"));
  /* an invalid grant names its place */
  assert_int_equal(call(f, admin, NULL, "POST", "/v1/grants:import",
                        "{\"product\":\"orders\",\"grants\":[{\"id\":\"q\"}]}", NULL), 400);
  assert_non_null(strstr(detail(f), "/grants/0"));
  /* malformed bodies */
  static const char *const bad[] = {
      "{\"product\":\"orders\",\"product\":\"orders\",\"grants\":[]}",
      "{\"product\":\"orders\",\"grants\":[]} trailing",
      "{\"product\":\"orders\",\"grants\":[],\"n\":1e999999}",
      "{\"product\":\"orders\",\"grants\":[],\"n\":123456789012345678901234567890}",
      "{\"product\":\"ord\xff\",\"grants\":[]}",
      "{\"product\":\"orders\",\"grants\":[],\"extra\":true}",
      "{\"product\":\"orders\",\"grants\":{}}",
      "[1,2]",
      "",
  };
  for (size_t i = 0; i < MG_ARRAY_LEN(bad); i++) {
    if (call(f, admin, NULL, "POST", "/v1/grants:import", bad[i], NULL) != 400)
      fail_msg("bad body %zu accepted: %s", i, bad[i]);
  }
  struct mg_buf deep;
  mg_buf_init(&deep);
  mg_buf_appends(&deep, "{\"product\":\"orders\",\"grants\":");
  for (int i = 0; i < 5000; i++) mg_buf_appends(&deep, "[");
  for (int i = 0; i < 5000; i++) mg_buf_appends(&deep, "]");
  mg_buf_appends(&deep, "}");
  assert_int_equal(call(f, admin, NULL, "POST", "/v1/grants:import", deep.data, NULL), 400);
  mg_buf_clear(&deep);
  free(admin);
}

/* ---- lineage before commit ------------------------------------------------------------- */

static void test_lineage_failure_aborts_edit(void **state) {
  struct fx *f = *state;
  char body[1024];
  snprintf(body, sizeof body, "%s", grant("l1", "orders", "group:a", "datasets/**"));
  /* the log is gone: the edit must not happen */
  struct mg_lineage_writer *w = f->app.lineage;
  mg_lineage_writer_close(w);
  f->app.lineage = NULL;
  assert_int_equal(call(f, NULL, ADMIN_SPIFFE, "PUT", "/v1/grants/l1", body, "If-None-Match", "*",
                        NULL), 503);
  assert_string_equal(err_code(f), "lineage_unavailable");
  assert_int_equal(call(f, NULL, ADMIN_SPIFFE, "GET", "/v1/grants/l1", NULL, NULL), 404);
  char rev[MG_POLICY_REVISION_LEN];
  uint64_t gen = 99;
  assert_int_equal(mg_policy_store_revision(f->app.policy, rev, &gen), 0);
  assert_int_equal(gen, 0);
}

/* ---- decide ----------------------------------------------------------------------------- */

static void test_decide(void **state) {
  struct fx *f = *state;
  char *aud = mint(f, "\"sub\":\"aud\",\"scope\":\"mesh:audit\"");
  char body[1024];
  snprintf(body, sizeof body, "%s", grant("read-facts", "orders", "group:analysts",
                                          "datasets/orders_fact/**"));
  assert_int_equal(call(f, NULL, ADMIN_SPIFFE, "PUT", "/v1/grants/read-facts", body,
                        "If-None-Match", "*", NULL), 201);
  assert_int_equal(call(f, aud, NULL, "POST", "/v1/decide",
                        "{\"principals\":[\"user:al\",\"group:analysts\"],\"method\":\"GET\","
                        "\"path\":\"/datasets/orders_fact/./2024?q=1\",\"purpose\":null}", NULL),
                   200);
  assert_string_equal(json_string_value(json_object_get(f->body, "decision")), "allow");
  assert_string_equal(json_string_value(json_object_get(f->body, "grant")), "read-facts");
  assert_string_equal(json_string_value(json_object_get(f->body, "resource")),
                      "datasets/orders_fact/2024");
  assert_int_equal(json_array_size(json_object_get(f->body, "matching")), 1);
  assert_int_equal(strlen(json_string_value(json_object_get(f->body, "revision"))), 64);
  /* write is not granted */
  assert_int_equal(call(f, aud, NULL, "POST", "/v1/decide",
                        "{\"principals\":[\"group:analysts\"],\"method\":\"PUT\","
                        "\"path\":\"/datasets/orders_fact/2024\"}", NULL), 200);
  assert_string_equal(json_string_value(json_object_get(f->body, "decision")), "deny");
  assert_string_equal(json_string_value(json_object_get(f->body, "reason")), "no_matching_grant");
  /* unmapped method */
  assert_int_equal(call(f, aud, NULL, "POST", "/v1/decide",
                        "{\"principals\":[\"group:analysts\"],\"method\":\"BREW\","
                        "\"path\":\"/datasets/orders_fact/2024\"}", NULL), 200);
  assert_string_equal(json_string_value(json_object_get(f->body, "decision")), "deny");
  /* bad input */
  assert_int_equal(call(f, aud, NULL, "POST", "/v1/decide",
                        "{\"principals\":[\"group:analysts\"],\"method\":\"GET\","
                        "\"path\":\"/datasets/%2F/x\"}", NULL), 400);
  assert_non_null(strstr(detail(f), "/path"));
  assert_int_equal(call(f, aud, NULL, "POST", "/v1/decide",
                        "{\"principals\":\"group:analysts\",\"method\":\"GET\",\"path\":\"/a\"}",
                        NULL), 400);
  assert_non_null(strstr(detail(f), "/principals"));
  assert_int_equal(call(f, aud, NULL, "POST", "/v1/decide",
                        "{\"principals\":[],\"method\":\"GET\",\"path\":\"/a\",\"x\":1}", NULL), 400);
  free(aud);
}

/* ---- lineage endpoints ------------------------------------------------------------------- */

static void test_lineage_endpoints(void **state) {
  struct fx *f = *state;
  char body[1024];
  snprintf(body, sizeof body, "%s", grant("c1", "orders", "group:a", "datasets/**"));
  assert_int_equal(call(f, NULL, ADMIN_SPIFFE, "PUT", "/v1/grants/c1", body, "If-None-Match", "*",
                        NULL), 201);
  assert_int_equal(call(f, NULL, NULL, "GET", "/v1/lineage/checkpoint", NULL, NULL), 200);
  const char *note = json_string_value(json_object_get(f->body, "checkpoint"));
  assert_non_null(note);
  assert_non_null(strstr(note, "test.example/orders\n"));
  assert_true(json_integer_value(json_object_get(f->body, "size")) >= 1);
  assert_int_equal(call(f, NULL, NULL, "GET", "/v1/lineage/proof?index=0&size=1", NULL, NULL), 200);
  assert_true(json_is_array(json_object_get(f->body, "hashes")));
  assert_int_equal(call(f, NULL, NULL, "GET", "/v1/lineage/proof?from=1&to=1", NULL, NULL), 200);
  assert_int_equal(call(f, NULL, NULL, "GET", "/v1/lineage/proof?index=5&size=1", NULL, NULL), 400);
  assert_int_equal(call(f, NULL, NULL, "GET", "/v1/lineage/proof?index=x", NULL, NULL), 400);
  assert_int_equal(call(f, NULL, NULL, "GET", "/v1/lineage/proof", NULL, NULL), 400);
  /* export: auditors and admins only; streamed through a pipe */
  assert_int_equal(call(f, NULL, NULL, "GET", "/v1/lineage", NULL, NULL), 401);
  assert_int_equal(call(f, NULL, ADMIN_SPIFFE, "GET", "/v1/lineage?format=xml", NULL, NULL), 400);
  assert_int_equal(call(f, NULL, ADMIN_SPIFFE, "GET", "/v1/lineage?since=yesterday", NULL, NULL),
                   400);
  assert_int_equal(call(f, NULL, ADMIN_SPIFFE, "GET", "/v1/lineage", NULL, NULL), 200);
  assert_non_null(f->rs.stream);
  int fd = f->rs.stream->rfd;
  struct mg_buf out;
  mg_buf_init(&out);
  for (int i = 0; i < 2000; i++) {
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof buf);
    if (n == 0) break;
    if (n > 0) mg_buf_append(&out, buf, (size_t)n);
    else usleep(1000);
  }
  assert_int_equal(atomic_load(&f->rs.stream->result), 0);
  close(fd);
  assert_non_null(strstr(out.data, "\"action\":\"policy-write\""));
  assert_non_null(strstr(out.data, "{\"checkpoint\":"));
  mg_buf_clear(&out);
}

/* ---- metrics -------------------------------------------------------------------------- */

static void test_metrics(void **state) {
  struct fx *f = *state;
  call(f, NULL, NULL, "GET", "/healthz", NULL, NULL);
  uint64_t before = atomic_load(&f->app.metrics.admin_requests);
  assert_int_equal(call(f, NULL, NULL, "GET", "/metrics", NULL, NULL), 200);
  assert_int_equal(atomic_load(&f->app.metrics.admin_requests), before + 1);
  const char *t = f->rs.body.data;
  assert_non_null(strstr(t, "meshgate_requests_total{decision=\"allow\"} "));
  assert_non_null(strstr(t, "meshgate_responses_total{class=\"2xx\"} "));
  assert_non_null(strstr(t, "meshgate_request_duration_seconds_bucket{le=\"+Inf\"} "));
  assert_non_null(strstr(t, "meshgate_policy_grants 0\n"));
  assert_non_null(strstr(t, "meshgate_lineage_healthy 1\n"));
  assert_non_null(strstr(t, "meshgate_jwks_age_seconds{issuer="));
  assert_null(strstr(t, "user:"));
  assert_string_equal(f->rs.ctype, "text/plain; version=0.0.4; charset=utf-8");
}

/* ---- HTTP/1.1 parser ---------------------------------------------------------------------- */

static int feed_all(struct mg_admin_h1 *h, const char *s, size_t *used) {
  return mg_admin_h1_feed(h, s, strlen(s), used);
}

static void test_h1_parser(void **state) {
  (void)state;
  struct mg_admin_h1 h;
  size_t used;
  mg_admin_h1_init(&h);
  const char *two = "GET /healthz HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\r\n"
                    "PUT /v1/grants/a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
  assert_int_equal(feed_all(&h, two, &used), MG_ADMIN_H1_REQUEST);
  assert_string_equal(h.req.method, "GET");
  assert_string_equal(h.req.target, "/healthz");
  assert_string_equal(mg_admin_req_header(&h.req, "x-a"), "1");
  assert_true(h.keepalive);
  mg_admin_h1_next(&h);
  assert_int_equal(feed_all(&h, two + used, &used), MG_ADMIN_H1_REQUEST);
  assert_string_equal(h.req.method, "PUT");
  assert_int_equal(h.req.body.len, 3);
  mg_admin_h1_next(&h);
  /* byte by byte, chunked */
  const char *ch = "POST /v1/decide HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
  int rc = MG_ADMIN_H1_MORE;
  for (size_t i = 0; ch[i]; i++) {
    rc = mg_admin_h1_feed(&h, ch + i, 1, &used);
    assert_int_equal(used, 1);
    if (rc != MG_ADMIN_H1_MORE) break;
  }
  assert_int_equal(rc, MG_ADMIN_H1_REQUEST);
  assert_string_equal(h.req.body.data, "{}");
  mg_admin_h1_clear(&h);

  /* 413 from Content-Length, before any body byte */
  mg_admin_h1_init(&h);
  assert_int_equal(feed_all(&h, "PUT /v1/grants/a HTTP/1.1\r\nHost: a\r\nContent-Length: 1048577\r\n\r\n", &used),
                   413);
  mg_admin_h1_clear(&h);
  /* 413 for a chunked body growing past the limit */
  mg_admin_h1_init(&h);
  assert_int_equal(feed_all(&h, "PUT /v1/grants/a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                                "100001\r\n", &used), MG_ADMIN_H1_MORE);
  char *big = malloc(0x100001 + 1);
  memset(big, 'a', 0x100001);
  big[0x100001] = 0;
  assert_int_equal(feed_all(&h, big, &used), 413);
  free(big);
  mg_admin_h1_clear(&h);
  /* RFC 9112: field names are tokens; HTTP/1.1 needs exactly one Host (HTTP/1.0 none) */
  static const char *const bad[] = {
    "GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length : 0\r\n\r\n",
    "GET /healthz HTTP/1.1\r\nHo st: a\r\n\r\n",
    "GET /healthz HTTP/1.1\r\n\r\n",
    "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    mg_admin_h1_init(&h);
    assert_int_equal(feed_all(&h, bad[i], &used), 400);
    mg_admin_h1_clear(&h);
  }
  mg_admin_h1_init(&h);
  assert_int_equal(feed_all(&h, "GET /healthz HTTP/1.0\r\n\r\n", &used), MG_ADMIN_H1_REQUEST);
  mg_admin_h1_clear(&h);
  /* 431 */
  mg_admin_h1_init(&h);
  struct mg_buf b;
  mg_buf_init(&b);
  mg_buf_appends(&b, "GET / HTTP/1.1\r\n");
  for (int i = 0; i < 400; i++) mg_buf_appendf(&b, "X-H%d: %040d\r\n", i, i);
  assert_int_equal(mg_admin_h1_feed(&h, b.data, b.len, &used), 431);
  mg_buf_clear(&b);
  mg_admin_h1_clear(&h);
  /* malformed, smuggling shape, HTTP/1.0 without keep-alive */
  mg_admin_h1_init(&h);
  assert_int_equal(feed_all(&h, "GET / HTTP/1.1\r\nHost a\r\n\r\n", &used), 400);
  mg_admin_h1_clear(&h);
  mg_admin_h1_init(&h);
  assert_int_equal(feed_all(&h, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n"
                                "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", &used), 400);
  mg_admin_h1_clear(&h);
  mg_admin_h1_init(&h);
  assert_int_equal(feed_all(&h, "GET / HTTP/1.0\r\n\r\n", &used), MG_ADMIN_H1_REQUEST);
  assert_false(h.keepalive);
  mg_admin_h1_clear(&h);
  mg_admin_h1_init(&h);
  assert_int_equal(feed_all(&h, "PUT /v1/grants/a HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                                "Content-Length: 5\r\n\r\n", &used), MG_ADMIN_H1_MORE);
  assert_true(h.expect_continue);
  mg_admin_h1_clear(&h);
}

int main(void) {
  mg_policy_init();
  mg_lineage_init();
  mg_log_set_level(MG_LOG_ERROR);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pct_decode),
      cmocka_unit_test(test_h1_parser),
      cmocka_unit_test_setup_teardown(test_routing, setup, teardown),
      cmocka_unit_test_setup_teardown(test_auth, setup, teardown),
      cmocka_unit_test_setup_teardown(test_crud, setup, teardown),
      cmocka_unit_test_setup_teardown(test_owner, setup, teardown),
      cmocka_unit_test_setup_teardown(test_auditor, setup, teardown),
      cmocka_unit_test_setup_teardown(test_import, setup, teardown),
      cmocka_unit_test_setup_teardown(test_lineage_failure_aborts_edit, setup, teardown),
      cmocka_unit_test_setup_teardown(test_decide, setup, teardown),
      cmocka_unit_test_setup_teardown(test_lineage_endpoints, setup, teardown),
      cmocka_unit_test_setup_teardown(test_metrics, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
