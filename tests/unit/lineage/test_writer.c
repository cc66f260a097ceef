/* test_writer.c — the group-commit writer on a real LMDB log in a mkdtemp directory, with
 * real threads: concurrent write-ahead submits (each callback once, contiguous distinct
 * indexes, durable across reopen), async, outcome links, the deny budget's accounting,
 * map full (fail closed, no gap, no repeat), SIGKILL of a writing child, checkpoints on
 * time / at close / on demand, key rotation co-signing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>
#include <cmocka.h>

#include <jansson.h>

#include "lineage/lineage_store.h"

static char tmpdir[64], db[128], key1[128], key2[128];
static char *vkey1, *vkey2;
static const char ORIGIN[] = "lineage.test/orders/h1";

static void keygen(const char *path, char **vkey) {
  char *pem = NULL;
  assert_int_equal(mg_note_keygen(ORIGIN, &pem, vkey), 0);
  assert_int_equal(mg_file_write_atomic(path, pem, strlen(pem), 0600), 0);
  free(pem);
}

static int setup(void **state) {
  (void)state;
  strcpy(tmpdir, "/tmp/mg-lw-XXXXXX");
  if (!mkdtemp(tmpdir)) return -1;
  snprintf(db, sizeof db, "%s/db", tmpdir);
  snprintf(key1, sizeof key1, "%s/k1.key", tmpdir);
  snprintf(key2, sizeof key2, "%s/k2.key", tmpdir);
  mg_mkdir_p(db, 0700);
  keygen(key1, &vkey1);
  keygen(key2, &vkey2);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  char cmd[160];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
  free(vkey1);
  free(vkey2);
  return system(cmd) == 0 ? 0 : -1;
}

static struct mg_lineage_config cfg(enum mg_lineage_durability d) {
  struct mg_lineage_config c = {.db = db, .map_size_mb = 64, .signing_key = key1,
                                .origin = ORIGIN, .durability = d, .checkpoint_every_ms = 100,
                                .deny_entries_per_s = 100};
  return c;
}

static void access_(struct mg_lineage_access *a, const char *rid, const char *decision,
                    const char *peer) {
  memset(a, 0, sizeof *a);
  a->request_id = rid;
  a->principal = "user:alice";
  a->product = "orders";
  a->dataset = "orders_fact";
  a->action = "read";
  a->method = "GET";
  a->path = "/datasets/orders_fact/2024";
  a->decision = decision;
  a->reason = strcmp(decision, "allow") ? "no matching grant" : NULL;
  a->peer = peer;
}

/* All committed entries, parsed. */
struct entries {
  size_t n;
  json_t **e;
  char **line;
};

static int collect(void *arg, uint64_t index, const char *line, size_t len) {
  struct entries *es = arg;
  assert_int_equal(index, es->n);
  es->e = realloc(es->e, (es->n + 1) * sizeof *es->e);
  es->line = realloc(es->line, (es->n + 1) * sizeof *es->line);
  es->line[es->n] = strndup(line, len);
  json_error_t err;
  es->e[es->n] = json_loadb(line, len, 0, &err);
  assert_non_null(es->e[es->n]);
  es->n++;
  return 0;
}

static void read_all(struct entries *es) {
  struct mg_lineage_reader *r;
  memset(es, 0, sizeof *es);
  assert_int_equal(mg_lineage_reader_open(db, &r), 0);
  assert_int_equal(mg_lineage_log_read(r->log, 0, UINT64_MAX, collect, es), 0);
  /* indexes equal positions, times never decrease */
  int64_t prev = INT64_MIN;
  for (size_t i = 0; i < es->n; i++) {
    assert_int_equal(json_integer_value(json_object_get(es->e[i], "index")), i);
    int64_t t;
    const char *ts = json_string_value(json_object_get(es->e[i], "time"));
    assert_non_null(ts);
    assert_int_equal(strlen(ts), 27);
    assert_int_equal(mg_time_parse_rfc3339(ts, strlen(ts), &t), 0);
    assert_true(t >= prev);
    prev = t;
  }
  mg_lineage_reader_close(r);
}

static void free_entries(struct entries *es) {
  for (size_t i = 0; i < es->n; i++) {
    json_decref(es->e[i]);
    free(es->line[i]);
  }
  free(es->e);
  free(es->line);
}

