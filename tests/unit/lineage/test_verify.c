/* test_verify.c — mg_lineage_verify over exports built here with the real Merkle and
 * signed-note code (keys generated per run): intact exports pass; every kind of
 * tampering fails AT THE RIGHT INDEX (edited, deleted, reordered, inserted, appended by
 * hand, truncated tail, forged checkpoint, unknown key), filtered exports with proofs and
 * consistency lines, exports starting with a prefix, several origins; plus keygen and a
 * throughput measurement. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include <jansson.h>

#include "lineage/lineage_int.h"

#define ORIGIN "test.example/log"
#define ORIGIN_B "other.example/log"

static char tmpdir[64];
struct keys {
  struct mg_note_signer *s;
  char *vkey;
};
static struct keys k_main, k_other_same_name, k_b, k_old;

static struct keys mkkey(const char *name) {
  struct keys k;
  char *pem = NULL, path[128];
  static int seq;
  assert_int_equal(mg_note_keygen(name, &pem, &k.vkey), 0);
  snprintf(path, sizeof path, "%s/k%d.pem", tmpdir, seq++);
  assert_int_equal(mg_file_write_atomic(path, pem, strlen(pem), 0600), 0);
  assert_int_equal(mg_note_signer_load(path, name, &k.s), 0);
  free(pem);
  return k;
}

static int setup(void **state) {
  (void)state;
  strcpy(tmpdir, "/tmp/mg-verify-XXXXXX");
  if (!mkdtemp(tmpdir)) return -1;
  mg_lineage_init();
  k_main = mkkey(ORIGIN);
  k_other_same_name = mkkey(ORIGIN);
  k_b = mkkey(ORIGIN_B);
  k_old = mkkey(ORIGIN);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  struct keys *all[] = {&k_main, &k_other_same_name, &k_b, &k_old};
  for (size_t i = 0; i < 4; i++) {
    mg_note_signer_free(all[i]->s);
    free(all[i]->vkey);
  }
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
  return system(cmd) == 0 ? 0 : -1;
}

/* ---- a log: original entry lines, their leaves, stored subtrees for proofs ---- */

struct log {
  const char *origin;
  size_t n;
  char **lines;
  uint8_t (*leaf)[MG_HASH_LEN];
  uint8_t (*lvl[24])[MG_HASH_LEN];
  uint64_t cnt[24];
};

static int put(void *arg, unsigned level, uint64_t index, const uint8_t h[MG_HASH_LEN]) {
  struct log *L = arg;
  assert_true(level < 24);
  memcpy(L->lvl[level][index], h, MG_HASH_LEN);
  L->cnt[level] = index + 1;
  return 0;
}

static int get(void *arg, unsigned level, uint64_t index, uint8_t out[MG_HASH_LEN]) {
  struct log *L = arg;
  if (level >= 24 || index >= L->cnt[level]) return MG_ERR_NOTFOUND;
  memcpy(out, L->lvl[level][index], MG_HASH_LEN);
  return 0;
}

static char *entry_line(const char *origin, uint64_t i, int64_t t_us) {
  char ts[MG_RFC3339_LEN], *s = NULL;
  mg_time_format_rfc3339(t_us, ts);
  /* every 7th line is outside the verifier's fast path (nested object, \u escape, real) */
  const char *extra = i % 7 == 3 ? "\"detail\":{\"q\":\"a\\\"b\\u00e9\",\"r\":[1.5,{}]}," : "";
  assert_true(asprintf(&s,
                       "{\"action\":\"read\",\"decision\":\"allow\",%s\"index\":%llu,\"origin\":\"%s\","
                       "\"path\":\"/v1/orders?id=%llu\",\"principal\":\"user:alice\",\"request_id\":"
                       "\"0193a6c2-7d1e-7c3a-9f00-%012llx\",\"time\":\"%s\"}",
                       extra, (unsigned long long)i, origin, (unsigned long long)i, (unsigned long long)i, ts) > 0);
  return s;
}

/* log_new writes entry time_skew_index (when >= 0) with time_skew_us instead of its own:
 * an authentic, signed log whose times go backwards. */
static int64_t time_skew_index = -1, time_skew_us;

static struct log *log_new(const char *origin, size_t n) {
  struct log *L = calloc(1, sizeof *L);
  L->origin = origin;
  L->n = n;
  L->lines = calloc(n + 1, sizeof *L->lines);
  L->leaf = calloc(n + 1, MG_HASH_LEN);
  for (unsigned l = 0; l < 24; l++) L->lvl[l] = calloc((n >> l) + 1, MG_HASH_LEN);
  struct mg_merkle_frontier f;
  mg_merkle_frontier_init(&f);
  for (size_t i = 0; i < n; i++) {
    L->lines[i] = entry_line(origin, i, (int64_t)i == time_skew_index ? time_skew_us
                                                                     : 1764064800000000LL + (int64_t)i * 1000);
    mg_merkle_leaf_hash(L->lines[i], strlen(L->lines[i]), L->leaf[i]);
    assert_int_equal(mg_merkle_frontier_append(&f, L->leaf[i], put, L), 0);
  }
  return L;
}

