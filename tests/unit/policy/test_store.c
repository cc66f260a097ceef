/* test_store.c — the LMDB grant store on real files in a temporary directory: edits with
 * preconditions, revisions, import atomicity, a full map, racing writers and a writer
 * killed mid-stream. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "policy/policy.h"

static char *mkdir_tmp(void) {
  char *d = strdup("/tmp/mg-policy-store-XXXXXX");
  assert_non_null(mkdtemp(d));
  return d;
}

static void rm_rf(char *d) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
  assert_int_equal(system(cmd), 0);
  free(d);
}

static struct mg_grant *mk(const char *id, const char *product, const char *subject,
                           const char *resource, const char *desc) {
  char buf[4096];
  snprintf(buf, sizeof buf,
           "{\"id\":\"%s\",\"effect\":\"allow\",\"subjects\":[\"%s\"],\"product\":\"%s\","
           "\"resources\":[\"%s\"],\"actions\":[\"read\"]%s%s%s}",
           id, subject, product, resource, desc ? ",\"description\":\"" : "", desc ? desc : "",
           desc ? "\"" : "");
  struct mg_grant *g = NULL;
  assert_int_equal(mg_policy_grant_parse(buf, strlen(buf), "", &g, NULL), 0);
  return g;
}

static void put_ok(struct mg_policy_store *s, struct mg_grant *g) {
  struct mg_policy_precond pc = {.if_none_match = true};
  assert_int_equal(mg_policy_store_put(s, g, &pc, NULL, NULL, NULL, NULL, NULL), 0);
}

static uint64_t gen_of(struct mg_policy_store *s) {
  uint64_t gen;
  assert_int_equal(mg_policy_store_revision(s, NULL, &gen), 0);
  return gen;
}

static void test_crud_and_etags(void **st) {
  (void)st;
  char *dir = mkdir_tmp();
  struct mg_policy_store *s;
  assert_int_equal(mg_policy_store_open(dir, 16, false, &s), 0);
  struct mg_grant *g1 = mk("g1", "orders", "user:alice", "datasets/x/**", "v1");
  struct mg_grant *g1b = mk("g1", "orders", "user:alice", "datasets/x/**", "v2");
  char etag[MG_POLICY_ETAG_LEN], etag2[MG_POLICY_ETAG_LEN], got[MG_POLICY_ETAG_LEN];
  bool created = false;
  struct mg_policy_precond create = {.if_none_match = true};
  assert_int_equal(mg_policy_store_put(s, g1, &create, NULL, NULL, NULL, etag, &created), 0);
  assert_true(created);
  assert_int_equal(strlen(etag), 34);
  assert_true(etag[0] == '"' && etag[33] == '"');
  char *json;
  assert_int_equal(mg_policy_store_get(s, "g1", &json, got), 0);
  assert_string_equal(got, etag);
  char *canon = mg_policy_grant_to_json(g1);
  assert_string_equal(json, canon);
  free(canon);
  free(json);
  /* create again: exists */
  assert_int_equal(mg_policy_store_put(s, g1b, &create, NULL, NULL, NULL, NULL, NULL),
                   MG_POLICY_E_EXISTS);
  /* replace with the right tag */
  struct mg_policy_precond rep = {.if_match = etag};
  assert_int_equal(mg_policy_store_put(s, g1b, &rep, NULL, NULL, NULL, etag2, &created), 0);
  assert_false(created);
  assert_string_not_equal(etag, etag2);
  /* replace with the stale one */
  assert_int_equal(mg_policy_store_put(s, g1, &rep, NULL, NULL, NULL, NULL, NULL),
                   MG_POLICY_E_PRECONDITION);
  /* weak tags never match */
  char weak[64];
  snprintf(weak, sizeof weak, "W/%s", etag2);
  struct mg_policy_precond wk = {.if_match = weak};
  assert_int_equal(mg_policy_store_put(s, g1, &wk, NULL, NULL, NULL, NULL, NULL),
                   MG_POLICY_E_PRECONDITION);
  assert_int_equal(mg_policy_store_get(s, "g1", &json, got), 0);
  assert_string_equal(got, etag2);
  assert_non_null(strstr(json, "\"description\":\"v2\""));
  free(json);
  /* if-match on a grant that does not exist */
  struct mg_grant *g2 = mk("g2", "orders", "user:bob", "a", NULL);
  assert_int_equal(mg_policy_store_put(s, g2, &rep, NULL, NULL, NULL, NULL, NULL),
                   MG_POLICY_E_PRECONDITION);
  assert_int_equal(mg_policy_store_get(s, "g2", &json, got), MG_POLICY_E_NOTFOUND);
  /* delete: stale tag, then right tag, then gone */
  assert_int_equal(mg_policy_store_delete(s, "g1", &rep, NULL, NULL, NULL),
                   MG_POLICY_E_PRECONDITION);
  struct mg_policy_precond del = {.if_match = etag2};
  assert_int_equal(mg_policy_store_delete(s, "g1", &del, NULL, NULL, NULL), 0);
  assert_int_equal(mg_policy_store_get(s, "g1", &json, got), MG_POLICY_E_NOTFOUND);
  assert_int_equal(mg_policy_store_delete(s, "g1", &del, NULL, NULL, NULL), MG_POLICY_E_NOTFOUND);
  assert_int_equal(mg_policy_store_get(s, "../etc", &json, got), MG_POLICY_E_NOTFOUND);
  /* An invalid grant is refused by the store. */
  struct mg_grant bad = *g2;
  bad.actions = 0;
  assert_int_equal(mg_policy_store_put(s, &bad, NULL, NULL, NULL, NULL, NULL, NULL),
                   MG_POLICY_E_INVALID);
  assert_int_equal(mg_policy_store_verify(s), 0);
  mg_policy_grant_free(g1);
  mg_policy_grant_free(g1b);
  mg_policy_grant_free(g2);
  mg_policy_store_close(s);
  rm_rf(dir);
}

