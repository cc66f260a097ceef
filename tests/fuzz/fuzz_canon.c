/* fuzz_canon.c — :path canonicalisation: never crashes, output is idempotent, never
 * contains what the canonicaliser promises to refuse. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "policy/policy.h"
#include "sidecar/canon.h"
#include "sidecar/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 4096) return 0;
  char *a = malloc(size + 1), *b = malloc(size + 1);
  size_t pl, ol, pl2, ol2;
  const char *why;
  if (mg_canon_path((const char *)data, size, a, size + 1, &pl, &ol, &why) == 0) {
    if (ol > size || pl > ol || a[0] != '/') abort();
    /* idempotent */
    if (mg_canon_path(a, ol, b, size + 1, &pl2, &ol2, &why) != 0) abort();
    if (ol2 != ol || memcmp(a, b, ol) != 0) abort();
    /* no dot segments, no '//', no backslash, no encoded slash in the path part */
    for (size_t i = 0; i < pl; i++) {
      if (a[i] == '\\' || a[i] == ';' || a[i] == '#') abort();
      if (a[i] == '/' && i + 1 < pl && a[i + 1] == '/') abort();
      if (a[i] == '/' && i + 2 <= pl && a[i + 1] == '.' && (i + 2 == pl || a[i + 2] == '/')) abort();
      if (a[i] == '/' && i + 3 <= pl && a[i + 1] == '.' && a[i + 2] == '.' && (i + 3 == pl || a[i + 3] == '/')) abort();
      if (a[i] == '%' && i + 2 < pl && a[i + 1] == '2' && (a[i + 2] == 'F' || a[i + 2] == 'f')) abort();
      /* one spelling per byte: no escape of a character that may stand raw, hex uppercase */
      if (a[i] == '%') {
        if (i + 2 >= pl) abort();
        int v = 0;
        for (int k = 1; k <= 2; k++) {
          char h = a[i + k];
          if (!((h >= '0' && h <= '9') || (h >= 'A' && h <= 'F'))) abort();
          v = v * 16 + (h <= '9' ? h - '0' : h - 'A' + 10);
        }
        if ((v >= '0' && v <= '9') || (v >= 'A' && v <= 'Z') || (v >= 'a' && v <= 'z') ||
            (v && strchr("-._~!$&'()*+,=:@", v)))
          abort();
      }
    }
    /* on a plain route, a POST with a gRPC content type is a read only on a
     * "/pkg.Service/Method" path: two non-empty segments, a dot in the first */
    struct mg_config_route rt = {.prefix = "/", .prefix_len = 1};
    if (mg_route_action(&rt, "POST", "application/grpc", a, pl) == MG_ACTION_READ) {
      size_t slashes = 0, dots = 0;
      for (size_t i = 0; i < pl; i++) {
        if (a[i] == '/') slashes++;
        else if (a[i] == '.' && slashes == 1) dots++;
      }
      if (slashes != 2 || !dots || a[1] == '/' || a[pl - 1] == '/') abort();
    }
  }
  free(a);
  free(b);
  return 0;
}
