/*
 * log.c — the LMDB log: one environment per directory and process, four databases.
 *
 *   entries      u64 BE index            -> the entry line (no LF), exact bytes
 *   nodes        u64 BE last leaf, u8 level -> 32-byte hash of the perfect subtree of
 *                                           that level ending at that leaf (level 0 =
 *                                           leaf hashes)
 *   checkpoints  u64 BE size             -> signed note text
 *   meta         name                    -> value ("size", "last_time_us", "shipped" as
 *                                           u64 BE; "key", "origin" as text)
 *
 * Every subtree hash is stored once, when the append that completes it commits, so a
 * proof or a frontier is O(log n) point reads and nothing is ever rewritten. Node keys are
 * in completion order: appending leaf s completes the subtrees ending at s, level 0 up, so
 * (s, level) only grows and a commit's nodes all land in the tail page(s) of the tree
 * (keyed level-first, each commit dirtied one leaf page and its branch path per level).
 * meta "layout" = 2 records that; a log without it but with nodes is refused. The writer
 * puts entries and nodes with MDB_APPEND (keys only grow). We never use MDB_NOSYNC, MDB_WRITEMAP or
 * MDB_MAPASYNC: a commit that returned is on disk, and a killed process leaves the last
 * commit intact. MDB_NOTLS lets read transactions run on any thread (the admin export, the
 * shipper). LMDB forbids opening one environment twice in a process (closing one would
 * drop the other's locks), hence the small registry keyed by the directory's inode.
 */
#include "lineage/lineage_store.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct mg_lineage_log *reg_head;

int mg_lineage_log_err(int rc) {
  switch (rc) {
  case 0: return 0;
  case MDB_MAP_FULL:
  case ENOSPC:
  case EDQUOT: return MG_LINEAGE_E_FULL;
  case MDB_NOTFOUND: return MG_ERR_NOTFOUND;
  case ENOMEM: return -ENOMEM;
  case EACCES:
  case ENOENT:
  case EAGAIN: return -rc;
  default: return MG_LINEAGE_E_STORE;
  }
}

int mg_lineage_log_txn(struct mg_lineage_log *log, bool write, MDB_txn **txn) {
  int rc = mdb_txn_begin(log->env, NULL, write ? 0 : MDB_RDONLY, txn);
  if (rc == MDB_MAP_RESIZED) {
    rc = mdb_env_set_mapsize(log->env, 0);
    if (!rc) rc = mdb_txn_begin(log->env, NULL, write ? 0 : MDB_RDONLY, txn);
  }
  return rc;
}

#define LOG_LAYOUT "2"

/* A new log is stamped with the node layout; an old one (nodes, no stamp) is refused. */
static int check_layout(struct mg_lineage_log *l, MDB_txn *txn, bool rdonly) {
  MDB_val k = {6, (void *)"layout"}, d;
  int rc = mdb_get(txn, l->meta, &k, &d);
  if (rc == 0)
    return d.mv_size == sizeof LOG_LAYOUT - 1 && !memcmp(d.mv_data, LOG_LAYOUT, d.mv_size)
               ? 0 : MG_LINEAGE_E_LAYOUT;
  if (rc != MDB_NOTFOUND) return rc;
  MDB_stat st;
  if ((rc = mdb_stat(txn, l->nodes, &st))) return rc;
  if (st.ms_entries) return MG_LINEAGE_E_LAYOUT;
  if (rdonly) return 0;
  d.mv_size = sizeof LOG_LAYOUT - 1;
  d.mv_data = (void *)LOG_LAYOUT;
  return mdb_put(txn, l->meta, &k, &d, 0);
}

