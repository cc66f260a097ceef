/*
 * writer.c — the group-commit writer thread.
 *
 * Design: submitters (worker threads, admin) encode their entry into a template on their
 * own thread (entry.c) and append it to one mutex-protected FIFO. The writer thread takes
 * everything queued (up to max_group) and writes it in ONE LMDB write transaction: it
 * assigns indexes (no gaps) and one time per group (never below the previous group's),
 * splices them in, puts each line, appends its leaf to a copy of the Merkle frontier
 * (persisting every completed subtree), updates meta, and commits — LMDB fsyncs at
 * commit. Only then do the done callbacks run. A failed commit aborts: the frontier copy
 * is dropped, so the in-memory tree never moves past what is on disk (no gap, no repeat);
 * callbacks get the error and the writer is marked unhealthy until a commit succeeds.
 *
 * write-ahead: the writer commits as soon as an entry with a waiter (an access entry about
 * to be forwarded, a policy edit) is queued; while one flush runs the next group forms by
 * itself. Entries nobody waits for (outcomes, refused requests) join the next such group,
 * or are committed WA_LAG_US after they were queued: a lone outcome never costs a commit
 * (two flushes) that the next forwarded request would queue behind. async: it commits when a group is full, when an entry has a
 * waiter (policy edits), or checkpoint_every_ms after the first queued entry.
 *
 * One flush per commit, not two. A plain LMDB commit flushes twice: the data pages
 * (fdatasync), then the meta page (an O_DSYNC write). The writer runs the environment with
 * MDB_NOMETASYNC and instead makes a commit durable by the NEXT flush of the file: when
 * more entries are already queued (write-ahead under load), the group's callbacks, shipper
 * notice and stats wait in `pend` until the next group's commit has run its data fdatasync
 * (which writes the earlier meta page too: same file); otherwise, right after the commit,
 * mdb_env_sync(force) flushes it. Either way nothing is acknowledged (no request forwarded,
 * nothing shipped, no checkpoint published) before a flush that covers its meta page has
 * returned, so the write-ahead guarantee is unchanged, and a busy writer spends one device
 * flush per group instead of two. Integrity with one unflushed meta page is LMDB's own
 * (NOMETASYNC "maintains database integrity": pages freed by the last commit are not reused
 * by the next). A group with a checkpoint is never deferred. kill -9 loses nothing committed
 * (the page cache survives), power loss at most groups never acknowledged.
 *
 * The data file is kept zero-filled a few MB past the last page in use (log.c,
 * mg_lineage_log_prealloc), between groups and never while one waits for its flush: an
 * append-only log otherwise grows the file at every commit, and an fdatasync that grew the
 * file commits the file-system journal, i.e. also waits for other processes' writes.
 *
 * Outcomes name their access entry through a refcounted rec whose index the writer fills
 * when it assigns it; FIFO order means an outcome is always processed after its access
 * entry. Denied requests pass a per-address token bucket here (no locks on the workers'
 * path); over the budget they are counted per (address, reason, decision) and written as
 * one summary entry per second per key — counts that fail to commit are put back, so
 * entries + summary counts always equal denies once committed.
 *
 * Checkpoints are signed in the group transaction whose entries they cover (so a stored
 * checkpoint never covers unsynced entries), or in a transaction of their own on the
 * timer, on demand, at open and at close.
 */
#include "lineage/lineage_store.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>


#define DEFAULT_GROUP 1024
#define DEFAULT_GROUP_ASYNC 8192
#define DEFAULT_EVERY_MS 1000
/* write-ahead: how long an entry nobody waits for (outcome, refused request) may wait for
 * an access entry to ride along with before it is committed on its own */
#define WA_LAG_US 20000
/* zero-filled room kept past the log's last page (refilled when half is used) */
#define PREALLOC_BYTES (4u << 20)
#define BUCKETS 1024
#define MAX_PEERS 65536
#define SHIPPER_STOP_MS 5000

struct mg_lineage_rec {
  atomic_int refs;
  _Atomic uint64_t index;
  atomic_int state; /* 0 queued, 2 in the group being written, 1 written, -1 not */
};

enum kind { K_ACCESS, K_OUTCOME, K_POLICY, K_SUMMARY };

struct item_pool;

struct item {
  struct item *next;
  struct item_pool *pool; /* the submitting thread's pool it returns to, or NULL */
  uint8_t kind;
  bool deny, urgent, skip;
  struct mg_lineage_tmpl t;
  mg_lineage_done_cb cb;
  void *arg;
  struct mg_lineage_rec *rec;
  char *peer, *reason, *decision; /* denies and summaries; one allocation at peer */
  uint64_t count;                 /* summaries */
  uint64_t index;
};

struct bucket {
  struct bucket *next;
  double tokens;
  int64_t last_us;
  char peer[];
};

struct sum {
  struct sum *next;
  uint64_t count;
  int64_t start_us;
  char *peer, *reason, *decision; /* one allocation at peer */
};

/* Items (and their template buffers) are allocated on the submitting thread and freed on
 * the writer thread; glibc returns a chunk to the arena it came from under that arena's
 * lock, so every request cost the worker's arena four contended cross-thread frees. Each
 * submitting thread instead keeps a pool: the writer pushes used items back onto its
 * lock-free `ret` stack, the owner takes the whole stack when its own list is empty
 * (no ABA: only the owner pops, and it takes everything) and frees above POOL_MAX. */
#define POOL_MAX 2048
#define POOL_KEEP_BUF 2048 /* template buffers above this are not kept */

struct item_pool {
  struct item_pool *next;         /* the writer's registry (under mu), freed at close */
  _Atomic(struct item *) ret;     /* pushed by the writer thread */
  struct item *free;              /* owner thread only */
  size_t nfree;
};

static _Atomic uint64_t writer_serial;
static __thread struct item_pool *tls_pool;
static __thread uint64_t tls_pool_serial;

struct mg_lineage_writer {
  struct mg_lineage_log *log;
  int io_broken;                  /* a flush failed: nothing is acknowledged until restart */
  uint64_t serial;                /* tells a thread's pool of this writer from a closed one's */
  struct item_pool *pools;        /* under mu */
  int64_t last_release_us; /* release_mapped() */
  size_t released_len;      /* the log's used size at the last release */
  int warned_pct;           /* check_usage(): the highest fill level already logged */
  int64_t retention_us;     /* prune(): 0 = never */
  uint64_t pruned;          /* entries below this index are gone (meta "pruned") */
  void *map_base;           /* the LMDB map, found once */
  size_t map_len;
  struct mg_lineage_reader reader;
  char *origin, *origin_json;
  enum mg_lineage_durability durability;
  int64_t every_us;
  int64_t lag_us; /* the longest an entry nobody waits for stays queued */
  int deny_per_s;
  size_t max_group, queue_cap;
  struct mg_note_signer *signers[1 + 16];
  size_t nold;
  char *vkey;
  bool rotate;

