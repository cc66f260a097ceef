/*
 * fuzz_entry.c — libFuzzer target for entry encoding (lineage/entry.c).
 *
 * The input is split at NUL bytes into the string fields of an access entry (then groups),
 * and its first bytes also drive an outcome and a policy entry. Whenever every string is
 * valid UTF-8 the encoding must succeed, and the finished line must be one line of JSON
 * (no duplicate keys) whose keys are in bytewise order and whose fields read back equal
 * to the inputs; invalid UTF-8 must be refused with -EINVAL and nothing else.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "lineage/lineage_store.h"

#define NF 16

static const char *const names[NF] = {"request_id", "principal", "client", "peer", "product",
                                      "dataset", "action", "method", "path", "purpose",
                                      "decision", "reason", "grant", "policy_revision",
                                      "token", "groups"};

static void check_sorted(const char *line, size_t len, json_t *j) {
  /* top-level keys in the order they appear in the line: find each key's position */
  const char *prev = NULL;
  size_t prevpos = 0;
  const char *k;
  json_t *v;
  size_t nkeys = json_object_size(j);
  const char **keys = calloc(nkeys + 1, sizeof *keys);
  size_t n = 0;
  json_object_foreach(j, k, v) keys[n++] = k;
  /* sort by byte order, then each key's "\"key\":" must appear at increasing offsets */
  for (size_t a = 0; a < n; a++)
    for (size_t b = a + 1; b < n; b++)
      if (strcmp(keys[b], keys[a]) < 0) {
        const char *t = keys[a];
        keys[a] = keys[b];
        keys[b] = t;
      }
  for (size_t i = 0; i < n; i++) {
    char pat[64];
    snprintf(pat, sizeof pat, "%s\"%s\":", i == 0 ? "{" : ",", keys[i]);
    const char *p = memmem(line + prevpos, len - prevpos, pat, strlen(pat));
    if (!p) {
      fprintf(stderr, "key %s out of order (after %s): %.*s\n", keys[i], prev ? prev : "-",
              (int)len, line);
      abort();
    }
    prevpos = (size_t)(p - line) + 1;
    prev = keys[i];
  }
  free(keys);
}

static json_t *finish(const struct mg_lineage_tmpl *t, uint64_t idx, uint64_t of) {
  struct mg_buf b;
  json_error_t err;
  mg_buf_init(&b);
  if (mg_lineage_tmpl_finish(t, idx, of, "2026-11-25T10:00:00.000001Z", 27, &b)) abort();
  if (memchr(b.data, '\n', b.len)) abort();
  json_t *j = json_loadb(b.data, b.len, JSON_REJECT_DUPLICATES, &err);
  if (!j || !json_is_object(j)) {
    fprintf(stderr, "invalid JSON (%s): %.*s\n", err.text, (int)b.len, b.data);
    abort();
  }
  check_sorted(b.data, b.len, j);
  if (json_integer_value(json_object_get(j, "index")) != (json_int_t)idx) abort();
  mg_buf_clear(&b);
  return j;
}

static void same(json_t *j, const char *key, const char *want) {
  const char *got = json_string_value(json_object_get(j, key));
  if (!want ? got != NULL : !got || strcmp(got, want) != 0) {
    fprintf(stderr, "field %s differs\n", key);
    abort();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *buf = malloc(size + 1);
  memcpy(buf, data, size);
  buf[size] = 0;
  const char *f[NF + 80] = {0};
  size_t nf = 0;
  for (char *p = buf; nf < MG_ARRAY_LEN(f) && p <= buf + size; nf++) {
    f[nf] = p;
    p += strlen(p) + 1;
  }
  struct mg_lineage_access a = {0};
  const char **fields[NF - 1] = {&a.request_id, &a.principal, &a.client, &a.peer, &a.product,
                                 &a.dataset, &a.action, &a.method, &a.path, &a.purpose,
                                 &a.decision, &a.reason, &a.grant, &a.policy_revision, &a.token};
  for (size_t i = 0; i < NF - 1 && i < nf; i++) *fields[i] = f[i][0] == '-' ? NULL : f[i];
  /* groups: what is left */
  if (nf > NF - 1) {
    a.groups = &f[NF - 1];
    a.ngroups = nf - (NF - 1);
  }
  bool want_ok = true;
  for (size_t i = 0; i < NF - 1 && i < nf; i++)
    if (*fields[i] && !mg_utf8_valid(*fields[i], strlen(*fields[i]))) want_ok = false;
  for (size_t i = 0; i < a.ngroups && i < 64; i++)
    if (!mg_utf8_valid(a.groups[i], strlen(a.groups[i]))) want_ok = false;

  struct mg_lineage_tmpl t = {0};
  int rc = mg_lineage_tmpl_access(&a, "\"fuzz/origin\"", &t);
  if (want_ok != (rc == 0) || (rc && rc != -EINVAL)) {
    fprintf(stderr, "access: rc %d, expected %s\n", rc, want_ok ? "success" : "-EINVAL");
    abort();
  }
  if (rc == 0) {
    json_t *j = finish(&t, size, 0);
    for (size_t i = 0; i < NF - 1; i++) same(j, names[i], *fields[i]);
    json_t *g = json_object_get(j, "groups");
    if (json_array_size(g) != (a.ngroups > 64 ? 64 : a.ngroups)) abort();
    for (size_t i = 0; i < json_array_size(g); i++)
      if (strcmp(json_string_value(json_array_get(g, i)), a.groups[i])) abort();
    if (a.ngroups > 64 && json_integer_value(json_object_get(j, "groups_more")) != (json_int_t)(a.ngroups - 64))
      abort();
    json_decref(j);
    mg_lineage_tmpl_clear(&t);
  }

  /* outcome and policy from the first fields */
  struct mg_lineage_outcome o = {.request_id = f[0], .status = size > 0 ? data[0] * 3 : 0,
                                 .reset = size > 1 && data[1] & 1 ? data[1] : -1,
                                 .bytes_in = size, .bytes_out = (uint64_t)size << 40,
                                 .duration_us = UINT64_MAX};
  rc = mg_lineage_tmpl_outcome(&o, "\"fuzz/origin\"", &t);
  if ((rc == 0) != mg_utf8_valid(f[0], strlen(f[0]))) abort();
  if (rc == 0) {
    json_t *j = finish(&t, 1, size);
    same(j, "request_id", f[0]);
    if (json_integer_value(json_object_get(j, "of")) != (json_int_t)size) abort();
    if ((json_object_get(j, "reset") != NULL) != (o.reset >= 0)) abort();
    json_decref(j);
    mg_lineage_tmpl_clear(&t);
  }
  struct mg_lineage_policy_write p = {.request_id = f[0], .editor = nf > 1 ? f[1] : NULL,
                                      .grant = nf > 2 ? f[2] : NULL};
  rc = mg_lineage_tmpl_policy(&p, "\"fuzz/origin\"", &t);
  if (rc == 0) {
    json_t *j = finish(&t, 2, 0);
    same(j, "editor", p.editor);
    json_decref(j);
    mg_lineage_tmpl_clear(&t);
  }
  free(buf);
  return 0;
}
