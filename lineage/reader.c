/*
 * reader.c — read-only views of the log: the latest checkpoint and Merkle proofs.
 *
 * A reader opened with mg_lineage_reader_open maps the environment read-only
 * (MDB_RDONLY), so the CLI can read while `serve` writes from another process; inside
 * the serving process the writer hands out a reader on its own environment. Every call
 * runs in one short read transaction and copies what it returns.
 */
#include "lineage/lineage_store.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

int mg_lineage_reader_open(const char *db, struct mg_lineage_reader **out) {
  struct mg_lineage_reader *r;
  int rc;
  if (!db || !out) return MG_ERR_INVALID;
  if (!(r = calloc(1, sizeof *r))) return -ENOMEM;
  if ((rc = mg_lineage_log_open(db, 0, true, &r->log))) {
    free(r);
    return rc;
  }
  r->owned = true;
  *out = r;
  return 0;
}

void mg_lineage_reader_close(struct mg_lineage_reader *r) {
  if (!r || !r->owned) return;
  mg_lineage_log_close(r->log);
  free(r);
}

int mg_lineage_reader_checkpoint(struct mg_lineage_reader *r, char **note_out, uint64_t *size) {
  if (!r || !note_out) return MG_ERR_INVALID;
  return mg_lineage_log_checkpoint(r->log, UINT64_MAX, note_out, size);
}

static int append_hashes(struct mg_buf *b, uint8_t h[][MG_HASH_LEN], size_t n) {
  char b64[64];
  int rc = mg_buf_appends(b, "\"hashes\":[");
  for (size_t i = 0; i < n && !rc; i++) {
    mg_b64_encode(h[i], MG_HASH_LEN, b64);
    rc = mg_buf_appendf(b, "%s\"%s\"", i ? "," : "", b64);
  }
  return rc ? rc : mg_buf_appends(b, "]");
}

int mg_lineage_reader_inclusion(struct mg_lineage_reader *r, uint64_t index, uint64_t size,
                                char **json_out) {
  uint8_t proof[MG_MERKLE_MAX_LEVELS][MG_HASH_LEN], leaf[MG_HASH_LEN];
  size_t n = 0;
  uint64_t have = 0;
  MDB_txn *txn;
  struct mg_buf b;
  char hex[2 * MG_HASH_LEN + 1];
  if (!r || !json_out) return MG_ERR_INVALID;
  int rc = mg_lineage_log_txn(r->log, false, &txn);
  if (rc) return mg_lineage_log_err(rc);
  struct mg_lineage_nodes_ctx nc = {r->log, txn};
  if ((rc = mg_lineage_log_size_txn(r->log, txn, &have))) goto out;
  if (index >= size || size > have) {
    rc = MG_LINEAGE_E_RANGE;
    goto out;
  }
  if ((rc = mg_lineage_log_get_node(&nc, 0, index, leaf)) ||
      (rc = mg_merkle_prove_inclusion(index, size, mg_lineage_log_get_node, &nc, proof, &n)))
    goto out;
  mg_hex_encode(leaf, MG_HASH_LEN, hex);
  mg_buf_init(&b);
  if (mg_buf_appendf(&b, "{\"index\":%" PRIu64 ",\"size\":%" PRIu64 ",\"leaf\":\"%s\",", index,
                     size, hex) ||
      append_hashes(&b, proof, n) || mg_buf_appends(&b, "}")) {
    mg_buf_clear(&b);
    rc = -ENOMEM;
    goto out;
  }
  *json_out = mg_buf_steal(&b);
out:
  mdb_txn_abort(txn);
  return rc;
}

int mg_lineage_reader_consistency(struct mg_lineage_reader *r, uint64_t a, uint64_t b_,
                                  char **json_out) {
  uint8_t proof[MG_MERKLE_MAX_LEVELS][MG_HASH_LEN];
  size_t n = 0;
  uint64_t have = 0;
  MDB_txn *txn;
  struct mg_buf b;
  if (!r || !json_out) return MG_ERR_INVALID;
  int rc = mg_lineage_log_txn(r->log, false, &txn);
  if (rc) return mg_lineage_log_err(rc);
  struct mg_lineage_nodes_ctx nc = {r->log, txn};
  if ((rc = mg_lineage_log_size_txn(r->log, txn, &have))) goto out;
  if (a > b_ || b_ > have) {
    rc = MG_LINEAGE_E_RANGE;
    goto out;
  }
  if ((rc = mg_merkle_prove_consistency(a, b_, mg_lineage_log_get_node, &nc, proof, &n))) goto out;
  mg_buf_init(&b);
  if (mg_buf_appendf(&b, "{\"from\":%" PRIu64 ",\"to\":%" PRIu64 ",", a, b_) ||
      append_hashes(&b, proof, n) || mg_buf_appends(&b, "}")) {
    mg_buf_clear(&b);
    rc = -ENOMEM;
    goto out;
  }
  *json_out = mg_buf_steal(&b);
out:
  mdb_txn_abort(txn);
  return rc;
}