  pthread_t thr;
  bool started;
  pthread_mutex_t mu;
  pthread_cond_t cv, done_cv;
  /* under mu */
  struct item *qhead, **qtail;
  size_t qlen, qurgent;
  int64_t q_first_us;
  bool stop;
  uint64_t cp_req, cp_done;
  int cp_err;
  char *cp_note;
  uint64_t cp_size_pub;
  struct mg_lineage_stats st;
  struct mg_shipper *shipper;

  /* writer thread only */
  struct mg_merkle_frontier fr;
  int64_t last_time_us;
  uint64_t cp_size;
  int64_t last_cp_us;
  uint64_t shipped_stored;
  _Atomic uint64_t ship_ack; /* read back from JetStream (mg_lineage_writer_ack) */
  uint64_t ship_seq;         /* its stream sequence; under mu, with ship_ack */
  struct mg_buf line;
  struct bucket *buckets[BUCKETS];
  size_t npeers;
  int64_t last_sweep_us;
  struct sum *sums;
  /* committed, meta page not yet flushed: acknowledged after the next flush */
  struct item *pend;
  uint64_t pend_first, pend_last; /* entries to announce to the shipper (last < first: none) */
  uint64_t file_end;              /* data file size after the last preallocation */
};

static void prealloc(struct mg_lineage_writer *w) {
  if (mg_lineage_log_slack(w->log, w->file_end) >= PREALLOC_BYTES / 2) return;
  int rc = mg_lineage_log_prealloc(w->log, PREALLOC_BYTES, &w->file_end);
  if (rc) mg_debug("lineage: preallocation: %s", mg_strerror(rc));
}

/* ---- recs ---------------------------------------------------------------------- */

void mg_lineage_rec_unref(struct mg_lineage_rec *rec) {
  if (rec && atomic_fetch_sub(&rec->refs, 1) == 1) free(rec);
}

/* ---- queue --------------------------------------------------------------------- */

static void item_free(struct item *it) {
  free(it->peer);
  mg_lineage_rec_unref(it->rec);
  struct item_pool *p = it->pool;
  if (!p) {
    mg_lineage_tmpl_clear(&it->t);
    free(it);
    return;
  }
  if (it->t.cap > POOL_KEEP_BUF) mg_lineage_tmpl_clear(&it->t);
  struct item *head = atomic_load_explicit(&p->ret, memory_order_relaxed);
  do {
    it->next = head;
  } while (!atomic_compare_exchange_weak_explicit(&p->ret, &head, it, memory_order_release,
                                                  memory_order_relaxed));
}

static void pool_drop(struct item *list) {
  while (list) {
    struct item *next = list->next;
    mg_lineage_tmpl_clear(&list->t);
    free(list);
    list = next;
  }
}

/* The calling thread's pool for w, made on its first submission. */
static struct item_pool *pool_get(struct mg_lineage_writer *w) {
  if (tls_pool && tls_pool_serial == w->serial) return tls_pool;
  struct item_pool *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  pthread_mutex_lock(&w->mu);
  p->next = w->pools;
  w->pools = p;
  pthread_mutex_unlock(&w->mu);
  tls_pool = p;
  tls_pool_serial = w->serial;
  return p;
}

/* A zeroed item (keeping a recycled template buffer), from the pool when it has one. */
static struct item *item_new(struct mg_lineage_writer *w) {
  struct item_pool *p = pool_get(w);
  if (!p) return calloc(1, sizeof(struct item));
  if (!p->free) {
    struct item *list = atomic_exchange_explicit(&p->ret, NULL, memory_order_acquire);
    size_t n = 0;
    for (struct item **q = &list; *q; q = &(*q)->next)
      if (++n == POOL_MAX) {
        pool_drop((*q)->next);
        (*q)->next = NULL;
        break;
      }
    p->free = list;
    p->nfree = n;
  }
  struct item *it = p->free;
  if (!it) {
    it = calloc(1, sizeof *it);
    if (it) it->pool = p;
    return it;
  }
  p->free = it->next;
  p->nfree--;
  struct mg_lineage_tmpl keep = {.data = it->t.data, .cap = it->t.cap};
  memset(it, 0, sizeof *it);
  it->t = keep;
  it->pool = p;
  return it;
}

/* An item that was never queued, on its submitting thread. */
static void item_discard(struct item *it) {
  struct item_pool *p = it->pool;
  if (p && p->nfree < POOL_MAX) {
    it->next = p->free;
    p->free = it;
    p->nfree++;
    return;
  }
  mg_lineage_tmpl_clear(&it->t);
  free(it);
}

static int enqueue(struct mg_lineage_writer *w, struct item *it) {
  pthread_mutex_lock(&w->mu);
  if (w->stop) {
    pthread_mutex_unlock(&w->mu);
    return MG_LINEAGE_E_CLOSED;
  }
  if (w->qlen >= w->queue_cap) {
    pthread_mutex_unlock(&w->mu);
    return MG_LINEAGE_E_FULL;
  }
  it->next = NULL;
  *w->qtail = it;
  w->qtail = &it->next;
  w->qlen++;
  if (it->urgent) w->qurgent++;
  bool wake;
  if (w->qlen == 1) {
    w->q_first_us = mg_mono_now_us();
    wake = true; /* an urgent entry: commit now; else the writer arms its deadline */
  } else {
    wake = (it->urgent && w->qurgent == 1) || w->qlen == w->max_group;
  }
  if (wake) pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
  return 0;
}

/* "ip:port" -> "ip", "[v6]:port" -> "[v6]"; the budget is per client address. */
static size_t addr_len(const char *peer) {
  if (peer[0] == '[') {
    const char *e = strchr(peer, ']');
    return e ? (size_t)(e - peer) + 1 : strlen(peer);
  }
  const char *c = strchr(peer, ':');
  if (c && !strchr(c + 1, ':')) return (size_t)(c - peer);
  return strlen(peer);
}

/* One allocation holding three NUL-terminated strings. */
static char *strs3(const char *a, size_t an, const char *b, const char *c, char **pb, char **pc) {
  size_t bn = strlen(b), cn = strlen(c);
  char *p = malloc(an + bn + cn + 3);
  if (!p) return NULL;
  memcpy(p, a, an);
  p[an] = 0;
  *pb = p + an + 1;
  memcpy(*pb, b, bn + 1);
  *pc = *pb + bn + 1;
  memcpy(*pc, c, cn + 1);
  return p;
}