static void test_revision(void **st) {
  (void)st;
  char *d1 = mkdir_tmp(), *d2 = mkdir_tmp();
  struct mg_policy_store *a, *b;
  assert_int_equal(mg_policy_store_open(d1, 16, false, &a), 0);
  assert_int_equal(mg_policy_store_open(d2, 16, false, &b), 0);
  char r0[MG_POLICY_REVISION_LEN], ra[MG_POLICY_REVISION_LEN], rb[MG_POLICY_REVISION_LEN];
  uint64_t gen;
  assert_int_equal(mg_policy_store_revision(a, r0, &gen), 0);
  assert_int_equal(gen, 0);
  assert_int_equal(strlen(r0), 64);
  /* empty store: SHA-256 of 32 zero bytes */
  assert_string_equal(r0, "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925");
  struct mg_grant *x = mk("x", "p", "user:a", "a", NULL), *y = mk("y", "p", "user:b", "b", NULL);
  struct mg_grant *z = mk("z", "p", "user:c", "c", NULL);
  put_ok(a, x);
  put_ok(a, y);
  put_ok(a, z);
  put_ok(b, z);
  put_ok(b, x);
  put_ok(b, y);
  assert_int_equal(mg_policy_store_revision(a, ra, &gen), 0);
  assert_int_equal(gen, 3);
  assert_int_equal(mg_policy_store_revision(b, rb, NULL), 0);
  assert_string_equal(ra, rb); /* order-independent */
  assert_string_not_equal(ra, r0);
  /* A failed edit changes nothing. */
  assert_int_equal(mg_policy_store_put(a, x, &(struct mg_policy_precond){.if_none_match = true},
                                       NULL, NULL, NULL, NULL, NULL),
                   MG_POLICY_E_EXISTS);
  assert_int_equal(gen_of(a), 3);
  /* Deleting and re-adding brings the digest back; the generation keeps counting. */
  assert_int_equal(mg_policy_store_delete(a, "y", NULL, NULL, NULL, NULL), 0);
  char rdel[MG_POLICY_REVISION_LEN];
  assert_int_equal(mg_policy_store_revision(a, rdel, &gen), 0);
  assert_string_not_equal(rdel, ra);
  assert_int_equal(gen, 4);
  put_ok(a, y);
  assert_int_equal(mg_policy_store_revision(a, rdel, &gen), 0);
  assert_string_equal(rdel, ra);
  assert_int_equal(gen, 5);
  /* Deleting everything gives the empty revision again. */
  assert_int_equal(mg_policy_store_delete(a, "x", NULL, NULL, NULL, NULL), 0);
  assert_int_equal(mg_policy_store_delete(a, "y", NULL, NULL, NULL, NULL), 0);
  assert_int_equal(mg_policy_store_delete(a, "z", NULL, NULL, NULL, NULL), 0);
  assert_int_equal(mg_policy_store_revision(a, rdel, NULL), 0);
  assert_string_equal(rdel, r0);
  assert_int_equal(mg_policy_store_verify(a), 0);
  assert_int_equal(mg_policy_store_verify(b), 0);
  mg_policy_grant_free(x);
  mg_policy_grant_free(y);
  mg_policy_grant_free(z);
  mg_policy_store_close(a);
  mg_policy_store_close(b);
  rm_rf(d1);
  rm_rf(d2);
}

