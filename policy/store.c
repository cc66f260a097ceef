/*
 * store.c — grants in LMDB.
 *
 * One environment, two databases: "grants" (id -> canonical JSON) and "meta"
 * ("generation" -> u64 LE, "digest" -> 32-byte accumulator). The revision must be a
 * content digest of all grants yet cost O(1) per edit, so meta keeps a multiset hash:
 * the sum mod 2^256 of SHA-256(canonical JSON) over all grants (order-independent,
 * updated by one subtraction and one addition per edit); the revision is hex SHA-256 of
 * that sum. mg_policy_store_verify() recomputes it from scratch.
 *
 * Every edit is one write transaction: preconditions, product checks, the edit hook
 * (the lineage entry is written before the edit commits) and the puts all happen inside
 * it, so LMDB's single-writer lock is what makes "two replaces with one ETag: one wins"
 * true across threads and processes. MDB_NOTLS lets a read transaction be used from any
 * thread; we never use MDB_NOSYNC/MDB_WRITEMAP/MDB_MAPASYNC, so a commit that returned is
 * on disk and a killed writer leaves the previous commit intact.
 */
#include "policy/policy_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define DEFAULT_MAP_MB 256

static const char KEY_GEN[] = "generation";
static const char KEY_DIGEST[] = "digest";

int mg_policy__map_err(int rc) {
  switch (rc) {
  case 0: return 0;
  case MDB_MAP_FULL:
  case ENOSPC:
  case EDQUOT: return MG_POLICY_E_FULL;
  case MDB_NOTFOUND: return MG_POLICY_E_NOTFOUND;
  case ENOMEM: return -ENOMEM;
  default: return MG_POLICY_E_STORE;
  }
}

int mg_policy__txn_begin(struct mg_policy_store *s, unsigned flags, MDB_txn **txn) {
  int rc = mdb_txn_begin(s->env, NULL, flags, txn);
  if (rc == MDB_MAP_RESIZED) {
    /* Another process grew the map: adopt its size and retry once. */
    rc = mdb_env_set_mapsize(s->env, 0);
    if (!rc) rc = mdb_txn_begin(s->env, NULL, flags, txn);
  }
  return rc;
}

/* ---- 256-bit accumulator (big-endian) ---------------------------------------- */

static void acc_add(uint8_t acc[32], const uint8_t h[32]) {
  unsigned carry = 0;
  for (int i = 31; i >= 0; i--) {
    unsigned v = (unsigned)acc[i] + h[i] + carry;
    acc[i] = (uint8_t)v;
    carry = v >> 8;
  }
}

static void acc_sub(uint8_t acc[32], const uint8_t h[32]) {
  int borrow = 0;
  for (int i = 31; i >= 0; i--) {
    int v = (int)acc[i] - h[i] - borrow;
    borrow = v < 0;
    acc[i] = (uint8_t)(v + (borrow ? 256 : 0));
  }
}

void mg_policy__revision(const uint8_t acc[32], char rev[MG_POLICY_REVISION_LEN]) {
  uint8_t h[32];
  mg_sha256(acc, 32, h);
  mg_hex_encode(h, 32, rev);
}

static void etag_of(const uint8_t h[32], char etag[MG_POLICY_ETAG_LEN]) {
  etag[0] = '"';
  mg_hex_encode(h, 16, etag + 1);
  etag[33] = '"';
  etag[34] = 0;
}

