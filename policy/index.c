/*
 * index.c — compiles the store's grants into an immutable, reference-counted index.
 *
 * The index is built from one short read transaction (the bytes are copied out, parsing
 * happens after the transaction ended). Layout: product name -> (subject -> list of
 * grants, plus the list of "*" grants); every resource pattern is pre-split into
 * segments. decide() then does one hash lookup per principal and walks only the grants
 * that name that principal in the request's product, so its cost depends on how many
 * grants a principal has, not on how many grants exist.
 *
 * Lists are built by sorting (product, subject, grant) triples, which also gives every
 * list in id order (the grant array itself is in LMDB key order = id byte order).
 */
#include "policy/policy_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct triple {
  const char *product;
  const char *subject;
  uint32_t gi;
};

static int triple_cmp(const void *a, const void *b) {
  const struct triple *x = a, *y = b;
  int r = strcmp(x->product, y->product);
  if (!r) r = strcmp(x->subject, y->subject);
  if (!r) r = x->gi < y->gi ? -1 : x->gi > y->gi;
  return r;
}

static size_t pow2_for(size_t n) {
  size_t c = 8;
  while (c < 2 * n) c <<= 1;
  return c;
}

static int table_init(struct mg_ix_table *t, size_t n) {
  size_t cap = pow2_for(n);
  t->slots = calloc(cap, sizeof *t->slots);
  if (!t->slots) return -ENOMEM;
  t->mask = cap - 1;
  return 0;
}

#define ALIGN8(x) (((x) + 7) & ~(size_t)7)

static void table_put(struct mg_ix_table *t, const char *key, size_t off, uint32_t cnt) {
  size_t len = strlen(key);
  uint64_t h = mg_hash64(key, len);
  size_t i = h & t->mask;
  while (t->slots[i].cnt) i = (i + 1) & t->mask;
  t->slots[i] = (struct mg_ix_slot){h, off, (uint32_t)len, cnt};
}

const struct mg_ix_slot *mg_policy__ix_find(const struct mg_ix_table *t, const char *key,
                                            size_t len, const char *keys_base,
                                            const char *const *names) {
  if (!t->slots) return NULL;
  uint64_t h = mg_hash64(key, len);
  for (size_t i = h & t->mask;; i = (i + 1) & t->mask) {
    const struct mg_ix_slot *s = &t->slots[i];
    if (!s->cnt) return NULL;
    if (s->h != h || s->klen != len) continue;
    const char *k = keys_base ? keys_base + s->off - ALIGN8(len + 1) : names[s->off];
    if (memcmp(k, key, len) == 0) return s;
  }
}

static void index_free(struct mg_policy_index *ix) {
  if (!ix) return;
  mg_policy_grants_free(ix->grants, ix->ngrants);
  free(ix->arena);
  for (size_t i = 0; ix->products && i < ix->nproducts; i++) free(ix->products[i].subjects.slots);
  free(ix->products);
  free(ix->product_names);
  free(ix->ptab.slots);
  free(ix);
}

static size_t seg_count(const char *pat) {
  size_t n = 1;
  for (const char *p = pat; *p; p++) n += *p == '/';
  return n;
}

/* Bytes of one grant's block. */
static size_t block_size(const struct mg_grant *gr) {
  size_t n = sizeof(struct mg_ix_grant) + gr->nresources * sizeof(struct mg_ix_pat);
  size_t chars = 0;
  for (size_t r = 0; r < gr->nresources; r++) {
    n += seg_count(gr->resources[r]) * sizeof(struct mg_ix_seg);
    chars += strlen(gr->resources[r]);
  }
  return ALIGN8(n + chars);
}

/* Writes grant gr (rank = its position in id order) as a block at dst. */
static void emit_grant(char *dst, const struct mg_grant *gr, uint32_t rank) {
  struct mg_ix_grant *g = (struct mg_ix_grant *)dst;
  *g = (struct mg_ix_grant){
      .size = (uint32_t)block_size(gr),
      .rank = rank,
      .effect = (uint8_t)gr->effect,
      .actions = (uint8_t)gr->actions,
      .npurposes = (uint16_t)gr->npurposes,
      .npats = (uint16_t)gr->nresources,
      .not_before_us = gr->not_before_us,
      .expires_us = gr->expires_us,
  };
  struct mg_ix_pat *pat = (struct mg_ix_pat *)(g + 1);
  struct mg_ix_seg *seg0 = (struct mg_ix_seg *)(pat + gr->nresources), *seg = seg0;
  size_t nseg_all = 0;
  for (size_t r = 0; r < gr->nresources; r++) nseg_all += seg_count(gr->resources[r]);
  char *chars = (char *)(seg0 + nseg_all);
  for (size_t r = 0; r < gr->nresources; r++, pat++) {
    const char *s = gr->resources[r];
    pat->first = (uint32_t)(seg - seg0);
    pat->nseg = 0;
    for (;;) {
      const char *e = strchr(s, '/');
      size_t len = e ? (size_t)(e - s) : strlen(s);
      uint16_t kind = len == 1 && s[0] == '*'                  ? MG_IX_STAR
                      : len == 2 && s[0] == '*' && s[1] == '*' ? MG_IX_DSTAR
                                                               : MG_IX_LIT;
      /* Consecutive "**" segments mean the same as one and only cost backtracking. */
      if (!(kind == MG_IX_DSTAR && pat->nseg && seg[-1].kind == MG_IX_DSTAR)) {
        memcpy(chars, s, len);
        *seg++ = (struct mg_ix_seg){(uint32_t)(chars - dst), (uint16_t)len, kind};
        chars += len;
        pat->nseg++;
      }
      if (!e) break;
      s = e + 1;
    }
  }
}

