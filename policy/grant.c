/*
 * grant.c — the grant model and its JSON codec.
 *
 * Parsing is two passes: jansson turns the bytes into a tree (rejecting duplicate keys,
 * trailing data, invalid UTF-8, NUL escapes and numbers that do not fit), then a validator
 * walks the tree and reports every problem at its JSON Pointer instead of stopping at the
 * first, so a grant author fixes a file in one round. Anything nested where a scalar is
 * expected is a type error at that pointer, so a grant can never be deeper than it needs
 * (jansson's own depth bound, 2048, protects the stack before that).
 *
 * The canonical form is built by hand (compact, keys in byte order, times normalised to
 * RFC 3339 UTC with 6 fraction digits): ETags and the store's revision digest are hashes
 * of these bytes, so they must not depend on how the author spelled the input.
 */
#include "policy/policy_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

/* Diag is bounded: a hostile file of 100k broken grants must not cost 100k messages. */
#define MAX_DIAG 1000

/* Valid time range: what mg_time_format_rfc3339 can print (years 0000..9999). */
#define TIME_MIN_US (-62167219200LL * 1000000)
#define TIME_MAX_US (253402300800LL * 1000000 - 1)

struct vctx {
  struct mg_policy_diag *d;
  size_t nerr;
  int oom;
};

void mg_policy_diag_clear(struct mg_policy_diag *d) {
  if (!d) return;
  for (size_t i = 0; i < d->n; i++) free(d->msgs[i]);
  free(d->msgs);
  d->msgs = NULL;
  d->n = 0;
}

static void problem(struct vctx *c, const char *ptr, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void problem(struct vctx *c, const char *ptr, const char *fmt, ...) {
  c->nerr++;
  if (!c->d || c->d->n > MAX_DIAG) return;
  char reason[512];
  if (c->d->n == MAX_DIAG) {
    snprintf(reason, sizeof reason, "%s", "too many problems; stopped listing");
    ptr = "";
  } else {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
  }
  char *m = NULL;
  int mlen = asprintf(&m, "%s: %s", ptr, reason);
  if (mlen < 0) { c->oom = 1; return; }
  /* Messages go back to the author inside JSON: keep them valid UTF-8 even when they
   * quote a broken key or jansson quotes the bytes near a syntax error. */
  if (!mg_utf8_valid(m, (size_t)mlen))
    for (int i = 0; i < mlen; i++)
      if ((unsigned char)m[i] >= 0x80) m[i] = '?';
  char **nm = realloc(c->d->msgs, (c->d->n + 1) * sizeof *nm);
  if (!nm) { free(m); c->oom = 1; return; }
  nm[c->d->n++] = m;
  c->d->msgs = nm;
}

/* Appends "/token" with RFC 6901 escaping, truncating long keys (they are only echoed
 * back to the author) at a UTF-8 boundary. */
static void ptr_join(char *out, size_t cap, const char *base, const char *tok) {
  size_t n = strlen(base);
  /* base, '/', and at least "..." + NUL must fit; otherwise keep the base alone */
  if (n + 5 > cap) {
    snprintf(out, cap, "%s", base);
    return;
  }
  memmove(out, base, n);
  out[n++] = '/';
  size_t limit = n + 64;                 /* echo at most 64 bytes of a key */
  if (limit > cap - 4) limit = cap - 4;  /* always room for "..." and NUL */
  size_t i = 0;
  for (; tok[i]; i++) {
    bool esc = tok[i] == '~' || tok[i] == '/';
    if (n + (esc ? 2 : 1) > limit) break;
    if (esc) {
      out[n++] = '~';
      out[n++] = tok[i] == '~' ? '0' : '1';
    } else {
      out[n++] = tok[i];
    }
  }
  if (tok[i]) {
    while (n > 0 && ((unsigned char)out[n - 1] & 0xc0) == 0x80) n--;
    if (n > 0 && ((unsigned char)out[n - 1] & 0x80)) n--;
    memcpy(out + n, "...", 3);
    n += 3;
  }
  out[n] = 0;
}

static void ptr_index(char *out, size_t cap, const char *base, size_t i) {
  if (snprintf(out, cap, "%s/%zu", base, i) >= (int)cap) out[cap - 1] = 0;
}

static const char *type_name(const json_t *v) {
  switch (json_typeof(v)) {
  case JSON_OBJECT: return "an object";
  case JSON_ARRAY: return "an array";
  case JSON_STRING: return "a string";
  case JSON_INTEGER:
  case JSON_REAL: return "a number";
  case JSON_TRUE:
  case JSON_FALSE: return "a boolean";
  case JSON_NULL: return "null";
  }
  return "something else";
}

/* ---- field checks: each returns NULL or the reason ------------------------ */

static bool has_ctl(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) return true;
  return false;
}

