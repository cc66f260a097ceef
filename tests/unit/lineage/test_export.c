/* test_export.c — exports of a real log: unfiltered (checkpoint lines with leaves after the
 * last entry they cover, ending at the latest checkpoint), --since (prefix line), filtered
 * (proof lines, outcomes follow their access entries), OpenLineage events; each ndjson
 * export passes mg_lineage_verify and a tampered copy fails it; proofs JSON; a reader that
 * went away (EPIPE) ends the export promptly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <unistd.h>
#include <cmocka.h>

#include <jansson.h>

#include "lineage/lineage_store.h"

static char tmpdir[64], db[128], keyp[128];
static char *vkey;
static const char ORIGIN[] = "lineage.test/orders/exp";
static int64_t t_mid; /* wall time between the two halves of the log */

static void on_done(void *arg, int status, uint64_t index) {
  (void)index;
  *(volatile int *)arg = status == 0 ? 1 : -1;
}

static void submit(struct mg_lineage_writer *w, int i, bool wait) {
  struct mg_lineage_access a = {0};
  char rid[37];
  static const char *const groups[] = {"group:analysts", "group:emea"};
  snprintf(rid, sizeof rid, "0190d6b0-0000-7000-8000-%012d", i);
  a.request_id = rid;
  a.principal = i % 3 == 0 ? "user:alice" : "user:bob";
  a.groups = i % 3 == 0 ? groups : NULL;
  a.ngroups = i % 3 == 0 ? 2 : 0;
  a.product = "orders";
  a.dataset = i % 2 ? "orders_fact" : "customers";
  a.action = i % 4 == 1 ? "write" : "read";
  a.method = i % 4 == 1 ? "POST" : "GET";
  a.path = "/datasets/x";
  a.decision = i % 5 == 4 ? "deny" : "allow";
  a.peer = "10.1.1.1:9";
  struct mg_lineage_rec *rec = NULL;
  volatile int done = 0;
  assert_int_equal(mg_lineage_submit_access(w, &a, wait ? on_done : NULL, (void *)&done,
                                            a.decision[0] == 'a' ? &rec : NULL), 0);
  if (wait) while (!done) usleep(50);
  if (rec) {
    struct mg_lineage_outcome o = {.request_id = rid, .status = i % 7 == 0 ? 502 : 200,
                                   .reset = i % 11 == 0 ? 2 : -1, .bytes_in = 5,
                                   .bytes_out = 100 + (uint64_t)i, .duration_us = 10};
    assert_int_equal(mg_lineage_submit_outcome(w, rec, &o), 0);
  }
}

static int setup(void **state) {
  (void)state;
  char *pem = NULL;
  strcpy(tmpdir, "/tmp/mg-lx-XXXXXX");
  if (!mkdtemp(tmpdir)) return -1;
  snprintf(db, sizeof db, "%s/db", tmpdir);
  snprintf(keyp, sizeof keyp, "%s/k.key", tmpdir);
  mg_mkdir_p(db, 0700);
  if (mg_note_keygen(ORIGIN, &pem, &vkey) || mg_file_write_atomic(keyp, pem, strlen(pem), 0600))
    return -1;
  free(pem);
  /* a log with several checkpoints: 300 requests in two halves, checkpoints in between */
  struct mg_lineage_config c = {.db = db, .map_size_mb = 64, .signing_key = keyp,
                                .origin = ORIGIN, .durability = MG_LINEAGE_WRITE_AHEAD,
                                .checkpoint_every_ms = 20, .deny_entries_per_s = 1000};
  struct mg_lineage_writer *w;
  if (mg_lineage_writer_open(&c, &w)) return -1;
  for (int i = 0; i < 150; i++) {
    submit(w, i, true);
    if (i % 30 == 0) usleep(25000);
  }
  char *note;
  if (mg_lineage_checkpoint_now(w, &note)) return -1;
  free(note);
  usleep(20000);
  t_mid = mg_time_now_us();
  usleep(20000);
  for (int i = 150; i < 300; i++) {
    submit(w, i, i % 3 == 0);
    if (i % 40 == 0) usleep(25000);
  }
  mg_lineage_writer_close(w);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  char cmd[160];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
  free(vkey);
  return system(cmd) == 0 ? 0 : -1;
}

