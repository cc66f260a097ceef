/*
 * lineage_store.h — private to the store half of lineage/ (entry.c, log.c, writer.c,
 * reader.c, export.c, openlineage.c): entry templates with splice points, the LMDB log's
 * open/close and transaction helpers.
 */
#ifndef MG_LINEAGE_STORE_H
#define MG_LINEAGE_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <stdio.h>

#include <sys/types.h>

#include <lmdb.h>

#include "lineage/lineage_int.h"

/* ---- entry.c: templates ---------------------------------------------------- */

/* What the writer thread splices into a template. */
enum mg_enc_slot { MG_ENC_INDEX = 0, MG_ENC_OF = 1, MG_ENC_TIME = 2 };

/* An entry encoded on the submitting thread, without the values only the writer knows:
 * data[0..len) is the line with empty holes at at[i] (in increasing order) where the
 * value of slot what[i] goes (decimal for index/of, the bare RFC 3339 text for time: the
 * quotes are in the template). */
struct mg_lineage_tmpl {
  char *data;
  size_t len;
  size_t cap;       /* data's allocation: a template built over a kept one reuses it */
  uint32_t at[3];
  uint8_t what[3];
  uint8_t n;
};

/* Each returns 0, -EINVAL (a string is not valid UTF-8 or a required field is missing)
 * or -ENOMEM; on success *t owns data (free with mg_lineage_tmpl_clear). origin_json is
 * the origin already encoded as a JSON string (quotes included). *t must be zeroed or
 * hold an earlier template, whose buffer is then reused (freed on failure). */
int mg_lineage_tmpl_access(const struct mg_lineage_access *a, const char *origin_json,
                           struct mg_lineage_tmpl *t);
int mg_lineage_tmpl_outcome(const struct mg_lineage_outcome *o, const char *origin_json,
                            struct mg_lineage_tmpl *t);
int mg_lineage_tmpl_policy(const struct mg_lineage_policy_write *p, const char *origin_json,
                           struct mg_lineage_tmpl *t);
/* Summary of rate-limited denies: {"count","decision","index","origin","peer","reason",
 * "summary":1,"time"}. */
int mg_lineage_tmpl_summary(const char *peer, const char *decision, const char *reason,
                            uint64_t count, const char *origin_json, struct mg_lineage_tmpl *t);
void mg_lineage_tmpl_clear(struct mg_lineage_tmpl *t);
/* Appends the finished line (no LF) to out. time is the 27-char RFC 3339 text. */
int mg_lineage_tmpl_finish(const struct mg_lineage_tmpl *t, uint64_t index, uint64_t of,
                           const char *time, size_t time_len, struct mg_buf *out);

/* ---- log.c -------------------------------------------------------------------- */

struct mg_lineage_log {
  MDB_env *env;
  MDB_dbi entries, nodes, checkpoints, meta;
  bool rdonly;
  int refs;              /* process-wide registry: one env per directory */
  dev_t dev;
  ino_t ino;
  pid_t pid;             /* an env inherited through fork() is never shared */
  struct mg_lineage_log *next;
};

/* Opens (creating when !rdonly) the log in dir, or takes another reference on the one this
 * process already has open there (a read-only request may share a read-write log, not the
 * reverse: -EBUSY). Clears stale readers. map_size_mb 0 = keep the file's size. */
int mg_lineage_log_open(const char *dir, size_t map_size_mb, bool rdonly,
                        struct mg_lineage_log **out);
void mg_lineage_log_close(struct mg_lineage_log *log);
/* LMDB error -> module error. */
int mg_lineage_log_err(int rc);
int mg_lineage_log_txn(struct mg_lineage_log *log, bool write, MDB_txn **txn);

/* Writes zeros from the end of the data file to `ahead` bytes past the last page in use
 * (capped at the map size) so that commits overwrite allocated blocks (an fdatasync then
 * commits no file-system journal); *file_end = the file's new end. Only the writer thread,
 * between write transactions. A failed write (full disk) stops early and is not an error. */