static const char *check_id(const char *s, size_t n) {
  if (n == 0) return "must not be empty";
  if (n > MG_GRANT_ID_MAX) return "longer than 128 bytes";
  /* the id is a URL path segment (/v1/grants/{id}): a dot segment is no id */
  if ((n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
    return "must not be \".\" or \"..\"";
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
          ch == '.' || ch == '_' || ch == ':' || ch == '-'))
      return "may contain only A-Z a-z 0-9 . _ : -";
  }
  return NULL;
}

static const char *check_product(const char *s, size_t n) {
  if (n == 0) return "must not be empty";
  if (n > MG_GRANT_PRODUCT_MAX) return "longer than 128 bytes";
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
          ch == '.' || ch == '_' || ch == '-'))
      return "may contain only A-Z a-z 0-9 . _ -";
  }
  return NULL;
}

static const char *check_subject(const char *s, size_t n) {
  static const char *const types[] = {"user:", "group:", "client:", "spiffe:"};
  if (n == 1 && s[0] == '*') return NULL;
  for (size_t t = 0; t < MG_ARRAY_LEN(types); t++) {
    size_t tl = strlen(types[t]);
    if (n >= tl && memcmp(s, types[t], tl) == 0) {
      if (n == tl) return "empty name after the type prefix";
      if (n - tl > MG_GRANT_SUBJECT_MAX) return "name longer than 256 bytes";
      if (has_ctl(s, n)) return "contains a control character";
      return NULL;
    }
  }
  return "must be \"*\" or start with user:, group:, client: or spiffe:";
}

static const char *check_pattern(const char *s, size_t n) {
  if (n == 0) return "must not be empty";
  if (n > MG_GRANT_PATTERN_MAX) return "longer than 1024 bytes";
  if (s[0] == '/') return "must not start with '/'";
  size_t nseg = 0, start = 0;
  for (size_t i = 0; i <= n; i++) {
    if (i < n && s[i] != '/') {
      unsigned char ch = (unsigned char)s[i];
      if (ch < 0x20 || ch == 0x7f) return "contains a control character";
      if (ch == '\\') return "'\\' is not allowed";
      if (ch == ';') return "';' is not allowed";
      if (ch == '#') return "'#' is not allowed";
      if (ch == '?') return "'?' is not allowed (the query is not part of a resource)";
      continue;
    }
    size_t len = i - start;
    const char *seg = s + start;
    if (len == 0) return "empty segment";
    if ((len == 1 && seg[0] == '.') || (len == 2 && seg[0] == '.' && seg[1] == '.'))
      return "'.' and '..' segments are not allowed";
    if (!(len == 1 && seg[0] == '*') && !(len == 2 && seg[0] == '*' && seg[1] == '*') &&
        memchr(seg, '*', len))
      return len >= 2 && memmem(seg, len, "**", 2) ? "'**' must be a whole segment"
                                                  : "'*' must be a whole segment";
    if (++nseg > MG_GRANT_SEGMENTS_MAX) return "more than 128 segments";
    start = i + 1;
  }
  /* Patterns match canonical paths byte for byte, so a pattern must be one: "café" or
   * "a b" (which no canonical path holds) and "a%3Ab" (whose canonical form is "a:b")
   * would silently never match. */
  char in[MG_GRANT_PATTERN_MAX + 2], out[MG_GRANT_PATTERN_MAX + 2];
  size_t pl, ol;
  const char *why;
  in[0] = '/';
  memcpy(in + 1, s, n);
  if (mg_canon_path(in, n + 1, out, sizeof out, &pl, &ol, &why) != 0 || ol != n + 1 ||
      memcmp(in, out, ol) != 0)
    return "not a canonical path: escape spaces, quotes and non-ASCII as %XX (uppercase hex), "
           "write A-Z a-z 0-9 - . _ ~ ! $ & ' ( ) * + , = : @ unescaped";
  return NULL;
}