int mg_policy__meta_read(struct mg_policy_store *s, MDB_txn *txn, uint8_t acc[32],
                         uint64_t *generation) {
  MDB_val k = {sizeof KEY_GEN - 1, (void *)KEY_GEN}, v;
  *generation = 0;
  memset(acc, 0, 32);
  int rc = mdb_get(txn, s->meta, &k, &v);
  if (rc == 0) {
    if (v.mv_size != 8) return MG_POLICY_E_STORE;
    uint64_t g = 0;
    for (int i = 7; i >= 0; i--) g = g << 8 | ((const uint8_t *)v.mv_data)[i];
    *generation = g;
  } else if (rc != MDB_NOTFOUND) {
    return mg_policy__map_err(rc);
  }
  k = (MDB_val){sizeof KEY_DIGEST - 1, (void *)KEY_DIGEST};
  rc = mdb_get(txn, s->meta, &k, &v);
  if (rc == 0) {
    if (v.mv_size != 32) return MG_POLICY_E_STORE;
    memcpy(acc, v.mv_data, 32);
  } else if (rc != MDB_NOTFOUND) {
    return mg_policy__map_err(rc);
  }
  return 0;
}

static int meta_write(struct mg_policy_store *s, MDB_txn *txn, const uint8_t acc[32],
                      uint64_t generation) {
  uint8_t g[8];
  for (int i = 0; i < 8; i++) g[i] = (uint8_t)(generation >> (8 * i));
  MDB_val k = {sizeof KEY_GEN - 1, (void *)KEY_GEN}, v = {8, g};
  int rc = mdb_put(txn, s->meta, &k, &v, 0);
  if (rc) return rc;
  k = (MDB_val){sizeof KEY_DIGEST - 1, (void *)KEY_DIGEST};
  v = (MDB_val){32, (void *)acc};
  return mdb_put(txn, s->meta, &k, &v, 0);
}

/* ---- open / close ------------------------------------------------------------- */

int mg_policy_store_open(const char *dir, size_t map_size_mb, bool readonly,
                         struct mg_policy_store **out) {
  struct mg_policy_store *s = calloc(1, sizeof *s);
  MDB_txn *txn = NULL;
  int rc, rv;
  *out = NULL;
  if (!s) return -ENOMEM;
  s->readonly = readonly;
  if (!readonly && (rv = mg_mkdir_p(dir, 0700)) != 0) goto fail_free;
  if ((rc = mdb_env_create(&s->env)) != 0) { rv = mg_policy__map_err(rc); goto fail_free; }
  if (!map_size_mb) map_size_mb = DEFAULT_MAP_MB;
  if ((rc = mdb_env_set_maxdbs(s->env, 4)) != 0 ||
      (!readonly &&
       (rc = mdb_env_set_mapsize(s->env, (size_t)map_size_mb << 20)) != 0)) {
    rv = mg_policy__map_err(rc);
    goto fail_env;
  }
  rc = mdb_env_open(s->env, dir, MDB_NOTLS | (readonly ? MDB_RDONLY : 0), 0600);
  if (rc) {
    rv = rc > 0 ? -rc : MG_POLICY_E_STORE;
    goto fail_env;
  }
  int dead = 0;
  mdb_reader_check(s->env, &dead);
  if ((rc = mg_policy__txn_begin(s, readonly ? MDB_RDONLY : 0, &txn)) != 0) {
    rv = mg_policy__map_err(rc);
    goto fail_env;
  }
  unsigned dflags = readonly ? 0 : MDB_CREATE;
  if ((rc = mdb_dbi_open(txn, "grants", dflags, &s->grants)) != 0 ||
      (rc = mdb_dbi_open(txn, "meta", dflags, &s->meta)) != 0) {
    /* A readonly open of a store never written has no databases yet. */
    rv = rc == MDB_NOTFOUND ? -ENOENT : mg_policy__map_err(rc);
    goto fail_txn;
  }
  if ((rc = mdb_txn_commit(txn)) != 0) {
    txn = NULL;
    rv = mg_policy__map_err(rc);
    goto fail_env;
  }
  *out = s;
  return 0;

fail_txn:
  mdb_txn_abort(txn);
fail_env:
  mdb_env_close(s->env);
fail_free:
  free(s);
  return rv;
}

void mg_policy_store_close(struct mg_policy_store *s) {
  if (!s) return;
  mdb_env_close(s->env);
  free(s);
}

/* ---- reads -------------------------------------------------------------------- */

