/*
 * config.h — the validated, immutable configuration snapshot (SPEC "Configuration").
 *
 * mg_config_load() parses the JSON file with one option table; every unknown key or bad
 * value is an error naming the key by JSON Pointer. Runtime code only reads struct
 * mg_config; reload builds a new snapshot and swaps it (refcounted).
 */
#ifndef MG_SIDECAR_CONFIG_H
#define MG_SIDECAR_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <stdio.h>

#include "common/common.h"

struct mg_config_tls {
  char *cert, *key;          /* PEM paths */
  char *client_ca;           /* NULL = no client certificates */
  int client_cert;           /* MG_CLIENT_CERT_* */
  char **allowed_spiffe;     /* admin only: SPIFFE IDs that count as admin */
  size_t nallowed_spiffe;
};
enum { MG_CLIENT_CERT_NONE = 0, MG_CLIENT_CERT_OPTIONAL, MG_CLIENT_CERT_REQUIRED };

enum mg_upstream_proto { MG_UPSTREAM_H2C = 0, MG_UPSTREAM_HTTP1 = 1 };

struct mg_config_upstream {
  char *address;             /* "host:port" or "unix:/path" */
  enum mg_upstream_proto protocol;
  bool forward_token;
  int connections;           /* h2c connections per worker (default 2) */
  int connect_timeout_ms;    /* default 2000 -> 502 */
  int response_timeout_ms;   /* time to response headers, default 30000 -> 504 */
  int ping_interval_s;       /* h2c: PING after this long without a frame (default 15) */
  int ping_timeout_s;        /* ... and drop the connection without an answer (default 5) */
};

enum mg_route_auth { MG_ROUTE_AUTH_TOKEN = 0, MG_ROUTE_AUTH_NONE, MG_ROUTE_AUTH_MTLS };

struct mg_config_route {
  char *prefix;              /* canonical, starts with '/' */
  size_t prefix_len;
  int dataset_segment;       /* N of "segment:N" (1-based), 0 = none */
  char *dataset;             /* fixed dataset name, or NULL */
  enum mg_route_auth auth;
  bool grpc;                 /* "grpc": true — action from the gRPC method name */
  char **methods;            /* extra method -> action mapping: "REPORT=read" */
  unsigned *method_actions;
  size_t nmethods;
};

struct mg_config_issuer {
  char *name;                /* required with >1 issuer */
  char *issuer;              /* iss */
  char **audiences;
  size_t naudiences;
  char *jwks_file, *jwks_url;
  char **algorithms;         /* "RS256", … */
  size_t nalgorithms;
  char *groups_claim;        /* default "groups" */
  int clock_skew_s;          /* default 60 */
  int jwks_refresh_s;        /* periodic refresh for jwks_url, default 300 */
  int jwks_min_refresh_s;    /* min interval between unknown-kid refreshes, default 10 */
};

struct mg_config_nats {
  char **servers;
  size_t nservers;
  char *stream, *subject;
  int replicas;
  char *creds;
  char *tls_ca;              /* "tls": {"ca": …} or NULL */
  int retention_s;           /* prune acknowledged local entries older than this; 0 = never */
};

struct mg_config_claim {     /* {"scope": "mesh:admin"} */
  char *claim, *value;
};

struct mg_config {
  int refcnt;
  char *path;                /* the file it came from */
  char *product;
  int workers;
  char *listen_address;
  struct mg_config_tls *listen_tls;    /* NULL = h2c */
  struct mg_config_upstream upstream;
  struct mg_config_route *routes;
  size_t nroutes;
  struct mg_config_issuer *issuers;
  size_t nissuers;
  /* policy */
  char *policy_db;
  size_t policy_map_size_mb;
  /* lineage */
  char *lineage_db;
  size_t lineage_map_size_mb;
  char *signing_key;
  char **old_signing_keys;
  size_t nold_signing_keys;
  char *origin;              /* ${HOSTNAME} expanded */
  int durability;            /* MG_LINEAGE_WRITE_AHEAD / MG_LINEAGE_ASYNC */
  int checkpoint_every_ms;
  int deny_entries_per_s;
  struct mg_config_nats *nats; /* NULL = embedded default */
  /* admin */
  char *admin_address;
  struct mg_config_tls *admin_tls;
  char **admin_issuers;      /* iss values; NULL = the first issuer only */
  size_t nadmin_issuers;
  struct mg_config_claim admin_claim, auditor_claim;
  char *owners;              /* "group:{product}-owners" or NULL */
  /* limits */
  int max_concurrent_streams;
  int max_header_list_bytes;
  int max_token_bytes;
  int idle_timeout_s;
  int failed_verifies_per_conn;
  int shutdown_grace_s;      /* SIGTERM deadline for in-flight requests, default 30 */
  size_t max_body_buffer;    /* per-stream body buffer each way, default 256 KiB */
};

/* Loads and validates `path`. On failure returns MG_ERR_INVALID (or -errno) and writes a
 * one-line reason "path: /pointer: reason" or "path:line:col: reason" into err. Relative
 * file paths in the config are resolved against the config file's directory. */
int mg_config_load(const char *path, struct mg_config **out, char *err, size_t errlen);
void mg_config_ref(struct mg_config *c);
void mg_config_unref(struct mg_config *c);

/* Prints the option table (name, type, default, meaning) for `serve --help`. */
void mg_config_print_help(FILE *out);

#endif /* MG_SIDECAR_CONFIG_H */