static const char *check_purpose(const char *s, size_t n) {
  if (n == 0) return "must not be empty";
  if (n > MG_GRANT_PURPOSE_MAX) return "longer than 256 bytes";
  if (has_ctl(s, n)) return "contains a control character";
  return NULL;
}

const char *mg_policy__check_id(const char *s, size_t n) { return check_id(s, n); }
const char *mg_policy__check_product(const char *s, size_t n) { return check_product(s, n); }

/* ---- tree walk ------------------------------------------------------------- */

static char *dup_str(struct vctx *c, const char *s, size_t n) {
  char *p = malloc(n + 1);
  if (!p) { c->oom = 1; return NULL; }
  memcpy(p, s, n);
  p[n] = 0;
  return p;
}

/* A string field: returns a copy, or NULL after reporting. */
static char *get_string(struct vctx *c, json_t *v, const char *ptr,
                        const char *(*check)(const char *, size_t)) {
  if (!json_is_string(v)) {
    problem(c, ptr, "expected a string, got %s", type_name(v));
    return NULL;
  }
  const char *s = json_string_value(v);
  size_t n = json_string_length(v);
  const char *why = check ? check(s, n) : NULL;
  if (why) { problem(c, ptr, "%s", why); return NULL; }
  return dup_str(c, s, n);
}

/* A non-empty array of unique strings, each passing check. Invalid entries are reported
 * and left out; *ok tells whether the whole field was valid. */
static char **get_str_array(struct vctx *c, json_t *v, const char *ptr,
                            const char *(*check)(const char *, size_t), size_t *nout,
                            bool *ok) {
  *nout = 0;
  *ok = false;
  if (!json_is_array(v)) {
    problem(c, ptr, "expected an array of strings, got %s", type_name(v));
    return NULL;
  }
  size_t n = json_array_size(v);
  if (n == 0) { problem(c, ptr, "must not be empty"); return NULL; }
  if (n > MG_GRANT_LIST_MAX) { problem(c, ptr, "more than 1024 entries"); return NULL; }
  char **arr = calloc(n, sizeof *arr);
  if (!arr) { c->oom = 1; return NULL; }
  size_t before = c->nerr, k = 0;
  char p[256];
  for (size_t i = 0; i < n; i++) {
    json_t *e = json_array_get(v, i);
    ptr_index(p, sizeof p, ptr, i);
    char *s = get_string(c, e, p, check);
    if (!s) continue;
    bool dup = false;
    for (size_t j = 0; j < k && !dup; j++) dup = strcmp(arr[j], s) == 0;
    if (dup) {
      problem(c, p, "duplicate entry");
      free(s);
      continue;
    }
    arr[k++] = s;
  }
  *nout = k;
  *ok = c->nerr == before && !c->oom;
  return arr;
}

static void free_strs(char **a, size_t n) {
  if (!a) return;
  for (size_t i = 0; i < n; i++) free(a[i]);
  free(a);
}

void mg_policy_grant_free(struct mg_grant *g) {
  if (!g) return;
  free(g->id);
  free_strs(g->subjects, g->nsubjects);
  free(g->product);
  free_strs(g->resources, g->nresources);
  free_strs(g->purposes, g->npurposes);
  free(g->description);
  free(g);
}

void mg_policy_grants_free(struct mg_grant **gs, size_t n) {
  if (!gs) return;
  for (size_t i = 0; i < n; i++) mg_policy_grant_free(gs[i]);
  free(gs);
}

static int64_t get_time(struct vctx *c, json_t *v, const char *ptr) {
  if (!v || json_is_null(v)) return MG_POLICY_NO_TIME;
  if (!json_is_string(v)) {
    problem(c, ptr, "expected an RFC 3339 string or null, got %s", type_name(v));
    return MG_POLICY_NO_TIME;
  }
  int64_t t;
  if (mg_time_parse_rfc3339(json_string_value(v), json_string_length(v), &t) != 0) {
    problem(c, ptr, "not an RFC 3339 date-time (e.g. 2027-01-01T00:00:00Z)");
    return MG_POLICY_NO_TIME;
  }
  if (t < TIME_MIN_US || t > TIME_MAX_US) {
    problem(c, ptr, "outside years 0000-9999 in UTC");
    return MG_POLICY_NO_TIME;
  }
  return t;
}

enum field { F_ID, F_EFFECT, F_SUBJECTS, F_PRODUCT, F_RESOURCES, F_ACTIONS, F_PURPOSES,
             F_NOT_BEFORE, F_EXPIRES, F_DESCRIPTION, F_COUNT };
