/*
 * errors.c — one namer for every error code. Modules register their range at start-up;
 * -errno values go to strerror_r's thread-safe static table via strerrordesc_np.
 */
#include "common/common.h"

#include <errno.h>
#include <string.h>

#define MAX_RANGES 8
static struct { int base; mg_strerror_fn fn; } ranges[MAX_RANGES];
static int nranges;

void mg_strerror_register(int base, mg_strerror_fn fn) {
  for (int i = 0; i < nranges; i++)
    if (ranges[i].base == base) { ranges[i].fn = fn; return; }
  if (nranges < MAX_RANGES) { ranges[nranges].base = base; ranges[nranges].fn = fn; nranges++; }
}

static const char *common_strerror(int err) {
  switch (err) {
  case 0: return "success";
  case MG_ERR_INVALID: return "invalid input";
  case MG_ERR_TOOBIG: return "input too large";
  case MG_ERR_NOTFOUND: return "not found";
  case MG_ERR_INTERNAL: return "internal error";
  default: return NULL;
  }
}

const char *mg_strerror(int err) {
  if (err > -MG_ERR_RANGE + 1 && err <= 0 && err != 0) {
    const char *s = strerrordesc_np(-err);
    return s ? s : "unknown system error";
  }
  const char *s = common_strerror(err);
  if (s) return s;
  for (int i = 0; i < nranges; i++) {
    if (err <= ranges[i].base && err > ranges[i].base - MG_ERR_RANGE) {
      s = ranges[i].fn(err);
      if (s) return s;
    }
  }
  return "unknown error";
}