int mg_policy_store_revision(struct mg_policy_store *s, char rev[MG_POLICY_REVISION_LEN],
                             uint64_t *generation) {
  MDB_txn *txn;
  uint8_t acc[32];
  uint64_t gen;
  int rc = mg_policy__txn_begin(s, MDB_RDONLY, &txn);
  if (rc) return mg_policy__map_err(rc);
  int rv = mg_policy__meta_read(s, txn, acc, &gen);
  mdb_txn_abort(txn);
  if (rv) return rv;
  if (rev) mg_policy__revision(acc, rev);
  if (generation) *generation = gen;
  return 0;
}

static bool id_ok(const char *id, size_t n) { return !mg_policy__check_id(id, n); }

int mg_policy_store_get(struct mg_policy_store *s, const char *id, char **json,
                        char etag[MG_POLICY_ETAG_LEN]) {
  MDB_txn *txn;
  size_t n = strlen(id);
  *json = NULL;
  if (!id_ok(id, n)) return MG_POLICY_E_NOTFOUND;
  int rc = mg_policy__txn_begin(s, MDB_RDONLY, &txn);
  if (rc) return mg_policy__map_err(rc);
  MDB_val k = {n, (void *)id}, v;
  rc = mdb_get(txn, s->grants, &k, &v);
  char *copy = NULL;
  if (rc == 0 && (copy = malloc(v.mv_size + 1)) != NULL) {
    memcpy(copy, v.mv_data, v.mv_size);
    copy[v.mv_size] = 0;
  }
  size_t len = rc == 0 ? v.mv_size : 0;
  mdb_txn_abort(txn);
  if (rc) return mg_policy__map_err(rc);
  if (!copy) return -ENOMEM;
  if (etag) {
    uint8_t h[32];
    mg_sha256(copy, len, h);
    etag_of(h, etag);
  }
  *json = copy;
  return 0;
}

struct item {
  char *json;
  size_t len;
};

/* Copies every stored grant out of one read transaction (short txn: no parsing inside). */
static int snapshot(struct mg_policy_store *s, struct item **items, size_t *nitems,
                    uint8_t acc[32], uint64_t *gen) {
  MDB_txn *txn;
  MDB_cursor *cur = NULL;
  struct item *it = NULL;
  size_t n = 0, cap = 0;
  int rv;
  int rc = mg_policy__txn_begin(s, MDB_RDONLY, &txn);
  if (rc) return mg_policy__map_err(rc);
  if (acc && (rv = mg_policy__meta_read(s, txn, acc, gen)) != 0) goto out;
  if ((rc = mdb_cursor_open(txn, s->grants, &cur)) != 0) {
    rv = mg_policy__map_err(rc);
    goto out;
  }
  MDB_stat st;
  if (mdb_stat(txn, s->grants, &st) == 0 && st.ms_entries) {
    cap = st.ms_entries;
    if (!(it = malloc(cap * sizeof *it))) { rv = -ENOMEM; goto out; }
  }
  MDB_val k, v;
  rv = 0;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    if (n == cap) {
      size_t nc = cap ? 2 * cap : 64;
      struct item *ni = realloc(it, nc * sizeof *ni);
      if (!ni) { rv = -ENOMEM; goto out; }
      it = ni;
      cap = nc;
    }
    if (!(it[n].json = malloc(v.mv_size + 1))) { rv = -ENOMEM; goto out; }
    memcpy(it[n].json, v.mv_data, v.mv_size);
    it[n].json[v.mv_size] = 0;
    it[n].len = v.mv_size;
    n++;
  }
  if (rc != MDB_NOTFOUND) rv = mg_policy__map_err(rc);
out:
  if (cur) mdb_cursor_close(cur);
  mdb_txn_abort(txn);
  if (rv) {
    for (size_t i = 0; i < n; i++) free(it[i].json);
    free(it);
    return rv;
  }
  *items = it;
  *nitems = n;
  return 0;
}