static void log_free(struct log *L) {
  for (size_t i = 0; i < L->n; i++) free(L->lines[i]);
  for (unsigned l = 0; l < 24; l++) free(L->lvl[l]);
  free(L->lines);
  free(L->leaf);
  free(L);
}

static void root_of(struct log *L, uint64_t size, uint8_t out[MG_HASH_LEN]) {
  assert_int_equal(mg_merkle_range_hash(0, size, get, L, out), 0);
}

static char *b64_hashes(const uint8_t *h, size_t n) {
  char *s = malloc(4 * ((n * MG_HASH_LEN + 2) / 3) + 1);
  mg_b64_encode(h, n * MG_HASH_LEN, s);
  return s;
}

/* {"checkpoint":"<note>","leaves":"<b64>"} for size, leaves from `from` (none if from<0). */
static char *cp_line_signed(struct log *L, uint64_t size, int64_t from, struct mg_note_signer **signers,
                            size_t nsigners) {
  uint8_t root[MG_HASH_LEN];
  root_of(L, size, root);
  char *body = mg_checkpoint_format(L->origin, size, root), *note = NULL;
  assert_int_equal(mg_note_sign(body, strlen(body), signers, nsigners, &note), 0);
  json_t *o = json_pack("{s:s}", "checkpoint", note);
  if (from >= 0) {
    char *lv = b64_hashes(L->leaf[from], size - (uint64_t)from);
    json_object_set_new(o, "leaves", json_string(lv));
    free(lv);
  }
  char *s = json_dumps(o, JSON_COMPACT);
  json_decref(o);
  free(body);
  free(note);
  return s;
}

static char *cp_line(struct log *L, uint64_t size, int64_t from) {
  return cp_line_signed(L, size, from, &k_main.s, 1);
}

static char *hashes_json(uint8_t (*h)[MG_HASH_LEN], size_t n) {
  struct mg_buf b;
  mg_buf_init(&b);
  mg_buf_appends(&b, "[");
  for (size_t i = 0; i < n; i++) {
    char s[48];
    mg_b64_encode(h[i], MG_HASH_LEN, s);
    mg_buf_appendf(&b, "%s\"%s\"", i ? "," : "", s);
  }
  mg_buf_appends(&b, "]");
  return mg_buf_steal(&b);
}

static char *proof_line(struct log *L, uint64_t index, uint64_t size) {
  uint8_t p[MG_MERKLE_MAX_LEVELS][MG_HASH_LEN];
  size_t n;
  assert_int_equal(mg_merkle_prove_inclusion(index, size, get, L, p, &n), 0);
  char *hs = hashes_json(p, n), *s = NULL;
  assert_true(asprintf(&s, "{\"proof\":{\"index\":%llu,\"size\":%llu,\"hashes\":%s}}",
                       (unsigned long long)index, (unsigned long long)size, hs) > 0);
  free(hs);
  return s;
}

static char *cons_line(struct log *L, uint64_t a, uint64_t b) {
  uint8_t p[MG_MERKLE_MAX_LEVELS][MG_HASH_LEN];
  size_t n;
  assert_int_equal(mg_merkle_prove_consistency(a, b, get, L, p, &n), 0);
  char *hs = hashes_json(p, n), *s = NULL;
  assert_true(asprintf(&s, "{\"consistency\":{\"origin\":\"%s\",\"from\":%llu,\"to\":%llu,\"hashes\":%s}}",
                       L->origin, (unsigned long long)a, (unsigned long long)b, hs) > 0);
  free(hs);
  return s;
}

static char *prefix_line(struct log *L, uint64_t k) {
  struct mg_merkle_frontier f;
  assert_int_equal(mg_merkle_frontier_load(&f, k, get, L), 0);
  char *hs = hashes_json(f.hashes, f.n), *s = NULL;
  assert_true(asprintf(&s, "{\"prefix\":{\"origin\":\"%s\",\"size\":%llu,\"hashes\":%s}}", L->origin,
                       (unsigned long long)k, hs) > 0);
  free(hs);
  return s;
}

/* ---- an export: a list of owned lines ---- */

struct exp {
  char **l;
  size_t n, cap;
};

