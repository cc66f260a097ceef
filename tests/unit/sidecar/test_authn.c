/*
 * test_authn.c — JWT verification as a client sees it: which tokens pass, which are refused
 * and with what reason, what identity comes out, how the cache and JWKS rotation behave.
 *
 * Keys and JWKS sets come from fixtures/make_fixtures.py. Tokens are minted at run time
 * (exp relative to now): well-formed ones with libjwt, odd ones (duplicate members, crit,
 * DER signatures…) by signing hand-written JSON with OpenSSL. Every token the verifier
 * accepts is cross-checked: libjwt with the right public key accepts it too.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <jwt.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "common/common.h"
#include "sidecar/authn.h"
#include "sidecar/authn_int.h"

#define ISS "https://idp.test"
#define ISS2 "https://other.test"
#define NOW_S ((long long)(mg_time_now_us() / 1000000))

static char fixdir[PATH_MAX];

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
  snprintf(fixdir, sizeof fixdir, "%s/../../../../tests/unit/sidecar/fixtures", dirname(exe));
  if (access(fixdir, R_OK) != 0) snprintf(fixdir, sizeof fixdir, "tests/unit/sidecar/fixtures");
}

static char *slurp(const char *name, size_t *len) {
  char p[PATH_MAX + 64], *out = NULL;
  size_t n = 0;
  snprintf(p, sizeof p, "%s/%s", fixdir, name);
  assert_int_equal(mg_file_read(p, 1 << 20, &out, &n), 0);
  if (len) *len = n;
  return out;
}

static void write_text(const char *dst, const char *text) {
  char tmp[PATH_MAX + 8];
  snprintf(tmp, sizeof tmp, "%s.tmp", dst);
  FILE *f = fopen(tmp, "w");
  assert_non_null(f);
  assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
  fclose(f);
  assert_int_equal(rename(tmp, dst), 0);
}

static void copy_fixture(const char *name, const char *dst) {
  size_t n;
  char *d = slurp(name, &n);
  char tmp[PATH_MAX + 8];
  snprintf(tmp, sizeof tmp, "%s.tmp", dst);
  FILE *f = fopen(tmp, "w");
  assert_non_null(f);
  assert_int_equal(fwrite(d, 1, n, f), n);
  fclose(f);
  assert_int_equal(rename(tmp, dst), 0);
  free(d);
}

static char *b64u(const void *d, size_t n) {
  char *s = malloc(mg_b64url_len(n) + 1);
  mg_b64url_encode(d, n, s);
  return s;
}

static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static char *fmt(const char *f, ...) {
  va_list ap;
  char *s = NULL;
  va_start(ap, f);
  assert_true(vasprintf(&s, f, ap) >= 0);
  va_end(ap);
  return s;
}

/* ---- signing with OpenSSL (any header/payload bytes) ---------------------- */

static const EVP_MD *md_of(enum mg_jws_alg alg) {
  switch (alg) {
  case MG_JWS_RS256: case MG_JWS_ES256: return EVP_sha256();
  case MG_JWS_RS384: case MG_JWS_ES384: return EVP_sha384();
  default: return EVP_sha512();
  }
}

/* Signs input; ECDSA as JWS r||s unless der. Returns length. */
static size_t sign_bytes(const char *key, enum mg_jws_alg alg, const char *in, size_t inl,
                         uint8_t *out, bool der) {
  size_t pl;
  char *pem = slurp(key, &pl);
  BIO *bio = BIO_new_mem_buf(pem, (int)pl);
  EVP_PKEY *pk = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
  assert_non_null(pk);
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  uint8_t sig[1024];
  size_t sl = sizeof sig;
  assert_int_equal(EVP_DigestSignInit(md, NULL, md_of(alg), NULL, pk), 1);
  assert_int_equal(EVP_DigestSign(md, sig, &sl, (const uint8_t *)in, inl), 1);
  size_t L = mg_jws_ec_len(alg);
  if (L && !der) {
    const uint8_t *p = sig;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)sl);
    assert_non_null(es);
    BN_bn2binpad(ECDSA_SIG_get0_r(es), out, (int)L);
    BN_bn2binpad(ECDSA_SIG_get0_s(es), out + L, (int)L);
    ECDSA_SIG_free(es);
    sl = 2 * L;
  } else {
    memcpy(out, sig, sl);
  }
  EVP_MD_CTX_free(md);
  EVP_PKEY_free(pk);
  BIO_free(bio);
  free(pem);
  return sl;
}

static char *join(const char *hdr, const char *payload, const uint8_t *sig, size_t sl) {
  char *h = b64u(hdr, strlen(hdr)), *p = b64u(payload, strlen(payload)), *s = b64u(sig, sl);
  char *t = fmt("%s.%s.%s", h, p, s);
  free(h);
  free(p);
  free(s);
  return t;
}

/* A token over arbitrary header and payload JSON, correctly signed with key. */
static char *sign_raw(const char *key, enum mg_jws_alg alg, const char *hdr, const char *payload) {
  char *h = b64u(hdr, strlen(hdr)), *p = b64u(payload, strlen(payload));
  char *in = fmt("%s.%s", h, p);
  uint8_t sig[1024];
  size_t sl = sign_bytes(key, alg, in, strlen(in), sig, false);
  char *s = b64u(sig, sl);
  char *t = fmt("%s.%s", in, s);
  free(h);
  free(p);
  free(in);
  free(s);
  return t;
}

static char *claims_with(const char *extra) {
  long long now = NOW_S;
  return fmt("{\"iss\":\"" ISS "\",\"aud\":\"mesh\",\"sub\":\"alice\",\"exp\":%lld,\"iat\":%lld%s%s}",
             now + 600, now, extra[0] ? "," : "", extra);
}

/* Standard header with kid; extra claims appended. */
static char *tok(const char *key, enum mg_jws_alg alg, const char *kid, const char *extra) {
  char *hdr = fmt("{\"alg\":\"%s\",\"typ\":\"JWT\",\"kid\":\"%s\"}", mg_jws_alg_name(alg), kid);
  char *c = claims_with(extra);
  char *t = sign_raw(key, alg, hdr, c);
  free(hdr);
  free(c);
  return t;
}

/* ---- libjwt: minting and the cross-check ---------------------------------- */

static char *mint_libjwt(const char *key, jwt_alg_t alg, const char *kid, const char *grants) {
  jwt_t *j = NULL;
  size_t kl;
  char *pem = slurp(key, &kl);
  assert_int_equal(jwt_new(&j), 0);
  assert_int_equal(jwt_set_alg(j, alg, (const unsigned char *)pem, (int)kl), 0);
  if (kid) assert_int_equal(jwt_add_header(j, "kid", kid), 0);
  assert_int_equal(jwt_add_grants_json(j, grants), 0);
  char *t = jwt_encode_str(j);
  assert_non_null(t);
  char *copy = strdup(t);
  free(t);
  jwt_free(j);
  free(pem);
  return copy;
}

