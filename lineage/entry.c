/*
 * entry.c — entry encoding: compact JSON, keys in bytewise order, integers only, absent
 * fields omitted.
 *
 * Design: the expensive part (validating and escaping every string) runs on the
 * submitting thread, which builds a template: the final line minus the values only the
 * writer thread knows (index, time, and an outcome's `of`). The template records where
 * those go, so the writer's per-entry work is three memcpys and two small numbers. Each
 * entry kind lists its keys by hand in sorted order; emit() checks the order so a new
 * field in the wrong place fails loudly in tests instead of producing an unsorted line.
 */
#include "lineage/lineage_store.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#define MAX_GROUPS 64

struct enc {
  struct mg_buf b;
  struct mg_lineage_tmpl *t;
  const char *last; /* previous key, for the order check */
  int err;
};

static void key(struct enc *e, const char *k) {
#ifndef NDEBUG
  assert(!e->last || strcmp(e->last, k) < 0);
  e->last = k;
#endif
  if (e->err) return;
  if ((e->b.len > 1 && mg_buf_append(&e->b, ",", 1)) || mg_buf_append(&e->b, "\"", 1) ||
      mg_buf_appends(&e->b, k) || mg_buf_append(&e->b, "\":", 2))
    e->err = -ENOMEM;
}

static void kv_str(struct enc *e, const char *k, const char *v) {
  if (!v) return;
  size_t n = strlen(v);
  if (!mg_utf8_valid(v, n)) {
    e->err = -EINVAL;
    return;
  }
  key(e, k);
  if (!e->err && mg_buf_append_json_str(&e->b, v, n)) e->err = -ENOMEM;
}

static void kv_raw(struct enc *e, const char *k, const char *raw) {
  key(e, k);
  if (!e->err && mg_buf_appends(&e->b, raw)) e->err = -ENOMEM;
}

/* Counters are clamped to INT64_MAX: readers (jansson in verify, most JSON libraries)
 * refuse larger integers, and an entry that cannot be read back cannot be verified. */
/* Decimal by hand: outcome entries are encoded per request on the worker thread. */
static int append_dec(struct mg_buf *b, uint64_t u, bool neg) {
  char d[24], *p = d + sizeof d;
  do *--p = (char)('0' + u % 10); while (u /= 10);
  if (neg) *--p = '-';
  return mg_buf_append(b, p, (size_t)(d + sizeof d - p));
}

static void kv_u64(struct enc *e, const char *k, uint64_t v) {
  if (v > INT64_MAX) v = INT64_MAX;
  key(e, k);
  if (!e->err && append_dec(&e->b, v, false)) e->err = -ENOMEM;
}

static void kv_i64(struct enc *e, const char *k, int64_t v) {
  key(e, k);
  if (!e->err && append_dec(&e->b, v < 0 ? 0 - (uint64_t)v : (uint64_t)v, v < 0)) e->err = -ENOMEM;
}

static void slot(struct enc *e, const char *k, enum mg_enc_slot what) {
  bool quoted = what == MG_ENC_TIME;
  key(e, k);
  if (!e->err && quoted && mg_buf_append(&e->b, "\"", 1)) e->err = -ENOMEM;
  if (e->err) return;
  struct mg_lineage_tmpl *t = e->t;
  t->at[t->n] = (uint32_t)e->b.len;
  t->what[t->n] = (uint8_t)what;
  t->n++;
  if (quoted && mg_buf_append(&e->b, "\"", 1)) e->err = -ENOMEM;
}

static void begin(struct enc *e, struct mg_lineage_tmpl *t) {
  char *keep = t->data;
  size_t cap = t->cap;
  memset(t, 0, sizeof *t);
  mg_buf_init(&e->b);
  if (keep && cap) { /* a recycled template (the writer's per-thread item pools) */
    e->b.data = keep;
    e->b.cap = cap;
    keep[0] = 0;
  } else {
    free(keep);
  }
  e->t = t;
  e->last = NULL;
  /* one allocation for a typical entry (access lines are ~300-500 bytes) */
  e->err = mg_buf_reserve(&e->b, 512);
  if (!e->err) e->err = mg_buf_append(&e->b, "{", 1);
}

static int end(struct enc *e) {
  if (!e->err && mg_buf_append(&e->b, "}", 1)) e->err = -ENOMEM;
  if (!e->err && e->b.len > UINT32_MAX) e->err = MG_ERR_TOOBIG;
  if (e->err) {
    mg_buf_clear(&e->b);
    memset(e->t, 0, sizeof *e->t);
    return e->err;
  }
  e->t->len = e->b.len;
  e->t->cap = e->b.cap;
  e->t->data = mg_buf_steal(&e->b);
  return 0;
}