static const char *const field_names[F_COUNT] = {
    "id", "effect", "subjects", "product", "resources", "actions", "purposes",
    "not_before", "expires", "description"};
static const bool field_required[F_COUNT] = {true, true, true, true, true, true,
                                             false, false, false, false};

/* Validates one grant object; *out is set only when it is wholly valid. */
static void grant_from_json(struct vctx *c, json_t *o, const char *prefix,
                            struct mg_grant **out) {
  *out = NULL;
  if (!json_is_object(o)) {
    problem(c, prefix, "expected a grant object, got %s", type_name(o));
    return;
  }
  size_t before = c->nerr;
  struct mg_grant *g = calloc(1, sizeof *g);
  if (!g) { c->oom = 1; return; }
  g->not_before_us = g->expires_us = MG_POLICY_NO_TIME;
  json_t *f[F_COUNT];
  char p[256];
  for (int i = 0; i < F_COUNT; i++) {
    f[i] = json_object_get(o, field_names[i]);
    if (!f[i] && field_required[i]) {
      ptr_join(p, sizeof p, prefix, field_names[i]);
      problem(c, p, "required field is missing");
    }
  }
  bool ok;
  if (f[F_ID]) {
    ptr_join(p, sizeof p, prefix, "id");
    g->id = get_string(c, f[F_ID], p, check_id);
  }
  if (f[F_EFFECT]) {
    ptr_join(p, sizeof p, prefix, "effect");
    if (!json_is_string(f[F_EFFECT]))
      problem(c, p, "expected \"allow\" or \"deny\", got %s", type_name(f[F_EFFECT]));
    else if (strcmp(json_string_value(f[F_EFFECT]), "allow") == 0)
      g->effect = MG_POLICY_ALLOW;
    else if (strcmp(json_string_value(f[F_EFFECT]), "deny") == 0)
      g->effect = MG_POLICY_DENY;
    else
      problem(c, p, "expected \"allow\" or \"deny\"");
  }
  if (f[F_SUBJECTS]) {
    ptr_join(p, sizeof p, prefix, "subjects");
    g->subjects = get_str_array(c, f[F_SUBJECTS], p, check_subject, &g->nsubjects, &ok);
  }
  if (f[F_PRODUCT]) {
    ptr_join(p, sizeof p, prefix, "product");
    g->product = get_string(c, f[F_PRODUCT], p, check_product);
  }
  if (f[F_RESOURCES]) {
    ptr_join(p, sizeof p, prefix, "resources");
    g->resources = get_str_array(c, f[F_RESOURCES], p, check_pattern, &g->nresources, &ok);
  }
  if (f[F_ACTIONS]) {
    ptr_join(p, sizeof p, prefix, "actions");
    json_t *a = f[F_ACTIONS];
    if (!json_is_array(a)) {
      problem(c, p, "expected an array of \"read\"/\"write\", got %s", type_name(a));
    } else if (json_array_size(a) == 0) {
      problem(c, p, "must not be empty");
    } else {
      char pe[256];
      for (size_t i = 0; i < json_array_size(a); i++) {
        json_t *e = json_array_get(a, i);
        ptr_index(pe, sizeof pe, p, i);
        unsigned bit = 0;
        if (!json_is_string(e))
          problem(c, pe, "expected \"read\" or \"write\", got %s", type_name(e));
        else if (strcmp(json_string_value(e), "read") == 0)
          bit = MG_ACTION_READ;
        else if (strcmp(json_string_value(e), "write") == 0)
          bit = MG_ACTION_WRITE;
        else
          problem(c, pe, "expected \"read\" or \"write\"");
        if (bit && (g->actions & bit)) problem(c, pe, "duplicate entry");
        g->actions |= bit;
      }
    }
  }
  if (f[F_PURPOSES] && !json_is_null(f[F_PURPOSES])) {
    ptr_join(p, sizeof p, prefix, "purposes");
    g->purposes = get_str_array(c, f[F_PURPOSES], p, check_purpose, &g->npurposes, &ok);
  }
  ptr_join(p, sizeof p, prefix, "not_before");
  g->not_before_us = get_time(c, f[F_NOT_BEFORE], p);
  ptr_join(p, sizeof p, prefix, "expires");
  g->expires_us = get_time(c, f[F_EXPIRES], p);
  if (g->not_before_us != MG_POLICY_NO_TIME && g->expires_us != MG_POLICY_NO_TIME &&
      g->expires_us <= g->not_before_us)
    problem(c, p, "must be later than not_before");
  if (f[F_DESCRIPTION] && !json_is_null(f[F_DESCRIPTION])) {
    ptr_join(p, sizeof p, prefix, "description");
    if (!json_is_string(f[F_DESCRIPTION]))
      problem(c, p, "expected a string, got %s", type_name(f[F_DESCRIPTION]));
    else if (json_string_length(f[F_DESCRIPTION]) > MG_GRANT_DESC_MAX)
      problem(c, p, "longer than 1024 bytes");
    else
      g->description = dup_str(c, json_string_value(f[F_DESCRIPTION]),
                               json_string_length(f[F_DESCRIPTION]));
  }
  const char *key;
  json_t *v;
  json_object_foreach(o, key, v) {
    bool known = false;
    for (int i = 0; i < F_COUNT && !known; i++) known = strcmp(key, field_names[i]) == 0;
    if (!known) {
      ptr_join(p, sizeof p, prefix, key);
      problem(c, p, "unknown field");
    }
  }
  if (c->nerr != before || c->oom) {
    mg_policy_grant_free(g);
    return;
  }
  *out = g;
}

