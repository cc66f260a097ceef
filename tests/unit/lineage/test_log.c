/* test_log.c — the LMDB log: read-only opens (a missing log, a second process reading
 * while the writer runs), one environment per directory per process, recovery at open
 * (size, frontier, last time: the tree continues where it stopped and time never goes
 * back), checkpoint lookup by size, mg_lineage_log_read ranges. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <inttypes.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include <jansson.h>

#include "lineage/lineage_store.h"

static char tmpdir[64], db[128], keyp[128];
static const char ORIGIN[] = "lineage.test/log";

static int setup(void **state) {
  (void)state;
  char *pem = NULL, *vkey = NULL;
  strcpy(tmpdir, "/tmp/mg-ll-XXXXXX");
  if (!mkdtemp(tmpdir)) return -1;
  snprintf(db, sizeof db, "%s/db", tmpdir);
  snprintf(keyp, sizeof keyp, "%s/k.key", tmpdir);
  if (mg_note_keygen(ORIGIN, &pem, &vkey) || mg_file_write_atomic(keyp, pem, strlen(pem), 0600))
    return -1;
  free(pem);
  free(vkey);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  char cmd[160];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
  return system(cmd) == 0 ? 0 : -1;
}

static struct mg_lineage_config cfg(void) {
  struct mg_lineage_config c = {.db = db, .map_size_mb = 16, .signing_key = keyp,
                                .origin = ORIGIN, .durability = MG_LINEAGE_WRITE_AHEAD,
                                .checkpoint_every_ms = 10000, .deny_entries_per_s = 100};
  return c;
}

static void on_done(void *arg, int status, uint64_t index) {
  (void)status;
  *(volatile uint64_t *)arg = index + 1;
}

static uint64_t submit_wait(struct mg_lineage_writer *w) {
  struct mg_lineage_policy_write p = {.request_id = "r", .editor = "user:admin",
                                      .product = "orders", .grant = "g", .old_revision = "a",
                                      .new_revision = "b"};
  volatile uint64_t got = 0;
  assert_int_equal(mg_lineage_submit_policy(w, &p, on_done, (void *)&got), 0);
  while (!got) usleep(50);
  return got - 1;
}

struct rd {
  uint64_t n, first, last;
};
static int count_cb(void *arg, uint64_t index, const char *line, size_t len) {
  struct rd *r = arg;
  if (!r->n) r->first = index;
  r->last = index;
  r->n++;
  assert_true(len > 10 && line[0] == '{' && line[len - 1] == '}');
  return r->n == 5 ? 1 : 0; /* nonzero stops */
}

static void test_open_and_registry(void **state) {
  (void)state;
  struct mg_lineage_reader *r;
  assert_int_equal(mg_lineage_reader_open(db, &r), -ENOENT); /* no directory */
  mg_mkdir_p(db, 0700);
  assert_true(mg_lineage_reader_open(db, &r) < 0); /* no environment yet */
  struct mg_lineage_config c = cfg();
  struct mg_lineage_writer *w;
  assert_int_equal(mg_lineage_writer_open(&c, &w), 0);
  for (int i = 0; i < 10; i++) assert_int_equal(submit_wait(w), i);
  /* a reader in the same process shares the writer's environment */
  assert_int_equal(mg_lineage_reader_open(db, &r), 0);
  assert_ptr_equal(r->log, mg_lineage_writer_log(w));
  assert_int_equal(mg_lineage_log_size(r->log), 10);
  struct rd rd = {0};
  assert_int_equal(mg_lineage_log_read(r->log, 3, 100, count_cb, &rd), 1);
  assert_int_equal(rd.first, 3);
  assert_int_equal(rd.last, 7);
  memset(&rd, 0, sizeof rd);
  assert_int_equal(mg_lineage_log_read(r->log, 8, 100, count_cb, &rd), 0);
  assert_int_equal(rd.n, 2);
  memset(&rd, 0, sizeof rd);
  assert_int_equal(mg_lineage_log_read(r->log, 50, 100, count_cb, &rd), 0);
  assert_int_equal(rd.n, 0);
  mg_lineage_reader_close(r);
  /* another process reads read-only while the writer runs */
  pid_t pid = fork();
  if (pid == 0) {
    struct mg_lineage_reader *cr;
    char *note = NULL;
    uint64_t s = 0;
    if (mg_lineage_reader_open(db, &cr)) _exit(2);
    if (mg_lineage_log_size(cr->log) != 10) _exit(3);
    if (mg_lineage_reader_checkpoint(cr, &note, &s) || s != 10) _exit(4);
    free(note);
    mg_lineage_reader_close(cr);
    _exit(0);
  }
  char *note = NULL;
  assert_int_equal(mg_lineage_checkpoint_now(w, &note), 0);
  free(note);
  int st;
  waitpid(pid, &st, 0);
  /* the child may have run before the checkpoint: retry once after it */
  if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
    pid = fork();
    if (pid == 0) {
      struct mg_lineage_reader *cr;
      char *n2 = NULL;
      uint64_t s = 0;
      _exit(mg_lineage_reader_open(db, &cr) || mg_lineage_reader_checkpoint(cr, &n2, &s) || s != 10);
    }
    waitpid(pid, &st, 0);
  }
  assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  mg_lineage_writer_close(w);
}