static void add(struct exp *e, char *take_line) {
  if (e->n == e->cap) {
    e->cap = e->cap ? e->cap * 2 : 256;
    e->l = realloc(e->l, e->cap * sizeof *e->l);
  }
  e->l[e->n++] = take_line;
}
static void insert_at(struct exp *e, size_t pos, char *take_line) {
  add(e, take_line);
  memmove(e->l + pos + 1, e->l + pos, (e->n - 1 - pos) * sizeof *e->l);
  e->l[pos] = take_line;
}
static void remove_at(struct exp *e, size_t pos) {
  free(e->l[pos]);
  memmove(e->l + pos, e->l + pos + 1, (e->n - pos - 1) * sizeof *e->l);
  e->n--;
}
static void exp_free(struct exp *e) {
  for (size_t i = 0; i < e->n; i++) free(e->l[i]);
  free(e->l);
  memset(e, 0, sizeof *e);
}

/* Unfiltered export of entries [from, to) with checkpoints after the listed sizes. */
static void build_full(struct exp *e, struct log *L, uint64_t from, uint64_t to, const uint64_t *cps,
                       size_t ncps, bool leaves) {
  if (from > 0) add(e, prefix_line(L, from));
  int64_t prev = (int64_t)from;
  size_t c = 0;
  while (c < ncps && cps[c] <= from) c++;
  for (uint64_t i = from; i < to; i++) {
    add(e, strdup(L->lines[i]));
    if (c < ncps && cps[c] == i + 1) {
      add(e, cp_line(L, i + 1, leaves ? prev : -1));
      prev = (int64_t)(i + 1);
      c++;
    }
  }
}

/* Line position (0-based) of entry `index` in an export. */
static size_t pos_of(struct exp *e, const char *origin, uint64_t index) {
  char needle[96];
  snprintf(needle, sizeof needle, "\"index\":%llu,\"origin\":\"%s\"", (unsigned long long)index, origin);
  for (size_t i = 0; i < e->n; i++)
    if (strstr(e->l[i], needle)) return i;
  fail_msg("entry %llu not in export", (unsigned long long)index);
  return 0;
}

static int run(struct exp *e, const char *const *vkeys, size_t nv, struct mg_lineage_verify_result *res) {
  struct mg_buf b;
  mg_buf_init(&b);
  for (size_t i = 0; i < e->n; i++) {
    mg_buf_appends(&b, e->l[i]);
    mg_buf_appends(&b, "\n");
  }
  FILE *f = fmemopen(b.data ? b.data : (char *)"", b.len, "r");
  assert_non_null(f);
  int rv = mg_lineage_verify(f, vkeys, nv, res);
  fclose(f);
  mg_buf_clear(&b);
  if (rv && !strchr(res->reason, ':')) fail_msg("reason without detail: %s", res->reason);
  return rv;
}

static int run1(struct exp *e, struct mg_lineage_verify_result *res) {
  const char *v[1] = {k_main.vkey};
  return run(e, v, 1, res);
}

#define EXPECT_FAIL(e, idx, word)                                                       \
  do {                                                                                  \
    struct mg_lineage_verify_result r_;                                                 \
    assert_int_equal(run1((e), &r_), MG_LINEAGE_E_VERIFY);                              \
    if (r_.bad_index != (uint64_t)(idx) || !strstr(r_.reason, (word)))                  \
      fail_msg("bad_index %llu (want %llu), reason: %s", (unsigned long long)r_.bad_index, \
               (unsigned long long)(idx), r_.reason);                                   \
  } while (0)

static const uint64_t CPS[] = {40, 75, 100};

static void test_intact(void **state) {
  (void)state;
  struct log *L = log_new(ORIGIN, 100);
  struct exp e = {0};
  build_full(&e, L, 0, 100, CPS, 3, true);
  struct mg_lineage_verify_result r;
  assert_int_equal(run1(&e, &r), 0);
  assert_int_equal(r.entries, 100);
  assert_int_equal(r.checkpoints, 3);
  assert_int_equal(r.bad_index, UINT64_MAX);
  exp_free(&e);
  /* without "leaves" too, and without the intermediate checkpoints */
  build_full(&e, L, 0, 100, CPS + 2, 1, false);
  assert_int_equal(run1(&e, &r), 0);
  assert_int_equal(r.checkpoints, 1);
  exp_free(&e);
  log_free(L);
}