static void wipe(void) {
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s", db, db);
  assert_int_equal(system(cmd), 0);
}

/* Latest checkpoint's size of the closed log. */
static uint64_t cp_size(char **note) {
  struct mg_lineage_reader *r;
  uint64_t s = 0;
  char *n = NULL;
  assert_int_equal(mg_lineage_reader_open(db, &r), 0);
  int rc = mg_lineage_reader_checkpoint(r, &n, &s);
  mg_lineage_reader_close(r);
  if (rc) return 0;
  if (note) *note = n;
  else free(n);
  return s;
}

static size_t count_checkpoints(void) {
  struct mg_lineage_reader *r;
  size_t n = 0;
  uint64_t max = UINT64_MAX, s;
  char *note;
  assert_int_equal(mg_lineage_reader_open(db, &r), 0);
  while (max > 0 && mg_lineage_log_checkpoint(r->log, max, &note, &s) == 0) {
    free(note);
    n++;
    max = s - 1;
  }
  mg_lineage_reader_close(r);
  return n;
}

/* ---- concurrent write-ahead ------------------------------------------------------ */

#define NT 8
#define NM 300

struct done {
  atomic_int calls;
  atomic_int status;
  uint64_t index;
};

static struct done dones[NT * NM];

static void on_done(void *arg, int status, uint64_t index) {
  struct done *d = arg;
  d->index = index;
  atomic_store(&d->status, status);
  atomic_fetch_add(&d->calls, 1);
}

struct thr {
  struct mg_lineage_writer *w;
  int t;
};

static void *submitter(void *arg) {
  struct thr *th = arg;
  for (int m = 0; m < NM; m++) {
    struct mg_lineage_access a;
    char rid[37];
    mg_uuidv7(rid);
    access_(&a, rid, "allow", "10.0.0.1:5000");
    struct done *d = &dones[th->t * NM + m];
    assert_int_equal(mg_lineage_submit_access(th->w, &a, on_done, d, NULL), 0);
    /* wait for durability like a worker does, every few submits */
    if (m % 7 == 0)
      while (atomic_load(&d->calls) == 0) usleep(50);
  }
  return NULL;
}

static void test_write_ahead_concurrent(void **state) {
  (void)state;
  wipe();
  memset(dones, 0, sizeof dones);
  struct mg_lineage_config c = cfg(MG_LINEAGE_WRITE_AHEAD);
  struct mg_lineage_writer *w;
  assert_int_equal(mg_lineage_writer_open(&c, &w), 0);
  pthread_t th[NT];
  struct thr a[NT];
  for (int t = 0; t < NT; t++) {
    a[t] = (struct thr){w, t};
    assert_int_equal(pthread_create(&th[t], NULL, submitter, &a[t]), 0);
  }
  for (int t = 0; t < NT; t++) pthread_join(th[t], NULL);
  for (int i = 0; i < 10000; i++) {
    struct mg_lineage_stats st;
    mg_lineage_writer_stats(w, &st);
    if (st.size == NT * NM) break;
    usleep(1000);
  }
  struct mg_lineage_stats st;
  mg_lineage_writer_stats(w, &st);
  assert_int_equal(st.size, NT * NM);
  assert_true(st.healthy);
  assert_true(st.commits < NT * NM); /* grouped */
  mg_lineage_writer_close(w);
  uint8_t *seen = calloc(NT * NM, 1);
  for (int i = 0; i < NT * NM; i++) {
    assert_int_equal(atomic_load(&dones[i].calls), 1);
    assert_int_equal(atomic_load(&dones[i].status), 0);
    assert_true(dones[i].index < NT * NM);
    assert_int_equal(seen[dones[i].index], 0);
    seen[dones[i].index] = 1;
  }
  free(seen);
  struct entries es;
  read_all(&es);
  assert_int_equal(es.n, NT * NM);
  assert_string_equal(json_string_value(json_object_get(es.e[0], "origin")), ORIGIN);
  free_entries(&es);
  assert_int_equal(cp_size(NULL), NT * NM); /* the checkpoint at close covers all */
}