struct hook_log {
  int calls;
  int fail_with;
  char id[64];
  char *oldj, *newj;
  char oldrev[MG_POLICY_REVISION_LEN], newrev[MG_POLICY_REVISION_LEN];
};

static int hook(void *arg, const char *id, const char *oldj, const char *newj,
                const char *oldrev, const char *newrev) {
  struct hook_log *h = arg;
  h->calls++;
  snprintf(h->id, sizeof h->id, "%s", id);
  free(h->oldj);
  free(h->newj);
  h->oldj = oldj ? strdup(oldj) : NULL;
  h->newj = newj ? strdup(newj) : NULL;
  strcpy(h->oldrev, oldrev);
  strcpy(h->newrev, newrev);
  return h->fail_with;
}

static void test_hook_and_products(void **st) {
  (void)st;
  char *dir = mkdir_tmp();
  struct mg_policy_store *s;
  assert_int_equal(mg_policy_store_open(dir, 16, false, &s), 0);
  struct hook_log h = {0};
  struct mg_grant *o1 = mk("o1", "orders", "user:a", "a", "one");
  struct mg_grant *o1b = mk("o1", "orders", "user:a", "a", "two");
  struct mg_grant *o1c = mk("o1", "billing", "user:a", "a", "three");
  char r0[MG_POLICY_REVISION_LEN], r1[MG_POLICY_REVISION_LEN];
  assert_int_equal(mg_policy_store_revision(s, r0, NULL), 0);
  assert_int_equal(mg_policy_store_put(s, o1, NULL, "orders", hook, &h, NULL, NULL), 0);
  assert_int_equal(h.calls, 1);
  assert_string_equal(h.id, "o1");
  assert_null(h.oldj);
  assert_non_null(strstr(h.newj, "\"one\""));
  assert_string_equal(h.oldrev, r0);
  assert_int_equal(mg_policy_store_revision(s, r1, NULL), 0);
  assert_string_equal(h.newrev, r1);
  /* A failing hook aborts: nothing changes. */
  h.fail_with = -EIO;
  assert_int_equal(mg_policy_store_put(s, o1b, NULL, "orders", hook, &h, NULL, NULL), -EIO);
  assert_int_equal(h.calls, 2);
  assert_non_null(strstr(h.oldj, "\"one\""));
  assert_int_equal(gen_of(s), 1);
  char *json, etag[MG_POLICY_ETAG_LEN];
  assert_int_equal(mg_policy_store_get(s, "o1", &json, etag), 0);
  assert_non_null(strstr(json, "\"one\""));
  free(json);
  h.fail_with = 0;
  /* Owners of another product: neither the new nor the stored grant may be foreign. */
  assert_int_equal(mg_policy_store_put(s, o1b, NULL, "billing", hook, &h, NULL, NULL),
                   MG_POLICY_E_PRODUCT);
  assert_int_equal(mg_policy_store_put(s, o1c, NULL, "billing", hook, &h, NULL, NULL),
                   MG_POLICY_E_PRODUCT);
  assert_int_equal(mg_policy_store_delete(s, "o1", NULL, "billing", hook, &h),
                   MG_POLICY_E_PRODUCT);
  assert_int_equal(h.calls, 2);
  assert_int_equal(mg_policy_store_delete(s, "o1", NULL, "orders", hook, &h), 0);
  assert_int_equal(h.calls, 3);
  assert_null(h.newj);
  assert_string_equal(h.oldrev, r1);
  assert_string_equal(h.newrev, r0);
  free(h.oldj);
  free(h.newj);
  mg_policy_grant_free(o1);
  mg_policy_grant_free(o1b);
  mg_policy_grant_free(o1c);
  mg_policy_store_close(s);
  rm_rf(dir);
}

struct lister {
  char ids[16][32];
  int n;
};