static void test_edited(void **state) {
  (void)state;
  struct log *L = log_new(ORIGIN, 100);
  struct exp e = {0};
  build_full(&e, L, 0, 100, CPS, 3, true);
  size_t p = pos_of(&e, ORIGIN, 57);
  char *s = strstr(e.l[p], "alice");
  s[0] = 'm'; /* malice */
  struct mg_lineage_verify_result r;
  assert_int_equal(run1(&e, &r), MG_LINEAGE_E_VERIFY);
  assert_int_equal(r.bad_index, 57);
  assert_int_equal(r.bad_line, (long)p + 1);
  assert_non_null(strstr(r.reason, "entry 57: leaf hash does not match checkpoint 75 (edited entry)"));
  exp_free(&e);
  /* without leaves: the first index after the previous good checkpoint */
  build_full(&e, L, 0, 100, CPS, 3, false);
  s = strstr(e.l[pos_of(&e, ORIGIN, 57)], "alice");
  s[0] = 'm';
  EXPECT_FAIL(&e, 40, "root does not match checkpoint 75");
  exp_free(&e);
  /* forged "leaves" (not reproducing the signed root) are not believed */
  build_full(&e, L, 0, 100, CPS, 3, true);
  s = strstr(e.l[pos_of(&e, ORIGIN, 57)], "alice");
  s[0] = 'm';
  p = pos_of(&e, ORIGIN, 74) + 1;
  char *lv = strstr(e.l[p], "\"leaves\":\"") + 10;
  lv[0] = lv[0] == 'A' ? 'B' : 'A';
  EXPECT_FAIL(&e, 40, "root does not match");
  exp_free(&e);
  log_free(L);
}

static void test_deleted_reordered_inserted(void **state) {
  (void)state;
  struct log *L = log_new(ORIGIN, 100);
  struct exp e = {0};
  build_full(&e, L, 0, 100, CPS, 3, true);
  remove_at(&e, pos_of(&e, ORIGIN, 57));
  EXPECT_FAIL(&e, 57, "deleted");
  exp_free(&e);

  build_full(&e, L, 0, 100, CPS, 3, true);
  size_t p = pos_of(&e, ORIGIN, 57);
  char *t = e.l[p];
  e.l[p] = e.l[p + 1];
  e.l[p + 1] = t;
  EXPECT_FAIL(&e, 57, "reordered");
  exp_free(&e);

  /* a duplicated entry */
  build_full(&e, L, 0, 100, CPS, 3, true);
  p = pos_of(&e, ORIGIN, 57);
  insert_at(&e, p + 1, strdup(e.l[p]));
  EXPECT_FAIL(&e, 57, "a second entry with this index");
  exp_free(&e);

  /* an inserted entry with every later index renumbered: caught by the root, pinned by leaves */
  build_full(&e, L, 0, 100, CPS, 3, true);
  p = pos_of(&e, ORIGIN, 58);
  for (size_t i = 58; i < 75; i++) {
    free(e.l[p + i - 58]);
    e.l[p + i - 58] = entry_line(ORIGIN, i, 1764064800000000LL + (int64_t)(i - 1) * 1000 + (i == 58 ? 500 : 0));
  }
  /* line 58 is now new content, 59..74 carry the old 58..73 renumbered: drop old 74 */
  for (size_t i = 59; i < 75; i++) {
    free(e.l[p + i - 58]);
    char *old = strdup(L->lines[i - 1]);
    char num[32], rep[32];
    snprintf(num, sizeof num, "\"index\":%zu,", i - 1);
    snprintf(rep, sizeof rep, "\"index\":%zu,", i);
    char *at = strstr(old, num), *nl = NULL;
    assert_true(asprintf(&nl, "%.*s%s%s", (int)(at - old), old, rep, at + strlen(num)) > 0);
    free(old);
    e.l[p + i - 58] = nl;
  }
  EXPECT_FAIL(&e, 58, "leaf hash does not match checkpoint 75");
  exp_free(&e);
  log_free(L);
}

static void test_appended_truncated(void **state) {
  (void)state;
  struct log *L = log_new(ORIGIN, 101);
  struct exp e = {0};
  build_full(&e, L, 0, 100, CPS, 3, true);
  add(&e, strdup(L->lines[100])); /* appended by hand after the last checkpoint */
  EXPECT_FAIL(&e, 100, "not covered");
  struct mg_lineage_verify_result r;
  run1(&e, &r);
  assert_int_equal(r.bad_line, (long)e.n);
  exp_free(&e);

  /* an entry slipped in before a checkpoint */
  build_full(&e, L, 0, 100, CPS, 3, true);
  insert_at(&e, pos_of(&e, ORIGIN, 39) + 1, strdup(L->lines[40]));
  EXPECT_FAIL(&e, 40, "not covered by checkpoint 40");
  exp_free(&e);

  /* truncated tail: entries 90..99 gone, final checkpoint kept */
  build_full(&e, L, 0, 100, CPS, 3, true);
  size_t p90 = pos_of(&e, ORIGIN, 90);
  for (int i = 0; i < 10; i++) remove_at(&e, p90);
  EXPECT_FAIL(&e, 90, "truncated");
  exp_free(&e);

  /* truncated tail including the checkpoint: 75..89 are uncovered */
  build_full(&e, L, 0, 100, CPS, 3, true);
  p90 = pos_of(&e, ORIGIN, 90);
  while (e.n > p90) remove_at(&e, e.n - 1);
  EXPECT_FAIL(&e, 75, "not covered");
  exp_free(&e);

  /* everything but the last checkpoint removed */
  build_full(&e, L, 0, 100, CPS, 3, true);
  while (e.n > 1) remove_at(&e, 0);
  EXPECT_FAIL(&e, 0, "truncated");
  exp_free(&e);
  /* no checkpoint at all */
  build_full(&e, L, 0, 30, CPS, 3, true);
  EXPECT_FAIL(&e, 0, "not covered");
  exp_free(&e);
  struct exp empty = {0};
  EXPECT_FAIL(&empty, UINT64_MAX, "no checkpoint");
  log_free(L);
}