static void test_recovery(void **state) {
  (void)state;
  struct mg_lineage_config c = cfg();
  struct mg_lineage_writer *w;
  /* three sessions; each reopen continues the indexes and the tree */
  for (int s = 0; s < 3; s++) {
    assert_int_equal(mg_lineage_writer_open(&c, &w), 0);
    struct mg_lineage_stats st;
    mg_lineage_writer_stats(w, &st);
    assert_int_equal(st.size, 10 + 7 * s);
    assert_int_equal(st.checkpoint_size, st.size);
    for (int i = 0; i < 7; i++) assert_int_equal(submit_wait(w), 10 + 7 * s + i);
    mg_lineage_writer_close(w);
  }
  /* the stored tree equals a tree rebuilt from the lines; checkpoint lookup by size */
  struct mg_lineage_reader *r;
  assert_int_equal(mg_lineage_reader_open(db, &r), 0);
  MDB_txn *txn;
  assert_int_equal(mg_lineage_log_txn(r->log, false, &txn), 0);
  struct mg_merkle_frontier fr, stored;
  mg_merkle_frontier_init(&fr);
  int64_t prev = 0;
  for (uint64_t i = 0; i < 31; i++) {
    const char *line;
    size_t len;
    uint8_t leaf[MG_HASH_LEN];
    assert_int_equal(mg_lineage_log_entry_txn(r->log, txn, i, &line, &len), 0);
    mg_merkle_leaf_hash(line, len, leaf);
    assert_int_equal(mg_merkle_frontier_append(&fr, leaf, NULL, NULL), 0);
    const char *tp = strstr(line, "\"time\":\"") + 8;
    int64_t t;
    assert_int_equal(mg_time_parse_rfc3339(tp, 27, &t), 0);
    assert_true(t >= prev);
    prev = t;
  }
  struct mg_lineage_nodes_ctx nc = {r->log, txn};
  assert_int_equal(mg_merkle_frontier_load(&stored, 31, mg_lineage_log_get_node, &nc), 0);
  uint8_t r1[MG_HASH_LEN], r2[MG_HASH_LEN];
  mg_merkle_frontier_root(&fr, r1);
  mg_merkle_frontier_root(&stored, r2);
  assert_memory_equal(r1, r2, MG_HASH_LEN);
  char *note = NULL;
  uint64_t s = 0;
  assert_int_equal(mg_lineage_log_checkpoint_txn(r->log, txn, UINT64_MAX, &note, &s), 0);
  assert_int_equal(s, 31);
  free(note);
  assert_int_equal(mg_lineage_log_checkpoint_txn(r->log, txn, 30, &note, &s), 0);
  assert_int_equal(s, 24);
  free(note);
  assert_int_equal(mg_lineage_log_checkpoint_txn(r->log, txn, 9, &note, &s), MG_ERR_NOTFOUND);
  uint64_t v = 0;
  assert_int_equal(mg_lineage_log_meta_get_u64(r->log, txn, "size", &v), 0);
  assert_int_equal(v, 31);
  mdb_txn_abort(txn);
  mg_lineage_reader_close(r);
}

/* A log whose node keys predate the completion-order layout is refused by name, read-only
 * or not; a new log is stamped with layout 2. */