static void test_async(void **state) {
  (void)state;
  wipe();
  struct mg_lineage_config c = cfg(MG_LINEAGE_ASYNC);
  c.checkpoint_every_ms = 50;
  struct mg_lineage_writer *w;
  assert_int_equal(mg_lineage_writer_open(&c, &w), 0);
  for (int i = 0; i < 5000; i++) {
    struct mg_lineage_access a;
    access_(&a, "0190d6b0-0000-7000-8000-000000000001", "allow", "10.0.0.2:1");
    assert_int_equal(mg_lineage_submit_access(w, &a, NULL, NULL, NULL), 0);
  }
  /* committed in the background without a waiter, within a few periods */
  struct mg_lineage_stats st = {0};
  for (int i = 0; i < 200 && st.size < 5000; i++) {
    usleep(10000);
    mg_lineage_writer_stats(w, &st);
  }
  assert_int_equal(st.size, 5000);
  /* after a lull, a lone entry is committed within the period too */
  usleep(200000);
  struct mg_lineage_access a;
  access_(&a, "0190d6b0-0000-7000-8000-000000000002", "allow", "10.0.0.2:1");
  assert_int_equal(mg_lineage_submit_access(w, &a, NULL, NULL, NULL), 0);
  for (int i = 0; i < 100 && st.size < 5001; i++) {
    usleep(5000);
    mg_lineage_writer_stats(w, &st);
  }
  assert_int_equal(st.size, 5001);
  mg_lineage_writer_close(w);
  struct entries es;
  read_all(&es);
  assert_int_equal(es.n, 5001);
  free_entries(&es);
  assert_int_equal(cp_size(NULL), 5001);
}

/* ---- outcome links --------------------------------------------------------------- */

static void test_outcome_of(void **state) {
  (void)state;
  wipe();
  struct mg_lineage_config c = cfg(MG_LINEAGE_ASYNC);
  struct mg_lineage_writer *w;
  assert_int_equal(mg_lineage_writer_open(&c, &w), 0);
  struct mg_lineage_rec *recs[20];
  for (int i = 0; i < 20; i++) {
    struct mg_lineage_access a;
    char rid[37];
    snprintf(rid, sizeof rid, "0190d6b0-0000-7000-8000-%012d", i);
    access_(&a, rid, "allow", "10.0.0.3:1");
    assert_int_equal(mg_lineage_submit_access(w, &a, NULL, NULL, &recs[i]), 0);
    assert_non_null(recs[i]);
  }
  for (int i = 19; i >= 0; i--) { /* outcomes in another order */
    char rid[37];
    snprintf(rid, sizeof rid, "0190d6b0-0000-7000-8000-%012d", i);
    struct mg_lineage_outcome o = {.request_id = rid, .status = i % 2 ? 200 : 503,
                                   .reset = i == 4 ? 8 : -1, .bytes_in = 10, .bytes_out = 1000,
                                   .duration_us = 1234};
    assert_int_equal(mg_lineage_submit_outcome(w, recs[i], &o), 0);
  }
  mg_lineage_writer_close(w);
  struct entries es;
  read_all(&es);
  assert_int_equal(es.n, 40);
  for (size_t i = 20; i < 40; i++) {
    json_t *o = es.e[i];
    json_int_t of = json_integer_value(json_object_get(o, "of"));
    assert_true(of >= 0 && of < 20);
    assert_string_equal(json_string_value(json_object_get(o, "request_id")),
                        json_string_value(json_object_get(es.e[of], "request_id")));
    assert_int_equal(json_object_get(o, "reset") != NULL, of == 4);
  }
  free_entries(&es);
}

/* ---- deny budget --------------------------------------------------------------------- */