int mg_lineage_submit_access(struct mg_lineage_writer *w, const struct mg_lineage_access *a,
                             mg_lineage_done_cb cb, void *arg, struct mg_lineage_rec **out_rec) {
  struct item *it;
  struct mg_lineage_rec *rec = NULL;
  int rc;
  if (out_rec) *out_rec = NULL;
  if (!w || !a) return MG_ERR_INVALID;
  if (!(it = item_new(w))) return -ENOMEM;
  it->kind = K_ACCESS;
  it->cb = cb;
  it->arg = arg;
  it->urgent = cb != NULL;
  if ((rc = mg_lineage_tmpl_access(a, w->origin_json, &it->t))) goto fail_item;
  it->deny = !a->decision || strcmp(a->decision, "allow") != 0;
  if (it->deny) {
    const char *peer = a->peer ? a->peer : "unknown";
    it->peer = strs3(peer, addr_len(peer), a->reason ? a->reason : "",
                     a->decision ? a->decision : "", &it->reason, &it->decision);
    if (!it->peer) {
      rc = -ENOMEM;
      goto fail_tmpl;
    }
  }
  if (out_rec) {
    if (!(rec = calloc(1, sizeof *rec))) {
      rc = -ENOMEM;
      goto fail_tmpl;
    }
    atomic_init(&rec->refs, 2);
    atomic_init(&rec->index, UINT64_MAX);
    atomic_init(&rec->state, 0);
    it->rec = rec;
  }
  if ((rc = enqueue(w, it))) goto fail_rec;
  if (out_rec) *out_rec = rec;
  return 0;
fail_rec:
  free(rec);
  it->rec = NULL;
fail_tmpl:
  free(it->peer);
  it->peer = NULL;
fail_item:
  item_discard(it);
  return rc;
}

int mg_lineage_submit_outcome(struct mg_lineage_writer *w, struct mg_lineage_rec *take_rec,
                              const struct mg_lineage_outcome *o) {
  struct item *it;
  int rc;
  if (!w || !take_rec || !o) {
    mg_lineage_rec_unref(take_rec);
    return MG_ERR_INVALID;
  }
  if (!(it = item_new(w))) {
    rc = -ENOMEM;
    goto fail;
  }
  it->kind = K_OUTCOME;
  if ((rc = mg_lineage_tmpl_outcome(o, w->origin_json, &it->t))) goto fail_item;
  it->rec = take_rec;
  if ((rc = enqueue(w, it))) {
    it->rec = NULL;
    goto fail_item;
  }
  return 0;
fail_item:
  item_discard(it);
fail:
  mg_lineage_rec_unref(take_rec);
  return rc;
}

int mg_lineage_submit_policy(struct mg_lineage_writer *w, const struct mg_lineage_policy_write *p,
                             mg_lineage_done_cb cb, void *arg) {
  struct item *it;
  int rc;
  if (!w || !p) return MG_ERR_INVALID;
  if (!(it = calloc(1, sizeof *it))) return -ENOMEM;
  it->kind = K_POLICY;
  it->cb = cb;
  it->arg = arg;
  it->urgent = cb != NULL;
  if ((rc = mg_lineage_tmpl_policy(p, w->origin_json, &it->t))) goto fail_item;
  if ((rc = enqueue(w, it))) goto fail_tmpl;
  return 0;
fail_tmpl:
  mg_lineage_tmpl_clear(&it->t);
fail_item:
  free(it);
  return rc;
}

/* ---- deny budget and summaries (writer thread) ----------------------------------- */

static struct bucket **bucket_find(struct mg_lineage_writer *w, const char *peer) {
  struct bucket **p = &w->buckets[mg_hash64(peer, strlen(peer)) % BUCKETS];
  for (; *p; p = &(*p)->next)
    if (strcmp((*p)->peer, peer) == 0) break;
  return p;
}

/* True when the deny may be written as its own entry. */
static bool deny_budget(struct mg_lineage_writer *w, const char *peer, int64_t now) {
  if (w->deny_per_s <= 0) return false;
  struct bucket **p = bucket_find(w, peer);
  if (!*p && w->npeers >= MAX_PEERS) p = bucket_find(w, "other");
  if (!*p) {
    const char *name = w->npeers >= MAX_PEERS ? "other" : peer;
    struct bucket *b = malloc(sizeof *b + strlen(name) + 1);
    if (!b) return false; /* counted into a summary instead: still accounted */
    strcpy(b->peer, name);
    b->tokens = w->deny_per_s;
    b->last_us = now;
    b->next = NULL;
    *p = b;
    w->npeers++;
  }
  struct bucket *b = *p;
  double rate = w->deny_per_s;
  b->tokens += (double)(now - b->last_us) * rate / 1e6;
  if (b->tokens > rate) b->tokens = rate;
  b->last_us = now;
  if (b->tokens >= 1.0) {
    b->tokens -= 1.0;
    return true;
  }
  return false;
}

/* An idle bucket is full again after one second: forgetting it changes nothing. */
static void sweep(struct mg_lineage_writer *w, int64_t now) {
  if (now - w->last_sweep_us < 1000000) return;
  w->last_sweep_us = now;
  for (size_t i = 0; i < BUCKETS; i++)
    for (struct bucket **p = &w->buckets[i]; *p;) {
      if (now - (*p)->last_us >= 1000000) {
        struct bucket *d = *p;
        *p = d->next;
        free(d);
        w->npeers--;
      } else {
        p = &(*p)->next;
      }
    }
}

static int sum_add(struct mg_lineage_writer *w, const char *peer, const char *reason,
                   const char *decision, uint64_t count, int64_t now) {
  for (struct sum *s = w->sums; s; s = s->next)
    if (!strcmp(s->peer, peer) && !strcmp(s->reason, reason) && !strcmp(s->decision, decision)) {
      s->count += count;
      return 0;
    }
  struct sum *s = calloc(1, sizeof *s);
  if (!s || !(s->peer = strs3(peer, strlen(peer), reason, decision, &s->reason, &s->decision))) {
    free(s);
    mg_error("lineage: out of memory: %" PRIu64 " denies of %s not recorded", count, peer);
    return -ENOMEM;
  }
  s->count = count;
  s->start_us = now;
  s->next = w->sums;
  w->sums = s;
  return 0;
}

/* Moves due summaries (all of them when `all`) into items appended at *tail. */
static struct item **take_sums(struct mg_lineage_writer *w, int64_t now, bool all,
                               struct item **tail, size_t *n) {
  for (struct sum **p = &w->sums; *p;) {
    struct sum *s = *p;
    if (!all && now - s->start_us < 1000000) {
      p = &s->next;
      continue;
    }
    struct item *it = calloc(1, sizeof *it);
    if (!it || mg_lineage_tmpl_summary(s->peer, s->decision, s->reason, s->count,
                                       w->origin_json, &it->t)) {
      free(it);
      break; /* stays queued in the map */
    }
    it->kind = K_SUMMARY;
    it->count = s->count;
    it->peer = s->peer;
    it->reason = s->reason;
    it->decision = s->decision;
    *p = s->next;
    free(s);
    *tail = it;
    tail = &it->next;
    (*n)++;
  }
  return tail;
}

static int64_t sums_next_due(struct mg_lineage_writer *w) {
  int64_t d = INT64_MAX;
  for (struct sum *s = w->sums; s; s = s->next)
    if (s->start_us + 1000000 < d) d = s->start_us + 1000000;
  return d;
}

/* ---- checkpoints ----------------------------------------------------------------- */

static int sign(struct mg_lineage_writer *w, const struct mg_merkle_frontier *fr, char **note) {
  uint8_t root[MG_HASH_LEN];
  mg_merkle_frontier_root(fr, root);
  char *body = mg_checkpoint_format(w->origin, fr->size, root);
  if (!body) return -ENOMEM;
  int rc = mg_note_sign(body, strlen(body), w->signers, 1 + (w->rotate ? w->nold : 0), note);
  free(body);
  return rc;
}

