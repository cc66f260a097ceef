/*
 * canon.h — route matching and request actions (mg_canon_path is in policy/policy.h).
 *
 * Canonicalisation happens once per request; the canonical bytes are both what the
 * grants are evaluated against and what is forwarded upstream.
 */
#ifndef MG_SIDECAR_CANON_H
#define MG_SIDECAR_CANON_H

#include <stddef.h>
#include <stdbool.h>

#include "policy/policy.h"  /* mg_canon_path */
#include "sidecar/config.h"

/* Longest route prefix at a segment boundary; NULL when none matches (404). */
const struct mg_config_route *mg_route_match(const struct mg_config *cfg, const char *path,
                                             size_t path_len);

/* The dataset of a canonical path for a route ("segment:N" or fixed), written into out
 * (NUL-terminated). Returns its length, 0 when absent. */
size_t mg_route_dataset(const struct mg_config_route *r, const char *path, size_t path_len,
                        char *out, size_t outcap);

/* Action of a request: MG_ACTION_READ / MG_ACTION_WRITE, or 0 (405). For gRPC routes
 * (route->grpc, or content-type application/grpc*) the last path segment is the method:
 * Arrow Flight read methods (DoGet, GetFlightInfo, PollFlightInfo, GetSchema, ListFlights,
 * ListActions, Handshake) map to read; any other gRPC method maps to write. */
unsigned mg_route_action(const struct mg_config_route *r, const char *method,
                         const char *content_type, const char *path, size_t path_len);

#endif /* MG_SIDECAR_CANON_H */