static char *std_grants(const char *extra) {
  long long now = NOW_S;
  return fmt("{\"iss\":\"" ISS "\",\"aud\":[\"other\",\"mesh\"],\"sub\":\"alice\",\"exp\":%lld,"
             "\"iat\":%lld,\"nbf\":%lld%s%s}",
             now + 600, now, now - 5, extra[0] ? "," : "", extra);
}

static bool libjwt_accepts(const char *token, const char *pubkey) {
  size_t kl;
  char *pem = slurp(pubkey, &kl);
  jwt_t *j = NULL;
  int rc = jwt_decode(&j, token, (const unsigned char *)pem, (int)kl);
  jwt_free(j);
  free(pem);
  return rc == 0;
}

/* ---- fixture ------------------------------------------------------------- */

struct fx {
  char dir[64], jwks[128], jwks2[128];
  char *auds[2], *algs[4];
  struct mg_config_issuer iss[2];
  struct mg_config cfg;
  struct mg_authn *a;
  struct mg_authn_cache *c;
};

static void fx_config(struct fx *f) {
  f->auds[0] = "mesh";
  f->algs[0] = "RS256";
  f->algs[1] = "ES256";
  f->algs[2] = "ES384";
  f->algs[3] = "ES512";
  f->iss[0] = (struct mg_config_issuer){
      .issuer = ISS, .audiences = f->auds, .naudiences = 1, .jwks_file = f->jwks,
      .algorithms = f->algs, .nalgorithms = 4, .clock_skew_s = 60, .jwks_refresh_s = 300,
      .jwks_min_refresh_s = 0};
  f->cfg = (struct mg_config){.refcnt = 1, .issuers = f->iss, .nissuers = 1,
                              .max_token_bytes = 8192};
}

