/*
 * verify.c — `meshgate lineage verify`: checks an export against verifier keys.
 *
 * Design: one streaming pass, state per origin, nothing but the current line and the
 * leaf hashes since each origin's last checkpoint held in memory. Each line is parsed
 * strictly (jansson, duplicate keys rejected) and classified: entry (has "index"),
 * checkpoint, prefix, proof or consistency.
 *
 * Unfiltered (no proof lines): an origin's indexes must run contiguously from 0 (or the
 * prefix size); every leaf goes into a Merkle frontier, so each checkpoint's root is
 * recomputed from the exact line bytes and compared; two checkpoints of one origin are
 * then consistent by construction. A mismatch is pinned to one entry with the
 * checkpoint's optional "leaves" member (the writer's leaf hashes since the previous
 * checkpoint) once those leaves are shown to reproduce the signed root; without it the
 * first index after the previous good checkpoint is named.
 *
 * Filtered (an entry followed by its proof line): entries and proofs are buffered until
 * a checkpoint of the proof's size arrives, then each inclusion proof is verified; two
 * checkpoints of one origin need a consistency line between them.
 *
 * An entry's classification needs the next line (is it its proof?), so one entry is
 * always held back. The first failure ends the pass: res says what, where, and which index.
 */
#include "lineage/lineage_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#define LINE_MAX_BYTES (64u << 20) /* a checkpoint with "leaves" for ~1.5M entries */
#define READ_CHUNK (1u << 20)

/* ---- line reader: fread into a growable buffer; bounded line length -------- */

struct reader {
  FILE *in;
  char *buf;
  size_t cap, start, end;
  bool eof;
  int err;
};

/* 1: line and len set (no LF); 0: end of input; <0: error (r->err). */
static int next_line(struct reader *r, char **line, size_t *len) {
  size_t scanned = r->start;
  for (;;) {
    char *nl = r->end > scanned ? memchr(r->buf + scanned, '\n', r->end - scanned) : NULL;
    if (nl) {
      *line = r->buf + r->start;
      *len = (size_t)(nl - *line);
      r->start = (size_t)(nl - r->buf) + 1;
      return 1;
    }
    if (r->end - r->start > LINE_MAX_BYTES) { r->err = MG_ERR_TOOBIG; return -1; }
    if (r->eof) {
      if (r->end == r->start) return 0;
      *line = r->buf + r->start;
      *len = r->end - r->start;
      r->start = r->end;
      return 1;
    }
    if (r->start > 0) { /* compact */
      memmove(r->buf, r->buf + r->start, r->end - r->start);
      r->end -= r->start;
      r->start = 0;
    }
    scanned = r->end;
    if (r->cap - r->end < READ_CHUNK) {
      size_t ncap = r->cap ? r->cap * 2 : 2 * READ_CHUNK;
      while (ncap - r->end < READ_CHUNK) ncap *= 2;
      char *nb = realloc(r->buf, ncap + 1);
      if (!nb) { r->err = -ENOMEM; return -1; }
      r->buf = nb;
      r->cap = ncap;
    }
    size_t got = fread(r->buf + r->end, 1, r->cap - r->end, r->in);
    r->end += got;
    if (got == 0) {
      if (ferror(r->in)) { r->err = -EIO; return -1; }
      r->eof = true;
    }
  }
}

/* ---- per-origin state ------------------------------------------------------ */

enum mode { MODE_NONE = 0, MODE_FULL, MODE_FILTERED };

struct leafrec {
  uint8_t h[MG_HASH_LEN];
  long line;
};

struct proofrec {
  uint64_t index, size;
  uint8_t leaf[MG_HASH_LEN];
  long line;
  size_t n;
  uint8_t (*hashes)[MG_HASH_LEN];
};

struct origin {
  char *name;
  bool time_bad;            /* first "time goes backwards", reported once the checkpoint's */
  uint64_t time_bad_index;  /* hashes could not name an edited entry instead */
  long time_bad_line;
  enum mode mode;
  bool started;             /* an entry or a prefix was seen */
  uint64_t start, next;     /* first index of the export; next expected index */
  uint64_t nentries;        /* entry lines of this origin */
  struct mg_merkle_frontier f, cp_f; /* now; at the last good checkpoint */
  bool have_cp;
  uint64_t cp_size;         /* entries covered (== start before any checkpoint) */
  uint8_t cp_root[MG_HASH_LEN];
  long cp_line;
  struct leafrec *pending;  /* leaves since the last good checkpoint */
  size_t npending, cappending;
  bool have_time;
  int64_t last_time;
  uint64_t last_index;      /* filtered: strictly increasing */
  bool any_index;
  struct proofrec *proofs;  /* filtered: waiting for their checkpoint */
  size_t nproofs, capproofs;
  bool have_cons;           /* filtered: consistency line since the last checkpoint */
  uint64_t cons_from, cons_to;
  size_t cons_n;
  uint8_t cons_h[MG_MERKLE_MAX_LEVELS][MG_HASH_LEN];
  long cons_line;
  uint64_t empty_cp_size;   /* checkpoint of size > 0 seen with no entries at all */
  long empty_cp_line;
  bool pre_cp;              /* a checkpoint seen before any entry: a filtered section's */
  uint64_t pre_size;        /* first checkpoint may precede its first match */
  uint8_t pre_root[MG_HASH_LEN];
  bool deferred;            /* first entry not at 0: reported at its checkpoint or the end, */
  uint64_t def_found;       /* so that the origin an entry was moved OUT of is named first */
  long def_line;
};

