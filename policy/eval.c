/*
 * eval.c — decisions against a compiled index. Runs on every request: no allocation,
 * no locks, no writes to the index.
 *
 * Resource matching treats segments as units: a literal matches one equal segment, "*"
 * one non-empty segment, "**" any run of segments. It is the classic wildcard algorithm
 * with a single backtrack point (the last "**" seen): on a mismatch the last "**"
 * swallows one more segment and matching resumes after it. Earlier "**" never need to
 * be revisited, so the cost is O(pattern segments x resource segments), never
 * exponential.
 *
 * The rules and the precedence of reasons are documented in policy.h.
 */
#include "policy/policy_int.h"

#include <string.h>

static bool seg_eq(const char *base, const struct mg_ix_seg *p, const char *s, size_t n) {
  if (p->kind == MG_IX_STAR) return n > 0;
  return p->len == n && memcmp(base + p->off, s, n) == 0;
}

/* End of the resource segment starting at pos. */
static size_t seg_end(const char *r, size_t rl, size_t pos) {
  const char *e = memchr(r + pos, '/', rl - pos);
  return e ? (size_t)(e - r) : rl;
}

static bool pat_match(const struct mg_ix_grant *g, const struct mg_ix_pat *pat, const char *r,
                      size_t rl) {
  const char *base = (const char *)g;
  const struct mg_ix_seg *p = mg_ix_segs(g) + pat->first;
  uint32_t np = pat->nseg, pi = 0;
  size_t pos = 0;
  bool done = rl == 0; /* "" has no segments; "a/" has two, the second empty */
  bool have_star = false;
  uint32_t star_pi = 0;
  size_t star_pos = 0;
  bool star_done = false;
  while (!done) {
    if (pi < np && p[pi].kind == MG_IX_DSTAR) {
      have_star = true;
      star_pi = pi++;
      star_pos = pos;
      star_done = done;
      continue;
    }
    size_t end = seg_end(r, rl, pos);
    if (pi < np && seg_eq(base, &p[pi], r + pos, end - pos)) {
      pi++;
      if (end == rl) done = true;
      else pos = end + 1;
      continue;
    }
    if (!have_star) return false;
    /* The last "**" takes one more segment. */
    size_t se = seg_end(r, rl, star_pos);
    if (se == rl) star_done = true;
    else star_pos = se + 1;
    pi = star_pi + 1;
    pos = star_pos;
    done = star_done;
  }
  while (pi < np && p[pi].kind == MG_IX_DSTAR) pi++;
  return pi == np;
}

static bool has_purpose(const struct mg_grant *gr, const char *purpose) {
  for (size_t i = 0; i < gr->npurposes; i++)
    if (strcmp(gr->purposes[i], purpose) == 0) return true;
  return false;
}

struct state {
  const struct mg_ix_grant *deny, *allow, *purpose, *expired;
  const char **ids;
  size_t max, n;
  const struct mg_policy_request *rq;
  const struct mg_policy_index *ix;
  size_t cur; /* index of the principal whose list is walked; nprincipals = "*" */
};

/* Lowest rank = smallest id. */
static void keep_min(const struct mg_ix_grant **slot, const struct mg_ix_grant *g) {
  if (!*slot || g->rank < (*slot)->rank) *slot = g;
}

/* A grant is reached once per request principal it names (and once more if it names
 * "*"): it was seen before iff an earlier principal is one of its subjects. Checking that
 * instead of remembering visited grants keeps explain() allocation-free and exact. */
static bool seen_before(const struct state *st, const struct mg_ix_grant *g) {
  for (size_t j = 0; j < st->cur; j++) {
    const char *p = st->rq->principals[j];
    if (!p || (p[0] == '*' && !p[1])) continue;
    const struct mg_grant *gr = st->ix->grants[g->rank];
    for (size_t k = 0; k < gr->nsubjects; k++)
      if (strcmp(gr->subjects[k], p) == 0) return true;
  }
  return false;
}

static void record(struct state *st, const struct mg_ix_grant *g) {
  if (!st->ids || seen_before(st, g)) return;
  if (st->n < st->max) st->ids[st->n] = st->ix->grants[g->rank]->id;
  st->n++;
}

#ifdef MG_POLICY_STATS
unsigned long mg_policy_stat_considered, mg_policy_stat_lookups, mg_policy_stat_found;
#define STAT(x) (x)++
#else
#define STAT(x) ((void)0)
#endif

static void consider(struct state *st, const struct mg_ix_grant *g,
                     const struct mg_policy_request *rq) {
  STAT(mg_policy_stat_considered);
  if (!(g->actions & rq->action)) return;
  bool hit = false;
  const struct mg_ix_pat *pats = mg_ix_pats(g);
  for (uint16_t i = 0; i < g->npats && !hit; i++)
    hit = pat_match(g, &pats[i], rq->resource, rq->resource_len);
  /* A trailing slash makes another resource ("a/" is not "a"), but many products serve
   * both alike: a deny on "a" also covers "a/", so the slash is no way around it. */
  size_t rl = rq->resource_len;
  if (!hit && g->effect == MG_POLICY_DENY && rl > 0 && rq->resource[rl - 1] == '/')
    for (uint16_t i = 0; i < g->npats && !hit; i++)
      hit = pat_match(g, &pats[i], rq->resource, rl - 1);
  if (!hit) return;
  bool in_window = (g->not_before_us == MG_POLICY_NO_TIME || rq->now_us >= g->not_before_us) &&
                   (g->expires_us == MG_POLICY_NO_TIME || rq->now_us < g->expires_us);
  if (g->effect == MG_POLICY_DENY) {
    if (!in_window) return;
    if (g->npurposes && rq->purpose && !has_purpose(st->ix->grants[g->rank], rq->purpose)) return;
    keep_min(&st->deny, g);
    record(st, g);
    return;
  }
  if (!in_window) {
    keep_min(&st->expired, g);
    return;
  }
  if (g->npurposes && (!rq->purpose || !has_purpose(st->ix->grants[g->rank], rq->purpose))) {
    keep_min(&st->purpose, g);
    return;
  }
  keep_min(&st->allow, g);
  record(st, g);
}