static void test_deny_accounting(void **state) {
  (void)state;
  wipe();
  struct mg_lineage_config c = cfg(MG_LINEAGE_ASYNC);
  c.deny_entries_per_s = 20;
  struct mg_lineage_writer *w;
  assert_int_equal(mg_lineage_writer_open(&c, &w), 0);
  int64_t t0 = mg_mono_now_us();
  int na = 0, nb = 0;
  for (int round = 0; round < 15; round++) {
    for (int i = 0; i < 100; i++) {
      struct mg_lineage_access a;
      char peer[32];
      snprintf(peer, sizeof peer, "192.0.2.1:%d", 1000 + i); /* ports differ: one address */
      access_(&a, "0190d6b0-0000-7000-8000-00000000000a", "deny", peer);
      assert_int_equal(mg_lineage_submit_access(w, &a, NULL, NULL, NULL), 0);
      na++;
    }
    struct mg_lineage_access b;
    access_(&b, "0190d6b0-0000-7000-8000-00000000000b", "unauthenticated", "[2001:db8::1]:443");
    b.reason = "invalid_token";
    assert_int_equal(mg_lineage_submit_access(w, &b, NULL, NULL, NULL), 0);
    nb++;
    usleep(100000);
  }
  double secs = (double)(mg_mono_now_us() - t0) / 1e6;
  mg_lineage_writer_close(w);
  struct entries es;
  read_all(&es);
  uint64_t ind_a = 0, sum_a = 0, ind_b = 0, sum_b = 0, summaries_a = 0;
  for (size_t i = 0; i < es.n; i++) {
    json_t *e = es.e[i];
    bool summary = json_object_get(e, "summary") != NULL;
    const char *dec = json_string_value(json_object_get(e, "decision"));
    assert_non_null(dec);
    if (summary) {
      assert_int_equal(json_integer_value(json_object_get(e, "summary")), 1);
      const char *peer = json_string_value(json_object_get(e, "peer"));
      uint64_t n = (uint64_t)json_integer_value(json_object_get(e, "count"));
      assert_true(n > 0);
      if (!strcmp(peer, "192.0.2.1")) {
        sum_a += n;
        summaries_a++;
        assert_string_equal(dec, "deny");
        assert_string_equal(json_string_value(json_object_get(e, "reason")), "no matching grant");
      } else {
        assert_string_equal(peer, "[2001:db8::1]");
        sum_b += n;
      }
    } else if (!strcmp(dec, "deny")) {
      ind_a++;
    } else {
      ind_b++;
    }
  }
  assert_int_equal(ind_a + sum_a, na); /* every deny accounted */
  assert_int_equal(ind_b + sum_b, nb);
  assert_int_equal(ind_b, nb);         /* one per 100 ms is under the budget */
  assert_true(ind_a <= 20 + (uint64_t)(secs * 20) + 1);
  assert_true(ind_a >= 20);
  assert_true(summaries_a >= 1 && summaries_a <= (uint64_t)secs + 2); /* ~one per second */
  free_entries(&es);
}

/* ---- map full -------------------------------------------------------------------------- */

static void test_map_full(void **state) {
  (void)state;
  wipe();
  struct mg_lineage_config c = cfg(MG_LINEAGE_WRITE_AHEAD);
  c.map_size_mb = 1;
  memset(dones, 0, sizeof dones);
  struct mg_lineage_writer *w;
  assert_int_equal(mg_lineage_writer_open(&c, &w), 0);
  char path[1200];
  memset(path, 'p', sizeof path - 1);
  path[0] = '/';
  path[sizeof path - 1] = 0;
  int ok = 0, full = 0, n = 0;
  struct mg_lineage_stats st0;
  mg_lineage_writer_stats(w, &st0);
  assert_int_equal(st0.map_bytes, 1u << 20);
  assert_true(st0.used_bytes > 0 && st0.used_bytes < st0.map_bytes / 2);
  /* the fill warnings (80, 90, 95 %) go to the log: capture it */
  int lp[2];
  assert_int_equal(pipe(lp), 0);
  fcntl(lp[0], F_SETFL, O_NONBLOCK);
  mg_log_set_fd(lp[1]);
  for (; n < NT * NM && full < 20; n++) {
    struct mg_lineage_access a;
    access_(&a, "0190d6b0-0000-7000-8000-00000000000c", "allow", "10.0.0.9:1");
    a.path = path;
    assert_int_equal(mg_lineage_submit_access(w, &a, on_done, &dones[n], NULL), 0);
    while (atomic_load(&dones[n].calls) == 0) usleep(20);
    if (atomic_load(&dones[n].status) == 0) ok++;
    else {
      assert_int_equal(atomic_load(&dones[n].status), MG_LINEAGE_E_FULL);
      assert_int_equal(dones[n].index, UINT64_MAX);
      full++;
    }
  }
  mg_log_set_fd(2);
  close(lp[1]);
  static char logbuf[65536];
  ssize_t ln = read(lp[0], logbuf, sizeof logbuf - 1);
  close(lp[0]);
  logbuf[ln > 0 ? ln : 0] = 0;
  const char *w80 = strstr(logbuf, "% full"), *w90 = w80 ? strstr(w80 + 1, "% full") : NULL;
  assert_non_null(w80);
  assert_non_null(w90);
  assert_non_null(strstr(logbuf, "lineage.map_size_mb"));
  assert_true(full >= 20);
  assert_true(ok > 100);
  struct mg_lineage_stats st;
  mg_lineage_writer_stats(w, &st);
  assert_true(st.used_bytes > st0.used_bytes && st.used_bytes <= st.map_bytes);
  assert_true(st.used_bytes * 10 >= st.map_bytes * 8);
  assert_false(st.healthy);
  assert_int_equal(st.last_error, MG_LINEAGE_E_FULL);
  assert_int_equal(st.size, ok);
  mg_lineage_writer_close(w);
  struct entries es;
  read_all(&es); /* contiguous, no repeat */
  assert_int_equal(es.n, ok);
  for (int i = 0; i < n; i++)
    if (atomic_load(&dones[i].status) == 0) assert_true(dones[i].index < (uint64_t)ok);
  free_entries(&es);
}