static int open_env(const char *dir, size_t map_size_mb, bool rdonly, struct mg_lineage_log *l) {
  MDB_txn *txn = NULL;
  int rc = mdb_env_create(&l->env);
  if (rc) return rc;
  if ((rc = mdb_env_set_maxdbs(l->env, 4)) ||
      (map_size_mb && (rc = mdb_env_set_mapsize(l->env, map_size_mb << 20))) ||
      (rc = mdb_env_set_maxreaders(l->env, 1022)))
    goto fail_env;
  rc = mdb_env_open(l->env, dir, MDB_NOTLS | (rdonly ? MDB_RDONLY : 0u), 0600);
  if (rc) goto fail_env;
  int dead = 0;
  mdb_reader_check(l->env, &dead);
  if (dead) mg_info("lineage log %s: cleared %d stale readers", dir, dead);
  if ((rc = mg_lineage_log_txn(l, !rdonly, &txn))) goto fail_env;
  unsigned fl = rdonly ? 0 : MDB_CREATE;
  if ((rc = mdb_dbi_open(txn, "entries", fl, &l->entries)) ||
      (rc = mdb_dbi_open(txn, "nodes", fl, &l->nodes)) ||
      (rc = mdb_dbi_open(txn, "checkpoints", fl, &l->checkpoints)) ||
      (rc = mdb_dbi_open(txn, "meta", fl, &l->meta)))
    goto fail_txn;
  if ((rc = check_layout(l, txn, rdonly))) goto fail_txn;
  if ((rc = mdb_txn_commit(txn))) goto fail_env;
  return 0;
fail_txn:
  mdb_txn_abort(txn);
fail_env:
  mdb_env_close(l->env);
  l->env = NULL;
  return rc;
}

int mg_lineage_log_open(const char *dir, size_t map_size_mb, bool rdonly,
                        struct mg_lineage_log **out) {
  struct stat st;
  int rc = 0;
  if (!dir || !out) return MG_ERR_INVALID;
  if (stat(dir, &st) != 0) return -errno;
  if (!S_ISDIR(st.st_mode)) return -ENOTDIR;
  pthread_mutex_lock(&reg_mu);
  for (struct mg_lineage_log *l = reg_head; l; l = l->next) {
    if (l->dev == st.st_dev && l->ino == st.st_ino && l->pid == getpid()) {
      if (l->rdonly && !rdonly) {
        rc = -EBUSY;
        goto unlock;
      }
      l->refs++;
      *out = l;
      goto unlock;
    }
  }
  struct mg_lineage_log *l = calloc(1, sizeof *l);
  if (!l) {
    rc = -ENOMEM;
    goto unlock;
  }
  int mrc = open_env(dir, map_size_mb, rdonly, l);
  if (mrc) {
    free(l);
    /* A read-only open of a directory never written: no such databases yet. */
    rc = mrc == MDB_NOTFOUND ? MG_ERR_NOTFOUND : mrc == MG_LINEAGE_E_LAYOUT ? mrc : mrc > 0 && mrc < 200 ? -mrc : mg_lineage_log_err(mrc);
    goto unlock;
  }
  l->rdonly = rdonly;
  l->refs = 1;
  l->dev = st.st_dev;
  l->ino = st.st_ino;
  l->pid = getpid();
  l->next = reg_head;
  reg_head = l;
  *out = l;
unlock:
  pthread_mutex_unlock(&reg_mu);
  return rc;
}

void mg_lineage_log_close(struct mg_lineage_log *log) {
  if (!log) return;
  pthread_mutex_lock(&reg_mu);
  if (--log->refs > 0) {
    pthread_mutex_unlock(&reg_mu);
    return;
  }
  for (struct mg_lineage_log **p = &reg_head; *p; p = &(*p)->next)
    if (*p == log) {
      *p = log->next;
      break;
    }
  pthread_mutex_unlock(&reg_mu);
  mdb_env_close(log->env);
  free(log);
}

/* ---- preallocation ------------------------------------------------------------- */

/* Zeroes written once, then overwritten by commits: on ext4 (and most file systems) an
 * fdatasync of a file whose size and block map did not change is a data write plus a
 * device flush, while one that grew the file also commits the journal — which waits for
 * every other process's ordered data on that file system. Only bytes at or beyond the
 * file's current end are written, and only between write transactions (the caller is the
 * one writer), so no page LMDB uses or may read is ever touched. */