/* jansson stops at the first syntax error and gives only a byte position. To name the
 * place by JSON Pointer anyway, rescan the text up to that position with a minimal
 * structural tracker (strings, brackets, commas, colons): the member or element being
 * read when jansson gave up is the pointer. Only the first MAX_TRACK levels are named;
 * deeper errors point at their ancestor at that depth. */
#define MAX_TRACK 32

struct frame {
  bool obj, want_key, have_key;
  size_t idx;
  const char *key;
  size_t klen;
};

static void pointer_at(const char *json, size_t len, size_t pos, const char *prefix, char *out,
                       size_t cap) {
  struct frame st[MAX_TRACK];
  size_t depth = 0, extra = 0; /* extra: levels beyond MAX_TRACK */
  bool in_str = false, esc = false, is_key = false;
  size_t key_start = 0;
  if (pos > len) pos = len;
  for (size_t i = 0; i < pos; i++) {
    char c = json[i];
    if (in_str) {
      if (esc) esc = false;
      else if (c == '\\') esc = true;
      else if (c == '"') {
        in_str = false;
        if (is_key && depth && !extra) {
          st[depth - 1].key = json + key_start;
          st[depth - 1].klen = i - key_start;
          st[depth - 1].have_key = true;
          st[depth - 1].want_key = false;
        }
      }
      continue;
    }
    struct frame *top = depth && !extra ? &st[depth - 1] : NULL;
    switch (c) {
    case '"':
      in_str = true;
      is_key = top && top->obj && top->want_key;
      key_start = i + 1;
      break;
    case '{':
    case '[':
      if (depth == MAX_TRACK || extra) { extra++; break; }
      st[depth++] = (struct frame){.obj = c == '{', .want_key = c == '{'};
      break;
    case '}':
    case ']':
      if (extra) extra--;
      else if (depth) depth--;
      break;
    case ',':
      if (top && top->obj) { top->want_key = true; top->have_key = false; }
      else if (top) top->idx++;
      break;
    case ':':
      if (top && top->obj) top->want_key = false;
      break;
    default:
      break;
    }
  }
  /* An unfinished key names its object member too. */
  if (in_str && is_key && depth && !extra) {
    st[depth - 1].key = json + key_start;
    st[depth - 1].klen = pos - key_start;
    st[depth - 1].have_key = true;
  }
  snprintf(out, cap, "%s", prefix);
  for (size_t d = 0; d < depth; d++) {
    char tmp[256];
    if (!st[d].obj) {
      ptr_index(tmp, sizeof tmp, out, st[d].idx);
    } else if (st[d].have_key) {
      char key[80];
      size_t kl = MG_MIN(st[d].klen, sizeof key - 1);
      memcpy(key, st[d].key, kl);
      key[kl] = 0;
      ptr_join(tmp, sizeof tmp, out, key);
    } else {
      break;
    }
    snprintf(out, cap, "%s", tmp);
  }
}

static json_t *load(struct vctx *c, const char *json, size_t len, const char *prefix) {
  json_error_t err;
  json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &err);
  if (!root) {
    if (json_error_code(&err) == json_error_out_of_memory) { c->oom = 1; return NULL; }
    char ptr[256];
    pointer_at(json, len, (size_t)err.position, prefix, ptr, sizeof ptr);
    problem(c, ptr, "invalid JSON at line %d, column %d: %s", err.line, err.column, err.text);
  }
  return root;
}

