/*
 * export.c — `meshgate lineage export --db`: ndjson (the verifiable format) and
 * OpenLineage (openlineage.c formats the events).
 *
 * Unfiltered export (no principal/product/dataset/action/until filter): the entry lines,
 * exact stored bytes, in index order from 0 or from the first entry with time >= since;
 * when it starts at k > 0 a first line {"prefix":{"origin","size":k,"hashes":[frontier of
 * [0,k)]}} lets a verifier rebuild the tree without the earlier entries. Each stored
 * checkpoint follows the last entry it covers as {"checkpoint":"<note>","leaves":"<b64 of
 * the stored leaf hashes since the previous checkpoint line>"}; the export ends with the
 * latest checkpoint at its start (later entries are not covered yet and are left out).
 *
 * Filtered export: matching entries only, each followed by {"proof":{"index","size",
 * "hashes"}} against that latest checkpoint, which ends the export (no "leaves").
 * An outcome entry matches when its access entry does (it is looked up by `of`).
 *
 * The log only grows and entries never change, so the export reads in chunks, one short
 * read transaction each, instead of pinning one snapshot for the whole (slow) stream.
 */
#include "lineage/lineage_store.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#define CHUNK 1024

void mg_lineage_filter_init(struct mg_lineage_filter *f) {
  memset(f, 0, sizeof *f);
  f->since_us = INT64_MIN;
  f->until_us = INT64_MAX;
}

bool mg_lineage_filter_is_empty(const struct mg_lineage_filter *f) {
  return !f || (f->since_us == INT64_MIN && f->until_us == INT64_MAX && !f->principal &&
                !f->product && !f->dataset && !f->action);
}

static bool is_filtered(const struct mg_lineage_filter *f) {
  return f && (f->principal || f->product || f->dataset || f->action || f->until_us != INT64_MAX);
}

static int out_err(FILE *out) {
  int e = errno;
  clearerr(out);
  return e ? -e : -EIO;
}

static int put(FILE *out, const void *p, size_t n) {
  if (n && fwrite(p, 1, n, out) != n) return out_err(out);
  return 0;
}

/* First index in [pruned, n) whose time >= since (times never decrease): an export of a
 * pruned log starts where its entries do, with the prefix frontier (kept by pruning). */
static int first_since(struct mg_lineage_log *log, int64_t since, uint64_t n, uint64_t *out) {
  MDB_txn *txn;
  int rc = mg_lineage_log_txn(log, false, &txn);
  if (rc) return mg_lineage_log_err(rc);
  uint64_t lo = mg_lineage_log_pruned_txn(log, txn), hi = n;
  if (lo > n) lo = n;
  if (since == INT64_MIN || lo == n) {
    mdb_txn_abort(txn);
    *out = lo;
    return 0;
  }
  while (lo < hi) {
    uint64_t mid = lo + (hi - lo) / 2;
    const char *line;
    size_t len;
    int64_t t;
    if ((rc = mg_lineage_log_entry_txn(log, txn, mid, &line, &len)) ||
        (rc = mg_lineage_entry_time(line, len, &t)))
      break;
    if (t < since) lo = mid + 1;
    else hi = mid;
  }
  mdb_txn_abort(txn);
  *out = lo;
  return rc;
}

static int hashes_json(struct mg_buf *b, uint8_t h[][MG_HASH_LEN], size_t n) {
  char b64[64];
  int rc = mg_buf_appends(b, "\"hashes\":[");
  for (size_t i = 0; i < n && !rc; i++) {
    mg_b64_encode(h[i], MG_HASH_LEN, b64);
    rc = mg_buf_appendf(b, "%s\"%s\"", i ? "," : "", b64);
  }
  return rc ? rc : mg_buf_appends(b, "]");
}

/* A filtered export's checkpoint line says so ("filtered":1): verify then accepts an export
 * in which nothing matched, which it must refuse for an unfiltered one (a deleted log). */
static const struct mg_buf filtered_marker;
#define FILTERED (&filtered_marker)

static int checkpoint_line(struct mg_buf *b, const char *note, const struct mg_buf *leaves) {
  int rc = mg_buf_appends(b, "{\"checkpoint\":");
  if (!rc) rc = mg_buf_append_json_str(b, note, strlen(note));
  if (!rc && leaves == FILTERED) return mg_buf_appends(b, ",\"filtered\":1}\n");
  if (!rc && leaves) {
    size_t need = 4 * ((leaves->len + 2) / 3) + 1;
    if (!(rc = mg_buf_appends(b, ",\"leaves\":\"")) && !(rc = mg_buf_reserve(b, need))) {
      b->len += mg_b64_encode((const uint8_t *)leaves->data, leaves->len, b->data + b->len);
      rc = mg_buf_appends(b, "\"");
    }
  }
  return rc ? rc : mg_buf_appends(b, "}\n");
}