static int setup(void **state) {
  struct fx *f = calloc(1, sizeof *f);
  snprintf(f->dir, sizeof f->dir, "/tmp/test_authn_XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  snprintf(f->jwks, sizeof f->jwks, "%s/jwks.json", f->dir);
  snprintf(f->jwks2, sizeof f->jwks2, "%s/other.json", f->dir);
  copy_fixture("jwks.json", f->jwks);
  copy_fixture("jwks_other.json", f->jwks2);
  fx_config(f);
  char err[256] = "";
  int rc = mg_authn_new(&f->cfg, &f->a, err, sizeof err);
  if (rc) fprintf(stderr, "authn: %s\n", err);
  assert_int_equal(rc, 0);
  f->c = mg_authn_cache_new(4096);
  assert_non_null(f->c);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  struct fx *f = *state;
  mg_authn_cache_free(f->c);
  mg_authn_free(f->a);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
  assert_int_equal(system(cmd), 0);
  free(f);
  return 0;
}

static int verify_at(struct fx *f, struct mg_authn_cache *c, const char *t, int64_t now,
                     struct mg_authn_identity *id, char *why) {
  why[0] = 0;
  return mg_authn_verify(f->a, c, t, strlen(t), now, id, why, 96);
}

/* Accepted, and libjwt agrees. */
static void expect_ok(struct fx *f, const char *t, const char *pub) {
  struct mg_authn_identity id;
  char why[96];
  int rc = verify_at(f, NULL, t, mg_time_now_us(), &id, why);
  if (rc) fprintf(stderr, "rejected: %s\n", why);
  assert_int_equal(rc, 0);
  assert_string_equal(id.user, "user:alice");
  mg_authn_identity_release(&id);
  assert_true(libjwt_accepts(t, pub));
}

static void expect_reject(struct fx *f, const char *t, int want_rc, const char *reason) {
  struct mg_authn_identity id;
  char why[96];
  int rc = verify_at(f, f->c, t, mg_time_now_us(), &id, why);
  if (rc != want_rc || strcmp(why, reason) != 0)
    fprintf(stderr, "want %d \"%s\", got %d \"%s\"\n", want_rc, reason, rc, why);
  assert_int_equal(rc, want_rc);
  assert_string_equal(why, reason);
  assert_null(id.user);
  assert_null(id.priv);
}

#define REJECT(f, t, reason) expect_reject(f, t, MG_AUTHN_E_INVALID, reason)

/* ---- tests --------------------------------------------------------------- */

static void test_valid_algorithms(void **state) {
  struct fx *f = *state;
  char *g = std_grants("\"groups\":[\"analysts\",\"ops\"],\"azp\":\"web\",\"jti\":\"j-1\"");
  struct { const char *key, *pub, *kid; jwt_alg_t alg; } cases[] = {
    {"rsa1.pem", "rsa1.pub.pem", "rsa1", JWT_ALG_RS256},
    {"ec256.pem", "ec256.pub.pem", "ec256", JWT_ALG_ES256},
    {"ec384.pem", "ec384.pub.pem", "ec384", JWT_ALG_ES384},
    {"ec521.pem", "ec521.pub.pem", "ec521", JWT_ALG_ES512},
  };
  for (size_t i = 0; i < MG_ARRAY_LEN(cases); i++) {
    char *t = mint_libjwt(cases[i].key, cases[i].alg, cases[i].kid, g);
    expect_ok(f, t, cases[i].pub);
    struct mg_authn_identity id;
    char why[96];
    assert_int_equal(verify_at(f, f->c, t, mg_time_now_us(), &id, why), 0);
    assert_null(id.issuer_name);
    assert_string_equal(id.iss, ISS);
    assert_string_equal(id.user, "user:alice");
    assert_string_equal(id.client, "client:web");
    assert_int_equal(id.ngroups, 2);
    assert_string_equal(id.groups[0], "group:analysts");
    assert_string_equal(id.groups[1], "group:ops");
    /* token_hash = SHA-256("https://idp.test" 0x00 "j-1") */
    uint8_t h[32];
    char hex[65], in[64];
    size_t n = (size_t)snprintf(in, sizeof in, "%s", ISS) + 1;
    memcpy(in + n, "j-1", 3);
    mg_sha256(in, n + 3, h);
    mg_hex_encode(h, 32, hex);
    assert_string_equal(id.token_hash, hex);
    assert_true(mg_authn_claim_matches(&id, "sub", "alice"));
    mg_authn_identity_release(&id);
    free(t);
  }
  free(g);
}

static void test_pyjwt_tokens(void **state) {
  struct fx *f = *state;
  const char *names[][2] = {{"token_rs256.txt", "rsa1.pub.pem"},
                            {"token_es256.txt", "ec256.pub.pem"},
                            {"token_es384.txt", "ec384.pub.pem"}};
  for (size_t i = 0; i < MG_ARRAY_LEN(names); i++) {
    char *t = slurp(names[i][0], NULL);
    t[strcspn(t, "\n")] = 0;
    expect_ok(f, t, names[i][1]);
    struct mg_authn_identity id;
    char why[96];
    assert_int_equal(verify_at(f, NULL, t, mg_time_now_us(), &id, why), 0);
    /* no jti: the hash is over the whole token */
    uint8_t h[32];
    char hex[65];
    mg_sha256(t, strlen(t), h);
    mg_hex_encode(h, 32, hex);
    assert_string_equal(id.token_hash, hex);
    mg_authn_identity_release(&id);
    free(t);
  }
}

static void test_time_claims(void **state) {
  struct fx *f = *state;
  long long now = NOW_S;
  const char *hdr = "{\"alg\":\"ES256\",\"kid\":\"ec256\"}";
  struct { long long exp; const char *member; const char *reason; } cases[] = {
    {now - 61, NULL, "token expired"},
    {now + 600, "nbf", "token not yet valid"},
    {now + 600, "iat", "token issued in the future"},
  };
  for (size_t i = 0; i < MG_ARRAY_LEN(cases); i++) {
    char extra[64] = "";
    if (cases[i].member) snprintf(extra, sizeof extra, ",\"%s\":%lld", cases[i].member, now + 120);
    char *c = fmt("{\"iss\":\"" ISS "\",\"aud\":\"mesh\",\"sub\":\"alice\",\"exp\":%lld%s}",
                  cases[i].exp, extra);
    char *t = sign_raw("ec256.pem", MG_JWS_ES256, hdr, c);
    REJECT(f, t, cases[i].reason);
    free(t);
    free(c);
  }
  /* within the 60 s skew: expired 30 s ago, nbf/iat 30 s ahead -> accepted */
  char *c = fmt("{\"iss\":\"" ISS "\",\"aud\":\"mesh\",\"sub\":\"alice\",\"exp\":%lld,"
                "\"nbf\":%lld,\"iat\":%lld}", now - 30, now + 30, now + 30);
  char *t = sign_raw("ec256.pem", MG_JWS_ES256, hdr, c);
  expect_ok(f, t, "ec256.pub.pem");
  free(t);
  free(c);
  /* bad numbers */
  const char *bad[] = {"1700000000.5", "\"4102444800\"", "-1", "99999999999999", "1e12",
                       "true", "null"};
  for (size_t i = 0; i < MG_ARRAY_LEN(bad); i++) {
    c = fmt("{\"iss\":\"" ISS "\",\"aud\":\"mesh\",\"sub\":\"alice\",\"exp\":%s}", bad[i]);
    t = sign_raw("ec256.pem", MG_JWS_ES256, hdr, c);
    REJECT(f, t, "invalid claim: exp");
    free(t);
    free(c);
  }
  c = fmt("{\"iss\":\"" ISS "\",\"aud\":\"mesh\",\"sub\":\"alice\"}");
  t = sign_raw("ec256.pem", MG_JWS_ES256, hdr, c);
  REJECT(f, t, "missing claim: exp");
  free(t);
  free(c);
}

static void test_iss_aud_sub(void **state) {
  struct fx *f = *state;
  long long now = NOW_S;
  const char *hdr = "{\"alg\":\"RS256\",\"kid\":\"rsa1\"}";
  struct { const char *claims; const char *reason; } cases[] = {
    {"\"iss\":\"https://evil.test\",\"aud\":\"mesh\",\"sub\":\"a\"", "unknown issuer"},
    {"\"iss\":\"https://idp.test/\",\"aud\":\"mesh\",\"sub\":\"a\"", "unknown issuer"},
    {"\"aud\":\"mesh\",\"sub\":\"a\"", "missing claim: iss"},
    {"\"iss\":\"" ISS "\",\"aud\":\"other\",\"sub\":\"a\"", "audience mismatch"},
    {"\"iss\":\"" ISS "\",\"aud\":[\"x\",\"y\"],\"sub\":\"a\"", "audience mismatch"},
    {"\"iss\":\"" ISS "\",\"aud\":[],\"sub\":\"a\"", "invalid claim: aud"},
    {"\"iss\":\"" ISS "\",\"aud\":[\"mesh\",7],\"sub\":\"a\"", "invalid claim: aud"},
    {"\"iss\":\"" ISS "\",\"sub\":\"a\"", "missing claim: aud"},
    {"\"iss\":\"" ISS "\",\"aud\":\"mesh\"", "missing claim: sub"},
    {"\"iss\":\"" ISS "\",\"aud\":\"mesh\",\"sub\":42", "invalid claim: sub"},
    {"\"iss\":\"" ISS "\",\"aud\":\"mesh\",\"sub\":\"\"", "invalid claim: sub"},
  };
  for (size_t i = 0; i < MG_ARRAY_LEN(cases); i++) {
    char *c = fmt("{%s,\"exp\":%lld}", cases[i].claims, now + 600);
    char *t = sign_raw("rsa1.pem", MG_JWS_RS256, hdr, c);
    REJECT(f, t, cases[i].reason);
    free(t);
    free(c);
  }
  /* aud array that contains a configured audience */
  char *c = fmt("{\"iss\":\"" ISS "\",\"aud\":[\"x\",\"mesh\"],\"sub\":\"alice\",\"exp\":%lld}",
                now + 600);
  char *t = sign_raw("rsa1.pem", MG_JWS_RS256, hdr, c);
  expect_ok(f, t, "rsa1.pub.pem");
  free(t);
  free(c);
}

static void test_algorithm_confusion(void **state) {
  struct fx *f = *state;
  char *g = std_grants("");
  /* HS256 with the RSA public key PEM as the HMAC secret */
  char *t = mint_libjwt("rsa1.pub.pem", JWT_ALG_HS256, "rsa1", g);
  REJECT(f, t, "unsupported algorithm");
  free(t);
  /* alg none, with and without a signature part */
  char *c = claims_with("");
  char *h = b64u("{\"alg\":\"none\"}", 14), *p = b64u(c, strlen(c));
  t = fmt("%s.%s.", h, p);
  REJECT(f, t, "malformed token");
  free(t);
  t = fmt("%s.%s.AAAA", h, p);
  REJECT(f, t, "unsupported algorithm");
  free(t);
  free(h);
  free(p);
  const char *algs[] = {"{\"alg\":\"PS256\",\"kid\":\"rsa1\"}", "{\"alg\":\"rs256\"}",
                        "{\"alg\":\"HS512\"}", "{\"alg\":\"EdDSA\"}"};
  for (size_t i = 0; i < MG_ARRAY_LEN(algs); i++) {
    t = sign_raw("rsa1.pem", MG_JWS_RS256, algs[i], c);
    REJECT(f, t, "unsupported algorithm");
    free(t);
  }
  /* a key pinned to RS256 refuses RS384; an ES256 header cannot use the P-384 key */
  t = sign_raw("rsa1.pem", MG_JWS_RS384, "{\"alg\":\"RS384\",\"kid\":\"rsa1\"}", c);
  REJECT(f, t, "algorithm not allowed for key");
  free(t);
  t = sign_raw("ec384.pem", MG_JWS_ES384, "{\"alg\":\"ES256\",\"kid\":\"ec384\"}", c);
  REJECT(f, t, "algorithm not allowed for key");
  free(t);
  /* no kid: ES384 has exactly one key -> used; RS256 too (rsa1 only) */
  t = sign_raw("ec384.pem", MG_JWS_ES384, "{\"alg\":\"ES384\"}", c);
  expect_ok(f, t, "ec384.pub.pem");
  free(t);
  t = sign_raw("rsa1.pem", MG_JWS_RS256, "{\"alg\":\"RS256\"}", c);
  expect_ok(f, t, "rsa1.pub.pem");
  free(t);
  /* tampered payload: bad signature, counted separately */
  t = tok("rsa1.pem", MG_JWS_RS256, "rsa1", "\"role\":\"user\"");
  char *t2 = tok("rsa1.pem", MG_JWS_RS256, "rsa1", "\"role\":\"root\"");
  char *spliced = fmt("%.*s%s", (int)(strrchr(t2, '.') - t2), t2, strrchr(t, '.'));
  expect_reject(f, spliced, MG_AUTHN_E_BADSIG, "bad signature");
  free(spliced);
  free(t2);
  free(t);
  /* signed by a key that is not the kid's */
  t = tok("rsa2.pem", MG_JWS_RS256, "rsa1", "");
  expect_reject(f, t, MG_AUTHN_E_BADSIG, "bad signature");
  free(t);
  free(c);
  free(g);
}

static void test_structure(void **state) {
  struct fx *f = *state;
  char *good = tok("ec256.pem", MG_JWS_ES256, "ec256", "");
  expect_ok(f, good, "ec256.pub.pem");
  const char *d1 = strchr(good, '.'), *d2 = strrchr(good, '.');
  char *t;
  const char *garbage[] = {"", ".", "..", "a.b", "a.b.c.d", "abc", "!!!.@@@.###", ".a.b", "a..b",
                           "a.b.", "eyJhbGciOiJFUzI1NiJ9.e30.AAAA====",
                           "eyJhbGciOiJFUzI1NiJ9 .e30.AAAA"};
  for (size_t i = 0; i < MG_ARRAY_LEN(garbage); i++) REJECT(f, garbage[i], "malformed token");
  /* padding, '+' and '/', whitespace inside a valid token */
  t = fmt("%.*s=%s", (int)(d1 - good), good, d1);
  REJECT(f, t, "malformed token");
  free(t);
  t = fmt("%s=", good);
  REJECT(f, t, "malformed token");
  free(t);
  t = strdup(good);
  t[d2 - good + 2] = '+';
  REJECT(f, t, "malformed token");
  t[d2 - good + 2] = '/';
  REJECT(f, t, "malformed token");
  free(t);
  t = fmt("%s ", good);
  REJECT(f, t, "malformed token");
  free(t);
  /* header and payload must be JSON objects */
  char *c = claims_with("");
  const char *hdrs[] = {"[]", "\"x\"", "{\"alg\":\"ES256\"", "{\"alg\":\"ES256\"} x"};
  for (size_t i = 0; i < MG_ARRAY_LEN(hdrs); i++) {
    t = sign_raw("ec256.pem", MG_JWS_ES256, hdrs[i], c);
    REJECT(f, t, "malformed token");
    free(t);
  }
  t = sign_raw("ec256.pem", MG_JWS_ES256, "{\"alg\":\"ES256\"}", "[1]");
  REJECT(f, t, "malformed token");
  free(t);
  /* duplicate members: header and claims (libjwt would keep the last one) */
  t = sign_raw("ec256.pem", MG_JWS_ES256, "{\"alg\":\"ES256\",\"alg\":\"ES256\",\"kid\":\"ec256\"}", c);
  REJECT(f, t, "malformed token");
  free(t);
  free(c);
  c = claims_with("\"sub\":\"admin\"");
  t = sign_raw("ec256.pem", MG_JWS_ES256, "{\"alg\":\"ES256\",\"kid\":\"ec256\"}", c);
  REJECT(f, t, "malformed token");
  free(t);
  free(c);
  free(good);
}

static void test_forbidden_headers(void **state) {
  struct fx *f = *state;
  char *c = claims_with("");
  const char *hdrs[] = {
    "{\"alg\":\"ES256\",\"kid\":\"ec256\",\"jku\":\"https://evil.test/jwks\"}",
    "{\"alg\":\"ES256\",\"kid\":\"ec256\",\"x5u\":\"https://evil.test/cert\"}",
    "{\"alg\":\"ES256\",\"kid\":\"ec256\",\"jwk\":{\"kty\":\"EC\"}}",
    "{\"alg\":\"ES256\",\"kid\":\"ec256\",\"x5c\":[\"MIIB\"]}",
    "{\"alg\":\"ES256\",\"kid\":\"ec256\",\"crit\":[\"exp\"],\"exp\":1}",
    "{\"alg\":\"ES256\",\"kid\":\"ec256\",\"crit\":[]}",
  };
  for (size_t i = 0; i < MG_ARRAY_LEN(hdrs); i++) {
    char *t = sign_raw("ec256.pem", MG_JWS_ES256, hdrs[i], c);
    REJECT(f, t, "forbidden header");
    free(t);
  }
  /* typ */
  const char *ok_typ[] = {"JWT", "jwt", "at+jwt", "AT+JWT", "application/at+jwt"};
  for (size_t i = 0; i < MG_ARRAY_LEN(ok_typ); i++) {
    char *h = fmt("{\"alg\":\"ES256\",\"kid\":\"ec256\",\"typ\":\"%s\"}", ok_typ[i]);
    char *t = sign_raw("ec256.pem", MG_JWS_ES256, h, c);
    if (i == 0) {
      expect_ok(f, t, "ec256.pub.pem");
    } else { /* libjwt 1.10 only knows typ "JWT": no cross-check */
      struct mg_authn_identity id;
      char why[96];
      assert_int_equal(verify_at(f, NULL, t, mg_time_now_us(), &id, why), 0);
      mg_authn_identity_release(&id);
    }
    free(t);
    free(h);
  }
  const char *bad_typ[] = {"\"JOSE\"", "\"JWS\"", "\"application/jwt\"", "5", "null", "\"\""};
  for (size_t i = 0; i < MG_ARRAY_LEN(bad_typ); i++) {
    char *h = fmt("{\"alg\":\"ES256\",\"kid\":\"ec256\",\"typ\":%s}", bad_typ[i]);
    char *t = sign_raw("ec256.pem", MG_JWS_ES256, h, c);
    REJECT(f, t, "unsupported token type");
    free(t);
    free(h);
  }
  free(c);
}

static void test_kid_injection(void **state) {
  struct fx *f = *state;
  char *c = claims_with("");
  const char *unknown[] = {"../../../../etc/passwd", "' OR '1'='1", "rsa1 ", "RSA1", "*",
                           "rsa1\\u0020"};
  for (size_t i = 0; i < MG_ARRAY_LEN(unknown); i++) {
    char *h = fmt("{\"alg\":\"RS256\",\"kid\":\"%s\"}", unknown[i]);
    char *t = sign_raw("rsa1.pem", MG_JWS_RS256, h, c);
    REJECT(f, t, "unknown key id");
    free(t);
    free(h);
  }
  char long_kid[300];
  memset(long_kid, 'k', 257);
  long_kid[257] = 0;
  const char *invalid[] = {"\"rsa1\\n\"", "\"rsa1\\r\\nX-Evil: 1\"", "\"r\\u0000\"", "\"\"",
                           "5", "[\"rsa1\"]", "\"\\u00e9\"", NULL};
  for (size_t i = 0; i < MG_ARRAY_LEN(invalid); i++) {
    char *h = invalid[i] ? fmt("{\"alg\":\"RS256\",\"kid\":%s}", invalid[i])
                         : fmt("{\"alg\":\"RS256\",\"kid\":\"%s\"}", long_kid);
    char *t = sign_raw("rsa1.pem", MG_JWS_RS256, h, c);
    /* "\u0000" is refused by the JSON parser itself */
    REJECT(f, t, i == 2 ? "malformed token" : "invalid key id");
    free(t);
    free(h);
  }
  free(c);
}

static void test_ecdsa_signatures(void **state) {
  struct fx *f = *state;
  const char *hdr = "{\"alg\":\"ES256\",\"kid\":\"ec256\"}";
  char *c = claims_with("");
  char *h = b64u(hdr, strlen(hdr)), *p = b64u(c, strlen(c));
  char *in = fmt("%s.%s", h, p);
  uint8_t sig[256];
  size_t sl = sign_bytes("ec256.pem", MG_JWS_ES256, in, strlen(in), sig, false);
  assert_int_equal(sl, 64);
  char *t = join(hdr, c, sig, sl);
  expect_ok(f, t, "ec256.pub.pem");
  free(t);
  /* zero signature, r = 0, s = 0 */
  uint8_t z[64] = {0};
  t = join(hdr, c, z, 64);
  expect_reject(f, t, MG_AUTHN_E_BADSIG, "bad signature");
  free(t);
  uint8_t m[64];
  memcpy(m, sig, 64);
  memset(m + 32, 0, 32);
  t = join(hdr, c, m, 64);
  expect_reject(f, t, MG_AUTHN_E_BADSIG, "bad signature");
  free(t);
  /* r = n (the group order) and r = n + r' would verify in lax code that reduces mod n */
  static const char order[] = "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551";
  memcpy(m, sig, 64);
  assert_int_equal(mg_hex_decode(order, 64, m, 32), 0);
  t = join(hdr, c, m, 64);
  expect_reject(f, t, MG_AUTHN_E_BADSIG, "bad signature");
  free(t);
  memcpy(m, sig, 64);
  assert_int_equal(mg_hex_decode(order, 64, m + 32, 32), 0);
  t = join(hdr, c, m, 64);
  expect_reject(f, t, MG_AUTHN_E_BADSIG, "bad signature");
  free(t);
  /* wrong lengths: one byte short, one long, the DER form */
  t = join(hdr, c, sig, 63);
  expect_reject(f, t, MG_AUTHN_E_BADSIG, "bad signature");
  free(t);
  memcpy(m, sig, 64);
  uint8_t longer[65];
  memcpy(longer, sig, 64);
  longer[64] = 0;
  t = join(hdr, c, longer, 65);
  expect_reject(f, t, MG_AUTHN_E_BADSIG, "bad signature");
  free(t);
  uint8_t der[256];
  size_t dl = sign_bytes("ec256.pem", MG_JWS_ES256, in, strlen(in), der, true);
  t = join(hdr, c, der, dl);
  expect_reject(f, t, MG_AUTHN_E_BADSIG, "bad signature");
  free(t);
  free(in);
  free(h);
  free(p);
  free(c);
}

static void test_principal_claims(void **state) {
  struct fx *f = *state;
  char sub256[300], sub257[300];
  memset(sub256, 's', 256);
  sub256[256] = 0;
  memset(sub257, 's', 257);
  sub257[257] = 0;
  struct { const char *extra; const char *reason; } cases[] = {
    {"\"groups\":[\"ok\",\"bad\\u0007\"]", "invalid claim: groups"},
    {"\"groups\":[\"ok\",\"a\\nb\"]", "invalid claim: groups"},
    {"\"groups\":[\"ok\",7]", "invalid claim: groups"},
    {"\"groups\":[\"\"]", "invalid claim: groups"},
    {"\"groups\":{\"a\":1}", "invalid claim: groups"},
    {"\"azp\":\"w\\u007f\"", "invalid claim: azp"},
    {"\"client_id\":\"w\\u0085\"", "invalid claim: client_id"},
    {"\"azp\":5", "invalid claim: azp"},
    {"\"jti\":5", "invalid claim: jti"},
  };
  for (size_t i = 0; i < MG_ARRAY_LEN(cases); i++) {
    char *t = tok("ec256.pem", MG_JWS_ES256, "ec256", cases[i].extra);
    REJECT(f, t, cases[i].reason);
    free(t);
  }
  /* sub: 256 bytes ok, 257 not; a C0 or C1 control not */
  long long now = NOW_S;
  const char *subs[] = {sub256, sub257, "al\\tice", "al\\u009bice"};
  for (size_t i = 0; i < MG_ARRAY_LEN(subs); i++) {
    char *c = fmt("{\"iss\":\"" ISS "\",\"aud\":\"mesh\",\"sub\":\"%s\",\"exp\":%lld}", subs[i],
                  now + 60);
    char *t = sign_raw("ec256.pem", MG_JWS_ES256, "{\"alg\":\"ES256\",\"kid\":\"ec256\"}", c);
    struct mg_authn_identity id;
    char why[96];
    int rc = verify_at(f, NULL, t, mg_time_now_us(), &id, why);
    if (i == 0) {
      assert_int_equal(rc, 0);
      assert_int_equal(strlen(id.user), 5 + 256);
      mg_authn_identity_release(&id);
    } else {
      assert_int_equal(rc, MG_AUTHN_E_INVALID);
      assert_string_equal(why, "invalid claim: sub");
    }
    free(t);
    free(c);
  }
  /* groups: a single string; 256 entries ok, 257 not; client_id without azp */
  struct mg_authn_identity id;
  char why[96];
  char *t = tok("ec256.pem", MG_JWS_ES256, "ec256", "\"groups\":\"solo\",\"client_id\":\"cli\"");
  assert_int_equal(verify_at(f, NULL, t, mg_time_now_us(), &id, why), 0);
  assert_int_equal(id.ngroups, 1);
  assert_string_equal(id.groups[0], "group:solo");
  assert_string_equal(id.client, "client:cli");
  mg_authn_identity_release(&id);
  free(t);
  for (int n = 256; n <= 257; n++) {
    struct mg_buf b;
    mg_buf_init(&b);
    mg_buf_appends(&b, "\"groups\":[");
    for (int i = 0; i < n; i++) mg_buf_appendf(&b, "%s\"g%d\"", i ? "," : "", i);
    mg_buf_appends(&b, "]");
    t = tok("ec256.pem", MG_JWS_ES256, "ec256", b.data);
    int rc = verify_at(f, NULL, t, mg_time_now_us(), &id, why);
    if (n == 256) {
      assert_int_equal(rc, 0);
      assert_int_equal(id.ngroups, 256);
      assert_string_equal(id.groups[255], "group:g255");
      assert_null(id.client);
      mg_authn_identity_release(&id);
    } else {
      assert_int_equal(rc, MG_AUTHN_E_INVALID);
      assert_string_equal(why, "too many groups");
    }
    free(t);
    mg_buf_clear(&b);
  }
}

static void test_custom_groups_claim_and_matches(void **state) {
  struct fx *f = *state;
  mg_authn_free(f->a);
  f->iss[0].groups_claim = "roles";
  char err[256];
  assert_int_equal(mg_authn_new(&f->cfg, &f->a, err, sizeof err), 0);
  char *t = tok("ec256.pem", MG_JWS_ES256, "ec256",
                "\"roles\":[\"r1\"],\"groups\":[\"ignored\"],\"scope\":\"openid mesh:admin x\","
                "\"perms\":[\"mesh:audit\"],\"one\":\"mesh:admin\",\"n\":5");
  struct mg_authn_identity id;
  char why[96];
  assert_int_equal(verify_at(f, f->c, t, mg_time_now_us(), &id, why), 0);
  assert_int_equal(id.ngroups, 1);
  assert_string_equal(id.groups[0], "group:r1");
  assert_true(mg_authn_claim_matches(&id, "scope", "mesh:admin"));
  assert_true(mg_authn_claim_matches(&id, "scope", "openid"));
  assert_true(mg_authn_claim_matches(&id, "scope", "x"));
  assert_false(mg_authn_claim_matches(&id, "scope", "mesh"));
  assert_false(mg_authn_claim_matches(&id, "scope", "mesh:admin x"));
  assert_true(mg_authn_claim_matches(&id, "perms", "mesh:audit"));
  assert_false(mg_authn_claim_matches(&id, "perms", "mesh:admin"));
  assert_true(mg_authn_claim_matches(&id, "one", "mesh:admin"));
  assert_false(mg_authn_claim_matches(&id, "n", "5"));
  assert_false(mg_authn_claim_matches(&id, "missing", "x"));
  assert_false(mg_authn_claim_matches(&id, "scope", ""));
  mg_authn_identity_release(&id);
  free(t);
}

static void test_two_issuers(void **state) {
  struct fx *f = *state;
  mg_authn_free(f->a);
  f->a = NULL;
  f->iss[1] = f->iss[0];
  f->iss[1].issuer = ISS2;
  f->iss[1].jwks_file = f->jwks2;
  f->cfg.nissuers = 2;
  char err[256] = "";
  /* names are required with two issuers */
  assert_int_equal(mg_authn_new(&f->cfg, &f->a, err, sizeof err), MG_ERR_INVALID);
  assert_non_null(strstr(err, "name"));
  f->iss[0].name = "corp";
  f->iss[1].name = "partner";
  assert_int_equal(mg_authn_new(&f->cfg, &f->a, err, sizeof err), 0);
  long long now = NOW_S;
  char *c = fmt("{\"iss\":\"" ISS2 "\",\"aud\":\"mesh\",\"sub\":\"alice\",\"exp\":%lld,"
                "\"groups\":[\"analysts\"],\"azp\":\"etl\"}", now + 60);
  char *t = sign_raw("other.pem", MG_JWS_ES256, "{\"alg\":\"ES256\",\"kid\":\"o1\"}", c);
  struct mg_authn_identity id;
  char why[96];
  assert_int_equal(verify_at(f, f->c, t, mg_time_now_us(), &id, why), 0);
  assert_string_equal(id.issuer_name, "partner");
  assert_string_equal(id.iss, ISS2);
  assert_string_equal(id.user, "user:partner/alice");
  assert_string_equal(id.groups[0], "group:partner/analysts");
  assert_string_equal(id.client, "client:partner/etl");
  mg_authn_identity_release(&id);
  free(t);
  t = tok("rsa1.pem", MG_JWS_RS256, "rsa1", "\"groups\":[\"analysts\"]");
  assert_int_equal(verify_at(f, f->c, t, mg_time_now_us(), &id, why), 0);
  assert_string_equal(id.user, "user:corp/alice");
  assert_string_equal(id.groups[0], "group:corp/analysts");
  mg_authn_identity_release(&id);
  free(t);
  /* keys are scoped to their issuer: corp's iss with partner's kid/key */
  t = tok("other.pem", MG_JWS_ES256, "o1", "");
  REJECT(f, t, "unknown key id");
  free(t);
  /* metrics: one age per issuer, by name */
  const char *names[4];
  double ages[4];
  assert_int_equal(mg_authn_jwks_ages(f->a, names, ages, 4), 2);
  assert_string_equal(names[0], "corp");
  assert_string_equal(names[1], "partner");
  assert_true(ages[0] >= 0 && ages[0] < 60);
  assert_int_equal(mg_authn_jwks_ages(f->a, names, ages, 1), 1);
  free(c);
}

static void test_token_size(void **state) {
  struct fx *f = *state;
  struct mg_buf pad;
  mg_buf_init(&pad);
  mg_buf_appends(&pad, "\"pad\":\"");
  for (int i = 0; i < 6200; i++) mg_buf_append(&pad, "x", 1);
  mg_buf_appends(&pad, "\"");
  char *t = tok("ec256.pem", MG_JWS_ES256, "ec256", pad.data);
  assert_true(strlen(t) > 8192);
  REJECT(f, t, "token too large");
  free(t);
  /* a 500 KB token must not crash anything: garbage first, then a validly signed one
   * accepted once the limit allows it (libjwt 1.10 would overflow its stack here) */
  size_t n = 500 * 1024;
  char *big = malloc(n + 1);
  memset(big, 'A', n);
  big[100] = '.';
  big[200] = '.';
  big[n] = 0;
  REJECT(f, big, "token too large");
  mg_authn_free(f->a);
  f->cfg.max_token_bytes = 1 << 20;
  char err[256];
  assert_int_equal(mg_authn_new(&f->cfg, &f->a, err, sizeof err), 0);
  REJECT(f, big, "malformed token");
  mg_buf_reset(&pad);
  mg_buf_appends(&pad, "\"pad\":\"");
  for (size_t i = 0; i < n; i++) mg_buf_append(&pad, "y", 1);
  mg_buf_appends(&pad, "\"");
  t = tok("rsa1.pem", MG_JWS_RS256, "rsa1", pad.data);
  struct mg_authn_identity id;
  char why[96];
  assert_int_equal(verify_at(f, f->c, t, mg_time_now_us(), &id, why), 0);
  mg_authn_identity_release(&id);
  free(t);
  free(big);
  mg_buf_clear(&pad);
}

static double avg_us(struct fx *f, struct mg_authn_cache *c, const char *t, int iters) {
  struct mg_authn_identity id;
  char why[96];
  int64_t t0 = mg_mono_now_us();
  for (int i = 0; i < iters; i++) {
    assert_int_equal(mg_authn_verify(f->a, c, t, strlen(t), mg_time_now_us(), &id, why, 96), 0);
    mg_authn_identity_release(&id);
  }
  return (double)(mg_mono_now_us() - t0) / iters;
}

static void test_cache(void **state) {
  struct fx *f = *state;
  char *t = tok("ec256.pem", MG_JWS_ES256, "ec256", "\"groups\":[\"g\"]");
  struct mg_authn_identity a, b;
  char why[96];
  int64_t now = mg_time_now_us();
  assert_int_equal(verify_at(f, f->c, t, now, &a, why), 0);
  assert_int_equal(verify_at(f, f->c, t, now, &b, why), 0);
  /* the second answer is the cached identity itself */
  assert_ptr_equal(a.priv, b.priv);
  assert_ptr_equal(a.user, b.user);
  assert_string_equal(b.groups[0], "group:g");
  mg_authn_identity_release(&a);
  /* b stays valid after a's release and after eviction by cache free */
  struct mg_authn_cache *tiny = mg_authn_cache_new(1);
  assert_int_equal(verify_at(f, tiny, t, now, &a, why), 0);
  mg_authn_cache_free(tiny);
  assert_string_equal(a.user, "user:alice");
  mg_authn_identity_release(&a);
  assert_string_equal(b.user, "user:alice");
  mg_authn_identity_release(&b);
  /* the cache never outlives exp + skew: 10 minutes + 61 s later it is expired */
  assert_int_equal(verify_at(f, f->c, t, now + (600 + 61) * 1000000LL, &a, why),
                   MG_AUTHN_E_INVALID);
  assert_string_equal(why, "token expired");
  /* faster: cached vs cold (no cache) */
  assert_int_equal(verify_at(f, f->c, t, mg_time_now_us(), &a, why), 0);
  mg_authn_identity_release(&a);
  double cold = avg_us(f, NULL, t, 50), hot = avg_us(f, f->c, t, 20000);
  fprintf(stderr, "ES256 cold %.1f us, cached %.3f us\n", cold, hot);
  assert_true(hot * 10 < cold);
  /* a different token (same claims, other signature bytes) is not a hit */
  char *t2 = tok("ec256.pem", MG_JWS_ES256, "ec256", "\"groups\":[\"g\"]");
  assert_string_not_equal(t, t2);
  assert_int_equal(verify_at(f, f->c, t2, mg_time_now_us(), &a, why), 0);
  assert_int_equal(verify_at(f, f->c, t, mg_time_now_us(), &b, why), 0);
  assert_ptr_not_equal(a.priv, b.priv);
  mg_authn_identity_release(&a);
  mg_authn_identity_release(&b);
  free(t);
  free(t2);
}

static void test_rotation_file(void **state) {
  struct fx *f = *state;
  char *rs1 = tok("rsa1.pem", MG_JWS_RS256, "rsa1", "");
  char *rs2 = tok("rsa2.pem", MG_JWS_RS256, "rsa2", "");
  char *es = tok("ec256.pem", MG_JWS_ES256, "ec256", "");
  struct mg_authn_identity a, b;
  char why[96];
  assert_int_equal(verify_at(f, f->c, rs1, mg_time_now_us(), &a, why), 0);
  mg_authn_identity_release(&a);
  assert_int_equal(verify_at(f, f->c, es, mg_time_now_us(), &a, why), 0);
  /* unknown kid: the file is re-read (min refresh 0) but rsa2 is not there yet */
  REJECT(f, rs2, "unknown key id");
  /* the IdP rotates: rsa2 added, rsa1 dropped; the next unknown-kid re-read finds it */
  copy_fixture("jwks_rotated.json", f->jwks);
  assert_int_equal(verify_at(f, f->c, rs2, mg_time_now_us(), &b, why), 0);
  assert_string_equal(b.user, "user:alice");
  mg_authn_identity_release(&b);
  /* the cached rsa1 token died with its key; the cached ES256 one survives (same key) */
  REJECT(f, rs1, "unknown key id");
  assert_int_equal(verify_at(f, f->c, es, mg_time_now_us(), &b, why), 0);
  assert_ptr_equal(a.priv, b.priv);
  mg_authn_identity_release(&a);
  mg_authn_identity_release(&b);
  /* a broken file on reload keeps the last good set, and so does one with no usable key */
  copy_fixture("jwks_bad.json", f->jwks);
  mg_authn_reload(f->a);
  assert_int_equal(verify_at(f, NULL, rs2, mg_time_now_us(), &a, why), 0);
  mg_authn_identity_release(&a);
  write_text(f->jwks, "{\"keys\":[{\"kty\":\"oct\",\"k\":\"AAAA\"}]}");
  mg_authn_reload(f->a);
  assert_int_equal(verify_at(f, NULL, rs2, mg_time_now_us(), &a, why), 0);
  mg_authn_identity_release(&a);
  /* the same key material under another kid is another key: the cached verdict for rs2
   * does not survive the rename (a fresh check would not find kid rsa2) */
  assert_int_equal(verify_at(f, f->c, rs2, mg_time_now_us(), &a, why), 0);
  mg_authn_identity_release(&a);
  size_t n;
  char *rot = slurp("jwks_rotated.json", &n), *kid = strstr(rot, "\"rsa2\"");
  assert_non_null(kid);
  kid[4] = '9';                     /* "rsa2" -> "rsa9" */
  write_text(f->jwks, rot);
  free(rot);
  mg_authn_reload(f->a);
  REJECT(f, rs2, "unknown key id");
  free(rs1);
  free(rs2);
  free(es);
}

static void test_rotation_rate_limit(void **state) {
  struct fx *f = *state;
  mg_authn_free(f->a);
  f->iss[0].jwks_min_refresh_s = 3600;
  char err[256];
  assert_int_equal(mg_authn_new(&f->cfg, &f->a, err, sizeof err), 0);
  char *rs2 = tok("rsa2.pem", MG_JWS_RS256, "rsa2", "");
  REJECT(f, rs2, "unknown key id"); /* uses the one re-read of the hour */
  copy_fixture("jwks_rotated.json", f->jwks);
  REJECT(f, rs2, "unknown key id"); /* rate-limited: no re-read */
  mg_authn_reload(f->a);            /* SIGHUP is not rate-limited */
  struct mg_authn_identity id;
  char why[96];
  assert_int_equal(verify_at(f, f->c, rs2, mg_time_now_us(), &id, why), 0);
  mg_authn_identity_release(&id);
  free(rs2);
}

static void test_bad_config(void **state) {
  struct fx *f = *state;
  struct mg_authn *a = NULL;
  char err[256] = "";
  char bad[160];
  snprintf(bad, sizeof bad, "%s/bad.json", f->dir);
  copy_fixture("jwks_bad.json", bad);
  struct mg_config_issuer is = f->iss[0];
  struct mg_config cfg = f->cfg;
  cfg.issuers = &is;
  is.jwks_file = bad;
  assert_int_equal(mg_authn_new(&cfg, &a, err, sizeof err), MG_ERR_INVALID);
  assert_non_null(strstr(err, "not valid JSON"));
  is.jwks_file = f->jwks;
  char *algs[] = {"HS256"};
  is.algorithms = algs;
  is.nalgorithms = 1;
  assert_int_equal(mg_authn_new(&cfg, &a, err, sizeof err), MG_ERR_INVALID);
  assert_null(a);
}

/* ---- concurrent verification during key-set swaps ------------------------ */

struct worker_arg {
  struct fx *f;
  const char *tok;
  int ok, failed;
};

static void *verify_worker(void *arg) {
  struct worker_arg *w = arg;
  struct mg_authn_cache *c = mg_authn_cache_new(64);
  for (int i = 0; i < 400; i++) {
    struct mg_authn_identity id;
    char why[96];
    /* alternate cached and uncached checks */
    int rc = mg_authn_verify(w->f->a, (i & 1) ? c : NULL, w->tok, strlen(w->tok),
                             mg_time_now_us(), &id, why, sizeof why);
    if (rc == 0) {
      w->ok += strcmp(id.user, "user:alice") == 0;
      mg_authn_identity_release(&id);
    } else {
      w->failed++;
    }
  }
  mg_authn_cache_free(c);
  return NULL;
}

static void test_concurrent_reload(void **state) {
  struct fx *f = *state;
  char *es = tok("ec256.pem", MG_JWS_ES256, "ec256", ""); /* ec256 is in both sets */
  pthread_t th[4];
  struct worker_arg wa[4];
  for (int i = 0; i < 4; i++) {
    wa[i] = (struct worker_arg){f, es, 0, 0};
    assert_int_equal(pthread_create(&th[i], NULL, verify_worker, &wa[i]), 0);
  }
  for (int i = 0; i < 40; i++) {
    copy_fixture(i & 1 ? "jwks.json" : "jwks_rotated.json", f->jwks);
    mg_authn_reload(f->a);
    usleep(2000);
  }
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    assert_int_equal(wa[i].failed, 0);
    assert_int_equal(wa[i].ok, 400);
  }
  free(es);
}

