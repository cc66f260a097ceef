/*
 * config.c — the configuration file: one option table per JSON object drives parsing,
 * validation, defaults and `serve --help` (Redis config.c, h2o configurator).
 *
 * Every unknown key and bad value is an error naming the key by JSON Pointer
 * ("/lineage/durability: expected \"write-ahead\" or \"async\""); jansson reports syntax
 * errors with line:col. The result is an immutable refcounted snapshot; reload builds a
 * new one and swaps it.
 */
#include "sidecar/config.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <strings.h>
#include <sys/un.h>

#include "policy/policy.h"
#include "sidecar/canon.h"

enum otype {
  T_STR,       /* char* */
  T_PATH,      /* char*, resolved against the config directory */
  T_INT,       /* int within [min,max] */
  T_SIZE,      /* size_t within [min,max] */
  T_BOOL,      /* bool */
  T_ENUM,      /* int: index into enums[] */
  T_STRARR,    /* char** at off, size_t count at off2 */
  T_OBJ,       /* embedded struct at off parsed with sub */
  T_OBJPTR,    /* pointer to a calloc'ed struct of size esize at off (NULL if absent/null) */
  T_OBJARR,    /* array of structs: pointer at off, count (size_t) at off2 */
  T_CUSTOM,    /* fn handles it */
};

struct ctx;
struct opt {
  const char *name;
  enum otype type;
  size_t off, off2;
  long long min, max;
  const char *const *enums;
  const struct opt *sub;
  size_t esize;
  bool nullable;
  int (*fn)(struct ctx *c, json_t *v, const char *ptr, void *base);
  const char *help;
};
#define END {NULL, 0, 0, 0, 0, 0, NULL, NULL, 0, false, NULL, NULL}

struct ctx {
  char *err;
  size_t errlen;
  const char *file;
  char dir[PATH_MAX];
  struct mg_config *cfg;
};