int mg_lineage_tmpl_access(const struct mg_lineage_access *a, const char *origin_json,
                           struct mg_lineage_tmpl *t) {
  struct enc e;
  begin(&e, t);
  kv_str(&e, "action", a->action);
  kv_str(&e, "client", a->client);
  kv_str(&e, "dataset", a->dataset);
  kv_str(&e, "decision", a->decision);
  kv_str(&e, "grant", a->grant);
  if (a->ngroups && a->groups) {
    size_t n = MG_MIN(a->ngroups, (size_t)MAX_GROUPS);
    key(&e, "groups");
    if (!e.err && mg_buf_append(&e.b, "[", 1)) e.err = -ENOMEM;
    for (size_t i = 0; i < n && !e.err; i++) {
      const char *g = a->groups[i] ? a->groups[i] : "";
      size_t gl = strlen(g);
      if (!mg_utf8_valid(g, gl)) e.err = -EINVAL;
      else if ((i && mg_buf_append(&e.b, ",", 1)) || mg_buf_append_json_str(&e.b, g, gl))
        e.err = -ENOMEM;
    }
    if (!e.err && mg_buf_append(&e.b, "]", 1)) e.err = -ENOMEM;
    if (a->ngroups > MAX_GROUPS) kv_u64(&e, "groups_more", a->ngroups - MAX_GROUPS);
  }
  slot(&e, "index", MG_ENC_INDEX);
  kv_str(&e, "method", a->method);
  kv_raw(&e, "origin", origin_json);
  kv_str(&e, "path", a->path);
  kv_str(&e, "peer", a->peer);
  kv_str(&e, "policy_revision", a->policy_revision);
  kv_str(&e, "principal", a->principal);
  kv_str(&e, "product", a->product);
  kv_str(&e, "purpose", a->purpose);
  kv_str(&e, "reason", a->reason);
  kv_str(&e, "request_id", a->request_id);
  slot(&e, "time", MG_ENC_TIME);
  kv_str(&e, "token", a->token);
  return end(&e);
}

int mg_lineage_tmpl_outcome(const struct mg_lineage_outcome *o, const char *origin_json,
                            struct mg_lineage_tmpl *t) {
  struct enc e;
  begin(&e, t);
  kv_u64(&e, "bytes_in", o->bytes_in);
  kv_u64(&e, "bytes_out", o->bytes_out);
  kv_u64(&e, "duration_us", o->duration_us);
  slot(&e, "index", MG_ENC_INDEX);
  slot(&e, "of", MG_ENC_OF);
  kv_raw(&e, "origin", origin_json);
  kv_str(&e, "request_id", o->request_id);
  if (o->reset >= 0) kv_i64(&e, "reset", o->reset);
  kv_i64(&e, "status", o->status);
  slot(&e, "time", MG_ENC_TIME);
  return end(&e);
}

int mg_lineage_tmpl_policy(const struct mg_lineage_policy_write *p, const char *origin_json,
                           struct mg_lineage_tmpl *t) {
  struct enc e;
  begin(&e, t);
  kv_str(&e, "action", "policy-write");
  kv_str(&e, "editor", p->editor);
  kv_str(&e, "grant", p->grant);
  slot(&e, "index", MG_ENC_INDEX);
  kv_str(&e, "new_revision", p->new_revision);
  kv_str(&e, "old_revision", p->old_revision);
  kv_raw(&e, "origin", origin_json);
  kv_str(&e, "product", p->product);
  kv_str(&e, "request_id", p->request_id);
  slot(&e, "time", MG_ENC_TIME);
  return end(&e);
}

int mg_lineage_tmpl_summary(const char *peer, const char *decision, const char *reason,
                            uint64_t count, const char *origin_json, struct mg_lineage_tmpl *t) {
  struct enc e;
  begin(&e, t);
  kv_u64(&e, "count", count);
  kv_str(&e, "decision", decision);
  slot(&e, "index", MG_ENC_INDEX);
  kv_raw(&e, "origin", origin_json);
  kv_str(&e, "peer", peer);
  kv_str(&e, "reason", reason);
  kv_u64(&e, "summary", 1);
  slot(&e, "time", MG_ENC_TIME);
  return end(&e);
}

void mg_lineage_tmpl_clear(struct mg_lineage_tmpl *t) {
  free(t->data);
  memset(t, 0, sizeof *t);
}

/* v in decimal at out (no NUL); returns its length. The writer runs this twice per entry. */
static size_t dec(char out[24], uint64_t v) {
  char d[24], *p = d + sizeof d;
  do *--p = (char)('0' + v % 10); while (v /= 10);
  size_t n = (size_t)(d + sizeof d - p);
  memcpy(out, p, n);
  return n;
}

int mg_lineage_tmpl_finish(const struct mg_lineage_tmpl *t, uint64_t index, uint64_t of,
                           const char *time, size_t time_len, struct mg_buf *out) {
  char num[2][24];
  size_t numlen[2];
  numlen[0] = dec(num[0], index);
  numlen[1] = dec(num[1], of);
  if (mg_buf_reserve(out, t->len + numlen[0] + numlen[1] + time_len)) return -ENOMEM;
  size_t pos = 0;
  for (unsigned i = 0; i < t->n; i++) {
    mg_buf_append(out, t->data + pos, t->at[i] - pos);
    pos = t->at[i];
    switch (t->what[i]) {
    case MG_ENC_INDEX: mg_buf_append(out, num[0], numlen[0]); break;
    case MG_ENC_OF: mg_buf_append(out, num[1], numlen[1]); break;
    default: mg_buf_append(out, time, time_len); break;
    }
  }
  mg_buf_append(out, t->data + pos, t->len - pos);
  return 0;
}