/* The next stored checkpoint with size > after (and <= limit). */

static int next_cp(struct mg_lineage_log *log, uint64_t after, uint64_t limit, char **note,
                   uint64_t *size) {
  MDB_txn *txn;
  MDB_cursor *c;
  uint8_t kb[8];
  *note = NULL;
  *size = UINT64_MAX;
  int rc = mg_lineage_log_txn(log, false, &txn);
  if (rc) return mg_lineage_log_err(rc);
  if ((rc = mdb_cursor_open(txn, log->checkpoints, &c))) {
    mdb_txn_abort(txn);
    return mg_lineage_log_err(rc);
  }
  mg_be64(after + 1, kb);
  MDB_val k = {8, kb}, v;
  rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
  if (rc == 0 && mg_get_be64(k.mv_data) <= limit) {
    *size = mg_get_be64(k.mv_data);
    if (!(*note = strndup(v.mv_data, v.mv_size))) rc = -ENOMEM;
  } else if (rc == MDB_NOTFOUND || rc == 0) {
    rc = 0;
  } else {
    rc = mg_lineage_log_err(rc);
  }
  mdb_cursor_close(c);
  mdb_txn_abort(txn);
  return rc;
}

/* ---- unfiltered ------------------------------------------------------------------- */

static int export_all(struct mg_lineage_log *log, const char *origin, uint64_t k, uint64_t s,
                      FILE *out) {
  struct mg_buf line, leaves;
  MDB_txn *txn = NULL;
  char *note = NULL;
  uint64_t cps = 0;
  int rc = 0;
  mg_buf_init(&line);
  mg_buf_init(&leaves);
  if (k > 0) {
    struct mg_merkle_frontier fr;
    if ((rc = mg_lineage_log_txn(log, false, &txn))) {
      rc = mg_lineage_log_err(rc);
      goto out;
    }
    struct mg_lineage_nodes_ctx nc = {log, txn};
    rc = mg_merkle_frontier_load(&fr, k, mg_lineage_log_get_node, &nc);
    mdb_txn_abort(txn);
    txn = NULL;
    if (rc) goto out;
    if ((rc = mg_buf_appends(&line, "{\"prefix\":{\"origin\":")) ||
        (rc = mg_buf_append_json_str(&line, origin, strlen(origin))) ||
        (rc = mg_buf_appendf(&line, ",\"size\":%" PRIu64 ",", k)) ||
        (rc = hashes_json(&line, fr.hashes, fr.n)) || (rc = mg_buf_appends(&line, "}}\n")) ||
        (rc = put(out, line.data, line.len)))
      goto out;
  }
  if ((rc = next_cp(log, k, s, &note, &cps))) goto out;
  for (uint64_t i = k; i < s;) {
    MDB_cursor *ce = NULL, *cn = NULL;
    uint8_t kb[8], nb[9];
    if ((rc = mg_lineage_log_txn(log, false, &txn)) || (rc = mdb_cursor_open(txn, log->entries, &ce)) ||
        (rc = mdb_cursor_open(txn, log->nodes, &cn))) {
      rc = mg_lineage_log_err(rc);
      goto chunk_end;
    }
    mg_be64(i, kb);
    mg_be64(i, nb);
    nb[8] = 0;
    MDB_val ek = {8, kb}, ev, nk = {9, nb}, nv;
    int m1 = mdb_cursor_get(ce, &ek, &ev, MDB_SET_KEY);
    int m2 = mdb_cursor_get(cn, &nk, &nv, MDB_SET_KEY);
    for (uint64_t j = 0; j < CHUNK && i < s; j++, i++) {
      /* nodes are keyed (last leaf, level): leaf i's hash is (i, 0), followed by the
       * subtrees it completed, (i, 1..) */
      if (m1 || m2 || mg_get_be64(ek.mv_data) != i || nk.mv_size != 9 ||
          ((uint8_t *)nk.mv_data)[8] != 0 || mg_get_be64(nk.mv_data) != i ||
          nv.mv_size != MG_HASH_LEN) {
        rc = MG_LINEAGE_E_STORE;
        goto chunk_end;
      }
      if ((rc = put(out, ev.mv_data, ev.mv_size)) || (rc = put(out, "\n", 1)) ||
          (rc = mg_buf_append(&leaves, nv.mv_data, MG_HASH_LEN)))
        goto chunk_end;
      while (note && cps == i + 1) {
        mg_buf_reset(&line);
        if ((rc = checkpoint_line(&line, note, &leaves)) || (rc = put(out, line.data, line.len)))
          goto chunk_end;
        mg_buf_reset(&leaves);
        free(note);
        note = NULL;
        if (cps < s && (rc = next_cp(log, cps, s, &note, &cps))) goto chunk_end;
      }
      m1 = mdb_cursor_get(ce, &ek, &ev, MDB_NEXT);
      do m2 = mdb_cursor_get(cn, &nk, &nv, MDB_NEXT);
      while (!m2 && nk.mv_size == 9 && ((uint8_t *)nk.mv_data)[8] != 0);
    }
  chunk_end:
    if (ce) mdb_cursor_close(ce);
    if (cn) mdb_cursor_close(cn);
    if (txn) mdb_txn_abort(txn);
    txn = NULL;
    if (rc) goto out;
  }
out:
  free(note);
  mg_buf_clear(&line);
  mg_buf_clear(&leaves);
  return rc;
}