static int list_cb(void *arg, const struct mg_grant *g, const char *json, const char *etag) {
  struct lister *l = arg;
  assert_non_null(strstr(json, g->id));
  assert_int_equal(strlen(etag), 34);
  snprintf(l->ids[l->n++], 32, "%s", g->id);
  return 0;
}

static void test_import_and_list(void **st) {
  (void)st;
  char *dir = mkdir_tmp();
  struct mg_policy_store *s;
  assert_int_equal(mg_policy_store_open(dir, 16, false, &s), 0);
  struct mg_grant *a = mk("a", "orders", "user:x", "a", NULL);
  struct mg_grant *b = mk("b", "orders", "group:g", "b", NULL);
  struct mg_grant *c = mk("c", "billing", "user:x", "c", NULL);
  put_ok(s, a);
  put_ok(s, b);
  put_ok(s, c);
  char before[MG_POLICY_REVISION_LEN], after[MG_POLICY_REVISION_LEN];
  assert_int_equal(mg_policy_store_revision(s, before, NULL), 0);
  struct mg_grant *b2 = mk("b", "orders", "group:g", "b/**", NULL);
  struct mg_grant *d = mk("d", "orders", "user:y", "d", NULL);
  struct mg_grant *cx = mk("c", "orders", "user:x", "c", NULL);
  struct mg_grant *foreign = mk("e", "billing", "user:x", "e", NULL);
  struct hook_log h = {0};
  /* Rejected imports leave everything as it was. */
  struct mg_grant *bad1[] = {b2, foreign};
  assert_int_equal(mg_policy_store_import(s, "orders", bad1, 2, hook, &h), MG_POLICY_E_PRODUCT);
  struct mg_grant *bad2[] = {b2, cx}; /* id held by billing */
  assert_int_equal(mg_policy_store_import(s, "orders", bad2, 2, hook, &h), MG_POLICY_E_PRODUCT);
  struct mg_grant *bad3[] = {b2, b2};
  assert_int_equal(mg_policy_store_import(s, "orders", bad3, 2, hook, &h), MG_POLICY_E_INVALID);
  struct mg_grant *good[] = {b2, d};
  h.fail_with = MG_POLICY_E_STORE;
  assert_int_equal(mg_policy_store_import(s, "orders", good, 2, hook, &h), MG_POLICY_E_STORE);
  assert_int_equal(h.calls, 1);
  assert_string_equal(h.id, "*import*");
  assert_int_equal(mg_policy_store_revision(s, after, NULL), 0);
  assert_string_equal(before, after);
  assert_int_equal(gen_of(s), 3);
  char *json, etag[MG_POLICY_ETAG_LEN];
  assert_int_equal(mg_policy_store_get(s, "a", &json, etag), 0);
  free(json);
  /* Now for real. */
  h.fail_with = 0;
  assert_int_equal(mg_policy_store_import(s, "orders", good, 2, hook, &h), 0);
  assert_int_equal(gen_of(s), 4);
  assert_int_equal(mg_policy_store_revision(s, after, NULL), 0);
  assert_string_equal(h.newrev, after);
  assert_string_equal(h.oldrev, before);
  assert_int_equal(mg_policy_store_get(s, "a", &json, etag), MG_POLICY_E_NOTFOUND);
  assert_int_equal(mg_policy_store_get(s, "b", &json, etag), 0);
  assert_non_null(strstr(json, "b/**"));
  free(json);
  assert_int_equal(mg_policy_store_get(s, "c", &json, etag), 0);
  free(json);
  struct lister l = {0};
  assert_int_equal(mg_policy_store_list(s, NULL, NULL, list_cb, &l), 0);
  assert_int_equal(l.n, 3);
  assert_string_equal(l.ids[0], "b");
  assert_string_equal(l.ids[1], "c");
  assert_string_equal(l.ids[2], "d");
  memset(&l, 0, sizeof l);
  assert_int_equal(mg_policy_store_list(s, "orders", NULL, list_cb, &l), 0);
  assert_int_equal(l.n, 2);
  memset(&l, 0, sizeof l);
  assert_int_equal(mg_policy_store_list(s, NULL, "user:x", list_cb, &l), 0);
  assert_int_equal(l.n, 1);
  assert_string_equal(l.ids[0], "c");
  /* Empty import clears the product. */
  assert_int_equal(mg_policy_store_import(s, "orders", NULL, 0, NULL, NULL), 0);
  memset(&l, 0, sizeof l);
  assert_int_equal(mg_policy_store_list(s, NULL, NULL, list_cb, &l), 0);
  assert_int_equal(l.n, 1);
  assert_int_equal(mg_policy_store_verify(s), 0);

  /* A readonly handle sees the data while the writer is open, and cannot write. */
  struct mg_policy_store *ro;
  assert_int_equal(mg_policy_store_open(dir, 0, true, &ro), 0);
  assert_int_equal(mg_policy_store_get(ro, "c", &json, etag), 0);
  free(json);
  assert_int_equal(mg_policy_store_put(ro, a, NULL, NULL, NULL, NULL, NULL, NULL), -EROFS);
  put_ok(s, a);
  assert_int_equal(mg_policy_store_get(ro, "a", &json, etag), 0);
  free(json);
  mg_policy_store_close(ro);
  char *nodir = mkdir_tmp();
  assert_true(mg_policy_store_open(nodir, 0, true, &ro) < 0);
  rm_rf(nodir);

  free(h.oldj);
  free(h.newj);
  struct mg_grant *all[] = {a, b, c, b2, d, cx, foreign};
  for (size_t i = 0; i < 7; i++) mg_policy_grant_free(all[i]);
  mg_policy_store_close(s);
  rm_rf(dir);
}