/* ---- JWKS URL: a real loopback HTTP server ------------------------------- */

static atomic_int woke;
static void on_refresh(void *arg) { atomic_fetch_add(&woke, 1); }

static int free_port(void) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t sl = sizeof sa;
  assert_int_equal(bind(s, (struct sockaddr *)&sa, sizeof sa), 0);
  assert_int_equal(getsockname(s, (struct sockaddr *)&sa, &sl), 0);
  close(s);
  return ntohs(sa.sin_port);
}

static pid_t start_server(const char *dir, int port) {
  char ps[16];
  snprintf(ps, sizeof ps, "%d", port);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    int dn = open("/dev/null", O_WRONLY);
    dup2(dn, 1);
    dup2(dn, 2);
    execl("/usr/bin/python3", "python3", "-m", "http.server", ps, "--bind", "127.0.0.1",
          "--directory", dir, (char *)NULL);
    _exit(127);
  }
  for (int i = 0; i < 100; i++) { /* up to 10 s */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int rc = connect(s, (struct sockaddr *)&sa, sizeof sa);
    close(s);
    if (rc == 0) return pid;
    usleep(100000);
  }
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  fail_msg("http.server did not start");
  return -1;
}

static void stop_server(pid_t pid) {
  kill(pid, SIGTERM);
  waitpid(pid, NULL, 0);
}

