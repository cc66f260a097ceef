/*
 * canon.c — route matching and the action of a request. The canonicalisation itself is
 * mg_canon_path in policy/resource.c, shared with the grant pattern checks.
 */
#include "sidecar/canon.h"

#include <string.h>

#include "policy/policy.h"

const struct mg_config_route *mg_route_match(const struct mg_config *cfg, const char *path,
                                             size_t path_len) {
  const struct mg_config_route *best = NULL;
  for (size_t i = 0; i < cfg->nroutes; i++) {
    const struct mg_config_route *rt = &cfg->routes[i];
    size_t n = rt->prefix_len;
    if (n > path_len || memcmp(rt->prefix, path, n) != 0) continue;
    /* segment boundary: the prefix ends with '/', or the path ends or continues with '/' */
    if (!(rt->prefix[n - 1] == '/' || n == path_len || path[n] == '/')) continue;
    if (!best || n > best->prefix_len) best = rt;
  }
  return best;
}

size_t mg_route_dataset(const struct mg_config_route *r, const char *path, size_t path_len,
                        char *out, size_t outcap) {
  if (r->dataset) {
    size_t n = strlen(r->dataset);
    if (n >= outcap) n = outcap - 1;
    memcpy(out, r->dataset, n);
    out[n] = 0;
    return n;
  }
  if (r->dataset_segment <= 0) { out[0] = 0; return 0; }
  int seg = 0;
  size_t i = 0;
  while (i < path_len) {
    if (path[i] == '/') { i++; continue; }
    size_t start = i;
    while (i < path_len && path[i] != '/') i++;
    if (++seg == r->dataset_segment) {
      size_t n = i - start;
      if (n >= outcap) n = outcap - 1;
      memcpy(out, path + start, n);
      out[n] = 0;
      return n;
    }
  }
  out[0] = 0;
  return 0;
}

static bool is_grpc(const char *ct) {
  return ct && strncmp(ct, "application/grpc", 16) == 0 && (ct[16] == 0 || ct[16] == '+' || ct[16] == ';');
}

/* gRPC's own path shape, "/package.Service/Method": two segments, a dotted service name,
 * no query. */
static bool grpc_shaped(const char *path, size_t path_len) {
  if (path_len < 4 || path[0] != '/') return false;
  const char *slash = memchr(path + 1, '/', path_len - 1);
  if (!slash || slash == path + 1 || (size_t)(slash - path) + 1 >= path_len) return false;
  if (memchr(slash + 1, '/', path_len - (size_t)(slash + 1 - path))) return false;
  if (memchr(path, '?', path_len)) return false;
  return memchr(path + 1, '.', (size_t)(slash - path - 1)) != NULL;
}

unsigned mg_route_action(const struct mg_config_route *r, const char *method,
                         const char *content_type, const char *path, size_t path_len) {
  for (size_t i = 0; r && i < r->nmethods; i++)
    if (strcmp(r->methods[i], method) == 0) return r->method_actions[i];
  /* The content type is the client's word: on a route not declared gRPC it maps by method
   * name only on a gRPC-shaped path, so "POST /datasets/x/DoGet" with a gRPC content type
   * stays a write to a REST product. */
  if ((r && r->grpc) || (is_grpc(content_type) && grpc_shaped(path, path_len))) {
    if (strcmp(method, "POST") != 0) return 0;
    size_t e = path_len, b = e;
    while (b > 0 && path[b - 1] != '/') b--;
    static const char *const reads[] = {"DoGet", "GetFlightInfo", "PollFlightInfo", "GetSchema",
                                        "ListFlights", "ListActions", "Handshake"};
    for (size_t i = 0; i < MG_ARRAY_LEN(reads); i++)
      if (strlen(reads[i]) == e - b && memcmp(reads[i], path + b, e - b) == 0) return MG_ACTION_READ;
    return MG_ACTION_WRITE;
  }
  if (!strcmp(method, "GET") || !strcmp(method, "HEAD")) return MG_ACTION_READ;
  if (!strcmp(method, "POST") || !strcmp(method, "PUT") || !strcmp(method, "PATCH") ||
      !strcmp(method, "DELETE"))
    return MG_ACTION_WRITE;
  return 0;
}