static void test_map_full(void **st) {
  (void)st;
  char *dir = mkdir_tmp();
  struct mg_policy_store *s;
  assert_int_equal(mg_policy_store_open(dir, 1, false, &s), 0);
  char desc[1001];
  memset(desc, 'x', 1000);
  desc[1000] = 0;
  int rv = 0, n = 0;
  char lastrev[MG_POLICY_REVISION_LEN];
  uint64_t lastgen = 0;
  for (n = 0; n < 5000; n++) {
    char id[32];
    snprintf(id, sizeof id, "g%05d", n);
    struct mg_grant *g = mk(id, "p", "user:a", "a/**", desc);
    rv = mg_policy_store_put(s, g, NULL, NULL, NULL, NULL, NULL, NULL);
    mg_policy_grant_free(g);
    if (rv) break;
    assert_int_equal(mg_policy_store_revision(s, lastrev, &lastgen), 0);
  }
  assert_int_equal(rv, MG_POLICY_E_FULL);
  assert_true(n > 100);
  /* The failed edit left the old state intact and readable. */
  char rev[MG_POLICY_REVISION_LEN];
  uint64_t gen;
  assert_int_equal(mg_policy_store_revision(s, rev, &gen), 0);
  assert_string_equal(rev, lastrev);
  assert_int_equal(gen, lastgen);
  char *json, etag[MG_POLICY_ETAG_LEN];
  assert_int_equal(mg_policy_store_get(s, "g00000", &json, etag), 0);
  free(json);
  assert_int_equal(mg_policy_store_verify(s), 0);
  struct mg_policy_index *ix;
  assert_int_equal(mg_policy_index_build(s, &ix), 0);
  assert_int_equal(mg_policy_index_count(ix), (size_t)n);
  mg_policy_index_unref(ix);
  /* Deleting makes room again. */
  assert_int_equal(mg_policy_store_delete(s, "g00001", NULL, NULL, NULL, NULL), 0);
  mg_policy_store_close(s);
  rm_rf(dir);
}

struct racer {
  struct mg_policy_store *s;
  struct mg_grant *g;
  const char *etag;
  pthread_barrier_t *bar;
  int rv;
};

static void *race(void *arg) {
  struct racer *r = arg;
  struct mg_policy_precond pc = {.if_match = r->etag};
  pthread_barrier_wait(r->bar);
  r->rv = mg_policy_store_put(r->s, r->g, &pc, NULL, NULL, NULL, NULL, NULL);
  return NULL;
}