int mg_policy_grant_parse(const char *json, size_t len, const char *pointer_prefix,
                          struct mg_grant **out, struct mg_policy_diag *diag) {
  struct vctx c = {.d = diag};
  *out = NULL;
  json_t *root = load(&c, json, len, pointer_prefix ? pointer_prefix : "");
  if (root) {
    grant_from_json(&c, root, pointer_prefix ? pointer_prefix : "", out);
    json_decref(root);
  }
  if (c.oom) {
    mg_policy_grant_free(*out);
    *out = NULL;
    return -ENOMEM;
  }
  return *out ? 0 : MG_POLICY_E_INVALID;
}

struct idref {
  const char *id;
  size_t idx;
};

static int idref_cmp(const void *a, const void *b) {
  const struct idref *x = a, *y = b;
  int r = strcmp(x->id, y->id);
  if (r) return r;
  return x->idx < y->idx ? -1 : x->idx > y->idx;
}

int mg_policy_grants_parse(const char *json, size_t len, struct mg_grant ***out, size_t *nout,
                           struct mg_policy_diag *diag) {
  struct vctx c = {.d = diag};
  struct mg_grant **gs = NULL;
  struct idref *ids = NULL;
  size_t n = 0;
  *out = NULL;
  *nout = 0;
  json_t *root = load(&c, json, len, "");
  if (!root) goto out;
  if (!json_is_array(root)) {
    problem(&c, "", "expected an array of grants, got %s", type_name(root));
    goto out;
  }
  n = json_array_size(root);
  gs = calloc(n ? n : 1, sizeof *gs);
  ids = calloc(n ? n : 1, sizeof *ids);
  if (!gs || !ids) { c.oom = 1; goto out; }
  size_t nids = 0;
  for (size_t i = 0; i < n; i++) {
    char p[32];
    snprintf(p, sizeof p, "/%zu", i);
    json_t *e = json_array_get(root, i);
    grant_from_json(&c, e, p, &gs[i]);
    /* Duplicate ids are reported even among invalid grants, from the raw member. */
    json_t *id = json_object_get(e, "id");
    if (json_is_string(id) && !check_id(json_string_value(id), json_string_length(id)))
      ids[nids++] = (struct idref){json_string_value(id), i};
  }
  qsort(ids, nids, sizeof *ids, idref_cmp);
  for (size_t i = 1; i < nids; i++) {
    if (strcmp(ids[i].id, ids[i - 1].id) != 0) continue;
    size_t first = i - 1;
    while (first > 0 && strcmp(ids[first - 1].id, ids[i].id) == 0) first--;
    char p[48];
    snprintf(p, sizeof p, "/%zu/id", ids[i].idx);
    problem(&c, p, "duplicate id (also at /%zu)", ids[first].idx);
  }
out:
  free(ids);
  json_decref(root);
  if (c.oom || c.nerr) {
    mg_policy_grants_free(gs, n);
    return c.oom ? -ENOMEM : MG_POLICY_E_INVALID;
  }
  *out = gs;
  *nout = n;
  return 0;
}

/* ---- canonical JSON -------------------------------------------------------- */

static int put_key(struct mg_buf *b, bool *first, const char *k) {
  int rv = mg_buf_append(b, *first ? "\"" : ",\"", *first ? 1 : 2);
  *first = false;
  if (!rv) rv = mg_buf_appends(b, k);
  if (!rv) rv = mg_buf_append(b, "\":", 2);
  return rv;
}

static int put_strs(struct mg_buf *b, char *const *a, size_t n) {
  int rv = mg_buf_append(b, "[", 1);
  for (size_t i = 0; i < n && !rv; i++) {
    if (i) rv = mg_buf_append(b, ",", 1);
    if (!rv) rv = mg_buf_append_json_str(b, a[i], strlen(a[i]));
  }
  if (!rv) rv = mg_buf_append(b, "]", 1);
  return rv;
}

static int put_time(struct mg_buf *b, int64_t t) {
  char ts[MG_RFC3339_LEN];
  size_t n = mg_time_format_rfc3339(t, ts);
  return mg_buf_append_json_str(b, ts, n);
}