static int put_checkpoint(struct mg_lineage_writer *w, MDB_txn *txn, uint64_t size,
                          const char *note) {
  int rc = mg_lineage_log_put_checkpoint_txn(w->log, txn, size, note);
  if (!rc && w->rotate) rc = mg_lineage_log_meta_put_str(w->log, txn, "key", w->vkey);
  return rc;
}

/* ---- acknowledgement after the flush -------------------------------------------------- */

static void callbacks_run(struct item *list, int rc) {
  while (list) {
    struct item *it = list;
    list = it->next;
    if (it->cb) it->cb(it->arg, it->skip ? 0 : rc, rc ? UINT64_MAX : it->index);
    item_free(it);
  }
}

/* The pending groups' meta page is on disk (flushed == 0) or its flush failed: announce
 * and acknowledge them. */
static void pend_release(struct mg_lineage_writer *w, int flushed) {
  struct item *list = w->pend;
  uint64_t first = w->pend_first, last = w->pend_last;
  w->pend = NULL;
  w->pend_first = 1;
  w->pend_last = 0;
  if (flushed) {
    pthread_mutex_lock(&w->mu);
    w->st.healthy = false;
    w->st.last_error = flushed;
    pthread_mutex_unlock(&w->mu);
    mg_error("lineage: flush failed: %s", mg_strerror(flushed));
  } else if (last >= first) {
    pthread_mutex_lock(&w->mu);
    struct mg_shipper *sh = w->shipper;
    pthread_mutex_unlock(&w->mu);
    if (sh) mg_shipper_notify_group(sh, first, last);
  }
  callbacks_run(list, flushed);
}

/* A failed fdatasync may have dropped dirty pages, and the next one can succeed without
 * writing them (Linux reports a writeback error once): after one, no later flush proves
 * anything. Every commit fails from then on, /readyz says why, and a restart (which
 * re-reads the log as it is on disk) is the way back. Writer thread. */
static void io_broken(struct mg_lineage_writer *w, int rc) {
  if (w->io_broken) return;
  w->io_broken = rc ? rc : MG_LINEAGE_E_STORE;
  mg_error("lineage: flushing the log failed (%s): no entry is acknowledged any more; "
           "restart meshgate once the disk is sound", mg_strerror(w->io_broken));
  pthread_mutex_lock(&w->mu);
  w->st.healthy = false;
  w->st.last_error = w->io_broken;
  pthread_mutex_unlock(&w->mu);
}

/* Flushes the file (the last commit's meta page) and acknowledges what waited for it. */
static int flush_now(struct mg_lineage_writer *w) {
  int rc = w->io_broken;
  if (!rc) {
    int mrc = mdb_env_sync(w->log->env, 1);
    rc = mrc ? mg_lineage_log_err(mrc) : 0;
    if (rc) io_broken(w, rc);
  }
  pend_release(w, rc);
  return rc;
}

/* ---- one group -------------------------------------------------------------------- */

/* ---- pruning (lineage.nats.retention_s) ------------------------------------------- */

/* Is the subtree of `level` ending at leaf `last` one of the perfect subtrees that make up
 * the first p leaves (p's frontier)? Those are the only hashes below p that any later
 * frontier or proof needs: a proof for a leaf i >= p uses, left of p, exactly the siblings
 * on i's path that lie wholly before p, and each of them is such a subtree. */
static bool in_frontier(uint64_t p, uint64_t last, unsigned level) {
  if (level > 63 || !((p >> level) & 1)) return false;
  uint64_t start = last + 1 - ((uint64_t)1 << level);
  uint64_t base = level >= 63 ? 0 : (p >> (level + 1)) << (level + 1);
  return start == base;
}

/* In the group's transaction: deletes entries from *pruned on while they are below limit
 * (read back from the stream by the shipper's audit, and never the newest entry) and
 * older than cutoff, at most budget of them, then every subtree hash ending before the new
 * start except its frontier, and records meta "pruned". Deletion follows a re-positioned
 * cursor (SET_RANGE) rather than relying on a cursor's position after a delete. */
static int prune(struct mg_lineage_writer *w, MDB_txn *txn, uint64_t limit, int64_t cutoff,
                 size_t budget, uint64_t *pruned) {
  uint64_t p = *pruned;
  uint8_t kb[9];
  MDB_cursor *c = NULL;
  MDB_val k, v;
  int mrc;
  if (p >= limit) return 0;
  if ((mrc = mdb_cursor_open(txn, w->log->entries, &c))) return mg_lineage_log_err(mrc);
  while (p < limit && budget-- > 0) {
    mg_be64(p, kb);
    k.mv_size = 8;
    k.mv_data = kb;
    if ((mrc = mdb_cursor_get(c, &k, &v, MDB_SET_KEY))) break;
    int64_t t;
    if (mg_lineage_entry_time(v.mv_data, v.mv_size, &t) || t >= cutoff) break;
    if ((mrc = mdb_cursor_del(c, 0))) break;
    p++;
  }
  mdb_cursor_close(c);
  if (mrc == MDB_NOTFOUND) {
    /* an entry missing below the size: not ours to fix here, and no reason to stop
     * recording; stop pruning (the next start tries again) */
    mg_error("lineage: entry %" PRIu64 " is missing from the log: pruning stopped", p);
    w->retention_us = 0;
    mrc = 0;
  }
  if (mrc) return mg_lineage_log_err(mrc);
  if (p == *pruned) return 0;
  if ((mrc = mdb_cursor_open(txn, w->log->nodes, &c))) return mg_lineage_log_err(mrc);
  memset(kb, 0, sizeof kb);
  for (;;) {
    k.mv_size = 9;
    k.mv_data = kb;
    if ((mrc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE))) break;
    if (k.mv_size != 9) {
      mrc = MDB_CORRUPTED;
      break;
    }
    uint64_t last = mg_get_be64(k.mv_data);
    unsigned level = ((const uint8_t *)k.mv_data)[8];
    if (last >= p) break;
    memcpy(kb, k.mv_data, 9);
    if (!in_frontier(p, last, level) && (mrc = mdb_cursor_del(c, 0))) break;
    /* the next key after (last, level) */
    if (++kb[8] == 0) mg_be64(last + 1, kb);
  }
  mdb_cursor_close(c);
  if (mrc && mrc != MDB_NOTFOUND) return mg_lineage_log_err(mrc);
  int rc = mg_lineage_log_meta_put_u64(w->log, txn, "pruned", p);
  if (!rc) *pruned = p;
  return rc;
}

/* Writes the items of `list` (and due summaries) in one transaction, signing a checkpoint
 * when want_cp or due. With `defer` (another group follows at once) the group is
 * acknowledged after the next commit's flush, else after its own. Takes the list. Returns
 * the commit's status (0 when nothing was to be done). */
