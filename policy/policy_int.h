/*
 * policy_int.h — what the policy module's files share and nobody else needs.
 */
#ifndef MG_POLICY_INT_H
#define MG_POLICY_INT_H

#include "policy/policy.h"

#include <lmdb.h>

/* Bounds of a grant (validation rejects anything larger). */
#define MG_GRANT_ID_MAX        128
#define MG_GRANT_PRODUCT_MAX   128
#define MG_GRANT_SUBJECT_MAX   256  /* bytes after the "type:" prefix */
#define MG_GRANT_PATTERN_MAX   1024
#define MG_GRANT_SEGMENTS_MAX  128
#define MG_GRANT_PURPOSE_MAX   256
#define MG_GRANT_DESC_MAX      1024
#define MG_GRANT_LIST_MAX      1024 /* entries of subjects/resources/purposes */

struct mg_policy_store {
  MDB_env *env;
  MDB_dbi grants;
  MDB_dbi meta;
  bool readonly;
};

/* Begins a transaction, adopting a map size grown by another process (MDB_MAP_RESIZED).
 * Returns an MDB error code (0 ok). */
int mg_policy__txn_begin(struct mg_policy_store *s, unsigned flags, MDB_txn **txn);

/* Reads the meta record inside txn: digest accumulator and generation (zero if absent). */
int mg_policy__meta_read(struct mg_policy_store *s, MDB_txn *txn, uint8_t acc[32],
                         uint64_t *generation);

/* Revision text of an accumulator: hex(SHA-256(acc)). */
void mg_policy__revision(const uint8_t acc[32], char rev[MG_POLICY_REVISION_LEN]);

/* Field checks shared by the codec and the store: NULL when valid, else the reason. */
const char *mg_policy__check_id(const char *s, size_t n);
const char *mg_policy__check_product(const char *s, size_t n);

/* Copies every stored grant (canonical JSON, NUL-terminated) and the meta record out of
 * one read transaction. Caller frees each json, the arrays. */
int mg_policy__snapshot(struct mg_policy_store *s, char ***jsons, size_t **lens, size_t *n,
                        uint8_t acc[32], uint64_t *gen);

/* Maps an LMDB / system error of the store to MG_POLICY_E_*. */
int mg_policy__map_err(int mdb_rc);

/* ---- compiled index (built by index.c, read by eval.c) ---------------------- */

enum { MG_IX_LIT = 0, MG_IX_STAR = 1, MG_IX_DSTAR = 2 };

struct mg_ix_seg {
  const char *s;     /* points into the grant's pattern string */
  uint32_t len;
  uint32_t kind;     /* MG_IX_* */
};

struct mg_ix_pat {
  const struct mg_ix_seg *segs;
  uint32_t nseg;
};

/* One grant, laid out for decide(). The array of these is in id byte order (LMDB key
 * order), so "smallest id" is "lowest address". */
struct mg_ix_grant {
  const char *id;
  uint8_t effect;
  uint8_t actions;
  uint32_t npats;
  uint32_t npurposes;
  const struct mg_ix_pat *pats;
  char *const *purposes;
  char *const *subjects;   /* for explain(): was this grant already reached? */
  uint32_t nsubjects;
  int64_t not_before_us;
  int64_t expires_us;
};

/* Open addressing, linear probing; cnt == 0 marks an empty slot. */
struct mg_ix_slot {
  uint64_t h;
  const char *key;
  uint32_t klen;
  uint32_t off;      /* into index->refs (subjects) or index->products (products) */
  uint32_t cnt;
};

struct mg_ix_table {
  struct mg_ix_slot *slots;
  size_t mask;
};

struct mg_ix_product {
  struct mg_ix_table subjects;   /* subject -> refs[off .. off+cnt) */
  uint32_t star_off, star_cnt;   /* grants with subject "*" */
};

struct mg_policy_index {
  int refs_count;                /* atomic */
  char revision[MG_POLICY_REVISION_LEN];
  uint64_t generation;
  struct mg_grant **grants;      /* parsed grants; every string points into these */
  size_t ngrants;
  struct mg_ix_grant *g;
  struct mg_ix_pat *pats;
  struct mg_ix_seg *segs;
  const struct mg_ix_grant **refs;
  struct mg_ix_product *products;
  struct mg_ix_table ptab;       /* product name -> products[off] */
};

const struct mg_ix_slot *mg_policy__ix_find(const struct mg_ix_table *t, const char *key,
                                            size_t len);

#endif /* MG_POLICY_INT_H */