static int fail(struct ctx *c, const char *ptr, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(struct ctx *c, const char *ptr, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  snprintf(c->err, c->errlen, "%s: %s: %s", c->file, ptr[0] ? ptr : "/", msg);
  return MG_ERR_INVALID;
}

static const char *const durability_enum[] = {"write-ahead", "async", NULL};
static const char *const protocol_enum[] = {"h2c", "http1", NULL};
static const char *const client_cert_enum[] = {"none", "optional", "required", NULL};
static const char *const auth_enum[] = {"token", "none", "mtls", NULL};

static int parse_route_dataset(struct ctx *c, json_t *v, const char *ptr, void *base);
static int parse_route_methods(struct ctx *c, json_t *v, const char *ptr, void *base);
static int parse_claim(struct ctx *c, json_t *v, const char *ptr, void *base);
static int parse_nats_tls(struct ctx *c, json_t *v, const char *ptr, void *base);

#define O(st, f) offsetof(struct st, f)

static const struct opt tls_opts[] = {
  {"cert", T_PATH, O(mg_config_tls, cert), 0, 0, 0, 0, 0, 0, 0, 0, "server certificate chain (PEM), required"},
  {"key", T_PATH, O(mg_config_tls, key), 0, 0, 0, 0, 0, 0, 0, 0, "private key (PEM), required"},
  {"client_ca", T_PATH, O(mg_config_tls, client_ca), 0, 0, 0, 0, 0, 0, true, 0, "CA bundle for client certificates (mTLS)"},
  {"client_cert", T_ENUM, O(mg_config_tls, client_cert), 0, 0, 0, client_cert_enum, 0, 0, 0, 0, "\"none\", \"optional\" or \"required\" (default optional with client_ca)"},
  {"allowed_spiffe", T_STRARR, O(mg_config_tls, allowed_spiffe), O(mg_config_tls, nallowed_spiffe), 0, 0, 0, 0, 0, true, 0, "admin only: SPIFFE IDs of client certificates that count as admin"},
  END};

static const struct opt listen_opts[] = {
  {"address", T_STR, O(mg_config, listen_address), 0, 0, 0, 0, 0, 0, 0, 0, "data port \"ip:port\" (default 0.0.0.0:8443)"},
  {"tls", T_OBJPTR, O(mg_config, listen_tls), 0, 0, 0, 0, tls_opts, sizeof(struct mg_config_tls), true, 0, "TLS (ALPN h2); absent or null: h2c with prior knowledge"},
  END};

static const struct opt upstream_opts[] = {
  {"address", T_STR, O(mg_config_upstream, address), 0, 0, 0, 0, 0, 0, 0, 0, "product service \"host:port\" or \"unix:/path\", required"},
  {"protocol", T_ENUM, O(mg_config_upstream, protocol), 0, 0, 0, protocol_enum, 0, 0, 0, 0, "\"h2c\" (default) or \"http1\""},
  {"forward_token", T_BOOL, O(mg_config_upstream, forward_token), 0, 0, 0, 0, 0, 0, 0, 0, "forward the Authorization header (default false)"},
  {"connections", T_INT, O(mg_config_upstream, connections), 0, 1, 64, 0, 0, 0, 0, 0, "upstream connections per worker (default 2)"},
  {"connect_timeout_ms", T_INT, O(mg_config_upstream, connect_timeout_ms), 0, 10, 60000, 0, 0, 0, 0, 0, "connect timeout -> 502 (default 2000)"},
  {"response_timeout_ms", T_INT, O(mg_config_upstream, response_timeout_ms), 0, 10, 3600000, 0, 0, 0, 0, 0, "time to response headers -> 504 (default 30000)"},
  {"ping_interval_s", T_INT, O(mg_config_upstream, ping_interval_s), 0, 1, 3600, 0, 0, 0, 0, 0, "h2c: PING a connection silent this long (default 15)"},
  {"ping_timeout_s", T_INT, O(mg_config_upstream, ping_timeout_s), 0, 1, 600, 0, 0, 0, 0, 0, "h2c: drop it (502 for its streams) without an answer this long (default 5)"},
  END};

static const struct opt route_opts[] = {
  {"prefix", T_STR, O(mg_config_route, prefix), 0, 0, 0, 0, 0, 0, 0, 0, "canonical path prefix, required"},
  {"dataset", T_CUSTOM, 0, 0, 0, 0, 0, 0, 0, true, parse_route_dataset, "\"segment:N\" or a fixed dataset name"},
  {"auth", T_ENUM, O(mg_config_route, auth), 0, 0, 0, auth_enum, 0, 0, 0, 0, "\"token\" (default), \"none\" or \"mtls\""},
  {"grpc", T_BOOL, O(mg_config_route, grpc), 0, 0, 0, 0, 0, 0, 0, 0, "gRPC route: action from the method name"},
  {"methods", T_CUSTOM, 0, 0, 0, 0, 0, 0, 0, true, parse_route_methods, "extra methods: {\"REPORT\": \"read\"}"},
  END};

static const struct opt issuer_opts[] = {
  {"name", T_STR, O(mg_config_issuer, name), 0, 0, 0, 0, 0, 0, true, 0, "short name, required with more than one issuer"},
  {"issuer", T_STR, O(mg_config_issuer, issuer), 0, 0, 0, 0, 0, 0, 0, 0, "the iss value, required"},
  {"audiences", T_STRARR, O(mg_config_issuer, audiences), O(mg_config_issuer, naudiences), 0, 0, 0, 0, 0, 0, 0, "accepted aud values, required"},
  {"jwks_file", T_PATH, O(mg_config_issuer, jwks_file), 0, 0, 0, 0, 0, 0, true, 0, "JWKS file"},
  {"jwks_url", T_STR, O(mg_config_issuer, jwks_url), 0, 0, 0, 0, 0, 0, true, 0, "JWKS URL (https or http://127.0.0.1)"},
  {"algorithms", T_STRARR, O(mg_config_issuer, algorithms), O(mg_config_issuer, nalgorithms), 0, 0, 0, 0, 0, 0, 0, "allowed algorithms (RS256/384/512, ES256/384/512)"},
  {"groups_claim", T_STR, O(mg_config_issuer, groups_claim), 0, 0, 0, 0, 0, 0, true, 0, "claim holding groups (default \"groups\")"},
  {"clock_skew_s", T_INT, O(mg_config_issuer, clock_skew_s), 0, 0, 600, 0, 0, 0, 0, 0, "allowed clock skew (default 60)"},
  {"jwks_refresh_s", T_INT, O(mg_config_issuer, jwks_refresh_s), 0, 10, 86400, 0, 0, 0, 0, 0, "JWKS URL refresh period (default 300)"},
  {"jwks_min_refresh_s", T_INT, O(mg_config_issuer, jwks_min_refresh_s), 0, 0, 3600, 0, 0, 0, 0, 0, "minimum interval between unknown-kid refreshes (default 10)"},
  END};

static const struct opt identity_opts[] = {
  {"issuers", T_OBJARR, O(mg_config, issuers), O(mg_config, nissuers), 0, 0, 0, issuer_opts, sizeof(struct mg_config_issuer), 0, 0, "token issuers"},
  END};

static const struct opt policy_opts[] = {
  {"db", T_PATH, O(mg_config, policy_db), 0, 0, 0, 0, 0, 0, 0, 0, "LMDB directory of the grants (default var/policy)"},
  {"map_size_mb", T_SIZE, O(mg_config, policy_map_size_mb), 0, 1, 1 << 20, 0, 0, 0, 0, 0, "LMDB map size (default 256)"},
  END};

static const struct opt nats_opts[] = {
  {"servers", T_STRARR, O(mg_config_nats, servers), O(mg_config_nats, nservers), 0, 0, 0, 0, 0, 0, 0, "NATS URLs, required"},
  {"stream", T_STR, O(mg_config_nats, stream), 0, 0, 0, 0, 0, 0, 0, 0, "JetStream stream (default LINEAGE)"},
  {"subject", T_STR, O(mg_config_nats, subject), 0, 0, 0, 0, 0, 0, 0, 0, "subject prefix, required"},
  {"replicas", T_INT, O(mg_config_nats, replicas), 0, 1, 5, 0, 0, 0, 0, 0, "stream replicas (default 3)"},
  {"retention_s", T_INT, O(mg_config_nats, retention_s), 0, 0, INT32_MAX, 0, 0, 0, 0, 0, "prune local entries read back from the stream once older than this (default 0: keep all)"},
  {"creds", T_PATH, O(mg_config_nats, creds), 0, 0, 0, 0, 0, 0, true, 0, "NATS credentials file"},
  {"tls", T_CUSTOM, 0, 0, 0, 0, 0, 0, 0, true, parse_nats_tls, "{\"ca\": PATH} to verify the NATS server"},
  END};

static const struct opt lineage_opts[] = {
  {"db", T_PATH, O(mg_config, lineage_db), 0, 0, 0, 0, 0, 0, 0, 0, "LMDB directory of the log (default var/lineage)"},
  {"map_size_mb", T_SIZE, O(mg_config, lineage_map_size_mb), 0, 1, 1 << 24, 0, 0, 0, 0, 0, "LMDB map size (default 4096)"},
  {"signing_key", T_PATH, O(mg_config, signing_key), 0, 0, 0, 0, 0, 0, 0, 0, "Ed25519 key from `meshgate keygen`, required"},
  {"old_signing_keys", T_STRARR, O(mg_config, old_signing_keys), O(mg_config, nold_signing_keys), 0, 0, 0, 0, 0, true, 0, "previous keys: co-sign the first checkpoint of a new key"},
  {"origin", T_STR, O(mg_config, origin), 0, 0, 0, 0, 0, 0, 0, 0, "log name; ${HOSTNAME} expands, required"},
  {"durability", T_ENUM, O(mg_config, durability), 0, 0, 0, durability_enum, 0, 0, 0, 0, "\"write-ahead\" (default) or \"async\""},
  {"checkpoint_every_ms", T_INT, O(mg_config, checkpoint_every_ms), 0, 10, 3600000, 0, 0, 0, 0, 0, "checkpoint period while entries arrive (default 1000)"},
  {"deny_entries_per_s", T_INT, O(mg_config, deny_entries_per_s), 0, 0, 1000000, 0, 0, 0, 0, 0, "denied-request entries per client address per second (default 100)"},
  {"nats", T_OBJPTR, O(mg_config, nats), 0, 0, 0, 0, nats_opts, sizeof(struct mg_config_nats), true, 0, "replication to JetStream; absent: local log only"},
  END};

static const struct opt admin_opts[] = {
  {"address", T_STR, O(mg_config, admin_address), 0, 0, 0, 0, 0, 0, 0, 0, "admin port (default 127.0.0.1:9901); off loopback requires tls"},
  {"tls", T_OBJPTR, O(mg_config, admin_tls), 0, 0, 0, 0, tls_opts, sizeof(struct mg_config_tls), true, 0, "admin TLS"},
  {"issuers", T_STRARR, O(mg_config, admin_issuers), O(mg_config, nadmin_issuers), 0, 0, 0, 0, 0, true, 0, "iss values whose tokens may carry admin/auditor claims (default: the first issuer)"},
  {"admin_claim", T_CUSTOM, O(mg_config, admin_claim), 0, 0, 0, 0, 0, 0, true, parse_claim, "{\"claim\": \"value\"} granting admin (default {\"scope\":\"mesh:admin\"})"},
  {"auditor_claim", T_CUSTOM, O(mg_config, auditor_claim), 0, 0, 0, 0, 0, 0, true, parse_claim, "{\"claim\": \"value\"} granting read access (default {\"scope\":\"mesh:audit\"})"},
  {"owners", T_STR, O(mg_config, owners), 0, 0, 0, 0, 0, 0, true, 0, "principal pattern of product owners, e.g. \"group:{product}-owners\""},
  END};

static const struct opt limits_opts[] = {
  {"max_concurrent_streams", T_INT, O(mg_config, max_concurrent_streams), 0, 1, 10000, 0, 0, 0, 0, 0, "per connection (default 100)"},
  {"max_header_list_bytes", T_INT, O(mg_config, max_header_list_bytes), 0, 1024, 1 << 20, 0, 0, 0, 0, 0, "request header list size (default 16384)"},
  {"max_token_bytes", T_INT, O(mg_config, max_token_bytes), 0, 256, 1 << 20, 0, 0, 0, 0, 0, "largest accepted JWT (default 8192)"},
  {"idle_timeout_s", T_INT, O(mg_config, idle_timeout_s), 0, 1, 86400, 0, 0, 0, 0, 0, "idle connection timeout (default 60)"},
  {"failed_verifies_per_conn", T_INT, O(mg_config, failed_verifies_per_conn), 0, 1, 1000000, 0, 0, 0, 0, 0, "bad signatures before a connection is closed (default 10)"},
  {"shutdown_grace_s", T_INT, O(mg_config, shutdown_grace_s), 0, 0, 3600, 0, 0, 0, 0, 0, "SIGTERM deadline for in-flight requests (default 30)"},
  {"max_body_buffer", T_SIZE, O(mg_config, max_body_buffer), 0, 65536, 64 << 20, 0, 0, 0, 0, 0, "per-stream body buffer each way, at least the 65535 bytes a client may send before it sees our SETTINGS (default 262144)"},
  END};

static const struct opt top_opts[] = {
  {"product", T_STR, O(mg_config, product), 0, 0, 0, 0, 0, 0, 0, 0, "the data product this sidecar serves, required"},
  {"workers", T_INT, O(mg_config, workers), 0, 1, 256, 0, 0, 0, 0, 0, "worker threads (default: number of cores)"},
  {"listen", T_OBJ, 0, 0, 0, 0, 0, listen_opts, 0, 0, 0, "data listener"},
  {"upstream", T_OBJ, O(mg_config, upstream), 0, 0, 0, 0, upstream_opts, 0, 0, 0, "the product service"},
  {"routes", T_OBJARR, O(mg_config, routes), O(mg_config, nroutes), 0, 0, 0, route_opts, sizeof(struct mg_config_route), 0, 0, "path prefix -> dataset and auth"},
  {"identity", T_OBJ, 0, 0, 0, 0, 0, identity_opts, 0, 0, 0, "JWT issuers"},
  {"policy", T_OBJ, 0, 0, 0, 0, 0, policy_opts, 0, 0, 0, "grant store"},
  {"lineage", T_OBJ, 0, 0, 0, 0, 0, lineage_opts, 0, 0, 0, "lineage log"},
  {"admin", T_OBJ, 0, 0, 0, 0, 0, admin_opts, 0, 0, 0, "admin API"},
  {"limits", T_OBJ, 0, 0, 0, 0, 0, limits_opts, 0, 0, 0, "protocol and resource limits"},
  END};

static char *xstrdup(const char *s) {
  char *p = strdup(s);
  if (!p) abort(); /* config parsing at start-up: out of memory is fatal */
  return p;
}

static char *resolve_path(struct ctx *c, const char *p) {
  if (p[0] == '/' || c->dir[0] == 0) return xstrdup(p);
  size_t n = strlen(c->dir) + strlen(p) + 2;
  char *r = malloc(n);
  if (!r) abort();
  snprintf(r, n, "%s/%s", c->dir, p);
  return r;
}

static bool has_ctl(const char *s) {
  for (; *s; s++)
    if ((unsigned char)*s < 0x20 || *s == 0x7f) return true;
  return false;
}

static int parse_obj(struct ctx *c, json_t *obj, const char *ptr, const struct opt *tab, void *base);

static int parse_value(struct ctx *c, const struct opt *o, json_t *v, const char *ptr, void *base) {
  char *field = (char *)base + o->off;
  if (json_is_null(v) && o->nullable) return 0;
  switch (o->type) {
  case T_STR:
  case T_PATH:
    if (!json_is_string(v)) return fail(c, ptr, "expected a string");
    if (json_string_length(v) == 0) return fail(c, ptr, "must not be empty");
    if (strlen(json_string_value(v)) != json_string_length(v) || has_ctl(json_string_value(v)))
      return fail(c, ptr, "control characters are not allowed");
    *(char **)field = o->type == T_PATH ? resolve_path(c, json_string_value(v)) : xstrdup(json_string_value(v));
    return 0;
  case T_INT:
  case T_SIZE: {
    if (!json_is_integer(v)) return fail(c, ptr, "expected an integer");
    json_int_t n = json_integer_value(v);
    if (n < o->min || n > o->max) return fail(c, ptr, "must be between %lld and %lld", o->min, o->max);
    if (o->type == T_INT) *(int *)field = (int)n;
    else *(size_t *)field = (size_t)n;
    return 0;
  }
  case T_BOOL:
    if (!json_is_boolean(v)) return fail(c, ptr, "expected true or false");
    *(bool *)field = json_is_true(v);
    return 0;
  case T_ENUM: {
    char alts[256] = "";
    for (int i = 0; o->enums[i]; i++) {
      if (json_is_string(v) && strcmp(json_string_value(v), o->enums[i]) == 0) { *(int *)field = i; return 0; }
      size_t l = strlen(alts);
      snprintf(alts + l, sizeof alts - l, "%s\"%s\"", i == 0 ? "" : (o->enums[i + 1] ? ", " : " or "), o->enums[i]);
    }
    return fail(c, ptr, "expected %s", alts);
  }
  case T_STRARR: {
    if (!json_is_array(v)) return fail(c, ptr, "expected an array of strings");
    size_t n = json_array_size(v);
    char **arr = calloc(n + 1, sizeof *arr);
    if (!arr) abort();
    *(char ***)field = arr;
    *(size_t *)((char *)base + o->off2) = n;
    for (size_t i = 0; i < n; i++) {
      char p2[560];
      snprintf(p2, sizeof p2, "%s/%zu", ptr, i);
      json_t *e = json_array_get(v, i);
      if (!json_is_string(e) || json_string_length(e) == 0) return fail(c, p2, "expected a non-empty string");
      if (has_ctl(json_string_value(e)) || strlen(json_string_value(e)) != json_string_length(e))
        return fail(c, p2, "control characters are not allowed");
      arr[i] = xstrdup(json_string_value(e));
    }
    return 0;
  }
  case T_OBJ:
    if (!json_is_object(v)) return fail(c, ptr, "expected an object");
    return parse_obj(c, v, ptr, o->sub, (char *)base + o->off);
  case T_OBJPTR: {
    if (!json_is_object(v)) return fail(c, ptr, "expected an object or null");
    void *p = calloc(1, o->esize);
    if (!p) abort();
    *(void **)field = p;
    return parse_obj(c, v, ptr, o->sub, p);
  }
  case T_OBJARR: {
    if (!json_is_array(v)) return fail(c, ptr, "expected an array of objects");
    size_t n = json_array_size(v);
    char *arr = calloc(n + 1, o->esize);
    if (!arr) abort();
    *(void **)field = arr;
    *(size_t *)((char *)base + o->off2) = n;
    for (size_t i = 0; i < n; i++) {
      char p2[560];
      snprintf(p2, sizeof p2, "%s/%zu", ptr, i);
      json_t *e = json_array_get(v, i);
      if (!json_is_object(e)) return fail(c, p2, "expected an object");
      int rv = parse_obj(c, e, p2, o->sub, arr + i * o->esize);
      if (rv) return rv;
    }
    return 0;
  }
  case T_CUSTOM:
    return o->fn(c, v, ptr, base);
  }
  return fail(c, ptr, "internal: bad option type");
}

/* JSON Pointer escaping of a member name (RFC 6901: '~' -> ~0, '/' -> ~1). */
static void ptr_join(char *out, size_t cap, const char *ptr, const char *key) {
  size_t o = (size_t)snprintf(out, cap, "%s/", ptr);
  for (; *key && o + 3 < cap; key++) {
    if (*key == '~') { out[o++] = '~'; out[o++] = '0'; }
    else if (*key == '/') { out[o++] = '~'; out[o++] = '1'; }
    else out[o++] = *key;
  }
  out[o < cap ? o : cap - 1] = 0;
}

static int parse_obj(struct ctx *c, json_t *obj, const char *ptr, const struct opt *tab, void *base) {
  const char *key;
  json_t *v;
  json_object_foreach(obj, key, v) {
    char p2[512];
    ptr_join(p2, sizeof p2, ptr, key);
    const struct opt *o = tab;
    while (o->name && strcmp(o->name, key) != 0) o++;
    if (!o->name) return fail(c, p2, "unknown key");
    int rv = parse_value(c, o, v, p2, base);
    if (rv) return rv;
  }
  return 0;
}

static int parse_route_dataset(struct ctx *c, json_t *v, const char *ptr, void *base) {
  struct mg_config_route *r = base;
  if (!json_is_string(v) || json_string_length(v) == 0) return fail(c, ptr, "expected \"segment:N\" or a dataset name");
  const char *s = json_string_value(v);
  if (strncmp(s, "segment:", 8) == 0) {
    char *end;
    long n = strtol(s + 8, &end, 10);
    if (*end || n < 1 || n > 64 || end == s + 8) return fail(c, ptr, "segment number must be 1..64");
    r->dataset_segment = (int)n;
  } else {
    for (const char *p = s; *p; p++)
      if ((unsigned char)*p <= 0x20 || *p == '/' || *p == 0x7f) return fail(c, ptr, "invalid dataset name");
    r->dataset = xstrdup(s);
  }
  return 0;
}

static int parse_route_methods(struct ctx *c, json_t *v, const char *ptr, void *base) {
  struct mg_config_route *r = base;
  if (!json_is_object(v)) return fail(c, ptr, "expected {\"METHOD\": \"read\"|\"write\"}");
  size_t n = json_object_size(v);
  r->methods = calloc(n + 1, sizeof *r->methods);
  r->method_actions = calloc(n + 1, sizeof *r->method_actions);
  if (!r->methods || !r->method_actions) abort();
  const char *key;
  json_t *a;
  json_object_foreach(v, key, a) {
    char p2[512];
    ptr_join(p2, sizeof p2, ptr, key);
    for (const char *p = key; *p; p++)
      if (!((*p >= 'A' && *p <= 'Z') || *p == '-' || *p == '_')) return fail(c, p2, "method names are upper-case tokens");
    const char *s = json_is_string(a) ? json_string_value(a) : "";
    unsigned act = !strcmp(s, "read") ? MG_ACTION_READ : !strcmp(s, "write") ? MG_ACTION_WRITE : 0;
    if (!act) return fail(c, p2, "expected \"read\" or \"write\"");
    r->methods[r->nmethods] = xstrdup(key);
    r->method_actions[r->nmethods++] = act;
  }
  return 0;
}

static int parse_claim(struct ctx *c, json_t *v, const char *ptr, void *base) {
  /* base is the mg_config; which claim is told by the pointer's last member */
  struct mg_config_claim *cl = strstr(ptr, "auditor_claim") ? &c->cfg->auditor_claim : &c->cfg->admin_claim;
  (void)base;
  if (!json_is_object(v) || json_object_size(v) != 1) return fail(c, ptr, "expected {\"claim\": \"value\"}");
  const char *key;
  json_t *val;
  json_object_foreach(v, key, val) {
    if (!json_is_string(val) || json_string_length(val) == 0) {
      char p2[512];
      ptr_join(p2, sizeof p2, ptr, key);
      return fail(c, p2, "expected a non-empty string");
    }
    free(cl->claim);
    free(cl->value);
    cl->claim = xstrdup(key);
    cl->value = xstrdup(json_string_value(val));
  }
  return 0;
}

static int parse_nats_tls(struct ctx *c, json_t *v, const char *ptr, void *base) {
  struct mg_config_nats *n = base;
  if (!json_is_object(v)) return fail(c, ptr, "expected {\"ca\": PATH} or null");
  const char *key;
  json_t *val;
  json_object_foreach(v, key, val) {
    char p2[512];
    ptr_join(p2, sizeof p2, ptr, key);
    if (strcmp(key, "ca") != 0) return fail(c, p2, "unknown key");
    if (!json_is_string(val)) return fail(c, p2, "expected a string");
    n->tls_ca = resolve_path(c, json_string_value(val));
  }
  return 0;
}

/* ---- defaults and cross-field checks ---- */

static void set_defaults(struct mg_config *cfg) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  cfg->workers = n > 0 ? (int)n : 1;
  cfg->upstream.connections = 2;
  cfg->upstream.connect_timeout_ms = 2000;
  cfg->upstream.response_timeout_ms = 30000;
  cfg->upstream.ping_interval_s = 15;
  cfg->upstream.ping_timeout_s = 5;
  cfg->policy_map_size_mb = 256;
  cfg->lineage_map_size_mb = 4096;
  cfg->durability = 0;
  cfg->checkpoint_every_ms = 1000;
  cfg->deny_entries_per_s = 100;
  cfg->max_concurrent_streams = 100;
  cfg->max_header_list_bytes = 16384;
  cfg->max_token_bytes = 8192;
  cfg->idle_timeout_s = 60;
  cfg->failed_verifies_per_conn = 10;
  cfg->shutdown_grace_s = 30;
  cfg->max_body_buffer = 256 * 1024;
}

