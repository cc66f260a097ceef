/*
 * fuzz_verify.c — libFuzzer target for `meshgate lineage verify`.
 *
 * The input is an export (fed through fmemopen, as the CLI streams a file) verified with
 * a fixed test key: Ed25519 private seed = 32 bytes of 0x42, name "fuzz.example/log"
 * (tests/fuzz/gen_verify_seeds.py writes seeds signed with it, so mutations reach the
 * Merkle and proof paths, not just the JSON parser). The same bytes are also tried as a
 * signed note and as a checkpoint body. Invariants checked: a failure always carries a
 * one-line reason; success never names a bad index. MG_FUZZ_VERBOSE=1 prints results.
 * Compile verify.c with -DMG_VERIFY_SELFCHECK to also check the entry fast path against
 * jansson on every line it accepts (a differential test of the two parsers).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lineage/lineage_int.h"

static const char *const vkeys[] = {"fuzz.example/log+51ff636e+ASFS+NGbeR0kRTJC4V8uq2y3z/p7al7TAJeWDgaYgdsS"};
static struct mg_note_verifier *verifier;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!verifier) {
    mg_lineage_init();
    if (mg_note_verifier_parse(vkeys[0], strlen(vkeys[0]), &verifier) != 0) abort();
  }
  struct mg_lineage_verify_result res;
  /* fmemopen refuses a zero size; an empty export is /dev/null */
  FILE *f = size ? fmemopen((void *)data, size, "r") : fopen("/dev/null", "r");
  if (!f) return 0;
  int rv = mg_lineage_verify(f, vkeys, 1, &res);
  fclose(f);
  if (rv == 0 && (res.bad_index != UINT64_MAX || res.bad_line != 0)) abort();
  if (rv != 0 && (res.reason[0] == 0 || strchr(res.reason, '\n'))) abort();
  if (getenv("MG_FUZZ_VERBOSE"))
    fprintf(stderr, "rv=%d (%s) entries=%llu checkpoints=%llu bad_index=%lld line=%ld: %s\n", rv,
            mg_strerror(rv), (unsigned long long)res.entries, (unsigned long long)res.checkpoints,
            res.bad_index == UINT64_MAX ? -1LL : (long long)res.bad_index, res.bad_line, res.reason);

  /* The raw bytes as a note and as a checkpoint body. */
  size_t tl = 0;
  bool signed_by[1];
  struct mg_note_verifier *v[1] = {verifier};
  if (mg_note_verify((const char *)data, size, v, 1, &tl, signed_by) == 0) {
    if (tl == 0 || tl > size || !signed_by[0]) abort();
  }
  char *origin = NULL;
  uint64_t n;
  uint8_t root[MG_HASH_LEN];
  if (mg_checkpoint_parse((const char *)data, size, &origin, &n, root) == 0) {
    char *again = mg_checkpoint_format(origin, n, root);
    if (!again) abort();
    free(again);
  }
  free(origin);
  return 0;
}