/* Export the log in dir into memory. */
/* noinline: inlined, gcc 12 takes the memstream buffer for a pointer to a local */
__attribute__((noinline)) static char *export_db(const char *dir, const struct mg_lineage_filter *f,
                       enum mg_lineage_format fmt, size_t *len) {
  struct mg_lineage_reader *r;
  char *buf = NULL;
  size_t n = 0;
  FILE *out = open_memstream(&buf, &n);
  assert_int_equal(mg_lineage_reader_open(dir, &r), 0);
  assert_int_equal(mg_lineage_export(r, f, fmt, out), 0);
  fclose(out);
  mg_lineage_reader_close(r);
  if (len) *len = n;
  return buf;
}


static int verify_(const char *text, size_t n, struct mg_lineage_verify_result *res) {
  FILE *in = fmemopen((void *)text, n, "r");
  const char *keys[] = {vkey};
  memset(res, 0, sizeof *res);
  int rc = mg_lineage_verify(in, keys, 1, res);
  fclose(in);
  return rc;
}

static size_t count(const char *text, const char *needle) {
  size_t n = 0;
  for (const char *p = text; (p = strstr(p, needle)); p++) n++;
  return n;
}

static void test_unfiltered(void **state) {
  (void)state;
  size_t n;
  char *x = export_db(db, NULL, MG_LINEAGE_NDJSON, &n);
  /* each line: an entry (with index, from 0, contiguous) or a checkpoint with leaves */
  uint64_t next = 0, cps = 0;
  size_t since_cp = 0;
  const char *last_line = NULL;
  for (char *p = x, *nl; *p; p = nl + 1) {
    nl = strchr(p, '\n');
    assert_non_null(nl);
    json_t *j = json_loadb(p, (size_t)(nl - p), 0, NULL);
    assert_non_null(j);
    if (json_object_get(j, "index")) {
      assert_int_equal(json_integer_value(json_object_get(j, "index")), next++);
      since_cp++;
    } else {
      const char *note = json_string_value(json_object_get(j, "checkpoint"));
      const char *leaves = json_string_value(json_object_get(j, "leaves"));
      assert_non_null(note);
      assert_non_null(leaves);
      assert_int_equal(strlen(leaves), 4 * ((since_cp * 32 + 2) / 3));
      char want[64];
      snprintf(want, sizeof want, "%s\n%" PRIu64 "\n", ORIGIN, next); /* right after its last entry */
      assert_memory_equal(note, want, strlen(want));
      since_cp = 0;
      cps++;
    }
    last_line = p;
    json_decref(j);
  }
  assert_true(cps >= 3);
  assert_non_null(strstr(last_line, "{\"checkpoint\":")); /* ends with a checkpoint */
  assert_true(next >= 300);
  struct mg_lineage_verify_result res;
  assert_int_equal(verify_(x, n, &res), 0);
  assert_int_equal(res.entries, next);
  /* tampering: change one byte of an entry in the middle */
  char *t = strdup(x);
  char *victim = strstr(t, "\"index\":123,");
  assert_non_null(victim);
  char *u = strstr(victim, "user:");
  assert_non_null(u);
  u[5] = u[5] == 'a' ? 'b' : 'a';
  assert_int_not_equal(verify_(t, n, &res), 0);
  assert_int_equal(res.bad_index, 123);
  /* truncated tail (drop the last checkpoint line) */
  memcpy(t, x, n);
  t[(size_t)(last_line - x)] = 0;
  assert_int_not_equal(verify_(t, (size_t)(last_line - x), &res), 0);
  free(t);
  free(x);
}