/* ---- SIGKILL under load ------------------------------------------------------------ */

static void *child_load(void *arg) {
  struct mg_lineage_writer *w = arg;
  for (;;) {
    struct mg_lineage_access a;
    struct done d = {0};
    access_(&a, "0190d6b0-0000-7000-8000-00000000000d", "allow", "10.0.0.4:1");
    if (mg_lineage_submit_access(w, &a, on_done, &d, NULL)) _exit(3);
    while (atomic_load(&d.calls) == 0) usleep(10);
  }
  return NULL;
}

static void test_sigkill(void **state) {
  (void)state;
  wipe();
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    struct mg_lineage_config c = cfg(MG_LINEAGE_WRITE_AHEAD);
    struct mg_lineage_writer *w;
    if (mg_lineage_writer_open(&c, &w)) _exit(2);
    pthread_t th[4];
    for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, child_load, w);
    for (;;) pause();
  }
  usleep(700000);
  kill(pid, SIGKILL);
  int status;
  waitpid(pid, &status, 0);
  assert_true(WIFSIGNALED(status));
  struct entries es;
  read_all(&es);
  assert_true(es.n > 10);
  free_entries(&es);
  /* reopen recovers the tree: the checkpoint at open covers everything, proofs check */
  struct mg_lineage_config c = cfg(MG_LINEAGE_WRITE_AHEAD);
  struct mg_lineage_writer *w;
  assert_int_equal(mg_lineage_writer_open(&c, &w), 0);
  char *note = NULL;
  assert_int_equal(mg_lineage_checkpoint_now(w, &note), 0);
  uint64_t sz = 0;
  uint8_t root[MG_HASH_LEN];
  char *origin = NULL;
  assert_int_equal(mg_checkpoint_parse(note, strstr(note, "\n\n") - note + 1, &origin, &sz, root), 0);
  assert_int_equal(sz, es.n);
  /* add more after recovery: indexes continue without a gap */
  struct mg_lineage_access a;
  struct done d = {0};
  access_(&a, "0190d6b0-0000-7000-8000-00000000000e", "allow", "10.0.0.4:1");
  assert_int_equal(mg_lineage_submit_access(w, &a, on_done, &d, NULL), 0);
  while (atomic_load(&d.calls) == 0) usleep(100);
  assert_int_equal(d.index, es.n);
  /* an inclusion proof of the last pre-crash entry verifies against the note's root */
  char *json = NULL;
  assert_int_equal(mg_lineage_reader_inclusion(mg_lineage_writer_reader(w), sz - 1, sz, &json), 0);
  json_t *p = json_loads(json, 0, NULL);
  uint8_t leaf[MG_HASH_LEN], hashes[MG_MERKLE_MAX_LEVELS][MG_HASH_LEN];
  assert_int_equal(mg_hex_decode(json_string_value(json_object_get(p, "leaf")), 64, leaf, 32), 0);
  size_t nh = json_array_size(json_object_get(p, "hashes"));
  for (size_t i = 0; i < nh; i++) {
    const char *h = json_string_value(json_array_get(json_object_get(p, "hashes"), i));
    size_t ol = 32;
    assert_int_equal(mg_b64_decode(h, strlen(h), hashes[i], &ol), 0);
  }
  assert_int_equal(mg_merkle_verify_inclusion(sz - 1, sz, leaf, (const uint8_t(*)[32])hashes, nh, root), 0);
  json_decref(p);
  free(json);
  free(origin);
  free(note);
  mg_lineage_writer_close(w);
}