static void items_free(struct item *it, size_t n) {
  for (size_t i = 0; i < n; i++) free(it[i].json);
  free(it);
}

int mg_policy_store_list(struct mg_policy_store *s, const char *product, const char *subject,
                         mg_policy_list_cb cb, void *arg) {
  struct item *it = NULL;
  size_t n = 0;
  int rv = snapshot(s, &it, &n, NULL, NULL);
  if (rv) return rv;
  for (size_t i = 0; i < n && !rv; i++) {
    struct mg_grant *g;
    if (mg_policy_grant_parse(it[i].json, it[i].len, "", &g, NULL) != 0) {
      rv = MG_POLICY_E_STORE; /* stored bytes we did not write */
      break;
    }
    bool want = !product || strcmp(g->product, product) == 0;
    if (want && subject) {
      want = false;
      for (size_t j = 0; j < g->nsubjects && !want; j++)
        want = strcmp(g->subjects[j], subject) == 0;
    }
    if (want) {
      uint8_t h[32];
      char etag[MG_POLICY_ETAG_LEN];
      mg_sha256(it[i].json, it[i].len, h);
      etag_of(h, etag);
      if (cb(arg, g, it[i].json, etag)) {
        mg_policy_grant_free(g);
        break;
      }
    }
    mg_policy_grant_free(g);
  }
  items_free(it, n);
  return rv;
}

int mg_policy__snapshot(struct mg_policy_store *s, char ***jsons, size_t **lens, size_t *n,
                        uint8_t acc[32], uint64_t *gen) {
  struct item *it = NULL;
  size_t cnt = 0;
  int rv = snapshot(s, &it, &cnt, acc, gen);
  if (rv) return rv;
  char **j = malloc((cnt ? cnt : 1) * sizeof *j);
  size_t *l = malloc((cnt ? cnt : 1) * sizeof *l);
  if (!j || !l) {
    free(j);
    free(l);
    items_free(it, cnt);
    return -ENOMEM;
  }
  for (size_t i = 0; i < cnt; i++) {
    j[i] = it[i].json;
    l[i] = it[i].len;
  }
  free(it);
  *jsons = j;
  *lens = l;
  *n = cnt;
  return 0;
}

int mg_policy_store_verify(struct mg_policy_store *s) {
  struct item *it = NULL;
  size_t n = 0;
  uint8_t acc[32], sum[32] = {0};
  uint64_t gen;
  int rv = snapshot(s, &it, &n, acc, &gen);
  if (rv) return rv;
  for (size_t i = 0; i < n && !rv; i++) {
    struct mg_grant *g;
    if (mg_policy_grant_parse(it[i].json, it[i].len, "", &g, NULL) != 0) {
      rv = MG_POLICY_E_STORE;
      break;
    }
    char *canon = mg_policy_grant_to_json(g);
    if (!canon) rv = -ENOMEM;
    else if (strlen(canon) != it[i].len || memcmp(canon, it[i].json, it[i].len) != 0)
      rv = MG_POLICY_E_STORE;
    free(canon);
    mg_policy_grant_free(g);
    uint8_t h[32];
    mg_sha256(it[i].json, it[i].len, h);
    acc_add(sum, h);
  }
  if (!rv && memcmp(sum, acc, 32) != 0) rv = MG_POLICY_E_STORE;
  items_free(it, n);
  return rv;
}

/* ---- edits --------------------------------------------------------------------- */

/* The canonical bytes of g, after checking that they are a valid grant: the store only
 * ever holds what the parser accepts, so the index can trust it. */
static int canonical(const struct mg_grant *g, char **out) {
  *out = NULL;
  if (!g || !g->id || !g->product) return MG_POLICY_E_INVALID;
  char *j = mg_policy_grant_to_json(g);
  if (!j) return -ENOMEM;
  struct mg_grant *back;
  int rv = mg_policy_grant_parse(j, strlen(j), "", &back, NULL);
  if (rv) {
    free(j);
    return rv == -ENOMEM ? rv : MG_POLICY_E_INVALID;
  }
  bool same = mg_policy_grant_equal(g, back);
  mg_policy_grant_free(back);
  if (!same) {
    free(j);
    return MG_POLICY_E_INVALID;
  }
  *out = j;
  return 0;
}