struct held {               /* the entry whose proof line may follow */
  bool valid;
  struct origin *o;
  uint64_t index;
  int64_t time;
  uint8_t leaf[MG_HASH_LEN];
  long line;
};

struct vstate {
  struct mg_lineage_verify_result *res;
  struct mg_note_verifier **v;
  size_t nv;
  bool *signed_by;
  struct origin **origins;
  size_t norigins;
  struct origin *last;
  struct held held;
  bool any_proof;
  bool filtered_marker;     /* a checkpoint line said "filtered":1 */
  long line;
};

static int fail(struct vstate *s, int code, long line, uint64_t index, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int fail(struct vstate *s, int code, long line, uint64_t index, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(s->res->reason, sizeof s->res->reason, fmt, ap);
  va_end(ap);
  /* one line for stderr: never let a quoted origin smuggle a newline out */
  for (char *p = s->res->reason; *p; p++)
    if ((unsigned char)*p < 0x20) *p = ' ';
  s->res->bad_line = line;
  s->res->bad_index = index;
  return code;
}

static struct origin *origin_get(struct vstate *s, const char *name, size_t n) {
  if (s->last && strlen(s->last->name) == n && memcmp(s->last->name, name, n) == 0) return s->last;
  for (size_t i = 0; i < s->norigins; i++)
    if (strlen(s->origins[i]->name) == n && memcmp(s->origins[i]->name, name, n) == 0)
      return s->last = s->origins[i];
  struct origin **no = realloc(s->origins, (s->norigins + 1) * sizeof *no);
  if (!no) return NULL;
  s->origins = no;
  struct origin *o = calloc(1, sizeof *o);
  if (!o || !(o->name = strndup(name, n))) { free(o); return NULL; }
  mg_merkle_frontier_init(&o->f);
  mg_merkle_frontier_init(&o->cp_f);
  s->origins[s->norigins++] = o;
  return s->last = o;
}

static void origin_free(struct origin *o) {
  for (size_t i = 0; i < o->nproofs; i++) free(o->proofs[i].hashes);
  free(o->proofs);
  free(o->pending);
  free(o->name);
  free(o);
}

/* ---- small parsing helpers ------------------------------------------------- */

static bool get_u64(json_t *obj, const char *key, uint64_t *out) {
  json_t *v = json_object_get(obj, key);
  if (!json_is_integer(v) || json_integer_value(v) < 0) return false;
  *out = (uint64_t)json_integer_value(v);
  return true;
}

/* A JSON array of base64 hashes into out (at most max). */
static bool get_hashes(json_t *arr, uint8_t (*out)[MG_HASH_LEN], size_t max, size_t *n) {
  if (!json_is_array(arr) || json_array_size(arr) > max) return false;
  for (size_t i = 0; i < json_array_size(arr); i++) {
    json_t *h = json_array_get(arr, i);
    size_t len = MG_HASH_LEN;
    if (!json_is_string(h) || json_string_length(h) != 44 ||
        mg_b64_decode(json_string_value(h), 44, out[i], &len) != 0 || len != MG_HASH_LEN)
      return false;
  }
  *n = json_array_size(arr);
  return true;
}

/* Only the listed members may be present. */
static bool only_keys(json_t *obj, const char *const *keys, size_t nkeys) {
  const char *k;
  json_t *v;
  json_object_foreach(obj, k, v) {
    bool ok = false;
    for (size_t i = 0; i < nkeys && !ok; i++) ok = strcmp(k, keys[i]) == 0;
    if (!ok) return false;
  }
  return true;
}

/* ---- entries ---------------------------------------------------------------- */

/* A time that goes backwards is recorded, not failed at once: if entry k's time was edited
 * upwards, entry k+1 is where the order breaks, but the next checkpoint's leaf hashes (or
 * proofs) name k itself. The violation is reported only when they find nothing else. */
static int check_time(struct vstate *s, struct origin *o, uint64_t index, int64_t t, long line) {
  (void)s;
  if (o->have_time && t < o->last_time) {
    if (!o->time_bad) {
      o->time_bad = true;
      o->time_bad_index = index;
      o->time_bad_line = line;
    }
    return 0;
  }
  o->have_time = true;
  o->last_time = t;
  return 0;
}

static int time_fail(struct vstate *s, struct origin *o) {
  return fail(s, MG_LINEAGE_E_VERIFY, o->time_bad_line, o->time_bad_index,
              "entry %" PRIu64 ": time goes backwards (edited or reordered entry)", o->time_bad_index);
}

/* An entry of an unfiltered export (no proof line followed it). */
static int full_entry(struct vstate *s, struct held *e) {
  struct origin *o = e->o;
  if (o->mode == MODE_FILTERED)
    return fail(s, MG_LINEAGE_E_FORMAT, e->line, e->index,
                "entry %" PRIu64 ": no inclusion proof in a filtered export", e->index);
  o->mode = MODE_FULL;
  if (!o->started) {
    o->started = true;
    o->start = o->next = o->cp_size = 0;
  }
  if (o->deferred) return 0;
  if (e->index != o->next) {
    if (o->next == 0 && o->npending == 0 && !o->have_cp) {
      o->deferred = true;
      o->def_found = e->index;
      o->def_line = e->line;
      return 0;
    }
    if (e->index > o->next)
      return fail(s, MG_LINEAGE_E_VERIFY, e->line, o->next,
                  "entry %" PRIu64 ": missing, index %" PRIu64 " found instead (deleted or reordered entry)",
                  o->next, e->index);
    /* an index seen again: the first line that claimed it or this one was inserted */
    return fail(s, MG_LINEAGE_E_VERIFY, e->line, e->index,
                "entry %" PRIu64 ": a second entry with this index, where %" PRIu64
                " was expected (inserted, repeated or reordered entry)",
                e->index, o->next);
  }
  int rv = check_time(s, o, e->index, e->time, e->line);
  if (rv) return rv;
  if (o->npending == o->cappending) {
    size_t nc = o->cappending ? o->cappending * 2 : 1024;
    struct leafrec *np = realloc(o->pending, nc * sizeof *np);
    if (!np) return fail(s, -ENOMEM, e->line, e->index, "out of memory");
    o->pending = np;
    o->cappending = nc;
  }
  memcpy(o->pending[o->npending].h, e->leaf, MG_HASH_LEN);
  o->pending[o->npending].line = e->line;
  o->npending++;
  rv = mg_merkle_frontier_append(&o->f, e->leaf, NULL, NULL);
  if (rv) return fail(s, rv, e->line, e->index, "entry %" PRIu64 ": tree full", e->index);
  o->next++;
  o->nentries++;
  s->res->entries++;
  return 0;
}

static int flush_held(struct vstate *s) {
  if (!s->held.valid) return 0;
  s->held.valid = false;
  return full_entry(s, &s->held);
}

static int entry_fields(struct vstate *s, uint64_t index, const char *origin, size_t olen,
                        const char *tm, size_t tlen, const char *line, size_t len) {
  int64_t t;
  if (olen == 0) return fail(s, MG_LINEAGE_E_FORMAT, s->line, index, "entry %" PRIu64 ": no origin", index);
  if (!tm || mg_time_parse_rfc3339(tm, tlen, &t) != 0)
    return fail(s, MG_LINEAGE_E_FORMAT, s->line, index, "entry %" PRIu64 ": missing or malformed time", index);
  int rv = flush_held(s);
  if (rv) return rv;
  struct origin *o = origin_get(s, origin, olen);
  if (!o) return fail(s, -ENOMEM, s->line, index, "out of memory");
  s->held.valid = true;
  s->held.o = o;
  s->held.index = index;
  s->held.time = t;
  s->held.line = s->line;
  mg_merkle_leaf_hash(line, len, s->held.leaf);
  return 0;
}

static int on_entry(struct vstate *s, json_t *obj, const char *line, size_t len) {
  uint64_t index;
  json_t *org = json_object_get(obj, "origin"), *tm = json_object_get(obj, "time");
  if (!get_u64(obj, "index", &index))
    return fail(s, MG_LINEAGE_E_FORMAT, s->line, UINT64_MAX, "line %ld: entry index is not a non-negative integer", s->line);
  if (!json_is_string(org))
    return fail(s, MG_LINEAGE_E_FORMAT, s->line, index, "entry %" PRIu64 ": no origin", index);
  return entry_fields(s, index, json_string_value(org), json_string_length(org),
                      json_is_string(tm) ? json_string_value(tm) : NULL, json_is_string(tm) ? json_string_length(tm) : 0,
                      line, len);
}

/* ---- fast path for entry lines ---------------------------------------------------
 * jansson builds a tree with several allocations per member, which made it two thirds of
 * the verifier's time. Entry lines are compact JSON from our own writer, so most of them
 * fall in a small subset that one pass can check exactly: a flat object, keys without
 * escapes and not repeated, values that are strings (escapes other than \u), integers of
 * at most 18 digits, literals, or flat arrays of those; valid UTF-8, no whitespace.
 * Every line in that subset is also accepted by jansson with JSON_REJECT_DUPLICATES
 * (the fuzz build checks this with MG_VERIFY_SELFCHECK); anything else, valid or not,
 * takes the jansson path, so strictness and error messages are jansson's. */

struct fast {
  uint64_t index;
  const char *origin, *time;
  size_t olen, tlen;
  bool has_index, has_origin, has_time;
};

/* Scans a string starting after its opening quote; returns the closing quote or NULL. */
static const char *fast_string(const char *p, const char *end, bool *escaped) {
  *escaped = false;
  while (p < end) {
    unsigned char c = (unsigned char)*p;
    if (c == '"') return p;
    if (c < 0x20) return NULL;
    if (c == '\\') {
      if (p + 1 >= end || !strchr("\"\\/bfnrt", p[1]) || p[1] == 0) return NULL;
      *escaped = true;
      p += 2;
      continue;
    }
    p++;
  }
  return NULL;
}

/* Scans a scalar value; returns the byte after it or NULL. *num receives a non-negative
 * integer's value (UINT64_MAX when the value is something else). */
static const char *fast_scalar(const char *p, const char *end, uint64_t *num, const char **str,
                               size_t *slen, bool *escaped) {
  *num = UINT64_MAX;
  *str = NULL;
  if (p >= end) return NULL;
  if (*p == '"') {
    const char *q = fast_string(p + 1, end, escaped);
    if (!q) return NULL;
    *str = p + 1;
    *slen = (size_t)(q - p - 1);
    return q + 1;
  }
  if (*p == '-' || (*p >= '0' && *p <= '9')) {
    bool neg = *p == '-';
    const char *q = neg ? p + 1 : p;
    const char *d = q;
    uint64_t v = 0;
    while (q < end && *q >= '0' && *q <= '9') v = v * 10 + (uint64_t)(*q++ - '0');
    size_t nd = (size_t)(q - d);
    if (nd == 0 || nd > 18 || (nd > 1 && *d == '0')) return NULL;
    if (q < end && (*q == '.' || *q == 'e' || *q == 'E')) return NULL;
    if (!neg) *num = v;
    return q;
  }
  static const char *const lits[] = {"true", "false", "null"};
  for (int i = 0; i < 3; i++) {
    size_t l = strlen(lits[i]);
    if ((size_t)(end - p) >= l && memcmp(p, lits[i], l) == 0) return p + l;
  }
  return NULL;
}

static bool fast_entry(const char *s, size_t n, struct fast *f) {
  const char *p = s, *end = s + n;
  const char *keys[64];
  size_t klen[64], nk = 0;
  memset(f, 0, sizeof *f);
  if (n < 2 || s[0] != '{' || s[n - 1] != '}' || !mg_utf8_valid(s, n)) return false;
  p++;
  for (;;) {
    bool esc;
    if (p >= end || *p != '"' || nk == 64) return false;
    const char *k = p + 1, *q = fast_string(k, end, &esc);
    if (!q || esc) return false;
    size_t kl = (size_t)(q - k);
    for (size_t i = 0; i < nk; i++)
      if (klen[i] == kl && memcmp(keys[i], k, kl) == 0) return false; /* jansson names it */
    keys[nk] = k;
    klen[nk++] = kl;
    p = q + 1;
    if (p >= end || *p++ != ':') return false;
    uint64_t num;
    const char *str;
    size_t slen = 0;
    if (p < end && *p == '[') {
      p++;
      if (p < end && *p == ']') {
        p++;
      } else {
        for (;;) {
          p = fast_scalar(p, end, &num, &str, &slen, &esc);
          if (!p || p >= end) return false;
          if (*p == ']') { p++; break; }
          if (*p++ != ',') return false;
        }
      }
      if ((kl == 5 && !memcmp(k, "index", 5)) || (kl == 6 && !memcmp(k, "origin", 6)) ||
          (kl == 4 && !memcmp(k, "time", 4)))
        return false;
    } else {
      p = fast_scalar(p, end, &num, &str, &slen, &esc);
      if (!p) return false;
      if (kl == 5 && !memcmp(k, "index", 5)) {
        if (num == UINT64_MAX) return false;
        f->index = num;
        f->has_index = true;
      } else if (kl == 6 && !memcmp(k, "origin", 6)) {
        if (!str || esc) return false;
        f->origin = str;
        f->olen = slen;
        f->has_origin = true;
      } else if (kl == 4 && !memcmp(k, "time", 4)) {
        if (!str || esc) return false;
        f->time = str;
        f->tlen = slen;
        f->has_time = true;
      }
    }
    if (p >= end) return false;
    if (*p == '}') { p++; break; }
    if (*p++ != ',') return false;
  }
  return p == end && f->has_index && f->has_origin && f->has_time;
}

#ifdef MG_VERIFY_SELFCHECK
/* Differential check for the fuzzer: the fast path must agree with jansson. */
static void fast_selfcheck(const char *line, size_t len, const struct fast *f) {
  json_error_t e;
  json_t *o = json_loadb(line, len, JSON_REJECT_DUPLICATES, &e);
  uint64_t idx;
  json_t *org = o ? json_object_get(o, "origin") : NULL, *tm = o ? json_object_get(o, "time") : NULL;
  if (!json_is_object(o) || !get_u64(o, "index", &idx) || idx != f->index || !json_is_string(org) ||
      json_string_length(org) != f->olen || memcmp(json_string_value(org), f->origin, f->olen) ||
      !json_is_string(tm) || json_string_length(tm) != f->tlen || memcmp(json_string_value(tm), f->time, f->tlen)) {
    fprintf(stderr, "fast path accepted what jansson does not: %.*s\n", (int)len, line);
    abort();
  }
  json_decref(o);
}
#endif

/* ---- proof lines (filtered exports) ------------------------------------------- */

static int on_proof(struct vstate *s, json_t *p) {
  uint64_t index, size;
  uint8_t h[MG_MERKLE_MAX_LEVELS][MG_HASH_LEN];
  size_t n;
  static const char *const keys[] = {"index", "size", "hashes"};
  if (!json_is_object(p) || !only_keys(p, keys, 3) || !get_u64(p, "index", &index) ||
      !get_u64(p, "size", &size) || !get_hashes(json_object_get(p, "hashes"), h, MG_MERKLE_MAX_LEVELS, &n))
    return fail(s, MG_LINEAGE_E_FORMAT, s->line, UINT64_MAX, "line %ld: malformed proof", s->line);
  if (!s->held.valid || s->held.index != index)
    return fail(s, MG_LINEAGE_E_FORMAT, s->line, index,
                "line %ld: proof for entry %" PRIu64 " does not follow that entry", s->line, index);
  struct held e = s->held;
  struct origin *o = e.o;
  s->held.valid = false;
  s->any_proof = true;
  if (o->mode == MODE_FULL)
    return fail(s, MG_LINEAGE_E_FORMAT, e.line, index,
                "entry %" PRIu64 ": proof line in an unfiltered section", index);
  o->mode = MODE_FILTERED;
  if (o->any_index && index <= o->last_index)
    return fail(s, MG_LINEAGE_E_VERIFY, e.line, index,
                "entry %" PRIu64 ": after entry %" PRIu64 " (inserted, repeated or reordered entry)",
                index, o->last_index);
  int rv = check_time(s, o, index, e.time, e.line);
  if (rv) return rv;
  o->any_index = true;
  o->last_index = index;
  if (index >= size)
    return fail(s, MG_LINEAGE_E_VERIFY, e.line, index,
                "entry %" PRIu64 ": proof is for a tree of only %" PRIu64 " entries", index, size);
  if (o->nproofs == o->capproofs) {
    size_t nc = o->capproofs ? o->capproofs * 2 : 64;
    struct proofrec *np = realloc(o->proofs, nc * sizeof *np);
    if (!np) return fail(s, -ENOMEM, e.line, index, "out of memory");
    o->proofs = np;
    o->capproofs = nc;
  }
  struct proofrec *r = &o->proofs[o->nproofs];
  r->hashes = malloc(n ? n * MG_HASH_LEN : 1);
  if (!r->hashes) return fail(s, -ENOMEM, e.line, index, "out of memory");
  memcpy(r->hashes, h, n * MG_HASH_LEN);
  r->n = n;
  r->index = index;
  r->size = size;
  r->line = e.line;
  memcpy(r->leaf, e.leaf, MG_HASH_LEN);
  o->nproofs++;
  o->nentries++;
  s->res->entries++;
  return 0;
}

static int on_consistency(struct vstate *s, json_t *c) {
  json_t *org = json_object_get(c, "origin");
  uint64_t from, to;
  static const char *const keys[] = {"origin", "from", "to", "hashes"};
  if (!json_is_object(c) || !only_keys(c, keys, 4) || !json_is_string(org) ||
      !get_u64(c, "from", &from) || !get_u64(c, "to", &to) || from > to)
    return fail(s, MG_LINEAGE_E_FORMAT, s->line, UINT64_MAX, "line %ld: malformed consistency proof", s->line);
  struct origin *o = origin_get(s, json_string_value(org), json_string_length(org));
  if (!o) return fail(s, -ENOMEM, s->line, UINT64_MAX, "out of memory");
  if (!get_hashes(json_object_get(c, "hashes"), o->cons_h, MG_MERKLE_MAX_LEVELS, &o->cons_n))
    return fail(s, MG_LINEAGE_E_FORMAT, s->line, UINT64_MAX, "line %ld: malformed consistency proof", s->line);
  o->have_cons = true;
  o->cons_from = from;
  o->cons_to = to;
  o->cons_line = s->line;
  return 0;
}

static int on_prefix(struct vstate *s, json_t *p) {
  json_t *org = json_object_get(p, "origin");
  uint64_t size;
  static const char *const keys[] = {"origin", "size", "hashes"};
  struct mg_merkle_frontier f;
  size_t n;
  if (!json_is_object(p) || !only_keys(p, keys, 3) || !json_is_string(org) ||
      json_string_length(org) == 0 || !get_u64(p, "size", &size) ||
      !get_hashes(json_object_get(p, "hashes"), f.hashes, MG_MERKLE_MAX_LEVELS, &n) ||
      n != (size_t)__builtin_popcountll(size))
    return fail(s, MG_LINEAGE_E_FORMAT, s->line, UINT64_MAX, "line %ld: malformed prefix", s->line);
  struct origin *o = origin_get(s, json_string_value(org), json_string_length(org));
  if (!o) return fail(s, -ENOMEM, s->line, UINT64_MAX, "out of memory");
  if (o->started)
    return fail(s, MG_LINEAGE_E_FORMAT, s->line, UINT64_MAX,
                "line %ld: prefix after entries of origin %s", s->line, o->name);
  f.size = size;
  f.n = (unsigned)n;
  o->started = true;
  o->start = o->next = o->cp_size = size;
  o->f = o->cp_f = f;
  return 0;
}

/* ---- checkpoints ----------------------------------------------------------------- */

/* Which entry broke the root? With "leaves" that reproduce the signed root (so they are
 * the writer's), the first differing leaf; otherwise the first entry after the last good
 * checkpoint. */
static int root_mismatch(struct vstate *s, struct origin *o, uint64_t size, const uint8_t root[MG_HASH_LEN],
                         json_t *leaves, long cpline) {
  uint64_t from = o->cp_size;
  if (json_is_string(leaves)) {
    size_t blen = json_string_length(leaves);
    size_t cap = blen / 4 * 3 + 3;
    uint8_t *raw = malloc(cap ? cap : 1);
    size_t got = cap;
    if (raw && mg_b64_decode(json_string_value(leaves), blen, raw, &got) == 0 &&
        got % MG_HASH_LEN == 0 && got / MG_HASH_LEN == size - from && size - from == o->npending) {
      struct mg_merkle_frontier f = o->cp_f;
      uint8_t r[MG_HASH_LEN];
      size_t n = got / MG_HASH_LEN;
      for (size_t i = 0; i < n; i++) mg_merkle_frontier_append(&f, raw + i * MG_HASH_LEN, NULL, NULL);
      mg_merkle_frontier_root(&f, r);
      if (memcmp(r, root, MG_HASH_LEN) == 0)
        for (size_t i = 0; i < n; i++)
          if (memcmp(raw + i * MG_HASH_LEN, o->pending[i].h, MG_HASH_LEN) != 0) {
            free(raw);
            return fail(s, MG_LINEAGE_E_VERIFY, o->pending[i].line, from + i,
                        "entry %" PRIu64 ": leaf hash does not match checkpoint %" PRIu64 " (edited entry)",
                        from + i, size);
          }
    }
    free(raw);
  }
  return fail(s, MG_LINEAGE_E_VERIFY, o->npending ? o->pending[0].line : cpline, from,
              "entries %" PRIu64 "..%" PRIu64 ": root does not match checkpoint %" PRIu64
              " (edited, inserted or reordered entry)", from, size ? size - 1 : 0, size);
}

static int deferred_fail(struct vstate *s, struct origin *o) {
  return fail(s, MG_LINEAGE_E_VERIFY, o->def_line, 0,
              "entry 0 of %s: missing, index %" PRIu64 " found instead (deleted entries or edited origin)",
              o->name, o->def_found);
}

static int full_checkpoint(struct vstate *s, struct origin *o, uint64_t size, const uint8_t root[MG_HASH_LEN],
                           json_t *leaves) {
  long line = s->line;
  if (o->deferred) return deferred_fail(s, o);
  if (!o->started) {
    /* No entry and no prefix before it: a truncated export, unless the export is filtered
     * and nothing matched; decided at the end. */
    if (size > 0 && o->empty_cp_line == 0) {
      o->empty_cp_line = line;
      o->empty_cp_size = size;
    }
    o->pre_cp = true;
    o->pre_size = size;
    memcpy(o->pre_root, root, MG_HASH_LEN);
    if (size == 0) {
      uint8_t r[MG_HASH_LEN];
      mg_merkle_frontier_root(&o->f, r);
      if (memcmp(r, root, MG_HASH_LEN) != 0)
        return fail(s, MG_LINEAGE_E_VERIFY, line, UINT64_MAX, "checkpoint 0: root is not the empty tree's");
    }
    return 0;
  }
  if (size < o->start) return 0; /* older than the exported range: signature checked only */
  if (size > o->next)
    return fail(s, MG_LINEAGE_E_VERIFY, line, o->next,
                "entry %" PRIu64 ": missing, checkpoint %" PRIu64 " covers %" PRIu64 " entries (truncated or deleted entries)",
                o->next, size, size);
  if (size < o->next) {
    uint64_t i = size; /* first entry this checkpoint should have been placed before */
    long l = i >= o->cp_size && i - o->cp_size < o->npending ? o->pending[i - o->cp_size].line : line;
    return fail(s, MG_LINEAGE_E_VERIFY, l, i,
                "entry %" PRIu64 ": not covered by checkpoint %" PRIu64 " that follows it (inserted or appended entry)",
                i, size);
  }
  uint8_t r[MG_HASH_LEN];
  mg_merkle_frontier_root(&o->f, r);
  if (memcmp(r, root, MG_HASH_LEN) != 0) return root_mismatch(s, o, size, root, leaves, line);
  o->have_cp = true;
  o->cp_size = size;
  o->cp_f = o->f;
  memcpy(o->cp_root, root, MG_HASH_LEN);
  o->cp_line = line;
  o->npending = 0;
  return 0;
}

static int filtered_checkpoint(struct vstate *s, struct origin *o, uint64_t size, const uint8_t root[MG_HASH_LEN]) {
  long line = s->line;
  if (!o->have_cp && o->pre_cp) {
    o->have_cp = true;
    o->cp_size = o->pre_size;
    memcpy(o->cp_root, o->pre_root, MG_HASH_LEN);
  }
  if (o->have_cp) {
    if (o->cp_size == size) {
      if (memcmp(o->cp_root, root, MG_HASH_LEN) != 0)
        return fail(s, MG_LINEAGE_E_VERIFY, line, UINT64_MAX,
                    "checkpoint %" PRIu64 ": two signed roots for one size (forked log)", size);
    } else {
      if (!o->have_cons || o->cons_from != o->cp_size || o->cons_to != size)
        return fail(s, MG_LINEAGE_E_VERIFY, line, UINT64_MAX,
                    "checkpoint %" PRIu64 ": no consistency proof from checkpoint %" PRIu64, size, o->cp_size);
      uint64_t a = o->cp_size, b = size;
      bool ok = a < b && mg_merkle_verify_consistency(a, b, o->cp_root, root,
                                                      (const uint8_t(*)[MG_HASH_LEN])o->cons_h, o->cons_n) == 0;
      if (!ok)
        return fail(s, MG_LINEAGE_E_VERIFY, line, UINT64_MAX,
                    "checkpoint %" PRIu64 ": not consistent with checkpoint %" PRIu64 " (forked or rewritten log)",
                    size, o->cp_size);
    }
  }
  size_t keep = 0;
  for (size_t i = 0; i < o->nproofs; i++) {
    struct proofrec *p = &o->proofs[i];
    if (p->size != size) {
      o->proofs[keep++] = *p;
      continue;
    }
    if (mg_merkle_verify_inclusion(p->index, p->size, p->leaf, (const uint8_t(*)[MG_HASH_LEN])p->hashes,
                                   p->n, root) != 0) {
      uint64_t idx = p->index;
      long l = p->line;
      for (size_t j = i; j < o->nproofs; j++) o->proofs[keep++] = o->proofs[j];
      o->nproofs = keep;
      return fail(s, MG_LINEAGE_E_VERIFY, l, idx,
                  "entry %" PRIu64 ": inclusion proof does not match checkpoint %" PRIu64 " (edited entry or bad proof)",
                  idx, size);
    }
    free(p->hashes);
  }
  o->nproofs = keep;
  o->have_cp = true;
  o->cp_size = size;
  memcpy(o->cp_root, root, MG_HASH_LEN);
  o->cp_line = line;
  o->have_cons = false;
  return 0;
}

static int on_checkpoint(struct vstate *s, json_t *obj) {
  json_t *note = json_object_get(obj, "checkpoint"), *leaves = json_object_get(obj, "leaves");
  json_t *filtered = json_object_get(obj, "filtered");
  static const char *const keys[] = {"checkpoint", "leaves", "filtered"};
  long line = s->line;
  if (!json_is_string(note) || !only_keys(obj, keys, 3) || (leaves && !json_is_string(leaves)) ||
      (filtered && (!json_is_integer(filtered) || json_integer_value(filtered) != 1 || leaves)))
    return fail(s, MG_LINEAGE_E_FORMAT, line, UINT64_MAX, "line %ld: malformed checkpoint line", line);
  if (filtered) s->filtered_marker = true;
  const char *text = json_string_value(note);
  size_t n = json_string_length(note);
  /* The body is the text before the last blank line; parse it first to name the size. */
  size_t tlen = 0;
  for (size_t i = n; i >= 2; i--)
    if (text[i - 2] == '\n' && text[i - 1] == '\n') { tlen = i - 1; break; }
  char *origin = NULL;
  uint64_t size;
  uint8_t root[MG_HASH_LEN];
  if (tlen == 0 || mg_checkpoint_parse(text, tlen, &origin, &size, root) != 0)
    return fail(s, MG_LINEAGE_E_FORMAT, line, UINT64_MAX, "line %ld: malformed checkpoint note", line);
  uint64_t last = size ? size - 1 : UINT64_MAX;
  int rv = mg_note_verify(text, n, s->v, s->nv, NULL, s->signed_by);
  if (rv == MG_LINEAGE_E_FORMAT) {
    rv = fail(s, rv, line, last, "checkpoint %" PRIu64 ": malformed signed note", size);
    goto out;
  }
  if (rv == MG_LINEAGE_E_VERIFY) {
    rv = fail(s, rv, line, last, "checkpoint %" PRIu64 ": signature does not verify (forged checkpoint)", size);
    goto out;
  }
  bool by_origin = false;
  for (size_t j = 0; rv == 0 && j < s->nv; j++) by_origin |= s->signed_by[j] && strcmp(s->v[j]->name, origin) == 0;
  if (rv == MG_LINEAGE_E_KEY || (rv == 0 && !by_origin)) {
    rv = fail(s, MG_LINEAGE_E_VERIFY, line, last,
              "checkpoint %" PRIu64 " of %s: not signed by a given key of that origin (unknown key)", size, origin);
    goto out;
  }
  if (rv) {
    rv = fail(s, rv, line, last, "checkpoint %" PRIu64 ": %s", size, mg_strerror(rv));
    goto out;
  }
  rv = flush_held(s);
  if (rv) goto out;
  struct origin *o = origin_get(s, origin, strlen(origin));
  if (!o) {
    rv = fail(s, -ENOMEM, line, UINT64_MAX, "out of memory");
    goto out;
  }
  rv = o->mode == MODE_FILTERED ? filtered_checkpoint(s, o, size, root) : full_checkpoint(s, o, size, root, leaves);
  if (rv == 0 && o->time_bad) rv = time_fail(s, o); /* entries authentic, order broken */
  if (rv == 0) s->res->checkpoints++;
out:
  free(origin);
  return rv;
}

/* ---- the pass ----------------------------------------------------------------------- */

static int on_line(struct vstate *s, const char *line, size_t len) {
  json_error_t jerr;
  if (len == 0) return fail(s, MG_LINEAGE_E_FORMAT, s->line, UINT64_MAX, "line %ld: empty line", s->line);
  struct fast f;
  if (fast_entry(line, len, &f)) {
#ifdef MG_VERIFY_SELFCHECK
    fast_selfcheck(line, len, &f);
#endif
    return entry_fields(s, f.index, f.origin, f.olen, f.time, f.tlen, line, len);
  }
  json_t *obj = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
  if (!obj) return fail(s, MG_LINEAGE_E_FORMAT, s->line, UINT64_MAX, "line %ld: %s", s->line, jerr.text);
  int rv;
  json_t *v;
  if (!json_is_object(obj))
    rv = fail(s, MG_LINEAGE_E_FORMAT, s->line, UINT64_MAX, "line %ld: not a JSON object", s->line);
  else if (json_object_get(obj, "index"))
    rv = on_entry(s, obj, line, len);
  else if ((v = json_object_get(obj, "proof")) && json_object_size(obj) == 1)
    rv = on_proof(s, v);
  else if (json_object_get(obj, "checkpoint"))
    rv = on_checkpoint(s, obj);
  else if ((v = json_object_get(obj, "prefix")) && json_object_size(obj) == 1) {
    rv = flush_held(s);
    if (!rv) rv = on_prefix(s, v);
  } else if ((v = json_object_get(obj, "consistency")) && json_object_size(obj) == 1) {
    rv = flush_held(s);
    if (!rv) rv = on_consistency(s, v);
  } else
    rv = fail(s, MG_LINEAGE_E_FORMAT, s->line, UINT64_MAX, "line %ld: not an entry, checkpoint, prefix or proof", s->line);
  json_decref(obj);
  return rv;
}

/* What was proven, per origin (see mg_lineage_verify_kind). A "filtered":1 marker or a
 * prefix line is not signed, so anyone can add one: the summary says what the export is,
 * and the caller decides whether that is what it asked for (`verify --complete`). */
static void summarise(struct vstate *s) {
  struct mg_lineage_verify_result *res = s->res;
  res->norigins = s->norigins;
  res->incomplete = false;
  res->min_size = UINT64_MAX;
  for (size_t i = 0; i < s->norigins; i++) {
    const struct origin *o = s->origins[i];
    enum mg_lineage_verify_kind kind;
    uint64_t size = o->have_cp ? o->cp_size : o->pre_cp ? o->pre_size : 0;
    if (o->mode == MODE_FILTERED) kind = MG_VERIFY_FILTERED;
    else if (!o->started) kind = size == 0 ? MG_VERIFY_COMPLETE : MG_VERIFY_NO_ENTRIES;
    else if (o->start > 0) kind = MG_VERIFY_FROM_PREFIX;
    else kind = MG_VERIFY_COMPLETE;
    if (kind != MG_VERIFY_COMPLETE) res->incomplete = true;
    if (size < res->min_size) res->min_size = size;
    if (i < MG_LINEAGE_VERIFY_MAX_ORIGINS) {
      struct mg_lineage_verify_origin *vo = &res->origins[i];
      snprintf(vo->name, sizeof vo->name, "%s", o->name);
      vo->kind = kind;
      vo->first = kind == MG_VERIFY_FROM_PREFIX ? o->start : 0;
      vo->size = size;
      vo->entries = o->nentries;
    }
  }
  if (res->min_size == UINT64_MAX) res->min_size = 0;
}

static int finish(struct vstate *s) {
  int rv = flush_held(s);
  if (rv) return rv;
  for (size_t i = 0; i < s->norigins; i++) {
    struct origin *o = s->origins[i];
    if (o->mode == MODE_FILTERED) {
      for (size_t j = 0; j < o->nproofs; j++) {
        struct proofrec *p = &o->proofs[j];
        return fail(s, MG_LINEAGE_E_VERIFY, p->line, p->index,
                    "entry %" PRIu64 ": no checkpoint of size %" PRIu64 " for its proof", p->index, p->size);
      }
      continue;
    }
    if (o->deferred) return deferred_fail(s, o);
    if (o->time_bad && !(o->started && o->next > o->cp_size && o->cp_size < o->time_bad_index))
      return time_fail(s, o);
    if (o->started && o->next > o->cp_size) {
      uint64_t first = o->cp_size;
      return fail(s, MG_LINEAGE_E_VERIFY, o->npending ? o->pending[0].line : 0, first,
                  "entry %" PRIu64 ": not covered by any checkpoint (appended after the last checkpoint)", first);
    }
    if (!o->started && o->empty_cp_line && !s->any_proof && !s->filtered_marker)
      return fail(s, MG_LINEAGE_E_VERIFY, o->empty_cp_line, 0,
                  "entry 0: missing, checkpoint %" PRIu64 " of %s covers entries the export lacks (truncated export)",
                  o->empty_cp_size, o->name);
  }
  if (s->res->checkpoints == 0)
    return fail(s, MG_LINEAGE_E_VERIFY, 0, s->res->entries ? 0 : UINT64_MAX,
                "no checkpoint in the export: nothing is covered");
  summarise(s);
  return 0;
}

int mg_lineage_verify(FILE *in, const char *const *vkeys, size_t nvkeys,
                      struct mg_lineage_verify_result *res) {
  struct vstate s;
  struct reader r = {.in = in};
  int rv;

  memset(res, 0, sizeof *res);
  res->bad_index = UINT64_MAX;
  memset(&s, 0, sizeof s);
  s.res = res;
  s.v = calloc(nvkeys ? nvkeys : 1, sizeof *s.v);
  s.signed_by = calloc(nvkeys ? nvkeys : 1, sizeof *s.signed_by);
  if (!s.v || !s.signed_by) {
    rv = fail(&s, -ENOMEM, 0, UINT64_MAX, "out of memory");
    goto out_keys;
  }
  for (size_t i = 0; i < nvkeys; i++) {
    rv = mg_note_verifier_parse(vkeys[i], strlen(vkeys[i]), &s.v[i]);
    if (rv) {
      rv = fail(&s, MG_LINEAGE_E_KEY, 0, UINT64_MAX, "verifier key %zu: malformed (want name+hexid+base64)", i + 1);
      goto out_keys;
    }
    s.nv++;
  }
  if (nvkeys == 0) {
    rv = fail(&s, MG_LINEAGE_E_KEY, 0, UINT64_MAX, "verify: no verifier key given");
    goto out_keys;
  }
  for (;;) {
    char *line;
    size_t len;
    int got = next_line(&r, &line, &len);
    if (got < 0) {
      rv = fail(&s, r.err == MG_ERR_TOOBIG ? MG_LINEAGE_E_FORMAT : r.err, s.line + 1, UINT64_MAX,
                "line %ld: %s", s.line + 1, r.err == MG_ERR_TOOBIG ? "line too long" : mg_strerror(r.err));
      goto out;
    }
    if (got == 0) break;
    s.line++;
    rv = on_line(&s, line, len);
    if (rv) goto out;
  }
  rv = finish(&s);
out:
  free(r.buf);
  for (size_t i = 0; i < s.norigins; i++) origin_free(s.origins[i]);
  free(s.origins);
out_keys:
  for (size_t i = 0; i < s.nv; i++) mg_note_verifier_free(s.v[i]);
  free(s.v);
  free(s.signed_by);
  if (rv == 0) {
    res->bad_index = UINT64_MAX;
    res->bad_line = 0;
    snprintf(res->reason, sizeof res->reason, "ok: %" PRIu64 " entries, %" PRIu64 " checkpoints",
             res->entries, res->checkpoints);
  }
  return rv;
}