static bool wait_woke(int want) {
  for (int i = 0; i < 200 && atomic_load(&woke) < want; i++) usleep(50000);
  return atomic_load(&woke) >= want;
}

static void test_jwks_url(void **state) {
  struct fx *f = *state;
  int port = free_port();
  pid_t srv = start_server(f->dir, port);
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/jwks.json", port);
  mg_authn_free(f->a);
  f->iss[0].jwks_file = NULL;
  f->iss[0].jwks_url = url;
  char err[256] = "";
  int rc = mg_authn_new(&f->cfg, &f->a, err, sizeof err);
  if (rc) fprintf(stderr, "%s\n", err);
  assert_int_equal(rc, 0);
  struct mg_authn_identity id;
  char why[96];
  char *rs1 = tok("rsa1.pem", MG_JWS_RS256, "rsa1", "");
  char *rs2 = tok("rsa2.pem", MG_JWS_RS256, "rsa2", "");
  assert_int_equal(verify_at(f, f->c, rs1, mg_time_now_us(), &id, why), 0);
  mg_authn_identity_release(&id);
  /* no refresh running: nothing to wait for */
  assert_int_equal(mg_authn_wait_refresh(f->a, on_refresh, NULL), -EALREADY);
  /* rotation at the IdP; the unknown kid starts one background refresh */
  copy_fixture("jwks_rotated.json", f->jwks);
  atomic_store(&woke, 0);
  rc = verify_at(f, f->c, rs2, mg_time_now_us(), &id, why);
  assert_int_equal(rc, MG_AUTHN_E_PENDING);
  rc = mg_authn_wait_refresh(f->a, on_refresh, NULL);
  assert_true(rc == 0 || rc == -EALREADY);
  if (rc == 0) assert_true(wait_woke(1));
  assert_int_equal(verify_at(f, f->c, rs2, mg_time_now_us(), &id, why), 0);
  mg_authn_identity_release(&id);
  /* dropped by the rotation: another refresh (min interval 0) and then a plain no */
  expect_reject(f, rs1, MG_AUTHN_E_PENDING, "unknown key id");
  if (mg_authn_wait_refresh(f->a, on_refresh, NULL) == 0) assert_true(wait_woke(2));
  atomic_store(&woke, 2);
  /* the IdP goes away: reload fails on the refresh thread, the last good set stays */
  stop_server(srv);
  mg_authn_reload(f->a);
  rc = mg_authn_wait_refresh(f->a, on_refresh, NULL);
  if (rc == 0) assert_true(wait_woke(3));
  assert_int_equal(verify_at(f, NULL, rs2, mg_time_now_us(), &id, why), 0);
  mg_authn_identity_release(&id);
  /* and a start with the IdP down fails */
  struct mg_authn *a2 = NULL;
  assert_true(mg_authn_new(&f->cfg, &a2, err, sizeof err) < 0);
  assert_null(a2);
  free(rs1);
  free(rs2);
}