int mg_lineage_log_prealloc(struct mg_lineage_log *log, uint64_t ahead, uint64_t *file_end) {
  static const char zeros[65536];
  MDB_envinfo info;
  MDB_stat ms;
  struct stat st;
  int fd;
  if (mdb_env_get_fd(log->env, &fd) || mdb_env_info(log->env, &info) ||
      mdb_env_stat(log->env, &ms))
    return MG_LINEAGE_E_STORE;
  if (fstat(fd, &st) != 0) return -errno;
  uint64_t used = ((uint64_t)info.me_last_pgno + 1) * ms.ms_psize;
  uint64_t target = used + ahead, end = (uint64_t)st.st_size;
  if (target > info.me_mapsize) target = info.me_mapsize;
  target &= ~(uint64_t)(sizeof zeros - 1);
  while (end < target) {
    size_t n = sizeof zeros - (size_t)(end % sizeof zeros);
    ssize_t w = pwrite(fd, zeros, n, (off_t)end);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) break; /* a full disk: LMDB's own write will report it */
    end += (uint64_t)w;
  }
  *file_end = end;
  return 0;
}

/* Bytes between the last page LMDB uses and the end of the data file. */
uint64_t mg_lineage_log_slack(struct mg_lineage_log *log, uint64_t file_end) {
  MDB_envinfo info;
  MDB_stat ms;
  if (mdb_env_info(log->env, &info) || mdb_env_stat(log->env, &ms)) return 0;
  uint64_t used = ((uint64_t)info.me_last_pgno + 1) * ms.ms_psize;
  return file_end > used ? file_end - used : 0;
}

/* ---- nodes ---------------------------------------------------------------------- */

/* (level, index) -> (last leaf, level); false when the subtree would end past 2^64 - 1. */
static bool node_key(unsigned level, uint64_t index, uint8_t k[9]) {
  if (level > 63 || index > (UINT64_MAX >> level) - 1) return false;
  mg_be64(((index + 1) << level) - 1, k);
  k[8] = (uint8_t)level;
  return true;
}

int mg_lineage_log_get_node(void *ctx, unsigned level, uint64_t index, uint8_t out[MG_HASH_LEN]) {
  struct mg_lineage_nodes_ctx *c = ctx;
  uint8_t k[9];
  if (!node_key(level, index, k)) return MG_LINEAGE_E_RANGE;
  MDB_val key = {9, k}, val;
  int rc = mdb_get(c->txn, c->log->nodes, &key, &val);
  if (rc) return rc == MDB_NOTFOUND ? MG_LINEAGE_E_RANGE : mg_lineage_log_err(rc);
  if (val.mv_size != MG_HASH_LEN) return MG_LINEAGE_E_STORE;
  memcpy(out, val.mv_data, MG_HASH_LEN);
  return 0;
}

int mg_lineage_log_put_node(void *ctx, unsigned level, uint64_t index,
                            const uint8_t hash[MG_HASH_LEN]) {
  struct mg_lineage_nodes_ctx *c = ctx;
  uint8_t k[9];
  if (!node_key(level, index, k)) return MG_LINEAGE_E_RANGE;
  MDB_val key = {9, k}, val = {MG_HASH_LEN, (void *)hash};
  int rc = mdb_put(c->txn, c->log->nodes, &key, &val, MDB_APPEND);
  return rc ? mg_lineage_log_err(rc) : 0;
}

/* ---- entries ------------------------------------------------------------------ */

int mg_lineage_log_size_txn(struct mg_lineage_log *log, MDB_txn *txn, uint64_t *size) {
  MDB_cursor *c;
  MDB_val k, v;
  int rc = mdb_cursor_open(txn, log->entries, &c);
  if (rc) return mg_lineage_log_err(rc);
  rc = mdb_cursor_get(c, &k, &v, MDB_LAST);
  mdb_cursor_close(c);
  if (rc == MDB_NOTFOUND) {
    *size = 0;
    return 0;
  }
  if (rc) return mg_lineage_log_err(rc);
  if (k.mv_size != 8) return MG_LINEAGE_E_STORE;
  *size = mg_get_be64(k.mv_data) + 1;
  return 0;
}