static int run_group(struct mg_lineage_writer *w, struct item *list, bool want_cp, bool all_sums,
                     bool defer) {
  int64_t mono = mg_mono_now_us(), now = mg_time_now_us();
  struct item **tail = &list, *it;
  size_t n = 0, nwrite = 0, nsum = 0;
  MDB_txn *txn = NULL;
  char *note = NULL;
  int rc = 0, mrc;

  /* decide what is written: budget for denies, drop outcomes of unwritten entries */
  for (it = list; it; it = it->next, n++) {
    tail = &it->next;
    it->index = UINT64_MAX;
    if (it->kind == K_ACCESS && it->deny && !deny_budget(w, it->peer, mono)) {
      it->skip = true;
      sum_add(w, it->peer, it->reason, it->decision, 1, mono);
    } else if (it->kind == K_OUTCOME) {
      int st = atomic_load(&it->rec->state);
      if (st != 1 && st != 2) {
        it->skip = true;
        mg_warn("lineage: outcome dropped: its access entry was not written");
      }
    }
    /* 2: written by this group, so an outcome later in the same group may refer to it */
    if (it->kind == K_ACCESS && it->rec) atomic_store(&it->rec->state, it->skip ? -1 : 2);
    if (!it->skip) nwrite++;
  }
  size_t before = n;
  tail = take_sums(w, mono, all_sums, tail, &n);
  nsum = n - before;
  nwrite += nsum;
  sweep(w, mono);

  struct mg_merkle_frontier fr = w->fr;
  uint64_t first = fr.size;
  int64_t t = now > w->last_time_us ? now : w->last_time_us;
  pthread_mutex_lock(&w->mu);
  uint64_t ship = atomic_load(&w->ship_ack), ship_seq = w->ship_seq;
  pthread_mutex_unlock(&w->mu);
  bool cp = (fr.size + nwrite > w->cp_size || (w->rotate && fr.size + nwrite > 0)) &&
            (want_cp || mono - w->last_cp_us >= w->every_us);
  if (!nwrite && !cp && ship <= w->shipped_stored) {
    if (w->pend) flush_now(w);
    goto callbacks;
  }

  char ts[MG_RFC3339_LEN];
  size_t tl = mg_time_format_rfc3339(t, ts);
  if (w->io_broken) {
    rc = w->io_broken;
    goto failed;
  }
  if ((mrc = mg_lineage_log_txn(w->log, true, &txn))) {
    rc = mg_lineage_log_err(mrc);
    goto failed;
  }
  for (it = list; it; it = it->next) {
    if (it->skip) continue;
    uint64_t idx = fr.size, of = 0;
    if (it->kind == K_OUTCOME) of = atomic_load(&it->rec->index);
    mg_buf_reset(&w->line);
    if ((rc = mg_lineage_tmpl_finish(&it->t, idx, of, ts, tl, &w->line)) ||
        (rc = mg_lineage_log_append_txn(w->log, txn, &fr, idx, w->line.data, w->line.len)))
      goto abort;
    it->index = idx;
    if (it->kind == K_ACCESS && it->rec) atomic_store(&it->rec->index, idx);
  }
  if (nwrite && ((rc = mg_lineage_log_meta_put_u64(w->log, txn, "size", fr.size)) ||
                 (rc = mg_lineage_log_meta_put_u64(w->log, txn, "last_time_us", (uint64_t)t))))
    goto abort;
  if (ship > w->shipped_stored &&
      ((rc = mg_lineage_log_meta_put_u64(w->log, txn, "shipped", ship)) ||
       (rc = mg_lineage_log_meta_put_u64(w->log, txn, "shipped_seq", ship_seq))))
    goto abort;
  /* retention: twice the group's own entries per group, so a backlog of old entries (an
   * outage of NATS) is worked off while the log keeps growing */
  uint64_t pruned = w->pruned;
  if (w->retention_us > 0 && fr.size > 0 &&
      (rc = prune(w, txn, MG_MIN(ship, fr.size - 1), now - w->retention_us, 2 * nwrite + 256,
                  &pruned)))
    goto abort;
  if (cp && ((rc = sign(w, &fr, &note)) || (rc = put_checkpoint(w, txn, fr.size, note))))
    goto abort;
  int64_t c0 = mg_mono_now_us();
  mrc = mdb_txn_commit(txn);
  txn = NULL;
  int64_t c1 = mg_mono_now_us();
  if (mrc) {
    rc = mg_lineage_log_err(mrc);
    if (mrc == EIO) io_broken(w, rc); /* the commit's own data flush failed */
    goto failed;
  }
  /* its data flush also wrote the previous commit's meta page */
  if (w->pend) pend_release(w, 0);

  /* committed */
  w->fr = fr;
  w->pruned = pruned;
  if (nwrite) w->last_time_us = t;
  if (ship > w->shipped_stored) w->shipped_stored = ship;
  if (cp) {
    w->cp_size = fr.size;
    w->last_cp_us = mono;
    w->rotate = false;
  }
  for (it = list; it; it = it->next)
    if (it->kind == K_ACCESS && it->rec) atomic_store(&it->rec->state, it->skip ? -1 : 1);
  pthread_mutex_lock(&w->mu);
  w->st.size = fr.size;
  w->st.commits++;
  w->st.fsync_us_total += (uint64_t)(c1 - c0);
  w->st.entries_total += nwrite;
  w->st.summaries_total += nsum;
  w->st.healthy = true;
  if (cp) {
    free(w->cp_note);
    w->cp_note = note;
    w->cp_size_pub = fr.size;
    w->st.checkpoint_size = fr.size;
    note = NULL;
  }
  struct mg_shipper *sh = w->shipper;
  pthread_mutex_unlock(&w->mu);
  if (defer && !cp) {
    /* acknowledged by the next commit's flush (or flush_now when none comes) */
    w->pend = list;
    w->pend_first = first;
    w->pend_last = nwrite ? fr.size - 1 : 0;
    if (!nwrite) w->pend_first = 1;
    return 0;
  }
  if ((mrc = mdb_env_sync(w->log->env, 1))) {
    rc = mg_lineage_log_err(mrc);
    io_broken(w, rc);
    goto callbacks;
  }
  if (sh && nwrite) mg_shipper_notify_group(sh, first, fr.size - 1);
  if (sh && cp) {
    pthread_mutex_lock(&w->mu);
    char *cn = w->cp_note ? strdup(w->cp_note) : NULL;
    pthread_mutex_unlock(&w->mu);
    if (cn) mg_shipper_notify_checkpoint(sh, fr.size, cn);
    free(cn);
  }
  rc = 0;
  goto callbacks;

abort:
  mdb_txn_abort(txn);
failed:
  if (w->pend) flush_now(w);
  free(note);
  note = NULL;
  pthread_mutex_lock(&w->mu);
  bool was_healthy = w->st.healthy;
  pthread_mutex_unlock(&w->mu);
  if (was_healthy) mg_error("lineage: commit of %zu entries failed: %s", nwrite, mg_strerror(rc));
  else mg_debug("lineage: commit of %zu entries failed: %s", nwrite, mg_strerror(rc));
  if (cp) w->last_cp_us = mono; /* retry the checkpoint next period, not in a hot loop */
  for (it = list; it; it = it->next) {
    if (it->kind == K_ACCESS && it->rec) atomic_store(&it->rec->state, -1);
    if (it->kind == K_SUMMARY) sum_add(w, it->peer, it->reason, it->decision, it->count, mono);
    if (!it->skip) it->index = UINT64_MAX;
  }
  pthread_mutex_lock(&w->mu);
  w->st.healthy = false;
  w->st.last_error = rc;
  pthread_mutex_unlock(&w->mu);

callbacks:
  callbacks_run(list, rc);
  free(note);
  return rc;
}

