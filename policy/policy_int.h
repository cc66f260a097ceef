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
  uint32_t off;      /* of the literal bytes, from the start of the grant's block */
  uint16_t len;      /* patterns are at most 1024 bytes */
  uint16_t kind;     /* MG_IX_* */
};

struct mg_ix_pat {
  uint32_t first;    /* index of its first segment in the block's segment array */
  uint32_t nseg;
};

/* One grant, laid out for decide(): a block of this header, the patterns, the segments
 * and the literal bytes, contiguous and free of pointers (~2 cache lines for a typical
 * grant). What decide() rarely needs (id, purposes, subjects) stays in the parsed grant,
 * index->grants[rank]. Every list (product, subject) holds its own copies of its grants
 * back to back, so walking a principal's grants reads one run of memory instead of
 * chasing pointers across a large index (that is what keeps decide() flat at 100k). */
struct mg_ix_grant {
  uint32_t size;           /* bytes of this block; the next block follows */
  uint32_t rank;           /* index in grants[] = id byte order */
  uint8_t effect;
  uint8_t actions;
  uint16_t npurposes;
  uint16_t npats;
  uint16_t unused;
  int64_t not_before_us;
  int64_t expires_us;
  /* struct mg_ix_pat pats[npats]; struct mg_ix_seg segs[]; char literals[]; */
};

static inline const struct mg_ix_pat *mg_ix_pats(const struct mg_ix_grant *g) {
  return (const struct mg_ix_pat *)(g + 1);
}
static inline const struct mg_ix_seg *mg_ix_segs(const struct mg_ix_grant *g) {
  return (const struct mg_ix_seg *)(mg_ix_pats(g) + g->npats);
}

/* Open addressing, linear probing; cnt == 0 marks an empty slot. 24 bytes: the key is
 * not pointed to but sits in the arena just before the list (key bytes, NUL, padding to
 * 8), so checking it touches the cache lines the walk reads next anyway. */
struct mg_ix_slot {
  uint64_t h;
  size_t off;        /* arena offset of the list's first block (products: index) */
  uint32_t klen;
  uint32_t cnt;      /* blocks in the list (products: 1) */
};

struct mg_ix_table {
  struct mg_ix_slot *slots;
  size_t mask;
};

struct mg_ix_product {
  struct mg_ix_table subjects;   /* subject -> list */
  size_t star_off;               /* list of the grants with subject "*" */
  uint32_t star_cnt;
};

struct mg_policy_index {
  int refs_count;                /* atomic */
  char revision[MG_POLICY_REVISION_LEN];
  uint64_t generation;
  struct mg_grant **grants;      /* parsed grants, id order; strings point into these */
  size_t ngrants;
  char *arena;                   /* all lists */
  size_t nproducts;
  struct mg_ix_product *products;
  const char **product_names;    /* products[i]'s name */
  struct mg_ix_table ptab;       /* product name -> products[off] */
};

/* Finds key; keys_base is where the key of a slot lives: base + off - ALIGN8(klen + 1)
 * (the arena for subjects), or NULL to compare against names[off] (products). */
const struct mg_ix_slot *mg_policy__ix_find(const struct mg_ix_table *t, const char *key,
                                            size_t len, const char *keys_base,
                                            const char *const *names);

#endif /* MG_POLICY_INT_H */