char *mg_policy_grant_to_json(const struct mg_grant *g) {
  struct mg_buf b;
  mg_buf_init(&b);
  bool first = true;
  int rv = mg_buf_append(&b, "{", 1);
  /* Keys in byte order: actions description effect expires id not_before product
   * purposes resources subjects. */
  if (!rv) rv = put_key(&b, &first, "actions");
  if (!rv) {
    const char *a = (g->actions & MG_ACTION_READ) && (g->actions & MG_ACTION_WRITE)
                        ? "[\"read\",\"write\"]"
                    : (g->actions & MG_ACTION_WRITE) ? "[\"write\"]"
                                                     : "[\"read\"]";
    rv = mg_buf_appends(&b, a);
  }
  if (!rv && g->description) {
    rv = put_key(&b, &first, "description");
    if (!rv) rv = mg_buf_append_json_str(&b, g->description, strlen(g->description));
  }
  if (!rv) rv = put_key(&b, &first, "effect");
  if (!rv) rv = mg_buf_appends(&b, g->effect == MG_POLICY_DENY ? "\"deny\"" : "\"allow\"");
  if (!rv && g->expires_us != MG_POLICY_NO_TIME) {
    rv = put_key(&b, &first, "expires");
    if (!rv) rv = put_time(&b, g->expires_us);
  }
  if (!rv) rv = put_key(&b, &first, "id");
  if (!rv) rv = mg_buf_append_json_str(&b, g->id, strlen(g->id));
  if (!rv && g->not_before_us != MG_POLICY_NO_TIME) {
    rv = put_key(&b, &first, "not_before");
    if (!rv) rv = put_time(&b, g->not_before_us);
  }
  if (!rv) rv = put_key(&b, &first, "product");
  if (!rv) rv = mg_buf_append_json_str(&b, g->product, strlen(g->product));
  if (!rv && g->npurposes) {
    rv = put_key(&b, &first, "purposes");
    if (!rv) rv = put_strs(&b, g->purposes, g->npurposes);
  }
  if (!rv) rv = put_key(&b, &first, "resources");
  if (!rv) rv = put_strs(&b, g->resources, g->nresources);
  if (!rv) rv = put_key(&b, &first, "subjects");
  if (!rv) rv = put_strs(&b, g->subjects, g->nsubjects);
  if (!rv) rv = mg_buf_append(&b, "}", 1);
  if (rv) {
    mg_buf_clear(&b);
    return NULL;
  }
  return mg_buf_steal(&b);
}

bool mg_policy_grant_equal(const struct mg_grant *a, const struct mg_grant *b) {
  return strcmp(a->id, b->id) == 0 && a->effect == b->effect &&
         mg_strv_eq(a->subjects, a->nsubjects, b->subjects, b->nsubjects) &&
         strcmp(a->product, b->product) == 0 &&
         mg_strv_eq(a->resources, a->nresources, b->resources, b->nresources) &&
         a->actions == b->actions &&
         mg_strv_eq(a->purposes, a->npurposes, b->purposes, b->npurposes) &&
         a->not_before_us == b->not_before_us && a->expires_us == b->expires_us &&
         mg_str_eq(a->description, b->description);
}

/* ---- errors and reasons ---------------------------------------------------- */

static const char *policy_strerror(int err) {
  switch (err) {
  case MG_POLICY_E_INVALID: return "invalid grant";
  case MG_POLICY_E_NOTFOUND: return "grant not found";
  case MG_POLICY_E_PRECONDITION: return "precondition failed (stale ETag)";
  case MG_POLICY_E_EXISTS: return "grant already exists";
  case MG_POLICY_E_FULL: return "policy store full";
  case MG_POLICY_E_STORE: return "policy store failure";
  case MG_POLICY_E_PRODUCT: return "grant belongs to another product";
  default: return NULL;
  }
}

void mg_policy_init(void) { mg_strerror_register(MG_ERR_POLICY_BASE, policy_strerror); }

const char *mg_policy_reason_str(enum mg_policy_reason r) {
  switch (r) {
  case MG_POLICY_REASON_ALLOWED: return "allowed";
  case MG_POLICY_REASON_NO_GRANT: return "no_matching_grant";
  case MG_POLICY_REASON_DENIED: return "denied_by_grant";
  case MG_POLICY_REASON_PURPOSE_MISSING: return "purpose_missing";
  case MG_POLICY_REASON_EXPIRED: return "grant_expired";
  }
  return "unknown";
}
