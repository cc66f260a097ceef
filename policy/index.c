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

static void table_put(struct mg_ix_table *t, const char *key, uint32_t off, uint32_t cnt) {
  size_t len = strlen(key);
  uint64_t h = mg_hash64(key, len);
  size_t i = h & t->mask;
  while (t->slots[i].cnt) i = (i + 1) & t->mask;
  t->slots[i] = (struct mg_ix_slot){h, key, (uint32_t)len, off, cnt};
}

const struct mg_ix_slot *mg_policy__ix_find(const struct mg_ix_table *t, const char *key,
                                            size_t len) {
  if (!t->slots) return NULL;
  uint64_t h = mg_hash64(key, len);
  for (size_t i = h & t->mask;; i = (i + 1) & t->mask) {
    const struct mg_ix_slot *s = &t->slots[i];
    if (!s->cnt) return NULL;
    if (s->h == h && s->klen == len && memcmp(s->key, key, len) == 0) return s;
  }
}

static void index_free(struct mg_policy_index *ix) {
  if (!ix) return;
  mg_policy_grants_free(ix->grants, ix->ngrants);
  free(ix->g);
  free(ix->pats);
  free(ix->segs);
  free(ix->refs);
  if (ix->products) {
    /* products[] count = number of occupied ptab slots */
    for (size_t i = 0; ix->ptab.slots && i <= ix->ptab.mask; i++)
      if (ix->ptab.slots[i].cnt) free(ix->products[ix->ptab.slots[i].off].subjects.slots);
  }
  free(ix->products);
  free(ix->ptab.slots);
  free(ix);
}

/* Splits every pattern of every grant into segments. */
static int compile_grants(struct mg_policy_index *ix) {
  size_t npats = 0, nsegs = 0;
  for (size_t i = 0; i < ix->ngrants; i++) {
    const struct mg_grant *gr = ix->grants[i];
    npats += gr->nresources;
    for (size_t r = 0; r < gr->nresources; r++) {
      nsegs++;
      for (const char *p = gr->resources[r]; *p; p++) nsegs += *p == '/';
    }
  }
  ix->g = calloc(ix->ngrants ? ix->ngrants : 1, sizeof *ix->g);
  ix->pats = calloc(npats ? npats : 1, sizeof *ix->pats);
  ix->segs = calloc(nsegs ? nsegs : 1, sizeof *ix->segs);
  if (!ix->g || !ix->pats || !ix->segs) return -ENOMEM;
  struct mg_ix_pat *pat = ix->pats;
  struct mg_ix_seg *seg = ix->segs;
  for (size_t i = 0; i < ix->ngrants; i++) {
    const struct mg_grant *gr = ix->grants[i];
    struct mg_ix_grant *g = &ix->g[i];
    g->id = gr->id;
    g->effect = (uint8_t)gr->effect;
    g->actions = (uint8_t)gr->actions;
    g->npurposes = (uint32_t)gr->npurposes;
    g->purposes = gr->purposes;
    g->subjects = gr->subjects;
    g->nsubjects = (uint32_t)gr->nsubjects;
    g->not_before_us = gr->not_before_us;
    g->expires_us = gr->expires_us;
    g->pats = pat;
    g->npats = (uint32_t)gr->nresources;
    for (size_t r = 0; r < gr->nresources; r++, pat++) {
      const char *s = gr->resources[r];
      pat->segs = seg;
      pat->nseg = 0;
      for (;;) {
        const char *e = strchr(s, '/');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        seg->s = s;
        seg->len = (uint32_t)len;
        seg->kind = len == 1 && s[0] == '*'                  ? MG_IX_STAR
                    : len == 2 && s[0] == '*' && s[1] == '*' ? MG_IX_DSTAR
                                                             : MG_IX_LIT;
        /* Consecutive "**" segments mean the same as one and only cost backtracking. */
        if (!(seg->kind == MG_IX_DSTAR && pat->nseg && seg[-1].kind == MG_IX_DSTAR)) {
          seg++;
          pat->nseg++;
        }
        if (!e) break;
        s = e + 1;
      }
    }
  }
  return 0;
}

static int build_tables(struct mg_policy_index *ix) {
  size_t nt = 0;
  for (size_t i = 0; i < ix->ngrants; i++) nt += ix->grants[i]->nsubjects;
  struct triple *t = malloc((nt ? nt : 1) * sizeof *t);
  int rv = -ENOMEM;
  if (!t) return rv;
  size_t k = 0;
  for (size_t i = 0; i < ix->ngrants; i++)
    for (size_t j = 0; j < ix->grants[i]->nsubjects; j++)
      t[k++] = (struct triple){ix->grants[i]->product, ix->grants[i]->subjects[j], (uint32_t)i};
  qsort(t, nt, sizeof *t, triple_cmp);
  ix->refs = malloc((nt ? nt : 1) * sizeof *ix->refs);
  if (!ix->refs) goto out;
  for (size_t i = 0; i < nt; i++) ix->refs[i] = &ix->g[t[i].gi];

  size_t nprod = 0;
  for (size_t i = 0; i < nt; i++)
    if (i == 0 || strcmp(t[i].product, t[i - 1].product) != 0) nprod++;
  ix->products = calloc(nprod ? nprod : 1, sizeof *ix->products);
  if (!ix->products || table_init(&ix->ptab, nprod)) goto out;
  size_t p = 0;
  for (size_t i = 0; i < nt;) {
    size_t end = i;
    size_t nsubj = 0;
    while (end < nt && strcmp(t[end].product, t[i].product) == 0) {
      if (end == i || strcmp(t[end].subject, t[end - 1].subject) != 0) nsubj++;
      end++;
    }
    struct mg_ix_product *pr = &ix->products[p];
    if (table_init(&pr->subjects, nsubj)) goto out;
    table_put(&ix->ptab, t[i].product, (uint32_t)p, 1);
    for (size_t a = i; a < end;) {
      size_t b = a;
      while (b < end && strcmp(t[b].subject, t[a].subject) == 0) b++;
      if (strcmp(t[a].subject, "*") == 0) {
        pr->star_off = (uint32_t)a;
        pr->star_cnt = (uint32_t)(b - a);
      } else {
        table_put(&pr->subjects, t[a].subject, (uint32_t)a, (uint32_t)(b - a));
      }
      a = b;
    }
    p++;
    i = end;
  }
  rv = 0;
out:
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
  if ((rv = compile_grants(ix)) != 0 || (rv = build_tables(ix)) != 0) goto fail_json;
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