static bool is_loopback(const char *addr) {
  return !strncmp(addr, "127.", 4) || !strncmp(addr, "[::1]:", 6) || !strncmp(addr, "localhost:", 10);
}

/* A listen address ("ip:port", "[v6]:port", port 0 = any) or, for the upstream, a
 * connect address (host names allowed, port 1..65535, or "unix:/path"). What `serve`
 * would refuse at bind or connect time is refused here, so `serve --check` says so. */
static int check_hostport(struct ctx *c, const char *ptr, const char *a, bool upstream) {
  if (upstream && !strncmp(a, "unix:", 5)) {
    if (a[5] != '/') return fail(c, ptr, "unix socket path must be absolute");
    if (strlen(a + 5) >= sizeof(((struct sockaddr_un *)0)->sun_path))
      return fail(c, ptr, "unix socket path longer than 107 bytes");
    return 0;
  }
  const char *colon = strrchr(a, ':');
  if (!colon || colon == a) return fail(c, ptr, "expected \"host:port\"");
  char *end;
  long port = strtol(colon + 1, &end, 10);
  if (*end || port < (upstream ? 1 : 0) || port > 65535 || end == colon + 1 || colon[1] == '-' ||
      colon[1] == '+')
    return fail(c, ptr, upstream ? "invalid port (1..65535)" : "invalid port (0..65535)");
  if (!upstream) {
    char host[64];
    size_t hl = (size_t)(colon - a);
    const char *h = a;
    if (a[0] == '[' && hl >= 2 && a[hl - 1] == ']') h++, hl -= 2;
    struct in6_addr tmp;
    if (hl >= sizeof host) return fail(c, ptr, "expected an IP address, not a host name");
    memcpy(host, h, hl);
    host[hl] = 0;
    if (inet_pton(h == a ? AF_INET : AF_INET6, host, &tmp) != 1)
      return fail(c, ptr, "expected an IP address (\"127.0.0.1:8443\", \"[::1]:8443\"), not a host name");
  }
  return 0;
}

