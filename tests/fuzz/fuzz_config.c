/* fuzz_config.c — the config loader on arbitrary files: never crashes or leaks, and every
 * rejection has a reason that names the file. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sidecar/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static char path[64];
  if (!path[0]) snprintf(path, sizeof path, "/dev/shm/mg-fuzz-config-%d.json", (int)getpid());
  FILE *f = fopen(path, "wb");
  if (!f) return 0;
  fwrite(data, 1, size, f);
  fclose(f);
  struct mg_config *c = NULL;
  char err[1024] = "";
  int rv = mg_config_load(path, &c, err, sizeof err);
  if (rv == 0) {
    if (!c || !c->product || c->nroutes == 0) abort();
    mg_config_unref(c);
  } else if (!strstr(err, path)) {
    abort();
  }
  return 0;
}