/* ---- the thread ------------------------------------------------------------------- */

/* LMDB reads its B-trees through a read-only shared mapping, and in an append-only log
 * every page is the rightmost leaf once, so every page the log ever had ends up mapped in
 * this process: clean, file-backed and reclaimable, yet counted in RSS (hundreds of MB
 * after a long run). The writer drops those page-table entries (see below for when); pages still
 * in use fault back in from the page cache, and concurrent readers see the same bytes.
 * LMDB does not expose the map address (mdb_env_info's me_mapaddr is only set for fixed
 * maps), so it is found once in /proc/self/maps by the data file's device and inode. */
static void *find_map(struct mg_lineage_writer *w, size_t *len) {
  const char *path = NULL;
  struct stat sb;
  char file[4096];
  if (mdb_env_get_path(w->log->env, &path) || !path) return NULL;
  snprintf(file, sizeof file, "%s/data.mdb", path);
  if (stat(file, &sb)) return NULL;
  FILE *f = fopen("/proc/self/maps", "r");
  if (!f) return NULL;
  char line[4600];
  void *base = NULL;
  while (fgets(line, sizeof line, f)) {
    unsigned long lo, hi, ino;
    unsigned maj, mnr;
    if (sscanf(line, "%lx-%lx %*s %*s %x:%x %lu", &lo, &hi, &maj, &mnr, &ino) != 5) continue;
    if (ino == (unsigned long)sb.st_ino && makedev(maj, mnr) == sb.st_dev) {
      base = (void *)lo;
      *len = hi - lo;
      break;
    }
  }
  fclose(f);
  return base;
}

/* When: the log grew RELEASE_GROWTH bytes since the last time (what the writer itself
 * maps), or RELEASE_MAX_US passed (what readers such as an export mapped); never more
 * often than RELEASE_MIN_US. A release over a large range costs TLB-shootdown interrupts
 * on every core running this process, i.e. latency on the workers: at a moderate rate it
 * now happens every few seconds instead of five times a second. */
#define RELEASE_GROWTH (8u << 20)
#define RELEASE_MIN_US 200000
#define RELEASE_MAX_US 10000000

static void release_mapped(struct mg_lineage_writer *w) {
  int64_t now = mg_mono_now_us();
  if (now - w->last_release_us < RELEASE_MIN_US) return;
  MDB_envinfo info;
  MDB_stat st;
  if (mdb_env_info(w->log->env, &info) || mdb_env_stat(w->log->env, &st)) return;
  size_t len = (size_t)(info.me_last_pgno + 1) * st.ms_psize;
  if (len < w->released_len + RELEASE_GROWTH && now - w->last_release_us < RELEASE_MAX_US) return;
  w->last_release_us = now;
  w->released_len = len;
  if (!w->map_base && !(w->map_base = find_map(w, &w->map_len))) return;
  if (len > w->map_len) len = w->map_len;
  (void)madvise(w->map_base, len, MADV_DONTNEED);
}

/* The map's size and the bytes its pages in use take (LMDB reads both from its meta page:
 * no I/O, safe on any thread). */
static void map_usage(struct mg_lineage_writer *w, uint64_t *map, uint64_t *used) {
  MDB_envinfo info;
  MDB_stat st;
  *map = *used = 0;
  if (mdb_env_info(w->log->env, &info) || mdb_env_stat(w->log->env, &st)) return;
  *map = info.me_mapsize;
  *used = ((uint64_t)info.me_last_pgno + 1) * st.ms_psize;
}

/* A warning when the log passes 80, 90 and 95 % of its map, once per level (again after a
 * restart): a full map refuses every request, and an operator needs the time to act. */
static void check_usage(struct mg_lineage_writer *w) {
  static const int levels[] = {80, 90, 95};
  uint64_t map, used;
  map_usage(w, &map, &used);
  if (!map) return;
  int pct = (int)(used * 100 / map), lvl = 0;
  for (size_t i = 0; i < MG_ARRAY_LEN(levels); i++)
    if (pct >= levels[i]) lvl = levels[i];
  if (lvl > w->warned_pct) {
    w->warned_pct = lvl;
    mg_warn("lineage log %s is %d%% full (%" PRIu64 " of %" PRIu64 " MB): at 100%% every "
            "request is refused; raise lineage.map_size_mb (restart) or move to a new log",
            w->origin, pct, used >> 20, map >> 20);
  }
}