int mg_lineage_log_prealloc(struct mg_lineage_log *log, uint64_t ahead, uint64_t *file_end);
/* file_end minus the end of the last page in use (0 when none is left). */
uint64_t mg_lineage_log_slack(struct mg_lineage_log *log, uint64_t file_end);

/* Getter context for the mg_merkle_* functions: reads the nodes DBI in txn. */
struct mg_lineage_nodes_ctx { struct mg_lineage_log *log; MDB_txn *txn; };
int mg_lineage_log_get_node(void *ctx, unsigned level, uint64_t index, uint8_t out[MG_HASH_LEN]);
int mg_lineage_log_put_node(void *ctx, unsigned level, uint64_t index,
                            const uint8_t hash[MG_HASH_LEN]);
/* Size (last entry's key + 1) within txn. */
int mg_lineage_log_size_txn(struct mg_lineage_log *log, MDB_txn *txn, uint64_t *size);
/* Entries below this index were pruned (lineage.nats.retention_s): 0 when none were. */
uint64_t mg_lineage_log_pruned_txn(struct mg_lineage_log *log, MDB_txn *txn);
/* An entry line's "time" (keys are sorted and string values escape every quote, so the raw
 * bytes "time":" occur once, as the key): no JSON parse. */
int mg_lineage_entry_time(const char *line, size_t len, int64_t *t);
/* Entry `index` within txn (pointer valid until txn ends). */
int mg_lineage_log_entry_txn(struct mg_lineage_log *log, MDB_txn *txn, uint64_t index,
                             const char **line, size_t *len);
int mg_lineage_log_meta_get_u64(struct mg_lineage_log *log, MDB_txn *txn, const char *key,
                                uint64_t *v);
int mg_lineage_log_meta_put_u64(struct mg_lineage_log *log, MDB_txn *txn, const char *key,
                                uint64_t v);
/* meta string values (NUL-terminated copies; caller frees). */
int mg_lineage_log_meta_get_str(struct mg_lineage_log *log, MDB_txn *txn, const char *key,
                                char **v);
int mg_lineage_log_meta_put_str(struct mg_lineage_log *log, MDB_txn *txn, const char *key,
                                const char *v);
/* Puts entry line `index` (the log's next index: MDB_APPEND) and appends its leaf to fr,
 * storing every subtree hash that completes (the writer, and a stream's import). */
int mg_lineage_log_append_txn(struct mg_lineage_log *log, MDB_txn *txn,
                              struct mg_merkle_frontier *fr, uint64_t index, const char *line,
                              size_t len);
/* Stores the signed checkpoint note of a tree of `size` entries. */
int mg_lineage_log_put_checkpoint_txn(struct mg_lineage_log *log, MDB_txn *txn, uint64_t size,
                                      const char *note);
/* The latest checkpoint with size <= max_size within txn; MG_ERR_NOTFOUND if none. */
int mg_lineage_log_checkpoint_txn(struct mg_lineage_log *log, MDB_txn *txn, uint64_t max_size,
                                  char **note, uint64_t *size);

static inline void mg_be64(uint64_t v, uint8_t out[8]) {
  for (int i = 7; i >= 0; i--) {
    out[i] = (uint8_t)v;
    v >>= 8;
  }
}
static inline uint64_t mg_get_be64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = v << 8 | p[i];
  return v;
}

/* ---- reader.c ------------------------------------------------------------------ */
struct mg_lineage_reader {
  struct mg_lineage_log *log;
  bool owned; /* false: the writer's */
};

/* ---- openlineage.c --------------------------------------------------------------- */
/* Writes the RunEvent of an outcome entry whose access entry is `access` (both parsed).
 * Appends one line with LF to out. */
struct json_t;
int mg_lineage_ol_event(const struct json_t *access, const struct json_t *outcome,
                        struct mg_buf *out);

#endif /* MG_LINEAGE_STORE_H */