/* ---- filtered ------------------------------------------------------------------- */

static const char *jstr(json_t *j, const char *k) { return json_string_value(json_object_get(j, k)); }

static bool eq(const char *a, const char *b) { return a && b && strcmp(a, b) == 0; }

/* Whether an access / policy / summary entry matches (not an outcome). */
static bool match_entry(json_t *j, const struct mg_lineage_filter *f) {
  int64_t t;
  const char *ts = jstr(j, "time");
  if (!ts || mg_time_parse_rfc3339(ts, strlen(ts), &t) || t < f->since_us || t > f->until_us)
    return false;
  if (f->principal) {
    bool ok = eq(jstr(j, "principal"), f->principal) || eq(jstr(j, "editor"), f->principal) ||
              eq(jstr(j, "client"), f->principal);
    if (!ok && strncmp(f->principal, "group:", 6) == 0) {
      size_t i;
      json_t *g;
      json_array_foreach(json_object_get(j, "groups"), i, g) if (eq(json_string_value(g), f->principal)) ok = true;
    }
    if (!ok) return false;
  }
  if (f->product && !eq(jstr(j, "product"), f->product)) return false;
  if (f->dataset && !eq(jstr(j, "dataset"), f->dataset)) return false;
  if (f->action && !eq(jstr(j, "action"), f->action)) return false;
  return true;
}

/* Parses entry `of` of an outcome; NULL when absent or malformed. */
static json_t *load_entry(struct mg_lineage_log *log, MDB_txn *txn, json_t *outcome) {
  json_t *of = json_object_get(outcome, "of");
  const char *line;
  size_t len;
  if (!json_is_integer(of) || json_integer_value(of) < 0 ||
      mg_lineage_log_entry_txn(log, txn, (uint64_t)json_integer_value(of), &line, &len))
    return NULL;
  return json_loadb(line, len, 0, NULL);
}

/* Walks entries [k, s) in chunks; cb sees each parsed entry and its access entry (for
 * outcomes; NULL otherwise) within the chunk's transaction. */
typedef int (*walk_cb)(void *arg, MDB_txn *txn, uint64_t i, const char *line, size_t len,
                       json_t *e, json_t *access);

static int walk(struct mg_lineage_log *log, uint64_t k, uint64_t s, bool outcomes_only,
                walk_cb cb, void *arg) {
  int rc = 0;
  for (uint64_t i = k; i < s && !rc;) {
    MDB_txn *txn;
    MDB_cursor *c;
    uint8_t kb[8];
    if ((rc = mg_lineage_log_txn(log, false, &txn))) return mg_lineage_log_err(rc);
    if ((rc = mdb_cursor_open(txn, log->entries, &c))) {
      mdb_txn_abort(txn);
      return mg_lineage_log_err(rc);
    }
    mg_be64(i, kb);
    MDB_val ek = {8, kb}, ev;
    int m = mdb_cursor_get(c, &ek, &ev, MDB_SET_KEY);
    for (uint64_t j = 0; j < CHUNK && i < s && !rc; j++, i++) {
      if (m || mg_get_be64(ek.mv_data) != i) {
        rc = MG_LINEAGE_E_STORE;
        break;
      }
      bool is_outcome = memmem(ev.mv_data, ev.mv_size, "\"of\":", 5) != NULL;
      if (!outcomes_only || is_outcome) {
        json_t *e = json_loadb(ev.mv_data, ev.mv_size, 0, NULL), *a = NULL;
        if (!e) {
          rc = MG_LINEAGE_E_FORMAT;
          break;
        }
        if (is_outcome) a = load_entry(log, txn, e);
        rc = cb(arg, txn, i, ev.mv_data, ev.mv_size, e, a);
        json_decref(e);
        json_decref(a);
      }
      m = mdb_cursor_get(c, &ek, &ev, MDB_NEXT);
    }
    mdb_cursor_close(c);
    mdb_txn_abort(txn);
  }
  return rc;
}