static int stored_product_is(const char *json, size_t len, const char *product, bool *yes) {
  struct mg_grant *g;
  int rv = mg_policy_grant_parse(json, len, "", &g, NULL);
  if (rv) return rv == -ENOMEM ? rv : MG_POLICY_E_STORE;
  *yes = strcmp(g->product, product) == 0;
  mg_policy_grant_free(g);
  return 0;
}

static int call_hook(mg_policy_edit_hook hook, void *arg, const char *id, const char *oldj,
                     const char *newj, const char *oldrev, const char *newrev) {
  if (!hook) return 0;
  int rv = hook(arg, id, oldj, newj, oldrev, newrev);
  return rv > 0 ? MG_ERR_INTERNAL : rv;
}

/* Commits, or aborts on error; LMDB frees the txn either way. */
static int finish(MDB_txn *txn, int rv) {
  if (rv) {
    mdb_txn_abort(txn);
    return rv;
  }
  int rc = mdb_txn_commit(txn);
  return rc ? mg_policy__map_err(rc) : 0;
}

static bool etag_matches(const char *if_match, const char etag[MG_POLICY_ETAG_LEN]) {
  /* Strong comparison (RFC 9110 13.1.1): weak tags never match; "*" means "exists". */
  return strcmp(if_match, "*") == 0 || strcmp(if_match, etag) == 0;
}

int mg_policy_store_put(struct mg_policy_store *s, const struct mg_grant *g,
                        const struct mg_policy_precond *pc, const char *expect_product,
                        mg_policy_edit_hook hook, void *hook_arg,
                        char etag_out[MG_POLICY_ETAG_LEN], bool *created) {
  char *newj = NULL, *oldj = NULL;
  MDB_txn *txn = NULL;
  bool exists = false;
  int rc, rv;
  if (s->readonly) return -EROFS;
  if ((rv = canonical(g, &newj)) != 0) return rv;
  if (expect_product && strcmp(g->product, expect_product) != 0) {
    rv = MG_POLICY_E_PRODUCT;
    goto out_free;
  }
  size_t newlen = strlen(newj);
  uint8_t hnew[32], hold[32], acc[32];
  uint64_t gen;
  char oldrev[MG_POLICY_REVISION_LEN], newrev[MG_POLICY_REVISION_LEN];
  mg_sha256(newj, newlen, hnew);

  if ((rc = mg_policy__txn_begin(s, 0, &txn)) != 0) {
    rv = mg_policy__map_err(rc);
    goto out_free;
  }
  if ((rv = mg_policy__meta_read(s, txn, acc, &gen)) != 0) goto out_txn;
  mg_policy__revision(acc, oldrev);
  MDB_val k = {strlen(g->id), g->id}, v;
  rc = mdb_get(txn, s->grants, &k, &v);
  if (rc && rc != MDB_NOTFOUND) { rv = mg_policy__map_err(rc); goto out_txn; }
  exists = rc == 0;
  if (exists) {
    if (!(oldj = malloc(v.mv_size + 1))) { rv = -ENOMEM; goto out_txn; }
    memcpy(oldj, v.mv_data, v.mv_size);
    oldj[v.mv_size] = 0;
    mg_sha256(oldj, v.mv_size, hold);
  }
  if (pc && pc->if_none_match && exists) { rv = MG_POLICY_E_EXISTS; goto out_txn; }
  if (pc && pc->if_match) {
    char etag[MG_POLICY_ETAG_LEN];
    if (!exists) { rv = MG_POLICY_E_PRECONDITION; goto out_txn; }
    etag_of(hold, etag);
    if (!etag_matches(pc->if_match, etag)) { rv = MG_POLICY_E_PRECONDITION; goto out_txn; }
  }
  if (exists && expect_product) {
    bool same;
    if ((rv = stored_product_is(oldj, strlen(oldj), expect_product, &same)) != 0) goto out_txn;
    if (!same) { rv = MG_POLICY_E_PRODUCT; goto out_txn; }
  }
  if (exists) acc_sub(acc, hold);
  acc_add(acc, hnew);
  mg_policy__revision(acc, newrev);
  v = (MDB_val){newlen, newj};
  if ((rc = mdb_put(txn, s->grants, &k, &v, 0)) != 0 ||
      (rc = meta_write(s, txn, acc, gen + 1)) != 0) {
    rv = mg_policy__map_err(rc);
    goto out_txn;
  }
  rv = call_hook(hook, hook_arg, g->id, oldj, newj, oldrev, newrev);
out_txn:
  rv = finish(txn, rv);
  if (!rv) {
    if (etag_out) etag_of(hnew, etag_out);
    if (created) *created = !exists;
  }
out_free:
  free(oldj);
  free(newj);
  return rv;
}