/* ---- checkpoints ------------------------------------------------------------------------ */

static void test_checkpoints_timing(void **state) {
  (void)state;
  wipe();
  struct mg_lineage_config c = cfg(MG_LINEAGE_WRITE_AHEAD);
  c.checkpoint_every_ms = 100;
  struct mg_lineage_writer *w;
  assert_int_equal(mg_lineage_writer_open(&c, &w), 0);
  char *note = NULL;
  assert_int_equal(mg_lineage_checkpoint_now(w, &note), MG_ERR_NOTFOUND); /* empty log */
  int64_t t0 = mg_mono_now_us();
  int n = 0;
  while (mg_mono_now_us() - t0 < 650000) {
    struct mg_lineage_access a;
    access_(&a, "0190d6b0-0000-7000-8000-00000000000f", "allow", "10.0.0.5:1");
    assert_int_equal(mg_lineage_submit_access(w, &a, NULL, NULL, NULL), 0);
    n++;
    usleep(5000);
  }
  usleep(150000); /* the last entries get their checkpoint from the timer */
  struct mg_lineage_stats st;
  mg_lineage_writer_stats(w, &st);
  assert_int_equal(st.checkpoint_size, st.size);
  assert_int_equal(st.size, n);
  /* on demand: after one more entry, a new note covering it */
  struct mg_lineage_policy_write p = {.request_id = "0190d6b0-0000-7000-8000-0000000000aa",
                                      .editor = "user:admin", .product = "orders",
                                      .grant = "g1", .old_revision = "r1", .new_revision = "r2"};
  struct done d = {0};
  assert_int_equal(mg_lineage_submit_policy(w, &p, on_done, &d), 0);
  assert_int_equal(mg_lineage_checkpoint_now(w, &note), 0);
  assert_int_equal(atomic_load(&d.calls), 1);
  char want[64];
  snprintf(want, sizeof want, "\n%d\n", n + 1);
  assert_non_null(strstr(note, want));
  free(note);
  mg_lineage_writer_close(w);
  size_t ncp = count_checkpoints();
  assert_true(ncp >= 5); /* ~every 100 ms over 650 ms, plus on demand */
  assert_int_equal(cp_size(NULL), n + 1);
}

static void test_key_rotation(void **state) {
  (void)state;
  wipe();
  struct mg_lineage_config c = cfg(MG_LINEAGE_WRITE_AHEAD);
  struct mg_lineage_writer *w;
  assert_int_equal(mg_lineage_writer_open(&c, &w), 0);
  struct mg_lineage_access a;
  access_(&a, "0190d6b0-0000-7000-8000-000000000010", "allow", "10.0.0.6:1");
  assert_int_equal(mg_lineage_submit_access(w, &a, NULL, NULL, NULL), 0);
  mg_lineage_writer_close(w);
  /* new key, the old one co-signs the first checkpoint */
  const char *old[] = {key1};
  c.signing_key = key2;
  c.old_signing_keys = old;
  c.nold_signing_keys = 1;
  assert_int_equal(mg_lineage_writer_open(&c, &w), 0);
  char *note = NULL;
  assert_int_equal(mg_lineage_checkpoint_now(w, &note), 0);
  struct mg_note_verifier *v[2];
  assert_int_equal(mg_note_verifier_parse(vkey1, strlen(vkey1), &v[0]), 0);
  assert_int_equal(mg_note_verifier_parse(vkey2, strlen(vkey2), &v[1]), 0);
  size_t tl;
  bool by[2] = {false, false};
  assert_int_equal(mg_note_verify(note, strlen(note), v, 2, &tl, by), 0);
  assert_true(by[0] && by[1]);
  free(note);
  /* the next checkpoint is signed by the new key alone */
  assert_int_equal(mg_lineage_submit_access(w, &a, NULL, NULL, NULL), 0);
  assert_int_equal(mg_lineage_checkpoint_now(w, &note), 0);
  by[0] = by[1] = false;
  assert_int_equal(mg_note_verify(note, strlen(note), v, 2, &tl, by), 0);
  assert_false(by[0]);
  assert_true(by[1]);
  free(note);
  mg_lineage_writer_close(w);
  /* reopening with the new key: no second co-signed checkpoint */
  assert_int_equal(mg_lineage_writer_open(&c, &w), 0);
  assert_int_equal(mg_lineage_checkpoint_now(w, &note), 0);
  by[0] = by[1] = false;
  assert_int_equal(mg_note_verify(note, strlen(note), v, 2, &tl, by), 0);
  assert_false(by[0]);
  free(note);
  mg_lineage_writer_close(w);
  mg_note_verifier_free(v[0]);
  mg_note_verifier_free(v[1]);
}