static void test_forged_unknown(void **state) {
  (void)state;
  struct log *L = log_new(ORIGIN, 100);
  struct exp e = {0};
  build_full(&e, L, 0, 100, CPS, 3, true);
  /* forged: the checkpoint text claims another size, signature kept */
  size_t p = pos_of(&e, ORIGIN, 74) + 1;
  char *s = strstr(e.l[p], "\\n75\\n");
  assert_non_null(s);
  s[3] = '4';
  EXPECT_FAIL(&e, 73, "forged");
  exp_free(&e);

  /* re-signed by a key of the same name that the verifier does not hold */
  build_full(&e, L, 0, 100, CPS, 3, true);
  p = pos_of(&e, ORIGIN, 74) + 1;
  free(e.l[p]);
  e.l[p] = cp_line_signed(L, 75, 40, &k_other_same_name.s, 1);
  EXPECT_FAIL(&e, 74, "unknown key");
  exp_free(&e);

  /* signed by a key the verifier holds, but of another origin */
  build_full(&e, L, 0, 100, CPS, 3, true);
  p = pos_of(&e, ORIGIN, 74) + 1;
  free(e.l[p]);
  e.l[p] = cp_line_signed(L, 75, 40, &k_b.s, 1);
  const char *two[2] = {k_main.vkey, k_b.vkey};
  struct mg_lineage_verify_result r;
  assert_int_equal(run(&e, two, 2, &r), MG_LINEAGE_E_VERIFY);
  assert_int_equal(r.bad_index, 74);
  exp_free(&e);

  /* rotation: the new key's first checkpoint co-signed by the old key */
  build_full(&e, L, 0, 100, CPS, 3, true);
  p = pos_of(&e, ORIGIN, 74) + 1;
  free(e.l[p]);
  struct mg_note_signer *both[2] = {k_old.s, k_main.s};
  e.l[p] = cp_line_signed(L, 75, 40, both, 2);
  assert_int_equal(run1(&e, &r), 0);
  const char *oldonly[1] = {k_old.vkey};
  assert_int_equal(run(&e, oldonly, 1, &r), MG_LINEAGE_E_VERIFY); /* 40 and 100: main only */
  assert_int_equal(r.bad_index, 39);
  exp_free(&e);
  log_free(L);
}

static void test_time_origin(void **state) {
  (void)state;
  struct log *L = log_new(ORIGIN, 20);
  uint64_t cp[] = {20};
  struct exp e = {0};
  build_full(&e, L, 0, 20, cp, 1, true);
  size_t p = pos_of(&e, ORIGIN, 7);
  free(e.l[p]);
  e.l[p] = entry_line(ORIGIN, 7, 1764064800000000LL - 1); /* earlier than entry 6 */
  EXPECT_FAIL(&e, 7, "edited entry"); /* the leaf hashes name the edited entry */
  exp_free(&e);
  /* signed as such (the entries are authentic) and still going backwards: a time failure */
  time_skew_index = 7;
  time_skew_us = 1764064800000000LL - 1;
  struct log *S = log_new(ORIGIN, 20);
  time_skew_index = -1;
  build_full(&e, S, 0, 20, cp, 1, true);
  EXPECT_FAIL(&e, 7, "time goes backwards");
  exp_free(&e);
  log_free(S);
  /* an entry claiming another origin: uncovered by that origin's checkpoints */
  build_full(&e, L, 0, 20, cp, 1, true);
  p = pos_of(&e, ORIGIN, 7);
  free(e.l[p]);
  e.l[p] = entry_line(ORIGIN_B, 7, 1764064800000000LL + 7000);
  EXPECT_FAIL(&e, 7, "deleted");
  exp_free(&e);
  log_free(L);
}