static void test_since_prefix(void **state) {
  (void)state;
  struct mg_lineage_filter f;
  mg_lineage_filter_init(&f);
  f.since_us = t_mid;
  size_t n;
  char *x = export_db(db, &f, MG_LINEAGE_NDJSON, &n);
  assert_memory_equal(x, "{\"prefix\":{\"origin\":", 20);
  json_t *p = json_loadb(x, (size_t)(strchr(x, '\n') - x), 0, NULL);
  json_int_t k = json_integer_value(json_object_get(json_object_get(p, "prefix"), "size"));
  assert_true(k > 150 && k < 400);
  json_decref(p);
  /* the first entry is index k and is not older than since */
  char *first = strchr(x, '\n') + 1;
  json_t *e = json_loadb(first, (size_t)(strchr(first, '\n') - first), 0, NULL);
  assert_int_equal(json_integer_value(json_object_get(e, "index")), k);
  int64_t t;
  const char *ts = json_string_value(json_object_get(e, "time"));
  assert_int_equal(mg_time_parse_rfc3339(ts, strlen(ts), &t), 0);
  assert_true(t >= t_mid);
  json_decref(e);
  struct mg_lineage_verify_result res;
  assert_int_equal(verify_(x, n, &res), 0);
  free(x);
}

static void test_filtered(void **state) {
  (void)state;
  struct mg_lineage_filter f;
  mg_lineage_filter_init(&f);
  f.principal = "group:analysts"; /* alice's requests carry it */
  f.action = "read";
  size_t n;
  char *x = export_db(db, &f, MG_LINEAGE_NDJSON, &n);
  size_t entries = 0, proofs = 0, outcomes = 0;
  json_t *prev = NULL;
  for (char *p = x, *nl; *p; p = nl + 1) {
    nl = strchr(p, '\n');
    json_t *j = json_loadb(p, (size_t)(nl - p), 0, NULL);
    assert_non_null(j);
    if (json_object_get(j, "index")) {
      entries++;
      if (json_object_get(j, "of")) {
        outcomes++;
      } else {
        assert_string_equal(json_string_value(json_object_get(j, "principal")), "user:alice");
        assert_string_equal(json_string_value(json_object_get(j, "action")), "read");
      }
    } else if (json_object_get(j, "proof")) {
      proofs++;
      assert_non_null(prev);
      assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "proof"), "index")),
                       json_integer_value(json_object_get(prev, "index")));
    } else {
      assert_non_null(json_object_get(j, "checkpoint"));
      assert_null(json_object_get(j, "leaves"));
      assert_int_equal(nl[1], 0); /* last line */
    }
    json_decref(prev);
    prev = j;
  }
  json_decref(prev);
  assert_true(entries > 20);
  assert_int_equal(entries, proofs);
  assert_true(outcomes > 5);
  struct mg_lineage_verify_result res;
  assert_int_equal(verify_(x, n, &res), 0);
  char *u = strstr(x, "user:alice");
  u[5] = 'A';
  assert_int_not_equal(verify_(x, n, &res), 0);
  free(x);
  /* a filter that matches nothing: just the checkpoint */
  f.principal = "user:nobody";
  x = export_db(db, &f, MG_LINEAGE_NDJSON, &n);
  assert_int_equal(count(x, "\n"), 1);
  assert_memory_equal(x, "{\"checkpoint\":", 14);
  assert_non_null(strstr(x, ",\"filtered\":1}"));
  assert_int_equal(verify_(x, n, &res), 0);   /* nothing matched: nothing to prove */
  assert_int_equal(res.entries, 0);
  /* without the marker the same lines read as an unfiltered export whose entries are gone */
  char *m = strstr(x, ",\"filtered\":1}");
  memmove(m, m + 13, strlen(m + 13) + 1);
  assert_int_not_equal(verify_(x, strlen(x), &res), 0);
  free(x);
}

/* --since after the last checkpoint: prefix + that checkpoint, which verifies. */
static void test_since_after_end(void **state) {
  (void)state;
  struct mg_lineage_filter f;
  mg_lineage_filter_init(&f);
  f.since_us = mg_time_now_us() + 3600 * 1000000LL;
  size_t n;
  char *x = export_db(db, &f, MG_LINEAGE_NDJSON, &n);
  assert_int_equal(count(x, "\n"), 2);
  assert_memory_equal(x, "{\"prefix\":", 10);
  struct mg_lineage_verify_result res;
  assert_int_equal(verify_(x, n, &res), 0);
  assert_int_equal(res.entries, 0);
  free(x);
}