int main(void) {
  find_fixtures();
  mg_log_set_level(MG_LOG_ERROR);
  const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(test_valid_algorithms, setup, teardown),
    cmocka_unit_test_setup_teardown(test_pyjwt_tokens, setup, teardown),
    cmocka_unit_test_setup_teardown(test_time_claims, setup, teardown),
    cmocka_unit_test_setup_teardown(test_iss_aud_sub, setup, teardown),
    cmocka_unit_test_setup_teardown(test_algorithm_confusion, setup, teardown),
    cmocka_unit_test_setup_teardown(test_structure, setup, teardown),
    cmocka_unit_test_setup_teardown(test_forbidden_headers, setup, teardown),
    cmocka_unit_test_setup_teardown(test_kid_injection, setup, teardown),
    cmocka_unit_test_setup_teardown(test_ecdsa_signatures, setup, teardown),
    cmocka_unit_test_setup_teardown(test_principal_claims, setup, teardown),
    cmocka_unit_test_setup_teardown(test_custom_groups_claim_and_matches, setup, teardown),
    cmocka_unit_test_setup_teardown(test_two_issuers, setup, teardown),
    cmocka_unit_test_setup_teardown(test_token_size, setup, teardown),
    cmocka_unit_test_setup_teardown(test_cache, setup, teardown),
    cmocka_unit_test_setup_teardown(test_rotation_file, setup, teardown),
    cmocka_unit_test_setup_teardown(test_rotation_rate_limit, setup, teardown),
    cmocka_unit_test_setup_teardown(test_bad_config, setup, teardown),
    cmocka_unit_test_setup_teardown(test_concurrent_reload, setup, teardown),
    cmocka_unit_test_setup_teardown(test_jwks_url, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