static void walk_list(struct state *st, const char *block, uint32_t cnt,
                      const struct mg_policy_request *rq) {
  for (uint32_t k = 0; k < cnt; k++) {
    const struct mg_ix_grant *g = (const struct mg_ix_grant *)block;
    consider(st, g, rq);
    block += g->size;
  }
}

#define ALIGN8(x) (((x) + 7) & ~(size_t)7)
#define PIPE 16 /* principals looked up together */

/* Memory, not arithmetic, is the cost at 100k grants: each principal's slot and list are
 * cold. So lookups are pipelined: hash every principal and prefetch its slot, then read
 * the slots and prefetch the lists, then walk the lists; the misses overlap instead of
 * queueing. Correctness does not depend on the prefetches. */
static void walk_principals(const struct mg_policy_index *ix, const struct mg_ix_product *pr,
                            struct state *st, size_t from, size_t to) {
  const struct mg_policy_request *rq = st->rq;
  const struct mg_ix_table *t = &pr->subjects;
  uint64_t h[PIPE];
  size_t len[PIPE];
  const struct mg_ix_slot *slot[PIPE];
  size_t n = to - from;
  for (size_t i = 0; i < n; i++) {
    const char *pn = rq->principals[from + i];
    slot[i] = NULL;
    len[i] = 0;
    if (!pn || (pn[0] == '*' && !pn[1]) || !t->slots) continue;
    len[i] = strlen(pn);
    h[i] = mg_hash64(pn, len[i]);
    __builtin_prefetch(&t->slots[h[i] & t->mask]);
  }
  for (size_t i = 0; i < n; i++) {
    if (!len[i]) continue;
    for (size_t k = h[i] & t->mask;; k = (k + 1) & t->mask) {
      const struct mg_ix_slot *sl = &t->slots[k];
      if (!sl->cnt) break;
      if (sl->h == h[i] && sl->klen == len[i]) {
        slot[i] = sl;
        /* The key and the list after it: a grant block is ~3-4 cache lines. */
        const char *key = ix->arena + sl->off - ALIGN8(len[i] + 1);
        size_t lines = MG_MIN(2 + 4 * (size_t)sl->cnt, 24);
        for (size_t l = 0; l < lines; l++) __builtin_prefetch(key + 64 * l);
        break;
      }
    }
  }
  for (size_t i = 0; i < n; i++) {
    const struct mg_ix_slot *sl = slot[i];
    if (!sl) continue;
    STAT(mg_policy_stat_lookups);
    const char *pn = rq->principals[from + i];
    if (memcmp(ix->arena + sl->off - ALIGN8(len[i] + 1), pn, len[i]) != 0) {
      /* 64-bit hash collision: fall back to the plain probe. */
      sl = mg_policy__ix_find(t, pn, len[i], ix->arena, NULL);
      if (!sl) continue;
    }
    STAT(mg_policy_stat_found);
    st->cur = from + i;
    walk_list(st, ix->arena + sl->off, sl->cnt, rq);
  }
}

static void walk(const struct mg_policy_index *ix, const struct mg_policy_request *rq,
                 struct state *st) {
  if (!rq->product || !rq->resource || !rq->action) return;
  const struct mg_ix_slot *ps = mg_policy__ix_find(&ix->ptab, rq->product, strlen(rq->product),
                                                   NULL, ix->product_names);
  if (!ps) return;
  const struct mg_ix_product *pr = &ix->products[ps->off];
  st->rq = rq;
  if (pr->star_cnt) __builtin_prefetch(ix->arena + pr->star_off);
  for (size_t i = 0; i < rq->nprincipals; i += PIPE)
    walk_principals(ix, pr, st, i, MG_MIN(i + PIPE, rq->nprincipals));
  st->cur = rq->nprincipals;
  walk_list(st, ix->arena + pr->star_off, pr->star_cnt, rq);
}

static void conclude(const struct mg_policy_index *ix, const struct state *st,
                     struct mg_policy_decision *out) {
  const struct mg_ix_grant *g = NULL;
  out->allow = false;
  if (st->deny) {
    g = st->deny;
    out->reason = MG_POLICY_REASON_DENIED;
  } else if (st->allow) {
    g = st->allow;
    out->allow = true;
    out->reason = MG_POLICY_REASON_ALLOWED;
  } else if (st->purpose) {
    g = st->purpose;
    out->reason = MG_POLICY_REASON_PURPOSE_MISSING;
  } else if (st->expired) {
    g = st->expired;
    out->reason = MG_POLICY_REASON_EXPIRED;
  } else {
    out->reason = MG_POLICY_REASON_NO_GRANT;
  }
  out->grant_id = g ? ix->grants[g->rank]->id : NULL;
}

void mg_policy_decide(const struct mg_policy_index *ix, const struct mg_policy_request *rq,
                      struct mg_policy_decision *out) {
  struct state st = {.ix = ix};
  if (ix) walk(ix, rq, &st);
  conclude(ix, &st, out);
}

size_t mg_policy_explain(const struct mg_policy_index *ix, const struct mg_policy_request *rq,
                         struct mg_policy_decision *out, const char **ids, size_t max) {
  static const char *dummy[1];
  struct state st = {.ids = ids ? ids : dummy, .max = ids ? max : 0, .ix = ix};
  if (ix) walk(ix, rq, &st);
  conclude(ix, &st, out);
  return st.n;
}