static void *writer_main(void *arg) {
  struct mg_lineage_writer *w = arg;
  pthread_mutex_lock(&w->mu);
  for (;;) {
    bool cpreq, cp_due, sum_due, ready;
    for (;;) {
      int64_t mono = mg_mono_now_us();
      cpreq = w->cp_req != w->cp_done;
      ready = w->qlen > 0 && (w->qurgent || w->qlen >= w->max_group ||
                              mono - w->q_first_us >= w->lag_us || w->stop || cpreq);
      cp_due = w->fr.size > w->cp_size && mono - w->last_cp_us >= w->every_us;
      int64_t sdue = sums_next_due(w);
      sum_due = sdue <= mono;
      if (ready || cpreq || cp_due || sum_due || w->stop || w->pend) break;
      int64_t dl = sdue;
      if (w->qlen && w->q_first_us + w->lag_us < dl) dl = w->q_first_us + w->lag_us;
      if (w->fr.size > w->cp_size && w->last_cp_us + w->every_us < dl)
        dl = w->last_cp_us + w->every_us;
      if (dl == INT64_MAX) {
        pthread_cond_wait(&w->cv, &w->mu);
      } else {
        /* the condvar uses CLOCK_MONOTONIC (set at init) */
        struct timespec ts = {(time_t)(dl / 1000000), (long)(dl % 1000000) * 1000};
        pthread_cond_timedwait(&w->cv, &w->mu, &ts);
      }
    }
    struct item *list = NULL, **tail = &list;
    size_t n = 0;
    if (ready) {
      while (w->qhead && n < w->max_group) {
        struct item *it = w->qhead;
        w->qhead = it->next;
        if (it->urgent) w->qurgent--;
        *tail = it;
        tail = &it->next;
        n++;
      }
      *tail = NULL;
      if (!w->qhead) w->qtail = &w->qhead;
      w->qlen -= n;
      if (w->qlen) w->q_first_us = mg_mono_now_us();
    }
    bool more = w->qlen > 0, stop = w->stop;
    uint64_t gen = w->cp_req;
    pthread_mutex_unlock(&w->mu);

    bool final = stop && !more;
    /* defer the acknowledgement only when the next group is due at once */
    bool defer = more && w->qurgent && !stop && !cpreq && w->durability == MG_LINEAGE_WRITE_AHEAD;
    int rc = run_group(w, list, cp_due || (cpreq && !more) || final, final, defer);
    if (!w->pend && !final) prealloc(w);
    if (!final) {
      release_mapped(w);
      check_usage(w);
    }

    pthread_mutex_lock(&w->mu);
    if (cpreq && !more) {
      w->cp_err = rc;
      w->cp_done = gen;
      pthread_cond_broadcast(&w->done_cv);
    }
    if (final && !w->qlen && !w->sums) break;
    if (final && rc) break; /* cannot write what is left; callbacks already told */
  }
  /* nobody may wait forever on a closed writer */
  w->cp_done = w->cp_req;
  pthread_cond_broadcast(&w->done_cv);
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

/* ---- open / close ------------------------------------------------------------------- */

static int recover(struct mg_lineage_writer *w) {
  MDB_txn *txn;
  char *s = NULL;
  uint64_t size = 0, v = 0;
  int rc = mg_lineage_log_txn(w->log, true, &txn);
  if (rc) return mg_lineage_log_err(rc);
  struct mg_lineage_nodes_ctx nc = {w->log, txn};
  if ((rc = mg_lineage_log_size_txn(w->log, txn, &size))) goto abort;
  if ((rc = mg_merkle_frontier_load(&w->fr, size, mg_lineage_log_get_node, &nc))) {
    mg_error("lineage log: stored subtree hashes do not cover %" PRIu64 " entries", size);
    goto abort;
  }
  if (size) {
    const char *line;
    size_t len;
    int64_t t = 0;
    if ((rc = mg_lineage_log_entry_txn(w->log, txn, size - 1, &line, &len))) goto abort;
    if (mg_lineage_entry_time(line, len, &t) == 0) w->last_time_us = t;
  }
  if (mg_lineage_log_meta_get_u64(w->log, txn, "last_time_us", &v) == 0 &&
      (int64_t)v > w->last_time_us)
    w->last_time_us = (int64_t)v;
  w->pruned = mg_lineage_log_pruned_txn(w->log, txn);
  if (mg_lineage_log_meta_get_u64(w->log, txn, "shipped", &v) == 0) {
    w->shipped_stored = v;
    atomic_store(&w->ship_ack, v);
    /* absent (a log from before the read-back): the first audit reads the stream from 0 */
    if (mg_lineage_log_meta_get_u64(w->log, txn, "shipped_seq", &v) == 0) w->ship_seq = v;
  }
  rc = mg_lineage_log_meta_get_str(w->log, txn, "origin", &s);
  if (rc == 0 && strcmp(s, w->origin) != 0) {
    mg_error("lineage log belongs to origin \"%s\", the configuration says \"%s\"", s, w->origin);
    rc = MG_LINEAGE_E_FOREIGN;
    goto abort;
  }
  if (rc == MG_ERR_NOTFOUND) rc = mg_lineage_log_meta_put_str(w->log, txn, "origin", w->origin);
  if (rc) goto abort;
  free(s);
  s = NULL;
  rc = mg_lineage_log_meta_get_str(w->log, txn, "key", &s);
  if (rc == 0 && strcmp(s, w->vkey) != 0) {
    bool known = false;
    for (size_t i = 0; i < w->nold; i++) {
      char *ov = mg_note_signer_vkey(w->signers[1 + i]);
      if (ov && strcmp(ov, s) == 0) known = true;
      free(ov);
    }
    if (!known)
      mg_warn("lineage: the signing key changed and the previous key (%s) is not among the old "
              "signing keys: the first checkpoint of the new key is not co-signed by it", s);
    w->rotate = true;
  } else if (rc == MG_ERR_NOTFOUND) {
    rc = 0;
    w->rotate = true; /* new log: record the key with its first checkpoint (or now) */
  } else if (rc) {
    goto abort;
  }
  if (w->rotate && size == 0) {
    if ((rc = mg_lineage_log_meta_put_str(w->log, txn, "key", w->vkey))) goto abort;
    w->rotate = false;
  }
  rc = mg_lineage_log_checkpoint_txn(w->log, txn, UINT64_MAX, &w->cp_note, &w->cp_size);
  if (rc == MG_ERR_NOTFOUND) rc = 0;
  if (rc) goto abort;
  w->cp_size_pub = w->cp_size;
  if ((rc = mdb_txn_commit(txn))) return mg_lineage_log_err(rc);
  free(s);
  return 0;
abort:
  free(s);
  mdb_txn_abort(txn);
  return rc;
}

int mg_lineage_writer_open(const struct mg_lineage_config *cfg, struct mg_lineage_writer **out) {
  struct mg_lineage_writer *w;
  struct mg_buf ob;
  pthread_condattr_t ca;
  int rc;
  if (!cfg || !out || !cfg->db || !cfg->origin || !cfg->origin[0] || !cfg->signing_key ||
      !mg_utf8_valid(cfg->origin, strlen(cfg->origin)) || cfg->nold_signing_keys > 16)
    return MG_ERR_INVALID;
  if (!(w = calloc(1, sizeof *w))) return -ENOMEM;
  w->durability = cfg->durability;
  w->every_us = (int64_t)(cfg->checkpoint_every_ms > 0 ? cfg->checkpoint_every_ms : DEFAULT_EVERY_MS) * 1000;
  w->deny_per_s = cfg->deny_entries_per_s;
  w->retention_us = cfg->retention_s > 0 ? cfg->retention_s * 1000000 : 0;
  w->lag_us = w->durability == MG_LINEAGE_WRITE_AHEAD ? MG_MIN(w->every_us, (int64_t)WA_LAG_US)
                                                      : w->every_us;
  /* async trades latency for throughput: bigger groups, fewer fsyncs */
  w->max_group = cfg->max_group ? cfg->max_group
                 : cfg->durability == MG_LINEAGE_ASYNC ? DEFAULT_GROUP_ASYNC : DEFAULT_GROUP;
  w->queue_cap = MG_MAX((size_t)65536, 16 * w->max_group);
  w->qtail = &w->qhead;
  w->serial = atomic_fetch_add(&writer_serial, 1) + 1;
  w->st.healthy = true;
  mg_buf_init(&w->line);
  mg_buf_init(&ob);
  pthread_mutex_init(&w->mu, NULL);
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&w->cv, &ca);
  pthread_condattr_destroy(&ca);
  pthread_cond_init(&w->done_cv, NULL);
  if (!(w->origin = strdup(cfg->origin)) || mg_buf_append_json_str(&ob, w->origin, strlen(w->origin))) {
    rc = -ENOMEM;
    goto fail_alloc;
  }
  w->origin_json = mg_buf_steal(&ob);
  if ((rc = mg_note_signer_load(cfg->signing_key, w->origin, &w->signers[0]))) {
    mg_error("lineage: signing key %s: %s", cfg->signing_key, mg_strerror(rc));
    goto fail_alloc;
  }
  for (size_t i = 0; i < cfg->nold_signing_keys; i++, w->nold++)
    if ((rc = mg_note_signer_load(cfg->old_signing_keys[i], w->origin, &w->signers[1 + i]))) {
      mg_error("lineage: old signing key %s: %s", cfg->old_signing_keys[i], mg_strerror(rc));
      goto fail_keys;
    }
  if (!(w->vkey = mg_note_signer_vkey(w->signers[0]))) {
    rc = -ENOMEM;
    goto fail_keys;
  }
  if ((rc = mg_lineage_log_open(cfg->db, cfg->map_size_mb, false, &w->log))) goto fail_keys;
  w->reader.log = w->log;
  w->reader.owned = false;
  if ((rc = recover(w))) goto fail_log;
  /* one flush per group: see the design comment (commits are acknowledged after a flush) */
  if ((rc = mdb_env_set_flags(w->log->env, MDB_NOMETASYNC, 1))) {
    rc = mg_lineage_log_err(rc);
    goto fail_log;
  }
  w->pend_first = 1;
  prealloc(w);
  w->st.size = w->fr.size;
  w->st.checkpoint_size = w->cp_size;
  w->last_cp_us = mg_mono_now_us();
  if (w->fr.size > w->cp_size || (w->rotate && w->fr.size > 0)) {
    int crc = run_group(w, NULL, true, false, false);
    if (crc) mg_warn("lineage: checkpoint at open failed: %s", mg_strerror(crc));
  }
  if ((rc = pthread_create(&w->thr, NULL, writer_main, w))) {
    rc = -rc;
    goto fail_sync;
  }
  w->started = true;
  *out = w;
  return 0;
fail_sync:
fail_log:
  mg_lineage_log_close(w->log);
fail_keys:
  for (size_t i = 0; i <= w->nold; i++) mg_note_signer_free(w->signers[i]);
  free(w->vkey);
fail_alloc:
  pthread_cond_destroy(&w->cv);
  pthread_cond_destroy(&w->done_cv);
  pthread_mutex_destroy(&w->mu);
  mg_buf_clear(&ob);
  free(w->cp_note);
  free(w->origin);
  free(w->origin_json);
  mg_buf_clear(&w->line);
  free(w);
  return rc;
}