/* Plain http for a JWKS only on loopback: the host of the URL, not a prefix of it
 * ("http://127.0.0.1@evil.example/" and "http://localhost.evil.example/" are remote). */
static bool jwks_url_ok(const char *u) {
  if (!strncmp(u, "https://", 8)) return true;
  if (strncmp(u, "http://", 7)) return false;
  const char *auth = u + 7;
  size_t al = strcspn(auth, "/?#");
  if (memchr(auth, '@', al)) return false;
  static const char *const hosts[] = {"127.0.0.1", "localhost", "[::1]"};
  for (size_t i = 0; i < MG_ARRAY_LEN(hosts); i++) {
    size_t n = strlen(hosts[i]);
    if (al >= n && !strncasecmp(auth, hosts[i], n) && (al == n || auth[n] == ':')) return true;
  }
  return false;
}

static int expand_origin(struct ctx *c, struct mg_config *cfg) {
  const char *tok = "${HOSTNAME}";
  char *p = strstr(cfg->origin, tok);
  if (!p) return 0;
  char host[256] = "";
  const char *env = getenv("HOSTNAME");
  if (env && *env) snprintf(host, sizeof host, "%s", env);
  else if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "localhost");
  host[sizeof host - 1] = 0;
  struct mg_buf b;
  mg_buf_init(&b);
  const char *s = cfg->origin;
  while ((p = strstr(s, tok))) {
    mg_buf_append(&b, s, (size_t)(p - s));
    mg_buf_appends(&b, host);
    s = p + strlen(tok);
  }
  mg_buf_appends(&b, s);
  free(cfg->origin);
  cfg->origin = mg_buf_steal(&b);
  (void)c;
  return 0;
}