/* Groups (product, subject, grant) triples into lists laid out in one arena:
 * for each list, the subject bytes then its grant blocks in id order. */
static int build_tables(struct mg_policy_index *ix) {
  size_t nt = 0;
  for (size_t i = 0; i < ix->ngrants; i++) nt += ix->grants[i]->nsubjects;
  struct triple *t = malloc((nt ? nt : 1) * sizeof *t);
  size_t *bsize = malloc((ix->ngrants ? ix->ngrants : 1) * sizeof *bsize);
  int rv = -ENOMEM;
  if (!t || !bsize) goto out;
  size_t k = 0;
  for (size_t i = 0; i < ix->ngrants; i++) {
    bsize[i] = block_size(ix->grants[i]);
    for (size_t j = 0; j < ix->grants[i]->nsubjects; j++)
      t[k++] = (struct triple){ix->grants[i]->product, ix->grants[i]->subjects[j], (uint32_t)i};
  }
  qsort(t, nt, sizeof *t, triple_cmp);

  size_t total = 0, nprod = 0;
  for (size_t i = 0; i < nt; i++) {
    bool new_list = i == 0 || strcmp(t[i].product, t[i - 1].product) != 0 ||
                    strcmp(t[i].subject, t[i - 1].subject) != 0;
    if (i == 0 || strcmp(t[i].product, t[i - 1].product) != 0) nprod++;
    if (new_list) total += ALIGN8(strlen(t[i].subject) + 1);
    total += bsize[t[i].gi];
  }
  ix->arena = malloc(total ? total : 8);
  ix->products = calloc(nprod ? nprod : 1, sizeof *ix->products);
  ix->product_names = calloc(nprod ? nprod : 1, sizeof *ix->product_names);
  if (!ix->arena || !ix->products || !ix->product_names || table_init(&ix->ptab, nprod))
    goto out;
  char *at = ix->arena;
  for (size_t i = 0; i < nt;) {
    size_t end = i, nsubj = 0;
    while (end < nt && strcmp(t[end].product, t[i].product) == 0) {
      if (end == i || strcmp(t[end].subject, t[end - 1].subject) != 0) nsubj++;
      end++;
    }
    struct mg_ix_product *pr = &ix->products[ix->nproducts];
    if (table_init(&pr->subjects, nsubj)) goto out;
    table_put(&ix->ptab, t[i].product, ix->nproducts, 1);
    ix->product_names[ix->nproducts] = t[i].product;
    ix->nproducts++;
    for (size_t a = i; a < end;) {
      size_t b = a;
      while (b < end && strcmp(t[b].subject, t[a].subject) == 0) b++;
      size_t klen = strlen(t[a].subject);
      char *key = at;
      memcpy(key, t[a].subject, klen + 1);
      at += ALIGN8(klen + 1);
      size_t off = (size_t)(at - ix->arena);
      for (size_t c = a; c < b; c++) {
        emit_grant(at, ix->grants[t[c].gi], t[c].gi);
        at += bsize[t[c].gi];
      }
      if (klen == 1 && key[0] == '*') {
        pr->star_off = off;
        pr->star_cnt = (uint32_t)(b - a);
      } else {
        table_put(&pr->subjects, key, off, (uint32_t)(b - a));
      }
      a = b;
    }
    i = end;
  }
  rv = 0;
out:
  free(bsize);
  free(t);
  return rv;
}

int mg_policy_index_build(struct mg_policy_store *s, struct mg_policy_index **out) {
  char **jsons = NULL;
  size_t *lens = NULL, n = 0;
  uint8_t acc[32];
  int rv;
  *out = NULL;
  struct mg_policy_index *ix = calloc(1, sizeof *ix);
  if (!ix) return -ENOMEM;
  __atomic_store_n(&ix->refs_count, 1, __ATOMIC_RELAXED);
  if ((rv = mg_policy__snapshot(s, &jsons, &lens, &n, acc, &ix->generation)) != 0) goto fail;
  mg_policy__revision(acc, ix->revision);
  ix->grants = calloc(n ? n : 1, sizeof *ix->grants);
  if (!ix->grants) { rv = -ENOMEM; goto fail_json; }
  for (size_t i = 0; i < n; i++) {
    rv = mg_policy_grant_parse(jsons[i], lens[i], "", &ix->grants[i], NULL);
    if (rv) {
      /* The store holds only what the parser accepted; anything else is corruption. */
      if (rv != -ENOMEM) rv = MG_POLICY_E_STORE;
      goto fail_json;
    }
    ix->ngrants++;
  }
  if ((rv = build_tables(ix)) != 0) goto fail_json;
  for (size_t i = 0; i < n; i++) free(jsons[i]);
  free(jsons);
  free(lens);
  *out = ix;
  return 0;

fail_json:
  for (size_t i = 0; i < n; i++) free(jsons[i]);
  free(jsons);
  free(lens);
fail:
  index_free(ix);
  return rv;
}

void mg_policy_index_ref(struct mg_policy_index *ix) {
  __atomic_add_fetch(&ix->refs_count, 1, __ATOMIC_RELAXED);
}

void mg_policy_index_unref(struct mg_policy_index *ix) {
  if (!ix) return;
  if (__atomic_sub_fetch(&ix->refs_count, 1, __ATOMIC_ACQ_REL) == 0) index_free(ix);
}

const char *mg_policy_index_revision(const struct mg_policy_index *ix) { return ix->revision; }
uint64_t mg_policy_index_generation(const struct mg_policy_index *ix) { return ix->generation; }
size_t mg_policy_index_count(const struct mg_policy_index *ix) { return ix->ngrants; }