static void test_race(void **st) {
  (void)st;
  char *dir = mkdir_tmp();
  struct mg_policy_store *s;
  assert_int_equal(mg_policy_store_open(dir, 16, false, &s), 0);
  struct mg_grant *v0 = mk("r", "p", "user:a", "a", "v0");
  struct mg_grant *va = mk("r", "p", "user:a", "a", "thread-a");
  struct mg_grant *vb = mk("r", "p", "user:a", "a", "thread-b");
  for (int round = 0; round < 50; round++) {
    char etag[MG_POLICY_ETAG_LEN];
    assert_int_equal(mg_policy_store_put(s, v0, NULL, NULL, NULL, NULL, etag, NULL), 0);
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, 2);
    struct racer ra = {s, va, etag, &bar, 1}, rb = {s, vb, etag, &bar, 1};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, race, &ra);
    pthread_create(&tb, NULL, race, &rb);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    pthread_barrier_destroy(&bar);
    int wins = (ra.rv == 0) + (rb.rv == 0);
    int lost = (ra.rv == MG_POLICY_E_PRECONDITION) + (rb.rv == MG_POLICY_E_PRECONDITION);
    assert_int_equal(wins, 1);
    assert_int_equal(lost, 1);
    char *json;
    assert_int_equal(mg_policy_store_get(s, "r", &json, NULL), 0);
    assert_non_null(strstr(json, ra.rv == 0 ? "thread-a" : "thread-b"));
    free(json);
  }
  mg_policy_grant_free(v0);
  mg_policy_grant_free(va);
  mg_policy_grant_free(vb);
  mg_policy_store_close(s);
  rm_rf(dir);
}

/* Each version k of grant i is self-consistent: description, resource and purpose all
 * carry k, so a torn write would show. */
static struct mg_grant *version(int i, long k) {
  char buf[512];
  snprintf(buf, sizeof buf,
           "{\"id\":\"k%02d\",\"effect\":\"allow\",\"subjects\":[\"user:u%d\"],\"product\":\"p\","
           "\"resources\":[\"d/%ld/**\"],\"actions\":[\"read\"],\"purposes\":[\"p%ld\"],"
           "\"description\":\"%ld\"}",
           i, i, k, k, k);
  struct mg_grant *g;
  if (mg_policy_grant_parse(buf, strlen(buf), "", &g, NULL)) abort();
  return g;
}

static void test_kill_mid_stream(void **st) {
  (void)st;
  for (int trial = 0; trial < 3; trial++) {
    char *dir = mkdir_tmp();
    struct mg_policy_store *s;
    assert_int_equal(mg_policy_store_open(dir, 64, false, &s), 0);
    for (int i = 0; i < 20; i++) {
      struct mg_grant *g = version(i, 0);
      put_ok(s, g);
      mg_policy_grant_free(g);
    }
    mg_policy_store_close(s);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
      struct mg_policy_store *cs;
      if (mg_policy_store_open(dir, 64, false, &cs)) _exit(3);
      for (long k = 1;; k++) {
        struct mg_grant *g = version((int)(k % 20), k);
        int rv = mg_policy_store_put(cs, g, NULL, NULL, NULL, NULL, NULL, NULL);
        mg_policy_grant_free(g);
        if (rv) _exit(4);
      }
    }
    usleep(150000 + 70000 * (useconds_t)trial);
    kill(pid, SIGKILL);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(mg_policy_store_open(dir, 64, false, &s), 0);
    uint64_t gen = gen_of(s);
    assert_true(gen > 20);
    assert_int_equal(mg_policy_store_verify(s), 0);
    for (int i = 0; i < 20; i++) {
      char id[8], *json;
      snprintf(id, sizeof id, "k%02d", i);
      assert_int_equal(mg_policy_store_get(s, id, &json, NULL), 0);
      struct mg_grant *g;
      assert_int_equal(mg_policy_grant_parse(json, strlen(json), "", &g, NULL), 0);
      long k = strtol(g->description, NULL, 10);
      struct mg_grant *want = version(i, k);
      assert_true(mg_policy_grant_equal(g, want));
      mg_policy_grant_free(want);
      mg_policy_grant_free(g);
      free(json);
    }
    /* The store keeps working after the crash. */
    struct mg_grant *g = version(0, -1);
    assert_int_equal(mg_policy_store_put(s, g, NULL, NULL, NULL, NULL, NULL, NULL), 0);
    mg_policy_grant_free(g);
    assert_int_equal(gen_of(s), gen + 1);
    mg_policy_store_close(s);
    rm_rf(dir);
  }
}

int main(void) {
  mg_policy_init();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_crud_and_etags),
      cmocka_unit_test(test_revision),
      cmocka_unit_test(test_hook_and_products),
      cmocka_unit_test(test_import_and_list),
      cmocka_unit_test(test_map_full),
      cmocka_unit_test(test_race),
      cmocka_unit_test(test_kill_mid_stream),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