static void test_filtered(void **state) {
  (void)state;
  struct log *L = log_new(ORIGIN, 100);
  struct exp e = {0};
  uint64_t pick[] = {3, 50, 64, 99};
  for (size_t i = 0; i < 4; i++) {
    add(&e, strdup(L->lines[pick[i]]));
    add(&e, proof_line(L, pick[i], 100));
  }
  add(&e, cp_line(L, 100, -1));
  struct mg_lineage_verify_result r;
  if (run1(&e, &r) != 0) fail_msg("%s", r.reason);
  assert_int_equal(r.entries, 4);
  /* a bad proof: one hash changed */
  size_t p = pos_of(&e, ORIGIN, 50) + 1;
  char *h = strstr(e.l[p], "\"hashes\":[\"") + 11;
  char save = h[2];
  h[2] = save == 'A' ? 'B' : 'A';
  EXPECT_FAIL(&e, 50, "inclusion proof does not match checkpoint 100");
  h[2] = save;
  assert_int_equal(run1(&e, &r), 0);
  /* an edited entry */
  char *s = strstr(e.l[pos_of(&e, ORIGIN, 64)], "alice");
  s[0] = 'm';
  EXPECT_FAIL(&e, 64, "inclusion proof");
  s[0] = 'a';
  /* an entry without its proof */
  free(e.l[p]);
  e.l[p] = strdup(L->lines[51]);
  struct mg_lineage_verify_result r2;
  assert_int_not_equal(run1(&e, &r2), 0);
  assert_int_equal(r2.bad_index, 50);
  exp_free(&e);
  /* proof against a size with no checkpoint */
  add(&e, strdup(L->lines[3]));
  add(&e, proof_line(L, 3, 90));
  add(&e, cp_line(L, 100, -1));
  EXPECT_FAIL(&e, 3, "no checkpoint of size 90");
  exp_free(&e);

  /* two checkpoints: a consistency line between them is required and verified */
  add(&e, strdup(L->lines[3]));
  add(&e, proof_line(L, 3, 75));
  add(&e, cp_line(L, 75, -1));
  add(&e, cons_line(L, 75, 100));
  add(&e, strdup(L->lines[80]));
  add(&e, proof_line(L, 80, 100));
  add(&e, cp_line(L, 100, -1));
  assert_int_equal(run1(&e, &r), 0);
  assert_int_equal(r.checkpoints, 2);
  h = strstr(e.l[3], "\"hashes\":[\"") + 11;
  h[0] = h[0] == 'A' ? 'B' : 'A';
  EXPECT_FAIL(&e, UINT64_MAX, "not consistent");
  remove_at(&e, 3);
  EXPECT_FAIL(&e, UINT64_MAX, "no consistency proof");
  exp_free(&e);
  /* the first checkpoint may come before the first match; consistency still required */
  add(&e, cp_line(L, 75, -1));
  add(&e, cons_line(L, 75, 100));
  add(&e, strdup(L->lines[80]));
  add(&e, proof_line(L, 80, 100));
  add(&e, cp_line(L, 100, -1));
  assert_int_equal(run1(&e, &r), 0);
  remove_at(&e, 1);
  EXPECT_FAIL(&e, UINT64_MAX, "no consistency proof");
  exp_free(&e);
  /* a filtered export where nothing matched: only the checkpoint... is a truncation */
  add(&e, cp_line(L, 100, -1));
  EXPECT_FAIL(&e, 0, "truncated");
  exp_free(&e);
  log_free(L);
}

static void test_prefix(void **state) {
  (void)state;
  struct log *L = log_new(ORIGIN, 100);
  struct exp e = {0};
  build_full(&e, L, 60, 100, CPS, 3, true);
  struct mg_lineage_verify_result r;
  assert_int_equal(run1(&e, &r), 0);
  assert_int_equal(r.entries, 40);
  assert_int_equal(r.checkpoints, 2);
  char *s = strstr(e.l[pos_of(&e, ORIGIN, 80)], "alice");
  s[0] = 'm';
  EXPECT_FAIL(&e, 80, "edited");
  s[0] = 'a';
  /* a bad prefix hash: the first checkpoint's root cannot match */
  char *h = strstr(e.l[0], "\"hashes\":[\"") + 11;
  char save = h[0];
  h[0] = save == 'A' ? 'B' : 'A';
  EXPECT_FAIL(&e, 60, "root does not match checkpoint 75");
  h[0] = save;
  /* an export that starts after its prefix claims */
  remove_at(&e, 1);
  EXPECT_FAIL(&e, 60, "deleted");
  exp_free(&e);
  log_free(L);
}

