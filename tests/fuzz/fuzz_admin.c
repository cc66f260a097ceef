/* fuzz_admin.c — raw HTTP/1.1 request bytes through the admin API's h1 parser and router
 * with a fixed context: a real (empty) policy store, no lineage log (edits abort with 503,
 * so the store never changes) and a caller that is admin by its client certificate, so the
 * grant, import and decide handlers see the fuzzed bodies. Invariants: never crashes,
 * every response has a status in 200..599 and a JSON body for JSON content types. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "sidecar/admin_int.h"

static struct mg_app app;
static struct mg_config cfg;
static struct mg_config_tls tls;
static struct mg_admin_ctx ctx;
static char *allowed[] = {"spiffe://test/admin"};

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  char dir[] = "/tmp/fuzz_admin_XXXXXX";
  if (!mkdtemp(dir)) abort();
  mg_log_set_level(MG_LOG_ERROR);
  mg_policy_init();
  cfg.product = "orders";
  cfg.owners = "group:{product}-owners";
  cfg.admin_claim = (struct mg_config_claim){"scope", "mesh:admin"};
  cfg.auditor_claim = (struct mg_config_claim){"scope", "mesh:audit"};
  tls.client_ca = "ca.pem";
  tls.allowed_spiffe = allowed;
  tls.nallowed_spiffe = 1;
  cfg.admin_tls = &tls;
  app.cfg = &cfg;
  pthread_mutex_init(&app.index_lock, NULL);
  if (mg_policy_store_open(dir, 8, false, &app.policy) != 0) abort();
  struct mg_policy_index *ix = NULL;
  if (mg_policy_index_build(app.policy, &ix) != 0) abort();
  atomic_store(&app.index, ix);
  if (mg_admin_ctx_init(&ctx, &app) != 0) abort();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct mg_admin_h1 h;
  mg_admin_h1_init(&h);
  const char *p = (const char *)data;
  size_t left = size;
  for (int guard = 0; guard < 64; guard++) {
    size_t used = 0;
    int rc = mg_admin_h1_feed(&h, p, left, &used);
    if (used > left) abort();
    p += used;
    left -= used;
    if (rc != MG_ADMIN_H1_REQUEST) {
      if (rc != MG_ADMIN_H1_MORE && (rc < 400 || rc > 599)) abort();
      break;
    }
    /* half of the inputs as the certificate admin, half anonymous */
    h.req.peer_spiffe = (size & 1) ? allowed[0] : NULL;
    struct mg_admin_resp rs;
    mg_admin_resp_init(&rs);
    mg_admin_dispatch(&ctx, &h.req, &rs);
    if (rs.status < 200 || rs.status > 599 || rs.stream) abort();
    if (strcmp(rs.ctype, "application/json") == 0 && rs.status != 204) {
      json_t *j = json_loadb(rs.body.data, rs.body.len, 0, NULL);
      if (!j) abort();
      /* every error is {"error","detail"}; /readyz's 503 is {"ready":false,"reasons":[…]} */
      if (rs.status >= 400 && !json_is_false(json_object_get(j, "ready")) &&
          (!json_is_string(json_object_get(j, "error")) ||
                               !json_is_string(json_object_get(j, "detail"))))
        abort();
      json_decref(j);
    }
    mg_admin_resp_clear(&rs);
    bool keep = h.keepalive;
    mg_admin_h1_next(&h);
    if (!keep) break;
  }
  mg_admin_h1_clear(&h);
  return 0;
}