static int validate(struct ctx *c, struct mg_config *cfg) {
  int rv;
  if (!cfg->product) return fail(c, "/product", "required");
  for (const char *p = cfg->product; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_' || *p == '-' || *p == '.'))
      return fail(c, "/product", "use letters, digits, '.', '_' and '-'");
  if (!cfg->listen_address) cfg->listen_address = xstrdup("0.0.0.0:8443");
  if ((rv = check_hostport(c, "/listen/address", cfg->listen_address, false))) return rv;
  if (cfg->listen_tls && (!cfg->listen_tls->cert || !cfg->listen_tls->key))
    return fail(c, cfg->listen_tls->cert ? "/listen/tls/key" : "/listen/tls/cert", "required with tls");
  if (cfg->listen_tls && cfg->listen_tls->client_ca && cfg->listen_tls->client_cert == MG_CLIENT_CERT_NONE)
    cfg->listen_tls->client_cert = MG_CLIENT_CERT_OPTIONAL;
  if (cfg->listen_tls && !cfg->listen_tls->client_ca && cfg->listen_tls->client_cert != MG_CLIENT_CERT_NONE)
    return fail(c, "/listen/tls/client_ca", "required with \"client_cert\": \"optional\" or \"required\"");
  if (!cfg->upstream.address) return fail(c, "/upstream/address", "required");
  if ((rv = check_hostport(c, "/upstream/address", cfg->upstream.address, true))) return rv;
  if (cfg->nroutes == 0) return fail(c, "/routes", "at least one route is required");
  bool needs_token = false, needs_mtls = false;
  for (size_t i = 0; i < cfg->nroutes; i++) {
    struct mg_config_route *r = &cfg->routes[i];
    char p[64];
    snprintf(p, sizeof p, "/routes/%zu/prefix", i);
    if (!r->prefix) return fail(c, p, "required");
    char canon[1024];
    size_t pl, ol;
    const char *why;
    if (strlen(r->prefix) >= sizeof canon || r->prefix[0] != '/') return fail(c, p, "must be a path starting with '/'");
    /* the prefix must already be canonical, or it could never match */
    if (mg_canon_path(r->prefix, strlen(r->prefix), canon, sizeof canon, &pl, &ol, &why) != 0 ||
        strcmp(canon, r->prefix) != 0 || strchr(r->prefix, '?'))
      return fail(c, p, "must be a canonical path (no dot segments, duplicate slashes or query)");
    r->prefix_len = strlen(r->prefix);
    for (size_t j = 0; j < i; j++)
      if (!strcmp(cfg->routes[j].prefix, r->prefix)) return fail(c, p, "duplicate prefix");
    if (r->auth == MG_ROUTE_AUTH_TOKEN) needs_token = true;
    if (r->auth == MG_ROUTE_AUTH_MTLS) needs_mtls = true;
  }
  if (needs_mtls && !(cfg->listen_tls && cfg->listen_tls->client_ca))
    return fail(c, "/listen/tls/client_ca", "required by a route with \"auth\": \"mtls\"");
  if (needs_token && cfg->nissuers == 0) return fail(c, "/identity/issuers", "at least one issuer is required by token routes");
  for (size_t i = 0; i < cfg->nissuers; i++) {
    struct mg_config_issuer *is = &cfg->issuers[i];
    char p[64];
    snprintf(p, sizeof p, "/identity/issuers/%zu", i);
    char q[96];
    if (!is->issuer) { snprintf(q, sizeof q, "%s/issuer", p); return fail(c, q, "required"); }
    if (is->naudiences == 0) { snprintf(q, sizeof q, "%s/audiences", p); return fail(c, q, "at least one audience is required"); }
    if (!is->jwks_file == !is->jwks_url) { snprintf(q, sizeof q, "%s/jwks_file", p); return fail(c, q, "exactly one of jwks_file and jwks_url is required"); }
    if (is->jwks_url && !jwks_url_ok(is->jwks_url)) {
      snprintf(q, sizeof q, "%s/jwks_url", p);
      return fail(c, q, "must be https (plain http only on loopback)");
    }
    if (is->nalgorithms == 0) { snprintf(q, sizeof q, "%s/algorithms", p); return fail(c, q, "at least one algorithm is required"); }
    static const char *const algs[] = {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512"};
    for (size_t k = 0; k < is->nalgorithms; k++) {
      bool ok = false;
      for (size_t a = 0; a < MG_ARRAY_LEN(algs); a++) ok |= !strcmp(algs[a], is->algorithms[k]);
      if (!ok) {
        snprintf(q, sizeof q, "%s/algorithms/%zu", p, k);
        return fail(c, q, "unsupported algorithm (RS256/384/512, ES256/384/512)");
      }
    }
    if (cfg->nissuers > 1 && !is->name) { snprintf(q, sizeof q, "%s/name", p); return fail(c, q, "required with more than one issuer"); }
    if (is->name)
      for (const char *s = is->name; *s; s++)
        if (*s == '/' || *s == ':' || *s <= ' ') { snprintf(q, sizeof q, "%s/name", p); return fail(c, q, "no '/', ':' or spaces"); }
    for (size_t j = 0; j < i; j++) {
      if (!strcmp(cfg->issuers[j].issuer, is->issuer)) { snprintf(q, sizeof q, "%s/issuer", p); return fail(c, q, "duplicate issuer"); }
      if (is->name && cfg->issuers[j].name && !strcmp(cfg->issuers[j].name, is->name)) { snprintf(q, sizeof q, "%s/name", p); return fail(c, q, "duplicate name"); }
    }
    if (!is->groups_claim) is->groups_claim = xstrdup("groups");
    if (is->jwks_refresh_s == 0) is->jwks_refresh_s = 300;
  }
  if (!cfg->policy_db) cfg->policy_db = resolve_path(c, "var/policy");
  if (!cfg->lineage_db) cfg->lineage_db = resolve_path(c, "var/lineage");
  if (!cfg->signing_key) return fail(c, "/lineage/signing_key", "required (make one with `meshgate keygen`)");
  if (!cfg->origin) return fail(c, "/lineage/origin", "required");
  if ((rv = expand_origin(c, cfg))) return rv;
  /* key files, like every other path, are relative to the config file's directory */
  for (size_t i = 0; i < cfg->nold_signing_keys; i++) {
    char *r = resolve_path(c, cfg->old_signing_keys[i]);
    free(cfg->old_signing_keys[i]);
    cfg->old_signing_keys[i] = r;
  }
  if (has_ctl(cfg->origin) || strchr(cfg->origin, ' ') || strchr(cfg->origin, '+'))
    return fail(c, "/lineage/origin", "no spaces, '+' or control characters (it names the signed note key)");
  if (cfg->nats) {
    if (cfg->nats->nservers == 0) return fail(c, "/lineage/nats/servers", "at least one server is required");
    if (!cfg->nats->subject) return fail(c, "/lineage/nats/subject", "required");
    if (!cfg->nats->stream) cfg->nats->stream = xstrdup("LINEAGE");
    if (!cfg->nats->replicas) cfg->nats->replicas = 3;
  }
  if (!cfg->admin_address) cfg->admin_address = xstrdup("127.0.0.1:9901");
  if ((rv = check_hostport(c, "/admin/address", cfg->admin_address, false))) return rv;
  if (!is_loopback(cfg->admin_address) && !cfg->admin_tls)
    return fail(c, "/admin/tls", "required when the admin address is not loopback");
  if (cfg->admin_tls && (!cfg->admin_tls->cert || !cfg->admin_tls->key))
    return fail(c, cfg->admin_tls->cert ? "/admin/tls/key" : "/admin/tls/cert", "required with tls");
  if (!cfg->admin_claim.claim) { cfg->admin_claim.claim = xstrdup("scope"); cfg->admin_claim.value = xstrdup("mesh:admin"); }
  if (!cfg->auditor_claim.claim) { cfg->auditor_claim.claim = xstrdup("scope"); cfg->auditor_claim.value = xstrdup("mesh:audit"); }
  for (size_t i = 0; i < cfg->nadmin_issuers; i++) {
    bool ok = false;
    for (size_t j = 0; j < cfg->nissuers; j++) ok |= !strcmp(cfg->issuers[j].issuer, cfg->admin_issuers[i]);
    if (!ok) {
      char p[64];
      snprintf(p, sizeof p, "/admin/issuers/%zu", i);
      return fail(c, p, "not a configured issuer");
    }
  }
  if (cfg->owners && !strstr(cfg->owners, "{product}"))
    return fail(c, "/admin/owners", "must contain {product}");
  return 0;
}

int mg_config_load(const char *path, struct mg_config **out, char *err, size_t errlen) {
  struct ctx c = {.err = err, .errlen = errlen, .file = path};
  json_error_t jerr;
  json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
  if (!root) {
    if (jerr.line <= 0)
      snprintf(err, errlen, "%s: %s", path, jerr.text);
    else
      snprintf(err, errlen, "%s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
    return MG_ERR_INVALID;
  }
  if (!json_is_object(root)) {
    json_decref(root);
    snprintf(err, errlen, "%s: /: expected an object", path);
    return MG_ERR_INVALID;
  }
  struct mg_config *cfg = calloc(1, sizeof *cfg);
  if (!cfg) abort();
  cfg->refcnt = 1;
  cfg->path = xstrdup(path);
  c.cfg = cfg;
  char *slash = strrchr(path, '/');
  if (slash) {
    size_t n = (size_t)(slash - path);
    if (n >= sizeof c.dir) n = sizeof c.dir - 1;
    memcpy(c.dir, path, n);
    c.dir[n] = 0;
    if (n == 0) snprintf(c.dir, sizeof c.dir, "/");
  } else {
    c.dir[0] = 0;
  }
  set_defaults(cfg);
  /* clock_skew_s and jwks_min_refresh_s may legally be 0, so their defaults are applied
   * per issuer element when the key is absent */
  int rv = parse_obj(&c, root, "", top_opts, cfg);
  if (rv == 0) {
    json_t *iss = json_object_get(json_object_get(root, "identity"), "issuers");
    for (size_t i = 0; i < cfg->nissuers; i++) {
      json_t *o = json_array_get(iss, i);
      if (!json_object_get(o, "clock_skew_s")) cfg->issuers[i].clock_skew_s = 60;
      if (!json_object_get(o, "jwks_min_refresh_s")) cfg->issuers[i].jwks_min_refresh_s = 10;
    }
    rv = validate(&c, cfg);
  }
  json_decref(root);
  if (rv) {
    mg_config_unref(cfg);
    return rv;
  }
  *out = cfg;
  return 0;
}

void mg_config_ref(struct mg_config *c) { __atomic_add_fetch(&c->refcnt, 1, __ATOMIC_RELAXED); }

static void free_strv(char **v, size_t n) {
  if (!v) return;
  for (size_t i = 0; i < n; i++) free(v[i]);
  free(v);
}

static void free_tls(struct mg_config_tls *t) {
  if (!t) return;
  free(t->cert);
  free(t->key);
  free(t->client_ca);
  free_strv(t->allowed_spiffe, t->nallowed_spiffe);
  free(t);
}

void mg_config_unref(struct mg_config *c) {
  if (!c || __atomic_sub_fetch(&c->refcnt, 1, __ATOMIC_ACQ_REL) != 0) return;
  free(c->path);
  free(c->product);
  free(c->listen_address);
  free_tls(c->listen_tls);
  free(c->upstream.address);
  for (size_t i = 0; i < c->nroutes; i++) {
    free(c->routes[i].prefix);
    free(c->routes[i].dataset);
    free_strv(c->routes[i].methods, c->routes[i].nmethods);
    free(c->routes[i].method_actions);
  }
  free(c->routes);
  for (size_t i = 0; i < c->nissuers; i++) {
    struct mg_config_issuer *is = &c->issuers[i];
    free(is->name);
    free(is->issuer);
    free_strv(is->audiences, is->naudiences);
    free(is->jwks_file);
    free(is->jwks_url);
    free_strv(is->algorithms, is->nalgorithms);
    free(is->groups_claim);
  }
  free(c->issuers);
  free(c->policy_db);
  free(c->lineage_db);
  free(c->signing_key);
  free_strv(c->old_signing_keys, c->nold_signing_keys);
  free(c->origin);
  if (c->nats) {
    free_strv(c->nats->servers, c->nats->nservers);
    free(c->nats->stream);
    free(c->nats->subject);
    free(c->nats->creds);
    free(c->nats->tls_ca);
    free(c->nats);
  }
  free(c->admin_address);
  free_tls(c->admin_tls);
  free_strv(c->admin_issuers, c->nadmin_issuers);
  free(c->admin_claim.claim);
  free(c->admin_claim.value);
  free(c->auditor_claim.claim);
  free(c->auditor_claim.value);
  free(c->owners);
  free(c);
}

static void print_table(FILE *out, const char *prefix, const struct opt *tab) {
  static const char *const tname[] = {"string", "path", "integer", "integer", "bool", "enum",
                                      "[string]", "object", "object", "[object]", "value"};
  for (const struct opt *o = tab; o->name; o++) {
    char name[128];
    snprintf(name, sizeof name, "%s%s", prefix, o->name);
    if (o->type == T_OBJ || o->type == T_OBJPTR || o->type == T_OBJARR) {
      fprintf(out, "  %-36s %-9s %s\n", name, tname[o->type], o->help);
      char sub[160];
      snprintf(sub, sizeof sub, "%s%s", name, o->type == T_OBJARR ? "[]." : ".");
      print_table(out, sub, o->sub);
    } else {
      fprintf(out, "  %-36s %-9s %s\n", name, tname[o->type], o->help);
    }
  }
}

void mg_config_print_help(FILE *out) {
  fprintf(out, "Configuration keys (JSON; unknown keys are errors):\n");
  print_table(out, "", top_opts);
}