static void test_origins_and_format(void **state) {
  (void)state;
  struct log *A = log_new(ORIGIN, 30), *B = log_new(ORIGIN_B, 20);
  uint64_t ca[] = {10, 30}, cb[] = {20};
  struct exp e = {0};
  build_full(&e, A, 0, 30, ca, 2, true);
  struct exp eb = {0};
  for (size_t i = 0; i < 20; i++) add(&eb, strdup(B->lines[i]));
  uint8_t root[MG_HASH_LEN];
  root_of(B, 20, root);
  {
    char *body = mg_checkpoint_format(ORIGIN_B, 20, root), *note = NULL;
    assert_int_equal(mg_note_sign(body, strlen(body), &k_b.s, 1, &note), 0);
    json_t *o = json_pack("{s:s}", "checkpoint", note);
    add(&eb, json_dumps(o, JSON_COMPACT));
    json_decref(o);
    free(body);
    free(note);
  }
  (void)cb;
  for (size_t i = 0; i < eb.n; i++) add(&e, strdup(eb.l[i]));
  exp_free(&eb);
  const char *two[2] = {k_main.vkey, k_b.vkey};
  struct mg_lineage_verify_result r;
  assert_int_equal(run(&e, two, 2, &r), 0);
  assert_int_equal(r.entries, 50);
  assert_int_equal(r.checkpoints, 3);
  assert_int_equal(run1(&e, &r), MG_LINEAGE_E_VERIFY); /* B's key not given */
  assert_int_equal(r.bad_index, 19);
  assert_non_null(strstr(r.reason, "unknown key"));
  exp_free(&e);

  /* strict line parsing */
  static const char *const bad[] = {
      "{\"index\":0,\"index\":0,\"origin\":\"" ORIGIN "\",\"time\":\"2026-01-01T00:00:00.000000Z\"}",
      "{\"index\":0,\"ind\\u0065x\":0,\"origin\":\"" ORIGIN "\",\"time\":\"2026-01-01T00:00:00.000000Z\"}",
      "{\"index\":0,\"origin\":\"" ORIGIN "\",\"time\":\"2026-01-01T00:00:00.000000Z\",\"x\":\"\x01\"}",
      "{\"index\":0,\"origin\":\"" ORIGIN "\",\"time\":\"2026-01-01T00:00:00.000000Z\",\"x\":\"\xff\"}",
      "{\"index\":0,\"origin\":\"" ORIGIN "\",\"time\":\"2026-01-01T00:00:00.000000Z\",\"x\":01}",
      "{\"index\":0,\"origin\":\"" ORIGIN "\",\"time\":\"2026-01-01T00:00:00.000000Z\",\"x\":tru}",
      "{\"index\":0,\"origin\":\"" ORIGIN "\",\"time\":\"2026-01-01T00:00:00.000000Z\",}",
      "{\"index\":99999999999999999999999,\"origin\":\"" ORIGIN "\",\"time\":\"2026-01-01T00:00:00.000000Z\"}",
      "{\"index\":0,\"origin\":\"" ORIGIN "\",\"time\":\"2026-01-01T00:00:00.000000Z\"} x",
      "[1,2]",
      "{\"index\":-1,\"origin\":\"" ORIGIN "\",\"time\":\"2026-01-01T00:00:00.000000Z\"}",
      "{\"index\":1.5,\"origin\":\"" ORIGIN "\",\"time\":\"2026-01-01T00:00:00.000000Z\"}",
      "{\"index\":0,\"origin\":\"" ORIGIN "\",\"time\":\"yesterday\"}",
      "{\"index\":0,\"time\":\"2026-01-01T00:00:00.000000Z\"}",
      "{\"checkpoint\":\"x\\n\"}",
      "{\"checkpoint\":\"o\\n1\\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\\n\\n\"}",
      "{\"hello\":1}",
      "",
      "{\"prefix\":{\"origin\":\"o\",\"size\":3,\"hashes\":[]}}",
      "{\"proof\":{\"index\":0,\"size\":1,\"hashes\":[]}}",
  };
  for (size_t i = 0; i < MG_ARRAY_LEN(bad); i++) {
    struct exp x = {0};
    add(&x, strdup(bad[i]));
    assert_int_equal(run1(&x, &r), MG_LINEAGE_E_FORMAT);
    assert_int_equal(r.bad_line, 1);
    exp_free(&x);
  }
  /* the last line without its LF still counts; a CRLF export changes the leaf bytes */
  {
    struct log *C = log_new(ORIGIN, 5);
    uint64_t c5[] = {5};
    struct exp y = {0};
    build_full(&y, C, 0, 5, c5, 1, true);
    struct mg_buf b;
    mg_buf_init(&b);
    for (size_t i = 0; i < y.n; i++) {
      if (i) mg_buf_appends(&b, "\n");
      mg_buf_appends(&b, y.l[i]);
    }
    FILE *f = fmemopen(b.data, b.len, "r");
    const char *v[1] = {k_main.vkey};
    assert_int_equal(mg_lineage_verify(f, v, 1, &r), 0);
    fclose(f);
    char *e2 = y.l[2];
    assert_true(asprintf(&y.l[2], "%s\r", e2) > 0);
    free(e2);
    EXPECT_FAIL(&y, 2, "edited");
    mg_buf_clear(&b);
    exp_free(&y);
    log_free(C);
  }
  /* no keys / a malformed key */
  struct exp x = {0};
  assert_int_equal(run(&x, NULL, 0, &r), MG_LINEAGE_E_KEY);
  const char *junk[1] = {"nonsense"};
  assert_int_equal(run(&x, junk, 1, &r), MG_LINEAGE_E_KEY);
  log_free(A);
  log_free(B);
}