int mg_lineage_log_entry_txn(struct mg_lineage_log *log, MDB_txn *txn, uint64_t index,
                             const char **line, size_t *len) {
  uint8_t kb[8];
  mg_be64(index, kb);
  MDB_val k = {8, kb}, v;
  int rc = mdb_get(txn, log->entries, &k, &v);
  if (rc) return mg_lineage_log_err(rc);
  *line = v.mv_data;
  *len = v.mv_size;
  return 0;
}

uint64_t mg_lineage_log_pruned_txn(struct mg_lineage_log *log, MDB_txn *txn) {
  uint64_t v = 0;
  return mg_lineage_log_meta_get_u64(log, txn, "pruned", &v) == 0 ? v : 0;
}

uint64_t mg_lineage_log_pruned(struct mg_lineage_log *log) {
  MDB_txn *txn;
  if (mg_lineage_log_txn(log, false, &txn)) return 0;
  uint64_t v = mg_lineage_log_pruned_txn(log, txn);
  mdb_txn_abort(txn);
  return v;
}

int mg_lineage_entry_time(const char *line, size_t len, int64_t *t) {
  static const char k[] = "\"time\":\"";
  const char *p = memmem(line, len, k, sizeof k - 1);
  if (!p) return MG_LINEAGE_E_FORMAT;
  p += sizeof k - 1;
  const char *e = memchr(p, '"', len - (size_t)(p - line));
  if (!e) return MG_LINEAGE_E_FORMAT;
  return mg_time_parse_rfc3339(p, (size_t)(e - p), t);
}

uint64_t mg_lineage_log_size(struct mg_lineage_log *log) {
  MDB_txn *txn;
  uint64_t size = 0;
  if (mg_lineage_log_txn(log, false, &txn)) return 0;
  mg_lineage_log_size_txn(log, txn, &size);
  mdb_txn_abort(txn);
  return size;
}

int mg_lineage_log_read(struct mg_lineage_log *log, uint64_t from, uint64_t max,
                        mg_lineage_entry_cb cb, void *arg) {
  MDB_txn *txn;
  MDB_cursor *c;
  uint8_t kb[8];
  int rc = mg_lineage_log_txn(log, false, &txn);
  if (rc) return mg_lineage_log_err(rc);
  if ((rc = mdb_cursor_open(txn, log->entries, &c))) {
    rc = mg_lineage_log_err(rc);
    goto out_txn;
  }
  mg_be64(from, kb);
  MDB_val k = {8, kb}, v;
  int mrc = mdb_cursor_get(c, &k, &v, MDB_SET_KEY);
  for (uint64_t i = 0; i < max && mrc == 0; i++) {
    if (k.mv_size != 8 || mg_get_be64(k.mv_data) != from + i) {
      rc = MG_LINEAGE_E_STORE; /* a gap: never written by the writer */
      break;
    }
    if ((rc = cb(arg, from + i, v.mv_data, v.mv_size))) break;
    mrc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
  }
  if (!rc && mrc && mrc != MDB_NOTFOUND) rc = mg_lineage_log_err(mrc);
  mdb_cursor_close(c);
out_txn:
  mdb_txn_abort(txn);
  return rc;
}

/* ---- meta --------------------------------------------------------------------- */

int mg_lineage_log_meta_get_u64(struct mg_lineage_log *log, MDB_txn *txn, const char *key,
                                uint64_t *v) {
  MDB_val k = {strlen(key), (void *)key}, d;
  int rc = mdb_get(txn, log->meta, &k, &d);
  if (rc) return mg_lineage_log_err(rc);
  if (d.mv_size != 8) return MG_LINEAGE_E_STORE;
  *v = mg_get_be64(d.mv_data);
  return 0;
}

int mg_lineage_log_meta_put_u64(struct mg_lineage_log *log, MDB_txn *txn, const char *key,
                                uint64_t v) {
  uint8_t b[8];
  mg_be64(v, b);
  MDB_val k = {strlen(key), (void *)key}, d = {8, b};
  int rc = mdb_put(txn, log->meta, &k, &d, 0);
  return rc ? mg_lineage_log_err(rc) : 0;
}

