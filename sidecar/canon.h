/*
 * canon.h — :path canonicalisation (SPEC "Grants": Resource) and route matching.
 *
 * Canonicalisation happens once per request; the canonical bytes are both what the
 * grants are evaluated against and what is forwarded upstream.
 */
#ifndef MG_SIDECAR_CANON_H
#define MG_SIDECAR_CANON_H

#include <stddef.h>
#include <stdbool.h>

#include "sidecar/config.h"

/* Canonicalises a raw :path into out (capacity outcap; len + 1 ≤ in_len + 1 always
 * suffices since canonical output is never longer than the input):
 *   - splits off the query at the first '?' (kept byte-for-byte, but validated);
 *   - decodes percent-escapes of unreserved characters, uppercases the hex of the rest;
 *   - resolves "." and ".." segments (RFC 3986 §5.2.4, ".." at the root stays at the root);
 *   - merges duplicate slashes.
 * Rejects (MG_ERR_INVALID, *why set to a static reason): not starting with '/', %2F, %5C,
 * '\', %00, ';', '#', "%25" followed by two hex digits, a malformed escape, control
 * characters, spaces, raw bytes ≥ 0x80, and escapes that decode to invalid UTF-8.
 * *path_len is the length of the canonical path part (without query); *out_len of the
 * whole output (path + "?" + query). */
int mg_canon_path(const char *in, size_t in_len, char *out, size_t outcap,
                  size_t *path_len, size_t *out_len, const char **why);

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