int mg_policy_store_delete(struct mg_policy_store *s, const char *id,
                           const struct mg_policy_precond *pc, const char *expect_product,
                           mg_policy_edit_hook hook, void *hook_arg) {
  MDB_txn *txn = NULL;
  char *oldj = NULL;
  int rc, rv;
  if (s->readonly) return -EROFS;
  if (!id_ok(id, strlen(id))) return MG_POLICY_E_NOTFOUND;
  uint8_t hold[32], acc[32];
  uint64_t gen;
  char oldrev[MG_POLICY_REVISION_LEN], newrev[MG_POLICY_REVISION_LEN];
  if ((rc = mg_policy__txn_begin(s, 0, &txn)) != 0) return mg_policy__map_err(rc);
  if ((rv = mg_policy__meta_read(s, txn, acc, &gen)) != 0) goto out_txn;
  mg_policy__revision(acc, oldrev);
  MDB_val k = {strlen(id), (void *)id}, v;
  /* A missing grant is 404 even with If-Match: without the precondition the answer would
   * not be 2xx, so RFC 9110 13.2.1 says the precondition is not evaluated. */
  if ((rc = mdb_get(txn, s->grants, &k, &v)) != 0) { rv = mg_policy__map_err(rc); goto out_txn; }
  if (!(oldj = malloc(v.mv_size + 1))) { rv = -ENOMEM; goto out_txn; }
  memcpy(oldj, v.mv_data, v.mv_size);
  oldj[v.mv_size] = 0;
  mg_sha256(oldj, v.mv_size, hold);
  if (pc && pc->if_none_match) { rv = MG_POLICY_E_EXISTS; goto out_txn; }
  if (pc && pc->if_match) {
    char etag[MG_POLICY_ETAG_LEN];
    etag_of(hold, etag);
    if (!etag_matches(pc->if_match, etag)) { rv = MG_POLICY_E_PRECONDITION; goto out_txn; }
  }
  if (expect_product) {
    bool same;
    if ((rv = stored_product_is(oldj, strlen(oldj), expect_product, &same)) != 0) goto out_txn;
    if (!same) { rv = MG_POLICY_E_PRODUCT; goto out_txn; }
  }
  acc_sub(acc, hold);
  mg_policy__revision(acc, newrev);
  if ((rc = mdb_del(txn, s->grants, &k, NULL)) != 0 ||
      (rc = meta_write(s, txn, acc, gen + 1)) != 0) {
    rv = mg_policy__map_err(rc);
    goto out_txn;
  }
  rv = call_hook(hook, hook_arg, id, oldj, NULL, oldrev, newrev);
out_txn:
  rv = finish(txn, rv);
  free(oldj);
  return rv;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

int mg_policy_store_import(struct mg_policy_store *s, const char *product,
                           struct mg_grant *const *grants, size_t n,
                           mg_policy_edit_hook hook, void *hook_arg) {
  char **newj = NULL, **ids = NULL;
  MDB_txn *txn = NULL;
  MDB_cursor *cur = NULL;
  int rc, rv = 0;
  if (s->readonly) return -EROFS;
  if (!product || mg_policy__check_product(product, strlen(product))) return MG_POLICY_E_INVALID;
  newj = calloc(n ? n : 1, sizeof *newj);
  ids = calloc(n ? n : 1, sizeof *ids);
  if (!newj || !ids) { rv = -ENOMEM; goto out_free; }
  for (size_t i = 0; i < n; i++) {
    if ((rv = canonical(grants[i], &newj[i])) != 0) goto out_free;
    if (strcmp(grants[i]->product, product) != 0) { rv = MG_POLICY_E_PRODUCT; goto out_free; }
    ids[i] = grants[i]->id;
  }
  qsort(ids, n, sizeof *ids, cmp_str);
  for (size_t i = 1; i < n; i++)
    if (strcmp(ids[i], ids[i - 1]) == 0) { rv = MG_POLICY_E_INVALID; goto out_free; }

  uint8_t acc[32], h[32];
  uint64_t gen;
  char oldrev[MG_POLICY_REVISION_LEN], newrev[MG_POLICY_REVISION_LEN];
  if ((rc = mg_policy__txn_begin(s, 0, &txn)) != 0) { rv = mg_policy__map_err(rc); goto out_free; }
  if ((rv = mg_policy__meta_read(s, txn, acc, &gen)) != 0) goto out_txn;
  mg_policy__revision(acc, oldrev);
  if ((rc = mdb_cursor_open(txn, s->grants, &cur)) != 0) { rv = mg_policy__map_err(rc); goto out_txn; }
  MDB_val k, v;
  /* Remove the product's grants; a new id held by another product's grant is refused,
   * since an import must never touch another product. */
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    bool same;
    if ((rv = stored_product_is(v.mv_data, v.mv_size, product, &same)) != 0) goto out_cur;
    if (!same) {
      char key[MG_GRANT_ID_MAX + 1];
      size_t kl = MG_MIN(k.mv_size, (size_t)MG_GRANT_ID_MAX);
      memcpy(key, k.mv_data, kl);
      key[kl] = 0;
      const char *kp = key;
      if (n && bsearch(&kp, ids, n, sizeof *ids, cmp_str)) { rv = MG_POLICY_E_PRODUCT; goto out_cur; }
      continue;
    }
    mg_sha256(v.mv_data, v.mv_size, h);
    acc_sub(acc, h);
    if ((rc = mdb_cursor_del(cur, 0)) != 0) { rv = mg_policy__map_err(rc); goto out_cur; }
  }
  if (rc != MDB_NOTFOUND) { rv = mg_policy__map_err(rc); goto out_cur; }
  for (size_t i = 0; i < n; i++) {
    k = (MDB_val){strlen(grants[i]->id), grants[i]->id};
    v = (MDB_val){strlen(newj[i]), newj[i]};
    if ((rc = mdb_put(txn, s->grants, &k, &v, 0)) != 0) { rv = mg_policy__map_err(rc); goto out_cur; }
    mg_sha256(newj[i], v.mv_size, h);
    acc_add(acc, h);
  }
  if ((rc = meta_write(s, txn, acc, gen + 1)) != 0) { rv = mg_policy__map_err(rc); goto out_cur; }
  mg_policy__revision(acc, newrev);
  rv = call_hook(hook, hook_arg, "*import*", NULL, NULL, oldrev, newrev);
out_cur:
  mdb_cursor_close(cur);
out_txn:
  rv = finish(txn, rv);
out_free:
  if (newj)
    for (size_t i = 0; i < n; i++) free(newj[i]);
  free(newj);
  free(ids);
  return rv;
}