void mg_lineage_writer_close(struct mg_lineage_writer *w) {
  if (!w) return;
  pthread_mutex_lock(&w->mu);
  w->stop = true;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
  pthread_join(w->thr, NULL);
  if (w->shipper) mg_shipper_stop(w->shipper, SHIPPER_STOP_MS);
  /* whatever the final commit could not write */
  while (w->qhead) {
    struct item *it = w->qhead;
    w->qhead = it->next;
    if (it->kind == K_ACCESS && it->rec) atomic_store(&it->rec->state, -1);
    if (it->cb) it->cb(it->arg, MG_LINEAGE_E_CLOSED, UINT64_MAX);
    item_free(it);
  }
  while (w->sums) {
    struct sum *s = w->sums;
    w->sums = s->next;
    mg_error("lineage: %" PRIu64 " denies of %s (%s) not recorded at close", s->count, s->peer,
             s->reason);
    free(s->peer);
    free(s);
  }
  for (size_t i = 0; i < BUCKETS; i++)
    while (w->buckets[i]) {
      struct bucket *b = w->buckets[i];
      w->buckets[i] = b->next;
      free(b);
    }
  mdb_env_set_flags(w->log->env, MDB_NOMETASYNC, 0);
  mg_lineage_log_close(w->log);
  for (size_t i = 0; i <= w->nold; i++) mg_note_signer_free(w->signers[i]);
  /* every item is back in its pool by now (submitters stop before close) */
  while (w->pools) {
    struct item_pool *p = w->pools;
    w->pools = p->next;
    pool_drop(p->free);
    pool_drop(atomic_load(&p->ret));
    free(p);
  }
  pthread_cond_destroy(&w->cv);
  pthread_cond_destroy(&w->done_cv);
  pthread_mutex_destroy(&w->mu);
  free(w->vkey);
  free(w->cp_note);
  free(w->origin);
  free(w->origin_json);
  mg_buf_clear(&w->line);
  free(w);
}

/* ---- queries ----------------------------------------------------------------------- */

int mg_lineage_checkpoint_now(struct mg_lineage_writer *w, char **note_out) {
  int rc;
  if (!w || !note_out) return MG_ERR_INVALID;
  *note_out = NULL;
  pthread_mutex_lock(&w->mu);
  if (w->stop) {
    pthread_mutex_unlock(&w->mu);
    return MG_LINEAGE_E_CLOSED;
  }
  uint64_t gen = ++w->cp_req;
  pthread_cond_signal(&w->cv);
  while (w->cp_done < gen) pthread_cond_wait(&w->done_cv, &w->mu);
  rc = w->cp_err;
  if (!rc && !w->cp_note) rc = MG_ERR_NOTFOUND;
  if (!rc && !(*note_out = strdup(w->cp_note))) rc = -ENOMEM;
  pthread_mutex_unlock(&w->mu);
  return rc;
}

void mg_lineage_writer_stats(struct mg_lineage_writer *w, struct mg_lineage_stats *out) {
  pthread_mutex_lock(&w->mu);
  *out = w->st;
  out->queue_len = w->qlen;
  struct mg_shipper *sh = w->shipper;
  pthread_mutex_unlock(&w->mu);
  map_usage(w, &out->map_bytes, &out->used_bytes);
  if (sh) {
    uint64_t acked = 0, verified = 0;
    bool conn = false;
    mg_shipper_stats(sh, &acked, &verified, &conn);
    out->shipped = acked;
    out->verified = verified;
    out->nats_connected = conn;
    out->backlog = out->size > acked ? out->size - acked : 0;
    out->unverified = acked > verified ? acked - verified : 0;
  }
}

const char *mg_lineage_writer_origin(const struct mg_lineage_writer *w) { return w->origin; }

struct mg_lineage_reader *mg_lineage_writer_reader(struct mg_lineage_writer *w) {
  return w ? &w->reader : NULL;
}

/* ---- shipper hooks (lineage_int.h "store additions") -------------------------------- */

struct mg_lineage_log *mg_lineage_writer_log(struct mg_lineage_writer *w) { return w->log; }

uint64_t mg_lineage_writer_shipped(struct mg_lineage_writer *w, uint64_t *seq) {
  pthread_mutex_lock(&w->mu);
  uint64_t p = atomic_load(&w->ship_ack);
  if (seq) *seq = w->ship_seq;
  pthread_mutex_unlock(&w->mu);
  return p;
}

void mg_lineage_writer_attach_shipper(struct mg_lineage_writer *w, struct mg_shipper *s) {
  pthread_mutex_lock(&w->mu);
  w->shipper = s;
  pthread_mutex_unlock(&w->mu);
}

void mg_lineage_writer_ack(void *arg, uint64_t upto, uint64_t seq) {
  struct mg_lineage_writer *w = arg;
  pthread_mutex_lock(&w->mu);
  if (upto > atomic_load(&w->ship_ack)) {
    w->ship_seq = seq;
    atomic_store(&w->ship_ack, upto);
  }
  pthread_mutex_unlock(&w->mu);
}