static void test_openlineage(void **state) {
  (void)state;
  size_t n;
  char *x = export_db(db, NULL, MG_LINEAGE_OPENLINEAGE, &n);
  size_t events = 0, fail = 0, abort_ = 0, outputs = 0;
  for (char *p = x, *nl; *p; p = nl + 1) {
    nl = strchr(p, '\n');
    json_t *j = json_loadb(p, (size_t)(nl - p), 0, NULL);
    assert_non_null(j);
    events++;
    const char *type = json_string_value(json_object_get(j, "eventType"));
    if (!strcmp(type, "FAIL")) fail++;
    else if (!strcmp(type, "ABORT")) abort_++;
    else assert_string_equal(type, "COMPLETE");
    json_t *run = json_object_get(j, "run");
    assert_int_equal(strlen(json_string_value(json_object_get(run, "runId"))), 36);
    json_t *fa = json_object_get(json_object_get(run, "facets"), "meshgate_access");
    assert_non_null(json_object_get(fa, "_producer"));
    assert_non_null(json_object_get(fa, "_schemaURL"));
    assert_string_equal(json_string_value(json_object_get(fa, "decision")), "allow");
    assert_string_equal(json_string_value(json_object_get(fa, "origin")), ORIGIN);
    assert_true(json_is_integer(json_object_get(fa, "index")));
    json_t *job = json_object_get(j, "job");
    assert_string_equal(json_string_value(json_object_get(job, "namespace")), ORIGIN);
    assert_string_equal(json_string_value(json_object_get(job, "name")), "orders");
    json_t *ds = json_array_get(json_object_get(j, "outputs"), 0);
    if (ds) {
      outputs++;
      assert_null(json_array_get(json_object_get(j, "inputs"), 0));
    } else {
      ds = json_array_get(json_object_get(j, "inputs"), 0);
    }
    assert_string_equal(json_string_value(json_object_get(ds, "namespace")), "meshgate://orders");
    json_decref(j);
  }
  assert_int_equal(events, 240); /* 300 requests, every fifth denied */
  assert_true(fail > 0 && abort_ > 0 && outputs > 0);
  free(x);
}

static void test_proofs_json(void **state) {
  (void)state;
  struct mg_lineage_reader *r;
  char *j = NULL;
  assert_int_equal(mg_lineage_reader_open(db, &r), 0);
  assert_int_equal(mg_lineage_reader_inclusion(r, 5, 100, &j), 0);
  assert_memory_equal(j, "{\"index\":5,\"size\":100,\"leaf\":\"", 30);
  free(j);
  assert_int_equal(mg_lineage_reader_inclusion(r, 100, 100, &j), MG_LINEAGE_E_RANGE);
  assert_int_equal(mg_lineage_reader_inclusion(r, 0, 1u << 30, &j), MG_LINEAGE_E_RANGE);
  assert_int_equal(mg_lineage_reader_consistency(r, 10, 100, &j), 0);
  json_t *p = json_loads(j, 0, NULL);
  assert_int_equal(json_integer_value(json_object_get(p, "from")), 10);
  assert_true(json_array_size(json_object_get(p, "hashes")) > 0);
  json_decref(p);
  free(j);
  assert_int_equal(mg_lineage_reader_consistency(r, 100, 10, &j), MG_LINEAGE_E_RANGE);
  /* the export stops promptly when its reader goes away */
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  close(fds[0]);
  signal(SIGPIPE, SIG_IGN);
  FILE *out = fdopen(fds[1], "w");
  assert_int_equal(mg_lineage_export(r, NULL, MG_LINEAGE_NDJSON, out), -EPIPE);
  fclose(out);
  mg_lineage_reader_close(r);
}

/* Retention: entries read back from the stream and older than retention_s leave the local
 * log (here reported by hand, as the shipper's audit does); what stays is provable: the export starts
 * with the prefix frontier and verifies, filtered exports' inclusion proofs verify, a
 * consistency proof from a size past the pruned point exists, the writer reopens on it. */