struct fctx {
  struct mg_lineage_log *log;
  const struct mg_lineage_filter *f;
  uint64_t s;
  FILE *out;
  struct mg_buf b;
};

static int filtered_cb(void *arg, MDB_txn *txn, uint64_t i, const char *line, size_t len,
                       json_t *e, json_t *access) {
  struct fctx *x = arg;
  uint8_t proof[MG_MERKLE_MAX_LEVELS][MG_HASH_LEN];
  size_t n = 0;
  int rc;
  if (!(json_object_get(e, "of") ? access && !json_object_get(access, "of") && match_entry(access, x->f)
                                 : match_entry(e, x->f)))
    return 0;
  struct mg_lineage_nodes_ctx nc = {x->log, txn};
  if ((rc = mg_merkle_prove_inclusion(i, x->s, mg_lineage_log_get_node, &nc, proof, &n))) return rc;
  mg_buf_reset(&x->b);
  if ((rc = mg_buf_append(&x->b, line, len)) ||
      (rc = mg_buf_appendf(&x->b, "\n{\"proof\":{\"index\":%" PRIu64 ",\"size\":%" PRIu64 ",", i, x->s)) ||
      (rc = hashes_json(&x->b, proof, n)) || (rc = mg_buf_appends(&x->b, "}}\n")))
    return rc;
  return put(x->out, x->b.data, x->b.len);
}

struct octx {
  const struct mg_lineage_filter *f;
  FILE *out;
  struct mg_buf b;
};

static int ol_cb(void *arg, MDB_txn *txn, uint64_t i, const char *line, size_t len, json_t *e,
                 json_t *access) {
  struct octx *x = arg;
  int rc;
  if (!access || json_object_get(access, "of") || !eq(jstr(access, "decision"), "allow") ||
      (x->f && !match_entry(access, x->f)))
    return 0;
  mg_buf_reset(&x->b);
  if ((rc = mg_lineage_ol_event((const struct json_t *)access, (const struct json_t *)e, &x->b)))
    return rc;
  return put(x->out, x->b.data, x->b.len);
}

int mg_lineage_export(struct mg_lineage_reader *r, const struct mg_lineage_filter *f,
                      enum mg_lineage_format fmt, FILE *out) {
  struct mg_lineage_filter none;
  char *note = NULL, *origin = NULL;
  uint64_t s = 0, k = 0;
  int rc;
  uint8_t root[MG_HASH_LEN];
  if (!r || !out) return MG_ERR_INVALID;
  if (!f) {
    mg_lineage_filter_init(&none);
    f = &none;
  }
  if (fmt == MG_LINEAGE_OPENLINEAGE) {
    struct octx x = {f, out, {0}};
    mg_buf_init(&x.b);
    uint64_t n = mg_lineage_log_size(r->log);
    rc = first_since(r->log, f->since_us, n, &k);
    if (!rc) rc = walk(r->log, k, n, true, ol_cb, &x);
    mg_buf_clear(&x.b);
    goto flush;
  }
  rc = mg_lineage_log_checkpoint(r->log, UINT64_MAX, &note, &s);
  if (rc == MG_ERR_NOTFOUND) {
    mg_warn("lineage export: no checkpoint yet: nothing is covered");
    rc = 0;
    goto out;
  }
  if (rc) goto out;
  const char *body_end = strstr(note, "\n\n");
  uint64_t cps;
  if ((rc = mg_checkpoint_parse(note, body_end ? (size_t)(body_end - note) + 1 : strlen(note),
                                &origin, &cps, root)))
    goto out;
  if ((rc = first_since(r->log, f->since_us, s, &k))) goto out;
  if (!is_filtered(f)) {
    if (k < s) {
      rc = export_all(r->log, origin, k, s, out);
    } else if (s > 0) {
      /* --since after the last checkpoint: nothing to export, but the prefix and the
       * checkpoint still prove the range is empty */
      struct mg_buf b;
      mg_buf_init(&b);
      if (!(rc = export_all(r->log, origin, s, s, out)) && !(rc = checkpoint_line(&b, note, NULL)))
        rc = put(out, b.data, b.len);
      mg_buf_clear(&b);
    }
  } else {
    struct fctx x = {r->log, f, s, out, {0}};
    mg_buf_init(&x.b);
    rc = walk(r->log, k, s, false, filtered_cb, &x);
    if (!rc) {
      mg_buf_reset(&x.b);
      if (!(rc = checkpoint_line(&x.b, note, FILTERED))) rc = put(out, x.b.data, x.b.len);
    }
    mg_buf_clear(&x.b);
  }
flush:
  if (!rc && fflush(out)) rc = out_err(out);
out:
  free(note);
  free(origin);
  return rc;
}