int mg_lineage_log_meta_get_str(struct mg_lineage_log *log, MDB_txn *txn, const char *key,
                                char **v) {
  MDB_val k = {strlen(key), (void *)key}, d;
  int rc = mdb_get(txn, log->meta, &k, &d);
  if (rc) return mg_lineage_log_err(rc);
  char *s = malloc(d.mv_size + 1);
  if (!s) return -ENOMEM;
  memcpy(s, d.mv_data, d.mv_size);
  s[d.mv_size] = 0;
  *v = s;
  return 0;
}

int mg_lineage_log_meta_put_str(struct mg_lineage_log *log, MDB_txn *txn, const char *key,
                                const char *v) {
  MDB_val k = {strlen(key), (void *)key}, d = {strlen(v), (void *)v};
  int rc = mdb_put(txn, log->meta, &k, &d, 0);
  return rc ? mg_lineage_log_err(rc) : 0;
}

int mg_lineage_log_append_txn(struct mg_lineage_log *log, MDB_txn *txn,
                              struct mg_merkle_frontier *fr, uint64_t index, const char *line,
                              size_t len) {
  uint8_t leaf[MG_HASH_LEN], kb[8];
  struct mg_lineage_nodes_ctx nc = {log, txn};
  mg_merkle_leaf_hash(line, len, leaf);
  mg_be64(index, kb);
  MDB_val k = {8, kb}, v = {len, (void *)line};
  int rc = mdb_put(txn, log->entries, &k, &v, MDB_APPEND);
  if (rc) return mg_lineage_log_err(rc);
  return mg_merkle_frontier_append(fr, leaf, mg_lineage_log_put_node, &nc);
}

/* ---- checkpoints -------------------------------------------------------------- */

int mg_lineage_log_put_checkpoint_txn(struct mg_lineage_log *log, MDB_txn *txn, uint64_t size,
                                      const char *note) {
  uint8_t kb[8];
  mg_be64(size, kb);
  MDB_val k = {8, kb}, v = {strlen(note), (void *)note};
  int rc = mdb_put(txn, log->checkpoints, &k, &v, 0);
  return rc ? mg_lineage_log_err(rc) : 0;
}

int mg_lineage_log_checkpoint_txn(struct mg_lineage_log *log, MDB_txn *txn, uint64_t max_size,
                                  char **note, uint64_t *size) {
  MDB_cursor *c;
  uint8_t kb[8];
  int rc = mdb_cursor_open(txn, log->checkpoints, &c);
  if (rc) return mg_lineage_log_err(rc);
  MDB_val k = {8, kb}, v;
  if (max_size == UINT64_MAX) {
    rc = mdb_cursor_get(c, &k, &v, MDB_LAST);
  } else {
    mg_be64(max_size, kb);
    rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    if (rc == MDB_NOTFOUND) rc = mdb_cursor_get(c, &k, &v, MDB_LAST);
    else if (!rc && mg_get_be64(k.mv_data) > max_size) rc = mdb_cursor_get(c, &k, &v, MDB_PREV);
  }
  if (rc) {
    rc = mg_lineage_log_err(rc);
    goto out;
  }
  char *s = malloc(v.mv_size + 1);
  if (!s) {
    rc = -ENOMEM;
    goto out;
  }
  memcpy(s, v.mv_data, v.mv_size);
  s[v.mv_size] = 0;
  *note = s;
  if (size) *size = mg_get_be64(k.mv_data);
out:
  mdb_cursor_close(c);
  return rc;
}

int mg_lineage_log_checkpoint(struct mg_lineage_log *log, uint64_t max_size, char **note,
                              uint64_t *size) {
  MDB_txn *txn;
  int rc = mg_lineage_log_txn(log, false, &txn);
  if (rc) return mg_lineage_log_err(rc);
  rc = mg_lineage_log_checkpoint_txn(log, txn, max_size, note, size);
  mdb_txn_abort(txn);
  return rc;
}