static void test_keygen(void **state) {
  (void)state;
  char dir[128], path[160];
  snprintf(dir, sizeof dir, "%s/keys/sub", tmpdir);
  assert_int_equal(mg_lineage_keygen("keys.example/log", dir), 0);
  struct stat st;
  snprintf(path, sizeof path, "%s/lineage.key", dir);
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  struct mg_note_signer *s = NULL;
  assert_int_equal(mg_note_signer_load(path, "keys.example/log", &s), 0);
  char *vk = mg_note_signer_vkey(s), *file = NULL;
  size_t n;
  snprintf(path, sizeof path, "%s/lineage.vkey", dir);
  assert_int_equal(mg_file_read(path, 4096, &file, &n), 0);
  assert_int_equal(n, strlen(vk) + 1);
  assert_memory_equal(file, vk, strlen(vk));
  assert_int_equal(file[n - 1], '\n');
  /* the pair works end to end: sign a checkpoint, verify with the file's vkey */
  struct mg_note_verifier *v = NULL;
  assert_int_equal(mg_note_verifier_parse(file, n, &v), 0);
  char *note = NULL;
  const char *body = "keys.example/log\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n";
  assert_int_equal(mg_note_sign(body, strlen(body), &s, 1, &note), 0);
  assert_int_equal(mg_note_verify(note, strlen(note), &v, 1, NULL, NULL), 0);
  /* refuses to overwrite */
  assert_int_equal(mg_lineage_keygen("keys.example/log", dir), -EEXIST);
  char *again = NULL;
  assert_int_equal(mg_file_read(path, 4096, &again, &n), 0);
  assert_string_equal(again, file);
  assert_int_equal(mg_lineage_keygen("bad name", tmpdir), MG_LINEAGE_E_KEY);
  free(again);
  free(note);
  mg_note_verifier_free(v);
  free(file);
  free(vk);
  mg_note_signer_free(s);
}

/* Throughput: 200k entries, a checkpoint every 10k, no assertion on speed (sanitizer builds
 * are slow), the number is printed for the report. */
static void test_throughput(void **state) {
  (void)state;
  size_t N = 200000;
  struct log *L = log_new(ORIGIN, N);
  struct mg_buf b;
  mg_buf_init(&b);
  for (size_t i = 0; i < N; i++) {
    mg_buf_appends(&b, L->lines[i]);
    mg_buf_appends(&b, "\n");
    if ((i + 1) % 10000 == 0) {
      char *c = cp_line(L, i + 1, (int64_t)(i + 1 - 10000));
      mg_buf_appends(&b, c);
      mg_buf_appends(&b, "\n");
      free(c);
    }
  }
  FILE *f = fmemopen(b.data, b.len, "r");
  const char *v[1] = {k_main.vkey};
  struct mg_lineage_verify_result r;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  assert_int_equal(mg_lineage_verify(f, v, 1, &r), 0);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  fclose(f);
  double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
  printf("verify: %zu entries (%zu bytes) in %.3f s = %.0f entries/s\n", N, b.len, s, (double)N / s);
  assert_int_equal(r.entries, N);
  mg_buf_clear(&b);
  log_free(L);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_intact),
      cmocka_unit_test(test_edited),
      cmocka_unit_test(test_deleted_reordered_inserted),
      cmocka_unit_test(test_appended_truncated),
      cmocka_unit_test(test_forged_unknown),
      cmocka_unit_test(test_time_origin),
      cmocka_unit_test(test_filtered),
      cmocka_unit_test(test_prefix),
      cmocka_unit_test(test_origins_and_format),
      cmocka_unit_test(test_keygen),
      cmocka_unit_test(test_throughput),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