static void raw_log(const char *dir, const char *layout) {
  MDB_env *env;
  MDB_txn *txn;
  MDB_dbi nodes, meta, other;
  assert_int_equal(mdb_env_create(&env), 0);
  assert_int_equal(mdb_env_set_maxdbs(env, 4), 0);
  assert_int_equal(mdb_env_open(env, dir, 0, 0600), 0);
  assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
  assert_int_equal(mdb_dbi_open(txn, "nodes", MDB_CREATE, &nodes), 0);
  assert_int_equal(mdb_dbi_open(txn, "meta", MDB_CREATE, &meta), 0);
  assert_int_equal(mdb_dbi_open(txn, "entries", MDB_CREATE, &other), 0);
  assert_int_equal(mdb_dbi_open(txn, "checkpoints", MDB_CREATE, &other), 0);
  uint8_t k[9] = {0}, h[MG_HASH_LEN] = {0};
  MDB_val key = {9, k}, val = {MG_HASH_LEN, h};
  assert_int_equal(mdb_put(txn, nodes, &key, &val, 0), 0);
  if (layout) {
    MDB_val mk = {6, (void *)"layout"}, mv = {strlen(layout), (void *)layout};
    assert_int_equal(mdb_put(txn, meta, &mk, &mv, 0), 0);
  }
  assert_int_equal(mdb_txn_commit(txn), 0);
  mdb_env_close(env);
}

static void test_layout(void **state) {
  (void)state;
  char dir[160];
  struct mg_lineage_log *l = NULL;
  snprintf(dir, sizeof dir, "%s/old", tmpdir);
  assert_int_equal(mkdir(dir, 0700), 0);
  raw_log(dir, NULL);
  assert_int_equal(mg_lineage_log_open(dir, 16, false, &l), MG_LINEAGE_E_LAYOUT);
  assert_int_equal(mg_lineage_log_open(dir, 0, true, &l), MG_LINEAGE_E_LAYOUT);
  assert_non_null(strstr(mg_strerror(MG_LINEAGE_E_LAYOUT), "layout"));
  snprintf(dir, sizeof dir, "%s/v1", tmpdir);
  assert_int_equal(mkdir(dir, 0700), 0);
  raw_log(dir, "1");
  assert_int_equal(mg_lineage_log_open(dir, 16, false, &l), MG_LINEAGE_E_LAYOUT);
  snprintf(dir, sizeof dir, "%s/new", tmpdir);
  assert_int_equal(mkdir(dir, 0700), 0);
  assert_int_equal(mg_lineage_log_open(dir, 16, false, &l), 0);
  MDB_txn *txn;
  char *v = NULL;
  assert_int_equal(mg_lineage_log_txn(l, false, &txn), 0);
  assert_int_equal(mg_lineage_log_meta_get_str(l, txn, "layout", &v), 0);
  assert_string_equal(v, "2");
  free(v);
  mdb_txn_abort(txn);
  mg_lineage_log_close(l);
  /* and it opens again, stamped */
  assert_int_equal(mg_lineage_log_open(dir, 0, true, &l), 0);
  mg_lineage_log_close(l);
}

static void test_time_never_back(void **state) {
  (void)state;
  /* a last entry stamped in the future (a clock that stepped back since): new entries
   * keep that time instead of going back */
  struct mg_lineage_reader *r;
  assert_int_equal(mg_lineage_reader_open(db, &r), 0);
  mg_lineage_reader_close(r);
  struct mg_lineage_log *log;
  assert_int_equal(mg_lineage_log_open(db, 16, false, &log), 0);
  MDB_txn *txn;
  assert_int_equal(mg_lineage_log_txn(log, true, &txn), 0);
  int64_t future = mg_time_now_us() + 3600LL * 1000000;
  assert_int_equal(mg_lineage_log_meta_put_u64(log, txn, "last_time_us", (uint64_t)future), 0);
  assert_int_equal(mdb_txn_commit(txn), 0);
  mg_lineage_log_close(log);
  struct mg_lineage_config c = cfg();
  struct mg_lineage_writer *w;
  assert_int_equal(mg_lineage_writer_open(&c, &w), 0);
  uint64_t idx = submit_wait(w);
  mg_lineage_writer_close(w);
  assert_int_equal(mg_lineage_reader_open(db, &r), 0);
  assert_int_equal(mg_lineage_log_txn(r->log, false, &txn), 0);
  const char *line;
  size_t len;
  assert_int_equal(mg_lineage_log_entry_txn(r->log, txn, idx, &line, &len), 0);
  char want[MG_RFC3339_LEN];
  mg_time_format_rfc3339(future, want);
  assert_non_null(memmem(line, len, want, 27));
  mdb_txn_abort(txn);
  mg_lineage_reader_close(r);
}

int main(void) {
  mg_lineage_init();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_open_and_registry),
      cmocka_unit_test(test_recovery),
      cmocka_unit_test(test_time_never_back),
      cmocka_unit_test(test_layout),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