static void test_pruned(void **state) {
  (void)state;
  char pdb[160];
  snprintf(pdb, sizeof pdb, "%s/pruned", tmpdir);
  assert_int_equal(mg_mkdir_p(pdb, 0700), 0);
  struct mg_lineage_config c = {.db = pdb, .map_size_mb = 64, .signing_key = keyp,
                                .origin = ORIGIN, .durability = MG_LINEAGE_WRITE_AHEAD,
                                .checkpoint_every_ms = 20, .deny_entries_per_s = 1000,
                                .retention_s = 1};
  struct mg_lineage_writer *w;
  struct mg_lineage_stats st;
  assert_int_equal(mg_lineage_writer_open(&c, &w), 0);
  for (int i = 0; i < 100; i++) submit(w, i, true);
  mg_lineage_writer_stats(w, &st);
  uint64_t before = st.size;
  assert_true(before > 150);
  mg_lineage_writer_ack(w, 120, 0); /* entries 0..119 were read back from the stream */
  usleep(1100000);               /* and older than the retention */
  for (int i = 100; i < 110; i++) submit(w, i, true);
  char *note;
  assert_int_equal(mg_lineage_checkpoint_now(w, &note), 0);
  free(note);
  mg_lineage_writer_close(w);
  /* reopens on the pruned log (its frontier comes from the kept subtree hashes) */
  assert_int_equal(mg_lineage_writer_open(&c, &w), 0);
  for (int i = 110; i < 115; i++) submit(w, i, true);
  assert_int_equal(mg_lineage_checkpoint_now(w, &note), 0);
  free(note);
  mg_lineage_writer_stats(w, &st);
  uint64_t size = st.size;
  mg_lineage_writer_close(w);

  struct mg_lineage_reader *r;
  assert_int_equal(mg_lineage_reader_open(pdb, &r), 0);
  MDB_txn *txn;
  const char *line;
  size_t len;
  MDB_stat ns;
  assert_int_equal(mg_lineage_log_txn(r->log, false, &txn), 0);
  assert_int_equal(mg_lineage_log_pruned_txn(r->log, txn), 120);
  assert_int_equal(mg_lineage_log_entry_txn(r->log, txn, 119, &line, &len), MG_ERR_NOTFOUND);
  assert_int_equal(mg_lineage_log_entry_txn(r->log, txn, 120, &line, &len), 0);
  assert_int_equal(mdb_stat(txn, r->log->nodes, &ns), 0);
  /* at most two subtree hashes per remaining leaf, plus the frontier of 120 (4 hashes) */
  assert_true(ns.ms_entries <= 2 * (size - 120) + 4);
  mdb_txn_abort(txn);
  char *j = NULL;
  assert_int_equal(mg_lineage_reader_consistency(r, 130, size, &j), 0);
  free(j);
  assert_int_equal(mg_lineage_reader_inclusion(r, 150, size, &j), 0);
  free(j);
  mg_lineage_reader_close(r);

  /* the unfiltered export starts at 120 with the prefix, and verifies */
  size_t n = 0;
  char *buf = export_db(pdb, NULL, MG_LINEAGE_NDJSON, &n);
  assert_memory_equal(buf, "{\"prefix\":{\"origin\":", 20);
  assert_non_null(strstr(buf, "\"size\":120,"));
  struct mg_lineage_verify_result res;
  assert_int_equal(verify_(buf, n, &res), 0);
  assert_int_equal(res.entries, size - 120);
  free(buf);
  /* a filtered export: inclusion proofs through the kept frontier verify */
  struct mg_lineage_filter f;
  mg_lineage_filter_init(&f);
  f.principal = "user:alice";
  buf = export_db(pdb, &f, MG_LINEAGE_NDJSON, &n);
  assert_int_equal(verify_(buf, n, &res), 0);
  assert_true(res.entries > 5);
  free(buf);
}

int main(void) {
  mg_lineage_init();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_unfiltered),  cmocka_unit_test(test_since_prefix),
      cmocka_unit_test(test_filtered),    cmocka_unit_test(test_openlineage),
      cmocka_unit_test(test_proofs_json), cmocka_unit_test(test_since_after_end),
      cmocka_unit_test(test_pruned),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