static void test_foreign_origin_and_closed(void **state) {
  (void)state;
  wipe();
  struct mg_lineage_config c = cfg(MG_LINEAGE_ASYNC);
  struct mg_lineage_writer *w;
  assert_int_equal(mg_lineage_writer_open(&c, &w), 0);
  mg_lineage_writer_close(w);
  c.origin = "lineage.test/other";
  assert_int_equal(mg_lineage_writer_open(&c, &w), MG_LINEAGE_E_FOREIGN);
  c.origin = ORIGIN;
  c.signing_key = "/nonexistent/key";
  assert_true(mg_lineage_writer_open(&c, &w) < 0);
  /* invalid UTF-8 is refused at submit */
  c.signing_key = key1;
  assert_int_equal(mg_lineage_writer_open(&c, &w), 0);
  struct mg_lineage_access a;
  access_(&a, "0190d6b0-0000-7000-8000-000000000011", "allow", "10.0.0.7:1");
  a.path = "/bad\xc3(";
  assert_int_equal(mg_lineage_submit_access(w, &a, NULL, NULL, NULL), -EINVAL);
  mg_lineage_writer_close(w);
}

/* The shipper's acknowledged index is stored with the next commit and survives reopen. */
static void test_shipped_stored(void **state) {
  (void)state;
  wipe();
  struct mg_lineage_config c = cfg(MG_LINEAGE_WRITE_AHEAD);
  struct mg_lineage_writer *w;
  assert_int_equal(mg_lineage_writer_open(&c, &w), 0);
  assert_int_equal(mg_lineage_writer_shipped(w, NULL), 0);
  struct mg_lineage_access a;
  struct done d = {0};
  access_(&a, "0190d6b0-0000-7000-8000-000000000012", "allow", "10.0.0.8:1");
  for (int i = 0; i < 3; i++) assert_int_equal(mg_lineage_submit_access(w, &a, NULL, NULL, NULL), 0);
  mg_lineage_writer_ack(w, 2, 77);
  mg_lineage_writer_ack(w, 1, 99); /* never goes back */
  assert_int_equal(mg_lineage_submit_access(w, &a, on_done, &d, NULL), 0);
  while (atomic_load(&d.calls) == 0) usleep(100);
  mg_lineage_writer_close(w);
  assert_int_equal(mg_lineage_writer_open(&c, &w), 0);
  uint64_t seq = 0;
  assert_int_equal(mg_lineage_writer_shipped(w, &seq), 2);
  assert_int_equal(seq, 77); /* the pair as it was reported */
  mg_lineage_writer_close(w);
}

int main(void) {
  mg_lineage_init();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_write_ahead_concurrent),
      cmocka_unit_test(test_async),
      cmocka_unit_test(test_outcome_of),
      cmocka_unit_test(test_deny_accounting),
      cmocka_unit_test(test_map_full),
      cmocka_unit_test(test_sigkill),
      cmocka_unit_test(test_checkpoints_timing),
      cmocka_unit_test(test_key_rotation),
      cmocka_unit_test(test_foreign_origin_and_closed),
      cmocka_unit_test(test_shipped_stored),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
